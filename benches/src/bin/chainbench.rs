//! chainbench: a 3-hop relayd path against a plain 3-forwarder TCP chain,
//! both as real processes on 127.0.0.1, measured in the same run.
//!
//! Build relayd first, then run:
//!   cargo build --release -p relayd
//!   cargo run --release -p relay-benches --bin chainbench [-- --link udt --bulk-mb 400]
//!
//! Reports bulk throughput (download, one connection), time to first and
//! last byte for 50 KiB / 1 MiB / 5 MiB (new connection each, so relayd's
//! figures include building a circuit), connection setup time, CPU seconds
//! per GB summed over the chain's processes and per process, and RSS (idle,
//! peak, and with 1,000 open circuits).
//!
//! Noise: the host is shared, so `--bulk-reps N` repeats the bulk download
//! N times, alternating between the chains (plain, relayd, relayd B), and
//! reports medians and the median of the per-round ratios; `--relayd-b PATH`
//! adds a second relayd chain run from another binary (a before/after
//! comparison in one run).

// A measurement tool: failing loudly on a broken setup is the right answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn relayd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RELAYD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("relayd")
}

/// CPU ticks (user + system) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = s.rsplit(')').next() else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after ')'.
    t(11) + t(12)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// VmRSS and VmHWM in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

struct Proc {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &PathBuf, args: &[&str]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut out = child.stdout.take().map(std::io::BufReader::new);
    let mut lines = Vec::new();
    if let Some(out) = out.as_mut() {
        use std::io::BufRead;
        let mut l = String::new();
        while out.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
            let t = l.trim().to_string();
            l.clear();
            if t == "ready" {
                break;
            }
            lines.push(t);
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    if let Some(mut out) = out {
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
    }
    Proc { child, lines }
}

fn field<'a>(p: &'a Proc, key: &str) -> &'a str {
    p.lines
        .iter()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no `{key}` line in {:?}", p.lines))
}

/// The server: reads an 8-byte length, sends that many bytes, closes.
fn source_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut len = [0u8; 8];
                if c.read_exact(&mut len).is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(len);
                let buf = vec![0x5au8; 64 * 1024];
                while left > 0 {
                    let k = left.min(buf.len() as u64) as usize;
                    if c.write_all(&buf[..k]).is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = c.shutdown(Shutdown::Write);
                let mut sink = [0u8; 16];
                let _ = c.read(&mut sink);
            });
        }
    });
    addr
}

/// The plain forwarder: accept, connect `next`, copy both ways (run as a
/// child process so its CPU and RSS are measured like relayd's).
fn forwarder(listen: &str, next: &str) -> ! {
    let l = TcpListener::bind(listen).expect("bind");
    println!("listen {}", l.local_addr().expect("addr"));
    println!("ready");
    let _ = std::io::stdout().flush();
    let next: SocketAddr = next.parse().expect("next");
    for c in l.incoming() {
        let Ok(a) = c else { continue };
        std::thread::spawn(move || {
            let Ok(b) = TcpStream::connect(next) else {
                return;
            };
            let _ = a.set_nodelay(true);
            let _ = b.set_nodelay(true);
            let (mut a2, mut b2) = match (a.try_clone(), b.try_clone()) {
                (Ok(x), Ok(y)) => (x, y),
                _ => return,
            };
            let t = std::thread::spawn(move || {
                let _ = std::io::copy(&mut a2, &mut b2);
                let _ = b2.shutdown(Shutdown::Write);
            });
            let (mut a, mut b) = (a, b);
            let _ = std::io::copy(&mut b, &mut a);
            let _ = a.shutdown(Shutdown::Write);
            let _ = t.join();
        });
    }
    std::process::exit(0)
}

