//! The relay forwarding path allocates nothing per cell: a counting global
//! allocator, armed only while the middle relay handles and emits cells,
//! sees zero allocations over more than 1,000,000 forwarded cells in steady
//! state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use relay_kernel::*;

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static TRACE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
static LAST_SIZE: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers to the system allocator; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            LAST_SIZE.store(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            LAST_SIZE.store(new_size as u64 + 1_000_000_000, Ordering::Relaxed);
            ARMED.store(false, Ordering::Relaxed);
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            if let Ok(mut g) = TRACE.lock() {
                *g = Some(bt);
            }
            ARMED.store(true, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn arm(on: bool) {
    ARMED.store(on, Ordering::Relaxed);
}

#[test]
fn relay_forwarding_allocates_nothing_per_cell() {
    // client 0 -> middle 1 -> exit 2; the client streams zeros, the exit
    // reads and discards them (its SENDMEs flow back through the relay).
    let mut net = Net::new(3, 31);
    net.exits_read = false;
    let c = net.build_ready(0, &[1, 2]);
    let now = net.now;
    let s = net.nodes[0]
        .open_stream(now, c, StreamKind::Tcp, &TargetAddr::Host("sink".into(), 9))
        .unwrap();
    assert!(net.run_until(1000, |n| n.events[2]
        .iter()
        .any(|e| matches!(e, Event::StreamRequest { .. }))));
    let exit_stream = net.events[2]
        .iter()
        .find_map(|e| match e {
            Event::StreamRequest { stream, .. } => Some(*stream),
            _ => None,
        })
        .unwrap();
    let zeros = vec![0u8; 256 * 1024];
    let mut sink = vec![0u8; 256 * 1024];
    let mut pump = |net: &mut Net| {
        let now = net.now;
        net.nodes[0].stream_write(now, s, &zeros).unwrap();
        while net.nodes[2]
            .stream_read(now, exit_stream, &mut sink)
            .unwrap()
            > 0
        {}
        net.step();
    };
    // Warm up: congestion control settles, and queues and pools reach
    // their steady size (a queue's capacity grows only at a new high-water
    // mark, which is bounded by the congestion window).
    let warm = 1_000_000;
    while net.nodes[1].stats().cells_relayed < warm {
        pump(&mut net);
    }
    net.arm = Some((1, arm));
    let start = net.nodes[1].stats().cells_relayed;
    ALLOCS.store(0, Ordering::Relaxed);
    while net.nodes[1].stats().cells_relayed < start + 1_000_000 {
        pump(&mut net);
    }
    net.arm = None;
    let forwarded = net.nodes[1].stats().cells_relayed - start;
    let allocs = ALLOCS.load(Ordering::Relaxed);
    eprintln!(
        "{forwarded} cells forwarded, {allocs} allocations (last size {})",
        LAST_SIZE.load(Ordering::Relaxed)
    );
    assert!(forwarded >= 1_000_000);
    if let Ok(g) = TRACE.lock() {
        if let Some(t) = g.as_ref() {
            eprintln!("{}", &t[..t.len().min(6000)]);
        }
    }
    assert_eq!(allocs, 0);
}
