//! The daemon core: one kernel [`Node`] behind a mutex, one driver task that
//! moves cells between it and the links, and handles that application tasks
//! (tunnels, SOCKS, exits, tracker, control port) use to build circuits and
//! open streams.
//!
//! Why a shared mutex rather than channels to the node task: an application
//! stream reads and writes the kernel's stream buffers directly under the
//! lock and parks a waker when they are empty or full (as quinn does with
//! its connection state), so bytes are copied once and backpressure comes
//! for free. After a stream read or write the calling task itself hands the
//! cells it made to the links and the events to their handles
//! (`driver::settle`); the driver is woken (a `Notify`) only when it must
//! act: a link that filled up, a kernel timer earlier than its own, or a
//! control call (circuit builds, stream opens, closes).

mod driver;
pub mod links;
mod stream;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay_kernel::{
    CircuitRef, EndReason, HopSpec, LinkId, Node, NodeConfig, NodeId, StreamKind, StreamRef,
    TargetAddr, Time,
};
use relay_link::{Link, LinkAddr, LinkConfig, LinkSender, PeerAddr};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::descriptor::Descriptor;
use crate::directory::Directory;
use crate::exit_policy::ExitPolicy;
use crate::keys::Keys;
pub use links::Transports;
pub use stream::RelayStream;

/// What a daemon is asked to be.
#[derive(Clone)]
pub struct DaemonConfig {
    /// Addresses to listen on (port 0 picks one).
    pub listen: Vec<LinkAddr>,
    /// Exit policy (reject-all unless configured).
    pub exit_policy: ExitPolicy,
    /// Serve relay lists to others.
    pub act_as_tracker: bool,
    /// Link tunables.
    pub link: LinkConfig,
    /// Congestion controller of udt links.
    pub udt_cc: links::UdtCc,
    /// Kernel tunables.
    pub node: NodeConfig,
    /// How long a published descriptor stays valid.
    pub descriptor_lifetime: Duration,
    /// Timeout for a TCP connect at the exit.
    pub exit_connect_timeout: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: Vec::new(),
            exit_policy: ExitPolicy::reject_all(),
            act_as_tracker: false,
            link: LinkConfig::default(),
            udt_cc: links::UdtCc::default(),
            node: NodeConfig::default(),
            descriptor_lifetime: Duration::from_secs(3 * 3600),
            exit_connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a daemon operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: relay_link::LinkError,
    },
    /// A link could not be opened.
    #[error("cannot reach {peer}: {why}")]
    Connect {
        /// The peer.
        peer: String,
        /// Why.
        why: String,
    },
    /// No descriptor (onion key) known for a node.
    #[error("no descriptor known for node {0}")]
    NoDescriptor(NodeId),
    /// Not enough relays known for a random path.
    #[error("not enough relays known for a random path ({0})")]
    NotEnoughRelays(String),
    /// The circuit failed to build or closed.
    #[error("circuit failed: {0:?}")]
    Circuit(EndReason),
    /// The stream was refused or closed.
    #[error("stream closed: {0:?}")]
    Stream(EndReason),
    /// A kernel call was refused.
    #[error("kernel: {0}")]
    Kernel(#[from] relay_kernel::NodeError),
    /// Took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The daemon is shutting down.
    #[error("daemon stopped")]
    Stopped,
}

/// Per-link state in the driver.
pub(crate) struct LinkSlot {
    pub tx: LinkSender,
    pub peer: NodeId,
    pub remote: SocketAddr,
    pub initiator: bool,
    pub blocked: bool,
    /// When the peer's last LinkInfo was taken: at most one a minute, so a
    /// hostile neighbour cannot make us verify signatures in a loop.
    pub info_at: Option<Instant>,
}

/// Per-stream state for application handles.
#[derive(Default)]
pub(crate) struct StreamSlot {
    pub read_waker: Option<std::task::Waker>,
    pub write_waker: Option<std::task::Waker>,
    pub opened: Option<oneshot::Sender<Result<(), EndReason>>>,
    pub resolved: Option<oneshot::Sender<Vec<std::net::IpAddr>>>,
    pub closed: Option<EndReason>,
}

