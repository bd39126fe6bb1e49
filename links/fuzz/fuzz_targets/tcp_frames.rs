//! tcp link frames (`relay_link_tcp::frame`): a byte stream of frames as
//! the link's reader sees it, built from the input by a sender with the
//! link key, and read back the way the reader does (arriving in pieces,
//! split off a receive buffer with `next_frame`: length, bounds check;
//! open with the frame counter, parse).
//!
//! The input is a list of records: a selector byte, a u16 length (at most
//! `MAX_FRAME`) and that many plaintext bytes (type byte and payload).
//! Selector bit 0: flip one bit of the sealed frame (position from the
//! next input bytes); bit 1: seal under the wrong counter; bit 2: send the
//! bytes raw, with the length as the prefix, unsealed.
//!
//! Checks: no panic, and the reader's result for every frame is the one
//! predicted: cells (the payload cut into 514-byte cells, equal bytes)
//! for type 0 with whole cells, keepalive for 1, close for 2 (the link
//! ends there), `BadType` for others, `Authentication` for a changed,
//! misnumbered or unsealed frame, `BadLength` for a length outside
//! `MIN_FRAME..=MAX_FRAME`. The reader stops at the first error.
#![no_main]

mod common;

use std::collections::VecDeque;

use bytes::BytesMut;
use common::Input;
use libfuzzer_sys::fuzz_target;
use relay_kernel::CELL_LEN;
use relay_link::transport::{OpenKey, SealKey, TAG_LEN};
use relay_link_tcp::frame::{
    check_len, next_frame, open, seal, start_frame, FrameError, Next, Received, FRAME_CELLS, FRAME_CLOSE,
    FRAME_KEEPALIVE, MAX_FRAME,
};

#[derive(Debug, PartialEq)]
enum Outcome {
    Cells(Vec<Vec<u8>>),
    Keepalive,
    Close,
    Err(FrameError),
}

fuzz_target!(|data: &[u8]| {
    let seal_key = SealKey::new(&[7; 32]).expect("key");
    let open_key = OpenKey::new(&[7; 32]).expect("key");
    let mut input = Input(data);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut counter = 0u64;
    while !input.is_empty() {
        let sel = input.byte();
        let len = usize::from(input.u16()).min(MAX_FRAME);
        let plain = input.take(len);
        if sel & 4 != 0 {
            wire.extend_from_slice(&(plain.len() as u16).to_be_bytes());
            wire.extend_from_slice(plain);
            expected.push(Outcome::Err(match check_len(plain.len()) {
                Ok(_) => FrameError::Authentication,
                Err(e) => e,
            }));
            counter += 1;
            continue;
        }
        let Some((&ty, payload)) = plain.split_first() else {
            continue;
        };
        let mut buf = Vec::new();
        start_frame(&mut buf, ty);
        buf.extend_from_slice(payload);
        let n = if sel & 2 != 0 { counter + 1 } else { counter };
        seal(&seal_key, n, &mut buf).expect("seal");
        assert_eq!(buf.len(), 2 + plain.len() + TAG_LEN);
        let mut tampered = sel & 2 != 0;
        if sel & 1 != 0 {
            let at = 2 + usize::from(input.u16()) % (buf.len() - 2);
            buf[at] ^= 1 << (input.byte() % 8);
            tampered = true;
        }
        wire.extend_from_slice(&buf);
        counter += 1;
        let sealed_len = plain.len() + TAG_LEN;
        expected.push(if sealed_len > MAX_FRAME {
            Outcome::Err(FrameError::BadLength(sealed_len))
        } else if tampered {
            Outcome::Err(FrameError::Authentication)
        } else {
            match ty {
                FRAME_CELLS if payload.len() % CELL_LEN == 0 => {
                    Outcome::Cells(payload.chunks(CELL_LEN).map(<[u8]>::to_vec).collect())
                }
                FRAME_KEEPALIVE => Outcome::Keepalive,
                FRAME_CLOSE => Outcome::Close,
                _ => Outcome::Err(FrameError::BadType(ty)),
            }
        });
    }

    // The reader: the wire arrives in pieces of varying sizes; frames are
    // split off the receive buffer (length, bounds), opened and parsed;
    // stops at an error or close.
    let mut got = Vec::new();
    let mut rx = BytesMut::new();
    let (mut at, mut piece, mut n) = (0usize, 0usize, 0u64);
    'read: loop {
        let frame = match next_frame(&mut rx) {
            Ok(Next::Frame(f)) => f,
            Ok(Next::Need(_)) if at == wire.len() => {
                assert!(rx.len() < 2, "a frame was cut short");
                break;
            }
            Ok(Next::Need(_)) => {
                piece = (piece * 7 + 1) % 40_000;
                let end = (at + 1 + piece).min(wire.len());
                rx.extend_from_slice(&wire[at..end]);
                at = end;
                continue;
            }
            Err(e) => {
                got.push(Outcome::Err(e));
                break;
            }
        };
        let mut cells = VecDeque::new();
        let r = open(&open_key, n, frame, &mut cells);
        n += 1;
        let stop = !matches!(r, Ok(Received::Cells | Received::Keepalive));
        got.push(match r {
            Ok(Received::Cells) => {
                Outcome::Cells(cells.iter().map(|c| c.as_bytes().to_vec()).collect())
            }
            Ok(Received::Keepalive) => {
                assert!(cells.is_empty());
                Outcome::Keepalive
            }
            Ok(Received::Close) => Outcome::Close,
            Err(e) => Outcome::Err(e),
        });
        if stop {
            break 'read;
        }
    }
    assert!(got.len() <= expected.len());
    assert_eq!(got[..], expected[..got.len()]);
    if let Some(last) = got.last() {
        if got.len() < expected.len() {
            assert!(
                matches!(last, Outcome::Close | Outcome::Err(_)),
                "the reader stopped early after {last:?}"
            );
        }
    } else {
        assert!(expected.is_empty());
    }
});
