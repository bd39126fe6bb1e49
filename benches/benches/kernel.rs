//! Criterion micro-benchmarks for the kernel's per-cell crypto and the
//! circuit handshake. Figures and how to run them: docs/benchmarks.md.
//!
//! Every cell operation works on one 509-byte cell body (`BODY_LEN`), and is
//! timed in runs of `POOL` operations. Operations that consume their input
//! (an open must see a cell sealed under the receiver's current counter) run
//! over a pool of pre-built cells: before each run the pristine cells are
//! copied back and a fresh receiver (counters at zero) is built, outside the
//! timed region. Every open is checked to succeed. So no per-operation copy
//! is inside those figures; `baseline/copy_509` measures one such copy, and
//! `baseline/ring_open_with_copy` cross-checks the method against the plain
//! "copy a sealed cell, open it" loop.
//!
//! Environment:
//! - `RELAY_BENCH_CLOCK=cpu`: time with this thread's CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time, leaving out the time the
//!   thread spends descheduled on a busy machine.
//! - `RELAY_BENCH_PAIRED=<rounds>`: instead of criterion, run every benchmark
//!   in turn for that many rounds and print each one's median and its median
//!   per-round ratio to the raw AES-GCM open and seal of the kernel's backend.
//!   Consecutive benchmarks then see the same machine state, which makes the
//!   ratios robust on a noisy machine where criterion's (measured seconds
//!   apart) are not.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// One libc call: reading the thread's CPU-time clock.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aes::cipher::{generic_array::GenericArray, BlockEncrypt};
use aes_gcm::KeyInit;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::Criterion;
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use relay_kernel::crypto::aead::{nonce_for, CellAead, DefaultAead, RingGcm, RustCryptoGcm};
use relay_kernel::crypto::onion::{outbound_room, KEY_MATERIAL_LEN};
#[cfg(feature = "aws-lc")]
use relay_kernel::crypto::x25519::AwsLcX25519;
use relay_kernel::crypto::x25519::{DalekEdwardsX25519, DalekX25519, DefaultX25519, X25519Key};
use relay_kernel::crypto::{CellStream, ClientOnion, HopKeys, Keystream, RelayHop};
use relay_kernel::handshake::{self, ClientHandshake};
use relay_kernel::{NodeId, OnionKeypair, BODY_LEN};
use x25519_dalek::{PublicKey, StaticSecret};

/// Cell operations per timed run; also the size of each pool of cells (32 KiB).
const POOL: usize = 64;
/// Bytes an onion layer actually seals: the body less the tag in front.
const SEALED_LEN: usize = BODY_LEN - 16;
/// Rounds discarded before a paired measurement.
const PAIRED_WARMUP: usize = 100;
const KEY: [u8; 16] = [0x42; 16];

type Body = [u8; BODY_LEN];

/// The benchmarks' clock: wall time, or this thread's CPU time.
#[derive(Clone, Copy)]
struct Clock {
    cpu: bool,
    origin: Instant,
    /// The cost of reading the clock, subtracted from each timed run.
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

    /// Time since `start`, less the cost of reading the clock.
    fn since(&self, start: Duration) -> Duration {
        self.now()
            .saturating_sub(start)
            .saturating_sub(self.overhead)
    }
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.since(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, d: &Duration) -> f64 {
        d.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

/// One benchmark: `run` performs `per_run` operations and returns the clock
/// time they took, setup excluded.
struct Op<'a> {
    id: &'static str,
    per_run: u64,
    run: Box<dyn FnMut() -> Duration + 'a>,
}

impl<'a> Op<'a> {
    /// `op` repeated `n` times.
    fn repeated(id: &'static str, clock: Clock, n: u64, mut op: impl FnMut() + 'a) -> Op<'a> {
        Op {
            id,
            per_run: n,
            run: Box::new(move || {
                let start = clock.now();
                for _ in 0..n {
                    op();
                }
                clock.since(start)
            }),
        }
    }

