//! Tunnel and proxy specs: `[BIND_HOST:]PORT>HOP>HOP>...>TARGET`.
//!
//! One string says where to listen, which path to build and where the path
//! leads, so a tunnel fits in one command-line flag or config entry:
//!
//! ```text
//! 1080>rand>rand>rand>internet                   SOCKS5 proxy on 127.0.0.1:1080
//! 127.0.0.1:2222>ID@udt://198.51.100.7:9001>home>rand>10.0.0.5:22   tunnel
//! ```
//!
//! * The bind part is `PORT` (on 127.0.0.1, so nothing is exposed by
//!   accident), `IPV4:PORT`, `[IPV6]:PORT` or `localhost:PORT`.
//! * Each hop is `rand` (a relay drawn from those known, never repeating a
//!   node), `ID@[scheme://]host:port` (a given node), or a name from the
//!   peers file (`[A-Za-z0-9_-]+`; `rand` and `internet` are reserved).
//! * The target is `internet` (the listener is a SOCKS5 proxy and the last
//!   hop must be an exit) or `HOST:PORT` (a tunnel: every connection to the
//!   bind address is carried to that host, which the last hop resolves).
//!
//! There are 1 to [`MAX_HOPS`] hops, the kernel's limit.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use relay_kernel::crypto::onion::MAX_HOPS;
use relay_kernel::relay_msg::valid_host;
use relay_link::PeerAddr;
use thiserror::Error;

/// A spec that could not be parsed; each variant names the part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// Not enough `>`-separated parts.
    #[error("expected [BIND_HOST:]PORT>HOP>...>TARGET with 1 to {max} hops", max = MAX_HOPS)]
    Shape,
    /// Too many hops.
    #[error("{0} hops: at most {max}", max = MAX_HOPS)]
    TooManyHops(usize),
    /// The bind part.
    #[error("bind address {0:?}: expected PORT, IPV4:PORT, [IPV6]:PORT or localhost:PORT")]
    Bind(String),
    /// A hop (numbered from 1).
    #[error("hop {n}: {problem}")]
    Hop {
        /// Which hop, from 1.
        n: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The target.
    #[error("target {0:?}: expected `internet` or HOST:PORT (IPv6 in brackets, port 1-65535)")]
    Target(String),
}

/// One hop of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hop {
    /// A node given by id and address.
    Peer(PeerAddr),
    /// A node named in the peers file.
    Name(String),
    /// A relay chosen at random.
    Rand,
}

impl Hop {
    /// Parses one hop.
    pub fn parse(s: &str) -> Result<Hop, String> {
        match s {
            "rand" => Ok(Hop::Rand),
            "internet" => Err("`internet` can only be the target (the last part)".into()),
            _ if s.contains('@') => PeerAddr::parse(s).map(Hop::Peer).map_err(|e| e.to_string()),
            _ if valid_name(s) => Ok(Hop::Name(s.to_string())),
            _ => Err(format!(
                "{s:?} is not `rand`, ID@[scheme://]host:port or a peer name ([A-Za-z0-9_-]+)"
            )),
        }
    }
}

/// Is `s` usable as a peer name: `[A-Za-z0-9_-]+` and not a reserved word
/// (`rand`, `internet`).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && s != "rand"
        && s != "internet"
}

/// Where the path leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpecTarget {
    /// A SOCKS5 proxy: each connection names its own destination.
    Internet,
    /// A tunnel to this host (name, IPv4 or IPv6) and port.
    Host(String, u16),
}

/// A parsed spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    /// Where to listen.
    pub bind: SocketAddr,
    /// The path, first hop first.
    pub hops: Vec<Hop>,
    /// Where it leads.
    pub target: SpecTarget,
}

impl Spec {
    /// Parses `[BIND_HOST:]PORT>HOP>...>TARGET`.
    pub fn parse(s: &str) -> Result<Spec, SpecError> {
        let parts: Vec<&str> = s.trim().split('>').map(str::trim).collect();
        let (bind, rest) = parts.split_first().ok_or(SpecError::Shape)?;
        let (target, hops) = rest.split_last().ok_or(SpecError::Shape)?;
        if hops.is_empty() {
            return Err(SpecError::Shape);
        }
        if hops.len() > MAX_HOPS {
            return Err(SpecError::TooManyHops(hops.len()));
        }
        let bind = parse_bind(bind).ok_or_else(|| SpecError::Bind(bind.to_string()))?;
        let hops = hops
            .iter()
            .enumerate()
            .map(|(i, h)| Hop::parse(h).map_err(|problem| SpecError::Hop { n: i + 1, problem }))
            .collect::<Result<Vec<Hop>, SpecError>>()?;
        let target = parse_target(target).ok_or_else(|| SpecError::Target(target.to_string()))?;
        Ok(Spec { bind, hops, target })
    }