pub(crate) type LinkWaiter = oneshot::Sender<Result<LinkId, String>>;

/// Everything behind the mutex.
pub(crate) struct State {
    pub node: Node,
    pub links: HashMap<LinkId, LinkSlot>,
    pub streams: HashMap<StreamRef, StreamSlot>,
    pub circuit_waiters: HashMap<CircuitRef, oneshot::Sender<Result<(), EndReason>>>,
    pub link_waiters: HashMap<NodeId, Vec<LinkWaiter>>,
    pub connecting: HashSet<NodeId>,
    pub next_link: u64,
    pub stopping: bool,
    /// Links that filled up outside the driver; it watches them for room.
    pub need_room: Vec<LinkId>,
    /// The kernel deadline the driver's timer is set for.
    pub armed: Option<Time>,
    /// Tasks to wake once the lock is released (`driver::release`).
    pub wakes: Vec<std::task::Waker>,
}

/// Shared by the driver and every handle.
pub(crate) struct Inner {
    pub keys: Keys,
    pub id: NodeId,
    pub config: DaemonConfig,
    pub transports: Transports,
    pub state: Mutex<State>,
    /// Wakes the driver after an application call queued cells.
    pub wake: Notify,
    /// Signalled whenever the directory learns a descriptor.
    pub directory_changed: Notify,
    pub directory: Mutex<Directory>,
    pub new_links: mpsc::UnboundedSender<Link>,
    pub start: Instant,
    /// Messages received by `send` (control port), newest last.
    pub inbox: Mutex<std::collections::VecDeque<String>>,
    /// Signed descriptor of this node, refreshed by the publisher.
    pub descriptor: Mutex<Vec<u8>>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    pub(crate) inner: Arc<Inner>,
}

/// Seconds since the Unix epoch (descriptor timestamps).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    pub fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving rather than
        // cascading it into every task.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn directory(&self) -> MutexGuard<'_, Directory> {
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// After a kernel call under the lock: see [`driver::settle`].
pub(crate) fn settle(inner: &Arc<Inner>, st: MutexGuard<'_, State>) {
    driver::settle(inner, st)
}

