//! Which of many streams are ready, for one task that reads them all.
//!
//! Why: the QUIC links carry each circuit on its own stream. A task per
//! stream means that a burst of packets carrying data for 64 circuits wakes
//! 64 tasks, each of which takes the connection's lock to read a little and
//! then the node queue's lock to hand over a cell or two, and the runtime
//! wakes idle worker threads to run them. One task reading every stream
//! turns that into one wake-up and one hand-over per burst. Each stream
//! gets its own [`Waker`] that records the stream's slot in a shared list
//! and wakes the task once, so the task reads only the streams that have
//! something (the idea of `futures::stream::FuturesUnordered`, for slots).

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

#[derive(Default)]
struct State {
    ready: Vec<usize>,
    task: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn mark(&self, slot: usize) {
        let task = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ready.push(slot);
            st.task.take()
        };
        if let Some(w) = task {
            w.wake();
        }
    }
}

struct SlotWaker {
    slot: usize,
    shared: Arc<Shared>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.shared.mark(self.slot);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.mark(self.slot);
    }
}

/// Slots marked ready by their wakers, collected for one task.
///
/// A slot may be listed more than once, or after it was reused (a waker
/// held by the QUIC stack outlives its stream); readers treat a listing as
/// "poll this slot", which is harmless when it has nothing.
#[derive(Clone, Default)]
pub struct ReadySet {
    shared: Arc<Shared>,
}

impl ReadySet {
    pub fn new() -> ReadySet {
        ReadySet::default()
    }

    /// The waker for `slot`: waking it lists the slot and wakes the task.
    pub fn waker(&self, slot: usize) -> Waker {
        Waker::from(Arc::new(SlotWaker {
            slot,
            shared: self.shared.clone(),
        }))
    }

    /// Lists `slot` as ready (e.g. a new stream, or one read only in part).
    pub fn mark(&self, slot: usize) {
        self.shared.mark(slot)
    }

    /// Moves the listed slots to `out` (in the order listed), or waits
    /// until there are some.
    pub fn poll_take(&self, cx: &mut Context<'_>, out: &mut Vec<usize>) -> Poll<()> {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.ready.is_empty() {
            match &st.task {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.task = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        out.append(&mut st.ready);
        Poll::Ready(())
    }

    /// Moves the slots listed now to `out`, without waiting.
    pub fn try_take(&self, out: &mut Vec<usize>) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        out.append(&mut st.ready);
    }

    /// Waits for listed slots and moves them to `out`.
    pub async fn take(&self, out: &mut Vec<usize>) {
        poll_fn(|cx| self.poll_take(cx, out)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakers_list_their_slots_and_wake_the_task_once() {
        let set = ReadySet::new();
        let (w3, w5) = (set.waker(3), set.waker(5));
        let waiter = {
            let set = set.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                set.take(&mut out).await;
                out
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "nothing listed yet");
        w5.wake_by_ref();
        w3.wake();
        let got = waiter.await.unwrap();
        // The task may have run after the first wake or after both.
        assert!(got == [5] || got == [5, 3], "{got:?}");
        let mut out = Vec::new();
        set.mark(8);
        set.take(&mut out).await;
        assert_eq!(out.last(), Some(&8));
    }
}
