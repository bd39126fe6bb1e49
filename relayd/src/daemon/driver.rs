//! The driver task: cells from links into the node, cells from the node
//! onto links, kernel timers, and kernel events dispatched to waiting
//! handles or to the services (exit, tracker, messages).
//!
//! Cells move in batches: a link's received cells are taken from its queue
//! all at once and handled under one lock, and a link's outgoing cells are
//! pushed while its queue has room, under one queue lock (per-cell channel
//! operations cost more than the onion layer itself; docs/benchmarks.md).
//!
//! Backpressure: the node's cells for a link stay in the node while the
//! link's queue is full, and that link is not flushed again until it
//! signals room, so a slow link makes the kernel's per-circuit queues
//! (bounded) hold the cells, and the kernel's end-to-end windows slow the
//! senders.

use std::sync::{Arc, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures::{FutureExt, StreamExt};
use relay_kernel::{Cell, CellCommand, Event, LinkId, NodeId, StreamKind, Time};
use relay_link::{Link, LinkAddr, Push};
use tokio::sync::mpsc;

use super::{Daemon, Inner, LinkSlot, State};
use crate::descriptor::Descriptor;

/// Cells taken from one link per batch.
const BATCH: usize = 256;
/// Batches handled per lock acquisition before output is flushed.
const BATCHES_PER_LOCK: usize = 16;

/// A batch of received cells, or `None` once the link has closed.
type LinkRx = BoxStream<'static, (LinkId, Option<Vec<Cell>>)>;

fn batch_stream(
    id: LinkId,
    mut rx: relay_link::LinkReceiver,
) -> impl futures::Stream<Item = (LinkId, Option<Vec<Cell>>)> + Send {
    let mut ended = false;
    futures::stream::poll_fn(move |cx| {
        if ended {
            return std::task::Poll::Ready(None);
        }
        let mut cells = Vec::new();
        rx.poll_recv_many(cx, &mut cells, BATCH).map(|n| {
            ended = n == 0;
            Some((id, (n > 0).then_some(cells)))
        })
    })
}

/// Runs until the process ends.
pub(super) async fn run(inner: Arc<Inner>, mut new_links: mpsc::UnboundedReceiver<Link>) {
    let mut links: SelectAll<LinkRx> = SelectAll::new();
    let mut room: FuturesUnordered<BoxFuture<'static, LinkId>> = FuturesUnordered::new();
    // One timer for the whole life of the driver, moved only when the
    // kernel's next deadline changes: a fresh `sleep_until` per wake-up
    // cost a timer-wheel insert and removal each time (it showed in the
    // profile).
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    let mut armed: Option<Time> = None;
    loop {
        let woke = tokio::select! {
            Some(link) = new_links.recv() => Wake::Link(link),
            Some((id, cells)) = links.next(), if !links.is_empty() => Wake::Cells(id, cells),
            Some(id) = room.next(), if !room.is_empty() => Wake::Room(id),
            _ = inner.wake.notified() => Wake::Notified,
            _ = &mut timer, if armed.is_some() => Wake::Timer,
        };
        // Everything below runs under one lock acquisition per wake-up.
        let mut st = inner.lock();
        match woke {
            Wake::Link(link) => register(&inner, &mut st, link, &mut links),
            Wake::Cells(id, cells) => {
                // One clock read per wake-up, not per cell (it showed in
                // the profile); cells of one batch arrived together anyway.
                let now = inner.now();
                let mut next = Some((id, cells));
                let mut n = 0;
                while let Some((id, cells)) = next.take() {
                    match cells {
                        Some(cells) => {
                            for cell in cells {
                                incoming(&inner, &mut st, now, id, cell);
                            }
                        }
                        None => link_closed(&inner, &mut st, id),
                    }
                    n += 1;
                    if n < BATCHES_PER_LOCK {
                        next = links.next().now_or_never().flatten();
                    }
                }
            }
            Wake::Room(id) => {
                if let Some(l) = st.links.get_mut(&id) {
                    l.blocked = false;
                }
                flush_link(&mut st, id);
            }
            Wake::Notified => {}
            Wake::Timer => {
                armed = None;
                let now = inner.now();
                st.node.handle_timeout(now);
            }
        }
        dispatch_events(&inner, &mut st);
        flush_ready(&mut st);
        for id in std::mem::take(&mut st.need_room) {
            room.push(room_wait(&st, id));
        }
        let next = st.node.poll_timeout();
        st.armed = next;
        release(st);
        if next != armed {
            armed = next;
            let at = next.map_or_else(far, |t| {
                tokio::time::Instant::from_std(inner.start) + Duration::from_nanos(t.0)
            });
            timer.as_mut().reset(at);
        }
    }
}

/// What woke the driver.
enum Wake {
    Link(Link),
    Cells(LinkId, Option<Vec<Cell>>),
    Room(LinkId),
    Notified,
    Timer,
}

/// A future that resolves once link `id` can take cells again.
fn room_wait(st: &State, id: LinkId) -> BoxFuture<'static, LinkId> {
    let tx = st.links.get(&id).map(|l| l.tx.clone());
    async move {
        if let Some(tx) = tx {
            let _ = tx.ready().await;
        }
        id
    }
    .boxed()
}