impl Daemon {
    /// Binds the listen addresses and starts the driver.
    pub async fn start(keys: Keys, config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let settings = links::LinkSettings {
            link: config.link,
            udt_cc: config.udt_cc,
        };
        let transports = Transports::listen(&keys.identity, settings, &config.listen)
            .await
            .map_err(|(addr, source)| DaemonError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let node = Node::new(
            keys.node_id(),
            keys.onion.clone(),
            config.node,
            Box::new(<rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_entropy()),
        );
        let (new_links, new_links_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            id: keys.node_id(),
            keys,
            config,
            transports,
            state: Mutex::new(State {
                node,
                links: HashMap::new(),
                streams: HashMap::new(),
                circuit_waiters: HashMap::new(),
                link_waiters: HashMap::new(),
                connecting: HashSet::new(),
                next_link: 1,
                stopping: false,
                need_room: Vec::new(),
                armed: None,
                wakes: Vec::new(),
            }),
            wake: Notify::new(),
            directory_changed: Notify::new(),
            directory: Mutex::new(Directory::default()),
            new_links,
            start: Instant::now(),
            inbox: Mutex::new(Default::default()),
            descriptor: Mutex::new(Vec::new()),
        });
        let daemon = Daemon { inner };
        daemon.refresh_descriptor();
        for (_, t) in daemon.inner.transports.listening() {
            let t = t.clone();
            let tx = daemon.inner.new_links.clone();
            tokio::spawn(async move {
                loop {
                    match t.accept().await {
                        Ok(link) => {
                            if tx.send(link).is_err() {
                                return;
                            }
                        }
                        Err(relay_link::LinkError::Closed) => return,
                        Err(e) => tracing::debug!("accept: {e}"),
                    }
                }
            });
        }
        tokio::spawn(driver::run(daemon.inner.clone(), new_links_rx));
        // Re-sign the descriptor well before it expires and tell the
        // neighbours, so long-lived links never leave them a stale copy.
        let d = daemon.clone();
        tokio::spawn(async move {
            let every = (d.inner.config.descriptor_lifetime / 3).max(Duration::from_secs(60));
            loop {
                tokio::time::sleep(every).await;
                d.refresh_descriptor();
                d.announce();
            }
        });
        Ok(daemon)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The addresses actually listened on.
    pub fn listen_addrs(&self) -> Vec<LinkAddr> {
        self.inner
            .transports
            .listening()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// `ID@scheme://host:port` for the first listen address.
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        self.listen_addrs().into_iter().next().map(|link| PeerAddr {
            id: self.id(),
            link,
        })
    }

    /// The exit policy.
    pub fn exit_policy(&self) -> &ExitPolicy {
        &self.inner.config.exit_policy
    }

    /// Re-signs this node's descriptor with fresh timestamps.
    pub fn refresh_descriptor(&self) -> Descriptor {
        let now = unix_now();
        let d = Descriptor::sign(
            &self.inner.keys.identity,
            self.inner.keys.onion.public,
            self.listen_addrs().into_iter().take(4).collect(),
            now,
            now + self.inner.config.descriptor_lifetime.as_secs(),
            self.inner.config.exit_policy.is_exit(),
            self.inner.config.act_as_tracker,
        );
        if let Ok(bytes) = d.encode() {
            *self
                .inner
                .descriptor
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = bytes;
        }
        d
    }

    /// Sends this node's current descriptor to every neighbour.
    pub fn announce(&self) {
        let desc = self.descriptor_bytes();
        let st = self.inner.lock();
        for l in st.links.values() {
            if let Some(cell) = driver::link_info_cell(&desc) {
                let _ = l.tx.try_send(cell);
            }
        }
    }

    /// This node's current signed descriptor, encoded.
    pub fn descriptor_bytes(&self) -> Vec<u8> {
        self.inner
            .descriptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Learns a descriptor (already verified by decoding).
    pub fn learn(&self, d: Descriptor) {
        if d.node_id() == self.id() {
            return;
        }
        if self.inner.directory().insert(d, unix_now()) {
            self.inner.directory_changed.notify_waiters();
        }
    }

    /// The descriptor known for `id`, if fresh.
    pub fn descriptor_of(&self, id: &NodeId) -> Option<Descriptor> {
        self.inner.directory().get(id, unix_now()).cloned()
    }

    /// Fresh descriptors known (for `rand` hops and tracker lists).
    pub fn known_relays(&self) -> Vec<Descriptor> {
        self.inner.directory().fresh(unix_now())
    }

    /// Waits until a descriptor for `id` is known.
    pub async fn wait_descriptor(
        &self,
        id: &NodeId,
        timeout: Duration,
    ) -> Result<Descriptor, DaemonError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.directory_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(d) = self.descriptor_of(id) {
                return Ok(d);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(DaemonError::NoDescriptor(*id));
            }
        }
    }

