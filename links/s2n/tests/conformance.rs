//! The link conformance suite (relay-link's `conformance` module) on s2n links.

relay_link::conformance_tests!(relay_link_s2n::S2nTransport);
