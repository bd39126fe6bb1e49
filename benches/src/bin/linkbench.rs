//! linkbench: every link kind on 127.0.0.1 in one run, beside raw UDP and
//! raw TCP baselines and raw quinn and s2n-quic (module `quic_baseline`),
//! reporting cell-payload throughput and CPU seconds per GB (both ends
//! together, this process's user + system time).
//!
//! `cargo run --release -p relay-benches --bin linkbench -- [MB] [CIRCUITS]`
//! (default 300 MB per link kind over 64 circuits).
//!
//! Each end of a link row runs on its own thread with a current-thread
//! runtime, as two relayd processes run a link (relayd runs on one thread
//! by default), and raw quinn is measured that way too, beside its rows on
//! the shared runtime. `LINKBENCH_SPLIT=0` runs the link rows on the shared
//! runtime (two workers, both ends in it) instead, as linkbench did before
//! 2026-12-07's fifth session: there a cell is allocated on one worker and
//! freed on the other, which costs glibc's allocator dearly
//! (docs/benchmarks.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_kernel::{Cell, CellBlocks, CellCommand, BODY_LEN, CELL_LEN};
use relay_link::{Identity, LinkConfig, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../quic_baseline.rs"]
mod quic_baseline;

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe_rusage();
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is valid.
    #[allow(unsafe_code)]
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn unsafe_rusage() -> libc::rusage {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}

struct Row {
    name: String,
    payload_bytes: u64,
    wall: Duration,
    cpu: f64,
}

impl Row {
    fn print(&self) {
        let secs = self.wall.as_secs_f64();
        let gbit = self.payload_bytes as f64 * 8.0 / secs / 1e9;
        let cpu_per_gb = self.cpu / (self.payload_bytes as f64 / 1e9);
        println!(
            "| {:<36} | {:>8.2} | {:>9.2} | {:>6.2} |",
            self.name, gbit, cpu_per_gb, secs
        );
    }
}

/// Sends `cells` cells round robin over `circuits` circuits (64 by
/// default, as a busy relay link would carry).
async fn send_cells(tx: &relay_link::LinkSender, cells: u64, circuits: u64) {
    let mut template = Cell::new(0x8000_0001, CellCommand::Relay);
    template.body_mut().fill(0x5a);
    // Cut from shared blocks, as a relay's cells come from its links'
    // receive blocks: a fresh allocation per cell would charge each link
    // a malloc and a free per cell that no relay pays.
    let mut blocks = CellBlocks::new();
    for i in 0..cells {
        let mut c = blocks.cell(template.as_bytes()).unwrap();
        c.set_header(0x8000_0001 + (i % circuits) as u32, CellCommand::Relay);
        tx.send(c).await.unwrap();
    }
}

/// Receives `cells` cells.
async fn receive_cells(rx: &mut relay_link::LinkReceiver, cells: u64) {
    let mut got = 0;
    let mut batch = Vec::with_capacity(256);
    while got < cells {
        let n = rx.recv_many(&mut batch, 256).await;
        assert!(n > 0, "link closed");
        got += n as u64;
        batch.clear();
    }
}

/// The two ends' identities: the sender's, the receiver's.
fn identities() -> (Identity, Identity) {
    (
        Identity::from_secret([1; 32]),
        Identity::from_secret([2; 32]),
    )
}

async fn link_run(
    name: &str,
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    mb: u64,
    circuits: u64,
) -> Row {
    let (la, lb) = tokio::join!(
        a.connect(b.local_addr(), identities().1.node_id()),
        b.accept()
    );
    let (la, mut lb) = (la.expect("connect"), lb.expect("accept"));
    let cells = mb * 1_000_000 / CELL_LEN as u64;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let tx = la.tx.clone();
    let sender = tokio::spawn(async move { send_cells(&tx, cells, circuits).await });
    receive_cells(&mut lb.rx, cells).await;
    let wall = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    sender.await.unwrap();
    drop(la);
    Row {
        name: name.to_string(),
        payload_bytes: cells * BODY_LEN as u64,
        wall,
        cpu,
    }
}

/// A link row in the mode asked for.
async fn link_row(kind: LinkKind, mb: u64, circuits: u64, split: bool) -> Row {
    if split {
        // Its own threads and runtimes; this runtime only waits.
        return tokio::task::spawn_blocking(move || split_link_run(kind, mb, circuits))
            .await
            .unwrap();
    }
    let (ia, ib) = identities();
    let (a, b) = (kind.bind(&ia).await, kind.bind(&ib).await);
    link_run(kind.name(), a, b, mb, circuits).await
}

async fn raw_tcp(mb: u64) -> Row {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let total = mb * 1_000_000;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let w = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let buf = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            s.write_all(&buf).await.unwrap();
            sent += buf.len() as u64;
        }
    });
    let (mut r, _) = l.accept().await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < total {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    w.await.unwrap();
    Row {
        name: "raw TCP (no crypto)".into(),
        payload_bytes: got,
        wall: start.elapsed(),
        cpu: cpu_seconds() - cpu0,
    }
}

