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

/// Entries (streams) with a slot number and a waker each, for a task that
/// reads them through one [`ReadySet`]. Freed slots are reused.
pub struct Slots<T> {
    entries: Vec<Option<(T, Waker)>>,
    free: Vec<usize>,
    len: usize,
    ready: ReadySet,
}

impl<T> Slots<T> {
    pub fn new(ready: &ReadySet) -> Slots<T> {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            ready: ready.clone(),
        }
    }

    /// Adds an entry; returns its slot.
    pub fn insert(&mut self, value: T) -> usize {
        let i = self.free.pop().unwrap_or(self.entries.len());
        let entry = Some((value, self.ready.waker(i)));
        match self.entries.get_mut(i) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
        self.len += 1;
        i
    }

    /// The entry in `slot` and its waker, if the slot is in use.
    pub fn get_mut(&mut self, slot: usize) -> Option<(&mut T, &Waker)> {
        match self.entries.get_mut(slot) {
            Some(Some((v, w))) => Some((v, w)),
            _ => None,
        }
    }

    /// Frees `slot`.
    pub fn remove(&mut self, slot: usize) {
        if let Some(e) = self.entries.get_mut(slot) {
            if e.take().is_some() {
                self.free.push(slot);
                self.len -= 1;
            }
        }
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    #[test]
    fn slots_are_reused_and_their_wakers_list_them() {
        let set = ReadySet::new();
        let mut slots = Slots::new(&set);
        let (a, b) = (slots.insert("a"), slots.insert("b"));
        assert_eq!((a, b, slots.len()), (0, 1, 2));
        slots.remove(a);
        slots.remove(a);
        assert_eq!(slots.len(), 1);
        assert!(slots.get_mut(a).is_none());
        let c = slots.insert("c");
        assert_eq!(c, a, "freed slot reused");
        let (v, w) = slots.get_mut(b).unwrap();
        assert_eq!(*v, "b");
        w.wake_by_ref();
        let mut out = Vec::new();
        set.try_take(&mut out);
        assert_eq!(out, [b]);
    }
}
