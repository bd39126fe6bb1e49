//! The ends of a circuit: relay messages, streams and congestion control at
//! the origin and at the last hop.
//!
//! Both ends run the same code. What differs is only how a message is
//! wrapped (the origin wraps for every hop, the last hop seals towards the
//! origin) and which messages each end may receive; a message the role does
//! not allow is a protocol violation and closes the circuit.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use bytes::Buf;

use super::{CircuitRef, Event, Node, Role, Side};
use crate::cell::{Cell, CellCommand};
use crate::crypto::onion::{outbound_room, INBOUND_ROOM};
use crate::error::NodeError;
use crate::flow::{self, CcParams, CircuitCc, SendmeCounter};
use crate::relay_msg::{
    self, Begin, EndReason, RelayCommand, RelayMsg, StreamKind, Target, MSG_HEADER_LEN,
};
use crate::stream::{Stream, StreamInfo, StreamRef, StreamState, TargetAddr};
use crate::time::Time;

/// Largest burst pacing allows after a pause, in nanoseconds.
const PACING_QUANTUM: u64 = 1_000_000;

/// Offset of the message room in a cell body (after the outermost tag).
const ROOM_AT: usize = 16;

/// Streams and congestion control at one end of a circuit.
pub(crate) struct Edge {
    pub streams: BTreeMap<u16, Stream>,
    pub cc: CircuitCc,
    pub sendme: SendmeCounter,
    next_stream: u16,
    /// Streams that may have data to send, in round-robin order.
    ready: VecDeque<u16>,
    /// Pacing: the earliest time the next DATA cell may go.
    next_send: Time,
    /// Set when data waits only for pacing: flush again at this time.
    pub wakeup: Option<Time>,
    /// A stream was reported writable and the application has not written
    /// since: an empty send queue then is the application's turn, not a
    /// lack of data (see `flush_edge`).
    app_notified: bool,
}

impl Edge {
    pub fn new(cc: CcParams) -> Edge {
        Edge {
            streams: BTreeMap::new(),
            cc: CircuitCc::new(cc),
            sendme: SendmeCounter::default(),
            next_stream: 0,
            ready: VecDeque::new(),
            next_send: Time(0),
            wakeup: None,
            app_notified: false,
        }
    }

    pub fn stream_ids(&self) -> Vec<u16> {
        self.streams.keys().copied().collect()
    }

    pub fn continue_ids_from(&mut self, old: &Edge) {
        self.next_stream = old.next_stream;
    }

    fn alloc_stream_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.next_stream = self.next_stream.wrapping_add(1);
            if self.next_stream != 0 && !self.streams.contains_key(&self.next_stream) {
                return Some(self.next_stream);
            }
        }
        None
    }

    /// Queues a stream for sending unless it is queued already (a flag on
    /// the stream, not a scan: thousands of streams may share a circuit).
    fn mark_ready(&mut self, id: u16) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_ready {
                s.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }
}

impl Node {
    /// Message room for a circuit end: how many body bytes a message may
    /// have when sent from this end.
    fn data_room(&self, circ: CircuitRef) -> usize {
        match self.circuits.get(circ).map(|c| &c.role) {
            Some(Role::Origin(o)) => outbound_room(o.onion.len().max(1)) - MSG_HEADER_LEN,
            _ => INBOUND_ROOM - MSG_HEADER_LEN,
        }
    }

    /// Sends a relay message from this end of the circuit.
    pub(crate) fn edge_send(
        &mut self,
        now: Time,
        circ: CircuitRef,
        command: RelayCommand,
        stream: u16,
        body: &[u8],
    ) -> Result<(), NodeError> {
        self.edge_send_with(now, circ, command, stream, body.len(), |dst| {
            dst.copy_from_slice(body)
        })
    }