    /// `op` once on each cell of a fresh copy of `pool`, with a fresh `state`
    /// (built by `fresh`, untimed). `op` gets the cell's index and returns
    /// whether it succeeded; a failure panics after the run.
    fn consuming<S: 'a, T: Clone + 'a>(
        id: &'static str,
        clock: Clock,
        pool: &'a [T],
        mut fresh: impl FnMut() -> S + 'a,
        mut op: impl FnMut(&mut S, u64, &mut T) -> bool + 'a,
    ) -> Op<'a> {
        let mut work = pool.to_vec();
        Op {
            id,
            per_run: pool.len() as u64,
            run: Box::new(move || {
                work.clone_from_slice(pool);
                let mut state = fresh();
                let mut ok = true;
                let start = clock.now();
                for (i, cell) in work.iter_mut().enumerate() {
                    ok &= op(&mut state, i as u64, black_box(cell));
                    black_box(&*cell);
                }
                let took = clock.since(start);
                assert!(ok, "{id}: an operation failed; not measuring failures");
                took
            }),
        }
    }
}

fn material(seed: u8) -> [u8; KEY_MATERIAL_LEN] {
    let mut m = [0u8; KEY_MATERIAL_LEN];
    for (i, b) in m.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    m
}

fn keys(seed: u8) -> HopKeys {
    HopKeys::from_material(&material(seed))
}

/// One whole-cell keystream per call, on fresh counters, over a 509-byte body.
fn whole_cell_keystream<'a>(
    id: &'static str,
    clock: Clock,
    n: u64,
    xor: impl Fn(u64, &mut [u8]) + 'a,
) -> Op<'a> {
    let mut data = body_pattern();
    let mut ctr = 0u64;
    Op::repeated(id, clock, n, move || {
        ctr += 1;
        xor(ctr, black_box(&mut data));
    })
}

fn body_pattern() -> Body {
    let mut b = [0u8; BODY_LEN];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(7);
    }
    b
}

fn three_hop_client() -> ClientOnion {
    let mut client = ClientOnion::new();
    for s in 1..=3 {
        client.push_hop(&keys(s)).unwrap();
    }
    client
}

/// A cell sealed under the counter equal to its index in the pool.
#[derive(Clone)]
struct Sealed<const N: usize> {
    data: [u8; N],
    tag: [u8; 16],
}

/// `POOL` cells of `N` bytes sealed under `KEY` and counters 0..POOL.
fn sealed_pool<const N: usize>() -> Vec<Sealed<N>> {
    let aead = RingGcm::new(&KEY).unwrap();
    let check = RustCryptoGcm::new(&KEY).unwrap();
    (0..POOL as u64)
        .map(|ctr| {
            let mut data = [0u8; N];
            data.copy_from_slice(&body_pattern()[..N]);
            let tag = aead.seal(ctr, &mut data).unwrap();
            // Both backends must accept it, or the open benches measure failures.
            let mut copy = data;
            check.open(ctr, &mut copy, &tag).unwrap();
            Sealed { data, tag }
        })
        .collect()
}

/// Cells as hops 1 and 2 of a 2-hop path receive them, for counters 0..POOL.
fn outbound_pools() -> (Vec<Body>, Vec<Body>) {
    let mut client = ClientOnion::new();
    client.push_hop(&keys(1)).unwrap();
    client.push_hop(&keys(2)).unwrap();
    let mut hop1 = RelayHop::new(&keys(1)).unwrap();
    let mut hop2 = RelayHop::new(&keys(2)).unwrap();
    let room = outbound_room(2);
    let mut at_hop1 = Vec::with_capacity(POOL);
    let mut at_hop2 = Vec::with_capacity(POOL);
    for _ in 0..POOL {
        let mut body = body_pattern();
        let msg = body;
        let tag = client.wrap_outbound(&mut body).unwrap();
        at_hop1.push(body);
        hop1.open_outbound(&mut body).unwrap();
        hop1.prepare_forward(&mut body);
        at_hop2.push(body);
        assert_eq!(hop2.open_outbound(&mut body).unwrap(), tag);
        assert_eq!(body[16..16 + room], msg[16..16 + room]);
    }
    (at_hop1, at_hop2)
}

