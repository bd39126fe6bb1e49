//! Local listeners of a client: tunnels (every accepted TCP connection is
//! carried to one fixed target) and the SOCKS5 proxy (targets chosen by the
//! SOCKS client, names resolved at the exit).
//!
//! Circuit isolation: a tunnel gives each connection its own circuit unless
//! told to share; the proxy shares one circuit per set of SOCKS credentials,
//! so different credentials never share a circuit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_kernel::{CircuitRef, EndReason, StreamKind, TargetAddr};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;

use crate::client::Client;
use crate::daemon::{DaemonError, RelayStream};
use crate::socks5::{self, AuthMode, Command, Reply, Target};
use crate::spec::{Spec, SpecTarget};

/// Time for the exit to answer a BEGIN.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for a SOCKS client to finish its request.
const SOCKS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Bind failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The spec's target does not fit the listener kind.
    #[error("{0}")]
    Spec(String),
}

fn to_kernel_target(t: &Target) -> TargetAddr {
    match t {
        Target::Ip(sa) => TargetAddr::Ip(*sa),
        Target::Domain(h, p) => TargetAddr::Host(h.clone(), *p),
    }
}

fn from_kernel_target(t: &TargetAddr) -> Option<Target> {
    match t {
        TargetAddr::Ip(sa) => Some(Target::Ip(*sa)),
        TargetAddr::Host(h, p) => Some(Target::Domain(h.clone(), *p)),
        TargetAddr::None => None,
    }
}

/// The SOCKS reply for an END reason from the exit.
pub fn reply_for(reason: EndReason) -> Reply {
    match reason {
        EndReason::ExitPolicy => Reply::NotAllowed,
        EndReason::ResolveFailed | EndReason::NoRoute => Reply::HostUnreachable,
        EndReason::ConnectRefused => Reply::ConnectionRefused,
        EndReason::Timeout => Reply::TtlExpired,
        _ => Reply::GeneralFailure,
    }
}

fn reply_for_error(e: &DaemonError) -> Reply {
    match e {
        DaemonError::Stream(r) => reply_for(*r),
        DaemonError::Timeout(_) => Reply::TtlExpired,
        _ => Reply::GeneralFailure,
    }
}

/// A bound tunnel listener.
pub struct Tunnel {
    listener: TcpListener,
    spec: Spec,
    host: String,
    port: u16,
}

impl Tunnel {
    /// Binds the tunnel's local port.
    pub async fn bind(spec: Spec) -> Result<Tunnel, ProxyError> {
        let (host, port) = match &spec.target {
            SpecTarget::Host(h, p) => (h.clone(), *p),
            SpecTarget::Internet => {
                return Err(ProxyError::Spec(
                    "a tunnel needs a host:port target (`internet` is for proxies)".into(),
                ))
            }
        };
        let listener = TcpListener::bind(spec.bind)
            .await
            .map_err(|e| ProxyError::Bind(spec.bind, e))?;
        Ok(Tunnel {
            listener,
            spec,
            host,
            port,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves forever; `share` carries every connection on one circuit.
    pub async fn serve(self, client: Arc<Client>, share: bool) {
        let target = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => TargetAddr::Ip(SocketAddr::new(ip, self.port)),
            Err(_) => TargetAddr::Host(self.host.clone(), self.port),
        };
        let shared: Arc<Mutex<Option<CircuitRef>>> = Arc::new(Mutex::new(None));
        loop {
            let Ok((tcp, from)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let client = client.clone();
            let hops = self.spec.hops.clone();
            let target = target.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let circ = if share {
                    circuit_for(&client, &shared, &hops).await
                } else {
                    client.build(&hops, true).await
                };
                let circ = match circ {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("tunnel connection from {from}: {e}");
                        return;
                    }
                };
                let result = carry(&client, circ, tcp, target).await;
                if let Err(e) = result {
                    tracing::info!("tunnel connection from {from}: {e}");
                }
                if !share {
                    client.daemon.close_circuit_when_idle(circ);
                }
            });
        }
    }
}

async fn carry(
    client: &Client,
    circ: CircuitRef,
    mut tcp: TcpStream,
    target: TargetAddr,
) -> Result<(), DaemonError> {
    let mut stream = client
        .daemon
        .open_stream(circ, StreamKind::Tcp, target, OPEN_TIMEOUT)
        .await?;
    let _ = tcp.set_nodelay(true);
    copy(&mut tcp, &mut stream).await;
    Ok(())
}

/// Carries a local connection over its stream (buffers held only while
/// bytes move: see `crate::pump`).
async fn copy(tcp: &mut TcpStream, stream: &mut RelayStream) {
    if let Err(e) = crate::pump::pump(tcp, stream).await {
        tracing::debug!("stream ended: {e}");
    }
}

/// A live circuit from the cache, or a new one.
async fn circuit_for(
    client: &Client,
    slot: &Mutex<Option<CircuitRef>>,
    hops: &[crate::spec::Hop],
) -> Result<CircuitRef, DaemonError> {
    let mut g = slot.lock().await;
    if let Some(c) = *g {
        if client.daemon.circuit_alive(c) {
            return Ok(c);
        }
        client.suspect(&client.path_of(c));
    }
    let c = client.build(hops, true).await?;
    *g = Some(c);
    Ok(c)
}