    /// Sends a relay message whose `len`-byte body `fill` writes in place.
    fn edge_send_with(
        &mut self,
        now: Time,
        circ: CircuitRef,
        command: RelayCommand,
        stream: u16,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), NodeError> {
        let Node {
            circuits, out, rng, ..
        } = self;
        let c = circuits.get_mut(circ).ok_or(NodeError::NoSuchCircuit)?;
        let mut cell = out.pool.take(0, CellCommand::Relay);
        let body = cell.body_mut();
        let (tag, side, (_, id)) = match &mut c.role {
            Role::Origin(o) => {
                let room = outbound_room(o.onion.len().max(1));
                let region = &mut body[ROOM_AT..ROOM_AT + room];
                RelayMsg::write_header(region, command, stream, len)?;
                fill(&mut region[MSG_HEADER_LEN..MSG_HEADER_LEN + len]);
                // Unused room is random so the last hop cannot see where
                // the client's bytes end and the padding of earlier hops
                // begins (which would reveal the path length).
                rng.fill_bytes(&mut region[MSG_HEADER_LEN + len..]);
                let tag = o.onion.wrap_outbound(body)?;
                (tag, Side::Next, c.next.ok_or(NodeError::NoSuchCircuit)?)
            }
            Role::Relay(r) => {
                let region = &mut body[ROOM_AT..];
                RelayMsg::write_header(region, command, stream, len)?;
                fill(&mut region[MSG_HEADER_LEN..MSG_HEADER_LEN + len]);
                region[MSG_HEADER_LEN + len..].fill(0);
                let tag = r.hop.seal_inbound(body)?;
                (tag, Side::Prev, c.prev.ok_or(NodeError::NoSuchCircuit)?)
            }
        };
        cell.set_circ_id(id);
        if command != RelayCommand::Sendme {
            if let Some(e) = &mut c.edge {
                e.cc.on_send(now, tag);
            }
        }
        out.queue_cell(c, circ, side, cell);
        Ok(())
    }

    /// A relay message arrived at this end (already unwrapped; the message
    /// is at `body[16..]`, `tag` is the tag that authenticated it).
    pub(super) fn edge_on_cell(&mut self, now: Time, circ: CircuitRef, tag: [u8; 16], cell: Cell) {
        let wait = cell.reorder_wait_us();
        let result = self.edge_on_message(now, circ, tag, wait, &cell.body()[ROOM_AT..]);
        self.out.pool.give(cell);
        if let Err(reason) = result {
            self.kill_circuit(now, circ, reason);
        }
    }

    /// `reorder_wait_us` is the cell's wait in links' reordering buffers
    /// on its way here: a SENDME this cell triggers reports it to the
    /// sender, and if the cell is itself a SENDME it is that SENDME's own
    /// wait (see `flow::ledger`).
    fn edge_on_message(
        &mut self,
        now: Time,
        circ: CircuitRef,
        tag: [u8; 16],
        reorder_wait_us: u32,
        room: &[u8],
    ) -> Result<(), EndReason> {
        let msg = RelayMsg::parse(room).map_err(|_| EndReason::Protocol)?;
        let is_origin = self.circuits.is_origin(circ);
        let c = self.circuits.get_mut(circ).ok_or(EndReason::Misc)?;
        let edge = c.edge.as_mut().ok_or(EndReason::Protocol)?;
        if msg.command != RelayCommand::Sendme && edge.sendme.on_receive() {
            let body = flow::sendme_body(&tag, reorder_wait_us);
            self.edge_send(now, circ, RelayCommand::Sendme, 0, &body)
                .map_err(|_| EndReason::Misc)?;
        }
        let sref = StreamRef {
            circuit: circ,
            id: msg.stream,
        };
        use RelayCommand::*;
        match (msg.command, is_origin) {
            (Sendme, _) => {
                let edge = self.edge_mut(circ).ok_or(EndReason::Misc)?;
                edge.cc
                    .on_sendme(now, msg.body, reorder_wait_us)
                    .map_err(|_| EndReason::Protocol)?;
                self.flush_edge(now, circ);
            }
            (Data, _) => self.on_data(now, sref, msg.body)?,
            (End, _) => {
                let reason = EndReason::from_u8(msg.body.first().copied().unwrap_or(1));
                self.on_end(sref, reason);
            }
            (Datagram, _) => self.on_datagram(sref, msg.body)?,
            (Xoff | Xon, _) => {
                let edge = self.edge_mut(circ).ok_or(EndReason::Misc)?;
                if let Some(s) = edge.streams.get_mut(&msg.stream) {
                    s.peer_xoff = msg.command == Xoff;
                    if !s.peer_xoff {
                        edge.mark_ready(msg.stream);
                    }
                }
                self.flush_edge(now, circ);
            }
            (Drop, _) => {}
            (Connected, true) => {
                relay_msg::parse_connected(msg.body).map_err(|_| EndReason::Protocol)?;
                let edge = self.edge_mut(circ).ok_or(EndReason::Misc)?;
                if let Some(s) = edge.streams.get_mut(&msg.stream) {
                    if s.state == StreamState::Connecting {
                        s.state = StreamState::Open;
                        edge.mark_ready(msg.stream);
                        self.out.events.push_back(Event::StreamOpened(sref));
                        self.flush_edge(now, circ);
                    }
                }
            }
            (Resolved, true) => {
                let addrs = relay_msg::parse_resolved(msg.body).map_err(|_| EndReason::Protocol)?;
                let edge = self.edge_mut(circ).ok_or(EndReason::Misc)?;
                if edge.streams.remove(&msg.stream).is_some() {
                    self.out.events.push_back(Event::Resolved {
                        stream: sref,
                        addrs,
                    });
                }
            }
            (Extended, true) => self.origin_on_extended(now, circ, msg.body),
            (Truncated, true) => {
                let reason = EndReason::from_u8(msg.body.first().copied().unwrap_or(1));
                self.origin_on_unexpected_truncated(now, circ, reason);
            }
            (Begin, false) => self.on_begin(sref, msg.body)?,
            (Resolve, false) => {
                let host = relay_msg::parse_resolve(msg.body).map_err(|_| EndReason::Protocol)?;
                let host = host.to_string();
                let edge = self.edge_mut(circ).ok_or(EndReason::Misc)?;
                if edge.streams.contains_key(&msg.stream) || msg.stream == 0 {
                    return Err(EndReason::Protocol);
                }
                let mut s = Stream::new(StreamKind::Tcp, StreamState::Connecting);
                s.resolve_only = true;
                edge.streams.insert(msg.stream, s);
                self.out
                    .events
                    .push_back(Event::ResolveRequest { stream: sref, host });
            }
            (Extend, false) => {
                let body = msg.body.to_vec();
                self.relay_on_extend(now, circ, &body);
            }
            (Truncate, false) => self.kill_circuit(now, circ, EndReason::Done),
            _ => return Err(EndReason::Protocol),
        }
        Ok(())
    }

