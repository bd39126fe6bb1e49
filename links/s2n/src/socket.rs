//! The endpoints' UDP sockets, and switching them off.
//!
//! [`relay_link::Transport::crash`] must stop all I/O without telling
//! peers, so that they can only notice through their idle timeout. Closing
//! s2n-quic connections or dropping its endpoints would send
//! CONNECTION_CLOSE, so the sockets themselves go deaf and mute instead,
//! through a duplicate of each socket's descriptor kept for the purpose:
//! connecting a UDP socket to its own address makes the kernel drop every
//! datagram from anywhere else, and shutting down its sending side makes
//! every send fail (s2n-quic discards packets whose send fails). The
//! endpoint's tasks go on running, on a socket that hears and says nothing,
//! exactly as if the process had died.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Socket buffer size asked of the kernel.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP socket for an endpoint, with larger kernel buffers.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    relay_link::udp::bind_udp(addr, SOCKET_BUFFER)
}

/// A handle that can silence a socket handed to s2n-quic.
pub(crate) struct Kill {
    sock: socket2::Socket,
}

impl Kill {
    /// Keeps a duplicate of `sock`'s descriptor.
    pub(crate) fn new(sock: &UdpSocket) -> io::Result<Kill> {
        Ok(Kill {
            sock: socket2::Socket::from(sock.try_clone()?),
        })
    }

    /// Silences the socket for good.
    pub(crate) fn kill(&self) {
        let own = self
            .sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(match a.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                a
            });
        if let Some(own) = own {
            let _ = self.sock.connect(&own.into());
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}