/// A bound SOCKS5 listener.
pub struct Socks {
    listener: TcpListener,
    spec: Spec,
}

type Isolation = Option<(Vec<u8>, Vec<u8>)>;
/// One cached circuit per isolation key (SOCKS credentials).
type CircuitCache = Arc<Mutex<HashMap<Isolation, Arc<Mutex<Option<CircuitRef>>>>>>;

impl Socks {
    /// Binds the proxy's local port.
    pub async fn bind(spec: Spec) -> Result<Socks, ProxyError> {
        if !matches!(spec.target, SpecTarget::Internet) {
            return Err(ProxyError::Spec(
                "a proxy's target must be `internet`".into(),
            ));
        }
        let listener = TcpListener::bind(spec.bind)
            .await
            .map_err(|e| ProxyError::Bind(spec.bind, e))?;
        Ok(Socks { listener, spec })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves forever.
    pub async fn serve(self, client: Arc<Client>) {
        let circuits: CircuitCache = Arc::new(Mutex::new(HashMap::new()));
        loop {
            let Ok((tcp, from)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let client = client.clone();
            let hops = self.spec.hops.clone();
            let circuits = circuits.clone();
            tokio::spawn(async move {
                if let Err(e) = socks_connection(client, tcp, &hops, circuits).await {
                    tracing::info!("socks client {from}: {e}");
                }
            });
        }
    }
}

async fn socks_connection(
    client: Arc<Client>,
    mut tcp: TcpStream,
    hops: &[crate::spec::Hop],
    circuits: CircuitCache,
) -> Result<(), String> {
    let req = tokio::time::timeout(
        SOCKS_HANDSHAKE,
        socks5::handshake(&mut tcp, AuthMode::NoAuthOrUserPass),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let slot = {
        let mut map = circuits.lock().await;
        map.entry(req.credentials.clone()).or_default().clone()
    };
    // One retry with a fresh circuit if the cached one died under us.
    let mut tries = 0;
    let circ = loop {
        tries += 1;
        match circuit_for(&client, &slot, hops).await {
            Ok(c) => break c,
            Err(e) => {
                if tries >= 2 {
                    let _ = socks5::reply(&mut tcp, reply_for_error(&e), None).await;
                    return Err(e.to_string());
                }
            }
        }
    };
    match req.command {
        Command::Connect(target) => {
            let opened = client
                .daemon
                .open_stream(
                    circ,
                    StreamKind::Tcp,
                    to_kernel_target(&target),
                    OPEN_TIMEOUT,
                )
                .await;
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    if matches!(
                        e,
                        DaemonError::Kernel(_) | DaemonError::Stream(EndReason::Destroy)
                    ) {
                        client.suspect(&client.path_of(circ));
                    }
                    let _ = socks5::reply(&mut tcp, reply_for_error(&e), None).await;
                    return Err(format!("connect {target:?}: {e}"));
                }
            };
            socks5::reply(&mut tcp, Reply::Succeeded, None)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            copy(&mut tcp, &mut stream).await;
            Ok(())
        }
        Command::UdpAssociate(_) => udp_associate(&client, circ, tcp).await,
        _ => {
            let _ = socks5::reply(&mut tcp, Reply::CommandNotSupported, None).await;
            Err("unsupported command".into())
        }
    }
}

/// UDP ASSOCIATE: a local UDP socket whose datagrams (with SOCKS UDP
/// headers) travel as DATAGRAM messages on a UDP stream; the association
/// lives as long as the TCP control connection.
async fn udp_associate(
    client: &Client,
    circ: CircuitRef,
    mut tcp: TcpStream,
) -> Result<(), String> {
    let local_ip = tcp
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| e.to_string())?;
    let udp = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .await
        .map_err(|e| e.to_string())?;
    let bound = udp.local_addr().map_err(|e| e.to_string())?;
    let stream = match client
        .daemon
        .open_stream(circ, StreamKind::Udp, TargetAddr::None, OPEN_TIMEOUT)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = socks5::reply(&mut tcp, reply_for_error(&e), None).await;
            return Err(e.to_string());
        }
    };
    socks5::reply(&mut tcp, Reply::Succeeded, Some(bound))
        .await
        .map_err(|e| e.to_string())?;
    let mut app: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65536];
    let mut ctl = [0u8; 64];
    let mut out = Vec::with_capacity(2048);
    loop {
        tokio::select! {
            r = tokio::io::AsyncReadExt::read(&mut tcp, &mut ctl) => {
                // The control connection closed (or sent junk): end it.
                if matches!(r, Ok(0) | Err(_)) { return Ok(()); }
            }
            r = udp.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                // Only the client's own address may use the association.
                if from.ip() != local_ip && !from.ip().is_loopback() { continue; }
                app = Some(from);
                let Ok((target, payload)) = socks5::parse_udp_datagram(&buf[..n]) else { continue };
                let _ = stream.send_datagram(&to_kernel_target(&target), payload);
            }
            dg = stream.recv_datagram() => {
                let Some((from, payload)) = dg else { return Ok(()) };
                let (Some(to), Some(t)) = (app, from_kernel_target(&from)) else { continue };
                out.clear();
                socks5::encode_udp_datagram(&t, &payload, &mut out);
                let _ = udp.send_to(&out, to).await;
            }
        }
    }
}
