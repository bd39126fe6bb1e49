//! The link conformance suite (relay-link's `conformance` module) on tcp links.

relay_link::conformance_tests!(relay_link_tcp::TcpTransport);