/// Cells as the client receives them from hop 3 of a 3-hop path.
fn inbound_pool() -> Vec<Body> {
    let mut relays: Vec<RelayHop> = (1..=3).map(|s| RelayHop::new(&keys(s)).unwrap()).collect();
    let mut client = three_hop_client();
    (0..POOL)
        .map(|_| {
            let mut body = body_pattern();
            let msg = body;
            let tag = relays[2].seal_inbound(&mut body).unwrap();
            relays[1].layer_inbound(&mut body);
            relays[0].layer_inbound(&mut body);
            let cell = body;
            assert_eq!(client.unwrap_inbound(&mut body).unwrap(), tag);
            assert_eq!(body[16..], msg[16..]);
            cell
        })
        .collect()
}

/// Everything the benchmarks read, built (and checked) before any timing.
struct Inputs {
    sealed_509: Vec<Sealed<BODY_LEN>>,
    sealed_493: Vec<Sealed<SEALED_LEN>>,
    at_hop1: Vec<Body>,
    at_hop2: Vec<Body>,
    inbound: Vec<Body>,
    id: NodeId,
    onion_key: OnionKeypair,
    /// Reset before every client handshake, so its ephemeral key, and
    /// therefore the precomputed `reply`, are the same each time.
    client_rng: ChaCha20Rng,
    request: [u8; handshake::CLIENT_MSG_LEN],
    reply: [u8; handshake::SERVER_MSG_LEN],
}

impl Inputs {
    fn new() -> Inputs {
        let (at_hop1, at_hop2) = outbound_pools();
        let id = NodeId::from_identity_key(&[1u8; 32]);
        let onion_key = OnionKeypair::from_secret([2u8; 32]);
        let client_rng = ChaCha20Rng::seed_from_u64(7);
        let (hs, request) = ClientHandshake::start(&mut client_rng.clone(), id, onion_key.public);
        let mut server_rng = ChaCha20Rng::seed_from_u64(8);
        let (reply, server_keys) =
            handshake::server_respond(&mut server_rng, &id, &onion_key, &request).unwrap();
        assert_eq!(hs.finish(&reply).unwrap().forward, server_keys.forward);
        Inputs {
            sealed_509: sealed_pool(),
            sealed_493: sealed_pool(),
            at_hop1,
            at_hop2,
            inbound: inbound_pool(),
            id,
            onion_key,
            client_rng,
            request,
            reply,
        }
    }
}

/// A raw ring key on a cache-line boundary, as the kernel's `RingGcm` is
/// (ring's AES key is only 4-byte aligned, and where it lands moves a seal
/// by up to ~10% here): both sides of every ratio get the same placement.
#[repr(align(64))]
struct RingKey(ring::aead::LessSafeKey);

impl std::ops::Deref for RingKey {
    type Target = ring::aead::LessSafeKey;
    fn deref(&self) -> &ring::aead::LessSafeKey {
        &self.0
    }
}

fn ring_key() -> RingKey {
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &KEY).unwrap();
    RingKey(ring::aead::LessSafeKey::new(unbound))
}

fn ring_open(key: &ring::aead::LessSafeKey, ctr: u64, data: &mut [u8], tag: &[u8; 16]) -> bool {
    key.open_in_place_separate_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce_for(ctr)),
        ring::aead::Aad::empty(),
        ring::aead::Tag::from(*tag),
        data,
        0..,
    )
    .is_ok()
}

fn rc_key() -> aes_gcm::Aes128Gcm {
    aes_gcm::Aes128Gcm::new_from_slice(&KEY).unwrap()
}

