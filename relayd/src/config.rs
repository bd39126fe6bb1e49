//! The TOML configuration file for `relayd run --config FILE`.
//!
//! Each key mirrors a `relayd run` flag of the same name (with `_` for
//! `-`), so what an operator learns on the command line carries over; see
//! `docs/config.md`. Values stay strings here, exactly as a flag would give
//! them, because the command line merges flags into them; but [`Config::load`]
//! parses every value with the parser the daemon will use, so a mistake is
//! reported at startup as `config FILE: key: problem` rather than later, or
//! never. Unknown keys are errors (`deny_unknown_fields`): a misspelt
//! `exit_polcy` must not silently leave a node with the default policy.
//!
//! Relative paths (`dir`, `peers`) are taken relative to the directory of
//! the config file, so a config works the same whatever directory the
//! daemon is started from (systemd starts it in `/`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use relay_link::{LinkAddr, PeerAddr};
use serde::Deserialize;
use thiserror::Error;

use crate::exit_policy::ExitPolicy;
use crate::peers::Peers;
use crate::spec::Spec;

/// Config files are short; refusing huge ones bounds what a wrong path can
/// make us read.
const MAX_FILE_LEN: u64 = 1 << 20;

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is implausibly large.
    #[error("config {}: larger than {max} bytes", .path.display(), max = MAX_FILE_LEN)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid TOML, a wrong type, or an unknown key (the message names
    /// it, with line and column).
    #[error("config {}: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A value that does not parse.
    #[error("config {}: {key}: {problem}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, with the index for list entries (`listen[1]`).
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// The contents of a config file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Key and state directory.
    pub dir: Option<PathBuf>,
    /// Link listen addresses, `[scheme://]host:port`.
    pub listen: Vec<String>,
    /// Peers to keep links to, `ID@[scheme://]host:port`.
    pub connect: Vec<String>,
    /// Trackers to publish to and fetch relays from, `ID@[scheme://]host:port`.
    pub tracker: Vec<String>,
    /// Serve relay lists to other nodes.
    pub act_as_tracker: bool,
    /// Exit policy rules (Tor syntax); none means not an exit.
    pub exit_policy: Vec<String>,
    /// Control port address, loopback only.
    pub control: Option<String>,
    /// Tunnel specs (`[BIND:]PORT>HOP>...>HOST:PORT`).
    pub tunnel: Vec<String>,
    /// SOCKS5 proxy specs (`[BIND:]PORT>HOP>...>internet`).
    pub proxy: Vec<String>,
    /// Peers file (names for hops).
    pub peers: Option<PathBuf>,
    /// Log filter (`tracing` / `RUST_LOG` syntax, e.g. `info` or
    /// `relayd=debug,warn`).
    pub log: Option<String>,
    /// Circuit congestion control: `vegas` or `bbr`.
    pub circuit_cc: Option<String>,
    /// udt links' congestion control: `bbr`, `cubic` or `udt`.
    pub udt_cc: Option<String>,
    /// Runtime threads (`--threads`), 1 to [`crate::runtime::MAX_THREADS`].
    pub threads: Option<usize>,
}

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.len() > MAX_FILE_LEN {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let base = path.parent().unwrap_or(Path::new(""));
        Config::parse_at(&text, path, base)
    }

    /// Parses and checks config text; relative paths are taken relative to
    /// `base`, and errors name `origin`.
    pub fn parse_at(text: &str, origin: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_path_buf(),
            message: match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    let src: String = text
                        .lines()
                        .nth(line - 1)
                        .unwrap_or("")
                        .trim()
                        .chars()
                        .take(60)
                        .collect();
                    format!(
                        "line {line}, column {col} ({src}): {}",
                        e.message().trim_end()
                    )
                }
                None => e.message().trim_end().to_string(),
            },
        })?;
        for p in [&mut c.dir, &mut c.peers].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.check().map_err(|(key, problem)| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            problem,
        })?;
        Ok(c)
    }

    /// Every value through the parser the daemon uses; `(key, problem)`.
    fn check(&self) -> Result<(), (String, String)> {
        each("listen", &self.listen, |s| {
            LinkAddr::parse(s).map(drop).map_err(|e| e.to_string())
        })?;
        each("connect", &self.connect, |s| {
            PeerAddr::parse(s).map(drop).map_err(|e| e.to_string())
        })?;
        each("tracker", &self.tracker, |s| {
            PeerAddr::parse(s).map(drop).map_err(|e| e.to_string())
        })?;
        ExitPolicy::parse_rules(&self.exit_policy)
            .map_err(|e| ("exit_policy".to_string(), e.to_string()))?;
        if let Some(c) = &self.control {
            let addr: SocketAddr = c.parse().map_err(|_| {
                (
                    "control".to_string(),
                    format!("{c:?} is not IP:PORT (e.g. 127.0.0.1:9051)"),
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err((
                    "control".into(),
                    format!("{c:?}: the control port must be on a loopback address"),
                ));
            }
        }
        each("tunnel", &self.tunnel, |s| {
            let spec = Spec::parse(s).map_err(|e| e.to_string())?;
            if spec.is_proxy() {
                return Err("target `internet` is for `proxy`; a tunnel needs HOST:PORT".into());
            }
            Ok(())
        })?;
        each("proxy", &self.proxy, |s| {
            let spec = Spec::parse(s).map_err(|e| e.to_string())?;
            if !spec.is_proxy() {
                return Err(
                    "a proxy's target must be `internet` (HOST:PORT is for `tunnel`)".into(),
                );
            }
            Ok(())
        })?;
        if let Some(p) = &self.peers {
            Peers::load(p).map_err(|e| ("peers".to_string(), e.to_string()))?;
        }
        if let Some(cc) = &self.circuit_cc {
            cc.parse::<relay_kernel::flow::CcAlgorithm>()
                .map_err(|e| ("circuit_cc".to_string(), e))?;
        }
        if let Some(cc) = &self.udt_cc {
            cc.parse::<crate::daemon::links::UdtCc>()
                .map_err(|e| ("udt_cc".to_string(), e))?;
        }
        if let Some(n) = self.threads {
            crate::runtime::check_threads(n).map_err(|e| ("threads".to_string(), e))?;
        }
        if let Some(l) = &self.log {
            if l.trim().is_empty() || !l.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    "log".into(),
                    format!("{l:?}: expected a filter such as \"info\" or \"relayd=debug,warn\""),
                ));
            }
            tracing_subscriber::EnvFilter::try_new(l)
                .map_err(|e| ("log".to_string(), format!("{l:?}: {e}")))?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn each(
    key: &str,
    items: &[String],
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), (String, String)> {
    for (i, s) in items.iter().enumerate() {
        check(s).map_err(|problem| (format!("{key}[{i}]"), format!("{s:?}: {problem}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use relay_kernel::NodeId;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_at(text, Path::new("test.toml"), Path::new("/etc/relayd"))
    }

    fn id(n: u8) -> NodeId {
        NodeId::from_identity_key(&[n; 32])
    }

    fn invalid(text: &str) -> (String, String) {
        match parse(text).unwrap_err() {
            ConfigError::Invalid { key, problem, .. } => (key, problem),
            other => (String::new(), other.to_string()),
        }
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_key() {
        let text = format!(
            r#"
dir = "state"
listen = ["udt://0.0.0.0:9001", "tcp://[::]:9001"]
connect = ["{a}@udt://127.0.0.1:9002"]
tracker = ["{b}@quic://127.0.0.1:9003"]
act_as_tracker = true
exit_policy = ["reject *:25", "accept *:80, accept *:443"]
control = "127.0.0.1:9051"
tunnel = ["2222>rand>{a}@udt://127.0.0.1:9002>10.0.0.5:22"]
proxy = ["1080>rand>rand>rand>internet"]
log = "relayd=debug,warn"
circuit_cc = "bbr"
udt_cc = "cubic"
threads = 2
"#,
            a = id(1),
            b = id(2)
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.dir, Some(PathBuf::from("/etc/relayd/state")));
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.connect, [format!("{}@udt://127.0.0.1:9002", id(1))]);
        assert!(c.act_as_tracker);
        assert_eq!(c.exit_policy.len(), 2);
        assert_eq!(c.control.as_deref(), Some("127.0.0.1:9051"));
        assert_eq!(c.tunnel.len(), 1);
        assert_eq!(c.proxy.len(), 1);
        assert_eq!(c.log.as_deref(), Some("relayd=debug,warn"));
        assert_eq!(c.peers, None);
        assert_eq!(c.circuit_cc.as_deref(), Some("bbr"));
        assert_eq!(c.udt_cc.as_deref(), Some("cubic"));
        assert_eq!(c.threads, Some(2));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("listen = []\nexit_polcy = [\"accept *:*\"]\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("config test.toml: "), "{msg}");
        assert!(
            msg.contains(
                "line 2, column 1 (exit_polcy = [\"accept *:*\"]): unknown field `exit_polcy`"
            ),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn type_errors_show_the_line() {
        let e = parse("dir = \"x\"\nlisten = \"udt://0.0.0.0:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config test.toml: line 2, column 10 (listen = \"udt://0.0.0.0:1\"): "),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_and_bad_toml() {
        for text in [
            "listen = \"udt://0.0.0.0:1\"",
            "act_as_tracker = \"yes\"",
            "dir = 3",
            "threads = \"2\"",
            "threads = -1",
            "listen = [",
        ] {
            assert!(
                matches!(parse(text), Err(ConfigError::Syntax { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_values_name_key_and_entry() {
        let (key, problem) = invalid("listen = [\"udt://127.0.0.1:1\", \"ftp://1.2.3.4:5\"]");
        assert_eq!(key, "listen[1]");
        assert!(problem.contains("ftp"), "{problem}");
        let (key, _) = invalid("connect = [\"nobody@127.0.0.1:1\"]");
        assert_eq!(key, "connect[0]");
        let (key, _) = invalid("tracker = [\"127.0.0.1:1\"]");
        assert_eq!(key, "tracker[0]");
        let (key, problem) = invalid("exit_policy = [\"accept *:*\", \"allow *:80\"]");
        assert_eq!(key, "exit_policy");
        assert!(problem.contains("\"allow\""), "{problem}");
        let (key, _) = invalid("control = \"localhost\"");
        assert_eq!(key, "control");
        let (key, problem) = invalid("control = \"0.0.0.0:9051\"");
        assert_eq!(key, "control");
        assert!(problem.contains("loopback"), "{problem}");
        let (key, problem) = invalid("tunnel = [\"1>rand>bad name>h:1\"]");
        assert_eq!(key, "tunnel[0]");
        assert!(problem.contains("hop 2"), "{problem}");
        let (key, _) = invalid("tunnel = [\"1>rand>internet\"]");
        assert_eq!(key, "tunnel[0]");
        let (key, _) = invalid("proxy = [\"1>rand>example.com:80\"]");
        assert_eq!(key, "proxy[0]");
        let (key, _) = invalid("log = \"\"");
        assert_eq!(key, "log");
        let (key, _) = invalid("log = \"relayd=loud\"");
        assert_eq!(key, "log");
        let (key, problem) = invalid("circuit_cc = \"cubic\"");
        assert_eq!(key, "circuit_cc");
        assert!(problem.contains("vegas or bbr"), "{problem}");
        let (key, problem) = invalid("udt_cc = \"vegas\"");
        assert_eq!(key, "udt_cc");
        assert!(problem.contains("bbr, cubic or udt"), "{problem}");
        for n in [0, 65] {
            let (key, problem) = invalid(&format!("threads = {n}"));
            assert_eq!(key, "threads");
            assert!(problem.contains("from 1 to 64"), "{problem}");
        }
        let e = parse("proxy = [\"x\"]").unwrap_err().to_string();
        assert!(e.starts_with("config test.toml: proxy[0]: \"x\": "), "{e}");
    }

    #[test]
    fn load_resolves_paths_and_checks_the_peers_file() {
        let dir = std::env::temp_dir().join(format!("relayd-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("relayd.toml");
        std::fs::write(&conf, "dir = \"keys\"\npeers = \"peers\"\n").unwrap();
        let e = Config::load(&conf).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "peers"),
            "{e:?}"
        );
        std::fs::write(dir.join("peers"), format!("home {}@127.0.0.1:9\n", id(3))).unwrap();
        let c = Config::load(&conf).unwrap();
        assert_eq!(c.dir, Some(dir.join("keys")));
        assert_eq!(c.peers, Some(dir.join("peers")));
        std::fs::write(dir.join("peers"), "home nobody@127.0.0.1:9\n").unwrap();
        let e = Config::load(&conf).unwrap_err().to_string();
        assert!(
            e.contains("peers: peers file ") && e.contains("line 1"),
            "{e}"
        );
        assert!(matches!(
            Config::load(dir.join("missing.toml")),
            Err(ConfigError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absolute_paths_are_kept() {
        let c = parse("dir = \"/var/lib/relayd\"").unwrap();
        assert_eq!(c.dir, Some(PathBuf::from("/var/lib/relayd")));
    }

    #[test]
    fn dist_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/relayd.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.dir, Some(PathBuf::from("/var/lib/relayd")));
        assert!(!c.listen.is_empty());
    }

    /// Every ```toml block in docs/config.md is a valid config.
    #[test]
    fn docs_examples_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let mut blocks = 0;
        let mut rest = doc.as_str();
        while let Some(start) = rest.find("```toml\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").unwrap();
            let r = parse(&body[..end]);
            assert!(
                r.is_ok(),
                "docs/config.md block {}: {:?}\n{}",
                blocks + 1,
                r.err(),
                &body[..end]
            );
            blocks += 1;
            rest = &body[end + 3..];
        }
        assert!(blocks >= 5, "{blocks} toml blocks");
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn keyish_input_never_panics(
            key in "(dir|listen|connect|tracker|act_as_tracker|exit_policy|control|tunnel|proxy|log)",
            // No ':' so no value is a resolvable host:port (no DNS in tests).
            value in "[\\[\\]\"a-z0-9/.*>@ ,_-]{0,40}",
        ) {
            let _ = parse(&format!("{key} = {value}\n"));
        }
    }
}
