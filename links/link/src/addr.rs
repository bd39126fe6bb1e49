//! Peer addresses: `ID@[scheme://]host:port`, udt by default.

use std::net::{SocketAddr, ToSocketAddrs};

use relay_kernel::NodeId;

use crate::error::LinkError;

/// A link kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Our reliable UDP (the default).
    Udt,
    /// QUIC via quinn.
    Quic,
    /// QUIC via s2n-quic.
    S2n,
    /// TCP.
    Tcp,
}

impl Scheme {
    /// The scheme's name in addresses.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Udt => "udt",
            Scheme::Quic => "quic",
            Scheme::S2n => "s2n",
            Scheme::Tcp => "tcp",
        }
    }

    /// Parses a scheme name.
    pub fn parse(s: &str) -> Result<Scheme, LinkError> {
        Ok(match s {
            "udt" => Scheme::Udt,
            "quic" => Scheme::Quic,
            "s2n" => Scheme::S2n,
            "tcp" => Scheme::Tcp,
            other => return Err(LinkError::UnsupportedScheme(other.to_string())),
        })
    }
}

/// A link endpoint: scheme and socket address (`udt://127.0.0.1:9001`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkAddr {
    /// The link kind.
    pub scheme: Scheme,
    /// Where.
    pub addr: SocketAddr,
}

impl LinkAddr {
    /// Parses `[scheme://]host:port`; names are resolved now (this is
    /// configuration, never a destination from a client).
    pub fn parse(s: &str) -> Result<LinkAddr, LinkError> {
        let bad = || LinkError::BadAddress(s.to_string());
        let (scheme, rest) = match s.split_once("://") {
            Some((sch, rest)) => (Scheme::parse(sch)?, rest),
            None => (Scheme::Udt, s),
        };
        let addr = rest
            .to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .ok_or_else(bad)?;
        Ok(LinkAddr { scheme, addr })
    }
}

impl std::fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.addr)
    }
}

/// A peer: its node id and link address (`ID@udt://127.0.0.1:9001`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// Node id the link must authenticate.
    pub id: NodeId,
    /// Where.
    pub link: LinkAddr,
}

impl PeerAddr {
    /// Parses `ID@[scheme://]host:port`.
    pub fn parse(s: &str) -> Result<PeerAddr, LinkError> {
        let bad = || LinkError::BadAddress(s.to_string());
        let (id, rest) = s.split_once('@').ok_or_else(bad)?;
        let id: NodeId = id.parse().map_err(|_| bad())?;
        Ok(PeerAddr {
            id,
            link: LinkAddr::parse(rest)?,
        })
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_addresses() {
        let id = NodeId::from_identity_key(&[1; 32]);
        let p = PeerAddr::parse(&format!("{id}@quic://127.0.0.1:9001")).unwrap();
        assert_eq!(p.link.scheme, Scheme::Quic);
        assert_eq!(p.link.addr.port(), 9001);
        assert_eq!(PeerAddr::parse(&p.to_string()).unwrap(), p);
        let d = PeerAddr::parse(&format!("{id}@127.0.0.1:1")).unwrap();
        assert_eq!(d.link.scheme, Scheme::Udt);
        for bad in [
            "",
            "x@127.0.0.1:1",
            &format!("{id}@ftp://127.0.0.1:1"),
            &format!("{id}@nohost"),
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