fn rc_open(key: &aes_gcm::Aes128Gcm, ctr: u64, data: &mut [u8], tag: &[u8; 16]) -> bool {
    key.decrypt_in_place_detached((&nonce_for(ctr)).into(), b"", data, tag.into())
        .is_ok()
}

/// Group `baseline`: the libraries alone, and through the kernel's trait.
fn baseline_ops(clock: Clock, inp: &Inputs) -> Vec<Op<'_>> {
    let n = POOL as u64;
    let mut ops = vec![
        Op::repeated("baseline/copy_509", clock, n, {
            let src = body_pattern();
            let mut dst = [0u8; BODY_LEN];
            move || {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            }
        }),
        Op::repeated("baseline/ring_seal", clock, n, {
            let key = ring_key();
            let mut data = body_pattern();
            let mut ctr = 0u64;
            move || {
                ctr += 1;
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_for(ctr));
                let data = black_box(&mut data[..]);
                let tag = key.seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), data);
                black_box(&tag.unwrap());
            }
        }),
        Op::consuming(
            "baseline/ring_open",
            clock,
            &inp.sealed_509,
            ring_key,
            |key, i, s| ring_open(key, i, &mut s.data, &s.tag),
        ),
        Op::consuming(
            "baseline/ring_open_493",
            clock,
            &inp.sealed_493,
            ring_key,
            |key, i, s| ring_open(key, i, &mut s.data, &s.tag),
        ),
        Op::repeated("baseline/ring_open_with_copy", clock, n, {
            let key = ring_key();
            let sealed = &inp.sealed_509[0];
            let mut data = [0u8; BODY_LEN];
            move || {
                data.copy_from_slice(black_box(&sealed.data));
                assert!(ring_open(&key, 0, black_box(&mut data), &sealed.tag));
            }
        }),
        Op::repeated("baseline/rustcrypto_seal", clock, n, {
            let key = rc_key();
            let mut data = body_pattern();
            let mut ctr = 0u64;
            move || {
                ctr += 1;
                let data = black_box(&mut data[..]);
                let tag = key.encrypt_in_place_detached((&nonce_for(ctr)).into(), b"", data);
                black_box(tag.unwrap());
            }
        }),
        Op::consuming(
            "baseline/rustcrypto_open",
            clock,
            &inp.sealed_509,
            rc_key,
            |key, i, s| rc_open(key, i, &mut s.data, &s.tag),
        ),
        Op::consuming(
            "baseline/rustcrypto_open_493",
            clock,
            &inp.sealed_493,
            rc_key,
            |key, i, s| rc_open(key, i, &mut s.data, &s.tag),
        ),
        // Raw AES-128-CTR keystream over 509 bytes with the `aes` crate the
        // kernel's Keystream uses: the floor for `onion/relay_layer_inbound`.
        Op::repeated("baseline/aes128_ctr_509", clock, n, {
            let aes = aes_gcm::aes::Aes128Enc::new(&KEY.into());
            let mut data = body_pattern();
            let mut ctr = 0u64;
            move || {
                ctr += 1;
                let mut blocks = [GenericArray::default(); BODY_LEN.div_ceil(16)];
                for (j, block) in blocks.iter_mut().enumerate() {
                    block[..12].copy_from_slice(&nonce_for(ctr));
                    block[12..].copy_from_slice(&(2 + j as u32).to_be_bytes());
                }
                aes.encrypt_blocks(&mut blocks);
                for (chunk, ks) in black_box(&mut data).chunks_mut(16).zip(&blocks) {
                    for (d, k) in chunk.iter_mut().zip(ks.iter()) {
                        *d ^= k;
                    }
                }
            }
        }),
        // The kernel's two keystream paths over a whole cell, in the same
        // run: `CellStream` (what inbound layers use: aws-lc's AES-CTR with
        // the `aws-lc` feature) and the portable `Keystream` (the `aes` crate).
        whole_cell_keystream("baseline/kernel_cellstream_509", clock, n, {
            let ks = CellStream::new(&KEY);
            move |ctr, body| ks.xor(ctr, body)
        }),
        whole_cell_keystream("baseline/kernel_portable_keystream_509", clock, n, {
            let ks = Keystream::new(&KEY);
            move |ctr, body| ks.xor_at(ctr, 0, body)
        }),
    ];
    ops.extend(via_trait::<RingGcm>(
        clock,
        inp,
        ["baseline/kernel_ring_seal", "baseline/kernel_ring_open"],
    ));
    ops.extend(via_trait::<RustCryptoGcm>(
        clock,
        inp,
        [
            "baseline/kernel_rustcrypto_seal",
            "baseline/kernel_rustcrypto_open",
        ],
    ));
    ops
}