/// Hands every link's queued cells to the link, and events to their
/// handles, after an application call made under the lock, then releases
/// the lock; wakes the driver only when it has something to do (a link that
/// filled up to watch, or a kernel timer earlier than the one it sleeps
/// on). Stream reads and writes thus move cells to links without a driver
/// wake-up per call.
pub(super) fn settle(inner: &Arc<Inner>, mut st: MutexGuard<'_, State>) {
    dispatch_events(inner, &mut st);
    flush_ready(&mut st);
    let earlier = st
        .node
        .poll_timeout()
        .is_some_and(|t| st.armed.is_none_or(|a| t < a));
    let need_driver = earlier || !st.need_room.is_empty();
    release(st);
    if need_driver {
        inner.wake.notify_one();
    }
}

/// Unlocks the node, then wakes the tasks whose wakers events collected:
/// a woken task usually takes the lock at once, so waking it while the
/// lock is held makes it block on the lock (it showed as contended locks).
pub(super) fn release(mut st: MutexGuard<'_, State>) {
    let wakes = std::mem::take(&mut st.wakes);
    drop(st);
    wakes.into_iter().for_each(Waker::wake);
}

/// Flushes every link the node reports as having cells.
fn flush_ready(st: &mut State) {
    while let Some(id) = st.node.poll_ready_link() {
        flush_link(st, id);
    }
}

fn register(inner: &Arc<Inner>, st: &mut State, link: Link, links: &mut SelectAll<LinkRx>) {
    let Link {
        peer,
        remote,
        initiator,
        tx,
        rx,
    } = link;
    let id = LinkId(st.next_link);
    st.next_link += 1;
    // Our descriptor first, so the neighbour can build circuits through us.
    let desc = inner
        .descriptor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(cell) = link_info_cell(&desc) {
        let _ = tx.try_send(cell);
    }
    let now = inner.now();
    st.node.link_up(now, id, peer, initiator);
    st.links.insert(
        id,
        LinkSlot {
            tx,
            peer,
            remote,
            initiator,
            blocked: false,
            info_at: None,
        },
    );
    links.push(Box::pin(batch_stream(id, rx)));
    st.connecting.remove(&peer);
    for w in st.link_waiters.remove(&peer).unwrap_or_default() {
        let _ = w.send(Ok(id));
    }
    tracing::debug!(%peer, %remote, initiator, "link up");
}

/// A LinkInfo cell carrying `desc`, if it fits.
pub(super) fn link_info_cell(desc: &[u8]) -> Option<Cell> {
    if desc.is_empty() || desc.len() > relay_kernel::BODY_LEN {
        return None;
    }
    let mut cell = Cell::new(0, CellCommand::LinkInfo);
    cell.body_mut()[..desc.len()].copy_from_slice(desc);
    Some(cell)
}

fn incoming(inner: &Arc<Inner>, st: &mut State, now: Time, id: LinkId, cell: Cell) {
    if cell.command() == Ok(CellCommand::LinkInfo) {
        let Some(slot) = st.links.get_mut(&id) else {
            return;
        };
        if slot
            .info_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        slot.info_at = Some(std::time::Instant::now());
        let peer = slot.peer;
        match Descriptor::decode(cell.body()) {
            Ok(d) if d.node_id() == peer => {
                Daemon {
                    inner: inner.clone(),
                }
                .learn(d);
            }
            Ok(_) => tracing::debug!(%peer, "link info names another node; ignored"),
            Err(e) => tracing::debug!(%peer, "bad link info: {e}"),
        }
        return;
    }
    st.node.handle_cell(now, id, cell);
}

