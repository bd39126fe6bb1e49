//! QUIC links via quinn.
//!
//! Why QUIC: one connection per peer pair multiplexes every circuit on its
//! own stream, so a lost packet stalls only the circuits it carried, where
//! TCP (and the `tcp` link) stalls them all. Congestion control, loss
//! recovery, keepalives and the idle timeout come from quinn.
//!
//! Authentication is TLS 1.3's own, bound to the node identity instead of
//! the Noise handshake the other link kinds use (QUIC cannot run without
//! TLS, and two handshakes would only cost a round trip): each node's
//! certificate is self-signed with its Ed25519 identity key, and both ends
//! check the key's hash is the peer's node id (module `cert`). The stream
//! layout and the graceful close are in module `link`, the receiving half
//! in module `recv`; [`Transport::crash`]
//! works by switching the UDP socket off (module `socket`).
//!
//! Listening and dialling share one quinn endpoint (one UDP port).

mod cert;
mod link;
mod recv;
mod socket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    ConnectError, Connection, ConnectionError, Endpoint, EndpointConfig, IdleTimeout, Runtime,
    TokioRuntime, TransportConfig, VarInt,
};
use relay_kernel::NodeId;
use relay_link::{link_pair, BoxFut, Identity, Link, LinkConfig, LinkError, Scheme, Transport};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::timeout;

use crate::cert::{AnyNode, ExpectPeer, NodeCert, Proved};
use crate::socket::KillableSocket;

/// Application protocol name, so a QUIC peer of another kind is refused.
const ALPN: &[u8] = b"relay-link/1";
/// TLS server name on every dial.
const SERVER_NAME: &str = "relay";
/// Per-stream (per-circuit) receive window: a circuit alone can fill a
/// fast link.
const STREAM_WINDOW: u32 = 4 << 20;
/// Receive window for all streams of a connection together.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Bytes sent but not yet acknowledged, for the whole connection: enough
/// for a gigabit at 60 ms, while bounding what queues inside the link
/// (beyond the node's per-circuit scheduling).
const SEND_WINDOW: u64 = 8 << 20;
/// Streams (circuits) the peer may have open at once. quinn keeps a table
/// entry per allowed stream, so this is generous but not unbounded.
const MAX_STREAMS: u32 = 4096;

/// A QUIC endpoint that listens and dials.
pub struct QuicTransport {
    endpoint: Endpoint,
    local: SocketAddr,
    cert: Arc<NodeCert>,
    provider: Arc<CryptoProvider>,
    config: LinkConfig,
    transport_config: Arc<TransportConfig>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Result<Link, LinkError>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    dead: Arc<AtomicBool>,
}

impl QuicTransport {
    /// Listens on `addr` (port 0 picks one).
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: LinkConfig,
    ) -> Result<QuicTransport, LinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = Arc::new(NodeCert::new(identity)?);
        let transport_config = Arc::new(transport_config(&config)?);

        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|_| LinkError::Handshake("TLS 1.3 unavailable"))?
            .with_client_cert_verifier(Arc::new(AnyNode::new(&provider)))
            .with_single_cert(vec![cert.cert.clone()], cert.key())
            .map_err(|_| LinkError::Handshake("identity key rejected by rustls"))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // Every link proves the identity afresh: no session resumption.
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
        let tls = QuicServerConfig::try_from(tls)
            .map_err(|_| LinkError::Handshake("TLS config unusable for QUIC"))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
        server.transport_config(transport_config.clone());

        let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime);
        let udp = runtime.wrap_udp_socket(socket::bind_udp(addr)?)?;
        let dead = Arc::new(AtomicBool::new(false));
        let sock = Arc::new(KillableSocket::new(udp, dead.clone()));
        let endpoint = Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            Some(server),
            sock,
            runtime,
        )?;
        let local = endpoint.local_addr()?;

        let (tx, rx) = mpsc::channel(64);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(endpoint.clone(), config, tx, tasks.clone()));
        track(&tasks, accept.abort_handle());
        Ok(QuicTransport {
            endpoint,
            local,
            cert,
            provider,
            config,
            transport_config,
            accepted: tokio::sync::Mutex::new(rx),
            tasks,
            dead,
        })
    }

    /// A client config that accepts only `expected`; `proved` learns the id
    /// the peer proved.
    fn client_config(&self, expected: NodeId) -> Result<(quinn::ClientConfig, Proved), LinkError> {
        let verifier = ExpectPeer::new(expected, &self.provider);
        let proved = verifier.proved.clone();
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|_| LinkError::Handshake("TLS 1.3 unavailable"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![self.cert.cert.clone()], self.cert.key())
            .map_err(|_| LinkError::Handshake("identity key rejected by rustls"))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        let tls = QuicClientConfig::try_from(tls)
            .map_err(|_| LinkError::Handshake("TLS config unusable for QUIC"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(tls));
        client.transport_config(self.transport_config.clone());
        Ok((client, proved))
    }
}