    /// Is this a SOCKS5 proxy (target `internet`) rather than a tunnel?
    pub fn is_proxy(&self) -> bool {
        self.target == SpecTarget::Internet
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_bind(s: &str) -> Option<SocketAddr> {
    if let Some(port) = parse_port(s) {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            parse_port(port)?,
        ));
    }
    s.parse().ok()
}

fn parse_target(s: &str) -> Option<SpecTarget> {
    if s == "internet" {
        return Some(SpecTarget::Internet);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = parse_port(port).filter(|&p| p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?.to_string()
        }
        None if host.parse::<Ipv4Addr>().is_ok() || valid_host(host) => host.to_string(),
        None => return None,
    };
    Some(SpecTarget::Host(host, port))
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hop::Peer(p) => write!(f, "{p}"),
            Hop::Name(n) => f.write_str(n),
            Hop::Rand => f.write_str("rand"),
        }
    }
}

impl fmt::Display for SpecTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecTarget::Internet => f.write_str("internet"),
            SpecTarget::Host(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            SpecTarget::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// The canonical spec text (the bind address always with its host), which
/// [`Spec::parse`] reads back to the same spec.
impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bind)?;
        for h in &self.hops {
            write!(f, ">{h}")?;
        }
        write!(f, ">{}", self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use relay_kernel::NodeId;
    use relay_link::Scheme;

    fn id() -> NodeId {
        NodeId::from_identity_key(&[7; 32])
    }

    #[test]
    fn full_tunnel_spec() {
        let text = format!(
            "127.0.0.1:1000>{}@udt://127.0.0.1:9001>peer2>rand>example.com:80",
            id()
        );
        let s = Spec::parse(&text).unwrap();
        assert_eq!(s.bind, "127.0.0.1:1000".parse().unwrap());
        assert_eq!(s.hops.len(), 3);
        let first = PeerAddr {
            id: id(),
            link: relay_link::LinkAddr {
                scheme: Scheme::Udt,
                addr: "127.0.0.1:9001".parse().unwrap(),
            },
        };
        assert_eq!(s.hops[0], Hop::Peer(first));
        assert_eq!(s.hops[1], Hop::Name("peer2".into()));
        assert_eq!(s.hops[2], Hop::Rand);
        assert_eq!(s.target, SpecTarget::Host("example.com".into(), 80));
        assert!(!s.is_proxy());
        assert_eq!(s.to_string(), text);
    }

    #[test]
    fn proxy_spec_with_default_bind_host() {
        let s = Spec::parse("1080>rand>rand>rand>internet").unwrap();
        assert_eq!(s.bind, "127.0.0.1:1080".parse().unwrap());
        assert_eq!(s.hops, vec![Hop::Rand; 3]);
        assert_eq!(s.target, SpecTarget::Internet);
        assert!(s.is_proxy());
        assert_eq!(s.to_string(), "127.0.0.1:1080>rand>rand>rand>internet");
    }

    #[test]
    fn bind_forms() {
        let b = |s: &str| Spec::parse(&format!("{s}>rand>internet")).map(|s| s.bind);
        assert_eq!(b("[::1]:1080").unwrap(), "[::1]:1080".parse().unwrap());
        assert_eq!(b("0.0.0.0:9").unwrap(), "0.0.0.0:9".parse().unwrap());
        assert_eq!(b("localhost:7").unwrap(), "127.0.0.1:7".parse().unwrap());
        assert_eq!(b("0").unwrap(), "127.0.0.1:0".parse().unwrap());
        for bad in [
            "", "70000", "::1:1080", "host:80", "1.2.3.4", "+80", "[::1]",
        ] {
            assert_eq!(b(bad), Err(SpecError::Bind(bad.into())), "{bad}");
        }
    }

    #[test]
    fn target_forms() {
        let t = |s: &str| Spec::parse(&format!("1>rand>{s}")).map(|s| s.target);
        assert_eq!(
            t("10.0.0.5:22").unwrap(),
            SpecTarget::Host("10.0.0.5".into(), 22)
        );
        assert_eq!(t("[::1]:22").unwrap(), SpecTarget::Host("::1".into(), 22));
        assert_eq!(
            t("[2001:DB8::1]:22").unwrap(),
            SpecTarget::Host("2001:db8::1".into(), 22)
        );
        assert_eq!(
            t("my_host-1:65535").unwrap(),
            SpecTarget::Host("my_host-1".into(), 65535)
        );
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:65536",
            "exa mple.com:80",
            "::1:80",
            "[::1:80",
            "[nope]:80",
            ":80",
            "Internet",
        ] {
            assert_eq!(t(bad), Err(SpecError::Target(bad.into())), "{bad}");
        }
    }

    #[test]
    fn hop_counts() {
        let spec = |n: usize| format!("1080>{}internet", "rand>".repeat(n));
        assert_eq!(Spec::parse(&spec(0)), Err(SpecError::Shape));
        assert_eq!(Spec::parse(&spec(1)).unwrap().hops.len(), 1);
        assert_eq!(Spec::parse(&spec(8)).unwrap().hops.len(), 8);
        assert_eq!(Spec::parse(&spec(9)), Err(SpecError::TooManyHops(9)));
        assert_eq!(Spec::parse("1080"), Err(SpecError::Shape));
        assert_eq!(Spec::parse(""), Err(SpecError::Shape));
    }

    #[test]
    fn errors_name_the_hop() {
        let e = Spec::parse("1080>rand>bad name>internet").unwrap_err();
        assert!(matches!(e, SpecError::Hop { n: 2, .. }), "{e:?}");
        assert!(e.to_string().starts_with("hop 2: "), "{e}");
        let e = Spec::parse("1080>rand>rand>x@udt://127.0.0.1:1>internet").unwrap_err();
        assert!(e.to_string().starts_with("hop 3: bad peer address"), "{e}");
        let e = Spec::parse(&format!("1080>{}@ftp://127.0.0.1:1>internet", id())).unwrap_err();
        assert!(e.to_string().contains("ftp"), "{e}");
        let e = Spec::parse("1080>internet>internet").unwrap_err();
        assert!(e.to_string().starts_with("hop 1: `internet`"), "{e}");
        let e = Spec::parse("1080>rand>>internet").unwrap_err();
        assert!(matches!(e, SpecError::Hop { n: 2, .. }), "{e:?}");
    }

    #[test]
    fn names() {
        assert!(valid_name("peer-2_B"));
        for bad in ["", "rand", "internet", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    fn arb_hop() -> impl Strategy<Value = Hop> {
        prop_oneof![
            Just(Hop::Rand),
            "[a-zA-Z0-9_-]{1,20}"
                .prop_filter("reserved", |s| valid_name(s))
                .prop_map(Hop::Name),
            (any::<[u8; 32]>(), any::<[u8; 4]>(), 1u16.., 0..4usize).prop_map(|(k, a, port, s)| {
                let scheme = [Scheme::Udt, Scheme::Quic, Scheme::S2n, Scheme::Tcp][s];
                Hop::Peer(PeerAddr {
                    id: NodeId::from_identity_key(&k),
                    link: relay_link::LinkAddr {
                        scheme,
                        addr: SocketAddr::new(Ipv4Addr::from(a).into(), port),
                    },
                })
            }),
        ]
    }

    fn arb_target() -> impl Strategy<Value = SpecTarget> {
        prop_oneof![
            Just(SpecTarget::Internet),
            ("[a-z][a-z0-9.-]{0,30}", 1u16..).prop_map(|(h, p)| SpecTarget::Host(h, p)),
            (any::<[u8; 16]>(), 1u16..).prop_map(|(a, p)| {
                SpecTarget::Host(std::net::Ipv6Addr::from(a).to_string(), p)
            }),
        ]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(
            ip in any::<IpAddr>(),
            port in any::<u16>(),
            hops in proptest::collection::vec(arb_hop(), 1..=8),
            target in arb_target(),
        ) {
            let s = Spec { bind: SocketAddr::new(ip, port), hops, target };
            prop_assert_eq!(Spec::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,120}") {
            let _ = Spec::parse(&s);
        }

        #[test]
        fn spec_like_input_never_panics(s in "[0-9a-z:.\\[\\]@/>_-]{0,80}") {
            if let Ok(spec) = Spec::parse(&s) {
                prop_assert_eq!(Spec::parse(&spec.to_string()).unwrap(), spec);
            }
        }
    }
}
