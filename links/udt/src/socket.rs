//! Batched UDP I/O for the udt driver: segmentation offload (GSO) on send,
//! and `recvmmsg` plus receive offload (GRO) on receive, through
//! `quinn-udp`, which falls back to one datagram per call where the
//! kernel lacks them.
//!
//! Why: with one `send_to` per datagram the udt link spent most of its
//! CPU in syscalls (two cells per datagram; docs/benchmarks.md). A GSO
//! send hands the kernel up to ~44 full datagrams for one peer at once,
//! and one receive call returns many.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest UDP payload an IPv4 datagram can carry; a GSO batch's
/// total must stay below it.
const MAX_BATCH_BYTES: usize = 65_507;
/// Receive buffers per call; each holds one datagram or one GRO run.
const RECV_BUFFERS: usize = 4;
/// Bytes per receive buffer: a whole GRO run (at most 64 KiB).
const RECV_BUFFER_LEN: usize = 65_536;

/// A tokio UDP socket with quinn-udp's batched send and receive.
pub(crate) struct BatchSocket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl BatchSocket {
    /// Wraps a bound, non-blocking socket.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<BatchSocket> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(BatchSocket {
            io: UdpSocket::from_std(socket)?,
            state,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// How many datagrams one send may carry.
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Waits until the socket may have datagrams to read.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Reads what is queued now into `bufs` without waiting
    /// (`WouldBlock` when nothing is).
    pub(crate) fn try_recv(&self, bufs: &mut RecvBufs) -> io::Result<usize> {
        let RecvBufs { storage, meta } = bufs;
        let mut slices: Vec<IoSliceMut<'_>> = storage
            .chunks_mut(RECV_BUFFER_LEN)
            .map(IoSliceMut::new)
            .collect();
        self.io.try_io(Interest::READABLE, || {
            self.state.recv((&self.io).into(), &mut slices, meta)
        })
    }

    /// Sends one batch (several datagrams of `segment` bytes, the last
    /// possibly shorter), waiting while the socket buffer is full. Errors
    /// other than a full buffer drop the datagram: udt recovers it as
    /// loss. A batch that fails is sent again datagram by datagram, so one
    /// datagram the path refuses (a size probe above the interface MTU
    /// gets EMSGSIZE) does not take the others with it.
    pub(crate) async fn send(&self, to: SocketAddr, contents: &[u8], segment: usize) {
        if self.send_one(to, contents, segment).await.is_err() && contents.len() > segment {
            for datagram in contents.chunks(segment.max(1)) {
                let _ = self.send_one(to, datagram, datagram.len()).await;
            }
        }
    }

    async fn send_one(&self, to: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        loop {
            let r = self.io.try_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), &transmit)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.writable().await?,
                r => return r,
            }
        }
    }
}

/// Buffers for one batched receive.
pub(crate) struct RecvBufs {
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BUFFERS],
}

impl RecvBufs {
    pub(crate) fn new() -> RecvBufs {
        RecvBufs {
            storage: vec![0; RECV_BUFFERS * RECV_BUFFER_LEN],
            meta: [RecvMeta::default(); RECV_BUFFERS],
        }
    }

    /// Calls `f` with each datagram of the first `n` buffers (as returned
    /// by [`BatchSocket::try_recv`]), splitting GRO runs at their stride.
    pub(crate) fn for_each(&mut self, n: usize, mut f: impl FnMut(SocketAddr, &mut [u8])) {
        for (meta, buf) in self
            .meta
            .iter()
            .zip(self.storage.chunks_mut(RECV_BUFFER_LEN))
            .take(n)
        {
            let len = meta.len.min(buf.len());
            let stride = if meta.stride == 0 { len } else { meta.stride };
            for dg in buf[..len].chunks_mut(stride.max(1)) {
                f(meta.addr, dg);
            }
        }
    }
}

/// Consecutive datagrams to one peer gathered for one GSO send: all but
/// the last must have the first one's length, and the last may be shorter.
pub(crate) struct GsoBatch {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    max_segments: usize,
    /// A short datagram ended the batch.
    sealed: bool,
}

impl GsoBatch {
    pub(crate) fn new(max_segments: usize) -> GsoBatch {
        GsoBatch {
            buf: Vec::with_capacity(MAX_BATCH_BYTES),
            to: None,
            segment: 0,
            count: 0,
            max_segments: max_segments.max(1),
            sealed: false,
        }
    }