    fn edge_mut(&mut self, circ: CircuitRef) -> Option<&mut Edge> {
        self.circuits.get_mut(circ)?.edge.as_mut()
    }

    fn stream_mut(&mut self, s: StreamRef) -> Option<&mut Stream> {
        self.edge_mut(s.circuit)?.streams.get_mut(&s.id)
    }

    fn on_begin(&mut self, sref: StreamRef, body: &[u8]) -> Result<(), EndReason> {
        let begin = Begin::parse(body).map_err(|_| EndReason::Protocol)?;
        let target = TargetAddr::from_target(&begin.target);
        let edge = self.edge_mut(sref.circuit).ok_or(EndReason::Misc)?;
        if sref.id == 0 || edge.streams.contains_key(&sref.id) {
            return Err(EndReason::Protocol);
        }
        edge.streams
            .insert(sref.id, Stream::new(begin.kind, StreamState::Connecting));
        self.out.events.push_back(Event::StreamRequest {
            stream: sref,
            kind: begin.kind,
            target,
        });
        Ok(())
    }

    fn on_data(&mut self, now: Time, sref: StreamRef, data: &[u8]) -> Result<(), EndReason> {
        let limits = self.config.streams;
        let Some(s) = self.stream_mut(sref) else {
            // A stream we closed: its in-flight data is dropped.
            return Ok(());
        };
        if s.recv_end.is_some() || s.kind == StreamKind::Udp {
            return Err(EndReason::Protocol);
        }
        s.recv_buf.extend_from_slice(data);
        let signal = !s.readable_signalled;
        if signal {
            s.readable_signalled = true;
            s.readable_at = now;
        }
        // XOFF only once the application had a turn to read: cells that
        // arrive together (a link releasing a circuit's cells after a
        // retransmission) may exceed the threshold before the application
        // hears of the first, and stopping the sender for a full round trip
        // then costs throughput for nothing. What arrives at one instant is
        // bounded by the sender's window.
        let xoff = s.recv_buf.len() > limits.xoff_threshold && !s.xoff_sent && now > s.readable_at;
        if xoff {
            s.xoff_sent = true;
        }
        if signal {
            self.out.events.push_back(Event::StreamReadable(sref));
        }
        if xoff {
            self.out.stats.xoffs_sent += 1;
            self.edge_send(now, sref.circuit, RelayCommand::Xoff, sref.id, &[])
                .map_err(|_| EndReason::Misc)?;
        }
        Ok(())
    }

