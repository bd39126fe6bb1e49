//! `relayd run` (and the `tunnel` / `proxy` shortcuts): start a daemon with
//! the given roles and keep it running until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use relay_link::{LinkAddr, PeerAddr};

use crate::client::{self, Client};
use crate::daemon::{Daemon, DaemonConfig};
use crate::exit_policy::ExitPolicy;
use crate::keys::Keys;
use crate::peers::Peers;
use crate::proxy::{Socks, Tunnel};
use crate::spec::Spec;

/// Everything `relayd run` was told, validated.
pub struct RunOptions {
    /// Key directory (None: temporary identity).
    pub dir: Option<PathBuf>,
    /// Listen addresses.
    pub listen: Vec<LinkAddr>,
    /// Peers to keep links to.
    pub connect: Vec<PeerAddr>,
    /// Trackers.
    pub trackers: Vec<PeerAddr>,
    /// Serve relay lists.
    pub act_as_tracker: bool,
    /// Exit policy.
    pub exit_policy: ExitPolicy,
    /// Control port address.
    pub control: Option<SocketAddr>,
    /// Tunnels.
    pub tunnels: Vec<Spec>,
    /// SOCKS proxies.
    pub proxies: Vec<Spec>,
    /// Named peers.
    pub peers: Peers,
    /// Tunnels carry every connection on one circuit.
    pub share_circuits: bool,
    /// Link idle timeout.
    pub idle_timeout: Duration,
    /// Congestion control of the circuits this node ends.
    pub circuit_cc: relay_kernel::flow::CcAlgorithm,
    /// Congestion control of this node's udt links.
    pub udt_cc: crate::daemon::links::UdtCc,
}

/// Why the daemon could not start (exit code 2 for the user's mistakes).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Keys.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    /// Daemon.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// A listener.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    /// Control port.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// Bad combination of options.
    #[error("{0}")]
    Usage(String),
}

/// A started node with its client side.
pub struct Running {
    /// The client handle (path selection over this node).
    pub client: Arc<Client>,
    /// Tunnel listen addresses, in order.
    pub tunnels: Vec<SocketAddr>,
    /// Proxy listen addresses, in order.
    pub proxies: Vec<SocketAddr>,
    /// Control port address.
    pub control: Option<SocketAddr>,
}

/// Starts everything the options ask for.
pub async fn start(opts: RunOptions) -> Result<Running, RunError> {
    let keys = match &opts.dir {
        Some(dir) => Keys::load_or_create(dir)?.0,
        None => Keys::temporary(),
    };
    if opts.control.is_some() && opts.dir.is_none() {
        return Err(RunError::Usage(
            "--control needs --dir (the cookie file lives there)".into(),
        ));
    }
    let mut config = DaemonConfig {
        listen: opts.listen.clone(),
        exit_policy: opts.exit_policy.clone(),
        act_as_tracker: opts.act_as_tracker,
        ..DaemonConfig::default()
    };
    config.link.idle_timeout = opts.idle_timeout;
    config.node.cc.algorithm = opts.circuit_cc;
    config.udt_cc = opts.udt_cc;
    config.link.keepalive = (opts.idle_timeout / 4).max(Duration::from_millis(500));
    let daemon = Daemon::start(keys, config).await?;
    let client = Arc::new(Client::new(daemon.clone(), opts.peers));
    for p in &opts.connect {
        let d = daemon.clone();
        let p = p.clone();
        tokio::spawn(async move {
            // Keep a link to each configured neighbour, reconnecting.
            loop {
                if let Err(e) = d.ensure_link(&p).await {
                    tracing::info!("connect {p}: {e}");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    if !opts.trackers.is_empty() {
        let publish = !opts.listen.is_empty();
        tokio::spawn(client::tracker_loop(
            client.clone(),
            opts.trackers.clone(),
            publish,
        ));
    }
    let mut tunnels = Vec::new();
    for spec in opts.tunnels {
        let t = Tunnel::bind(spec).await?;
        if let Some(a) = t.local_addr() {
            tunnels.push(a);
        }
        tokio::spawn(t.serve(client.clone(), opts.share_circuits));
    }
    let mut proxies = Vec::new();
    for spec in opts.proxies {
        let s = Socks::bind(spec).await?;
        if let Some(a) = s.local_addr() {
            proxies.push(a);
        }
        tokio::spawn(s.serve(client.clone()));
    }
    let control = match (opts.control, &opts.dir) {
        (Some(addr), Some(dir)) => Some(crate::control::start(addr, dir, client.clone()).await?),
        _ => None,
    };
    Ok(Running {
        client,
        tunnels,
        proxies,
        control,
    })
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
