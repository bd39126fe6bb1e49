//! The peers file: short names for nodes, so specs can say `home` instead
//! of a 52-character id and an address.
//!
//! ```text
//! # NAME  ID@[scheme://]host:port
//! home    ab3d...q7@udt://198.51.100.7:9001
//! office  k2x9...4a@quic://[2001:db8::5]:443   # comments may follow
//! ```
//!
//! One peer per line, `#` starts a comment, blank lines are ignored. Names
//! follow [`valid_name`] (`[A-Za-z0-9_-]+`, not `rand` or `internet`, which
//! specs reserve). A name used twice is an error rather than "last one wins",
//! because a silently replaced hop would send traffic through a node the
//! operator did not mean. Host names in addresses are resolved when the file
//! is read (like every address in configuration).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use relay_link::PeerAddr;
use thiserror::Error;

use crate::spec::valid_name;

/// Peers files are a few lines; refusing huge ones bounds what a wrong path
/// (a log file, a device) can make us read.
const MAX_FILE_LEN: u64 = 1 << 20;

/// Why a peers file was refused.
#[derive(Debug, Error)]
pub enum PeersError {
    /// The file could not be read.
    #[error("peers file {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is implausibly large.
    #[error("peers file {}: larger than {max} bytes", .path.display(), max = MAX_FILE_LEN)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A bad line.
    #[error("{}line {line}: {problem}", prefix(.path.as_deref()))]
    Line {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

fn prefix(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("peers file {}: ", p.display()),
        None => "peers file: ".to_string(),
    }
}

/// Named peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    by_name: BTreeMap<String, PeerAddr>,
}

