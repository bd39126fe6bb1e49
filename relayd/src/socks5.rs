//! The server side of SOCKS5 (RFC 1928) with username/password
//! authentication (RFC 1929), and the SOCKS UDP relay header.
//!
//! Applications reach circuits through this proxy, so everything here reads
//! bytes from a possibly hostile local client: every read is a fixed-size
//! `read_exact` (at most 255 bytes per field, nothing allocated from a length
//! the client chose beyond that), and every malformed input is an error,
//! never a panic. There are no timeouts inside; the caller wraps
//! [`handshake`] in `tokio::time::timeout`, which keeps this code
//! runtime-agnostic and testable on in-memory streams.
//!
//! Credentials are accepted whatever they are: like Tor's
//! `IsolateSOCKSAuth`, they only choose which circuit a connection shares,
//! so clients that send different credentials get separate circuits.
//!
//! Host names are kept as names (resolved at the exit, never here, so no DNS
//! leaks) and must pass the kernel's [`valid_host`] check, the same one the
//! exit applies to BEGIN; a name that is an IP literal becomes an address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use relay_kernel::relay_msg::valid_host;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 0x05;
const AUTH_VERSION: u8 = 0x01;
const METHOD_NONE: u8 = 0x00;
const METHOD_USERPASS: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const CMD_UDP_ASSOCIATE: u8 = 0x03;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// Why a SOCKS exchange failed.
#[derive(Debug, Error)]
pub enum SocksError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The client closed the connection mid-message.
    #[error("client closed the connection in the middle of a SOCKS message")]
    Truncated,
    /// A SOCKS4 client.
    #[error("SOCKS4 request; only SOCKS5 is supported")]
    Socks4,
    /// Looks like an HTTP request (a proxy configured as an HTTP proxy).
    #[error("HTTP request on a SOCKS5 port (configure the client for SOCKS5)")]
    Http,
    /// Some other protocol.
    #[error("not SOCKS5: version byte {0:#04x}")]
    BadVersion(u8),
    /// None of the offered methods is acceptable.
    #[error("client offered no acceptable authentication method")]
    NoAcceptableAuth,
    /// The username/password subnegotiation has the wrong version.
    #[error("username/password subnegotiation version {0:#04x}, expected 0x01")]
    BadAuthVersion(u8),
    /// BIND or an unknown command.
    #[error("unsupported SOCKS command {0:#04x}")]
    UnsupportedCommand(u8),
    /// An unknown address type.
    #[error("unsupported SOCKS address type {0:#04x}")]
    BadAddressType(u8),
    /// A host name that is empty, too long or has characters a host name
    /// cannot have.
    #[error("bad host name in SOCKS request")]
    BadDomain,
    /// A UDP datagram fragment (fragmentation is not supported: dropped).
    #[error("fragmented SOCKS UDP datagram (FRAG {0}) dropped")]
    Fragmented(u8),
    /// A UDP datagram too short for its header.
    #[error("SOCKS UDP datagram shorter than its header")]
    ShortDatagram,
}

impl From<std::io::Error> for SocksError {
    fn from(e: std::io::Error) -> SocksError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SocksError::Truncated
        } else {
            SocksError::Io(e)
        }
    }
}

/// Which authentication methods the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication or username/password; username/password is
    /// chosen whenever the client offers it, so its credentials can isolate
    /// its circuits.
    #[default]
    NoAuthOrUserPass,
    /// Username/password only.
    UserPassRequired,
}

/// Where a client wants to go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An address.
    Ip(SocketAddr),
    /// A host name (at most 255 bytes) and port, resolved at the exit.
    Domain(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(sa) => write!(f, "{sa}"),
            Target::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// A SOCKS command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// CONNECT: a TCP stream to the target.
    Connect(Target),
    /// UDP ASSOCIATE; the target is where the client says it will send
    /// from (often `0.0.0.0:0`).
    UdpAssociate(Target),
    /// BIND. [`handshake`] refuses BIND itself (replying
    /// [`Reply::CommandNotSupported`]), so it never returns this; the
    /// variant completes RFC 1928's command set for exhaustive matching.
    Bind(Target),
}

