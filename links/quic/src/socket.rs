//! The endpoint's UDP socket, with a switch that kills it.
//!
//! [`relay_link::Transport::crash`] must stop all I/O without telling
//! peers, so that they can only notice through their idle timeout. Closing
//! quinn connections or dropping the endpoint would send CONNECTION_CLOSE,
//! so instead the socket itself goes deaf and mute: once the switch is
//! thrown, every datagram quinn sends is silently dropped and every
//! datagram received is ignored, exactly as if the process had died.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Socket buffer size asked of the kernel.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP socket for an endpoint, with larger kernel buffers.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    relay_link::udp::bind_udp(addr, SOCKET_BUFFER)
}

/// A quinn socket that can be switched off for good.
pub(crate) struct KillableSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    dead: Arc<AtomicBool>,
}

impl KillableSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, dead: Arc<AtomicBool>) -> KillableSocket {
        KillableSocket { inner, dead }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for KillableSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillableSocket")
            .field("inner", &self.inner)
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl AsyncUdpSocket for KillableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.is_dead() {
            // Reported as sent: quinn must not learn anything either.
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Drain and drop: the loop ends with Pending, which leaves
                // the waker registered for the next datagram.
                Poll::Ready(Ok(_)) if self.is_dead() => continue,
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