/// The same seal and open through the kernel's `CellAead`.
fn via_trait<'a, A: CellAead + 'static>(
    clock: Clock,
    inp: &'a Inputs,
    [seal_id, open_id]: [&'static str; 2],
) -> [Op<'a>; 2] {
    let new = || A::new(&KEY).unwrap();
    [
        Op::repeated(seal_id, clock, POOL as u64, {
            let aead = new();
            let mut data = body_pattern();
            let mut ctr = 0u64;
            move || {
                ctr += 1;
                black_box(aead.seal(ctr, black_box(&mut data[..])).unwrap());
            }
        }),
        Op::consuming(open_id, clock, &inp.sealed_509, new, |aead, i, s| {
            aead.open(i, &mut s.data, &s.tag).is_ok()
        }),
    ]
}

/// Group `onion`: the kernel's onion layers.
fn onion_ops(clock: Clock, inp: &Inputs) -> Vec<Op<'_>> {
    let n = POOL as u64;
    vec![
        // A middle relay peeling its layer and padding the cell for the next
        // hop (`open_forward`: `open_outbound` + `prepare_forward` in one pass).
        Op::consuming(
            "onion/relay_forward_layer",
            clock,
            &inp.at_hop1,
            || RelayHop::new(&keys(1)).unwrap(),
            |hop, _, body| hop.open_forward(body).is_ok(),
        ),
        Op::repeated("onion/client_wrap_3hop", clock, n, {
            let mut client = three_hop_client();
            let mut body = body_pattern();
            move || {
                black_box(client.wrap_outbound(black_box(&mut body)).unwrap());
            }
        }),
        Op::consuming(
            "onion/exit_unwrap",
            clock,
            &inp.at_hop2,
            || RelayHop::new(&keys(2)).unwrap(),
            |hop, _, body| hop.open_outbound(body).is_ok(),
        ),
        Op::repeated("onion/origin_seal_inbound", clock, n, {
            let mut hop = RelayHop::new(&keys(3)).unwrap();
            let mut body = body_pattern();
            move || {
                black_box(hop.seal_inbound(black_box(&mut body)).unwrap());
            }
        }),
        Op::repeated("onion/relay_layer_inbound", clock, n, {
            let mut hop = RelayHop::new(&keys(2)).unwrap();
            let mut body = body_pattern();
            move || hop.layer_inbound(black_box(&mut body))
        }),
        Op::consuming(
            "onion/client_unwrap_inbound_3hop",
            clock,
            &inp.inbound,
            three_hop_client,
            |client, _, body| client.unwrap_inbound(body).is_ok(),
        ),
    ]
}

