//! Node-level relay forwarding: a middle relay's `handle_cell` (table
//! lookup, one AEAD open, padding, queueing) plus `poll_transmit`, per cell,
//! beside a raw AES-128-GCM open of one 509-byte body with the same backend
//! in the same run. Cells are produced by a real client through a real
//! circuit (client -> relay -> exit); only the relay's work is timed.

//!
//! `RELAY_BENCH_CLOCK=cpu` times the paired mode with this thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time, leaving out time spent
//! descheduled by other work on the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// One libc call: reading the thread's CPU-time clock.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use relay_kernel::crypto::aead::{CellAead, DefaultAead};
use relay_kernel::crypto::onion::KEY_MATERIAL_LEN;
use relay_kernel::crypto::{ClientOnion, HopKeys, RelayHop};
use relay_kernel::flow::CcParams;
use relay_kernel::stream::StreamLimits;
use relay_kernel::*;

// Small enough that a batch stays in cache, as cells fresh from a socket do.
const BATCH: usize = 1_000;

struct Rig {
    client: Node,
    relay: Node,
    exit: Node,
    stream: StreamRef,
    now: Time,
}

fn node(seed: u8, config: NodeConfig) -> Node {
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(seed));
    let onion = OnionKeypair::generate(&mut rng);
    Node::new(
        NodeId::from_identity_key(&[seed; 32]),
        onion,
        config,
        Box::new(rng),
    )
}

/// Moves cells among the three nodes until nothing moves.
fn settle(r: &mut Rig) {
    loop {
        let mut moved = false;
        let now = r.now;
        while let Some(c) = r.client.poll_transmit(LinkId(1)) {
            r.relay.handle_cell(now, LinkId(2), c);
            moved = true;
        }
        while let Some(c) = r.relay.poll_transmit(LinkId(3)) {
            r.exit.handle_cell(now, LinkId(4), c);
            moved = true;
        }
        while let Some(c) = r.exit.poll_transmit(LinkId(4)) {
            r.relay.handle_cell(now, LinkId(3), c);
            moved = true;
        }
        while let Some(c) = r.relay.poll_transmit(LinkId(2)) {
            r.client.handle_cell(now, LinkId(1), c);
            moved = true;
        }
        while let Some(ev) = r.exit.poll_event() {
            if let Event::StreamRequest { stream, .. } = ev {
                r.exit.accept_stream(now, stream, None).unwrap();
            }
        }
        if !moved {
            return;
        }
    }
}

fn rig() -> Rig {
    // The client may send without waiting for SENDMEs: the bench feeds the
    // relay a long run of cells and discards what it emits.
    let greedy = NodeConfig {
        cc: CcParams {
            cwnd_init: 10_000_000,
            cwnd_min: 10_000_000,
            cwnd_max: 10_000_000,
            ..CcParams::default()
        },
        streams: StreamLimits {
            send_buffer: 64 << 20,
            ..StreamLimits::default()
        },
        ..NodeConfig::default()
    };
    let relay_config = NodeConfig {
        max_queued_per_circuit: u32::MAX,
        ..NodeConfig::default()
    };
    let mut r = Rig {
        client: node(1, greedy),
        relay: node(2, relay_config),
        exit: node(3, NodeConfig::default()),
        stream: StreamRef {
            circuit: CircuitRef::from_u64(0),
            id: 0,
        },
        now: Time(1),
    };
    let (c, m, e) = (r.client.id(), r.relay.id(), r.exit.id());
    r.client.link_up(r.now, LinkId(1), m, true);
    r.relay.link_up(r.now, LinkId(2), c, false);
    r.relay.link_up(r.now, LinkId(3), e, true);
    r.exit.link_up(r.now, LinkId(4), m, false);
    let path = vec![
        HopSpec {
            id: m,
            onion_key: r.relay.onion_key(),
            addr: "mem://relay".into(),
        },
        HopSpec {
            id: e,
            onion_key: r.exit.onion_key(),
            addr: "mem://exit".into(),
        },
    ];
    let circ = r.client.build_circuit(r.now, LinkId(1), path).unwrap();
    settle(&mut r);
    assert_eq!(r.client.poll_event(), Some(Event::CircuitReady(circ)));
    r.stream = r
        .client
        .open_stream(
            r.now,
            circ,
            StreamKind::Tcp,
            &TargetAddr::Host("sink".into(), 9),
        )
        .unwrap();
    settle(&mut r);
    r
}

