//! Relay messages: what a cell carries inside its innermost onion layer.
//!
//! Layout, at the start of the message room: command (1 byte), stream id
//! (2, zero for circuit-level messages), length (2), then `length` bytes of
//! body. Bytes after the body are filler and ignored. Parsing borrows from
//! the cell, so nothing is allocated per message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::MsgError;

/// Header bytes before a relay message body.
pub const MSG_HEADER_LEN: usize = 5;

/// Relay message commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayCommand {
    /// Open a stream (TCP, UDP association or internal service).
    Begin = 1,
    /// Stream bytes.
    Data = 2,
    /// Close a stream, with a reason.
    End = 3,
    /// The exit opened the stream.
    Connected = 4,
    /// Circuit-level acknowledgement for congestion control.
    Sendme = 5,
    /// Extend the circuit by one hop.
    Extend = 6,
    /// The extension succeeded.
    Extended = 7,
    /// Ask the last hop to leave the circuit.
    Truncate = 8,
    /// The circuit was cut after the sending hop.
    Truncated = 9,
    /// Padding; discarded.
    Drop = 10,
    /// Resolve a name at the exit.
    Resolve = 11,
    /// Answer to RESOLVE.
    Resolved = 12,
    /// One UDP payload on a UDP-association stream.
    Datagram = 13,
    /// The receiver's buffer for this stream is full: stop sending.
    Xoff = 14,
    /// The receiver drained its buffer: resume.
    Xon = 15,
}

impl RelayCommand {
    /// Parses a command byte.
    pub fn from_u8(b: u8) -> Result<RelayCommand, MsgError> {
        use RelayCommand::*;
        Ok(match b {
            1 => Begin,
            2 => Data,
            3 => End,
            4 => Connected,
            5 => Sendme,
            6 => Extend,
            7 => Extended,
            8 => Truncate,
            9 => Truncated,
            10 => Drop,
            11 => Resolve,
            12 => Resolved,
            13 => Datagram,
            14 => Xoff,
            15 => Xon,
            other => return Err(MsgError::UnknownCommand(other)),
        })
    }
}

/// A parsed relay message header and its body, borrowed from the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayMsg<'a> {
    /// The command.
    pub command: RelayCommand,
    /// Stream id; zero for circuit-level messages.
    pub stream: u16,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> RelayMsg<'a> {
    /// Parses a message from its room in a cell.
    pub fn parse(room: &'a [u8]) -> Result<RelayMsg<'a>, MsgError> {
        let header = room.get(..MSG_HEADER_LEN).ok_or(MsgError::Truncated)?;
        let command = RelayCommand::from_u8(header[0])?;
        let stream = u16::from_be_bytes([header[1], header[2]]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let body = room
            .get(MSG_HEADER_LEN..MSG_HEADER_LEN + len)
            .ok_or(MsgError::Truncated)?;
        Ok(RelayMsg {
            command,
            stream,
            body,
        })
    }

    /// Writes a header into `room` for a body of `len` bytes the caller has
    /// put (or will put) at `room[5..5 + len]`.
    pub fn write_header(
        room: &mut [u8],
        command: RelayCommand,
        stream: u16,
        len: usize,
    ) -> Result<(), MsgError> {
        if room.len() < MSG_HEADER_LEN + len {
            return Err(MsgError::TooLong(len));
        }
        room[0] = command as u8;
        room[1..3].copy_from_slice(&stream.to_be_bytes());
        room[3..5].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(())
    }

    /// Writes a whole message (header and body) into `room`.
    pub fn write(
        room: &mut [u8],
        command: RelayCommand,
        stream: u16,
        body: &[u8],
    ) -> Result<(), MsgError> {
        Self::write_header(room, command, stream, body.len())?;
        room[MSG_HEADER_LEN..MSG_HEADER_LEN + body.len()].copy_from_slice(body);
        Ok(())
    }
}

/// A bounds-checked reader over a message body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        if self.buf.len() < n {
            return Err(MsgError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MsgError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MsgError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn rest(self) -> &'a [u8] {
        self.buf
    }
}

