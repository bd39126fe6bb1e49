//! Benchmarks crate.
