//! `relayd demo`: a whole network in one process on 127.0.0.1: a tracker,
//! relays, an exit that allows only loopback, a small HTTP server, and a
//! SOCKS5 proxy with three random hops; then a fetch through it.
//!
//! Every node is a full daemon with its own identity, udt socket and kernel
//! node, talking over real UDP on loopback exactly as separate processes
//! would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{self, Client};
use crate::daemon::{Daemon, DaemonConfig};
use crate::exit_policy::ExitPolicy;
use crate::keys::Keys;
use crate::peers::Peers;
use crate::proxy::Socks;
use crate::spec::Spec;

/// Size of the test file.
pub const TEST_FILE_LEN: usize = 1 << 20;

/// The test file's bytes (deterministic, so the fetch can be verified).
pub fn test_file() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..TEST_FILE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Serves `GET /test.bin` (the test file) and `GET /` (a short page).
pub async fn http_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let file = Arc::new(test_file());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let file = file.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body: &[u8] = if req.starts_with(b"GET /test.bin") {
                    &file
                } else {
                    b"hello from the relayd demo server\n"
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Fetches `path` from `server` through the SOCKS5 proxy at `proxy` (a
/// minimal client: no auth, CONNECT by IPv4 address).
pub async fn fetch_via_socks(
    proxy: SocketAddr,
    server: SocketAddr,
    path: &str,
) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect to proxy: {e}"))?;
    s.write_all(&[5, 1, 0]).await.map_err(|e| e.to_string())?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.map_err(|e| e.to_string())?;
    if m != [5, 0] {
        return Err(format!("proxy chose method {m:?}"));
    }
    let SocketAddr::V4(v4) = server else {
        return Err("demo server must be IPv4".into());
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.map_err(|e| e.to_string())?;
    if rep[1] != 0 {
        return Err(format!("proxy replied {:#04x}", rep[1]));
    }
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: demo\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header in the reply")?;
    Ok(resp[split + 4..].to_vec())
}

/// The demo network, running.
pub struct DemoNet {
    /// SOCKS5 address.
    pub socks: SocketAddr,
    /// HTTP test server.
    pub http: SocketAddr,
    /// The relays (the first is the tracker, the last the exit).
    pub relays: Vec<Daemon>,
    /// The client node.
    pub client: Arc<Client>,
}

fn relay_config(tracker: bool, exit: bool) -> Result<DaemonConfig, String> {
    let mut c = DaemonConfig {
        listen: vec![relay_link::LinkAddr::parse("udt://127.0.0.1:0").map_err(|e| e.to_string())?],
        act_as_tracker: tracker,
        ..DaemonConfig::default()
    };
    if exit {
        c.exit_policy = ExitPolicy::parse_rules(&["accept 127.0.0.1:*".to_string()])
            .map_err(|e| e.to_string())?;
    }
    Ok(c)
}

/// Starts the network: `relays` relays (at least 4), one tracker, one exit.
pub async fn start(relays: usize, socks_port: u16) -> Result<DemoNet, String> {
    let relays = relays.max(4);
    let http = http_server()
        .await
        .map_err(|e| format!("http server: {e}"))?;
    let tracker = Daemon::start(Keys::temporary(), relay_config(true, false)?)
        .await
        .map_err(|e| e.to_string())?;
    let tracker_addr = tracker.peer_addr().ok_or("tracker has no address")?;
    let mut nodes = vec![tracker];
    for i in 1..relays {
        let exit = i == relays - 1;
        let d = Daemon::start(Keys::temporary(), relay_config(false, exit)?)
            .await
            .map_err(|e| e.to_string())?;
        nodes.push(d);
    }
    for d in &nodes {
        let c = Arc::new(Client::new(d.clone(), Peers::default()));
        tokio::spawn(client::tracker_loop(c, vec![tracker_addr.clone()], true));
    }
    let cd = Daemon::start(Keys::temporary(), DaemonConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = Arc::new(Client::new(cd, Peers::default()));
    tokio::spawn(client::tracker_loop(
        client.clone(),
        vec![tracker_addr],
        false,
    ));
    let bind = |port: u16| Spec::parse(&format!("127.0.0.1:{port}>rand>rand>rand>internet"));
    let socks = match Socks::bind(bind(socks_port).map_err(|e| e.to_string())?).await {
        Ok(s) => s,
        Err(_) => Socks::bind(bind(0).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?,
    };
    let socks_addr = socks.local_addr().ok_or("proxy has no address")?;
    tokio::spawn(socks.serve(client.clone()));
    Ok(DemoNet {
        socks: socks_addr,
        http,
        relays: nodes,
        client,
    })
}

/// `relayd demo [--check]`: returns the process exit code.
pub async fn run(check: bool) -> i32 {
    println!("starting a network on 127.0.0.1: 1 tracker, 3 relays, 1 exit (loopback only), 1 client ...");
    let net = match start(5, 1080).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("relayd demo: {e}");
            return 1;
        }
    };
    // Wait until the client knows the relays (tracker round trips).
    let t0 = Instant::now();
    while net.client.daemon.known_relays().len() < net.relays.len()
        && t0.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "client knows {} relays from the tracker after {} ms",
        net.client.daemon.known_relays().len(),
        t0.elapsed().as_millis()
    );
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        fetch_via_socks(net.socks, net.http, "/test.bin"),
    )
    .await
    .unwrap_or_else(|_| Err("timed out after 60 s".into()));
    let ok = match &result {
        Ok(body) if *body == test_file() => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "fetched http://{}/test.bin ({} bytes) through 3 random hops in {:.0} ms ({:.1} Mbit/s): content verified",
                net.http,
                body.len(),
                secs * 1000.0,
                body.len() as f64 * 8.0 / secs / 1e6
            );
            true
        }
        Ok(body) => {
            println!(
                "FAILED: fetched {} bytes but the content differs",
                body.len()
            );
            false
        }
        Err(e) => {
            println!("FAILED: {e}");
            false
        }
    };
    for c in net.client.daemon.snapshot().circuits {
        let hops: Vec<String> = c
            .hops
            .iter()
            .map(|h| h.to_string().chars().take(8).collect())
            .collect();
        let what = if c.hops.len() == 1 {
            "tracker circuit"
        } else {
            "proxy circuit"
        };
        println!("{what} {}: {}", c.circuit.as_u64(), hops.join(" > "));
    }
    if check {
        return if ok { 0 } else { 1 };
    }
    println!();
    println!("SOCKS5 proxy: {}", net.socks);
    println!(
        "try:  curl --socks5-hostname {} http://localhost:{}/   (the exit resolves the name)",
        net.socks,
        net.http.port()
    );
    println!("Ctrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    net.client.daemon.shutdown().await;
    if ok {
        0
    } else {
        1
    }
}
