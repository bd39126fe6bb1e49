//! Exit policies in Tor's syntax: which destinations this node opens
//! streams to on behalf of others.
//!
//! An operator who already knows Tor should be able to paste their
//! `ExitPolicy` lines unchanged, so the grammar is Tor's:
//!
//! ```text
//! RULE    = ("accept" | "reject") WS ADDRESS ":" PORTS
//! ADDRESS = "*" | "*4" | "*6" | "private"
//!         | IPV4 ["/" (PREFIXLEN | DOTTED-MASK)]
//!         | "[" IPV6 "]" ["/" PREFIXLEN]
//! PORTS   = "*" | PORT | PORT "-" PORT
//! ```
//!
//! Rules are separated by commas or newlines; empty pieces are ignored.
//! The first rule that matches decides; if none does, the stream is
//! rejected, so a node is not an exit unless its operator writes an accept
//! rule.
//!
//! **Private destinations.** A relay must not become a way into its own
//! LAN, its loopback services or its provider's CGNAT, so `private` space
//! (see [`is_private`]) is kept out of wildcards, like Tor's
//! `ExitPolicyRejectPrivate`. The exact rule:
//!
//! > An *accept* rule whose address is a wildcard (`*`, `*4`, `*6`, or the
//! > same spelt `0.0.0.0/0` / `[::]/0`) never matches a private address.
//! > Every other rule matches exactly as written.
//!
//! So `accept *:*` alone rejects `10.0.0.1:80`, while `accept private:*`,
//! `accept 127.0.0.1:8080` or `accept 10.0.0.0/8:*` anywhere in the policy
//! accept what they name (unless an earlier rule matched first), and a
//! wildcard *reject* such as `reject *:25` still rejects private addresses
//! too. This is the same as an implicit `reject private:*` placed after
//! all rules that name addresses explicitly and before the wildcard accepts.
//!
//! IPv4-mapped IPv6 destinations (`::ffff:10.0.0.1`) are checked as the IPv4
//! address they reach, so they cannot smuggle a private address past an
//! IPv4 rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// A rule that could not be parsed: the whole rule, the bad token and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("exit policy rule {rule:?}: {problem}: {token:?}")]
pub struct PolicyError {
    /// The rule as written.
    pub rule: String,
    /// The offending part of it.
    pub token: String,
    /// What is wrong.
    pub problem: &'static str,
}

/// Accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open the stream.
    Accept,
    /// Refuse it.
    Reject,
}

/// The address part of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrPattern {
    /// `*`: every address.
    Any,
    /// `*4`: every IPv4 address.
    Any4,
    /// `*6`: every IPv6 address.
    Any6,
    /// `private`: see [`is_private`].
    Private,
    /// An IPv4 network (address already masked) and prefix length 1-32.
    V4(Ipv4Addr, u8),
    /// An IPv6 network (address already masked) and prefix length 1-128.
    V6(Ipv6Addr, u8),
}

impl AddrPattern {
    fn is_wildcard(self) -> bool {
        matches!(
            self,
            AddrPattern::Any | AddrPattern::Any4 | AddrPattern::Any6
        )
    }

    /// Does the pattern cover `ip` (already canonical: no IPv4-mapped v6)?
    fn covers(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (AddrPattern::Any, _) => true,
            (AddrPattern::Any4, ip) => ip.is_ipv4(),
            (AddrPattern::Any6, ip) => ip.is_ipv6(),
            (AddrPattern::Private, ip) => is_private(ip),
            (AddrPattern::V4(net, len), IpAddr::V4(a)) => {
                let mask = mask_u32(len);
                u32::from(a) & mask == u32::from(net)
            }
            (AddrPattern::V6(net, len), IpAddr::V6(a)) => {
                let mask = mask_u128(len);
                u128::from(a) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (`>= lo`).
    pub hi: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// One `accept|reject ADDRESS:PORTS` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What a match means.
    pub action: Action,
    /// Which addresses.
    pub addr: AddrPattern,
    /// Which ports.
    pub ports: PortRange,
}

impl Rule {
    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        if !self.ports.contains(port) || !self.addr.covers(ip) {
            return false;
        }
        // The private-space exception (module docs).
        !(self.action == Action::Accept && self.addr.is_wildcard() && is_private(ip))
    }
}

/// An ordered list of rules; first match wins, no match rejects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExitPolicy {
    rules: Vec<Rule>,
}