/// One fetch of `len` bytes through `entry`: (time to first byte, to last).
fn fetch(entry: SocketAddr, len: u64) -> Option<(Duration, Duration)> {
    let start = Instant::now();
    let mut c = TcpStream::connect(entry).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    c.write_all(&len.to_be_bytes()).ok()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let mut first = None;
    while got < len {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        if first.is_none() {
            first = Some(start.elapsed());
        }
        got += n as u64;
    }
    Some((first?, start.elapsed()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

struct Chain {
    name: String,
    entry: SocketAddr,
    procs: Vec<Proc>,
}

impl Chain {
    fn cpu_each(&self) -> Vec<u64> {
        self.procs.iter().map(|p| cpu_ticks(p.child.id())).collect()
    }
}

fn plain_chain(server: SocketAddr) -> Chain {
    let me = std::env::current_exe().expect("exe");
    let mut next = server.to_string();
    let mut procs = Vec::new();
    for _ in 0..3 {
        let p = spawn(&me, &["--forwarder", "127.0.0.1:0", &next]);
        next = field(&p, "listen").to_string();
        procs.push(p);
    }
    Chain {
        name: "plain TCP chain".into(),
        entry: next.parse().expect("entry"),
        procs,
    }
}

fn relayd_chain(
    server: SocketAddr,
    link: &str,
    bin: &PathBuf,
    name: &str,
    circuit_cc: Option<&str>,
) -> Chain {
    let listen = format!("{link}://127.0.0.1:0");
    let mut procs = Vec::new();
    let mut hops = Vec::new();
    for i in 0..3 {
        let mut args = vec!["run", "--listen", listen.as_str()];
        if i == 2 {
            args.extend_from_slice(&["--exit-policy", "accept 127.0.0.1:*"]);
            // The exit's controller governs the bulk download's direction.
            if let Some(cc) = circuit_cc {
                args.extend_from_slice(&["--circuit-cc", cc]);
            }
        }
        let p = spawn(bin, &args);
        hops.push(field(&p, "listen").to_string());
        procs.push(p);
    }
    let spec = format!("127.0.0.1:0>{}>{}", hops.join(">"), server);
    let mut client_args = vec!["tunnel", spec.as_str()];
    if let Some(cc) = circuit_cc {
        client_args.extend_from_slice(&["--circuit-cc", cc]);
    }
    let client = spawn(bin, &client_args);
    let entry = field(&client, "tunnel").parse().expect("tunnel addr");
    procs.push(client);
    let cc = circuit_cc.map(|c| format!(", {c}")).unwrap_or_default();
    Chain {
        name: format!("{name} 3 hops ({link}{cc})"),
        entry,
        procs,
    }
}

/// One bulk download: Mbit/s (0 when it failed) and CPU ticks per process.
fn bulk_once(chain: &Chain, bulk: u64) -> (f64, Vec<u64>) {
    let cpu0 = chain.cpu_each();
    let t = Instant::now();
    let ok = fetch(chain.entry, bulk).is_some();
    let secs = t.elapsed().as_secs_f64();
    let cpu = chain
        .cpu_each()
        .iter()
        .zip(&cpu0)
        .map(|(a, b)| a - b)
        .collect();
    let mbit = if ok {
        bulk as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    };
    (mbit, cpu)
}

struct Bulk {
    /// Mbit/s of each round.
    mbit: Vec<f64>,
    /// CPU seconds per GB of each process, over all rounds.
    cpu_per_gb: Vec<f64>,
}

impl Bulk {
    fn median_mbit(&self) -> f64 {
        median_f(self.mbit.clone())
    }
    fn cpu_total(&self) -> f64 {
        self.cpu_per_gb.iter().sum()
    }
}

/// `rounds` bulk downloads per chain, alternating between the chains so
/// that each round compares them under the same load of the host.
fn bulk_rounds(chains: &[&Chain], bulk: u64, rounds: usize) -> Vec<Bulk> {
    // Warm up (and build the first circuit) before timing.
    for c in chains {
        let _ = fetch(c.entry, 1 << 20);
    }
    let mut out: Vec<Bulk> = chains
        .iter()
        .map(|c| Bulk {
            mbit: Vec::new(),
            cpu_per_gb: vec![0.0; c.procs.len()],
        })
        .collect();
    let gb = bulk as f64 * rounds as f64 / 1e9;
    for _ in 0..rounds {
        for (c, b) in chains.iter().zip(out.iter_mut()) {
            let (mbit, cpu) = bulk_once(c, bulk);
            b.mbit.push(mbit);
            for (acc, t) in b.cpu_per_gb.iter_mut().zip(cpu) {
                *acc += t as f64 / ticks_per_sec() / gb;
            }
        }
    }
    out
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

struct Latency {
    ttfb: Vec<(u64, Duration, Duration)>,
    setup: Duration,
}

fn latency(chain: &Chain, reps: usize) -> Latency {
    let mut ttfb = Vec::new();
    for size in [50u64 << 10, 1 << 20, 5 << 20] {
        let mut firsts = Vec::new();
        let mut lasts = Vec::new();
        for _ in 0..reps {
            if let Some((f, l)) = fetch(chain.entry, size) {
                firsts.push(f);
                lasts.push(l);
            }
        }
        ttfb.push((size, median(firsts), median(lasts)));
    }
    let mut setups = Vec::new();
    for _ in 0..reps {
        if let Some((f, _)) = fetch(chain.entry, 1) {
            setups.push(f);
        }
    }
    Latency {
        ttfb,
        setup: median(setups),
    }
}

/// Opens `n` tunnel connections (each its own circuit) and holds them.
fn hold_circuits(entry: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(mut c) = TcpStream::connect(entry) {
            // Ask for 1 byte so the stream is really open end to end.
            let _ = c.write_all(&1u64.to_be_bytes());
            v.push(c);
        }
    }
    for c in v.iter_mut() {
        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
        let mut b = [0u8; 1];
        let _ = c.read(&mut b);
    }
    v
}

const USAGE: &str = "usage: chainbench [--link udt|tcp|quic|s2n] [--bulk-mb N] [--bulk-reps N] \
[--reps N] [--circuits N] [--relayd-b PATH] [--circuit-cc vegas|bbr] [--circuit-cc-b vegas|bbr]";

struct Opts {
    link: String,
    bulk_mb: u64,
    bulk_reps: usize,
    reps: usize,
    circuits: usize,
    relayd_b: Option<PathBuf>,
    /// Circuit congestion control of chain A and of chain B.
    circuit_cc: Option<String>,
    circuit_cc_b: Option<String>,
}

/// Strict flags: an unknown flag or a bad value is an error, not a default.
fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        link: "udt".into(),
        bulk_mb: 400,
        bulk_reps: 1,
        reps: 9,
        circuits: 1000,
        relayd_b: None,
        circuit_cc: None,
        circuit_cc_b: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag} takes a positive integer, not {v:?}"))
        };
        match flag.as_str() {
            "--link" if ["udt", "tcp", "quic", "s2n"].contains(&value.as_str()) => {
                o.link = value.clone()
            }
            "--link" => return Err(format!("unknown link kind {value:?}")),
            "--bulk-mb" => o.bulk_mb = number(value)?,
            "--bulk-reps" => o.bulk_reps = number(value)? as usize,
            "--reps" => o.reps = number(value)? as usize,
            "--relayd-b" => o.relayd_b = Some(PathBuf::from(value)),
            "--circuit-cc" | "--circuit-cc-b" if ["vegas", "bbr"].contains(&value.as_str()) => {
                if flag == "--circuit-cc" {
                    o.circuit_cc = Some(value.clone());
                } else {
                    o.circuit_cc_b = Some(value.clone());
                }
            }
            "--circuit-cc" | "--circuit-cc-b" => {
                return Err(format!("{flag}: vegas or bbr, not {value:?}"))
            }
            "--circuits" => o.circuits = number(value)? as usize,
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--forwarder") {
        forwarder(&args[2], &args[3]);
    }
    let opts = match parse_args(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chainbench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let Opts {
        link,
        bulk_mb,
        bulk_reps,
        reps,
        circuits,
        mut relayd_b,
        circuit_cc,
        circuit_cc_b,
    } = opts;
    // A B chain with another controller and no other binary runs this one.
    if circuit_cc_b.is_some() && relayd_b.is_none() {
        relayd_b = Some(relayd_bin());
    }
    let bulk = bulk_mb << 20;
    let bin = relayd_bin();
    for b in std::iter::once(&bin).chain(relayd_b.as_ref()) {
        if !b.exists() {
            eprintln!(
                "chainbench: {} not found; run `cargo build --release -p relayd` first or set RELAYD_BIN",
                b.display()
            );
            std::process::exit(2);
        }
    }
    let server = source_server();
    let plain = plain_chain(server);
    let relay = relayd_chain(server, &link, &bin, "relayd", circuit_cc.as_deref());
    let relay_b = relayd_b
        .as_ref()
        .map(|b| relayd_chain(server, &link, b, "relayd B", circuit_cc_b.as_deref()));
    let idle: Vec<u64> = relay
        .procs
        .iter()
        .map(|p| rss_kib(p.child.id()).0)
        .collect();
    let mut chains = vec![&plain, &relay];
    chains.extend(relay_b.as_ref());
    let bulks = bulk_rounds(&chains, bulk, bulk_reps);
    let lats: Vec<Latency> = chains.iter().map(|c| latency(c, reps)).collect();
    println!(
        "chainbench: bulk {} MiB x {bulk_reps}, {reps} reps per size, link {link}",
        bulk >> 20
    );
    println!(
        "{:<28} {:>10} {:>12} {:>12}",
        "chain", "Mbit/s", "CPU s/GB", "setup ms"
    );
    for ((c, b), l) in chains.iter().zip(&bulks).zip(&lats) {
        println!(
            "{:<28} {:>10.0} {:>12.2} {:>12.1}",
            c.name,
            b.median_mbit(),
            b.cpu_total(),
            l.setup.as_secs_f64() * 1e3
        );
    }
    for (c, b) in chains.iter().zip(&bulks).skip(1) {
        let per: Vec<String> = b.cpu_per_gb.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "{} CPU s/GB per process (relay1, relay2, exit, client): {}",
            c.name,
            per.join(", ")
        );
    }
    let p = &bulks[0];
    for (c, b) in chains.iter().zip(&bulks).skip(1) {
        let rounds: Vec<f64> = b
            .mbit
            .iter()
            .zip(&p.mbit)
            .map(|(r, q)| r / q.max(1e-9))
            .collect();
        let shown: Vec<String> = rounds.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "throughput ratio {}/plain: {:.2} (rounds: {})",
            c.name,
            median_f(rounds.clone()),
            shown.join(", ")
        );
    }
    if let Some(b) = bulks.get(2) {
        let rounds: Vec<f64> = bulks[1]
            .mbit
            .iter()
            .zip(&b.mbit)
            .map(|(a, b)| a / b.max(1e-9))
            .collect();
        println!(
            "throughput ratio relayd/relayd B: {:.2}; CPU s/GB ratio: {:.2}",
            median_f(rounds),
            bulks[1].cpu_total() / b.cpu_total().max(1e-9)
        );
    }
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>14}",
        "size", "plain TTFB ms", "plain TTLB ms", "relayd TTFB ms", "relayd TTLB ms"
    );
    for (a, b) in lats[0].ttfb.iter().zip(&lats[1].ttfb) {
        println!(
            "{:<10} {:>14.1} {:>14.1} {:>14.1} {:>14.1}",
            format!("{} KiB", a.0 >> 10),
            a.1.as_secs_f64() * 1e3,
            a.2.as_secs_f64() * 1e3,
            b.1.as_secs_f64() * 1e3,
            b.2.as_secs_f64() * 1e3
        );
    }
    // Relayd B's processes stop here so that the RSS figures below are
    // those of the main relayd chain alone.
    drop(relay_b);
    let peak: Vec<u64> = relay
        .procs
        .iter()
        .map(|p| rss_kib(p.child.id()).1)
        .collect();
    println!("relayd RSS idle KiB (relay1, relay2, exit, client): {idle:?}");
    println!("relayd RSS peak KiB after the transfers:              {peak:?}");
    let held = hold_circuits(relay.entry, circuits);
    std::thread::sleep(Duration::from_millis(500));
    let with: Vec<u64> = relay
        .procs
        .iter()
        .map(|p| rss_kib(p.child.id()).0)
        .collect();
    println!(
        "relayd RSS KiB with {} open circuits:                 {with:?}",
        held.len()
    );
}
