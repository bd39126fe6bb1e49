//! Fuzz target: parsing a cell from untrusted bytes.
//!
//! `Cell::from_slice` must accept exactly the 514-byte inputs and reject
//! everything else with `BadLength`; the accessors must never panic and must
//! agree with the raw bytes; a 514-byte input must round-trip through
//! `as_bytes()` and through `into_bytes()` / `Cell::from_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_kernel::{Cell, CellCommand, CellError, BODY_LEN, CELL_LEN, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let cell = match Cell::from_slice(data) {
        Ok(cell) => cell,
        Err(e) => {
            assert_ne!(
                data.len(),
                CELL_LEN,
                "a {CELL_LEN}-byte input was rejected: {e}"
            );
            assert_eq!(e, CellError::BadLength(data.len()));
            return;
        }
    };
    assert_eq!(data.len(), CELL_LEN, "accepted a {}-byte cell", data.len());

    // Header: circuit id.
    let raw_id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    assert_eq!(cell.raw_circ_id(), raw_id);
    match cell.circ_id() {
        Ok(id) => {
            assert_ne!(raw_id, 0);
            assert_eq!(id.get(), raw_id);
            assert_eq!(id.chosen_by_initiator(), raw_id & 0x8000_0000 != 0);
            let _ = id.to_string();
        }
        Err(e) => {
            assert_eq!(raw_id, 0);
            assert_eq!(e, CellError::ZeroCircId);
        }
    }

    // Header: command.
    assert_eq!(cell.raw_command(), data[4]);
    match cell.command() {
        Ok(cmd) => {
            assert_eq!(cmd as u8, data[4]);
            assert_eq!(CellCommand::from_u8(cmd as u8), Ok(cmd));
        }
        Err(e) => {
            assert!(data[4] > CellCommand::Destroy as u8);
            assert_eq!(e, CellError::UnknownCommand(data[4]));
        }
    }

    // Body and whole-cell round trip.
    assert_eq!(cell.body().len(), BODY_LEN);
    assert_eq!(cell.body(), &data[HEADER_LEN..]);
    assert_eq!(cell.as_bytes(), data);

    let buf = cell.into_bytes();
    assert_eq!(&buf[..], data);
    match Cell::from_bytes(buf) {
        Ok(again) => assert_eq!(again.as_bytes(), data),
        Err(e) => panic!("from_bytes rejected what from_slice accepted: {e}"),
    }
});