impl ExitPolicy {
    /// The policy of a node that is not an exit: `reject *:*`.
    pub fn reject_all() -> ExitPolicy {
        ExitPolicy {
            rules: vec![Rule {
                action: Action::Reject,
                addr: AddrPattern::Any,
                ports: PortRange::ALL,
            }],
        }
    }

    /// Parses rules; each string holds one or more rules separated by
    /// commas or newlines. No rules at all gives [`ExitPolicy::reject_all`].
    pub fn parse_rules<S: AsRef<str>>(lines: &[S]) -> Result<ExitPolicy, PolicyError> {
        let mut rules = Vec::new();
        for line in lines {
            for piece in line.as_ref().split([',', '\n']) {
                let piece = piece.trim();
                if !piece.is_empty() {
                    rules.push(parse_rule(piece)?);
                }
            }
        }
        if rules.is_empty() {
            return Ok(ExitPolicy::reject_all());
        }
        Ok(ExitPolicy { rules })
    }

    /// The rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// May this node open a stream to `ip:port`?
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.rules
            .iter()
            .find(|r| r.matches(ip, port))
            .is_some_and(|r| r.action == Action::Accept)
    }

    /// Does the policy accept anything at all (is this node an exit)?
    pub fn is_exit(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Accept)
    }
}

impl Default for ExitPolicy {
    fn default() -> ExitPolicy {
        ExitPolicy::reject_all()
    }
}

/// Is `ip` in private space: `0.0.0.0/8`, `10.0.0.0/8`, `100.64.0.0/10`
/// (CGNAT), `127.0.0.0/8`, `169.254.0.0/16`, `172.16.0.0/12`,
/// `192.168.0.0/16`, `255.255.255.255`; `[::]/8` (unspecified, loopback,
/// IPv4-compatible), `[fc00::]/7`, `[fe80::]/10`, `[fec0::]/10`
/// (deprecated site-local); an IPv4-mapped IPv6 address is judged as its
/// IPv4 address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let [a0, a1, ..] = a.octets();
            a0 == 0
                || a0 == 10
                || a0 == 127
                || (a0 == 100 && (a1 & 0xc0) == 64)
                || (a0 == 169 && a1 == 254)
                || (a0 == 172 && (a1 & 0xf0) == 16)
                || (a0 == 192 && a1 == 168)
                || a == Ipv4Addr::BROADCAST
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            (s0 & 0xff00) == 0
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
                || (s0 & 0xffc0) == 0xfec0
        }
    }
}

fn mask_u32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask_u128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

fn parse_rule(rule: &str) -> Result<Rule, PolicyError> {
    let err = |token: &str, problem: &'static str| PolicyError {
        rule: rule.to_string(),
        token: token.to_string(),
        problem,
    };
    let (action, pattern) = rule
        .split_once(char::is_whitespace)
        .ok_or_else(|| err(rule, "expected 'accept|reject ADDRESS:PORTS'"))?;
    let action = match action {
        "accept" => Action::Accept,
        "reject" => Action::Reject,
        other => return Err(err(other, "unknown action (expected accept or reject)")),
    };
    let pattern = pattern.trim();
    if pattern.contains(char::is_whitespace) {
        return Err(err(pattern, "unexpected space in ADDRESS:PORTS"));
    }
    // The port is after the last ':' that is not inside an IPv6 bracket.
    let after_bracket = pattern.rfind(']').map_or(0, |i| i + 1);
    let colon = pattern[after_bracket..]
        .rfind(':')
        .map(|i| i + after_bracket)
        .ok_or_else(|| err(pattern, "missing ':PORTS'"))?;
    let (addr, ports) = (&pattern[..colon], &pattern[colon + 1..]);
    let addr = parse_addr(addr).map_err(|(t, p)| err(t, p))?;
    let ports = parse_ports(ports).map_err(|(t, p)| err(t, p))?;
    Ok(Rule {
        action,
        addr,
        ports,
    })
}

