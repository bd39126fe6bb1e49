//! The bounded cell queue between the node and a link task, one per
//! direction.
//!
//! Why not a tokio mpsc channel of cells: relayd's profile showed the
//! per-cell channel traffic (a semaphore permit, a list push and a waker
//! per cell, twice per hop) costing more than the cell's onion layer. Here
//! both ends move cells in batches: a sender pushes everything it has
//! (up to the free room) under one lock and wakes the receiver once; the
//! receiver takes everything queued under one lock and wakes waiting
//! senders once. The bound is still counted in cells, so the memory a
//! slow link can pin stays fixed.
//!
//! Ending: the queue ends for the receiver once it is drained and either
//! a sender called [`CellTx::close`] or every sender was dropped (both mean
//! "send what is queued, then close"). Senders see `Closed` once the
//! receiver is gone or the queue was closed.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use relay_kernel::Cell;

use crate::error::LinkError;

struct State {
    cells: VecDeque<Cell>,
    cap: usize,
    /// No more cells will be pushed (close requested or no senders left).
    closed: bool,
    senders: usize,
    receiver_alive: bool,
    rx_waker: Option<Waker>,
    tx_wakers: Vec<Waker>,
}

impl State {
    fn room(&self) -> usize {
        self.cap.saturating_sub(self.cells.len())
    }

    fn can_send(&self) -> bool {
        self.receiver_alive && !self.closed
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent
        // (every mutation is a single push, pop or flag store).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes a queue holding at most `cap` cells (at least 1).
pub fn cell_queue(cap: usize) -> (CellTx, CellRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            cells: VecDeque::new(),
            cap: cap.max(1),
            closed: false,
            senders: 1,
            receiver_alive: true,
            rx_waker: None,
            tx_wakers: Vec::new(),
        }),
    });
    (
        CellTx {
            shared: shared.clone(),
        },
        CellRx { shared },
    )
}

/// What [`CellTx::push_from`] stopped on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The source ran dry; everything it gave was queued.
    Drained,
    /// The queue is full; the source may have more.
    Full,
    /// The receiver is gone or the queue was closed; nothing was taken.
    Closed,
}

/// The sending end (cloneable).
pub struct CellTx {
    shared: Arc<Shared>,
}