/// A client's request after a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Username and password, if the client authenticated.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// What it asks for.
    pub command: Command,
}

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0x00,
    /// General SOCKS server failure.
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset (the exit policy).
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// TTL expired (we use it for timeouts).
    TtlExpired = 0x06,
    /// Command not supported.
    CommandNotSupported = 0x07,
    /// Address type not supported.
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Runs the server side of the handshake up to the request: method choice,
/// the RFC 1929 subnegotiation if chosen, then the request. CONNECT and UDP
/// ASSOCIATE are returned for the caller to answer with [`reply`]; for
/// anything else this sends the matching failure reply and returns an error.
pub async fn handshake<S>(s: &mut S, auth: AuthMode) -> Result<Request, SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match s.read_u8().await? {
        VERSION => {}
        0x04 => return Err(SocksError::Socks4),
        b'C' | b'D' | b'G' | b'H' | b'O' | b'P' | b'T' => return Err(SocksError::Http),
        v => return Err(SocksError::BadVersion(v)),
    }
    let n = usize::from(s.read_u8().await?);
    let mut methods = [0u8; 255];
    let methods = methods.get_mut(..n).unwrap_or_default();
    s.read_exact(methods).await?;
    let offers = |m: u8| methods.contains(&m);
    let method = if offers(METHOD_USERPASS) {
        METHOD_USERPASS
    } else if auth == AuthMode::NoAuthOrUserPass && offers(METHOD_NONE) {
        METHOD_NONE
    } else {
        s.write_all(&[VERSION, METHOD_UNACCEPTABLE]).await?;
        s.flush().await?;
        return Err(SocksError::NoAcceptableAuth);
    };
    s.write_all(&[VERSION, method]).await?;
    s.flush().await?;
    let credentials = if method == METHOD_USERPASS {
        Some(user_pass(s).await?)
    } else {
        None
    };

    let mut head = [0u8; 3];
    s.read_exact(&mut head).await?;
    let [ver, cmd, _rsv] = head;
    if ver != VERSION {
        return Err(SocksError::BadVersion(ver));
    }
    let target = match read_target(s).await {
        Ok(t) => t,
        Err(e) => {
            let code = match e {
                SocksError::BadAddressType(_) => Reply::AddressTypeNotSupported,
                SocksError::BadDomain => Reply::GeneralFailure,
                _ => return Err(e),
            };
            let _ = reply(s, code, None).await;
            return Err(e);
        }
    };
    let command = match cmd {
        CMD_CONNECT => Command::Connect(target),
        CMD_UDP_ASSOCIATE => Command::UdpAssociate(target),
        other => {
            let _ = reply(s, Reply::CommandNotSupported, None).await;
            return Err(SocksError::UnsupportedCommand(other));
        }
    };
    Ok(Request {
        credentials,
        command,
    })
}

/// RFC 1929: any credentials succeed; they only select circuit isolation.
async fn user_pass<S>(s: &mut S) -> Result<(Vec<u8>, Vec<u8>), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ver = s.read_u8().await?;
    if ver != AUTH_VERSION {
        let _ = s.write_all(&[AUTH_VERSION, 0x01]).await;
        let _ = s.flush().await;
        return Err(SocksError::BadAuthVersion(ver));
    }
    let user = read_short_field(s).await?;
    let pass = read_short_field(s).await?;
    s.write_all(&[AUTH_VERSION, 0x00]).await?;
    s.flush().await?;
    Ok((user, pass))
}

/// A length byte and that many bytes (so at most 255).
async fn read_short_field<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, SocksError> {
    let n = usize::from(s.read_u8().await?);
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn read_target<S: AsyncRead + Unpin>(s: &mut S) -> Result<Target, SocksError> {
    let ip = match s.read_u8().await? {
        ATYP_V4 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        ATYP_V6 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        ATYP_DOMAIN => {
            let name = read_short_field(s).await?;
            let port = s.read_u16().await?;
            return domain_target(&name, port);
        }
        other => return Err(SocksError::BadAddressType(other)),
    };
    Ok(Target::Ip(SocketAddr::new(ip, s.read_u16().await?)))
}

fn domain_target(name: &[u8], port: u16) -> Result<Target, SocksError> {
    let name = std::str::from_utf8(name).map_err(|_| SocksError::BadDomain)?;
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(Target::Ip(SocketAddr::new(ip, port)));
    }
    if !valid_host(name) {
        return Err(SocksError::BadDomain);
    }
    Ok(Target::Domain(name.to_string(), port))
}