    /// A link to `peer`, opening one if needed.
    pub async fn ensure_link(&self, peer: &PeerAddr) -> Result<LinkId, DaemonError> {
        let rx = {
            let mut st = self.inner.lock();
            if let Some(l) = st.node.link_to(&peer.id) {
                return Ok(l);
            }
            let (tx, rx) = oneshot::channel();
            st.link_waiters.entry(peer.id).or_default().push(tx);
            if st.connecting.insert(peer.id) {
                driver::spawn_connect(self.inner.clone(), peer.id, peer.link.clone());
            }
            rx
        };
        let timeout = self.inner.config.link.handshake_timeout + Duration::from_secs(2);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(l))) => Ok(l),
            Ok(Ok(Err(why))) => Err(DaemonError::Connect {
                peer: peer.to_string(),
                why,
            }),
            Ok(Err(_)) => Err(DaemonError::Stopped),
            Err(_) => Err(DaemonError::Timeout("link handshake")),
        }
    }

    /// Builds a circuit through `path` (descriptors of every hop known) and
    /// waits until it is ready.
    pub async fn build_circuit(
        &self,
        path: &[Descriptor],
        timeout: Duration,
    ) -> Result<CircuitRef, DaemonError> {
        let first = path
            .first()
            .ok_or(DaemonError::NotEnoughRelays("empty path".into()))?;
        let first_addr = first
            .addrs
            .first()
            .cloned()
            .ok_or(DaemonError::NoDescriptor(first.node_id()))?;
        let link = self
            .ensure_link(&PeerAddr {
                id: first.node_id(),
                link: first_addr,
            })
            .await?;
        let hops = path
            .iter()
            .map(|d| HopSpec {
                id: d.node_id(),
                onion_key: d.onion_key,
                addr: d.addrs.first().map(|a| a.to_string()).unwrap_or_default(),
            })
            .collect();
        let (circ, rx) = {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            let circ = st.node.build_circuit(now, link, hops)?;
            let (tx, rx) = oneshot::channel();
            st.circuit_waiters.insert(circ, tx);
            (circ, rx)
        };
        self.inner.wake.notify_one();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(circ),
            Ok(Ok(Err(r))) => Err(DaemonError::Circuit(r)),
            Ok(Err(_)) => Err(DaemonError::Stopped),
            Err(_) => {
                self.close_circuit(circ);
                Err(DaemonError::Timeout("circuit build"))
            }
        }
    }

    /// Whether a circuit this node built is still open.
    pub fn circuit_alive(&self, circ: CircuitRef) -> bool {
        self.inner.lock().node.circuit_hops(circ).is_some()
    }

    /// Closes a circuit (DESTROY towards the path).
    pub fn close_circuit(&self, circ: CircuitRef) -> bool {
        let ok = {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            st.node.close_circuit(now, circ).is_ok()
        };
        self.inner.wake.notify_one();
        ok
    }

    /// Closes `circ` once it has carried everything: no streams left, no
    /// cells queued here, the window (nearly) acknowledged, then a grace
    /// period for the last cells in flight. Closing at once after a stream
    /// finishes would let the DESTROY overtake data still queued on the way.
    pub fn close_circuit_when_idle(&self, circ: CircuitRef) {
        let d = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let info = d.inner.lock().node.circuit_info(circ);
                let Some(info) = info else { return };
                let idle = info.streams == 0
                    && info.queued == 0
                    && info.inflight.unwrap_or(0) < relay_kernel::flow::SENDME_INC;
                if idle {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            d.close_circuit(circ);
        });
    }

    /// Opens a stream on a ready circuit and waits for the exit's answer.
    pub async fn open_stream(
        &self,
        circ: CircuitRef,
        kind: StreamKind,
        target: TargetAddr,
        timeout: Duration,
    ) -> Result<RelayStream, DaemonError> {
        let (s, rx) = {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            let s = st.node.open_stream(now, circ, kind, &target)?;
            let (tx, rx) = oneshot::channel();
            st.streams.insert(
                s,
                StreamSlot {
                    opened: Some(tx),
                    ..Default::default()
                },
            );
            (s, rx)
        };
        self.inner.wake.notify_one();
        let stream = RelayStream::new(self.inner.clone(), s);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(stream),
            Ok(Ok(Err(r))) => Err(DaemonError::Stream(r)),
            Ok(Err(_)) => Err(DaemonError::Stopped),
            Err(_) => Err(DaemonError::Stream(EndReason::Timeout)),
        }
    }

    /// Asks the exit of `circ` to resolve `host`.
    pub async fn resolve(
        &self,
        circ: CircuitRef,
        host: &str,
        timeout: Duration,
    ) -> Result<Vec<std::net::IpAddr>, DaemonError> {
        let (s, rx) = {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            let s = st.node.resolve(now, circ, host)?;
            let (tx, rx) = oneshot::channel();
            st.streams.insert(
                s,
                StreamSlot {
                    resolved: Some(tx),
                    ..Default::default()
                },
            );
            (s, rx)
        };
        self.inner.wake.notify_one();
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(DaemonError::Stream(EndReason::Destroy)),
            Err(_) => Err(DaemonError::Stream(EndReason::Timeout)),
        };
        // The slot is ours alone (no stream handle): forget it whatever
        // happened, and tell the exit if we gave up waiting.
        let mut st = self.inner.lock();
        if st.streams.remove(&s).is_some() && result.is_err() {
            let now = self.inner.now();
            let _ = st.node.close_stream(now, s, EndReason::Timeout);
        }
        drop(st);
        self.inner.wake.notify_one();
        result
    }

    /// Accepts a stream requested by a client (exit and internal services).
    pub(crate) fn accept_stream(
        &self,
        s: StreamRef,
        bound: Option<SocketAddr>,
    ) -> Result<RelayStream, DaemonError> {
        {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            st.node.accept_stream(now, s, bound)?;
            st.streams.entry(s).or_default();
        }
        self.inner.wake.notify_one();
        Ok(RelayStream::new(self.inner.clone(), s))
    }

    /// Refuses a requested stream with `reason`.
    pub(crate) fn refuse_stream(&self, s: StreamRef, reason: EndReason) {
        {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            let _ = st.node.close_stream(now, s, reason);
            st.streams.remove(&s);
        }
        self.inner.wake.notify_one();
    }

    /// Answers a RESOLVE.
    pub(crate) fn resolve_reply(&self, s: StreamRef, addrs: &[std::net::IpAddr]) {
        {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            let _ = st.node.resolve_reply(now, s, addrs);
        }
        self.inner.wake.notify_one();
    }

    /// Kernel and link counters, circuits, streams, for the control port.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.inner.lock();
        Snapshot {
            stats: st.node.stats(),
            circuits: st.node.circuits(),
            streams: st.node.streams(),
            peers: st
                .links
                .iter()
                .map(|(id, l)| (*id, l.peer, l.remote, l.initiator))
                .collect(),
        }
    }

    /// Messages received from `send`.
    pub fn inbox(&self) -> Vec<String> {
        self.inner
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn push_inbox(&self, msg: String) {
        let mut inbox = self.inner.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.len() >= 100 {
            inbox.pop_front();
        }
        inbox.push_back(msg);
    }

    /// Closes every circuit and link (SIGINT/SIGTERM), then gives the links
    /// a moment to deliver the DESTROY cells.
    pub async fn shutdown(&self) {
        let links: Vec<LinkSender> = {
            let mut st = self.inner.lock();
            st.stopping = true;
            let now = self.inner.now();
            let origin: Vec<CircuitRef> =
                st.node.circuits().into_iter().map(|c| c.circuit).collect();
            for c in origin {
                let _ = st.node.close_circuit(now, c);
            }
            st.links.values().map(|l| l.tx.clone()).collect()
        };
        self.inner.wake.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for l in links {
            l.close();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A point-in-time view for listings.
pub struct Snapshot {
    /// Kernel counters.
    pub stats: relay_kernel::NodeStats,
    /// Circuits.
    pub circuits: Vec<relay_kernel::node::CircuitInfo>,
    /// Streams.
    pub streams: Vec<relay_kernel::stream::StreamInfo>,
    /// Links: id, peer, remote address, whether we opened it.
    pub peers: Vec<(LinkId, NodeId, SocketAddr, bool)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn node(listen: bool, exit: bool) -> Daemon {
        let config = DaemonConfig {
            listen: if listen {
                vec![LinkAddr::parse("udt://127.0.0.1:0").unwrap()]
            } else {
                Vec::new()
            },
            exit_policy: if exit {
                ExitPolicy::parse_rules(&["accept 127.0.0.1:*"]).unwrap()
            } else {
                ExitPolicy::reject_all()
            },
            ..DaemonConfig::default()
        };
        Daemon::start(Keys::temporary(), config).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolve_at_the_exit_and_refusal_by_a_non_exit() {
        let exit = node(true, true).await;
        let plain = node(true, false).await;
        let client = node(false, false).await;
        for (relay, expect_addrs) in [(&exit, true), (&plain, false)] {
            let peer = relay.peer_addr().unwrap();
            client.ensure_link(&peer).await.unwrap();
            let desc = client
                .wait_descriptor(&relay.id(), Duration::from_secs(10))
                .await
                .unwrap();
            let circ = client
                .build_circuit(&[desc], Duration::from_secs(10))
                .await
                .unwrap();
            let addrs = client
                .resolve(circ, "localhost", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(
                addrs.iter().any(|a| a.is_loopback()),
                expect_addrs,
                "{addrs:?}"
            );
            // Nothing left behind for the finished request.
            assert!(client.inner.lock().streams.is_empty());
        }
    }
}
