//! QUIC links via s2n-quic, with its rustls TLS provider.
//!
//! The same link as `relay-link-quic` (quinn), over another QUIC stack: one
//! connection per peer pair multiplexes every circuit on its own stream, so
//! a lost packet stalls only the circuits it carried. Congestion control,
//! loss recovery and the idle timeout come from s2n-quic; keepalives are
//! PINGs sent by the link every [`LinkConfig::keepalive`].
//!
//! Authentication is TLS 1.3's own, bound to the node identity (module
//! `cert`, as in the quinn link): each node's certificate is self-signed
//! with its Ed25519 identity key, and both ends check the key's hash is the
//! peer's node id. s2n-quic takes one TLS config per endpoint, so a dial
//! carries the id it expects in its TLS server name, where the client's
//! certificate verifier finds it; each side then learns the id its peer
//! proved from the verified certificate, through an event subscriber
//! (module `peer`). The stream layout and the graceful close are in module
//! `link`, the receiving half in module `recv`; [`Transport::crash`] switches the UDP sockets off (module
//! `socket`).
//!
//! s2n-quic has separate server and client endpoints, so a transport
//! listens on its bound port and dials from a second, ephemeral one: an
//! accepted link's `remote` is the dialler's dialling port, not the port it
//! listens on.
//!
//! Why the rustls provider rather than s2n-quic's default (s2n-tls): the
//! identity binding needs custom certificate verifiers, which the rustls
//! provider accepts as a plain `rustls` config (the same rustls 0.23 the
//! quinn link uses).

mod cert;
mod link;
mod peer;
mod recv;
mod socket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use relay_kernel::NodeId;
use relay_link::{link_pair, BoxFut, Identity, Link, LinkConfig, LinkError, Scheme, Transport};
use s2n_quic::client::Connect;
use s2n_quic::provider::limits::Limits;
use s2n_quic::{Client, Server};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::timeout;

use crate::cert::{AnyNode, ExpectPeer, Mismatches, NodeCert};
use crate::peer::PeerIds;
use crate::socket::Kill;

/// Application protocol name, so a QUIC peer of another kind is refused.
const ALPN: &[u8] = b"relay-link/1";
/// Per-stream (per-circuit) receive window: a circuit alone can fill a
/// fast link.
const STREAM_WINDOW: u64 = 4 << 20;
/// Receive window for all streams of a connection together.
const CONNECTION_WINDOW: u64 = 32 << 20;
/// Data a stream (circuit) may have written but not yet acknowledged.
/// s2n-quic has no limit for a connection as a whole (quinn has its send
/// window), and its default of 4 MiB per stream let a link with 64 busy
/// circuits hold 256 MiB (linkbench: 260 MB resident, every page of it
/// faulted in afresh). 1 MiB per circuit is still 8 Gbit/s at 1 ms RTT, or
/// 80 Mbit/s at 100 ms; measured on loopback: resident 155 MB, page faults
/// 84K -> 44K, CPU s/GB 4.2 -> 3.9, one circuit's throughput not lower.
const SEND_BUFFER: u32 = 1 << 20;
/// Streams (circuits) the peer may have open at once.
const MAX_STREAMS: u64 = 4096;

fn io_err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Io(std::io::Error::other(e.to_string()))
}

/// An s2n-quic server (listening) and client (dialling).
pub struct S2nTransport {
    client: Client,
    local: SocketAddr,
    config: LinkConfig,
    mismatches: Mismatches,
    dials: AtomicU64,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Result<Link, LinkError>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    kills: Vec<Kill>,
}

impl S2nTransport {
    /// Listens on `addr` (port 0 picks one).
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: LinkConfig,
    ) -> Result<S2nTransport, LinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = NodeCert::new(identity)?;
        let limits = limits(&config)?;

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|_| LinkError::Handshake("TLS 1.3 unavailable"))?
            .with_client_cert_verifier(Arc::new(AnyNode::new(&provider)))
            .with_single_cert(vec![cert.cert.clone()], cert.key())
            .map_err(|_| LinkError::Handshake("identity key rejected by rustls"))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        server_tls.max_early_data_size = 0;
        // Every link proves the identity afresh: no session resumption.
        server_tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server_tls.send_tls13_tickets = 0;

        let verifier = ExpectPeer::new(&provider);
        let mismatches = verifier.mismatches.clone();
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|_| LinkError::Handshake("TLS 1.3 unavailable"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![cert.cert.clone()], cert.key())
            .map_err(|_| LinkError::Handshake("identity key rejected by rustls"))?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        client_tls.resumption = rustls::client::Resumption::disabled();
        client_tls.enable_early_data = false;

        let server_sock = socket::bind_udp(addr)?;
        let local = server_sock.local_addr()?;
        let mut dial_addr = addr;
        dial_addr.set_port(0);
        let client_sock = socket::bind_udp(dial_addr)?;
        let kills = vec![Kill::new(&server_sock)?, Kill::new(&client_sock)?];

        let server_io = s2n_quic::provider::io::tokio::Provider::builder()
            .with_rx_socket(server_sock)?
            .build()?;
        let client_io = s2n_quic::provider::io::tokio::Provider::builder()
            .with_rx_socket(client_sock)?
            .build()?;

        let server = Server::builder()
            .with_tls(s2n_quic::provider::tls::rustls::Server::from(server_tls))
            .map_err(io_err)?
            .with_io(server_io)
            .map_err(io_err)?
            .with_limits(limits)
            .map_err(io_err)?
            .with_event(PeerIds)
            .map_err(io_err)?
            .start()
            .map_err(io_err)?;
        let client = Client::builder()
            .with_tls(s2n_quic::provider::tls::rustls::Client::from(client_tls))
            .map_err(io_err)?
            .with_io(client_io)
            .map_err(io_err)?
            .with_limits(limits)
            .map_err(io_err)?
            .with_event(PeerIds)
            .map_err(io_err)?
            .start()
            .map_err(io_err)?;

        let (tx, rx) = mpsc::channel(64);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(server, config, tx, tasks.clone()));
        track(&tasks, accept.abort_handle());
        Ok(S2nTransport {
            client,
            local,
            config,
            mismatches,
            dials: AtomicU64::new(0),
            accepted: tokio::sync::Mutex::new(rx),
            tasks,
            kills,
        })
    }
}

