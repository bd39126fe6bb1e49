//! The control port: a line protocol on 127.0.0.1 for operators and
//! scripts. The first line must be `AUTH <cookie>` with the hex cookie from
//! `DIR/control.cookie` (0600), so only someone who can read the node's
//! directory can drive it. Every reply is zero or more lines followed by
//! `OK`, or a single `ERR <reason>`.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;
use relay_kernel::{CircuitRef, NodeId};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{self, Client};
use crate::keys::to_hex;
use crate::services::read_line;

/// Cookie file name inside the node directory.
pub const COOKIE_FILE: &str = "control.cookie";
/// The address the daemon actually listens on, for `relayd ctl`.
pub const ADDR_FILE: &str = "control.addr";

const HELP: &str = "commands: help | list circuits | list peers | list streams | \
list messages | stats | send <node-id> <message> | close circuit <n> | quit";

/// Why the control port could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not a loopback address.
    #[error("control port {0}: must be a 127.0.0.1 or ::1 address")]
    NotLoopback(SocketAddr),
    /// Bind or cookie file failed.
    #[error("control port: {0}")]
    Io(String),
}

/// Writes a fresh cookie and binds the port.
pub async fn start(
    addr: SocketAddr,
    dir: &Path,
    client: Arc<Client>,
) -> Result<SocketAddr, ControlError> {
    if !addr.ip().is_loopback() {
        return Err(ControlError::NotLoopback(addr));
    }
    let mut cookie = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut cookie);
    let cookie = to_hex(&cookie);
    let path = dir.join(COOKIE_FILE);
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ControlError::Io(format!("{}: {e}", path.display())))?;
    f.write_all(format!("{cookie}\n").as_bytes())
        .map_err(|e| ControlError::Io(format!("{}: {e}", path.display())))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ControlError::Io(format!("{addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ControlError::Io(e.to_string()))?;
    let _ = fs::write(dir.join(ADDR_FILE), format!("{bound}\n"));
    tokio::spawn(async move {
        let cookie = Arc::new(cookie);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (client, cookie) = (client.clone(), cookie.clone());
            tokio::spawn(async move {
                let _ = session(tcp, &client, &cookie).await;
            });
        }
    });
    Ok(bound)
}

async fn session(tcp: TcpStream, client: &Client, cookie: &str) -> std::io::Result<()> {
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let Some(first) = read_line(&mut r).await else {
        return Ok(());
    };
    let given = first.strip_prefix("AUTH ").unwrap_or("").trim();
    if !constant_time_eq(given.as_bytes(), cookie.as_bytes()) {
        w.write_all(b"ERR authentication required: AUTH <cookie from DIR/control.cookie>\n")
            .await?;
        return Ok(());
    }
    w.write_all(b"OK\n").await?;
    while let Some(line) = read_line(&mut r).await {
        let line = line.trim();
        if line == "quit" {
            w.write_all(b"OK\n").await?;
            return Ok(());
        }
        let reply = match command(client, line).await {
            Ok(lines) => {
                let mut s = lines.join("\n");
                if !s.is_empty() {
                    s.push('\n');
                }
                s + "OK\n"
            }
            Err(e) => format!("ERR {e}\n"),
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs one command.
pub async fn command(client: &Client, line: &str) -> Result<Vec<String>, String> {
    let d = &client.daemon;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["help"] => Ok(vec![HELP.to_string()]),
        ["list", "circuits"] => Ok(d
            .snapshot()
            .circuits
            .into_iter()
            .map(|c| {
                let hops: Vec<String> = c.hops.iter().map(|h| h.to_string()).collect();
                format!(
                    "{} {} {} hops={} path={} streams={} queued={} cwnd={}",
                    c.circuit.as_u64(),
                    if c.origin { "origin" } else { "relay" },
                    if c.ready || !c.origin {
                        "ready"
                    } else {
                        "building"
                    },
                    c.hops.len(),
                    if hops.is_empty() {
                        "-".into()
                    } else {
                        hops.join(",")
                    },
                    c.streams,
                    c.queued,
                    c.cwnd.map_or("-".into(), |w| w.to_string()),
                )
            })
            .collect()),
        ["list", "peers"] => Ok(d
            .snapshot()
            .peers
            .into_iter()
            .map(|(l, peer, remote, initiator)| {
                format!(
                    "{} {peer} {remote} {}",
                    l.0,
                    if initiator { "out" } else { "in" }
                )
            })
            .collect()),
        ["list", "streams"] => Ok(d
            .snapshot()
            .streams
            .into_iter()
            .map(|s| {
                format!(
                    "{}/{} {:?} {} send_buffered={} recv_buffered={}",
                    s.stream.circuit.as_u64(),
                    s.stream.id,
                    s.kind,
                    if s.open { "open" } else { "opening" },
                    s.send_buffered,
                    s.recv_buffered
                )
            })
            .collect()),
        ["list", "messages"] => Ok(d.inbox()),
        ["stats"] => {
            let s = d.snapshot();
            Ok(vec![
                format!("node_id={}", d.id()),
                format!("links={}", s.peers.len()),
                format!("circuits={}", s.circuits.len()),
                format!("streams={}", s.streams.len()),
                format!("known_relays={}", d.known_relays().len()),
                format!("cells_in={}", s.stats.cells_in),
                format!("cells_out={}", s.stats.cells_out),
                format!("cells_relayed={}", s.stats.cells_relayed),
                format!("cells_dropped={}", s.stats.cells_dropped),
                format!("circuits_killed={}", s.stats.circuits_killed),
            ])
        }
        ["send", id, rest @ ..] if !rest.is_empty() => {
            let to: NodeId = id.parse().map_err(|_| format!("bad node id {id}"))?;
            let text = rest.join(" ");
            client::send_message(client, &to, &text)
                .await
                .map(|_| Vec::new())
                .map_err(|e| e.to_string())
        }
        ["close", "circuit", n] => {
            let n: u64 = n.parse().map_err(|_| format!("bad circuit number {n}"))?;
            if d.close_circuit(CircuitRef::from_u64(n)) {
                Ok(Vec::new())
            } else {
                Err(format!("no circuit {n}"))
            }
        }
        _ => Err(format!("unknown command `{line}`; try help")),
    }
}

/// The cookie and address of a node's control port, for `relayd ctl`.
pub fn client_params(dir: &Path, addr: Option<SocketAddr>) -> Result<(String, SocketAddr), String> {
    let cookie_path: PathBuf = dir.join(COOKIE_FILE);
    let cookie = fs::read_to_string(&cookie_path)
        .map_err(|e| {
            format!(
                "{}: {e} (is the daemon running with --control?)",
                cookie_path.display()
            )
        })?
        .trim()
        .to_string();
    let addr = match addr {
        Some(a) => a,
        None => {
            let p = dir.join(ADDR_FILE);
            fs::read_to_string(&p)
                .map_err(|e| format!("{}: {e}; give --control ADDR", p.display()))?
                .trim()
                .parse()
                .map_err(|_| format!("{}: not an address", p.display()))?
        }
    };
    Ok((cookie, addr))
}