/// An append-only writer with a capacity check.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    /// A writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Writer<'a> {
        Writer { buf, at: 0 }
    }
    /// Appends bytes.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), MsgError> {
        let end = self.at + bytes.len();
        let dst = self
            .buf
            .get_mut(self.at..end)
            .ok_or(MsgError::TooLong(end))?;
        dst.copy_from_slice(bytes);
        self.at = end;
        Ok(())
    }
    /// Bytes written.
    pub fn len(&self) -> usize {
        self.at
    }
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.at == 0
    }
}

const ADDR_NONE: u8 = 0;
const ADDR_HOST: u8 = 3;
const ADDR_V4: u8 = 4;
const ADDR_V6: u8 = 6;

/// Where a stream or datagram goes: an address or a name the exit resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// No target (a UDP association names targets per datagram).
    None,
    /// An IP address and port.
    Ip(IpAddr, u16),
    /// A host name (resolved at the exit, never at the client) and port.
    Host(&'a str, u16),
}

impl<'a> Target<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Target<'a>, MsgError> {
        let kind = r.u8()?;
        let target = match kind {
            ADDR_NONE => return Ok(Target::None),
            ADDR_V4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            ADDR_V6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            ADDR_HOST => {
                let len = usize::from(r.u8()?);
                let raw = r.take(len)?;
                let name = std::str::from_utf8(raw).map_err(|_| MsgError::BadField("host"))?;
                if !valid_host(name) {
                    return Err(MsgError::BadField("host"));
                }
                return Ok(Target::Host(name, r.u16()?));
            }
            _ => return Err(MsgError::BadField("address type")),
        };
        Ok(Target::Ip(target, r.u16()?))
    }

    /// Appends the encoded target.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), MsgError> {
        match self {
            Target::None => w.put(&[ADDR_NONE]),
            Target::Ip(IpAddr::V4(a), port) => {
                w.put(&[ADDR_V4])?;
                w.put(&a.octets())?;
                w.put(&port.to_be_bytes())
            }
            Target::Ip(IpAddr::V6(a), port) => {
                w.put(&[ADDR_V6])?;
                w.put(&a.octets())?;
                w.put(&port.to_be_bytes())
            }
            Target::Host(name, port) => {
                if !valid_host(name) {
                    return Err(MsgError::BadField("host"));
                }
                w.put(&[ADDR_HOST, name.len() as u8])?;
                w.put(name.as_bytes())?;
                w.put(&port.to_be_bytes())
            }
        }
    }
}

/// A host name we agree to carry: 1 to 255 bytes of letters, digits, '-',
/// '.' and '_' (no spaces, controls or shell-special characters).
pub fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// What a BEGIN asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// A TCP connection.
    Tcp = 1,
    /// A UDP association (DATAGRAM messages).
    Udp = 2,
    /// A service on the exit node itself, named by the target host.
    Internal = 3,
}

/// BEGIN body: kind, target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin<'a> {
    /// What to open.
    pub kind: StreamKind,
    /// Where to.
    pub target: Target<'a>,
}

impl<'a> Begin<'a> {
    /// Parses a BEGIN body.
    pub fn parse(body: &'a [u8]) -> Result<Begin<'a>, MsgError> {
        let mut r = Reader { buf: body };
        let kind = match r.u8()? {
            1 => StreamKind::Tcp,
            2 => StreamKind::Udp,
            3 => StreamKind::Internal,
            _ => return Err(MsgError::BadField("stream kind")),
        };
        let target = Target::read(&mut r)?;
        if kind != StreamKind::Udp && target == Target::None {
            return Err(MsgError::BadField("missing target"));
        }
        Ok(Begin { kind, target })
    }

    /// Encodes into `out`; returns the length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, MsgError> {
        let mut w = Writer::new(out);
        w.put(&[self.kind as u8])?;
        self.target.write(&mut w)?;
        Ok(w.len())
    }
}