/// quinn's settings from the link's, with flow-control windows sized for
/// fast links with many circuits.
fn transport_config(config: &LinkConfig) -> Result<TransportConfig, LinkError> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| LinkError::Handshake("idle timeout out of range"))?;
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keepalive))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None);
    Ok(t)
}

fn track(tasks: &Arc<Mutex<Vec<AbortHandle>>>, h: AbortHandle) {
    if let Ok(mut t) = tasks.lock() {
        t.retain(|h| !h.is_finished());
        t.push(h);
    }
}

/// The id a finished handshake proved, from the peer's certificate.
fn peer_id(conn: &Connection) -> Result<NodeId, LinkError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(LinkError::Handshake("peer presented no certificate"))?;
    let first = certs
        .first()
        .ok_or(LinkError::Handshake("peer presented no certificate"))?;
    cert::node_id(first).map_err(|_| LinkError::Handshake("bad peer certificate"))
}

/// Starts an established link's tasks.
fn start_link(
    conn: Connection,
    peer: NodeId,
    initiator: bool,
    config: &LinkConfig,
    tasks: &Arc<Mutex<Vec<AbortHandle>>>,
) -> Link {
    let (link, io) = link_pair(config, peer, conn.remote_address(), initiator);
    for h in link::spawn(conn, io) {
        track(tasks, h.abort_handle());
    }
    link
}

async fn accept_loop(
    endpoint: Endpoint,
    config: LinkConfig,
    out: mpsc::Sender<Result<Link, LinkError>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (out, tasks2) = (out.clone(), tasks.clone());
        let h = tokio::spawn(async move {
            // Failed or slow handshakes (garbage, scanners, wrong ALPN) are
            // dropped silently: the listener goes on.
            let Ok(Ok(conn)) = timeout(config.handshake_timeout, async { incoming.await }).await
            else {
                return;
            };
            match peer_id(&conn) {
                Ok(peer) => {
                    let link = start_link(conn, peer, false, &config, &tasks2);
                    let _ = out.send(Ok(link)).await;
                }
                Err(_) => conn.close(link::code::PROTOCOL, b"no identity"),
            }
        });
        track(&tasks, h.abort_handle());
    }
}

/// A failed dial as a link error.
fn dial_error(e: ConnectionError) -> LinkError {
    match e {
        ConnectionError::TimedOut => LinkError::HandshakeTimeout,
        ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_) => {
            LinkError::Handshake("QUIC/TLS handshake refused")
        }
        other => LinkError::Io(std::io::Error::other(other)),
    }
}

impl Transport for QuicTransport {
    fn scheme(&self) -> Scheme {
        Scheme::Quic
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn connect(&self, addr: SocketAddr, expected: NodeId) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let (client, proved) = self.client_config(expected)?;
            // The server name is sent in clear and not used (the verifier
            // knows the id it wants), so it is the same for every node.
            let connecting = self
                .endpoint
                .connect_with(client, addr, SERVER_NAME)
                .map_err(|e: ConnectError| LinkError::Io(std::io::Error::other(e)))?;
            let conn = match timeout(self.config.handshake_timeout, connecting).await {
                Err(_) => return Err(LinkError::HandshakeTimeout),
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    let got = proved.lock().ok().and_then(|g| *g);
                    return Err(match got {
                        Some(got) if got != expected => LinkError::WrongPeer { expected, got },
                        _ => dial_error(e),
                    });
                }
            };
            let got = peer_id(&conn)?;
            if got != expected {
                conn.close(link::code::PROTOCOL, b"wrong peer");
                return Err(LinkError::WrongPeer { expected, got });
            }
            Ok(start_link(conn, got, true, &self.config, &self.tasks))
        })
    }

    fn accept(&self) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let mut rx = self.accepted.lock().await;
            rx.recv().await.unwrap_or(Err(LinkError::Closed))
        })
    }

    fn crash(&self) {
        // Silence first, so nothing the aborted tasks leave behind (quinn
        // closes connections whose handles are dropped) reaches a peer.
        self.dead.store(true, Ordering::SeqCst);
        if let Ok(t) = self.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        // Unlike a crash, tell peers at once (a no-op after a crash).
        self.endpoint
            .close(link::code::GOING_AWAY, b"shutting down");
        if let Ok(t) = self.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}
