//! The Noise XX link handshake (`relay_link::handshake`) and its identity
//! certificates, both roles. Fixed identities: responder `[2; 32]`,
//! initiator `[1; 32]`, a third `[3; 32]`. Byte 0 picks the case, the rest
//! is the fuzzed message (or an XOR mask over a genuine one, with any bytes
//! past the genuine message's end appended):
//!
//! - 0: `Responder::respond` with arbitrary message 1; when it answers,
//!   `finish` with the same bytes as message 3 must fail (they cannot
//!   carry a valid certificate under the fresh keys).
//! - 1: genuine message 1 and 2, then a masked message 3: `finish`
//!   succeeds exactly when the mask is zero and nothing is appended, and
//!   then names the initiator and its keys open what the initiator seals.
//! - 2: `Initiator::finish` with arbitrary message 2: must fail.
//! - 3: a masked genuine message 2: succeeds exactly when untouched, and
//!   only when the initiator dialled the responder's id (bit 2 of byte 0
//!   makes it expect the third node: `WrongPeer`).
//! - 4: `verify_cert` on a masked genuine certificate of a static key:
//!   accepted exactly when untouched, and then names the certifying node.
//!
//! Messages over 65535 bytes are skipped (snow refuses them; libFuzzer's
//! default -max_len is 4096 anyway).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay_link::identity::verify_cert;
use relay_link::{Identity, Initiator, LinkError, Responder, Session, StaticKey};

struct Keys {
    init: StaticKey,
    resp: StaticKey,
    third: Identity,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        init: StaticKey::new(&Identity::from_secret([1; 32])).expect("key"),
        resp: StaticKey::new(&Identity::from_secret([2; 32])).expect("key"),
        third: Identity::from_secret([3; 32]),
    })
}

/// `genuine` XOR `mask`, with the mask's excess appended; and whether the
/// result differs from `genuine`.
fn masked(genuine: &[u8], mask: &[u8]) -> (Vec<u8>, bool) {
    let mut out = genuine.to_vec();
    for (o, m) in out.iter_mut().zip(mask) {
        *o ^= m;
    }
    if mask.len() > genuine.len() {
        out.extend_from_slice(&mask[genuine.len()..]);
    }
    let touched = mask.len() > genuine.len() || mask.iter().any(|&m| m != 0);
    (out, touched)
}

fn check_pair(a: &Session, b: &Session) {
    let mut msg = b"cells".to_vec();
    a.seal.seal(3, &mut msg).expect("seal");
    let plain = b.open.open(3, &mut msg).expect("the peers' keys match");
    assert_eq!(plain, b"cells");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if rest.len() > 65535 {
        return;
    }
    let k = keys();
    match sel % 5 {
        0 => {
            if let Ok((r, msg2)) = Responder::respond(&k.resp, rest) {
                assert!(!msg2.is_empty());
                assert!(r.finish(rest).is_err(), "a forged message 3 was accepted");
            }
        }
        1 => {
            let (i, m1) = Initiator::start(&k.init, k.resp.node_id()).expect("msg1");
            let (r, m2) = Responder::respond(&k.resp, &m1).expect("genuine msg1");
            let (m3, si) = i.finish(&m2).expect("genuine msg2");
            let (m3x, touched) = masked(&m3, rest);
            match r.finish(&m3x) {
                Ok(sr) => {
                    assert!(!touched, "a changed message 3 was accepted");
                    assert_eq!(sr.peer, k.init.node_id());
                    check_pair(&si, &sr);
                    check_pair(&sr, &si);
                }
                Err(e) => assert!(touched, "genuine message 3 refused: {e}"),
            }
        }
        2 => {
            let (i, _) = Initiator::start(&k.init, k.resp.node_id()).expect("msg1");
            assert!(i.finish(rest).is_err(), "a forged message 2 was accepted");
        }
        3 => {
            let expected = if sel & 4 != 0 {
                k.third.node_id()
            } else {
                k.resp.node_id()
            };
            let (i, m1) = Initiator::start(&k.init, expected).expect("msg1");
            let (r, m2) = Responder::respond(&k.resp, &m1).expect("genuine msg1");
            let (m2x, touched) = masked(&m2, rest);
            match i.finish(&m2x) {
                Ok((m3, si)) => {
                    assert!(!touched, "a changed message 2 was accepted");
                    assert_eq!(expected, k.resp.node_id(), "accepted the wrong peer");
                    assert_eq!(si.peer, k.resp.node_id());
                    let sr = r.finish(&m3).expect("genuine message 3");
                    check_pair(&si, &sr);
                }
                Err(LinkError::WrongPeer { expected: e, got }) => {
                    assert!(!touched, "WrongPeer for a changed message 2");
                    assert_eq!((e, got), (expected, k.resp.node_id()));
                    assert_ne!(expected, k.resp.node_id());
                }
                Err(e) => assert!(touched, "genuine message 2 refused: {e}"),
            }
        }
        _ => {
            let static_key = [9u8; 32];
            let cert = k.third.certify(&static_key);
            let (certx, touched) = masked(&cert, rest);
            match verify_cert(&certx, &static_key) {
                Ok(id) => {
                    assert!(!touched, "a changed certificate was accepted");
                    assert_eq!(id, k.third.node_id());
                }
                Err(e) => assert!(touched, "genuine certificate refused: {e}"),
            }
        }
    }
});