    fn on_datagram(&mut self, sref: StreamRef, body: &[u8]) -> Result<(), EndReason> {
        let limit = self.config.streams.datagram_queue;
        let (target, payload) = relay_msg::parse_datagram(body).map_err(|_| EndReason::Protocol)?;
        let target = TargetAddr::from_target(&target);
        let Some(s) = self.stream_mut(sref) else {
            return Ok(());
        };
        if s.kind != StreamKind::Udp {
            return Err(EndReason::Protocol);
        }
        if s.datagrams.len() >= limit {
            s.datagrams.pop_front();
        }
        s.datagrams.push_back((target, payload.to_vec()));
        let signal = !s.readable_signalled;
        s.readable_signalled = true;
        if signal {
            self.out.events.push_back(Event::StreamReadable(sref));
        }
        Ok(())
    }

    fn on_end(&mut self, sref: StreamRef, reason: EndReason) {
        let Some(s) = self.stream_mut(sref) else {
            return;
        };
        if s.recv_end.is_some() {
            return;
        }
        s.recv_end = Some(reason);
        if reason != EndReason::Done {
            // An abort: nothing more will be accepted either way.
            s.send_buf.clear();
            s.finishing = true;
            s.end_sent = true;
        }
        self.out.events.push_back(Event::StreamClosed {
            stream: sref,
            reason,
        });
        self.reap_stream(sref);
    }

    /// Forgets a stream once both directions are finished and the
    /// application has read everything.
    fn reap_stream(&mut self, sref: StreamRef) {
        if let Some(edge) = self.edge_mut(sref.circuit) {
            let done = edge.streams.get(&sref.id).is_some_and(|s| {
                s.end_sent
                    && s.recv_end.is_some()
                    && s.recv_buf.is_empty()
                    && s.datagrams.is_empty()
            });
            if done {
                edge.streams.remove(&sref.id);
            }
        }
    }

    pub(super) fn report_streams_closed(
        &mut self,
        circ: CircuitRef,
        ids: &[u16],
        reason: EndReason,
    ) {
        for id in ids {
            self.out.events.push_back(Event::StreamClosed {
                stream: StreamRef {
                    circuit: circ,
                    id: *id,
                },
                reason,
            });
        }
    }

    /// Packs buffered stream data into DATA cells while the congestion
    /// window allows, round-robin over streams; sends END for finished ones.
    pub(crate) fn flush_edge(&mut self, now: Time, circ: CircuitRef) {
        let room = self.data_room(circ);
        let send_buffer = self.config.streams.send_buffer;
        let mut chunk = [0u8; INBOUND_ROOM];
        let mut sent_any = false;
        loop {
            let Some(edge) = self.edge_mut(circ) else {
                return;
            };
            // Nothing to pace until a SENDME opens the window or data is
            // written (both flush again): a pacing wakeup left from before
            // would stay in the past and make `poll_timeout` return a due
            // time forever.
            if !edge.cc.can_send() || edge.ready.is_empty() {
                if edge.ready.is_empty() && edge.cc.can_send() && !sent_any && !edge.app_notified {
                    // The window is open and the application has nothing
                    // queued although it was not waiting for a writable
                    // report: what is in flight measures the application,
                    // not the path. Without the two conditions a bulk
                    // sender whose 256 KiB buffer a burst of SENDMEs empties
                    // faster than it is refilled looks application-limited
                    // (netsim long-fat: BBR never left Startup).
                    edge.cc.on_app_limited();
                }
                edge.wakeup = None;
                return;
            }
            if let Some(interval) = edge.cc.pacing_interval() {
                if edge.next_send > now {
                    edge.wakeup = Some(edge.next_send);
                    return;
                }
                // Credit unused in the past is capped at one quantum, so an
                // idle circuit does not burst a whole window later.
                edge.next_send = edge
                    .next_send
                    .max(Time(now.nanos().saturating_sub(PACING_QUANTUM)));
                edge.next_send = edge.next_send.plus_nanos(interval);
            }
            edge.wakeup = None;
            let Some(id) = edge.ready.pop_front() else {
                return;
            };
            let Some(s) = edge.streams.get_mut(&id) else {
                continue;
            };
            s.in_ready = false;
            let sref = StreamRef { circuit: circ, id };
            if s.wants_to_send() {
                let n = s.send_buf.len().min(room);
                chunk[..n].copy_from_slice(&s.send_buf[..n]);
                s.send_buf.advance(n);
                let more = !s.send_buf.is_empty();
                let writable = s.writable_wanted && s.send_buf.len() <= send_buffer / 2;
                if writable {
                    s.writable_wanted = false;
                }
                if more {
                    s.in_ready = true;
                    edge.ready.push_back(id);
                } else if s.finishing {
                    s.in_ready = true;
                    edge.ready.push_front(id);
                }
                if writable {
                    edge.app_notified = true;
                    self.out.events.push_back(Event::StreamWritable(sref));
                }
                sent_any = true;
                if self
                    .edge_send(now, circ, RelayCommand::Data, id, &chunk[..n])
                    .is_err()
                {
                    return;
                }
            } else if s.finishing
                && !s.end_sent
                && s.send_buf.is_empty()
                && s.state == StreamState::Open
            {
                s.end_sent = true;
                if self
                    .edge_send(now, circ, RelayCommand::End, id, &[EndReason::Done as u8])
                    .is_err()
                {
                    return;
                }
                self.reap_stream(sref);
            }
        }
    }

