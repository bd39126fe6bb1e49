//! udt links: our reliable UDP, the default link kind.
//!
//! `endpoint` and `conn` are the sans-IO protocol core (datagrams and `now`
//! in, datagrams, cells and events out), which netsim can drive in virtual
//! time; `packet` is the wire format, `cc` the congestion controllers,
//! `reorder` the loss-detection thresholds, `pathsim` a two-endpoint path
//! simulator for tests and benches.
//! [`UdtTransport`] is the tokio driver: one UDP socket per node for all
//! peers, one task owning the endpoint.

pub mod cc;
pub mod conn;
mod copies;
pub mod endpoint;
mod min_tree;
pub mod mtu;
pub mod packet;
pub mod pathsim;
pub mod reorder;
mod sent;
mod socket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, SelectAll, StreamExt};
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use relay_kernel::{Cell, NodeId, Time};
use relay_link::link::CloseCell;
use relay_link::{
    link_pair, BoxFut, CellRx, CellTx, CloseReason, Identity, Link, LinkConfig, LinkError, Push,
    Scheme, StaticKey, Transport,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::cc::CongestionKind;
use crate::conn::{ConnConfig, Ended};
use crate::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};
use crate::socket::{BatchSocket, GsoBatch, RecvBufs};

/// A hash map with a seeded foldhash (peers choose circuit ids and
/// addresses, so the seed comes from the node's randomness).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

pub(crate) fn fast_map<K, V>(seed: u64) -> FastMap<K, V> {
    HashMap::with_hasher(foldhash::fast::FixedState::with_seed(seed))
}

/// Cells the node may have queued on one connection before it waits.
const SEND_CREDIT: usize = 2048;
/// Most cells taken from one link's queue per poll.
const TAKE_BATCH: usize = 256;
/// The largest datagram size discovery tries on real sockets: a jumbo
/// Ethernet frame's UDP payload (9,000 - 28 bytes), 17 cells. Jumbo-frame
/// networks carry it; elsewhere the search settles at the largest size
/// the path carries.
pub const PROBE_CEILING: usize = 8972;
/// The ceiling for peers at loopback addresses: the largest UDP payload
/// of a 65,536-byte loopback MTU over IPv6 (IPv4 would allow 20 bytes
/// more), 126 cells. In a loopback relay chain it cut relayd's CPU per GB
/// to 0.80x of the jumbo-frame ceiling's (docs/benchmarks.md).
pub const LOOPBACK_PROBE_CEILING: usize = 65_487;

struct Connect {
    addr: SocketAddr,
    expected: NodeId,
    reply: oneshot::Sender<Result<Link, LinkError>>,
}

/// How many more cells a connection's send buffer takes; the link's
/// outgoing stream waits on it when it reaches 0.
#[derive(Default)]
struct Credit {
    avail: AtomicUsize,
    waker: AtomicWaker,
}

impl Credit {
    fn add(&self, n: usize) {
        self.avail.fetch_add(n, Ordering::AcqRel);
        self.waker.wake();
    }
}

/// A batch of cells from one link's node, or (`None`) the end of its queue,
/// tagged with the link's connection (ids are never reused, so a stale
/// stream of a closed link cannot feed a newer connection).
type OutBatch = (ConnId, Option<Vec<Cell>>);

/// The node's queue for one link as a stream of batches, taking no more
/// than the connection's credit allows.
fn outgoing_stream(
    id: ConnId,
    mut rx: CellRx,
    credit: Arc<Credit>,
) -> impl futures_util::Stream<Item = OutBatch> + Send {
    let mut ended = false;
    futures_util::stream::poll_fn(move |cx| {
        if ended {
            return Poll::Ready(None);
        }
        let mut room = credit.avail.load(Ordering::Acquire);
        if room == 0 {
            credit.waker.register(cx.waker());
            room = credit.avail.load(Ordering::Acquire);
            if room == 0 {
                return Poll::Pending;
            }
        }
        let mut cells = Vec::new();
        match rx.poll_recv_many(cx, &mut cells, room.min(TAKE_BATCH)) {
            Poll::Ready(0) => {
                ended = true;
                Poll::Ready(Some((id, None)))
            }
            Poll::Ready(n) => {
                credit.avail.fetch_sub(n, Ordering::AcqRel);
                Poll::Ready(Some((id, Some(cells))))
            }
            Poll::Pending => Poll::Pending,
        }
    })
}

/// A udt endpoint on one UDP socket.
pub struct UdtTransport {
    local: SocketAddr,
    cmd: mpsc::Sender<Connect>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Link>>,
    dead: Arc<AtomicBool>,
    task: AbortHandle,
}