type TokenError<'a> = (&'a str, &'static str);

fn parse_addr(s: &str) -> Result<AddrPattern, TokenError<'_>> {
    let (host, mask) = match s.split_once('/') {
        Some((h, m)) => (h, Some(m)),
        None => (s, None),
    };
    let special = match host {
        "*" => Some(AddrPattern::Any),
        "*4" => Some(AddrPattern::Any4),
        "*6" => Some(AddrPattern::Any6),
        "private" => Some(AddrPattern::Private),
        _ => None,
    };
    if let Some(p) = special {
        return match mask {
            None => Ok(p),
            Some(_) => Err((s, "a mask is only allowed after an IP address")),
        };
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or((host, "unclosed '[' in IPv6 address"))?;
        let a: Ipv6Addr = inner.parse().map_err(|_| (host, "bad IPv6 address"))?;
        let len = match mask {
            None => 128,
            Some(m) => parse_prefix(m, 128).ok_or((m, "bad IPv6 prefix length (0-128)"))?,
        };
        if len == 0 {
            return Ok(AddrPattern::Any6);
        }
        return Ok(AddrPattern::V6(
            Ipv6Addr::from(u128::from(a) & mask_u128(len)),
            len,
        ));
    }
    let a: Ipv4Addr = host.parse().map_err(|_| {
        if host.contains(':') {
            (host, "bad address (write IPv6 addresses in brackets)")
        } else {
            (
                host,
                "bad address (expected *, *4, *6, private, IPv4 or [IPv6])",
            )
        }
    })?;
    let len = match mask {
        None => 32,
        Some(m) => parse_prefix(m, 32).or_else(|| dotted_mask(m)).ok_or((
            m,
            "bad IPv4 mask (prefix length 0-32 or contiguous dotted mask)",
        ))?,
    };
    if len == 0 {
        return Ok(AddrPattern::Any4);
    }
    Ok(AddrPattern::V4(
        Ipv4Addr::from(u32::from(a) & mask_u32(len)),
        len,
    ))
}

fn parse_prefix(m: &str, max: u8) -> Option<u8> {
    if m.is_empty() || m.len() > 3 || !m.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    m.parse::<u8>().ok().filter(|&n| n <= max)
}

/// `255.255.255.0` -> 24; non-contiguous masks are refused.
fn dotted_mask(m: &str) -> Option<u8> {
    let bits = u32::from(m.parse::<Ipv4Addr>().ok()?);
    let len = bits.leading_ones();
    if bits.count_ones() == len {
        u8::try_from(len).ok()
    } else {
        None
    }
}

fn parse_ports(s: &str) -> Result<PortRange, TokenError<'_>> {
    if s == "*" {
        return Ok(PortRange::ALL);
    }
    let port = |p: &str| -> Option<u16> {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let bad = (
        s,
        "bad port (expected *, N or N-M with 0 <= N <= M <= 65535)",
    );
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a).ok_or(bad)?, port(b).ok_or(bad)?),
        None => {
            let p = port(s).ok_or(bad)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err((s, "port range is reversed"));
    }
    Ok(PortRange { lo, hi })
}

impl fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrPattern::Any => f.write_str("*"),
            AddrPattern::Any4 => f.write_str("*4"),
            AddrPattern::Any6 => f.write_str("*6"),
            AddrPattern::Private => f.write_str("private"),
            AddrPattern::V4(a, 32) => write!(f, "{a}"),
            AddrPattern::V4(a, len) => write!(f, "{a}/{len}"),
            AddrPattern::V6(a, 128) => write!(f, "[{a}]"),
            AddrPattern::V6(a, len) => write!(f, "[{a}]/{len}"),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ALL {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Accept => "accept",
            Action::Reject => "reject",
        };
        write!(f, "{action} {}:{}", self.addr, self.ports)
    }
}