/// Why a stream ended (END) or a circuit was cut (TRUNCATED, DESTROY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EndReason {
    /// Unspecified.
    Misc = 1,
    /// The name did not resolve.
    ResolveFailed = 2,
    /// The target refused the connection.
    ConnectRefused = 3,
    /// The exit policy forbids it.
    ExitPolicy = 4,
    /// The circuit is going away.
    Destroy = 5,
    /// Normal close.
    Done = 6,
    /// Timed out.
    Timeout = 7,
    /// No route to the host.
    NoRoute = 8,
    /// The peer broke the protocol (bad cell, failed authentication).
    Protocol = 9,
    /// A resource limit (queue bound, stream count) was hit.
    ResourceLimit = 10,
    /// The connection was reset.
    ConnReset = 11,
    /// The next hop could not be reached.
    ConnectFailed = 12,
    /// The node is shutting down.
    Shutdown = 13,
}

impl EndReason {
    /// Parses a reason byte; unknown values read as `Misc`.
    pub fn from_u8(b: u8) -> EndReason {
        use EndReason::*;
        match b {
            2 => ResolveFailed,
            3 => ConnectRefused,
            4 => ExitPolicy,
            5 => Destroy,
            6 => Done,
            7 => Timeout,
            8 => NoRoute,
            9 => Protocol,
            10 => ResourceLimit,
            11 => ConnReset,
            12 => ConnectFailed,
            13 => Shutdown,
            _ => Misc,
        }
    }
}

/// CONNECTED body: the address the exit connected to, if it says.
pub fn parse_connected(body: &[u8]) -> Result<Target<'_>, MsgError> {
    if body.is_empty() {
        return Ok(Target::None);
    }
    Target::read(&mut Reader { buf: body })
}

/// EXTEND body: the next hop's id, its link address, the CREATE handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extend<'a> {
    /// Node id the next link must authenticate.
    pub node: [u8; 32],
    /// Link address (e.g. `udt://127.0.0.1:9001`), opaque to the kernel.
    pub addr: &'a str,
    /// The client's handshake message for the next hop.
    pub handshake: &'a [u8],
}

impl<'a> Extend<'a> {
    /// Parses an EXTEND body.
    pub fn parse(body: &'a [u8]) -> Result<Extend<'a>, MsgError> {
        let mut r = Reader { buf: body };
        let node = r.array::<32>()?;
        let alen = usize::from(r.u8()?);
        let addr = std::str::from_utf8(r.take(alen)?).map_err(|_| MsgError::BadField("addr"))?;
        let hlen = usize::from(r.u16()?);
        let handshake = r.take(hlen)?;
        Ok(Extend {
            node,
            addr,
            handshake,
        })
    }

    /// Encodes into `out`; returns the length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, MsgError> {
        if self.addr.len() > 255 {
            return Err(MsgError::BadField("addr"));
        }
        let mut w = Writer::new(out);
        w.put(&self.node)?;
        w.put(&[self.addr.len() as u8])?;
        w.put(self.addr.as_bytes())?;
        w.put(&(self.handshake.len() as u16).to_be_bytes())?;
        w.put(self.handshake)?;
        Ok(w.len())
    }
}

/// DATAGRAM body: target, then the UDP payload.
pub fn parse_datagram(body: &[u8]) -> Result<(Target<'_>, &[u8]), MsgError> {
    let mut r = Reader { buf: body };
    let target = Target::read(&mut r)?;
    if target == Target::None {
        return Err(MsgError::BadField("missing target"));
    }
    Ok((target, r.rest()))
}

/// Encodes a DATAGRAM body into `out`; returns the length.
pub fn write_datagram(
    out: &mut [u8],
    target: &Target<'_>,
    payload: &[u8],
) -> Result<usize, MsgError> {
    let mut w = Writer::new(out);
    target.write(&mut w)?;
    w.put(payload)?;
    Ok(w.len())
}

