//! The link interface relayd and netsim use: a `Transport` listens and
//! dials; an established `Link` is a pair of cell queues ([`crate::queue`]) plus the
//! authenticated peer id. Each link kind runs its own tasks behind the
//! channels, so the node's event loop treats every kind alike.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_kernel::{Cell, NodeId};

use crate::addr::Scheme;
use crate::error::LinkError;
use crate::queue::{cell_queue, CellRx, CellTx, Push};

/// A boxed future (the trait is used as `dyn Transport`).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Link tunables.
#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    /// A link with nothing heard for this long is closed.
    pub idle_timeout: Duration,
    /// Send a keepalive after this long without sending anything.
    pub keepalive: Duration,
    /// Give up a handshake after this long.
    pub handshake_timeout: Duration,
    /// Cells buffered in each direction between the node and the link task.
    pub channel_cells: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            idle_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(4),
            handshake_timeout: Duration::from_secs(10),
            channel_cells: 4096,
        }
    }
}

/// Why a link closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Closed by us.
    Local,
    /// The peer closed it after sending everything.
    Peer,
    /// Nothing heard within the idle timeout.
    IdleTimeout,
    /// An error (I/O or protocol).
    Error(String),
}

/// Shared record of why a link closed.
#[derive(Clone, Default, Debug)]
pub struct CloseCell(Arc<Mutex<Option<CloseReason>>>);

impl CloseCell {
    /// Records the first reason given.
    pub fn set(&self, r: CloseReason) {
        if let Ok(mut g) = self.0.lock() {
            if g.is_none() {
                *g = Some(r);
            }
        }
    }
    /// The reason, once closed.
    pub fn get(&self) -> Option<CloseReason> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// Sends cells on a link (cloneable). Dropping every sender closes the
/// link gracefully, like [`LinkSender::close`].
#[derive(Clone)]
pub struct LinkSender {
    tx: CellTx,
}

impl LinkSender {
    /// Queues a cell; waits while the link's buffer is full.
    pub async fn send(&self, cell: Cell) -> Result<(), LinkError> {
        self.tx.send(cell).await
    }

    /// Queues a cell if there is room now; gives it back if the buffer is
    /// full, or `None` if the link is closed.
    pub fn try_send(&self, cell: Cell) -> Result<(), Option<Cell>> {
        self.tx.try_send(cell)
    }

    /// Queues cells from `next` while there is room, under one lock (see
    /// [`CellTx::push_from`]).
    pub fn push_from(&self, next: impl FnMut() -> Option<Cell>) -> Push {
        self.tx.push_from(next)
    }

    /// Waits until the link can take at least one more cell.
    pub async fn ready(&self) -> Result<(), LinkError> {
        self.tx.ready().await
    }

    /// Closes gracefully: everything queued before is delivered first.
    pub fn close(&self) {
        self.tx.close()
    }
}

/// Receives cells from a link.
pub struct LinkReceiver {
    rx: CellRx,
    closed: CloseCell,
}

impl LinkReceiver {
    /// The next cell, or None once the link is closed and drained.
    pub async fn recv(&mut self) -> Option<Cell> {
        self.rx.recv().await
    }

    /// Moves up to `max` received cells to `out`; 0 once the link is
    /// closed and drained.
    pub async fn recv_many(&mut self, out: &mut Vec<Cell>, max: usize) -> usize {
        self.rx.recv_many(out, max).await
    }

    /// Poll form of [`LinkReceiver::recv_many`].
    pub fn poll_recv_many(
        &mut self,
        cx: &mut std::task::Context<'_>,
        out: &mut Vec<Cell>,
        max: usize,
    ) -> std::task::Poll<usize> {
        self.rx.poll_recv_many(cx, out, max)
    }

    /// Why the link closed (None while open).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.get()
    }
}

/// An established, authenticated link.
pub struct Link {
    /// The peer's node id, proven by the handshake.
    pub peer: NodeId,
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// Whether this side dialled.
    pub initiator: bool,
    /// Send side.
    pub tx: LinkSender,
    /// Receive side.
    pub rx: LinkReceiver,
}

/// The link task's ends of the channels.
pub struct LinkIo {
    /// Cells from the node; its end means "close gracefully".
    pub outgoing: CellRx,
    /// Cells for the node.
    pub incoming: CellTx,
    /// Where the task records why it ended.
    pub closed: CloseCell,
}

/// Makes the channel pair for a new link.
pub fn link_pair(
    config: &LinkConfig,
    peer: NodeId,
    remote: SocketAddr,
    initiator: bool,
) -> (Link, LinkIo) {
    let (out_tx, out_rx) = cell_queue(config.channel_cells);
    let (in_tx, in_rx) = cell_queue(config.channel_cells);
    let closed = CloseCell::default();
    (
        Link {
            peer,
            remote,
            initiator,
            tx: LinkSender { tx: out_tx },
            rx: LinkReceiver {
                rx: in_rx,
                closed: closed.clone(),
            },
        },
        LinkIo {
            outgoing: out_rx,
            incoming: in_tx,
            closed,
        },
    )
}

/// A link kind: listens on one local address and dials peers.
pub trait Transport: Send + Sync {
    /// Which kind.
    fn scheme(&self) -> Scheme;
    /// The bound local address.
    fn local_addr(&self) -> SocketAddr;
    /// Dials `addr`; fails with [`LinkError::WrongPeer`] unless the peer
    /// proves it is `expected`.
    fn connect(&self, addr: SocketAddr, expected: NodeId) -> BoxFut<'_, Result<Link, LinkError>>;
    /// The next link a peer opened to us.
    fn accept(&self) -> BoxFut<'_, Result<Link, LinkError>>;
    /// Stops all I/O at once without telling peers, as if the process had
    /// died (tests use it to check that peers notice).
    fn crash(&self);
}