impl Clone for CellTx {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        CellTx {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for CellTx {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.senders -= 1;
            if st.senders > 0 {
                return;
            }
            st.closed = true;
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl CellTx {
    /// Queues `cell` if there is room now; gives it back if the queue is
    /// full, or `None` if it is closed.
    pub fn try_send(&self, cell: Cell) -> Result<(), Option<Cell>> {
        let waker = {
            let mut st = self.shared.lock();
            if !st.can_send() {
                return Err(None);
            }
            if st.room() == 0 {
                return Err(Some(cell));
            }
            st.cells.push_back(cell);
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues cells taken from `next` until it returns `None` or the queue
    /// is full, under one lock, waking the receiver once. `next` is not
    /// called when there is no room, so no cell is lost.
    pub fn push_from(&self, mut next: impl FnMut() -> Option<Cell>) -> Push {
        let (result, waker) = {
            let mut st = self.shared.lock();
            if !st.can_send() {
                return Push::Closed;
            }
            let before = st.cells.len();
            let result = loop {
                if st.room() == 0 {
                    break Push::Full;
                }
                match next() {
                    Some(c) => st.cells.push_back(c),
                    None => break Push::Drained,
                }
            };
            let waker = if st.cells.len() > before {
                st.rx_waker.take()
            } else {
                None
            };
            (result, waker)
        };
        if let Some(w) = waker {
            w.wake();
        }
        result
    }

    /// Ready when the queue has room for at least one cell, or with
    /// `Closed` once it can take no more.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        let mut st = self.shared.lock();
        if !st.can_send() {
            return Poll::Ready(Err(LinkError::Closed));
        }
        if st.room() > 0 {
            return Poll::Ready(Ok(()));
        }
        if !st.tx_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.tx_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until the queue can take at least one more cell.
    pub async fn ready(&self) -> Result<(), LinkError> {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Queues a cell, waiting while the queue is full.
    pub async fn send(&self, cell: Cell) -> Result<(), LinkError> {
        let mut cell = Some(cell);
        poll_fn(|cx| {
            let Some(c) = cell.take() else {
                return Poll::Ready(Ok(()));
            };
            match self.try_send(c) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(None) => Poll::Ready(Err(LinkError::Closed)),
                Err(Some(c)) => {
                    cell = Some(c);
                    match self.poll_ready(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        // Room appeared between the two locks: the task
                        // polls again at once.
                        Poll::Ready(Ok(())) => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        })
        .await
    }

    /// Queues every cell of `cells` in order (draining it), waiting for room
    /// as needed. On `Closed` the rest are dropped.
    pub async fn send_all(&self, cells: &mut VecDeque<Cell>) -> Result<(), LinkError> {
        while !cells.is_empty() {
            match self.push_from(|| cells.pop_front()) {
                Push::Drained => return Ok(()),
                Push::Full => self.ready().await?,
                Push::Closed => {
                    cells.clear();
                    return Err(LinkError::Closed);
                }
            }
        }
        Ok(())
    }

    /// Closes the queue: what is queued is still delivered, then the
    /// receiver sees the end. Later sends fail.
    pub fn close(&self) {
        let (rx, txs) = {
            let mut st = self.shared.lock();
            st.closed = true;
            (st.rx_waker.take(), std::mem::take(&mut st.tx_wakers))
        };
        if let Some(w) = rx {
            w.wake();
        }
        txs.into_iter().for_each(Waker::wake);
    }

    /// Whether the queue can take no more cells.
    pub fn is_closed(&self) -> bool {
        !self.shared.lock().can_send()
    }
}

/// The receiving end.
pub struct CellRx {
    shared: Arc<Shared>,
}

impl Drop for CellRx {
    fn drop(&mut self) {
        let wakers = {
            let mut st = self.shared.lock();
            st.receiver_alive = false;
            st.cells.clear();
            std::mem::take(&mut st.tx_wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl CellRx {
    /// Moves up to `max` queued cells to `out`. Ready with the number moved,
    /// or with 0 once the queue has ended (closed and drained).
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Cell>,
        max: usize,
    ) -> Poll<usize> {
        let (n, wakers) = {
            let mut st = self.shared.lock();
            let n = st.cells.len().min(max.max(1));
            if n == 0 {
                if st.closed {
                    return Poll::Ready(0);
                }
                match &st.rx_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.rx_waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            out.extend(st.cells.drain(..n));
            (n, std::mem::take(&mut st.tx_wakers))
        };
        wakers.into_iter().for_each(Waker::wake);
        Poll::Ready(n)
    }

    /// Waits for cells and moves up to `max` of them to `out`; 0 means the
    /// queue has ended.
    pub async fn recv_many(&mut self, out: &mut Vec<Cell>, max: usize) -> usize {
        poll_fn(|cx| self.poll_recv_many(cx, out, max)).await
    }

    /// Moves up to `max` cells that are queued now to `out` without
    /// waiting; returns how many.
    pub fn try_recv_many(&mut self, out: &mut Vec<Cell>, max: usize) -> usize {
        let (n, wakers) = {
            let mut st = self.shared.lock();
            let n = st.cells.len().min(max);
            if n == 0 {
                return 0;
            }
            out.extend(st.cells.drain(..n));
            (n, std::mem::take(&mut st.tx_wakers))
        };
        wakers.into_iter().for_each(Waker::wake);
        n
    }

    /// The next cell, or `None` once the queue has ended.
    pub async fn recv(&mut self) -> Option<Cell> {
        poll_fn(|cx| {
            let (cell, wakers) = {
                let mut st = self.shared.lock();
                match st.cells.pop_front() {
                    Some(c) => (c, std::mem::take(&mut st.tx_wakers)),
                    None if st.closed => return Poll::Ready(None),
                    None => {
                        match &st.rx_waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => st.rx_waker = Some(cx.waker().clone()),
                        }
                        return Poll::Pending;
                    }
                }
            };
            wakers.into_iter().for_each(Waker::wake);
            Poll::Ready(Some(cell))
        })
        .await
    }

    /// Whether the queue has ended (closed and drained).
    pub fn is_ended(&self) -> bool {
        let st = self.shared.lock();
        st.closed && st.cells.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use relay_kernel::CellCommand;

    fn cell(i: u32) -> Cell {
        Cell::new(i, CellCommand::Padding)
    }

    #[tokio::test]
    async fn bounded_fifo_with_batches() {
        let (tx, mut rx) = cell_queue(4);
        let mut i = 0;
        assert_eq!(
            tx.push_from(|| {
                i += 1;
                Some(cell(i))
            }),
            Push::Full
        );
        assert_eq!(i, 4, "no cell taken beyond the room");
        assert_eq!(
            tx.try_send(cell(99)).unwrap_err().unwrap().raw_circ_id(),
            99
        );
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 3).await, 3);
        assert_eq!(rx.try_recv_many(&mut out, 10), 1);
        let ids: Vec<u32> = out.iter().map(Cell::raw_circ_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn close_delivers_queued_cells_then_ends() {
        let (tx, mut rx) = cell_queue(8);
        tx.try_send(cell(1)).unwrap();
        tx.close();
        assert!(tx.try_send(cell(2)).unwrap_err().is_none());
        assert_eq!(rx.recv().await.unwrap().raw_circ_id(), 1);
        assert!(rx.recv().await.is_none());
        assert!(rx.is_ended());
    }

    #[tokio::test]
    async fn dropping_every_sender_ends_the_queue() {
        let (tx, mut rx) = cell_queue(8);
        let tx2 = tx.clone();
        drop(tx);
        tx2.try_send(cell(5)).unwrap();
        drop(tx2);
        assert_eq!(rx.recv().await.unwrap().raw_circ_id(), 5);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_receiver_fails_waiting_senders() {
        let (tx, rx) = cell_queue(1);
        tx.try_send(cell(1)).unwrap();
        let waiter = tokio::spawn(async move { tx.send(cell(2)).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(waiter.await.unwrap().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_lose_and_reorder_nothing() {
        let (tx, mut rx) = cell_queue(16);
        let mut tasks = Vec::new();
        for s in 0..4u32 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut batch = VecDeque::new();
                for i in 0..5000u32 {
                    batch.push_back(cell(s << 24 | i));
                    if batch.len() == 7 || i % 3 == 0 {
                        tx.send_all(&mut batch).await.unwrap();
                    }
                }
                tx.send_all(&mut batch).await.unwrap();
            }));
        }
        drop(tx);
        let mut next = [0u32; 4];
        let mut out = Vec::new();
        while rx.recv_many(&mut out, 64).await > 0 {
            for c in out.drain(..) {
                let id = c.raw_circ_id();
                let (s, i) = ((id >> 24) as usize, id & 0xff_ffff);
                assert_eq!(i, next[s], "sender {s} out of order");
                next[s] += 1;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(next, [5000; 4]);
    }
}
