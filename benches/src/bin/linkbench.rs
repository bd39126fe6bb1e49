//! linkbench: every link kind on 127.0.0.1 in one run, beside raw UDP and
//! raw TCP baselines, reporting cell-payload throughput and CPU seconds per
//! GB (both ends together, this process's user + system time).
//!
//! `cargo run --release -p relay-benches --bin linkbench -- [MB]` (default
//! 300 MB per link kind).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_kernel::{Cell, CellCommand, BODY_LEN, CELL_LEN};
use relay_link::{Identity, LinkConfig, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            "| {:<22} | {:>8.2} | {:>9.2} | {:>6.2} |",
            self.name, gbit, cpu_per_gb, secs
        );
    }
}

async fn link_run(name: &str, a: Arc<dyn Transport>, b: Arc<dyn Transport>, mb: u64) -> Row {
    let (la, lb) = tokio::join!(
        a.connect(b.local_addr(), Identity::from_secret([2; 32]).node_id()),
        b.accept()
    );
    let (la, mut lb) = (la.expect("connect"), lb.expect("accept"));
    let cells = mb * 1_000_000 / CELL_LEN as u64;
    let mut template = Cell::new(0x8000_0001, CellCommand::Relay);
    template.body_mut().fill(0x5a);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let tx = la.tx.clone();
    let sender = tokio::spawn(async move {
        for i in 0..cells {
            let mut c = Cell::from_slice(template.as_bytes()).unwrap();
            // 64 circuits, as a busy relay link would carry.
            c.set_header(0x8000_0001 + (i % 64) as u32, CellCommand::Relay);
            tx.send(c).await.unwrap();
        }
    });
    for _ in 0..cells {
        lb.rx.recv().await.expect("link closed");
    }
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

async fn raw_udp(mb: u64) -> Row {
    // 1200-byte datagrams, one per syscall; loopback drops what the reader
    // cannot keep up with, so throughput counts what arrived.
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = rx.local_addr().unwrap();
    let total = mb * 1_000_000 / 1200;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let w = tokio::spawn(async move {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let buf = [0x5au8; 1200];
        for _ in 0..total {
            let _ = s.send_to(&buf, addr).await;
        }
    });
    let mut buf = [0u8; 2048];
    let mut got = 0u64;
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), rx.recv_from(&mut buf)).await
    {
        got += n as u64;
    }
    w.await.unwrap();
    let wall = start.elapsed().saturating_sub(Duration::from_millis(300));
    Row {
        name: "raw UDP 1200 B (no crypto)".into(),
        payload_bytes: got,
        wall,
        cpu: cpu_seconds() - cpu0,
    }
}

fn main() {
    let mb: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = LinkConfig::default();
        let (ia, ib) = (Identity::from_secret([1; 32]), Identity::from_secret([2; 32]));
        println!("linkbench: {mb} MB of cells per link kind, one link, 64 circuits, 127.0.0.1, 2 tokio workers");
        println!("| kind                   | Gbit/s   | CPU s/GB  | secs   |");
        println!("|---|---:|---:|---:|");
        raw_udp(mb).await.print();
        raw_tcp(mb).await.print();
        let a: Arc<dyn Transport> = Arc::new(relay_link_tcp::TcpTransport::bind(any, &ia, cfg).await.unwrap());
        let b: Arc<dyn Transport> = Arc::new(relay_link_tcp::TcpTransport::bind(any, &ib, cfg).await.unwrap());
        link_run("tcp link", a, b, mb).await.print();
        let a: Arc<dyn Transport> = Arc::new(relay_link_udt::UdtTransport::bind(any, &ia, cfg).await.unwrap());
        let b: Arc<dyn Transport> = Arc::new(relay_link_udt::UdtTransport::bind(any, &ib, cfg).await.unwrap());
        link_run("udt link", a, b, mb).await.print();
        let a: Arc<dyn Transport> = Arc::new(relay_link_quic::QuicTransport::bind(any, &ia, cfg).await.unwrap());
        let b: Arc<dyn Transport> = Arc::new(relay_link_quic::QuicTransport::bind(any, &ib, cfg).await.unwrap());
        link_run("quic link (quinn)", a, b, mb).await.print();
        let a: Arc<dyn Transport> = Arc::new(relay_link_s2n::S2nTransport::bind(any, &ia, cfg).await.unwrap());
        let b: Arc<dyn Transport> = Arc::new(relay_link_s2n::S2nTransport::bind(any, &ib, cfg).await.unwrap());
        link_run("s2n link (s2n-quic)", a, b, mb).await.print();
    });
}