/// Canonical text: the rules joined by `", "`, which
/// [`ExitPolicy::parse_rules`] reads back to the same policy.
impl fmt::Display for ExitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pol(s: &str) -> ExitPolicy {
        ExitPolicy::parse_rules(&[s]).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_rules_rejects_everything() {
        let p = ExitPolicy::parse_rules::<&str>(&[]).unwrap();
        assert_eq!(p, ExitPolicy::reject_all());
        assert!(!p.is_exit());
        assert!(!p.allows(ip("1.1.1.1"), 443));
        assert_eq!(p.to_string(), "reject *:*");
        assert_eq!(ExitPolicy::default(), ExitPolicy::reject_all());
    }

    #[test]
    fn unmatched_destination_is_rejected() {
        let p = pol("accept *:80");
        assert!(p.is_exit());
        assert!(p.allows(ip("1.1.1.1"), 80));
        assert!(!p.allows(ip("1.1.1.1"), 81));
    }

    #[test]
    fn first_match_wins() {
        let p = pol("reject 1.2.3.4:*, accept *:*");
        assert!(!p.allows(ip("1.2.3.4"), 80));
        assert!(p.allows(ip("1.2.3.5"), 80));
        let p = pol("accept *:*, reject 1.2.3.4:*");
        assert!(p.allows(ip("1.2.3.4"), 80));
        let p = pol("reject *:25\naccept *:*");
        assert!(!p.allows(ip("8.8.8.8"), 25));
        assert!(p.allows(ip("8.8.8.8"), 26));
    }

    #[test]
    fn several_strings_and_separators() {
        let p = ExitPolicy::parse_rules(&[
            "reject *:25, reject *:119".to_string(),
            "accept *:20-23\n accept *:80,\n".to_string(),
        ])
        .unwrap();
        assert_eq!(p.rules().len(), 4);
        assert_eq!(
            p.to_string(),
            "reject *:25, reject *:119, accept *:20-23, accept *:80"
        );
    }

    #[test]
    fn port_ranges() {
        let p = pol("accept *:1000-2000");
        assert!(!p.allows(ip("9.9.9.9"), 999));
        assert!(p.allows(ip("9.9.9.9"), 1000));
        assert!(p.allows(ip("9.9.9.9"), 2000));
        assert!(!p.allows(ip("9.9.9.9"), 2001));
        let p = pol("accept *:0-65535");
        assert_eq!(p.to_string(), "accept *:*");
        assert!(p.allows(ip("9.9.9.9"), 0));
        assert!(p.allows(ip("9.9.9.9"), 65535));
    }

    #[test]
    fn v4_masks_prefix_and_dotted() {
        let p = pol("accept 198.51.100.0/24:443");
        assert!(p.allows(ip("198.51.100.7"), 443));
        assert!(!p.allows(ip("198.51.101.7"), 443));
        let q = pol("accept 198.51.100.77/255.255.255.0:443");
        assert_eq!(p, q, "dotted mask and host bits are normalised");
        assert_eq!(q.to_string(), "accept 198.51.100.0/24:443");
        let p = pol("accept 8.8.8.8/31:*");
        assert!(p.allows(ip("8.8.8.9"), 1));
        assert!(!p.allows(ip("8.8.8.10"), 1));
        assert_eq!(pol("accept 1.2.3.4/32:*").to_string(), "accept 1.2.3.4:*");
        assert_eq!(pol("accept 0.0.0.0/0:*"), pol("accept *4:*"));
    }