/// Raw UDP without crypto: 1200-byte datagrams from one thread to another
/// over loopback, `segments` per send call (1: one `sendmsg` per datagram;
/// more: GSO, with a GRO/`recvmmsg` receiver). The receiver acknowledges
/// every `ACK_EVERY` datagrams and the sender keeps at most `WINDOW`
/// unacknowledged, so the sender cannot outrun the reader and loopback
/// drops nothing (a stalled window after a rare drop is released after
/// 20 ms and the lost bytes are simply not counted).
async fn raw_udp(mb: u64, segments: usize) -> Row {
    use tokio::io::Interest;
    const DGRAM: usize = 1200;
    const WINDOW: u64 = 1024;
    const ACK_EVERY: u64 = 128;
    let bind = || {
        let s = relay_link::udp::bind_udp("127.0.0.1:0".parse().unwrap(), 8 << 20).unwrap();
        let state = quinn_udp::UdpSocketState::new((&s).into()).unwrap();
        (tokio::net::UdpSocket::from_std(s).unwrap(), state)
    };
    let ((tx, tx_state), (rx, rx_state)) = (bind(), bind());
    let (tx_addr, rx_addr) = (tx.local_addr().unwrap(), rx.local_addr().unwrap());
    let total = mb * 1_000_000 / DGRAM as u64;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut storage = vec![0u8; 8 * 65536];
        let mut meta = [quinn_udp::RecvMeta::default(); 8];
        let (mut got, mut bytes, mut last_ack) = (0u64, 0u64, 0u64);
        let mut end = Instant::now();
        while got < total {
            // Nothing for 500 ms: the sender is done.
            if tokio::time::timeout(Duration::from_millis(500), rx.readable())
                .await
                .is_err()
            {
                break;
            }
            let mut bufs: Vec<std::io::IoSliceMut<'_>> = storage
                .chunks_mut(65536)
                .map(std::io::IoSliceMut::new)
                .collect();
            let Ok(n) = rx.try_io(Interest::READABLE, || {
                rx_state.recv((&rx).into(), &mut bufs, &mut meta)
            }) else {
                continue;
            };
            for m in &meta[..n] {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                got += m.len.div_ceil(stride.max(1)) as u64;
                bytes += m.len as u64;
            }
            end = Instant::now();
            if got - last_ack >= ACK_EVERY {
                last_ack = got;
                let _ = rx.send_to(&got.to_be_bytes(), tx_addr).await;
            }
        }
        (bytes, end)
    });
    let segments = segments.min(tx_state.max_gso_segments()).max(1);
    let batch = vec![0x5au8; DGRAM * segments];
    let (mut sent, mut acked) = (0u64, 0u64);
    while sent < total {
        while sent - acked >= WINDOW {
            let mut a = [0u8; 8];
            match tokio::time::timeout(Duration::from_millis(20), tx.recv(&mut a)).await {
                Ok(Ok(8)) => acked = acked.max(u64::from_be_bytes(a)),
                Ok(_) => {}
                Err(_) => acked = sent, // an ack or datagrams were lost
            }
        }
        let k = (segments as u64).min(total - sent) as usize;
        let t = quinn_udp::Transmit {
            destination: rx_addr,
            ecn: None,
            contents: &batch[..k * DGRAM],
            segment_size: (k > 1).then_some(DGRAM),
            src_ip: None,
        };
        loop {
            match tx.try_io(Interest::WRITABLE, || tx_state.send((&tx).into(), &t)) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tx.writable().await.unwrap()
                }
                _ => break,
            }
        }
        sent += k as u64;
    }
    let (bytes, end) = reader.await.unwrap();
    Row {
        name: if segments > 1 {
            format!("raw UDP {DGRAM} B, GSO x{segments} (no crypto)")
        } else {
            format!("raw UDP {DGRAM} B, 1 per send (no crypto)")
        },
        payload_bytes: bytes,
        wall: end.duration_since(start),
        cpu: cpu_seconds() - cpu0,
    }
}

/// The link kinds, bound the same way in either mode.
#[derive(Clone, Copy)]
enum LinkKind {
    Tcp,
    Udt,
    Quic,
    S2n,
}

