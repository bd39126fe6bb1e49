//! Learning the id a peer proved.
//!
//! s2n-quic does not hand the peer's certificate to the application
//! directly; an event subscriber sees the finished TLS session, and the id
//! its verified certificate names is kept as the connection's event
//! context, which the link reads back with `query_event_context`.

use relay_kernel::NodeId;
use rustls::pki_types::CertificateDer;
use s2n_quic::provider::event::{events, ConnectionInfo, ConnectionMeta, Subscriber};

/// What we keep per connection.
#[derive(Debug, Default)]
pub(crate) struct PeerContext {
    /// The id the peer's verified certificate names, once the handshake is
    /// complete.
    pub(crate) peer: Option<NodeId>,
}

/// Records each connection's peer id.
#[derive(Debug, Default)]
pub(crate) struct PeerIds;

impl Subscriber for PeerIds {
    type ConnectionContext = PeerContext;

    fn create_connection_context(
        &mut self,
        _meta: &ConnectionMeta,
        _info: &ConnectionInfo,
    ) -> PeerContext {
        PeerContext::default()
    }

    fn on_tls_exporter_ready(
        &mut self,
        context: &mut PeerContext,
        _meta: &ConnectionMeta,
        event: &events::TlsExporterReady,
    ) {
        // Emitted when the handshake is complete: the chain was verified by
        // our verifiers (module `cert`), the key proved by the handshake.
        if let Ok(chain) = event.session.peer_cert_chain_der() {
            context.peer = chain
                .first()
                .and_then(|der| crate::cert::node_id(&CertificateDer::from(der.as_slice())).ok());
        }
    }
}

/// The id the peer of `conn` proved.
pub(crate) fn peer_id(conn: &s2n_quic::connection::Handle) -> Option<NodeId> {
    conn.query_event_context(|c: &PeerContext| c.peer)
        .ok()
        .flatten()
}
