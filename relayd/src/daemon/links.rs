//! Link transports by scheme: the ones the node listens on, and client-only
//! ones bound on demand (a udt-only relay can still reach a quic neighbour).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use relay_link::{Identity, LinkAddr, LinkConfig, LinkError, Scheme, Transport};
use tokio::sync::Mutex;

/// Congestion controller of udt links (`--udt-cc`). Its own type so the
/// flag parses the same whether or not udt is compiled in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UdtCc {
    /// Model-based (BBR-style): keeps its rate under random loss.
    #[default]
    Bbr,
    /// Loss-based CUBIC.
    Cubic,
    /// UDT's rate-based control.
    UdtRate,
}

impl std::str::FromStr for UdtCc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bbr" => Ok(UdtCc::Bbr),
            "cubic" => Ok(UdtCc::Cubic),
            "udt" => Ok(UdtCc::UdtRate),
            other => Err(format!(
                "unknown udt congestion control {other:?} (bbr, cubic or udt)"
            )),
        }
    }
}

#[cfg(feature = "udt")]
impl From<UdtCc> for relay_link_udt::cc::CongestionKind {
    fn from(c: UdtCc) -> Self {
        use relay_link_udt::cc::CongestionKind as K;
        match c {
            UdtCc::Bbr => K::Bbr,
            UdtCc::Cubic => K::Cubic,
            UdtCc::UdtRate => K::UdtRate,
        }
    }
}

/// What every transport of a node is bound with.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkSettings {
    /// Tunables common to every link kind.
    pub link: LinkConfig,
    /// The udt links' congestion controller.
    pub udt_cc: UdtCc,
}

/// Binds one transport of `scheme` on `addr`.
pub async fn bind(
    scheme: Scheme,
    addr: SocketAddr,
    identity: &Identity,
    settings: LinkSettings,
) -> Result<Arc<dyn Transport>, LinkError> {
    let config = settings.link;
    let _ = (addr, identity, config);
    match scheme {
        #[cfg(feature = "udt")]
        Scheme::Udt => Ok(Arc::new(
            relay_link_udt::UdtTransport::bind_with_cc(
                addr,
                identity,
                config,
                settings.udt_cc.into(),
            )
            .await?,
        )),
        #[cfg(feature = "quic")]
        Scheme::Quic => Ok(Arc::new(
            relay_link_quic::QuicTransport::bind(addr, identity, config).await?,
        )),
        #[cfg(feature = "s2n")]
        Scheme::S2n => Ok(Arc::new(
            relay_link_s2n::S2nTransport::bind(addr, identity, config).await?,
        )),
        #[cfg(feature = "tcp")]
        Scheme::Tcp => Ok(Arc::new(
            relay_link_tcp::TcpTransport::bind(addr, identity, config).await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(LinkError::UnsupportedScheme(format!(
            "{} (not compiled into this relayd)",
            other.as_str()
        ))),
    }
}

/// The transports of one node.
pub struct Transports {
    identity: Identity,
    config: LinkSettings,
    listening: Vec<(LinkAddr, Arc<dyn Transport>)>,
    /// Client-side transports bound on demand, per scheme and address family.
    outgoing: Mutex<HashMap<(Scheme, bool), Arc<dyn Transport>>>,
}

impl Transports {
    /// Binds every listen address; the returned addresses carry the real
    /// ports when port 0 was asked for.
    pub async fn listen(
        identity: &Identity,
        config: LinkSettings,
        addrs: &[LinkAddr],
    ) -> Result<Transports, (LinkAddr, LinkError)> {
        let mut listening = Vec::new();
        for a in addrs {
            let t = bind(a.scheme, a.addr, identity, config)
                .await
                .map_err(|e| (a.clone(), e))?;
            let bound = LinkAddr {
                scheme: a.scheme,
                addr: t.local_addr(),
            };
            listening.push((bound, t));
        }
        Ok(Transports {
            identity: identity.clone(),
            config,
            listening,
            outgoing: Mutex::new(HashMap::new()),
        })
    }

    /// Listening transports with their bound addresses.
    pub fn listening(&self) -> &[(LinkAddr, Arc<dyn Transport>)] {
        &self.listening
    }

    /// A transport that can reach `to`: a listening one of the same scheme
    /// and family, else one bound on demand on an ephemeral port.
    pub async fn for_target(&self, to: &LinkAddr) -> Result<Arc<dyn Transport>, LinkError> {
        let v6 = to.addr.is_ipv6();
        if let Some((_, t)) = self
            .listening
            .iter()
            .find(|(a, _)| a.scheme == to.scheme && a.addr.is_ipv6() == v6)
        {
            return Ok(t.clone());
        }
        let mut out = self.outgoing.lock().await;
        if let Some(t) = out.get(&(to.scheme, v6)) {
            return Ok(t.clone());
        }
        let ip: IpAddr = match (v6, to.addr.ip().is_loopback()) {
            (false, true) => Ipv4Addr::LOCALHOST.into(),
            (false, false) => Ipv4Addr::UNSPECIFIED.into(),
            (true, true) => Ipv6Addr::LOCALHOST.into(),
            (true, false) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let t = bind(
            to.scheme,
            SocketAddr::new(ip, 0),
            &self.identity,
            self.config,
        )
        .await?;
        out.insert((to.scheme, v6), t.clone());
        Ok(t)
    }
}