impl LinkKind {
    fn name(self) -> &'static str {
        match self {
            LinkKind::Tcp => "tcp link",
            LinkKind::Udt => "udt link",
            LinkKind::Quic => "quic link (quinn)",
            LinkKind::S2n => "s2n link (s2n-quic)",
        }
    }

    async fn bind(self, id: &Identity) -> Arc<dyn Transport> {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = LinkConfig::default();
        fn shared<T: Transport + 'static>(
            t: Result<T, relay_link::LinkError>,
        ) -> Arc<dyn Transport> {
            Arc::new(t.unwrap())
        }
        match self {
            LinkKind::Tcp => shared(relay_link_tcp::TcpTransport::bind(any, id, cfg).await),
            LinkKind::Udt => shared(relay_link_udt::UdtTransport::bind(any, id, cfg).await),
            LinkKind::Quic => shared(relay_link_quic::QuicTransport::bind(any, id, cfg).await),
            LinkKind::S2n => shared(relay_link_s2n::S2nTransport::bind(any, id, cfg).await),
        }
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One link row with each end on its own thread and current-thread
/// runtime: the sender's end (and the harness feeding it) on one, the
/// receiver's on the other.
fn split_link_run(kind: LinkKind, mb: u64, circuits: u64) -> Row {
    let (ia, ib) = identities();
    let peer = ib.node_id();
    let cells = mb * 1_000_000 / CELL_LEN as u64;
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    // Named so that a profile (`perf report --sort comm`) tells the ends apart.
    let spawn = |name: &str| std::thread::Builder::new().name(name.into());
    let receiver = spawn("lb-receiver")
        .spawn(move || {
            current_thread().block_on(async move {
                let b = kind.bind(&ib).await;
                addr_tx.send(b.local_addr()).unwrap();
                let mut lb = b.accept().await.expect("accept");
                receive_cells(&mut lb.rx, cells).await;
                let end = (Instant::now(), cpu_seconds());
                let _ = done_tx.send(());
                end
            })
        })
        .expect("spawn the receiving end");
    let sender = spawn("lb-sender")
        .spawn(move || {
            current_thread().block_on(async move {
                let a = kind.bind(&ia).await;
                let la = a
                    .connect(addr_rx.await.unwrap(), peer)
                    .await
                    .expect("connect");
                let start = (Instant::now(), cpu_seconds());
                send_cells(&la.tx, cells, circuits).await;
                // Keep this end (retransmissions, ACKs) running until the
                // receiver has everything.
                let _ = done_rx.await;
                start
            })
        })
        .expect("spawn the sending end");
    let (start, cpu0) = sender.join().unwrap();
    let (end, cpu1) = receiver.join().unwrap();
    Row {
        name: format!("{}, one thread per end", kind.name()),
        payload_bytes: cells * BODY_LEN as u64,
        wall: end - start,
        cpu: cpu1 - cpu0,
    }
}

fn main() {
    let arg = |i: usize, default: u64| -> u64 {
        match std::env::args().nth(i) {
            None => default,
            Some(a) => a.parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                eprintln!("usage: linkbench [MB] [CIRCUITS] (positive integers)");
                std::process::exit(2)
            }),
        }
    };
    let (mb, circuits) = (arg(1, 300), arg(2, 64));
    let split = std::env::var("LINKBENCH_SPLIT").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let runtime = if split { "link ends on one thread each" } else { "2 tokio workers" };
        println!("linkbench: {mb} MB of cells per link kind, one link, {circuits} circuits, 127.0.0.1, {runtime}");
        println!("| {:<36} | Gbit/s   | CPU s/GB  | secs   |", "kind");
        println!("|---|---:|---:|---:|");
        // LINKBENCH_ONLY=quic (or udt, tcp, s2n, raw) runs one row group,
        // e.g. under a profiler; quic-link or quic-raw (s2n-link, s2n-raw)
        // one row of a group.
        let only = std::env::var("LINKBENCH_ONLY").ok();
        let run = |k: &str| only.as_deref().is_none_or(|o| o == k || k.split('-').next() == Some(o));
        if run("raw") {
            raw_udp(mb, 1).await.print();
            raw_udp(mb, 32).await.print();
            raw_tcp(mb).await.print();
        }
        if run("tcp") {
            link_row(LinkKind::Tcp, mb, circuits, split).await.print();
        }
        if run("udt") {
            link_row(LinkKind::Udt, mb, circuits, split).await.print();
        }
        if run("quic-raw") {
            quic_baseline::raw_quinn(mb, 1).await.print();
            if circuits > 1 {
                quic_baseline::raw_quinn(mb, circuits as usize).await.print();
            }
            if split {
                let rows = tokio::task::spawn_blocking(move || {
                    let mut rows = vec![quic_baseline::raw_quinn_split(mb, 1, None)];
                    if circuits > 1 {
                        rows.push(quic_baseline::raw_quinn_split(mb, circuits as usize, None));
                    }
                    // The same search ceiling as udt's, for a like-for-like
                    // row on loopback.
                    let ceiling = relay_link_udt::PROBE_CEILING as u16;
                    rows.push(quic_baseline::raw_quinn_split(mb, 1, Some(ceiling)));
                    rows
                });
                for r in rows.await.unwrap() {
                    r.print();
                }
            }
        }
        if run("quic-link") {
            link_row(LinkKind::Quic, mb, circuits, split).await.print();
        }
        if run("s2n-raw") {
            quic_baseline::raw_s2n(mb, 1).await.print();
            if circuits > 1 {
                quic_baseline::raw_s2n(mb, circuits as usize).await.print();
            }
        }
        if run("s2n-link") {
            link_row(LinkKind::S2n, mb, circuits, split).await.print();
        }
    });
}
