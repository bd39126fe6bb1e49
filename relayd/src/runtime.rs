//! The tokio runtime relayd runs on, and how many threads it gets.
//!
//! One thread is the default: a current-thread runtime, every task on the
//! thread that started it. Every cell crosses tasks on its way through a
//! node (a link's reader, the node driver, the next link's writer), and on a
//! multi-thread runtime each hand-off tends to wake a task on the other
//! worker: a futex call and a context switch per batch of cells. On one
//! thread a wake-up is a push onto the run queue. The node's state is one
//! lock, so extra workers only run link crypto and socket calls beside it.
//!
//! Measured with chainbench (four relayd processes and a plain chain on a
//! 2-core host; docs/benchmarks.md, "One thread per relayd"): one thread
//! gave 1.10-1.24x the throughput of two workers at 0.87-0.91x the CPU per
//! GB with tcp links, and 1.08-1.10x with udt and quic links. A multi-thread
//! runtime with one worker gained almost nothing (1.03x): the daemon's main
//! future runs on the thread that blocks on it, so cells still changed
//! threads. `--threads N` (or `threads = N` in the config) gives N
//! workers, for a host with cores to spare beside one busy relay; that case
//! is not measured here.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// Most worker threads accepted: far above any gain, low enough that a typo
/// cannot start thousands of threads.
pub const MAX_THREADS: usize = 64;

/// Parses a thread count as `--threads` gives it.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) => check_threads(n),
        Err(_) => Err(format!(
            "{s:?}: expected a thread count from 1 to {MAX_THREADS}"
        )),
    }
}

/// Checks a thread count (the config's `threads` is a TOML integer).
pub fn check_threads(n: usize) -> Result<usize, String> {
    if (1..=MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n}: expected a thread count from 1 to {MAX_THREADS}"
        ))
    }
}

/// A runtime with `threads` threads: 1 is a current-thread runtime, more a
/// multi-thread one with that many workers.
pub fn build(threads: usize) -> io::Result<Runtime> {
    if threads <= 1 {
        Builder::new_current_thread().enable_all().build()
    } else {
        Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_in_range_parse_and_others_are_refused() {
        assert_eq!(parse_threads("1"), Ok(1));
        assert_eq!(parse_threads(" 4 "), Ok(4));
        assert_eq!(parse_threads("64"), Ok(MAX_THREADS));
        for bad in ["0", "65", "-1", "two", "", "1.5", "99999999999999999999999"] {
            let e = parse_threads(bad).unwrap_err();
            assert!(e.contains("1 to 64"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn one_thread_runs_spawned_tasks_on_the_calling_thread() {
        let rt = build(1).unwrap();
        let here = std::thread::current().id();
        let there =
            rt.block_on(async { tokio::spawn(async { std::thread::current().id() }).await });
        assert_eq!(there.unwrap(), here);
        let rt = build(2).unwrap();
        assert_eq!(rt.metrics().num_workers(), 2);
    }
}
