//! Fuzz target: the circuit handshake on untrusted bytes, both sides.
//!
//! Server side: `server_respond_with_ephemeral` with a fixed relay identity
//! and onion key on the input. When the first input byte is even, the first
//! 64 bytes of (a copy of) the input are overwritten with the right node id
//! and onion key, so the fuzzer reaches the Diffie-Hellman path instead of
//! stopping at `WrongNode` / `WrongOnionKey`. The error must be the one the
//! checks in order imply, and a reply always carries the server's `Y`.
//!
//! Client side: `ClientHandshake::with_ephemeral(..).finish(reply)`. When bit
//! 1 of the first byte is clear, the reply is the genuine answer of a server
//! whose ephemeral secret is `data[..32]`, XOR-ed with `data[32..96]` and
//! followed by `data[96..]`: an untampered reply must finish with the
//! server's keys, a tampered one must fail. Otherwise the raw input is the
//! reply.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay_kernel::handshake::{
    server_respond_with_ephemeral, ClientHandshake, CLIENT_MSG_LEN, SERVER_MSG_LEN,
};
use relay_kernel::{HandshakeError, NodeId, OnionKeypair};

/// The server's fixed ephemeral secret.
const SERVER_Y: [u8; 32] = [4; 32];
/// The client's fixed ephemeral secret.
const CLIENT_X: [u8; 32] = [3; 32];

struct Relay {
    id: NodeId,
    keys: OnionKeypair,
    /// The server's ephemeral public key for `SERVER_Y`.
    big_y: [u8; 32],
}

fn relay() -> &'static Relay {
    static RELAY: OnceLock<Relay> = OnceLock::new();
    RELAY.get_or_init(|| {
        let id = NodeId::from_identity_key(&[1; 32]);
        let keys = OnionKeypair::from_secret([2; 32]);
        let (_, msg) = ClientHandshake::with_ephemeral(CLIENT_X, id, keys.public);
        let big_y = match server_respond_with_ephemeral(SERVER_Y, &id, &keys, &msg) {
            Ok((reply, _)) => {
                let mut y = [0u8; 32];
                y.copy_from_slice(&reply[..32]);
                y
            }
            Err(e) => panic!("genuine handshake failed: {e}"),
        };
        Relay { id, keys, big_y }
    })
}

fuzz_target!(|data: &[u8]| {
    let r = relay();
    server_side(r, data);
    client_side(r, data);
});

fn server_side(r: &Relay, data: &[u8]) {
    let mut msg = data.to_vec();
    if data.first().is_some_and(|b| b % 2 == 0) {
        let mut prefix = [0u8; 64];
        prefix[..32].copy_from_slice(&r.id.0);
        prefix[32..].copy_from_slice(&r.keys.public);
        let n = msg.len().min(64);
        msg[..n].copy_from_slice(&prefix[..n]);
    }

    let res = server_respond_with_ephemeral(SERVER_Y, &r.id, &r.keys, &msg);
    let expected_err = if msg.len() < CLIENT_MSG_LEN {
        Some(HandshakeError::Malformed)
    } else if msg[..32] != r.id.0 {
        Some(HandshakeError::WrongNode)
    } else if msg[32..64] != r.keys.public {
        Some(HandshakeError::WrongOnionKey)
    } else {
        None // Ok, or BadShare for a low-order X.
    };
    match (res, expected_err) {
        (Ok((reply, _keys)), None) => {
            assert_eq!(reply.len(), SERVER_MSG_LEN);
            assert_eq!(reply[..32], r.big_y, "reply does not carry the server's Y");
        }
        (Err(HandshakeError::BadShare), None) => {}
        (Err(e), Some(want)) => assert_eq!(e, want),
        (Ok(_), Some(want)) => panic!("server accepted a message it should refuse with {want:?}"),
        (Err(e), None) => panic!("unexpected server error {e:?}"),
    }
}

fn client_side(r: &Relay, data: &[u8]) {
    let (client, client_msg) = ClientHandshake::with_ephemeral(CLIENT_X, r.id, r.keys.public);

    let genuine_branch = data.len() >= 32 && data[0] & 2 == 0;
    if !genuine_branch {
        match client.finish(data) {
            Err(HandshakeError::Malformed) => assert!(data.len() < SERVER_MSG_LEN),
            Err(_) | Ok(_) => assert!(data.len() >= SERVER_MSG_LEN),
        }
        return;
    }

    let mut y = [0u8; 32];
    y.copy_from_slice(&data[..32]);
    let (genuine, server_keys) = match server_respond_with_ephemeral(y, &r.id, &r.keys, &client_msg)
    {
        Ok(v) => v,
        Err(e) => panic!("server refused a genuine client message: {e}"),
    };
    let mut reply = genuine.to_vec();
    for (b, d) in reply.iter_mut().zip(&data[32..]) {
        *b ^= d;
    }
    reply.extend_from_slice(data.get(96..).unwrap_or(&[]));
    let tampered = reply[..SERVER_MSG_LEN] != genuine[..];

    match client.finish(&reply) {
        Ok(keys) => {
            assert!(!tampered, "client accepted a tampered reply");
            assert_eq!(keys.forward, server_keys.forward);
            assert_eq!(keys.pad, server_keys.pad);
            assert_eq!(keys.back_layer, server_keys.back_layer);
            assert_eq!(keys.back_seal, server_keys.back_seal);
        }
        Err(e) => assert!(tampered, "client rejected the genuine reply: {e}"),
    }
}