impl Peers {
    /// Parses the text of a peers file.
    pub fn parse(text: &str) -> Result<Peers, PeersError> {
        let mut by_name = BTreeMap::new();
        let mut first_line = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |problem: String| PeersError::Line {
                path: None,
                line,
                problem,
            };
            let content = raw.split_once('#').map_or(raw, |(c, _)| c).trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let (Some(name), Some(addr), None) = (words.next(), words.next(), words.next()) else {
                return Err(err(format!(
                    "expected `NAME ID@[scheme://]host:port`, got {content:?}"
                )));
            };
            if !valid_name(name) {
                return Err(err(format!(
                    "bad name {name:?}: use [A-Za-z0-9_-], at most 64 characters, \
                     not `rand` or `internet`"
                )));
            }
            if let Some(first) = first_line.get(name) {
                return Err(err(format!(
                    "duplicate name {name:?} (first on line {first})"
                )));
            }
            let peer = PeerAddr::parse(addr).map_err(|e| err(format!("{name}: {e}")))?;
            first_line.insert(name.to_string(), line);
            by_name.insert(name.to_string(), peer);
        }
        Ok(Peers { by_name })
    }

    /// Reads and parses a peers file; errors name the file and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Peers, PeersError> {
        let path = path.as_ref();
        let io = |source| PeersError::Io {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.len() > MAX_FILE_LEN {
            return Err(PeersError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Peers::parse(&text).map_err(|e| match e {
            PeersError::Line { line, problem, .. } => PeersError::Line {
                path: Some(path.to_path_buf()),
                line,
                problem,
            },
            other => other,
        })
    }

    /// The peer called `name`.
    pub fn get(&self, name: &str) -> Option<&PeerAddr> {
        self.by_name.get(name)
    }

    /// All peers, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PeerAddr)> {
        self.by_name.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// How many peers.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// No peers?
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use relay_kernel::NodeId;
    use relay_link::Scheme;

    fn id(n: u8) -> NodeId {
        NodeId::from_identity_key(&[n; 32])
    }

    #[test]
    fn parses_names_comments_and_blank_lines() {
        let text = format!(
            "# my peers\n\nhome {}@udt://127.0.0.1:9001\n  office\t{}@quic://[::1]:443  # work\nlab {}@127.0.0.1:1\n",
            id(1),
            id(2),
            id(3)
        );
        let p = Peers::parse(&text).unwrap();
        assert_eq!(p.len(), 3);
        let home = p.get("home").unwrap();
        assert_eq!(home.id, id(1));
        assert_eq!(home.link.scheme, Scheme::Udt);
        assert_eq!(home.link.addr, "127.0.0.1:9001".parse().unwrap());
        let office = p.get("office").unwrap();
        assert_eq!(office.link.scheme, Scheme::Quic);
        assert_eq!(office.link.addr, "[::1]:443".parse().unwrap());
        assert_eq!(p.get("lab").unwrap().link.scheme, Scheme::Udt);
        assert_eq!(p.get("nope"), None);
        let names: Vec<&str> = p.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["home", "lab", "office"]);
    }

    #[test]
    fn empty_file_is_no_peers() {
        assert!(Peers::parse("").unwrap().is_empty());
        assert!(Peers::parse("# nothing\n\n   \n").unwrap().is_empty());
        assert_eq!(Peers::parse("").unwrap(), Peers::default());
    }

    fn line_of(text: &str) -> (usize, String) {
        match Peers::parse(text).unwrap_err() {
            PeersError::Line { line, problem, .. } => (line, problem),
            other => (0, other.to_string()),
        }
    }

    #[test]
    fn errors_carry_line_numbers() {
        let good = format!("a {}@127.0.0.1:1", id(1));
        let (line, problem) = line_of(&format!("{good}\n\n{good}\n"));
        assert_eq!(line, 3);
        assert!(
            problem.contains("duplicate name \"a\" (first on line 1)"),
            "{problem}"
        );

        let (line, problem) = line_of(&format!("{good}\nb\n"));
        assert_eq!(line, 2);
        assert!(problem.contains("expected"), "{problem}");

        let (line, problem) = line_of(&format!("# x\n{good} extra\n"));
        assert_eq!(line, 2);
        assert!(problem.contains("extra"), "{problem}");

        let (line, problem) = line_of("rand x@127.0.0.1:1");
        assert_eq!(line, 1);
        assert!(problem.contains("bad name \"rand\""), "{problem}");

        let (line, problem) = line_of(&format!("\nb.c {}@127.0.0.1:1", id(1)));
        assert_eq!(line, 2);
        assert!(problem.contains("bad name"), "{problem}");

        let (line, problem) = line_of("\n\n\nz nobody@127.0.0.1:1");
        assert_eq!(line, 4);
        assert!(problem.starts_with("z: bad peer address"), "{problem}");
        let e = Peers::parse("\n\n\nz nobody@127.0.0.1:1").unwrap_err();
        assert!(e.to_string().starts_with("peers file: line 4: z: "), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("relayd-peers-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("peers");
        std::fs::write(&path, format!("ok {}@127.0.0.1:5\nbad\n", id(9))).unwrap();
        let e = Peers::load(&path).unwrap_err();
        assert!(matches!(e, PeersError::Line { line: 2, .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("peers file {}: line 2: ", path.display())),
            "{e}"
        );
        std::fs::write(&path, format!("ok {}@127.0.0.1:5\n", id(9))).unwrap();
        assert_eq!(Peers::load(&path).unwrap().get("ok").unwrap().id, id(9));
        let missing = dir.join("missing");
        assert!(matches!(Peers::load(&missing), Err(PeersError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = Peers::parse(&s);
        }

        #[test]
        fn generated_files_parse_back(
            entries in proptest::collection::btree_map("[a-zA-Z0-9_-]{1,12}", (any::<[u8; 32]>(), any::<u16>()), 0..8),
        ) {
            let entries: Vec<_> = entries.into_iter().filter(|(n, _)| valid_name(n)).collect();
            let mut text = String::from("# generated\n");
            for (name, (key, port)) in &entries {
                text.push_str(&format!("{name} {}@tcp://127.0.0.1:{port}\n", NodeId::from_identity_key(key)));
            }
            let p = Peers::parse(&text).unwrap();
            prop_assert_eq!(p.len(), entries.len());
            for (name, (key, port)) in &entries {
                let got = p.get(name).unwrap();
                prop_assert_eq!(got.id, NodeId::from_identity_key(key));
                prop_assert_eq!(got.link.addr.port(), *port);
                prop_assert_eq!(got.link.scheme, Scheme::Tcp);
            }
        }
    }
}
