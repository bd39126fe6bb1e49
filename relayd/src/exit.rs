//! The exit side of streams: TCP connects and UDP associations to the
//! outside world, each checked against the operator's exit policy after the
//! name is resolved (so a name cannot smuggle a private address past it).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use relay_kernel::{EndReason, StreamKind, StreamRef, TargetAddr};
use tokio::net::{TcpStream, UdpSocket};

use crate::daemon::Daemon;

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers a client's BEGIN (tcp or udp) in a task of its own.
pub fn spawn_request(d: Daemon, s: StreamRef, kind: StreamKind, target: TargetAddr) {
    tokio::spawn(async move {
        if !d.exit_policy().is_exit() {
            d.refuse_stream(s, EndReason::ExitPolicy);
            return;
        }
        match kind {
            StreamKind::Tcp => tcp_exit(d, s, target).await,
            StreamKind::Udp => udp_exit(d, s).await,
            StreamKind::Internal => d.refuse_stream(s, EndReason::Misc),
        }
    });
}

/// Answers a RESOLVE (exits only: other relays answer with nothing).
pub fn spawn_resolve(d: Daemon, s: StreamRef, host: String) {
    tokio::spawn(async move {
        let addrs = if d.exit_policy().is_exit() {
            resolve(&TargetAddr::Host(host, 0))
                .await
                .map(|v| v.into_iter().map(|a| a.ip()).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        d.resolve_reply(s, &addrs);
    });
}

/// Addresses for a target (names resolved here, at the exit).
async fn resolve(target: &TargetAddr) -> Result<Vec<SocketAddr>, EndReason> {
    match target {
        TargetAddr::Ip(sa) => Ok(vec![*sa]),
        TargetAddr::Host(h, p) => {
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((h.as_str(), *p)))
                .await
            {
                Ok(Ok(it)) => {
                    let v: Vec<SocketAddr> = it.collect();
                    if v.is_empty() {
                        Err(EndReason::ResolveFailed)
                    } else {
                        Ok(v)
                    }
                }
                Ok(Err(_)) => Err(EndReason::ResolveFailed),
                Err(_) => Err(EndReason::Timeout),
            }
        }
        TargetAddr::None => Err(EndReason::Misc),
    }
}

/// The END reason a failed connect reports (the client maps it to a SOCKS
/// reply code).
pub fn connect_error_reason(e: &io::Error) -> EndReason {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => EndReason::ConnectRefused,
        io::ErrorKind::TimedOut => EndReason::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => EndReason::NoRoute,
        io::ErrorKind::ConnectionReset => EndReason::ConnReset,
        _ => EndReason::ConnectFailed,
    }
}

async fn tcp_exit(d: Daemon, s: StreamRef, target: TargetAddr) {
    let addrs = match resolve(&target).await {
        Ok(a) => a,
        Err(r) => return d.refuse_stream(s, r),
    };
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| d.exit_policy().allows(a.ip(), a.port()))
        .collect();
    if allowed.is_empty() {
        return d.refuse_stream(s, EndReason::ExitPolicy);
    }
    let timeout = d.inner.config.exit_connect_timeout;
    let mut last = EndReason::ConnectFailed;
    for addr in allowed {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(mut tcp)) => {
                let _ = tcp.set_nodelay(true);
                let Ok(mut relay) = d.accept_stream(s, Some(addr)) else {
                    return;
                };
                if let Err(e) = crate::pump::pump(&mut tcp, &mut relay).await {
                    tracing::debug!("exit stream to {addr}: {e}");
                }
                return;
            }
            Ok(Err(e)) => last = connect_error_reason(&e),
            Err(_) => last = EndReason::Timeout,
        }
    }
    d.refuse_stream(s, last);
}

async fn udp_exit(d: Daemon, s: StreamRef) {
    let Ok(v4) = UdpSocket::bind("0.0.0.0:0").await else {
        return d.refuse_stream(s, EndReason::ResourceLimit);
    };
    let v6 = UdpSocket::bind("[::]:0").await.ok();
    let Ok(relay) = d.accept_stream(s, None) else {
        return;
    };
    let mut buf4 = vec![0u8; 65536];
    let mut buf6 = vec![0u8; 65536];
    loop {
        tokio::select! {
            dg = relay.recv_datagram() => {
                let Some((target, payload)) = dg else { return };
                let Ok(addrs) = resolve(&target).await else { continue };
                let Some(to) = addrs.into_iter().find(|a| d.exit_policy().allows(a.ip(), a.port())) else {
                    tracing::debug!("udp datagram refused by exit policy");
                    continue;
                };
                let sock = match (to.ip(), &v6) {
                    (IpAddr::V6(_), Some(s6)) => s6,
                    _ => &v4,
                };
                let _ = sock.send_to(&payload, to).await;
            }
            r = v4.recv_from(&mut buf4) => {
                if let Ok((n, from)) = r {
                    let _ = relay.send_datagram(&TargetAddr::Ip(from), &buf4[..n]);
                }
            }
            r = async { match &v6 { Some(s6) => s6.recv_from(&mut buf6).await, None => std::future::pending().await } } => {
                if let Ok((n, from)) = r {
                    let _ = relay.send_datagram(&TargetAddr::Ip(from), &buf6[..n]);
                }
            }
        }
    }
}
