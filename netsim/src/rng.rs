//! Seed derivation: one scenario seed becomes an independent ChaCha stream
//! per node, per link direction and per traffic generator.
//!
//! Every random choice in a run comes from one of these streams, so a run is
//! a pure function of (scenario, seed), and adding a node or a link does not
//! shift the random numbers any other component sees. Streams are told apart
//! by ChaCha's 64-bit stream number, with the purpose in the top bits.

use rand::SeedableRng;
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};

/// What a stream is for (the top byte of its stream number).
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// A node's kernel RNG (circuit handshakes, circuit ids): cryptographic.
    Node = 1,
    /// A node's long-term keys.
    Keys = 2,
    /// A link direction's impairments (loss, jitter, duplication).
    Link = 3,
    /// Traffic generators and path selection.
    Traffic = 4,
    /// Scenario-level choices (which relays crash).
    Scenario = 5,
}

fn stream_number(purpose: Purpose, index: u64, incarnation: u32) -> u64 {
    ((purpose as u64) << 56) | (u64::from(incarnation) << 40) | (index & ((1 << 40) - 1))
}

/// A cryptographic stream (ChaCha20) for node state and keys.
pub fn crypto_stream(seed: u64, purpose: Purpose, index: u64, incarnation: u32) -> ChaCha20Rng {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    r.set_stream(stream_number(purpose, index, incarnation));
    r
}

/// A fast stream (ChaCha8) for models: loss, jitter, traffic choices.
pub fn model_stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream_number(purpose, index, 0));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = crypto_stream(7, Purpose::Node, 3, 0).next_u64();
        assert_eq!(a, crypto_stream(7, Purpose::Node, 3, 0).next_u64());
        assert_ne!(a, crypto_stream(7, Purpose::Node, 4, 0).next_u64());
        assert_ne!(a, crypto_stream(7, Purpose::Node, 3, 1).next_u64());
        assert_ne!(a, crypto_stream(8, Purpose::Node, 3, 0).next_u64());
        assert_ne!(
            model_stream(7, Purpose::Link, 3).next_u64(),
            model_stream(7, Purpose::Traffic, 3).next_u64()
        );
    }
}
