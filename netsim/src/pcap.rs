//! pcap capture of chosen links: every datagram a host sends on a named
//! link, with real IPv4 and UDP headers (both checksummed), stamped with its
//! virtual send time, in the classic libpcap format (LINKTYPE_RAW) that
//! tshark and Wireshark read.
//!
//! The headers come from smoltcp's `wire` module, which netsim already
//! uses for the `tcp` link kind, rather than from pnet: `pnet_packet`
//! would add 8 crates for two fixed headers (docs/netsim.md, pcap).

use std::net::{SocketAddr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};

/// One capture file's contents.
pub struct Capture {
    /// File name (without directory).
    pub name: String,
    bytes: Vec<u8>,
    ip_id: u16,
    /// Packets captured.
    pub packets: u64,
    /// Scratch buffer for one IPv4 packet.
    packet: Vec<u8>,
}

const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 65_535;
const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;

fn ipv4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, a.port()),
    }
}

impl Capture {
    /// An empty capture.
    pub fn new(name: String) -> Capture {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes()); // nanosecond pcap
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&SNAPLEN.to_le_bytes());
        bytes.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        Capture {
            name,
            bytes,
            ip_id: 0,
            packets: 0,
            packet: Vec::new(),
        }
    }

    /// Records a UDP datagram sent at `ns` (virtual nanoseconds). A
    /// payload too long for one IPv4 packet is cut to fit (snap length).
    pub fn record(&mut self, ns: u64, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let (src, dst) = (ipv4(from), ipv4(to));
        let payload = &payload[..payload.len().min(65_535 - IPV4_HEADER - UDP_HEADER)];
        let udp_len = UDP_HEADER + payload.len();
        let (src_ip, dst_ip) = (IpAddress::Ipv4(*src.ip()), IpAddress::Ipv4(*dst.ip()));
        let caps = ChecksumCapabilities::default();
        self.packet.clear();
        self.packet.resize(IPV4_HEADER + udp_len, 0);
        let (ip_bytes, udp_bytes) = self.packet.split_at_mut(IPV4_HEADER);
        let udp = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        udp.emit(
            &mut UdpPacket::new_unchecked(udp_bytes),
            &src_ip,
            &dst_ip,
            payload.len(),
            |buf| buf.copy_from_slice(payload),
            &caps,
        );
        let ip = Ipv4Repr {
            src_addr: *src.ip(),
            dst_addr: *dst.ip(),
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        };
        let mut header = Ipv4Packet::new_unchecked(ip_bytes);
        ip.emit(&mut header, &ChecksumCapabilities::ignored());
        // smoltcp writes identification 0; successive ids let tools tell
        // retransmitted payloads from duplicates.
        header.set_ident(self.ip_id);
        header.fill_checksum();
        self.ip_id = self.ip_id.wrapping_add(1);
        let packet = std::mem::take(&mut self.packet);
        self.record_ip(ns, &packet);
        self.packet = packet;
    }

    /// Records a whole IPv4 packet (the `tcp` link kind's datagrams).
    pub fn record_ip(&mut self, ns: u64, packet: &[u8]) {
        let secs = (ns / 1_000_000_000) as u32;
        let nanos = (ns % 1_000_000_000) as u32;
        self.bytes.extend_from_slice(&secs.to_le_bytes());
        self.bytes.extend_from_slice(&nanos.to_le_bytes());
        self.bytes
            .extend_from_slice(&(packet.len() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(packet.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(packet);
        self.packets += 1;
    }

    /// The file contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_well_formed() {
        let mut c = Capture::new("x.pcap".into());
        let a: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:9001".parse().unwrap();
        c.record(1_500_000_001, a, b, &[7u8; 10]);
        c.record(1_500_000_002, a, b, &[8u8; 3]);
        let bytes = c.bytes();
        assert_eq!(bytes.len(), 24 + (16 + 20 + 8 + 10) + (16 + 20 + 8 + 3));
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(bytes[28..32].try_into().unwrap()),
            500_000_001
        );
        // Parse back with checksum verification on both headers.
        let caps = ChecksumCapabilities::default();
        let ip = Ipv4Packet::new_checked(&bytes[40..78]).unwrap();
        assert!(ip.verify_checksum());
        let repr = Ipv4Repr::parse(&ip, &caps).unwrap();
        assert_eq!(repr.src_addr.octets(), [10, 0, 0, 1]);
        assert_eq!(repr.next_header, IpProtocol::Udp);
        assert_eq!(ip.ident(), 0);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        let (s, d) = (
            IpAddress::Ipv4(repr.src_addr),
            IpAddress::Ipv4(repr.dst_addr),
        );
        assert!(udp.verify_checksum(&s, &d));
        assert_ne!(udp.checksum(), 0);
        assert_eq!((udp.src_port(), udp.dst_port()), (9000, 9001));
        assert_eq!(udp.payload(), &[7u8; 10]);
        let second = Ipv4Packet::new_checked(&bytes[94..]).unwrap();
        assert_eq!(second.ident(), 1);
        assert!(second.verify_checksum());
    }

    #[test]
    fn oversized_payload_is_cut_to_one_packet() {
        let mut c = Capture::new("big.pcap".into());
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        c.record(0, a, a, &vec![1u8; 70_000]);
        let ip = Ipv4Packet::new_checked(&c.bytes()[40..]).unwrap();
        assert_eq!(ip.total_len(), 65_535);
        assert!(ip.verify_checksum());
    }

    #[test]
    fn whole_ip_packets_are_written_as_they_are() {
        let mut c = Capture::new("t.pcap".into());
        let packet = [
            0x45u8, 0, 0, 24, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
        ];
        c.record_ip(2_000_000_003, &packet);
        let b = c.bytes();
        assert_eq!(b.len(), 24 + 16 + packet.len());
        assert_eq!(u32::from_le_bytes([b[32], b[33], b[34], b[35]]), 24);
        assert_eq!(&b[40..], &packet);
        assert_eq!(c.packets, 1);
    }
}