    // ----- application API --------------------------------------------

    /// (Client) Opens a stream on a ready circuit. [`Event::StreamOpened`]
    /// or [`Event::StreamClosed`] follows. Data written before it opens is
    /// buffered.
    pub fn open_stream(
        &mut self,
        now: Time,
        circ: CircuitRef,
        kind: StreamKind,
        target: &TargetAddr,
    ) -> Result<StreamRef, NodeError> {
        self.check_ready_origin(circ)?;
        let begin = Begin {
            kind,
            target: target.as_target(),
        };
        let mut body = [0u8; 300];
        let n = begin.write(&mut body)?;
        let edge = self.edge_mut(circ).ok_or(NodeError::NoSuchCircuit)?;
        let id = edge.alloc_stream_id().ok_or(NodeError::TooManyStreams)?;
        edge.streams
            .insert(id, Stream::new(kind, StreamState::Connecting));
        self.edge_send(now, circ, RelayCommand::Begin, id, &body[..n])?;
        Ok(StreamRef { circuit: circ, id })
    }

    /// (Client) Asks the exit to resolve a name; [`Event::Resolved`] follows.
    pub fn resolve(
        &mut self,
        now: Time,
        circ: CircuitRef,
        host: &str,
    ) -> Result<StreamRef, NodeError> {
        self.check_ready_origin(circ)?;
        if !relay_msg::valid_host(host) {
            return Err(NodeError::Msg(crate::error::MsgError::BadField("host")));
        }
        let edge = self.edge_mut(circ).ok_or(NodeError::NoSuchCircuit)?;
        let id = edge.alloc_stream_id().ok_or(NodeError::TooManyStreams)?;
        let mut s = Stream::new(StreamKind::Tcp, StreamState::Connecting);
        s.resolve_only = true;
        edge.streams.insert(id, s);
        self.edge_send(now, circ, RelayCommand::Resolve, id, host.as_bytes())?;
        Ok(StreamRef { circuit: circ, id })
    }

    fn check_ready_origin(&self, circ: CircuitRef) -> Result<(), NodeError> {
        match self.circuits.get(circ).map(|c| &c.role) {
            Some(Role::Origin(o)) if o.phase == super::origin::Phase::Ready => Ok(()),
            Some(Role::Origin(_)) => Err(NodeError::NotReady),
            _ => Err(NodeError::NoSuchCircuit),
        }
    }

    /// Sends one DROP (padding) message to the other end of the circuit,
    /// indistinguishable on the wire from any other relay cell.
    pub fn send_padding(&mut self, now: Time, circ: CircuitRef) -> Result<(), NodeError> {
        if self.edge_mut(circ).is_none() {
            return Err(NodeError::NoSuchCircuit);
        }
        self.edge_send(now, circ, RelayCommand::Drop, 0, &[])
    }

