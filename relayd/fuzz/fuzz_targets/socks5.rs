//! Fuzz target: the SOCKS5 server handshake and the UDP relay header, fed
//! by a hostile local client.
//!
//! The first byte picks the auth mode; the rest is what the client sends,
//! followed by EOF. Checks: no panic; a successful handshake's domain
//! targets pass the kernel's host check; a UDP header that parses
//! re-encodes to the same bytes and parses back to the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::socks5::{self, AuthMode, Command, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let auth = if mode & 1 == 0 {
        AuthMode::NoAuthOrUserPass
    } else {
        AuthMode::UserPassRequired
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        if let Ok(req) = socks5::handshake(&mut server, auth).await {
            let target = match req.command {
                Command::Connect(t) | Command::UdpAssociate(t) => t,
                Command::Bind(_) => panic!("handshake returned BIND"),
            };
            if let Target::Domain(h, _) = &target {
                assert!(relay_kernel::relay_msg::valid_host(h), "{h:?}");
            }
            if auth == AuthMode::UserPassRequired {
                assert!(req.credentials.is_some());
            }
        }
        drop(server);
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    });

    if let Ok((target, payload)) = socks5::parse_udp_datagram(input) {
        let mut out = Vec::new();
        socks5::encode_udp_datagram(&target, payload, &mut out);
        let (again, rest) = socks5::parse_udp_datagram(&out).unwrap();
        assert_eq!(again, target);
        assert_eq!(rest, payload);
    }
});
