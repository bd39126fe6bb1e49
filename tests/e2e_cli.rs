//! End-to-end: the command line itself: keygen/id, one-line errors with
//! exit code 2 for every bad flag, config or key file, clean shutdown on
//! SIGTERM, `--config`, and `relayd demo --check`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(relayd_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keygen_creates_private_keys_and_id_prints_the_same_node_id() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("keygen");
    let d = dir.to_str().unwrap();
    let (code, out, err) = run(&["keygen", "--dir", d]);
    assert_eq!(code, 0, "{err}");
    let id = out.lines().last().unwrap().to_string();
    assert_eq!(id.len(), 52, "{out}");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    for f in ["identity.key", "onion.key"] {
        let m = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    // Again: keys kept, same id.
    let (code, out2, _) = run(&["keygen", "--dir", d]);
    assert_eq!(code, 0);
    assert_eq!(out2.lines().last().unwrap(), id);
    let (code, out3, _) = run(&["id", "--dir", d]);
    assert_eq!(code, 0);
    assert_eq!(out3.trim(), id);
    // A damaged key file: one line naming it, exit 2.
    std::fs::write(dir.join("identity.key"), "not a key\n").unwrap();
    let (code, _, err) = run(&["id", "--dir", d]);
    assert_eq!(code, 2);
    assert!(
        err.contains("identity.key") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_bad_input_is_one_line_and_exit_code_2() {
    let dir = temp_dir("badcfg");
    std::fs::create_dir_all(&dir).unwrap();
    let bad_config = dir.join("bad.toml");
    std::fs::write(
        &bad_config,
        "listen = [\"udt://127.0.0.1:0\"]\nlisten_typo = 1\n",
    )
    .unwrap();
    let bad_peers = dir.join("peers");
    std::fs::write(&bad_peers, "alice not-an-address\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--listen", "ftp://127.0.0.1:1"], "--listen"),
        (vec!["run", "--listen", "udt://nohost"], "--listen"),
        (
            vec!["run", "--connect", "nobody@udt://127.0.0.1:1"],
            "--connect",
        ),
        (
            vec!["run", "--exit-policy", "allow everything"],
            "--exit-policy",
        ),
        (vec!["run", "--tunnel", "127.0.0.1:1>internet"], "--tunnel"),
        (
            vec!["run", "--proxy", "1080>rand>example.com:80"],
            "--proxy",
        ),
        (vec!["run", "--control", "localhost"], "--control"),
        (vec!["run", "--circuit-cc", "cubic"], "--circuit-cc"),
        (vec!["run", "--udt-cc", "reno"], "--udt-cc"),
        (vec!["run", "--threads", "0"], "--threads"),
        (
            vec!["--threads", "lots", "tunnel", "1>rand>h:1"],
            "--threads",
        ),
        (
            vec!["tunnel", "1>rand>h:1", "--circuit-cc", "x"],
            "--circuit-cc",
        ),
        (
            vec!["run", "--config", bad_config.to_str().unwrap()],
            "listen_typo",
        ),
        (
            vec!["run", "--config", "/nonexistent/relayd.toml"],
            "relayd.toml",
        ),
        (vec!["run", "--peers", bad_peers.to_str().unwrap()], "peers"),
        (vec!["tunnel", "1000>>example.com:80"], "--tunnel"),
        (vec!["proxy", "x>rand>internet"], "--proxy"),
        (vec!["id", "--dir", "/nonexistent/dir"], "nonexistent"),
        (vec!["run", "--bogus-flag"], "bogus"),
    ];
    for (args, needle) in cases {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if !args.contains(&"--bogus-flag") {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_starts_a_relay_and_sigterm_exits_cleanly() {
    let dir = temp_dir("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("relayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "dir = {:?}\nlisten = [\"udt://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]\nexit_policy = [\"accept 127.0.0.1:*\"]\ncontrol = \"127.0.0.1:0\"\n",
            dir.join("keys").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut r = Relayd::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.listen.len(), 2, "{:?}", r.listen);
    assert!(r.listen[1].contains("@tcp://127.0.0.1:"));
    let (code, out, _) = ctl(&dir.join("keys"), &["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains(&r.id), "{out}");
    assert_eq!(r.terminate(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_check_passes() {
    let _g = heavy();
    let (code, out, err) = run(&["demo", "--check"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("content verified"), "{out}");
}

#[test]
fn control_port_send_delivers_a_message_to_a_neighbour() {
    let da = temp_dir("msg-a");
    let db = temp_dir("msg-b");
    let b = Relayd::start(&[
        "run",
        "--dir",
        db.to_str().unwrap(),
        "--listen",
        "udt://127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
    ]);
    let a = Relayd::start(&[
        "run",
        "--dir",
        da.to_str().unwrap(),
        "--listen",
        "tcp://127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--connect",
        b.addr(),
    ]);
    // A learns B's descriptor from the link it keeps to B.
    let sent = wait_until(std::time::Duration::from_secs(15), || {
        ctl(&da, &["send", &b.id, "hello", "from", "a"]).0 == 0
    });
    assert!(sent, "{:?}", ctl(&da, &["send", &b.id, "hello"]));
    let (code, out, _) = ctl(&db, &["list", "messages"]);
    assert_eq!(code, 0);
    assert!(out.contains("hello from a"), "{out}");
    let (code, out, _) = ctl(&da, &["list", "peers"]);
    assert_eq!(code, 0);
    assert!(out.contains(&b.id) && out.contains(" out"), "{out}");
    drop(a);
    let _ = std::fs::remove_dir_all(&da);
    let _ = std::fs::remove_dir_all(&db);
}