/// RESOLVED body: a list of (address type, address) entries.
pub fn parse_resolved(body: &[u8]) -> Result<Vec<IpAddr>, MsgError> {
    let mut r = Reader { buf: body };
    let mut out = Vec::new();
    while !r.buf.is_empty() {
        match r.u8()? {
            ADDR_V4 => out.push(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            ADDR_V6 => out.push(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            _ => return Err(MsgError::BadField("address type")),
        }
    }
    Ok(out)
}

/// Encodes a RESOLVED body; returns the length (stops at what fits).
pub fn write_resolved(out: &mut [u8], addrs: &[IpAddr]) -> usize {
    let mut w = Writer::new(out);
    for a in addrs {
        let ok = match a {
            IpAddr::V4(v4) => w.put(&[ADDR_V4]).and_then(|_| w.put(&v4.octets())),
            IpAddr::V6(v6) => w.put(&[ADDR_V6]).and_then(|_| w.put(&v6.octets())),
        };
        if ok.is_err() {
            break;
        }
    }
    w.len()
}

/// RESOLVE body: a host name.
pub fn parse_resolve(body: &[u8]) -> Result<&str, MsgError> {
    let name = std::str::from_utf8(body).map_err(|_| MsgError::BadField("host"))?;
    if !valid_host(name) {
        return Err(MsgError::BadField("host"));
    }
    Ok(name)
}

/// Parses any message and its typed body, for fuzzing and diagnostics:
/// returns an error for anything a node would reject.
pub fn parse_full(room: &[u8]) -> Result<RelayMsg<'_>, MsgError> {
    let msg = RelayMsg::parse(room)?;
    match msg.command {
        RelayCommand::Begin => {
            Begin::parse(msg.body)?;
        }
        RelayCommand::Connected => {
            parse_connected(msg.body)?;
        }
        RelayCommand::Extend => {
            Extend::parse(msg.body)?;
        }
        RelayCommand::Datagram => {
            parse_datagram(msg.body)?;
        }
        RelayCommand::Resolved => {
            parse_resolved(msg.body)?;
        }
        RelayCommand::Resolve => {
            parse_resolve(msg.body)?;
        }
        RelayCommand::Sendme if msg.body.len() < 16 => return Err(MsgError::Truncated),
        _ => {}
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_bounds() -> Result<(), MsgError> {
        let mut room = [0u8; 100];
        RelayMsg::write(&mut room, RelayCommand::Data, 7, b"hello")?;
        let m = RelayMsg::parse(&room)?;
        assert_eq!(
            (m.command, m.stream, m.body),
            (RelayCommand::Data, 7, &b"hello"[..])
        );
        room[3..5].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(RelayMsg::parse(&room), Err(MsgError::Truncated));
        assert_eq!(RelayMsg::parse(&room[..3]), Err(MsgError::Truncated));
        room[0] = 99;
        assert_eq!(RelayMsg::parse(&room), Err(MsgError::UnknownCommand(99)));
        assert!(RelayMsg::write(&mut room[..8], RelayCommand::Data, 1, b"toolong").is_err());
        Ok(())
    }

    #[test]
    fn begin_and_extend_round_trip() -> Result<(), MsgError> {
        let mut out = [0u8; 300];
        for t in [
            Target::Host("example.com", 80),
            Target::Ip("127.0.0.1".parse().map_err(|_| MsgError::Truncated)?, 22),
            Target::Ip("::1".parse().map_err(|_| MsgError::Truncated)?, 443),
        ] {
            let b = Begin {
                kind: StreamKind::Tcp,
                target: t,
            };
            let n = b.write(&mut out)?;
            assert_eq!(Begin::parse(&out[..n])?, b);
        }
        assert!(Begin {
            kind: StreamKind::Tcp,
            target: Target::Host("a b", 1)
        }
        .write(&mut out)
        .is_err());
        let e = Extend {
            node: [5; 32],
            addr: "udt://127.0.0.1:9001",
            handshake: &[1; 96],
        };
        let n = e.write(&mut out)?;
        assert_eq!(Extend::parse(&out[..n])?, e);
        assert!(Extend::parse(&out[..n - 1]).is_err());
        Ok(())
    }
}
