//! Services a node offers on internal streams (BEGIN with kind `internal`,
//! target host naming the service): the tracker (`tracker`) and the message
//! inbox (`msg`, used by the control port's `send`).
//!
//! Both speak newline-terminated text lines, each at most [`MAX_LINE`] bytes;
//! a longer line, bad hex or a bad signature ends the stream with an error
//! line, never the process.

use std::time::Duration;

use relay_kernel::{EndReason, StreamRef, TargetAddr};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::daemon::{unix_now, Daemon, RelayStream};
use crate::descriptor::Descriptor;
use crate::keys::{hex_decode, to_hex};

/// Longest request line (a hex descriptor is at most 1018 characters).
pub const MAX_LINE: usize = 2048;
/// Requests served per stream.
const MAX_REQUESTS: usize = 64;
/// An idle service stream is closed after this.
const IDLE: Duration = Duration::from_secs(30);

/// Service names.
pub const TRACKER: &str = "tracker";
/// Message inbox.
pub const MESSAGES: &str = "msg";

/// Accepts or refuses an internal stream.
pub fn spawn_internal(d: Daemon, s: StreamRef, target: TargetAddr) {
    let service = match &target {
        TargetAddr::Host(h, _) => h.clone(),
        _ => String::new(),
    };
    tokio::spawn(async move {
        let tracker = d.inner.config.act_as_tracker;
        match service.as_str() {
            TRACKER if tracker => {
                if let Ok(stream) = d.accept_stream(s, None) {
                    serve_tracker(&d, stream).await;
                }
            }
            MESSAGES => {
                if let Ok(stream) = d.accept_stream(s, None) {
                    serve_messages(&d, stream).await;
                }
            }
            _ => d.refuse_stream(s, EndReason::ExitPolicy),
        }
    });
}

/// Reads one line of at most `MAX_LINE` bytes; `None` at end of stream,
/// on a longer line or on timeout.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<String> {
    let mut line = Vec::new();
    let fut = async {
        loop {
            let buf = r.fill_buf().await.ok()?;
            if buf.is_empty() {
                return None;
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            r.consume(take);
            if line.len() > MAX_LINE + 1 {
                return None;
            }
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line).ok();
            }
        }
    };
    tokio::time::timeout(IDLE, fut).await.ok().flatten()
}

async fn serve_tracker(d: &Daemon, stream: RelayStream) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    for _ in 0..MAX_REQUESTS {
        let Some(line) = read_line(&mut r).await else {
            break;
        };
        let reply = tracker_request(d, &line);
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// One tracker request, one reply (possibly several lines).
pub fn tracker_request(d: &Daemon, line: &str) -> String {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "PUBLISH" => match hex_decode(arg.trim()).map(|b| Descriptor::decode(&b)) {
            Some(Ok(desc)) if desc.is_fresh(unix_now()) && !desc.addrs.is_empty() => {
                d.learn(desc);
                "OK\n".to_string()
            }
            Some(Ok(_)) => "ERR stale or unreachable descriptor\n".to_string(),
            Some(Err(e)) => format!("ERR {e}\n"),
            None => "ERR bad hex\n".to_string(),
        },
        "LIST" => {
            let mut out = String::new();
            out.push_str(&format!("D {}\n", to_hex(&d.descriptor_bytes())));
            for desc in d.known_relays() {
                if let Ok(b) = desc.encode() {
                    out.push_str(&format!("D {}\n", to_hex(&b)));
                }
            }
            out.push_str("END\n");
            out
        }
        _ => "ERR unknown request (PUBLISH <hex> | LIST)\n".to_string(),
    }
}

async fn serve_messages(d: &Daemon, stream: RelayStream) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    for _ in 0..MAX_REQUESTS {
        let Some(line) = read_line(&mut r).await else {
            break;
        };
        let clean: String = line.chars().filter(|c| !c.is_control()).collect();
        tracing::info!("message: {clean}");
        d.push_inbox(clean);
        if w.write_all(b"OK\n").await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Writes a request line and collects reply lines up to `END` (or `OK` /
/// `ERR ...` for single-line replies).
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    line: &str,
    multi: bool,
) -> Result<Vec<String>, String> {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    w.write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let _ = w.shutdown().await;
    let mut lines = Vec::new();
    loop {
        let Some(l) = read_line(&mut r).await else {
            return Err("service closed the stream".into());
        };
        if l.starts_with("ERR") {
            return Err(l);
        }
        if !multi || l == "END" {
            lines.push(l);
            return Ok(lines);
        }
        if lines.len() >= 20_000 {
            return Err("reply too long".into());
        }
        lines.push(l);
    }
}
