//! Harness for end-to-end tests: real `relayd` processes on 127.0.0.1, a
//! pattern server, a blocking SOCKS5 client. Every process is killed when
//! its handle drops, and every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Heavy tests take this lock so they do not compete for the 2 CI cores.
pub static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn relayd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_relayd")
}

/// A running relayd with what it printed at startup.
pub struct Relayd {
    pub child: Child,
    pub id: String,
    /// `ID@scheme://host:port` per listen address.
    pub listen: Vec<String>,
    pub tunnels: Vec<SocketAddr>,
    pub proxies: Vec<SocketAddr>,
    pub control: Option<SocketAddr>,
    pub dir: Option<PathBuf>,
}

impl Relayd {
    pub fn start(args: &[&str]) -> Relayd {
        Self::try_start(args).unwrap_or_else(|e| panic!("relayd {args:?}: {e}"))
    }

    pub fn try_start(args: &[&str]) -> Result<Relayd, String> {
        let mut child = Command::new(relayd_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut r = Relayd {
            child,
            id: String::new(),
            listen: vec![],
            tunnels: vec![],
            proxies: vec![],
            control: None,
            dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| "no `ready` line within 30 s (exited?)".to_string())?;
            let (k, v) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match k {
                "id" => r.id = v.to_string(),
                "listen" => r.listen.push(v.to_string()),
                "tunnel" => r.tunnels.push(v.parse().map_err(|_| line.clone())?),
                "proxy" => r.proxies.push(v.parse().map_err(|_| line.clone())?),
                "control" => r.control = Some(v.parse().map_err(|_| line.clone())?),
                "ready" => break,
                _ => {}
            }
        }
        let pos = args.iter().position(|a| *a == "--dir");
        r.dir = pos.and_then(|p| args.get(p + 1)).map(PathBuf::from);
        Ok(r)
    }

    /// The first listen address (`ID@scheme://host:port`).
    pub fn addr(&self) -> &str {
        &self.listen[0]
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay listening on `scheme://127.0.0.1:0` with extra args.
pub fn relay(scheme: &str, extra: &[&str]) -> Relayd {
    let listen = format!("{scheme}://127.0.0.1:0");
    let mut args = vec!["run", "--listen", &listen];
    args.extend_from_slice(extra);
    Relayd::start(&args)
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "relayd-e2e-{}-{}-{}",
        name,
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Deterministic bytes: block `i` of the stream seeded by `seed`.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (offset + i as u64)
            .wrapping_add(seed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        *b = (x >> 56) as u8;
    }
}

pub fn pattern_hash(seed: u64, len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        pattern(seed, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

/// The pattern server: a client sends 8 bytes (big-endian length N) and
/// then any bytes until it shuts down its side; the server sends N pattern
/// bytes (seed 7) back, then closes, and reports the sha256 and length of
/// what it received.
pub struct PatternServer {
    pub addr: SocketAddr,
    pub received: mpsc::Receiver<([u8; 32], u64)>,
}

pub fn pattern_server() -> PatternServer {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut len = [0u8; 8];
                if c.read_exact(&mut len).is_err() {
                    return;
                }
                let n = u64::from_be_bytes(len);
                let mut w = c.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut off = 0;
                    while off < n {
                        let k = (n - off).min(buf.len() as u64) as usize;
                        pattern(7, off, &mut buf[..k]);
                        if w.write_all(&buf[..k]).is_err() {
                            return;
                        }
                        off += k as u64;
                    }
                    let _ = w.shutdown(Shutdown::Write);
                });
                let mut h = Sha256::new();
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            h.update(&buf[..k]);
                            total += k as u64;
                        }
                    }
                }
                let _ = writer.join();
                let _ = tx.send((h.finalize().into(), total));
            });
        }
    });
    PatternServer { addr, received: rx }
}

/// Sends `up` pattern bytes (seed 11) and receives `down` bytes over an
/// open connection to a pattern server; checks what came back and returns
/// the sha256 of the bytes sent (to compare with the server's report).
pub fn exchange(
    mut c: TcpStream,
    up: u64,
    down: u64,
    timeout: Duration,
) -> Result<[u8; 32], String> {
    c.set_read_timeout(Some(timeout)).unwrap();
    c.write_all(&down.to_be_bytes())
        .map_err(|e| e.to_string())?;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0;
        while off < up {
            let k = (up - off).min(buf.len() as u64) as usize;
            pattern(11, off, &mut buf[..k]);
            w.write_all(&buf[..k]).map_err(|e| e.to_string())?;
            off += k as u64;
        }
        w.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                total += k as u64;
            }
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
    writer.join().map_err(|_| "writer panicked")??;
    if total != down {
        return Err(format!("received {total} bytes, expected {down}"));
    }
    let got: [u8; 32] = h.finalize().into();
    if got != pattern_hash(7, down) {
        return Err("received bytes differ from what the server sent".into());
    }
    Ok(pattern_hash(11, up))
}

/// Target of a SOCKS CONNECT.
pub enum SocksTarget<'a> {
    Addr(SocketAddr),
    Name(&'a str, u16),
}

/// A blocking SOCKS5 CONNECT (or UDP ASSOCIATE with `cmd` 3). Returns the
/// connection, or the reply code.
pub fn socks(
    proxy: SocketAddr,
    target: SocksTarget,
    creds: Option<(&str, &str)>,
    cmd: u8,
) -> Result<(TcpStream, SocketAddr), u8> {
    let mut s = TcpStream::connect(proxy).map_err(|_| 0xff)?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    match creds {
        None => s.write_all(&[5, 1, 0]).unwrap(),
        Some(_) => s.write_all(&[5, 1, 2]).unwrap(),
    }
    let mut m = [0u8; 2];
    s.read_exact(&mut m).map_err(|_| 0xfe)?;
    if let Some((u, p)) = creds {
        assert_eq!(m, [5, 2]);
        let mut a = vec![1, u.len() as u8];
        a.extend_from_slice(u.as_bytes());
        a.push(p.len() as u8);
        a.extend_from_slice(p.as_bytes());
        s.write_all(&a).unwrap();
        let mut r = [0u8; 2];
        s.read_exact(&mut r).map_err(|_| 0xfd)?;
        assert_eq!(r, [1, 0]);
    } else {
        assert_eq!(m, [5, 0]);
    }
    let mut req = vec![5, cmd, 0];
    match target {
        SocksTarget::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        SocksTarget::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        SocksTarget::Name(h, p) => {
            req.push(3);
            req.push(h.len() as u8);
            req.extend_from_slice(h.as_bytes());
            req.extend_from_slice(&p.to_be_bytes());
        }
    }
    s.write_all(&req).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(|_| 0xfc)?;
    let bound = match head[3] {
        1 => {
            let mut a = [0u8; 6];
            s.read_exact(&mut a).map_err(|_| 0xfb)?;
            SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([a[4], a[5]])))
        }
        4 => {
            let mut a = [0u8; 18];
            s.read_exact(&mut a).map_err(|_| 0xfb)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            SocketAddr::from((ip, u16::from_be_bytes([a[16], a[17]])))
        }
        _ => return Err(0xfa),
    };
    if head[1] != 0 {
        return Err(head[1]);
    }
    s.set_read_timeout(None).unwrap();
    Ok((s, bound))
}

/// Waits until `f` is true, up to `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn ctl(dir: &Path, cmd: &[&str]) -> (i32, String, String) {
    let out = Command::new(relayd_bin())
        .args(["ctl", "--dir", dir.to_str().unwrap()])
        .args(cmd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