    /// (Exit) Accepts a requested stream: CONNECTED goes back.
    pub fn accept_stream(
        &mut self,
        now: Time,
        s: StreamRef,
        bound: Option<SocketAddr>,
    ) -> Result<(), NodeError> {
        let st = self.stream_mut(s).ok_or(NodeError::NoSuchStream)?;
        if st.state != StreamState::Connecting {
            return Err(NodeError::StreamNotWritable);
        }
        st.state = StreamState::Open;
        let mut body = [0u8; 32];
        let mut w = relay_msg::Writer::new(&mut body);
        match bound {
            Some(sa) => Target::Ip(sa.ip(), sa.port()).write(&mut w)?,
            None => Target::None.write(&mut w)?,
        }
        let n = w.len();
        self.edge_send(now, s.circuit, RelayCommand::Connected, s.id, &body[..n])?;
        if let Some(edge) = self.edge_mut(s.circuit) {
            edge.mark_ready(s.id);
        }
        self.flush_edge(now, s.circuit);
        Ok(())
    }

    /// (Exit) Answers a RESOLVE (an empty list means it failed).
    pub fn resolve_reply(
        &mut self,
        now: Time,
        s: StreamRef,
        addrs: &[IpAddr],
    ) -> Result<(), NodeError> {
        let edge = self.edge_mut(s.circuit).ok_or(NodeError::NoSuchCircuit)?;
        match edge.streams.get(&s.id) {
            Some(st) if st.resolve_only => {}
            _ => return Err(NodeError::NoSuchStream),
        }
        edge.streams.remove(&s.id);
        let mut body = [0u8; INBOUND_ROOM];
        let n = relay_msg::write_resolved(&mut body[..INBOUND_ROOM - MSG_HEADER_LEN], addrs);
        self.edge_send(now, s.circuit, RelayCommand::Resolved, s.id, &body[..n])
    }

    /// Queues bytes for sending; returns how many were accepted (fewer than
    /// offered when the send buffer is full: [`Event::StreamWritable`]
    /// follows when there is room).
    pub fn stream_write(
        &mut self,
        now: Time,
        s: StreamRef,
        data: &[u8],
    ) -> Result<usize, NodeError> {
        let limit = self.config.streams.send_buffer;
        let st = self.stream_mut(s).ok_or(NodeError::NoSuchStream)?;
        let room = st.send_room(limit).ok_or(NodeError::StreamNotWritable)?;
        let n = data.len().min(room);
        st.send_buf.extend_from_slice(&data[..n]);
        if n < data.len() {
            st.writable_wanted = true;
        }
        if n > 0 {
            if let Some(edge) = self.edge_mut(s.circuit) {
                edge.app_notified = false;
                edge.mark_ready(s.id);
            }
            self.flush_edge(now, s.circuit);
        }
        Ok(n)
    }

    /// Reads received bytes. `Ok(0)` with a non-empty `buf` means nothing is
    /// waiting; [`Node::stream_at_eof`] tells whether more can come.
    pub fn stream_read(
        &mut self,
        now: Time,
        s: StreamRef,
        buf: &mut [u8],
    ) -> Result<usize, NodeError> {
        let xon_at = self.config.streams.xon_threshold;
        let st = self.stream_mut(s).ok_or(NodeError::NoSuchStream)?;
        let n = buf.len().min(st.recv_buf.len());
        buf[..n].copy_from_slice(&st.recv_buf[..n]);
        st.recv_buf.advance(n);
        if st.recv_buf.is_empty() {
            st.readable_signalled = false;
        }
        let xon = st.xoff_sent && st.recv_buf.len() <= xon_at;
        if xon {
            st.xoff_sent = false;
        }
        if xon {
            self.edge_send(now, s.circuit, RelayCommand::Xon, s.id, &[])?;
        }
        self.reap_stream(s);
        Ok(n)
    }

    /// Whether the peer finished the stream and everything was read (or the
    /// stream is gone).
    pub fn stream_at_eof(&self, s: StreamRef) -> bool {
        match self
            .circuits
            .get(s.circuit)
            .and_then(|c| c.edge.as_ref())
            .and_then(|e| e.streams.get(&s.id))
        {
            Some(st) => st.recv_end.is_some() && st.recv_buf.is_empty(),
            None => true,
        }
    }

