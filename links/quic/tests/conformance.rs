//! The link conformance suite (relay-link's `conformance` module) on quic links.

relay_link::conformance_tests!(relay_link_quic::QuicTransport);