/// Group `handshake`: both sides through the kernel's API (its
/// `DefaultX25519`), x25519-dalek's DH alone (the reference for the
/// ratios), and per X25519 backend: one DH, one public key, both sides.
fn handshake_ops(clock: Clock, inp: &Inputs) -> Vec<Op<'_>> {
    let mut ops = vec![
        // Client side total: start (ephemeral key) + finish (two DH, KDF, AUTH check).
        Op::repeated("handshake/client", clock, 1, || {
            let mut rng = inp.client_rng.clone();
            let (hs, request) = ClientHandshake::start(&mut rng, inp.id, inp.onion_key.public);
            black_box(&request);
            assert!(black_box(hs.finish(black_box(&inp.reply))).is_ok());
        }),
        Op::repeated("handshake/server", clock, 1, {
            let mut rng = ChaCha20Rng::seed_from_u64(9);
            move || {
                let request = black_box(&inp.request);
                let r = handshake::server_respond(&mut rng, &inp.id, &inp.onion_key, request);
                assert!(black_box(r).is_ok());
            }
        }),
        Op::repeated("handshake/x25519_dh", clock, 1, {
            let secret = StaticSecret::from([3u8; 32]);
            let public = PublicKey::from(&StaticSecret::from([4u8; 32]));
            move || {
                black_box(black_box(&secret).diffie_hellman(black_box(&public)));
            }
        }),
        Op::repeated("handshake/x25519_public_key", clock, 1, {
            let secret = StaticSecret::from([3u8; 32]);
            move || {
                black_box(PublicKey::from(black_box(&secret)));
            }
        }),
    ];
    ops.extend(x25519_backend_ops::<DalekX25519>(
        clock,
        inp,
        [
            "handshake/dalek_dh",
            "handshake/dalek_public_key",
            "handshake/dalek_server",
            "handshake/dalek_client",
        ],
    ));
    ops.extend(x25519_backend_ops::<DalekEdwardsX25519>(
        clock,
        inp,
        [
            "handshake/edwards_dh",
            "handshake/edwards_public_key",
            "handshake/edwards_server",
            "handshake/edwards_client",
        ],
    ));
    #[cfg(feature = "aws-lc")]
    ops.extend(x25519_backend_ops::<AwsLcX25519>(
        clock,
        inp,
        [
            "handshake/awslc_dh",
            "handshake/awslc_public_key",
            "handshake/awslc_server",
            "handshake/awslc_client",
        ],
    ));
    ops
}

