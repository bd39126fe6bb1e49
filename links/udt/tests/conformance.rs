//! The link conformance suite (relay-link's `conformance` module) on udt links.

relay_link::conformance_tests!(relay_link_udt::UdtTransport);