/// s2n-quic's connection limits from the link's, with flow-control windows
/// sized for fast links with many circuits.
fn limits(config: &LinkConfig) -> Result<Limits, LinkError> {
    let bad = |_| LinkError::Handshake("link config out of range for s2n-quic");
    Limits::new()
        .with_max_idle_timeout(config.idle_timeout)
        .map_err(bad)?
        .with_max_handshake_duration(config.handshake_timeout)
        .map_err(bad)?
        .with_data_window(CONNECTION_WINDOW)
        .map_err(bad)?
        .with_unidirectional_data_window(STREAM_WINDOW)
        .map_err(bad)?
        .with_max_open_local_unidirectional_streams(MAX_STREAMS)
        .map_err(bad)?
        .with_max_open_remote_unidirectional_streams(MAX_STREAMS)
        .map_err(bad)?
        .with_max_open_local_bidirectional_streams(0)
        .map_err(bad)?
        .with_max_open_remote_bidirectional_streams(0)
        .map_err(bad)?
        .with_max_send_buffer_size(SEND_BUFFER)
        .map_err(bad)
}

fn track(tasks: &Arc<Mutex<Vec<AbortHandle>>>, h: AbortHandle) {
    if let Ok(mut t) = tasks.lock() {
        t.retain(|h| !h.is_finished());
        t.push(h);
    }
}

/// Starts an established link's tasks.
fn start_link(
    conn: s2n_quic::Connection,
    peer: NodeId,
    remote: SocketAddr,
    initiator: bool,
    config: &LinkConfig,
    tasks: &Arc<Mutex<Vec<AbortHandle>>>,
) -> Link {
    let (link, io) = link_pair(config, peer, remote, initiator);
    for h in link::spawn(conn, io, config.keepalive) {
        track(tasks, h.abort_handle());
    }
    link
}

async fn accept_loop(
    mut server: Server,
    config: LinkConfig,
    out: mpsc::Sender<Result<Link, LinkError>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
) {
    // s2n-quic hands over connections whose handshake is complete; failed
    // handshakes (garbage, scanners, wrong ALPN) never show up here.
    while let Some(conn) = server.accept().await {
        let handle = conn.handle();
        let (Some(peer), Ok(remote)) = (peer::peer_id(&handle), handle.remote_addr()) else {
            handle.close(link::code::protocol());
            continue;
        };
        let link = start_link(conn, peer, remote, false, &config, &tasks);
        if out.send(Ok(link)).await.is_err() {
            return;
        }
    }
}

impl Transport for S2nTransport {
    fn scheme(&self) -> Scheme {
        Scheme::S2n
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn connect(&self, addr: SocketAddr, expected: NodeId) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let name = cert::dial_name(expected, self.dials.fetch_add(1, Ordering::Relaxed));
            let attempt = self
                .client
                .connect(Connect::new(addr).with_server_name(name.as_str()));
            let result = timeout(self.config.handshake_timeout, attempt).await;
            let claimed = self
                .mismatches
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&name));
            let conn = match result {
                Err(_) => return Err(LinkError::HandshakeTimeout),
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    return Err(match claimed {
                        Some(got) if got != expected => LinkError::WrongPeer { expected, got },
                        _ => match e {
                            s2n_quic::connection::Error::MaxHandshakeDurationExceeded {
                                ..
                            }
                            | s2n_quic::connection::Error::IdleTimerExpired { .. } => {
                                LinkError::HandshakeTimeout
                            }
                            _ => LinkError::Handshake("QUIC/TLS handshake refused"),
                        },
                    })
                }
            };
            let handle = conn.handle();
            // The verifier already refused any other id; this checks the id
            // the handshake proved.
            let got = peer::peer_id(&handle)
                .ok_or(LinkError::Handshake("peer presented no certificate"))?;
            if got != expected {
                handle.close(link::code::protocol());
                return Err(LinkError::WrongPeer { expected, got });
            }
            Ok(start_link(conn, got, addr, true, &self.config, &self.tasks))
        })
    }

    fn accept(&self) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let mut rx = self.accepted.lock().await;
            rx.recv().await.unwrap_or(Err(LinkError::Closed))
        })
    }

    fn crash(&self) {
        // Silence first, so nothing the aborted tasks leave behind (s2n-quic
        // closes connections whose handles are dropped) reaches a peer.
        for k in &self.kills {
            k.kill();
        }
        if let Ok(t) = self.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}

impl Drop for S2nTransport {
    fn drop(&mut self) {
        // Unlike a crash, peers are told: s2n-quic closes the connections
        // whose handles the aborted tasks drop (a no-op after a crash).
        if let Ok(t) = self.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}