/// The next BATCH cells the client sends on the circuit, in order.
fn client_cells(r: &mut Rig, count: usize) -> Vec<Cell> {
    let bytes = vec![7u8; count * 472];
    let n = r.client.stream_write(r.now, r.stream, &bytes).unwrap();
    assert_eq!(n, bytes.len());
    let cells: Vec<Cell> = std::iter::from_fn(|| r.client.poll_transmit(LinkId(1))).collect();
    assert!(cells.len() >= count);
    cells
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    // Baseline: the same backend's raw open of one cell body.
    let aead = DefaultAead::new(&[9u8; 16]).unwrap();
    let mut sealed = [0u8; BODY_LEN - 16];
    let tag = aead.seal(0, &mut sealed).unwrap();
    g.bench_function("raw_aes128gcm_open_493", |b| {
        let mut buf = sealed;
        b.iter(|| {
            buf.copy_from_slice(&sealed);
            black_box(aead.open(0, black_box(&mut buf), &tag)).unwrap();
        })
    });
    g.bench_function("copy_493", |b| {
        let mut buf = sealed;
        b.iter(|| buf.copy_from_slice(black_box(&sealed)))
    });
    g.bench_function("relay_node_forward", |b| {
        b.iter_custom(|iters| {
            let mut rig = rig();
            let mut out = Vec::with_capacity(BATCH + 16);
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let mut cells = client_cells(&mut rig, BATCH);
                cells.truncate(left.min(cells.len()));
                let n = cells.len();
                let now = rig.now;
                let start = Instant::now();
                for cell in cells {
                    rig.relay.handle_cell(now, LinkId(2), cell);
                    if let Some(o) = rig.relay.poll_transmit(LinkId(3)) {
                        out.push(o);
                    }
                }
                total += start.elapsed();
                assert_eq!(out.len(), n, "every cell forwarded");
                out.clear();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

/// Now, on the wall clock or (`RELAY_BENCH_CLOCK=cpu`) this thread's CPU clock.
struct Clock {
    cpu: bool,
    origin: Instant,
    /// The cost of reading the clock (a system call for the CPU clock on
    /// this VM, ~0.5 us), subtracted from each timed run.
    overhead: Duration,
}

impl Clock {
    fn from_env() -> Clock {
        let mut clock = Clock {
            cpu: std::env::var("RELAY_BENCH_CLOCK").is_ok_and(|v| v == "cpu"),
            origin: Instant::now(),
            overhead: Duration::ZERO,
        };
        clock.overhead = (0..1000)
            .map(|_| {
                let start = clock.now();
                clock.now().saturating_sub(start)
            })
            .min()
            .unwrap_or_default();
        clock
    }

    /// Time since `start`, less the cost of reading the clock.
    fn since(&self, start: Duration) -> Duration {
        self.now()
            .saturating_sub(start)
            .saturating_sub(self.overhead)
    }

    fn now(&self) -> Duration {
        if !self.cpu {
            return self.origin.elapsed();
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we pass it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

/// `RELAY_BENCH_PAIRED=<rounds>`: alternate short runs of the raw open and
/// the node forward and report the median of the per-round ratios, so both
/// sides of each ratio see the same machine state (this shared machine
/// drifts by 1.6x over seconds; see docs/benchmarks.md).
fn paired(rounds: usize) {
    const RUN: usize = 64;
    let clock = Clock::from_env();
    let aead = DefaultAead::new(&[9u8; 16]).unwrap();
    let mut sealed = [0u8; BODY_LEN - 16];
    let tag = aead.seal(0, &mut sealed).unwrap();
    let mut rig = rig();
    let mut cells: Vec<Cell> = Vec::new();
    let mut out = Vec::with_capacity(RUN);
    let mut ratios = Vec::with_capacity(rounds);
    let mut layer_ratios = Vec::with_capacity(rounds);
    let (mut raw_total, mut fwd_total, mut layer_total) = (0f64, 0f64, 0f64);
    // The relay's crypto alone (`RelayHop::open_forward`, what the node
    // calls per cell), on cells of a 2-hop onion with fixed keys: node
    // forward minus this is the node's own work.
    let hop_keys = |seed: u8| HopKeys::from_material(&[seed; KEY_MATERIAL_LEN]);
    let mut onion = ClientOnion::new();
    onion.push_hop(&hop_keys(1)).unwrap();
    onion.push_hop(&hop_keys(2)).unwrap();
    let mut hop = RelayHop::new(&hop_keys(1)).unwrap();
    let mut bodies = vec![[7u8; BODY_LEN]; RUN];
    for _ in 0..rounds {
        for body in bodies.iter_mut() {
            *body = [7u8; BODY_LEN];
            onion.wrap_outbound(body).unwrap();
        }
        if cells.len() < RUN {
            // Keep the leftovers first: cells must reach the relay in order.
            let mut more = client_cells(&mut rig, BATCH);
            more.reverse();
            more.append(&mut cells);
            cells = more;
        }
        let batch: Vec<Cell> = (0..RUN).filter_map(|_| cells.pop()).collect();
        let now = rig.now;
        let mut buf = sealed;
        let t = clock.now();
        for _ in 0..RUN {
            buf.copy_from_slice(&sealed);
            black_box(aead.open(0, black_box(&mut buf), &tag)).unwrap();
        }
        let raw = clock.since(t).as_nanos() as f64 / RUN as f64;
        let t = clock.now();
        for cell in batch {
            rig.relay.handle_cell(now, LinkId(2), cell);
            if let Some(o) = rig.relay.poll_transmit(LinkId(3)) {
                out.push(o);
            }
        }
        let fwd = clock.since(t).as_nanos() as f64 / RUN as f64;
        assert_eq!(out.len(), RUN);
        out.clear();
        let t = clock.now();
        let mut ok = true;
        for body in bodies.iter_mut() {
            ok &= hop.open_forward(black_box(body)).is_ok();
        }
        let layer = clock.since(t).as_nanos() as f64 / RUN as f64;
        assert!(ok);
        ratios.push(fwd / raw);
        layer_ratios.push(layer / raw);
        raw_total += raw;
        fwd_total += fwd;
        layer_total += layer;
    }
    let q = |v: &mut Vec<f64>, f: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * f) as usize]
    };
    println!(
        "{} clock; {rounds} paired rounds of {RUN}: raw open (incl. 493-byte copy) {:.0} ns, node forward {:.0} ns, layer only {:.0} ns (means); node / raw median {:.2} (IQR {:.2}-{:.2}); layer / raw median {:.2} (IQR {:.2}-{:.2})",
        if clock.cpu { "CPU" } else { "wall" },
        raw_total / rounds as f64,
        fwd_total / rounds as f64,
        layer_total / rounds as f64,
        q(&mut ratios, 0.5),
        q(&mut ratios, 0.25),
        q(&mut ratios, 0.75),
        q(&mut layer_ratios, 0.5),
        q(&mut layer_ratios, 0.25),
        q(&mut layer_ratios, 0.75),
    );
}

criterion_group!(benches, bench);

fn main() {
    match std::env::var("RELAY_BENCH_PAIRED")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        Some(rounds) => paired(rounds),
        None => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
