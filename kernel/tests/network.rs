//! End-to-end behaviour of the kernel over an in-memory network: circuits of
//! 1 to 8 hops, many streams, many circuits, and byte-exact transfers both
//! ways.

mod common;

use common::*;
use proptest::prelude::*;
use relay_kernel::*;

#[test]
fn echo_over_every_path_length() {
    for hops in [1usize, 2, 3, 8] {
        let mut net = Net::new(hops + 1, hops as u64);
        let path: Vec<usize> = (1..=hops).collect();
        let c = net.build_ready(0, &path);
        assert_eq!(net.nodes[0].circuit_hops(c), Some(hops));
        net.start_echo(0, c, data(200_000, 1));
        assert!(
            net.run_until(20_000, |n| n.all_senders_done()),
            "hops={hops}"
        );
        assert!(net.senders[0].ok(), "hops={hops}");
        assert_eq!(net.senders[0].closed, Some(EndReason::Done));
        assert_eq!(net.altered_at_exit, 0);
    }
}