/// Sends a reply; `bound` is the server-side address (for UDP ASSOCIATE,
/// where the client must send its datagrams), `0.0.0.0:0` if `None`.
pub async fn reply<S>(s: &mut S, code: Reply, bound: Option<SocketAddr>) -> Result<(), SocksError>
where
    S: AsyncWrite + Unpin,
{
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut msg = Vec::with_capacity(22);
    msg.extend_from_slice(&[VERSION, code.code(), 0x00]);
    encode_target(&Target::Ip(bound), &mut msg);
    s.write_all(&msg).await?;
    s.flush().await?;
    Ok(())
}

/// ATYP, address, port. A name longer than 255 bytes cannot be expressed
/// in SOCKS; such a target (never produced by the parsers here, nor by the
/// kernel, which caps names at 255 bytes) is written as `0.0.0.0` with its
/// port rather than as a corrupt header.
fn encode_target(t: &Target, out: &mut Vec<u8>) {
    match t {
        Target::Ip(SocketAddr::V4(a)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Target::Ip(SocketAddr::V6(a)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Target::Domain(name, port) => match u8::try_from(name.len()) {
            Ok(len) => {
                out.extend_from_slice(&[ATYP_DOMAIN, len]);
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&port.to_be_bytes());
            }
            Err(_) => {
                let zero = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port);
                encode_target(&Target::Ip(zero), out);
            }
        },
    }
}

/// Parses a SOCKS UDP datagram: RSV (2 bytes, ignored), FRAG (must be 0),
/// ATYP, address, port, payload. Returns the destination and the payload.
pub fn parse_udp_datagram(buf: &[u8]) -> Result<(Target, &[u8]), SocksError> {
    let short = SocksError::ShortDatagram;
    let (&frag, rest) = buf.get(2..).and_then(|b| b.split_first()).ok_or(short)?;
    if frag != 0 {
        return Err(SocksError::Fragmented(frag));
    }
    let (&atyp, rest) = rest.split_first().ok_or(SocksError::ShortDatagram)?;
    let (ip, rest) = match atyp {
        ATYP_V4 => {
            let (a, rest) = split_array::<4>(rest)?;
            (IpAddr::V4(Ipv4Addr::from(a)), rest)
        }
        ATYP_V6 => {
            let (a, rest) = split_array::<16>(rest)?;
            (IpAddr::V6(Ipv6Addr::from(a)), rest)
        }
        ATYP_DOMAIN => {
            let (&len, rest) = rest.split_first().ok_or(SocksError::ShortDatagram)?;
            let len = usize::from(len);
            let name = rest.get(..len).ok_or(SocksError::ShortDatagram)?;
            let (port, payload) = split_array::<2>(rest.get(len..).unwrap_or_default())?;
            return Ok((domain_target(name, u16::from_be_bytes(port))?, payload));
        }
        other => return Err(SocksError::BadAddressType(other)),
    };
    let (port, payload) = split_array::<2>(rest)?;
    let target = Target::Ip(SocketAddr::new(ip, u16::from_be_bytes(port)));
    Ok((target, payload))
}

fn split_array<const N: usize>(b: &[u8]) -> Result<([u8; N], &[u8]), SocksError> {
    let head = b.get(..N).ok_or(SocksError::ShortDatagram)?;
    let arr: [u8; N] = head.try_into().map_err(|_| SocksError::ShortDatagram)?;
    Ok((arr, b.get(N..).unwrap_or_default()))
}

