//! Moves bytes both ways between a socket and a relay stream (tunnels,
//! SOCKS CONNECT, exits), with copy buffers that a connection holds only
//! while bytes are moving.
//!
//! Why not `tokio::io::copy_bidirectional`: it keeps two buffers per
//! connection for the connection's whole life, so a client holding a
//! thousand idle connections pays for two thousand buffers, which forced
//! them down to 4 KiB (chainbench's 1,000-circuit RSS). Small buffers cost
//! a read, a node-lock round and a socket write per eight cells on a bulk
//! transfer. Here a direction takes a large buffer from a small shared pool
//! when its source has bytes and gives it back as soon as the source has
//! nothing more and the buffer is written out: idle connections hold no
//! buffer, busy ones move 64 KiB per call.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per copy buffer: 128 cells' worth, a quarter of the kernel's
/// stream buffers.
pub const BUFFER: usize = 64 * 1024;
/// Spare buffers kept for reuse (1 MiB at most).
const SPARE: usize = 16;

/// Copy buffers shared by the pumps of a process.
pub struct BufferPool {
    spare: Mutex<Vec<Box<[u8]>>>,
    /// Buffers held by pumps now.
    lent: AtomicUsize,
}

impl BufferPool {
    const fn new() -> BufferPool {
        BufferPool {
            spare: Mutex::new(Vec::new()),
            lent: AtomicUsize::new(0),
        }
    }

    fn take(&self) -> Box<[u8]> {
        self.lent.fetch_add(1, Ordering::Relaxed);
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice())
    }

    fn give(&self, buf: Box<[u8]>) {
        self.lent.fetch_sub(1, Ordering::Relaxed);
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE {
            spare.push(buf);
        }
    }

    /// Buffers held by pumps now.
    pub fn lent(&self) -> usize {
        self.lent.load(Ordering::Relaxed)
    }
}

/// The process's pool.
pub static POOL: BufferPool = BufferPool::new();

/// One direction of a pump.
struct Half {
    pool: &'static BufferPool,
    /// Held only while `pos < end` or a read into it is under way.
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// The source ended (read returned 0).
    read_done: bool,
    /// Bytes written since the last flush.
    need_flush: bool,
    done: bool,
    moved: u64,
}

impl Half {
    fn new(pool: &'static BufferPool) -> Half {
        Half {
            pool,
            buf: None,
            pos: 0,
            end: 0,
            read_done: false,
            need_flush: false,
            done: false,
            moved: 0,
        }
    }

    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.give(b);
        }
    }

    /// Copies from `r` to `w` until `r` has nothing now (Pending) or has
    /// ended and everything was written and `w` shut down (Ready).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.end {
                let Some(buf) = &self.buf else {
                    // Unreachable by construction (bytes pending imply a
                    // buffer); treat as empty rather than panic.
                    self.pos = self.end;
                    continue;
                };
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.moved += n as u64;
                self.need_flush = true;
                continue;
            }
            if self.read_done {
                self.release();
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let pool = self.pool;
            let buf = self.buf.get_or_insert_with(|| pool.take());
            let mut rb = ReadBuf::new(buf);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.pos = 0;
                    self.end = n;
                    if n == 0 {
                        self.read_done = true;
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // Nothing to move now: the buffer goes back to the pool
                    // and the writer gets what it was given.
                    self.release();
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        self.release();
    }
}

/// Copies `a` to `b` and `b` to `a` until both have ended, shutting down
/// each writer after its source ends. Returns the bytes moved (a to b, b to
/// a), or the first error.
pub async fn pump<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pump_with(&POOL, a, b).await
}

/// [`pump`] with buffers from `pool`.
pub async fn pump_with<A, B>(
    pool: &'static BufferPool,
    a: &mut A,
    b: &mut B,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Half::new(pool);
    let mut ba = Half::new(pool);
    poll_fn(|cx| {
        let x = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let y = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if x.is_ready() && y.is_ready() {
            Poll::Ready(Ok((ab.moved, ba.moved)))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn pool() -> &'static BufferPool {
        Box::leak(Box::new(BufferPool::new()))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes `data` then shuts down, while reading everything the other
    /// side sends.
    async fn talk(end: DuplexStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(end);
        let writer = async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, n) = tokio::join!(writer, r.read_to_end(&mut got));
        n.unwrap();
        got
    }

    #[tokio::test]
    async fn moves_both_ways_and_shuts_down_after_each_source_ends() {
        // a_user <-> a_end (pumped) b_end <-> b_user; duplex capacities
        // smaller than the buffer, so writes are partial and wait.
        let pool = pool();
        let (a_user, mut a_end) = tokio::io::duplex(7000);
        let (mut b_end, b_user) = tokio::io::duplex(5000);
        let up = pattern(1_000_003, 1);
        let down = pattern(700_001, 9);
        let pump = tokio::spawn(async move { pump_with(pool, &mut a_end, &mut b_end).await });
        let a = tokio::spawn(talk(a_user, up.clone()));
        let b = tokio::spawn(talk(b_user, down.clone()));
        let got_at_a = a.await.unwrap();
        let got_at_b = b.await.unwrap();
        let moved = pump.await.unwrap().unwrap();
        assert!(got_at_b == up, "a to b corrupted");
        assert!(got_at_a == down, "b to a corrupted");
        assert_eq!(moved, (up.len() as u64, down.len() as u64));
        assert_eq!(pool.lent(), 0);
    }

    #[tokio::test]
    async fn idle_connections_hold_no_buffer() {
        let pool = pool();
        let mut users = Vec::new();
        let mut pumps = Vec::new();
        for _ in 0..64 {
            let (mut a_user, mut a_end) = tokio::io::duplex(1024);
            let (mut b_end, b_user) = tokio::io::duplex(1024);
            a_user.write_all(b"hello").await.unwrap();
            pumps.push(tokio::spawn(async move {
                pump_with(pool, &mut a_end, &mut b_end).await
            }));
            users.push((a_user, b_user));
        }
        for (_, b_user) in users.iter_mut() {
            let mut five = [0u8; 5];
            b_user.read_exact(&mut five).await.unwrap();
            assert_eq!(&five, b"hello");
        }
        // Every pump has moved its bytes and waits on idle sources.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(pumps.iter().all(|p| !p.is_finished()));
        assert_eq!(pool.lent(), 0, "idle pumps hold buffers");
        let spare = pool.spare.lock().unwrap().len();
        assert!((1..=SPARE).contains(&spare), "{spare} spare buffers");
        drop(users);
        for p in pumps {
            assert_eq!(p.await.unwrap().unwrap(), (5, 0));
        }
        assert_eq!(pool.lent(), 0);
    }

    #[tokio::test]
    async fn a_write_error_ends_the_pump_with_it() {
        let pool = pool();
        let (mut a_user, mut a_end) = tokio::io::duplex(1024);
        let (mut b_end, b_user) = tokio::io::duplex(1024);
        drop(b_user);
        a_user.write_all(b"data for nobody").await.unwrap();
        assert!(pump_with(pool, &mut a_end, &mut b_end).await.is_err());
        assert_eq!(pool.lent(), 0);
    }
}