fn link_closed(inner: &Arc<Inner>, st: &mut State, id: LinkId) {
    if let Some(l) = st.links.remove(&id) {
        tracing::debug!(peer = %l.peer, "link down");
    }
    let now = inner.now();
    st.node.link_down(now, id);
}

fn flush_link(st: &mut State, id: LinkId) {
    let State {
        node,
        links,
        need_room,
        ..
    } = st;
    let Some(l) = links.get_mut(&id) else {
        // Link gone: drop what the node had for it.
        while let Some(c) = node.poll_transmit(id) {
            node.recycle(c);
        }
        return;
    };
    if l.blocked {
        return;
    }
    match l.tx.push_from(|| node.poll_transmit(id)) {
        Push::Drained => {}
        Push::Full => {
            // The driver watches for room and flushes again.
            l.blocked = true;
            need_room.push(id);
        }
        // Closed: the link task is gone; its receiver will end shortly and
        // `link_closed` cleans up (dropping what the node still has).
        Push::Closed => {}
    }
}

pub(super) fn dispatch_events(inner: &Arc<Inner>, st: &mut State) {
    while let Some(ev) = st.node.poll_event() {
        match ev {
            Event::CircuitReady(c) => {
                if let Some(w) = st.circuit_waiters.remove(&c) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::CircuitClosed { circuit, reason } => {
                if let Some(w) = st.circuit_waiters.remove(&circuit) {
                    let _ = w.send(Err(reason));
                }
            }
            Event::CircuitTruncated(_) => {}
            Event::Connect { node, addr } => match LinkAddr::parse(&addr) {
                Ok(a) if !st.stopping => {
                    if st.connecting.insert(node) {
                        spawn_connect(inner.clone(), node, a);
                    }
                }
                _ => {
                    let now = inner.now();
                    st.node.link_failed(now, node);
                }
            },
            Event::StreamRequest {
                stream,
                kind,
                target,
            } => {
                let d = Daemon {
                    inner: inner.clone(),
                };
                match kind {
                    StreamKind::Internal => crate::services::spawn_internal(d, stream, target),
                    _ => crate::exit::spawn_request(d, stream, kind, target),
                }
            }
            Event::ResolveRequest { stream, host } => {
                crate::exit::spawn_resolve(
                    Daemon {
                        inner: inner.clone(),
                    },
                    stream,
                    host,
                );
            }
            Event::Resolved { stream, addrs } => {
                if let Some(slot) = st.streams.remove(&stream) {
                    if let Some(w) = slot.resolved {
                        let _ = w.send(addrs);
                    }
                }
            }
            Event::StreamOpened(s) => {
                if let Some(w) = st.streams.get_mut(&s).and_then(|x| x.opened.take()) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::StreamReadable(s) => {
                if let Some(w) = st.streams.get_mut(&s).and_then(|x| x.read_waker.take()) {
                    st.wakes.push(w);
                }
            }
            Event::StreamWritable(s) => {
                if let Some(w) = st.streams.get_mut(&s).and_then(|x| x.write_waker.take()) {
                    st.wakes.push(w);
                }
            }
            Event::StreamClosed { stream, reason } => {
                let State { streams, wakes, .. } = &mut *st;
                if let Some(slot) = streams.get_mut(&stream) {
                    slot.closed = Some(reason);
                    if let Some(w) = slot.opened.take() {
                        let _ = w.send(Err(reason));
                    }
                    wakes.extend(slot.read_waker.take());
                    wakes.extend(slot.write_waker.take());
                    if let Some(w) = slot.resolved.take() {
                        let _ = w.send(Vec::new());
                    }
                }
            }
        }
    }
}

/// Opens a link to `node` at `addr` in the background; the driver registers
/// it, or the node and any waiters learn that it failed.
pub(super) fn spawn_connect(inner: Arc<Inner>, node: NodeId, addr: LinkAddr) {
    tokio::spawn(async move {
        let result = match inner.transports.for_target(&addr).await {
            Ok(t) => t.connect(addr.addr, node).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(link) => {
                let _ = inner.new_links.send(link);
            }
            Err(e) => {
                tracing::debug!(%node, %addr, "connect failed: {e}");
                let mut st = inner.lock();
                st.connecting.remove(&node);
                let now = inner.now();
                st.node.link_failed(now, node);
                for w in st.link_waiters.remove(&node).unwrap_or_default() {
                    let _ = w.send(Err(e.to_string()));
                }
                settle(&inner, st);
            }
        }
    });
}
