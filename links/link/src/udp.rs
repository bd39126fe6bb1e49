//! The UDP socket every UDP-based link kind binds (udt, quic, s2n): one
//! place for the socket options they share.

use std::io;
use std::net::SocketAddr;

/// Binds a non-blocking UDP socket on `addr`, asking the kernel for
/// `buffer` bytes of send and receive buffer (it caps them at `rmem_max` /
/// `wmem_max`; the ~200 KB default drops bursts at high rates). A smaller
/// buffer only costs throughput, so refusals are ignored.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(buffer);
    let _ = sock.set_send_buffer_size(buffer);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}
