//! An application's handle on one kernel stream: tokio `AsyncRead` and
//! `AsyncWrite` over the kernel's stream buffers, plus datagrams for UDP
//! streams.
//!
//! Reads and writes go straight to the kernel under the node lock; when a
//! buffer is empty (read) or full (write) the task's waker is parked in the
//! stream's slot and the driver wakes it on `StreamReadable` /
//! `StreamWritable` / `StreamClosed`. The cells a call makes are handed to
//! the links by the calling task itself (`settle`), so a write costs no
//! driver wake-up.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use relay_kernel::{EndReason, StreamRef, TargetAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{settle, Inner, State};

/// One stream of a circuit.
pub struct RelayStream {
    inner: Arc<Inner>,
    stream: StreamRef,
    finished: bool,
}

fn closed_error(reason: EndReason) -> io::Error {
    let kind = match reason {
        EndReason::ConnectRefused => io::ErrorKind::ConnectionRefused,
        EndReason::Timeout => io::ErrorKind::TimedOut,
        EndReason::ConnReset => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("stream closed: {reason:?}"))
}

impl RelayStream {
    pub(super) fn new(inner: Arc<Inner>, stream: StreamRef) -> RelayStream {
        inner.lock().streams.entry(stream).or_default();
        RelayStream {
            inner,
            stream,
            finished: false,
        }
    }

    /// The kernel's name for this stream.
    pub fn id(&self) -> StreamRef {
        self.stream
    }

    /// Why the stream closed, if it did with an error.
    fn abort_reason(st: &State, s: StreamRef) -> Option<EndReason> {
        st.streams
            .get(&s)
            .and_then(|x| x.closed)
            .filter(|r| *r != EndReason::Done)
    }

    /// Sends one datagram (UDP streams). `Ok(false)`: dropped because the
    /// circuit's window is full, as UDP would drop it.
    pub fn send_datagram(&self, target: &TargetAddr, payload: &[u8]) -> io::Result<bool> {
        let r = {
            let mut st = self.inner.lock();
            let now = self.inner.now();
            let r = st.node.send_datagram(now, self.stream, target, payload);
            settle(&self.inner, st);
            r
        };
        r.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// Largest datagram payload for `target`.
    pub fn datagram_room(&self, target: &TargetAddr) -> usize {
        self.inner.lock().node.datagram_room(self.stream, target)
    }

    /// Receives one datagram; `None` when the stream is closed.
    pub async fn recv_datagram(&self) -> Option<(TargetAddr, Vec<u8>)> {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.lock();
            if let Some(d) = st.node.recv_datagram(self.stream) {
                return Poll::Ready(Some(d));
            }
            let gone = st
                .streams
                .get(&self.stream)
                .is_none_or(|x| x.closed.is_some());
            if gone {
                return Poll::Ready(None);
            }
            if let Some(slot) = st.streams.get_mut(&self.stream) {
                slot.read_waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.inner.lock();
        let now = this.inner.now();
        let dst = buf.initialize_unfilled();
        if dst.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let n = st.node.stream_read(now, this.stream, dst).unwrap_or(0);
        if n > 0 {
            buf.advance(n);
            // Reading may release an XON.
            settle(&this.inner, st);
            return Poll::Ready(Ok(()));
        }
        if let Some(r) = Self::abort_reason(&st, this.stream) {
            return Poll::Ready(Err(closed_error(r)));
        }
        if st.node.stream_at_eof(this.stream) {
            return Poll::Ready(Ok(()));
        }
        if let Some(slot) = st.streams.get_mut(&this.stream) {
            slot.read_waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut st = this.inner.lock();
        if let Some(r) = Self::abort_reason(&st, this.stream) {
            return Poll::Ready(Err(closed_error(r)));
        }
        let now = this.inner.now();
        match st.node.stream_write(now, this.stream, data) {
            Ok(0) if !data.is_empty() => {
                if let Some(slot) = st.streams.get_mut(&this.stream) {
                    slot.write_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                // The cells the write made go to the link from here.
                settle(&this.inner, st);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                e.to_string(),
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.finished {
            this.finished = true;
            let mut st = this.inner.lock();
            let now = this.inner.now();
            let _ = st.node.stream_finish(now, this.stream);
            settle(&this.inner, st);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let slot = st.streams.remove(&self.stream);
        let closed = slot.as_ref().and_then(|s| s.closed);
        if !self.finished && closed.is_none() {
            // Dropped mid-stream (an error on the other side of a proxy):
            // tell the far end instead of leaving it waiting.
            let now = self.inner.now();
            let _ = st.node.close_stream(now, self.stream, EndReason::ConnReset);
        }
        drop(st);
        self.inner.wake.notify_one();
    }
}