/// Appends a SOCKS UDP datagram (header for `target`, then `payload`) to
/// `out`, as sent back to the client.
pub fn encode_udp_datagram(target: &Target, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0]);
    encode_target(target, out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{duplex, DuplexStream};

    /// Runs the server on one end of a duplex fed with `input` (then EOF);
    /// returns its result and everything it wrote.
    async fn serve(input: &[u8], auth: AuthMode) -> (Result<Request, SocksError>, Vec<u8>) {
        let (mut client, mut server): (DuplexStream, DuplexStream) = duplex(1 << 16);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let result = handshake(&mut server, auth).await;
        drop(server);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        (result, written)
    }

    fn connect_msg(atyp_addr_port: &[u8]) -> Vec<u8> {
        let mut v = vec![5, 1, 0, 5, 1, 0];
        v.extend_from_slice(atyp_addr_port);
        v
    }

    #[tokio::test]
    async fn no_auth_connect_ipv4() {
        let (r, out) = serve(
            &connect_msg(&[1, 10, 0, 0, 1, 0x1f, 0x90]),
            AuthMode::default(),
        )
        .await;
        let r = r.unwrap();
        assert_eq!(r.credentials, None);
        assert_eq!(
            r.command,
            Command::Connect(Target::Ip("10.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(out, [5, 0]);
    }

    #[tokio::test]
    async fn no_auth_connect_ipv6() {
        let mut m = vec![4];
        m.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        m.extend_from_slice(&[0, 80]);
        let (r, _) = serve(&connect_msg(&m), AuthMode::default()).await;
        assert_eq!(
            r.unwrap().command,
            Command::Connect(Target::Ip("[2001:db8::7]:80".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn no_auth_connect_domain() {
        let mut m = vec![3, 11];
        m.extend_from_slice(b"example.com");
        m.extend_from_slice(&443u16.to_be_bytes());
        let (r, _) = serve(&connect_msg(&m), AuthMode::default()).await;
        let cmd = r.unwrap().command;
        assert_eq!(
            cmd,
            Command::Connect(Target::Domain("example.com".into(), 443))
        );
        let Command::Connect(t) = cmd else { return };
        assert_eq!(t.to_string(), "example.com:443");
    }

    #[tokio::test]
    async fn ip_literal_domain_becomes_address() {
        let mut m = vec![3, 3];
        m.extend_from_slice(b"::1");
        m.extend_from_slice(&[0, 22]);
        let (r, _) = serve(&connect_msg(&m), AuthMode::default()).await;
        assert_eq!(
            r.unwrap().command,
            Command::Connect(Target::Ip("[::1]:22".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn bad_domains_are_refused() {
        for name in [
            &b""[..],
            b"exa mple.com",
            b"a/b",
            b"\xff\xfe",
            b"caf\xc3\xa9.fr",
        ] {
            let mut m = vec![3, name.len() as u8];
            m.extend_from_slice(name);
            m.extend_from_slice(&[0, 80]);
            let (r, out) = serve(&connect_msg(&m), AuthMode::default()).await;
            assert!(matches!(r, Err(SocksError::BadDomain)), "{name:?}: {r:?}");
            assert_eq!(out, [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0], "{name:?}");
        }
    }

    #[tokio::test]
    async fn user_pass_preferred_and_returned() {
        // Offers both; user/pass is chosen so the credentials can isolate.
        let mut m = vec![5, 2, 0, 2, 1, 5];
        m.extend_from_slice(b"alice");
        m.push(3);
        m.extend_from_slice(b"pw!");
        m.extend_from_slice(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        let (r, out) = serve(&m, AuthMode::NoAuthOrUserPass).await;
        let r = r.unwrap();
        assert_eq!(r.credentials, Some((b"alice".to_vec(), b"pw!".to_vec())));
        assert_eq!(
            r.command,
            Command::UdpAssociate(Target::Ip("0.0.0.0:0".parse().unwrap()))
        );
        assert_eq!(out, [5, 2, 1, 0]);
    }

    #[tokio::test]
    async fn empty_credentials_are_accepted() {
        let mut m = vec![5, 1, 2, 1, 0, 0];
        m.extend_from_slice(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 1]);
        let (r, out) = serve(&m, AuthMode::UserPassRequired).await;
        assert_eq!(r.unwrap().credentials, Some((vec![], vec![])));
        assert_eq!(out, [5, 2, 1, 0]);
    }

    #[tokio::test]
    async fn user_pass_required_refuses_no_auth() {
        let (r, out) = serve(
            &connect_msg(&[1, 1, 2, 3, 4, 0, 80]),
            AuthMode::UserPassRequired,
        )
        .await;
        assert!(matches!(r, Err(SocksError::NoAcceptableAuth)), "{r:?}");
        assert_eq!(out, [5, 0xff]);
        let (r, out) = serve(&[5, 0], AuthMode::NoAuthOrUserPass).await;
        assert!(matches!(r, Err(SocksError::NoAcceptableAuth)), "{r:?}");
        assert_eq!(out, [5, 0xff]);
    }

    #[tokio::test]
    async fn wrong_auth_version() {
        let (r, out) = serve(&[5, 1, 2, 5, 1, b'a', 1, b'b'], AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::BadAuthVersion(5))), "{r:?}");
        assert_eq!(out, [5, 2, 1, 1]);
    }

    #[tokio::test]
    async fn bad_versions() {
        let (r, out) = serve(&[4, 1, 0, 80, 1, 2, 3, 4, 0], AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::Socks4)), "{r:?}");
        assert!(out.is_empty());
        let (r, _) = serve(b"GET / HTTP/1.1\r\n\r\n", AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::Http)), "{r:?}");
        let (r, _) = serve(b"CONNECT example.com:443 HTTP/1.1\r\n", AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::Http)), "{r:?}");
        let (r, _) = serve(&[0x16, 3, 1], AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::BadVersion(0x16))), "{r:?}");
        assert!(r.unwrap_err().to_string().contains("0x16"));
        // Good greeting, request with the wrong version.
        let (r, _) = serve(
            &[5, 1, 0, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80],
            AuthMode::default(),
        )
        .await;
        assert!(matches!(r, Err(SocksError::BadVersion(4))), "{r:?}");
    }

    #[tokio::test]
    async fn truncated_input_at_every_length() {
        let mut full = vec![5, 2, 0, 2, 1, 1, b'u', 1, b'p', 5, 1, 0, 3, 4];
        full.extend_from_slice(b"host");
        full.extend_from_slice(&[0, 80]);
        assert!(serve(&full, AuthMode::default()).await.0.is_ok());
        for n in 0..full.len() {
            let (r, _) = serve(&full[..n], AuthMode::default()).await;
            assert!(matches!(r, Err(SocksError::Truncated)), "{n}: {r:?}");
        }
    }

    #[tokio::test]
    async fn bind_is_refused_with_0x07() {
        let mut m = vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80];
        let (r, out) = serve(&m, AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::UnsupportedCommand(2))), "{r:?}");
        assert_eq!(out, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        m[4] = 9;
        let (r, out) = serve(&m, AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::UnsupportedCommand(9))), "{r:?}");
        assert_eq!(out[3], 7);
    }

    #[tokio::test]
    async fn bad_address_type_is_refused_with_0x08() {
        let (r, out) = serve(&connect_msg(&[2, 1, 2, 3, 4, 0, 80]), AuthMode::default()).await;
        assert!(matches!(r, Err(SocksError::BadAddressType(2))), "{r:?}");
        assert_eq!(out, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn replies_encode_the_bound_address() {
        let (mut a, mut b) = duplex(256);
        reply(
            &mut a,
            Reply::Succeeded,
            Some("127.0.0.1:4000".parse().unwrap()),
        )
        .await
        .unwrap();
        reply(
            &mut a,
            Reply::HostUnreachable,
            Some("[::1]:1".parse().unwrap()),
        )
        .await
        .unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let mut want = vec![5, 0, 0, 1, 127, 0, 0, 1, 0x0f, 0xa0, 5, 4, 0, 4];
        want.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        want.extend_from_slice(&[0, 1]);
        assert_eq!(got, want);
    }

    #[test]
    fn reply_codes() {
        let all = [
            Reply::Succeeded,
            Reply::GeneralFailure,
            Reply::NotAllowed,
            Reply::NetworkUnreachable,
            Reply::HostUnreachable,
            Reply::ConnectionRefused,
            Reply::TtlExpired,
            Reply::CommandNotSupported,
            Reply::AddressTypeNotSupported,
        ];
        for (i, r) in all.iter().enumerate() {
            assert_eq!(usize::from(r.code()), i);
        }
    }

    #[test]
    fn udp_header_round_trip_and_errors() {
        let targets = [
            Target::Ip("1.2.3.4:53".parse().unwrap()),
            Target::Ip("[2001:db8::1]:443".parse().unwrap()),
            Target::Domain("dns.example".into(), 53),
        ];
        for t in targets {
            let mut out = vec![];
            encode_udp_datagram(&t, b"payload", &mut out);
            assert_eq!(&out[..3], &[0, 0, 0]);
            let (got, payload) = parse_udp_datagram(&out).unwrap();
            assert_eq!((got, payload), (t, &b"payload"[..]));
        }
        assert_eq!(
            parse_udp_datagram(&[0, 0, 0, 1, 1, 2, 3, 4, 0, 53]).unwrap(),
            (Target::Ip("1.2.3.4:53".parse().unwrap()), &[][..])
        );
        assert!(matches!(
            parse_udp_datagram(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 53, 9]),
            Err(SocksError::Fragmented(1))
        ));
        assert!(matches!(
            parse_udp_datagram(&[0, 0, 0, 7, 1, 2, 3, 4, 0, 53]),
            Err(SocksError::BadAddressType(7))
        ));
        for n in 0..10 {
            let full = [0, 0, 0, 1, 1, 2, 3, 4, 0, 53];
            assert!(matches!(
                parse_udp_datagram(&full[..n]),
                Err(SocksError::ShortDatagram)
            ));
        }
        assert!(matches!(
            parse_udp_datagram(&[0, 0, 0, 3, 3, b'a', b' ', b'b', 0, 1]),
            Err(SocksError::BadDomain)
        ));
    }

    #[test]
    fn overlong_name_never_corrupts_the_header() {
        let mut out = vec![];
        encode_udp_datagram(&Target::Domain("a".repeat(300), 7), b"x", &mut out);
        assert_eq!(out, [0, 0, 0, 1, 0, 0, 0, 0, 0, 7, b'x']);
    }

    fn arb_target() -> impl Strategy<Value = Target> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(a, p)| Target::Ip(SocketAddr::new(Ipv4Addr::from(a).into(), p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(a, p)| Target::Ip(SocketAddr::new(Ipv6Addr::from(a).into(), p))),
            ("[a-z][a-z0-9_.-]{0,80}", any::<u16>()).prop_map(|(h, p)| Target::Domain(h, p)),
        ]
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    proptest! {
        #[test]
        fn udp_round_trip(t in arb_target(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = vec![];
            encode_udp_datagram(&t, &payload, &mut out);
            let (got, rest) = parse_udp_datagram(&out).unwrap();
            prop_assert_eq!(got, t);
            prop_assert_eq!(rest, &payload[..]);
        }

        #[test]
        fn udp_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_udp_datagram(&b);
        }

        #[test]
        fn request_round_trip(t in arb_target(), user in proptest::collection::vec(any::<u8>(), 0..255)) {
            let mut m = vec![5, 1, 2, 1, u8::try_from(user.len()).unwrap()];
            m.extend_from_slice(&user);
            m.extend_from_slice(&[0, 5, 1, 0]);
            encode_target(&t, &mut m);
            let (r, _) = rt().block_on(serve(&m, AuthMode::default()));
            let r = r.unwrap();
            prop_assert_eq!(r.credentials, Some((user, vec![])));
            prop_assert_eq!(r.command, Command::Connect(t));
        }

        #[test]
        fn handshake_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = rt().block_on(serve(&b, AuthMode::default()));
            let _ = rt().block_on(serve(&b, AuthMode::UserPassRequired));
        }

        #[test]
        fn handshake_never_panics_after_a_valid_greeting(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut m = vec![5, 1, 0, 5];
            m.extend_from_slice(&b);
            let _ = rt().block_on(serve(&m, AuthMode::default()));
        }
    }
}
