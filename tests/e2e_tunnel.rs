//! End-to-end: `relayd run` relays and a `relayd tunnel` client as real
//! processes on 127.0.0.1; 100 MB each way through 3 hops, sha256-checked,
//! over every link kind and over a mixed path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const MB: u64 = 1 << 20;

fn exit_policy() -> [&'static str; 2] {
    ["--exit-policy", "accept 127.0.0.1:*"]
}

/// Three relays (the last an exit) on the given link kinds and a tunnel
/// client; `bytes` each way through one tunnel connection.
fn three_hop_tunnel(schemes: [&str; 3], bytes: u64) {
    three_hop_tunnel_with(schemes, bytes, &[], &[]);
}

/// The same with extra flags for the exit and for the tunnel client; the
/// processes (relay, relay, exit, client) are returned still running.
fn three_hop_tunnel_with(
    schemes: [&str; 3],
    bytes: u64,
    exit_extra: &[&str],
    client_extra: &[&str],
) -> [Relayd; 4] {
    let _g = heavy();
    let server = pattern_server();
    let r1 = relay(schemes[0], &[]);
    let r2 = relay(schemes[1], &[]);
    let mut exit_args = exit_policy().to_vec();
    exit_args.extend_from_slice(exit_extra);
    let r3 = relay(schemes[2], &exit_args);
    let spec = format!(
        "127.0.0.1:0>{}>{}>{}>{}",
        r1.addr(),
        r2.addr(),
        r3.addr(),
        server.addr
    );
    let mut client_args = vec!["tunnel", &spec];
    client_args.extend_from_slice(client_extra);
    let client = Relayd::start(&client_args);
    let start = Instant::now();
    let c = TcpStream::connect(client.tunnels[0]).unwrap();
    let sent = exchange(c, bytes, bytes, Duration::from_secs(120)).unwrap();
    let (got, n) = server
        .received
        .recv_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(n, bytes);
    assert_eq!(got, sent, "server received different bytes");
    eprintln!(
        "{schemes:?}: {} MB each way in {:.1} s",
        bytes / MB,
        start.elapsed().as_secs_f64()
    );
    [r1, r2, r3, client]
}

/// The `Threads:` count of a running process.
fn os_threads(p: &Relayd) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn tunnel_over_udt_100_mb_each_way() {
    three_hop_tunnel(["udt", "udt", "udt"], 100 * MB);
}

#[test]
fn tunnel_over_quic_100_mb_each_way() {
    three_hop_tunnel(["quic", "quic", "quic"], 100 * MB);
}

#[test]
fn tunnel_over_s2n_100_mb_each_way() {
    three_hop_tunnel(["s2n", "s2n", "s2n"], 100 * MB);
}

#[test]
fn tunnel_over_tcp_100_mb_each_way() {
    three_hop_tunnel(["tcp", "tcp", "tcp"], 100 * MB);
}

#[test]
fn tunnel_over_mixed_path_100_mb_each_way() {
    three_hop_tunnel(["udt", "quic", "tcp"], 100 * MB);
}

#[test]
fn nodes_on_one_thread_and_on_several_carry_the_same_bytes() {
    // The relays run on one thread (the default), the exit and the client
    // on multi-thread runtimes (`--threads`), over a mixed path.
    let nodes = three_hop_tunnel_with(
        ["udt", "quic", "tcp"],
        30 * MB,
        &["--threads", "2"],
        &["--threads", "3"],
    );
    let [r1, r2, exit, client] = nodes.map(|p| os_threads(&p));
    // A multi-thread runtime has its workers besides the main thread; a
    // one-thread node has only tokio's lazily started blocking threads.
    assert!(
        exit > 2 && client > 3,
        "threads: exit {exit}, client {client}"
    );
    assert!(r1 < exit && r2 < exit, "threads: {r1}, {r2} vs exit {exit}");
    eprintln!("threads: relays {r1}, {r2}; exit {exit}; client {client}");
}

#[test]
fn tunnel_with_bbr_circuits_both_ways() {
    // Both ends run the BBR circuit controller (the client for what it
    // sends, the exit for what it sends back); bytes arrive exact.
    let bbr = ["--circuit-cc", "bbr"];
    three_hop_tunnel_with(["udt", "udt", "udt"], 30 * MB, &bbr, &bbr);
}

#[test]
fn tunnel_with_cubic_udt_links_at_the_ends() {
    // The client and the exit run CUBIC on their udt links, the relays
    // between them the default (BBR): each end's controller is its own
    // choice, and bytes arrive exact both ways.
    let cubic = ["--udt-cc", "cubic"];
    three_hop_tunnel_with(["udt", "udt", "udt"], 30 * MB, &cubic, &cubic);
}

#[test]
fn each_tunnel_connection_gets_its_own_circuit_and_control_port_lists_it() {
    let server = pattern_server();
    let r1 = relay("udt", &[]);
    let r2 = relay("udt", &exit_policy());
    let dir = temp_dir("ctl");
    let spec = format!("127.0.0.1:0>{}>{}>{}", r1.addr(), r2.addr(), server.addr);
    let client = Relayd::start(&[
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--tunnel",
        &spec,
    ]);
    let ctl_addr = client.control.unwrap();

    // No cookie, wrong cookie: refused.
    use std::io::{BufRead, BufReader, Write};
    for first in ["list circuits\n", "AUTH 00\n"] {
        let mut s = TcpStream::connect(ctl_addr).unwrap();
        s.write_all(first.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.starts_with("ERR"), "{line}");
    }

    // Two connections held open at once: two circuits.
    let c1 = TcpStream::connect(client.tunnels[0]).unwrap();
    let c2 = TcpStream::connect(client.tunnels[0]).unwrap();
    let origin_circuits = || {
        let (code, out, err) = ctl(&dir, &["list", "circuits"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter(|l| l.contains(" origin ready hops=2"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(20), || origin_circuits().len() == 2),
        "{:?}",
        origin_circuits()
    );
    let listed = origin_circuits();
    let r1_id = &r1.id;
    assert!(listed[0].contains(r1_id.as_str()), "{listed:?}");
    exchange(c1, 10_000, 10_000, Duration::from_secs(30)).unwrap();
    exchange(c2, 10_000, 10_000, Duration::from_secs(30)).unwrap();

    let (code, out, _) = ctl(&dir, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("cells_out="), "{out}");
    let (code, _, err) = ctl(&dir, &["close", "circuit", "999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("no circuit"), "{err}");
    let (code, _, err) = ctl(&dir, &["bogus"]);
    assert_eq!(code, 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