impl UdtTransport {
    /// Binds `addr` (port 0 picks one), with the default congestion
    /// controller.
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: LinkConfig,
    ) -> Result<UdtTransport, LinkError> {
        Self::bind_with_cc(addr, identity, config, CongestionKind::default()).await
    }

    /// Binds `addr`; every connection of this endpoint runs `cc`.
    pub async fn bind_with_cc(
        addr: SocketAddr,
        identity: &Identity,
        config: LinkConfig,
        cc: CongestionKind,
    ) -> Result<UdtTransport, LinkError> {
        // Large buffers: a burst of a whole congestion window must not be
        // dropped by the kernel before the driver reads it.
        let socket = BatchSocket::new(relay_link::udp::bind_udp(addr, 8 << 20)?)?;
        let local = socket.local_addr()?;
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| LinkError::Handshake("no randomness"))?;
        let ep_config = EndpointConfig {
            conn: ConnConfig {
                idle_timeout: config.idle_timeout.as_nanos() as u64,
                keepalive: config.keepalive.as_nanos() as u64,
                cc,
                max_datagram_probe: PROBE_CEILING,
                loopback_max_datagram_probe: LOOPBACK_PROBE_CEILING,
                ..ConnConfig::default()
            },
            handshake_timeout: config.handshake_timeout.as_nanos() as u64,
            ..EndpointConfig::default()
        };
        let endpoint = Endpoint::new(StaticKey::new(identity)?, ep_config, secret);
        let (cmd_tx, cmd_rx) = mpsc::channel(8192);
        let (acc_tx, acc_rx) = mpsc::channel(64);
        let dead = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            socket,
            endpoint,
            start: Instant::now(),
            accepted: acc_tx,
            links: HashMap::new(),
            outgoing: SelectAll::new(),
            room: FuturesUnordered::new(),
            dialing: HashMap::new(),
            config,
            dead: dead.clone(),
        };
        let task = tokio::spawn(driver.run(cmd_rx)).abort_handle();
        Ok(UdtTransport {
            local,
            cmd: cmd_tx,
            accepted: tokio::sync::Mutex::new(acc_rx),
            dead,
            task,
        })
    }
}

struct LinkSlot {
    incoming: CellTx,
    closed: CloseCell,
    credit: Arc<Credit>,
    /// A wake-up is pending for when the node's queue has room again.
    awaiting_room: bool,
}