/// One DH, one public key (fixed base) and both handshake sides with X25519
/// backend `K`. Every backend gives the same bytes, so the client finishes
/// with the reply precomputed by the default one.
fn x25519_backend_ops<'a, K: X25519Key + 'static>(
    clock: Clock,
    inp: &'a Inputs,
    [dh, public, server, client]: [&'static str; 4],
) -> [Op<'a>; 4] {
    [
        Op::repeated(dh, clock, 1, {
            let secret = K::from_bytes([3u8; 32]);
            let peer = K::from_bytes([4u8; 32]).public_key();
            move || {
                assert!(black_box(black_box(&secret).agree(black_box(&peer))).is_some());
            }
        }),
        Op::repeated(public, clock, 1, move || {
            black_box(K::from_bytes(black_box([3u8; 32])).public_key());
        }),
        Op::repeated(server, clock, 1, {
            let onion = K::from_bytes(inp.onion_key.secret_bytes());
            let mut rng = ChaCha20Rng::seed_from_u64(9);
            move || {
                let y: [u8; 32] = rng.gen();
                let request = black_box(&inp.request);
                let r = handshake::server_respond_using(y, &inp.id, &onion, request);
                assert!(black_box(r).is_ok());
            }
        }),
        Op::repeated(client, clock, 1, move || {
            let mut rng = inp.client_rng.clone();
            let (hs, request) =
                ClientHandshake::<K>::start_using(&mut rng, inp.id, inp.onion_key.public);
            black_box(&request);
            assert!(black_box(hs.finish(black_box(&inp.reply))).is_ok());
        }),
    ]
}

/// Runs whole runs of `op` to cover `iters` operations, scaled to `iters`.
fn time_iters(op: &mut Op<'_>, iters: u64) -> Duration {
    let runs = iters.div_ceil(op.per_run);
    let total: Duration = (0..runs).map(|_| (op.run)()).sum();
    total.mul_f64(iters as f64 / (runs * op.per_run) as f64)
}

fn median(v: &mut [f64]) -> f64 {
    quantile(v, 0.5)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Runs every benchmark in turn for `rounds` rounds and prints, as a markdown
/// table, each one's median ns/op and its median per-round ratio (with the
/// interquartile range) to the reference operations.
fn paired(ops: &mut [Op<'_>], rounds: usize) {
    let (open, seal) = if cfg!(feature = "ring-backend") {
        ("baseline/ring_open", "baseline/ring_seal")
    } else {
        ("baseline/rustcrypto_open", "baseline/rustcrypto_seal")
    };
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); ops.len()];
    for round in 0..PAIRED_WARMUP + rounds {
        for (op, times) in ops.iter_mut().zip(&mut ns) {
            let took = (op.run)();
            if round >= PAIRED_WARMUP {
                times.push(took.as_nanos() as f64 / op.per_run as f64);
            }
        }
    }
    let index = |id: &str| ops.iter().position(|op| op.id == id);
    let ratio = |i: usize, to: Option<usize>| -> String {
        let Some(to) = to else {
            return String::from("-");
        };
        let mut r: Vec<f64> = ns[i].iter().zip(&ns[to]).map(|(a, b)| a / b).collect();
        let (lo, mid, hi) = (
            quantile(&mut r, 0.25),
            median(&mut r),
            quantile(&mut r, 0.75),
        );
        format!("{mid:.2} ({lo:.2}-{hi:.2})")
    };
    let (open_i, seal_i) = (index(open), index(seal));
    let dh_i = index("handshake/x25519_dh");
    println!("\n{rounds} paired rounds; ratios: median (interquartile range) of per-round ratios");
    println!("| operation | ns/op (median) | / {open} | / {seal} | / handshake/x25519_dh |");
    println!("|---|---:|---:|---:|---:|");
    for (i, op) in ops.iter().enumerate() {
        let (open_i, seal_i, dh_i) = if op.id.starts_with("handshake/") {
            (None, None, dh_i)
        } else {
            (open_i, seal_i, None)
        };
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            op.id,
            median(&mut ns[i].clone()),
            ratio(i, open_i),
            ratio(i, seal_i),
            ratio(i, dh_i),
        );
    }
}

fn main() {
    let clock = Clock::from_env();
    eprintln!(
        "kernel AEAD backend (DefaultAead): {}; X25519 backend (DefaultX25519): {}; clock: {} (read cost {:?}, subtracted)",
        std::any::type_name::<DefaultAead>(),
        std::any::type_name::<DefaultX25519>(),
        if clock.cpu {
            "thread CPU time"
        } else {
            "wall time"
        },
        clock.overhead,
    );
    // RELAY_BENCH_HEAP_SHIFT=<bytes>: allocate (and keep) that many bytes
    // first, which moves every later allocation: per-cell timings depend on
    // where keys and buffers land (line splits, 4 KiB aliasing), so a claim
    // about a ratio should hold over several shifts.
    let _shift: Vec<u8> = std::env::var("RELAY_BENCH_HEAP_SHIFT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or_else(Vec::new, |n| vec![1u8; n]);
    let inputs = Inputs::new();
    let mut ops = baseline_ops(clock, &inputs);
    ops.extend(onion_ops(clock, &inputs));
    ops.extend(handshake_ops(clock, &inputs));

    if let Ok(rounds) = std::env::var("RELAY_BENCH_PAIRED") {
        paired(
            &mut ops,
            rounds.parse().expect("RELAY_BENCH_PAIRED=<rounds>"),
        );
        return;
    }
    let mut c = Criterion::default()
        .with_measurement(clock)
        .configure_from_args();
    for group in ["baseline", "onion", "handshake"] {
        let mut g = c.benchmark_group(group);
        for op in ops.iter_mut() {
            if let Some(name) = op.id.strip_prefix(group).and_then(|n| n.strip_prefix('/')) {
                g.bench_function(name, |b| b.iter_custom(|iters| time_iters(op, iters)));
            }
        }
        g.finish();
    }
    c.final_summary();
}