    /// Whether a datagram of `len` bytes for `to` may join the batch.
    pub(crate) fn fits(&self, to: SocketAddr, len: usize) -> bool {
        match self.to {
            None => true,
            Some(t) => {
                t == to
                    && !self.sealed
                    && len <= self.segment
                    && self.count < self.max_segments
                    && self.buf.len() + len <= MAX_BATCH_BYTES
            }
        }
    }

    /// Adds a datagram; the caller checked [`GsoBatch::fits`]. `datagram`
    /// is scratch afterwards (the caller rebuilds it from empty).
    ///
    /// The first datagram of a batch is not copied: its buffer becomes the
    /// batch's and the batch's empty one goes back. Datagrams to a loopback
    /// peer are up to 64 KiB, so there most batches hold one datagram, and
    /// the copy was 4% of a udt sender's CPU in linkbench.
    pub(crate) fn push(&mut self, to: SocketAddr, datagram: &mut Vec<u8>) {
        if self.to.is_none() {
            self.to = Some(to);
            self.segment = datagram.len();
            std::mem::swap(&mut self.buf, datagram);
            datagram.clear();
        } else {
            if datagram.len() < self.segment {
                self.sealed = true;
            }
            self.buf.extend_from_slice(datagram);
        }
        self.count += 1;
    }

    /// The batch to send: destination, bytes and segment size.
    pub(crate) fn contents(&self) -> Option<(SocketAddr, &[u8], usize)> {
        self.to.map(|to| (to, &self.buf[..], self.segment))
    }

    /// Empties the batch after sending.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.to = None;
        self.segment = 0;
        self.count = 0;
        self.sealed = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_batch_is_one_peer_and_one_segment_size() {
        let mut b = GsoBatch::new(3);
        assert!(b.fits(addr(1), 100));
        let mut first = vec![1; 100];
        b.push(addr(1), &mut first);
        assert!(first.is_empty(), "the caller's buffer comes back empty");
        assert!(!b.fits(addr(2), 100), "another peer");
        assert!(!b.fits(addr(1), 101), "a longer datagram");
        assert!(b.fits(addr(1), 100));
        b.push(addr(1), &mut vec![2; 100]);
        assert!(b.fits(addr(1), 40), "a shorter last one");
        b.push(addr(1), &mut vec![3; 40]);
        assert!(!b.fits(addr(1), 40), "nothing after a short one");
        let (to, bytes, seg) = b.contents().unwrap();
        assert_eq!((to, bytes.len(), seg), (addr(1), 240, 100));
        let want: Vec<u8> = [[1u8; 100].as_slice(), &[2; 100], &[3; 40]].concat();
        assert_eq!(bytes, &want[..]);
        b.clear();
        assert!(b.contents().is_none());
        assert!(b.fits(addr(2), 500));
    }

    #[test]
    fn a_batch_stops_at_the_segment_limit_and_the_udp_size() {
        let mut b = GsoBatch::new(2);
        b.push(addr(1), &mut vec![0; 10]);
        b.push(addr(1), &mut vec![0; 10]);
        assert!(!b.fits(addr(1), 10));
        let mut b = GsoBatch::new(64);
        let mut n = 0;
        while b.fits(addr(1), 1472) {
            b.push(addr(1), &mut vec![0; 1472]);
            n += 1;
        }
        assert_eq!(n, MAX_BATCH_BYTES / 1472);
    }

    #[tokio::test]
    async fn batched_send_and_receive_carry_every_datagram_intact() {
        let bind =
            || BatchSocket::new(relay_link::udp::bind_udp(addr(0), 1 << 20).unwrap()).unwrap();
        let (a, b) = (bind(), bind());
        let to = b.local_addr().unwrap();
        let mut batch = GsoBatch::new(a.max_segments());
        let mut sent = Vec::new();
        for i in 0..20u8 {
            let dg = vec![i; if i == 19 { 300 } else { 1200 }];
            if !batch.fits(to, dg.len()) {
                let (t, bytes, seg) = batch.contents().unwrap();
                a.send(t, bytes, seg).await;
                batch.clear();
            }
            batch.push(to, &mut dg.clone());
            sent.push(dg);
        }
        let (t, bytes, seg) = batch.contents().unwrap();
        a.send(t, bytes, seg).await;
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut bufs = RecvBufs::new();
        let from = a.local_addr().unwrap();
        while got.len() < sent.len() {
            tokio::time::timeout(std::time::Duration::from_secs(5), b.readable())
                .await
                .expect("datagrams arrive")
                .unwrap();
            if let Ok(n) = b.try_recv(&mut bufs) {
                bufs.for_each(n, |src, dg| {
                    assert_eq!(src, from);
                    got.push(dg.to_vec());
                });
            }
        }
        assert_eq!(got, sent);
    }
}
