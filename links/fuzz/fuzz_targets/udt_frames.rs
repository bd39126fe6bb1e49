//! udt DATA payloads (decrypted frames) and datagram headers: arbitrary
//! bytes through `packet::Frames` and `data_packet_number`.
//!
//! Checks: no panic; the frames that parse re-encode (`Frame::write`) to
//! exactly the bytes they were parsed from, in order (the encoding is
//! canonical), nothing parses after the first error, and a fully parsed
//! input re-encodes to itself; ACK ranges are well formed (each `lo <= hi`,
//! highest first, not overlapping, at most 32); a DATA header's packet
//! number is its bytes 9..17.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_link_udt::packet::{data_packet_number, Frame, Frames, DATA, DATA_HEADER, MAX_ACK_RANGES};

fuzz_target!(|data: &[u8]| {
    let pn = data_packet_number(data);
    if data.first() == Some(&DATA) && data.len() >= DATA_HEADER {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[9..17]);
        assert_eq!(pn, Some(u64::from_be_bytes(b)));
    } else {
        assert_eq!(pn, None);
    }

    let mut again = Vec::new();
    let mut failed = false;
    for f in Frames::new(data) {
        match f {
            Ok(f) => {
                assert!(!failed, "a frame after an error");
                if let Frame::Ack(a) = &f {
                    assert!(a.range_count() <= MAX_ACK_RANGES);
                    let mut floor: Option<u64> = None;
                    for (lo, hi) in a.ranges() {
                        assert!(lo <= hi);
                        if let Some(f) = floor {
                            assert!(hi < f, "ranges overlap or are unordered");
                        }
                        floor = Some(lo);
                    }
                }
                let start = again.len();
                f.write(&mut again);
                assert_eq!(
                    Some(&again[start..]),
                    data.get(start..again.len()),
                    "{f:?} re-encodes differently"
                );
            }
            Err(()) => failed = true,
        }
    }
    if !failed {
        assert_eq!(again, data);
    }
});
