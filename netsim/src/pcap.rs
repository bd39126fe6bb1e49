//! pcap capture of chosen links: every datagram a host sends on a named
//! link, with real IPv4 and UDP headers (checksummed IPv4 header, UDP
//! checksum 0 as IPv4 allows), stamped with its virtual send time, in the
//! classic libpcap format (LINKTYPE_RAW) that tshark and Wireshark read.

use std::net::{SocketAddr, SocketAddrV4};

/// One capture file's contents.
pub struct Capture {
    /// File name (without directory).
    pub name: String,
    bytes: Vec<u8>,
    ip_id: u16,
    /// Packets captured.
    pub packets: u64,
}

const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 65_535;

fn ipv4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, a.port()),
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |b| u32::from(*b));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
        }
    }

    /// Records a UDP datagram sent at `ns` (virtual nanoseconds).
    pub fn record(&mut self, ns: u64, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let (src, dst) = (ipv4(from), ipv4(to));
        let total = 20 + 8 + payload.len();
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total.min(65_535) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&dst.ip().octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()).min(65_535) as u16).to_be_bytes());
        let secs = (ns / 1_000_000_000) as u32;
        let nanos = (ns % 1_000_000_000) as u32;
        self.bytes.extend_from_slice(&secs.to_le_bytes());
        self.bytes.extend_from_slice(&nanos.to_le_bytes());
        self.bytes.extend_from_slice(&(total as u32).to_le_bytes());
        self.bytes.extend_from_slice(&(total as u32).to_le_bytes());
        self.bytes.extend_from_slice(&ip);
        self.bytes.extend_from_slice(&udp);
        self.bytes.extend_from_slice(payload);
        self.packets += 1;
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
        let b: SocketAddr = "10.0.0.2:9000".parse().unwrap();
        c.record(1_500_000_001, a, b, &[7u8; 10]);
        let b = c.bytes();
        assert_eq!(b.len(), 24 + 16 + 20 + 8 + 10);
        let ip = &b[40..60];
        assert_eq!(checksum(ip), 0, "IPv4 header checksum must verify");
        assert_eq!(&ip[12..16], &[10, 0, 0, 1]);
        assert_eq!(u32::from_le_bytes([b[24], b[25], b[26], b[27]]), 1);
        assert_eq!(
            u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
            500_000_001
        );
        assert_eq!(&b[60..62], &9000u16.to_be_bytes());
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