    #[test]
    fn ipv6_rules() {
        let p = pol("accept [2001:db8::]/32:443, reject *6:*, accept *:*");
        assert!(p.allows(ip("2001:db8::1"), 443));
        assert!(!p.allows(ip("2001:db8::1"), 80));
        assert!(!p.allows(ip("2001:db9::1"), 443));
        assert!(p.allows(ip("9.9.9.9"), 443));
        let p = pol("accept [2606:4700::1111]:53");
        assert!(p.allows(ip("2606:4700::1111"), 53));
        assert!(!p.allows(ip("2606:4700::1112"), 53));
        assert_eq!(p.to_string(), "accept [2606:4700::1111]:53");
        let p = pol("accept *4:*");
        assert!(!p.allows(ip("2606:4700::1111"), 53));
        assert!(p.allows(ip("1.1.1.1"), 53));
        let p = pol("accept *6:*");
        assert!(p.allows(ip("2606:4700::1111"), 53));
        assert!(!p.allows(ip("1.1.1.1"), 53));
        assert_eq!(pol("accept [::]/0:*"), pol("accept *6:*"));
    }

    #[test]
    fn wildcard_accept_never_reaches_private_space() {
        let p = pol("accept *:*");
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!p.allows(ip(a), 80), "{a}");
        }
        for a in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2001:db8::1",
            "::ffff:1.1.1.1",
        ] {
            assert!(p.allows(ip(a), 80), "{a}");
        }
        assert!(!pol("accept *4:*").allows(ip("10.0.0.1"), 80));
        assert!(!pol("accept *6:*").allows(ip("fe80::1"), 80));
        assert!(!pol("accept 0.0.0.0/0:*").allows(ip("10.0.0.1"), 80));
    }

    #[test]
    fn explicit_accepts_reach_private_space() {
        let p = pol("accept private:*, accept *:*");
        assert!(p.allows(ip("127.0.0.1"), 22));
        assert!(p.allows(ip("fd00::1"), 22));
        let p = pol("accept 127.0.0.1:8080, accept *:*");
        assert!(p.allows(ip("127.0.0.1"), 8080));
        assert!(p.allows(ip("::ffff:127.0.0.1"), 8080));
        assert!(!p.allows(ip("127.0.0.1"), 8081));
        assert!(!p.allows(ip("127.0.0.2"), 8080));
        // Explicit ranges count wherever they stand (the wildcard does not
        // match private addresses, so evaluation reaches them).
        let p = pol("accept *:*, accept 10.0.0.0/8:443");
        assert!(p.allows(ip("10.9.9.9"), 443));
        assert!(!p.allows(ip("10.9.9.9"), 80));
        // An earlier explicit reject still wins.
        let p = pol("reject 10.0.0.5:*, accept 10.0.0.0/8:*");
        assert!(!p.allows(ip("10.0.0.5"), 1));
        assert!(p.allows(ip("10.0.0.6"), 1));
        // Wildcard rejects do apply to private addresses.
        let p = pol("reject *:25, accept private:*");
        assert!(!p.allows(ip("192.168.0.1"), 25));
        assert!(p.allows(ip("192.168.0.1"), 26));
    }

    #[test]
    fn is_exit_means_some_accept() {
        assert!(!pol("reject *:25, reject *:*").is_exit());
        assert!(pol("reject *:25, accept *:443").is_exit());
        assert!(pol("accept private:*").is_exit());
    }

    #[test]
    fn display_is_canonical() {
        let text = "accept private:22, reject *4:25-26, accept [fe80::]/10:*, \
                    reject 10.0.0.0/8:0, accept *6:*, accept *:*";
        let p = pol(text);
        assert_eq!(p.to_string(), text);
        assert_eq!(pol(&p.to_string()), p);
    }

    fn bad(s: &str) -> PolicyError {
        ExitPolicy::parse_rules(&[s]).unwrap_err()
    }

    #[test]
    fn bad_inputs_name_the_bad_token() {
        for (input, token) in [
            ("allow *:*", "allow"),
            ("accept", "accept"),
            ("accept *", "*"),
            ("accept 1.2.3:80", "1.2.3"),
            ("accept 300.1.1.1:80", "300.1.1.1"),
            ("accept 1.2.3.4/33:80", "33"),
            ("accept 1.2.3.4/255.0.255.0:80", "255.0.255.0"),
            ("accept 1.2.3.4/:80", ""),
            ("accept 1.2.3.4:70000", "70000"),
            ("accept 1.2.3.4:+80", "+80"),
            ("accept 1.2.3.4:90-80", "90-80"),
            ("accept 1.2.3.4:80-", "80-"),
            ("accept 1.2.3.4:", ""),
            ("accept [::1:80", "[::1"),
            ("accept [fe80::1]/129:*", "129"),
            ("accept [zz::]:*", "[zz::]"),
            ("accept ::1:80", "::1"),
            ("accept private/8:*", "private/8"),
            ("accept *4/8:*", "*4/8"),
            ("accept 1.2.3.4 :80", "1.2.3.4 :80"),
            ("accept *:*, reject bogus:1", "bogus"),
        ] {
            let e = bad(input);
            assert_eq!(e.token, token, "{input}: {e}");
            assert!(e.to_string().contains(&format!("{token:?}")), "{e}");
        }
        let e = bad("accept *:*, reject bogus:1");
        assert_eq!(e.rule, "reject bogus:1");
    }

    #[test]
    fn private_ranges_boundaries() {
        for (a, private) in [
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("11.0.0.0", false),
            ("100.63.255.255", false),
            ("100.64.0.0", true),
            ("172.15.255.255", false),
            ("172.16.0.0", true),
            ("169.253.0.1", false),
            ("255.255.255.255", true),
            ("126.255.255.255", false),
            ("127.255.255.255", true),
            ("fbff::1", false),
            ("fc00::", true),
            ("fdff::", true),
            ("fe7f::1", false),
            ("febf::1", true),
            ("fec0::1", true),
            ("ff02::1", false),
            ("100::1", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_private(ip(a)), private, "{a}");
        }
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let action = prop_oneof![Just(Action::Accept), Just(Action::Reject)];
        let addr = prop_oneof![
            Just(AddrPattern::Any),
            Just(AddrPattern::Any4),
            Just(AddrPattern::Any6),
            Just(AddrPattern::Private),
            (any::<u32>(), 1u8..=32)
                .prop_map(|(a, l)| AddrPattern::V4(Ipv4Addr::from(a & mask_u32(l)), l)),
            (any::<u128>(), 1u8..=128)
                .prop_map(|(a, l)| AddrPattern::V6(Ipv6Addr::from(a & mask_u128(l)), l)),
        ];
        let ports = (any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange {
            lo: a.min(b),
            hi: a.max(b),
        });
        (action, addr, ports).prop_map(|(action, addr, ports)| Rule {
            action,
            addr,
            ports,
        })
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(rules in proptest::collection::vec(arb_rule(), 1..8)) {
            let p = ExitPolicy { rules };
            let text = p.to_string();
            prop_assert_eq!(ExitPolicy::parse_rules(&[&text]).unwrap(), p);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,80}") {
            let _ = ExitPolicy::parse_rules(&[&s]);
        }

        #[test]
        fn rule_like_input_never_panics(s in "(accept|reject) [\\[\\]*0-9a-f.:/-]{0,40}") {
            if let Ok(p) = ExitPolicy::parse_rules(&[&s]) {
                prop_assert_eq!(ExitPolicy::parse_rules(&[p.to_string()]).unwrap(), p);
            }
        }

        #[test]
        fn wildcard_accept_matches_is_private(a in any::<u128>(), v4 in any::<bool>(), port in any::<u16>()) {
            let addr = if v4 { IpAddr::V4(Ipv4Addr::from(a as u32)) } else { IpAddr::V6(Ipv6Addr::from(a)) };
            prop_assert_eq!(pol("accept *:*").allows(addr, port), !is_private(addr));
        }
    }
}
