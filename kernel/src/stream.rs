//! Stream state at either edge of a circuit (the client, or the exit).
//!
//! Streams are multiplexed on a circuit by 16-bit id. Each has a bounded send
//! buffer (filled by the application, drained into DATA cells as congestion
//! control allows) and a receive buffer with XON/XOFF backpressure (Tor
//! proposal 344 style): when the application falls behind, the receiver sends
//! XOFF and the sender pauses that stream alone, so a slow reader holds at most
//! its threshold plus one congestion window, and other streams keep moving.

use crate::time::Time;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;

use crate::node::CircuitRef;
use crate::relay_msg::{EndReason, StreamKind, Target};

/// A stream on a circuit, as the application names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamRef {
    /// The circuit.
    pub circuit: CircuitRef,
    /// Stream id on that circuit.
    pub id: u16,
}

/// An owned stream or datagram target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// No target.
    None,
    /// Address and port.
    Ip(SocketAddr),
    /// Host name (resolved at the exit) and port.
    Host(String, u16),
}

impl TargetAddr {
    /// Borrowed wire form.
    pub fn as_target(&self) -> Target<'_> {
        match self {
            TargetAddr::None => Target::None,
            TargetAddr::Ip(sa) => Target::Ip(sa.ip(), sa.port()),
            TargetAddr::Host(h, p) => Target::Host(h, *p),
        }
    }

    /// Owned copy of a wire target.
    pub fn from_target(t: &Target<'_>) -> TargetAddr {
        match t {
            Target::None => TargetAddr::None,
            Target::Ip(ip, port) => TargetAddr::Ip(SocketAddr::new(*ip, *port)),
            Target::Host(h, p) => TargetAddr::Host((*h).to_string(), *p),
        }
    }
}

impl std::fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetAddr::None => f.write_str("-"),
            TargetAddr::Ip(sa) => write!(f, "{sa}"),
            TargetAddr::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Where a stream is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// BEGIN sent (client) or received and not yet answered (exit).
    Connecting,
    /// Data may flow.
    Open,
}

/// Limits for stream buffers, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Most bytes an application may queue for sending.
    pub send_buffer: usize,
    /// Send XOFF when this many received bytes wait unread.
    pub xoff_threshold: usize,
    /// Send XON when the unread bytes fall to this after an XOFF.
    pub xon_threshold: usize,
    /// Most datagrams queued unread (older ones are dropped, as UDP would).
    pub datagram_queue: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            send_buffer: 256 * 1024,
            xoff_threshold: 256 * 1024,
            xon_threshold: 64 * 1024,
            datagram_queue: 256,
        }
    }
}

/// One stream's buffers and flags.
#[derive(Debug)]
pub(crate) struct Stream {
    pub kind: StreamKind,
    pub state: StreamState,
    /// Application bytes not yet packed into cells.
    pub send_buf: BytesMut,
    /// Application asked to finish: send END(Done) once `send_buf` drains.
    pub finishing: bool,
    /// END sent: nothing more will be sent.
    pub end_sent: bool,
    /// Bytes received and not yet read by the application.
    pub recv_buf: BytesMut,
    /// END received: no more data will arrive.
    pub recv_end: Option<EndReason>,
    /// We sent XOFF and have not yet sent XON.
    pub xoff_sent: bool,
    /// The peer sent XOFF: do not send data.
    pub peer_xoff: bool,
    /// A StreamReadable event is outstanding (cleared by a read).
    pub readable_signalled: bool,
    /// When that event was raised.
    pub readable_at: Time,
    /// A write was cut short: signal StreamWritable when there is room.
    pub writable_wanted: bool,
    /// Received datagrams (UDP streams).
    pub datagrams: VecDeque<(TargetAddr, Vec<u8>)>,
    /// A RESOLVE stream rather than a data stream.
    pub resolve_only: bool,
    /// Queued in its edge's round-robin of streams with data to send.
    pub in_ready: bool,
}

impl Stream {
    /// Bytes `Node::stream_write` may add with a send buffer of `limit`
    /// bytes, or None when the stream takes no writes (finishing, a UDP
    /// association, a resolve-only stream).
    pub fn send_room(&self, limit: usize) -> Option<usize> {
        let writable = !self.finishing && self.kind != StreamKind::Udp && !self.resolve_only;
        writable.then(|| limit.saturating_sub(self.send_buf.len()))
    }

    pub fn new(kind: StreamKind, state: StreamState) -> Stream {
        Stream {
            kind,
            state,
            send_buf: BytesMut::new(),
            finishing: false,
            end_sent: false,
            recv_buf: BytesMut::new(),
            recv_end: None,
            xoff_sent: false,
            peer_xoff: false,
            readable_signalled: false,
            readable_at: Time(0),
            writable_wanted: false,
            datagrams: VecDeque::new(),
            resolve_only: false,
            in_ready: false,
        }
    }

    /// Whether this stream has DATA to send now.
    pub fn wants_to_send(&self) -> bool {
        self.state == StreamState::Open && !self.peer_xoff && !self.send_buf.is_empty()
    }
}

/// Information about a stream for listings.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamRef,
    /// Its kind.
    pub kind: StreamKind,
    /// Whether it is open.
    pub open: bool,
    /// Bytes waiting to be sent.
    pub send_buffered: usize,
    /// Bytes waiting to be read.
    pub recv_buffered: usize,
}

/// Resolved addresses, carried by an event.
pub type Addrs = Vec<IpAddr>;
