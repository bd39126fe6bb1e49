//! Fuzz target: decoding a node descriptor from a LinkInfo cell body or a
//! tracker.
//!
//! Checks: no panic; whatever decodes is canonical (encoding it gives back
//! the input up to the zero padding) and its signature verifies under its
//! own identity key (decode checked it; re-decoding the re-encoding must
//! agree).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::descriptor::Descriptor;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Descriptor::decode(data) else {
        return;
    };
    let bytes = d.encode().unwrap();
    assert_eq!(&data[..bytes.len()], &bytes[..]);
    assert!(data[bytes.len()..].iter().all(|&b| b == 0));
    assert_eq!(Descriptor::decode(&bytes).unwrap(), d);
});