struct Driver {
    socket: BatchSocket,
    endpoint: Endpoint,
    start: Instant,
    accepted: mpsc::Sender<Link>,
    links: HashMap<ConnId, LinkSlot>,
    outgoing: SelectAll<futures_util::stream::BoxStream<'static, OutBatch>>,
    /// Wake-ups for links whose node queue was full.
    room: FuturesUnordered<futures_util::future::BoxFuture<'static, ConnId>>,
    dialing: HashMap<ConnId, oneshot::Sender<Result<Link, LinkError>>>,
    config: LinkConfig,
    dead: Arc<AtomicBool>,
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64)
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Connect>) {
        let mut bufs = RecvBufs::new();
        let mut out = Vec::with_capacity(2048);
        let mut batch = GsoBatch::new(self.socket.max_segments());
        // One timer for the driver's life, moved rather than made anew each
        // turn: registering a fresh timer earlier than the runtime's next
        // wake-up writes to its eventfd (an extra system call, and an extra
        // wake-up of this thread), which a loopback relay did ~1,400 times
        // a second. Moving a timer later costs nothing.
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(self.start.into()));
        let mut armed_for = None;
        loop {
            let deadline = self
                .endpoint
                .poll_timeout()
                .map(|t| self.start + std::time::Duration::from_nanos(t.nanos()));
            if deadline != armed_for {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(d.into());
                }
                armed_for = deadline;
            }
            tokio::select! {
                r = self.socket.readable() => {
                    if r.is_ok() {
                        self.receive(&mut bufs);
                    }
                }
                Some(cmd) = cmds.recv() => {
                    self.on_connect(cmd);
                    while let Ok(cmd) = cmds.try_recv() {
                        self.on_connect(cmd);
                    }
                }
                Some(id) = self.room.next(), if !self.room.is_empty() => {
                    if let Some(slot) = self.links.get_mut(&id) {
                        slot.awaiting_room = false;
                    }
                }
                Some(batch) = self.outgoing.next(), if !self.outgoing.is_empty() => {
                    self.on_outgoing(batch);
                    // Take whatever else the nodes queued meanwhile.
                    while let Some(Some(batch)) = self.outgoing.next().now_or_never() {
                        self.on_outgoing(batch);
                    }
                }
                _ = &mut sleep, if armed_for.is_some() => {
                    // Fired: a timer past its deadline stays ready, so it
                    // is re-armed for whatever comes next.
                    armed_for = None;
                    let now = self.now();
                    self.endpoint.handle_timeout(now);
                }
            }
            if self.dead.load(Ordering::Relaxed) {
                return;
            }
            self.after_io(&mut out, &mut batch).await;
        }
    }

    /// Reads and handles what has arrived, a bounded number of batches at
    /// a time so that sending gets its turn.
    fn receive(&mut self, bufs: &mut RecvBufs) {
        const MAX_CALLS: usize = 64;
        let now = self.now();
        for _ in 0..MAX_CALLS {
            let Ok(n) = self.socket.try_recv(bufs) else {
                return;
            };
            if self.dead.load(Ordering::Relaxed) {
                continue;
            }
            let endpoint = &mut self.endpoint;
            bufs.for_each(n, |from, dg| endpoint.handle_datagram(now, from, dg));
        }
    }

    fn on_connect(&mut self, cmd: Connect) {
        let now = self.now();
        let Connect {
            addr,
            expected,
            reply,
        } = cmd;
        match self.endpoint.connect(now, addr, expected) {
            Ok(id) => {
                self.dialing.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn on_outgoing(&mut self, (id, cells): OutBatch) {
        if !self.links.contains_key(&id) {
            return;
        }
        let Some(c) = self.endpoint.conn_by_id(id) else {
            return;
        };
        match cells {
            Some(cells) => cells.into_iter().for_each(|cell| c.queue_cell(cell)),
            // The node closed or dropped the link: close gracefully.
            None => c.close(),
        }
    }

    async fn after_io(&mut self, out: &mut Vec<u8>, batch: &mut GsoBatch) {
        let now = self.now();
        // Events.
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                EndpointEvent::Connected {
                    id,
                    addr,
                    peer,
                    initiator,
                } => {
                    let link = self.open_link(id, addr, peer, initiator);
                    if initiator {
                        if let Some(reply) = self.dialing.remove(&id) {
                            let _ = reply.send(Ok(link));
                        }
                    } else {
                        let _ = self.accepted.try_send(link);
                    }
                }
                EndpointEvent::ConnectFailed { id, error, .. } => {
                    if let Some(reply) = self.dialing.remove(&id) {
                        let _ = reply.send(Err(error));
                    }
                }
                EndpointEvent::Closed { id, reason, .. } => {
                    if let Some(slot) = self.links.remove(&id) {
                        slot.closed.set(match reason {
                            Ended::Peer => CloseReason::Peer,
                            Ended::Local => CloseReason::Local,
                            Ended::IdleTimeout => CloseReason::IdleTimeout,
                            Ended::Replaced => CloseReason::Error("the peer restarted".to_string()),
                        });
                        // Dropping the slot ends the link's queues.
                    }
                }
            }
        }
        // Cells for the nodes, and send credit back.
        let ids: Vec<ConnId> = self.endpoint.ids().to_vec();
        for id in ids {
            let (Some(conn), Some(slot)) = (self.endpoint.conn_by_id(id), self.links.get_mut(&id))
            else {
                continue;
            };
            let freed = conn.take_first_sent();
            if freed > 0 {
                slot.credit.add(freed as usize);
            }
            // Cells stay in the connection while the node's queue is full
            // (the node is then behind; the connection's flow control
            // holds the peer back).
            if conn.ready_len() > 0
                && slot.incoming.push_from(|| conn.pop_ready()) == Push::Full
                && !slot.awaiting_room
            {
                slot.awaiting_room = true;
                let tx = slot.incoming.clone();
                self.room.push(
                    async move {
                        let _ = tx.ready().await;
                        id
                    }
                    .boxed(),
                );
            }
        }
        // Datagrams, in GSO batches.
        while let Some(to) = self.endpoint.poll_transmit(now, out) {
            if !batch.fits(to, out.len()) {
                flush(&self.socket, batch).await;
            }
            batch.push(to, out);
        }
        flush(&self.socket, batch).await;
    }

    fn open_link(&mut self, id: ConnId, addr: SocketAddr, peer: NodeId, initiator: bool) -> Link {
        let (link, io) = link_pair(&self.config, peer, addr, initiator);
        let credit = Arc::new(Credit::default());
        credit.add(SEND_CREDIT);
        self.outgoing
            .push(outgoing_stream(id, io.outgoing, credit.clone()).boxed());
        self.links.insert(
            id,
            LinkSlot {
                incoming: io.incoming,
                closed: io.closed,
                credit,
                awaiting_room: false,
            },
        );
        link
    }
}

/// Sends a gathered batch and empties it.
async fn flush(socket: &BatchSocket, batch: &mut GsoBatch) {
    if let Some((to, bytes, segment)) = batch.contents() {
        socket.send(to, bytes, segment).await;
    }
    batch.clear();
}

impl Transport for UdtTransport {
    fn scheme(&self) -> Scheme {
        Scheme::Udt
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn connect(&self, addr: SocketAddr, expected: NodeId) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.cmd
                .send(Connect {
                    addr,
                    expected,
                    reply,
                })
                .await
                .map_err(|_| LinkError::Closed)?;
            rx.await.map_err(|_| LinkError::Closed)?
        })
    }

    fn accept(&self) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let mut rx = self.accepted.lock().await;
            rx.recv().await.ok_or(LinkError::Closed)
        })
    }

    fn crash(&self) {
        self.dead.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

impl Drop for UdtTransport {
    fn drop(&mut self) {
        self.task.abort();
    }
}
