//! udt links: our reliable UDP, the default link kind.
//!
//! `endpoint` and `conn` are the sans-IO protocol core (datagrams and `now`
//! in, datagrams, cells and events out), which netsim can drive in virtual
//! time; `packet` is the wire format and `cc` the congestion controllers.
//! [`UdtTransport`] is the tokio driver: one UDP socket per node for all
//! peers, one task owning the endpoint.

pub mod cc;
pub mod conn;
pub mod endpoint;
pub mod packet;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use relay_kernel::{Cell, NodeId, Time};
use relay_link::link::CloseCell;
use relay_link::{
    link_pair, BoxFut, CloseReason, Identity, Link, LinkConfig, LinkError, Outgoing, Scheme,
    StaticKey, Transport,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;

use crate::conn::{ConnConfig, Ended};
use crate::endpoint::{Endpoint, EndpointConfig, EndpointEvent};

/// A hash map with a seeded foldhash (peers choose circuit ids and
/// addresses, so the seed comes from the node's randomness).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

pub(crate) fn fast_map<K, V>(seed: u64) -> FastMap<K, V> {
    HashMap::with_hasher(foldhash::fast::FixedState::with_seed(seed))
}

/// Cells the node may have queued on one connection before it waits.
const SEND_CREDIT: usize = 2048;

enum Cmd {
    Connect {
        addr: SocketAddr,
        expected: NodeId,
        reply: oneshot::Sender<Result<Link, LinkError>>,
    },
    Out(SocketAddr, Outgoing),
}

/// A udt endpoint on one UDP socket.
pub struct UdtTransport {
    local: SocketAddr,
    cmd: mpsc::Sender<Cmd>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Link>>,
    dead: Arc<AtomicBool>,
    task: AbortHandle,
}

impl UdtTransport {
    /// Binds `addr` (port 0 picks one).
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: LinkConfig,
    ) -> Result<UdtTransport, LinkError> {
        // Large buffers: a burst of a whole congestion window must not be
        // dropped by the kernel before the driver reads it.
        let socket = UdpSocket::from_std(relay_link::udp::bind_udp(addr, 8 << 20)?)?;
        let local = socket.local_addr()?;
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| LinkError::Handshake("no randomness"))?;
        let ep_config = EndpointConfig {
            conn: ConnConfig {
                idle_timeout: config.idle_timeout.as_nanos() as u64,
                keepalive: config.keepalive.as_nanos() as u64,
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
            cmd_tx: cmd_tx.clone(),
            accepted: acc_tx,
            links: HashMap::new(),
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
    incoming: mpsc::Sender<Cell>,
    closed: CloseCell,
    credit: Arc<Semaphore>,
    forwarder: AbortHandle,
    /// A cell the node's channel had no room for.
    held: Option<Cell>,
}

struct Driver {
    socket: UdpSocket,
    endpoint: Endpoint,
    start: Instant,
    cmd_tx: mpsc::Sender<Cmd>,
    accepted: mpsc::Sender<Link>,
    links: HashMap<SocketAddr, LinkSlot>,
    dialing: HashMap<SocketAddr, oneshot::Sender<Result<Link, LinkError>>>,
    config: LinkConfig,
    dead: Arc<AtomicBool>,
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64)
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::with_capacity(2048);
        loop {
            let deadline = self
                .endpoint
                .poll_timeout()
                .map(|t| self.start + std::time::Duration::from_nanos(t.nanos()));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        if !self.dead.load(Ordering::Relaxed) {
                            let now = self.now();
                            self.endpoint.handle_datagram(now, from, &mut buf[..n]);
                            // Drain whatever else already arrived.
                            while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
                                self.endpoint.handle_datagram(now, from, &mut buf[..n]);
                            }
                        }
                    }
                }
                Some(cmd) = cmds.recv() => {
                    self.on_cmd(cmd);
                    while let Ok(cmd) = cmds.try_recv() {
                        self.on_cmd(cmd);
                    }
                }
                _ = sleep => {
                    let now = self.now();
                    self.endpoint.handle_timeout(now);
                }
            }
            if self.dead.load(Ordering::Relaxed) {
                return;
            }
            self.after_io(&mut out).await;
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = self.now();
        match cmd {
            Cmd::Connect {
                addr,
                expected,
                reply,
            } => match self.endpoint.connect(now, addr, expected) {
                Ok(()) => {
                    self.dialing.insert(addr, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Out(addr, o) => {
                if let Some(c) = self.endpoint.conn(&addr) {
                    match o {
                        Outgoing::Cell(cell) => c.queue_cell(cell),
                        Outgoing::Close => c.close(),
                    }
                }
            }
        }
    }

    async fn after_io(&mut self, out: &mut Vec<u8>) {
        let now = self.now();
        // Events.
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                EndpointEvent::Connected {
                    addr,
                    peer,
                    initiator,
                } => {
                    let link = self.open_link(addr, peer, initiator);
                    if initiator {
                        if let Some(reply) = self.dialing.remove(&addr) {
                            let _ = reply.send(Ok(link));
                        }
                    } else {
                        let _ = self.accepted.try_send(link);
                    }
                }
                EndpointEvent::ConnectFailed { addr, error } => {
                    if let Some(reply) = self.dialing.remove(&addr) {
                        let _ = reply.send(Err(error));
                    }
                }
                EndpointEvent::Closed { addr, reason } => {
                    if let Some(slot) = self.links.remove(&addr) {
                        slot.closed.set(match reason {
                            Ended::Peer => CloseReason::Peer,
                            Ended::Local => CloseReason::Local,
                            Ended::IdleTimeout => CloseReason::IdleTimeout,
                        });
                        slot.forwarder.abort();
                    }
                }
            }
        }
        // Cells for the nodes, and send credit back.
        let addrs: Vec<SocketAddr> = self.endpoint.addrs().to_vec();
        for addr in addrs {
            let (Some(conn), Some(slot)) = (self.endpoint.conn(&addr), self.links.get_mut(&addr))
            else {
                continue;
            };
            let freed = conn.take_first_sent();
            if freed > 0 {
                slot.credit.add_permits(freed as usize);
            }
            if let Some(c) = slot.held.take() {
                if let Err(mpsc::error::TrySendError::Full(c)) = slot.incoming.try_send(c) {
                    slot.held = Some(c);
                    continue;
                }
            }
            while let Some(c) = conn.pop_ready() {
                match slot.incoming.try_send(c) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(c)) => {
                        conn.unpop_ready(c);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
        // Datagrams.
        while let Some(to) = self.endpoint.poll_transmit(now, out) {
            let _ = self.socket.send_to(out, to).await;
        }
    }

    fn open_link(&mut self, addr: SocketAddr, peer: NodeId, initiator: bool) -> Link {
        let (link, io) = link_pair(&self.config, peer, addr, initiator);
        let credit = Arc::new(Semaphore::new(SEND_CREDIT));
        let cmd = self.cmd_tx.clone();
        let c2 = credit.clone();
        let mut outgoing = io.outgoing;
        let forwarder = tokio::spawn(async move {
            while let Some(o) = outgoing.recv().await {
                if matches!(o, Outgoing::Cell(_)) {
                    match c2.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
                if cmd.send(Cmd::Out(addr, o)).await.is_err() {
                    return;
                }
            }
            // The node dropped its sender: close gracefully.
            let _ = cmd.send(Cmd::Out(addr, Outgoing::Close)).await;
        })
        .abort_handle();
        self.links.insert(
            addr,
            LinkSlot {
                incoming: io.incoming,
                closed: io.closed,
                credit,
                forwarder,
                held: None,
            },
        );
        link
    }
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
                .send(Cmd::Connect {
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