    /// Bytes [`Node::stream_write`] would take now (0 for a stream that
    /// is gone or not writable), so a writer need not produce more.
    pub fn stream_send_room(&self, s: StreamRef) -> usize {
        let limit = self.config.streams.send_buffer;
        self.circuits
            .get(s.circuit)
            .and_then(|c| c.edge.as_ref())
            .and_then(|e| e.streams.get(&s.id))
            .and_then(|st| st.send_room(limit))
            .unwrap_or(0)
    }

    /// Bytes waiting to be read on a stream.
    pub fn stream_readable_len(&self, s: StreamRef) -> usize {
        self.circuits
            .get(s.circuit)
            .and_then(|c| c.edge.as_ref())
            .and_then(|e| e.streams.get(&s.id))
            .map_or(0, |st| st.recv_buf.len())
    }

    /// Finishes sending: END(Done) goes after the buffered bytes.
    pub fn stream_finish(&mut self, now: Time, s: StreamRef) -> Result<(), NodeError> {
        let st = self.stream_mut(s).ok_or(NodeError::NoSuchStream)?;
        st.finishing = true;
        if let Some(edge) = self.edge_mut(s.circuit) {
            edge.mark_ready(s.id);
        }
        self.flush_edge(now, s.circuit);
        Ok(())
    }

    /// Closes a stream now with `reason` (refusals at the exit, aborts),
    /// discarding buffers. No further events come for it.
    pub fn close_stream(
        &mut self,
        now: Time,
        s: StreamRef,
        reason: EndReason,
    ) -> Result<(), NodeError> {
        let edge = self.edge_mut(s.circuit).ok_or(NodeError::NoSuchCircuit)?;
        let st = edge.streams.remove(&s.id).ok_or(NodeError::NoSuchStream)?;
        if !st.end_sent && st.recv_end.is_none_or(|r| r == EndReason::Done) {
            self.edge_send(now, s.circuit, RelayCommand::End, s.id, &[reason as u8])?;
        }
        Ok(())
    }

    /// Sends one datagram on a UDP stream (dropped, like UDP, when the
    /// congestion window is full).
    pub fn send_datagram(
        &mut self,
        now: Time,
        s: StreamRef,
        target: &TargetAddr,
        payload: &[u8],
    ) -> Result<bool, NodeError> {
        let room = self.data_room(s.circuit);
        let st = self.stream_mut(s).ok_or(NodeError::NoSuchStream)?;
        if st.kind != StreamKind::Udp || st.state != StreamState::Open {
            return Err(NodeError::StreamNotWritable);
        }
        let mut body = [0u8; INBOUND_ROOM];
        let n = relay_msg::write_datagram(&mut body[..room], &target.as_target(), payload)?;
        let can = self.edge_mut(s.circuit).is_some_and(|e| e.cc.can_send());
        if !can {
            return Ok(false);
        }
        self.edge_send(now, s.circuit, RelayCommand::Datagram, s.id, &body[..n])?;
        Ok(true)
    }

    /// Largest datagram payload for a target on this circuit.
    pub fn datagram_room(&self, s: StreamRef, target: &TargetAddr) -> usize {
        let mut scratch = [0u8; 300];
        let mut w = relay_msg::Writer::new(&mut scratch);
        let used = target
            .as_target()
            .write(&mut w)
            .map(|_| w.len())
            .unwrap_or(300);
        self.data_room(s.circuit).saturating_sub(used)
    }

    /// Takes one received datagram.
    pub fn recv_datagram(&mut self, s: StreamRef) -> Option<(TargetAddr, Vec<u8>)> {
        let st = self.stream_mut(s)?;
        let d = st.datagrams.pop_front();
        if st.datagrams.is_empty() {
            st.readable_signalled = false;
        }
        d
    }

    /// Streams this node holds, for listings.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let mut v = Vec::new();
        for (circ, c) in self.circuits.iter() {
            if let Some(e) = &c.edge {
                for (id, s) in &e.streams {
                    v.push(StreamInfo {
                        stream: StreamRef {
                            circuit: circ,
                            id: *id,
                        },
                        kind: s.kind,
                        open: s.state == StreamState::Open,
                        send_buffered: s.send_buf.len(),
                        recv_buffered: s.recv_buf.len(),
                    });
                }
            }
        }
        v
    }
}
