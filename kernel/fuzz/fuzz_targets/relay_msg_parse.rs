//! Fuzz target: relay message parsers on untrusted bytes.
//!
//! `relay_msg::parse_full` and every typed body parser are run on the raw
//! input (and the typed parsers again on the message body when the header
//! parses). None may panic. Whatever parses must re-encode to an equal value:
//! BEGIN and EXTEND through `write` into a 600-byte buffer, the header through
//! `RelayMsg::write`, DATAGRAM / RESOLVED / CONNECTED through their writers.
//! The encodings are canonical, so the re-encoding must also be byte-equal to
//! the prefix of the input the parser consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_kernel::relay_msg::{
    self, parse_connected, parse_datagram, parse_resolve, parse_resolved, valid_host,
    write_datagram, write_resolved, Begin, Extend, RelayCommand, RelayMsg, Target, Writer,
    MSG_HEADER_LEN,
};

/// Buffer size for BEGIN / EXTEND re-encoding (bigger than a cell body).
const OUT_LEN: usize = 600;

fuzz_target!(|data: &[u8]| {
    let full = relay_msg::parse_full(data);
    let msg = RelayMsg::parse(data);

    // parse_full is RelayMsg::parse plus typed-body checks.
    if let Ok(m) = full {
        assert_eq!(
            msg,
            Ok(m),
            "parse_full accepted what RelayMsg::parse rejected"
        );
    }

    if let Ok(m) = msg {
        check_header(data, &m);
        // parse_full must agree with the typed parser for the command.
        let typed_ok = match m.command {
            RelayCommand::Begin => Begin::parse(m.body).is_ok(),
            RelayCommand::Connected => parse_connected(m.body).is_ok(),
            RelayCommand::Extend => Extend::parse(m.body).is_ok(),
            RelayCommand::Datagram => parse_datagram(m.body).is_ok(),
            RelayCommand::Resolved => parse_resolved(m.body).is_ok(),
            RelayCommand::Resolve => parse_resolve(m.body).is_ok(),
            RelayCommand::Sendme => m.body.len() >= 16,
            _ => true,
        };
        assert_eq!(
            full.is_ok(),
            typed_ok,
            "parse_full disagrees with the typed parser"
        );
        check_bodies(m.body);
    }

    check_bodies(data);
});

/// Header invariants and `RelayMsg::write` round trip.
fn check_header(data: &[u8], m: &RelayMsg<'_>) {
    let len = usize::from(u16::from_be_bytes([data[3], data[4]]));
    assert_eq!(m.command as u8, data[0]);
    assert_eq!(RelayCommand::from_u8(data[0]), Ok(m.command));
    assert_eq!(m.stream, u16::from_be_bytes([data[1], data[2]]));
    assert_eq!(m.body.len(), len);
    assert_eq!(m.body, &data[MSG_HEADER_LEN..MSG_HEADER_LEN + len]);

    let mut room = vec![0u8; MSG_HEADER_LEN + len];
    if let Err(e) = RelayMsg::write(&mut room, m.command, m.stream, m.body) {
        panic!("RelayMsg::write failed on an exact-size room: {e}");
    }
    assert_eq!(&room[..], &data[..MSG_HEADER_LEN + len]);
    assert_eq!(RelayMsg::parse(&room), Ok(*m));
    // One byte short must be refused, not panic.
    assert!(RelayMsg::write(
        &mut room[..MSG_HEADER_LEN + len - 1],
        m.command,
        m.stream,
        m.body
    )
    .is_err());
}

/// Runs every typed body parser on `body` and checks re-encoding.
fn check_bodies(body: &[u8]) {
    // BEGIN: the longest encoding is 1 + 1 + 1 + 255 + 2 = 260 bytes, so a
    // parsed BEGIN always fits in OUT_LEN.
    if let Ok(b) = Begin::parse(body) {
        let mut out = [0u8; OUT_LEN];
        let n = match b.write(&mut out) {
            Ok(n) => n,
            Err(e) => panic!("parsed BEGIN {b:?} does not re-encode: {e}"),
        };
        assert_eq!(&out[..n], &body[..n], "BEGIN encoding is not canonical");
        assert_eq!(Begin::parse(&out[..n]), Ok(b));
    }

    // EXTEND: fits in OUT_LEN unless the handshake is long; then write must
    // refuse cleanly.
    if let Ok(e) = Extend::parse(body) {
        let need = 32 + 1 + e.addr.len() + 2 + e.handshake.len();
        let mut out = [0u8; OUT_LEN];
        match e.write(&mut out) {
            Ok(n) => {
                assert_eq!(n, need);
                assert_eq!(&out[..n], &body[..n], "EXTEND encoding is not canonical");
                assert_eq!(Extend::parse(&out[..n]), Ok(e));
            }
            Err(err) => assert!(need > OUT_LEN, "EXTEND of {need} bytes refused: {err}"),
        }
    }

    // DATAGRAM: target then the rest as payload.
    if let Ok((target, payload)) = parse_datagram(body) {
        assert_ne!(target, Target::None);
        assert!(body.ends_with(payload));
        let mut out = vec![0u8; body.len()];
        match write_datagram(&mut out, &target, payload) {
            Ok(n) => assert_eq!(&out[..n], body, "DATAGRAM encoding is not canonical"),
            Err(e) => panic!("parsed DATAGRAM does not re-encode: {e}"),
        }
        assert_eq!(parse_datagram(&out), Ok((target, payload)));
    }

    // RESOLVED: a list of addresses, consuming the whole body.
    if let Ok(addrs) = parse_resolved(body) {
        let mut out = vec![0u8; body.len()];
        let n = write_resolved(&mut out, &addrs);
        assert_eq!(n, body.len());
        assert_eq!(&out[..], body, "RESOLVED encoding is not canonical");
    }

    // RESOLVE: the whole body is a valid host name.
    if let Ok(name) = parse_resolve(body) {
        assert_eq!(name.as_bytes(), body);
        assert!(valid_host(name));
    }

    // CONNECTED: empty, or one target.
    if let Ok(target) = parse_connected(body) {
        if body.is_empty() {
            assert_eq!(target, Target::None);
        } else {
            let mut out = [0u8; OUT_LEN];
            let mut w = Writer::new(&mut out);
            if let Err(e) = target.write(&mut w) {
                panic!("parsed CONNECTED target {target:?} does not re-encode: {e}");
            }
            let n = w.len();
            assert_eq!(&out[..n], &body[..n], "CONNECTED encoding is not canonical");
            assert_eq!(parse_connected(&out[..n]), Ok(target));
        }
    }

    // The header parser on the same bytes, for good measure.
    let _ = RelayMsg::parse(body);
}
