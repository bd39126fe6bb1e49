//! Test vectors: the values in docs/protocol.md (section "Test vectors")
//! are recomputed here from their stated inputs and must match byte for
//! byte. Run with RELAY_PRINT_VECTORS=1 and --nocapture to print them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use relay_kernel::crypto::onion::{
    outbound_room, ClientOnion, HopKeys, RelayHop, KEY_MATERIAL_LEN,
};
#[cfg(feature = "aws-lc")]
use relay_kernel::crypto::x25519::AwsLcX25519;
use relay_kernel::crypto::x25519::{DalekEdwardsX25519, DalekX25519, X25519Key};
use relay_kernel::handshake::{
    server_respond_using, server_respond_with_ephemeral, ClientHandshake,
};
use relay_kernel::relay_msg::{RelayCommand, RelayMsg};
use relay_kernel::HandshakeError;
use relay_kernel::{Cell, CellCommand, NodeId, OnionKeypair, BODY_LEN};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 32 bytes 0x00, 0x01, ... offset by `start`.
fn seq32(start: u8) -> [u8; 32] {
    let mut a = [0u8; 32];
    for (i, b) in a.iter_mut().enumerate() {
        *b = start.wrapping_add(i as u8);
    }
    a
}

/// Key material for hop `i` of the layer vectors: 64 bytes 0x40*i + j.
fn hop_material(i: u8) -> [u8; KEY_MATERIAL_LEN] {
    let mut m = [0u8; KEY_MATERIAL_LEN];
    for (j, b) in m.iter_mut().enumerate() {
        *b = i.wrapping_mul(0x40).wrapping_add(j as u8);
    }
    m
}

fn compute() -> Result<Vec<(&'static str, String)>, Box<dyn std::error::Error>> {
    let mut v = Vec::new();
    // Handshake.
    let ed25519_public = seq32(0x10);
    let id = NodeId::from_identity_key(&ed25519_public);
    let onion = OnionKeypair::from_secret(seq32(0x20));
    let (client, msg) = ClientHandshake::with_ephemeral(seq32(0x30), id, onion.public);
    let (reply, server_keys) = server_respond_with_ephemeral(seq32(0x40), &id, &onion, &msg)?;
    let keys = client.finish(&reply)?;
    assert_eq!(keys.forward, server_keys.forward);
    v.push(("node_id", hex(&id.0)));
    v.push((
        "node_id_text",
        id.to_string().bytes().map(|b| b as char).collect(),
    ));
    v.push(("onion_public", hex(&onion.public)));
    v.push(("client_msg", hex(&msg)));
    v.push(("server_reply", hex(&reply)));
    v.push(("key_forward", hex(&keys.forward)));
    v.push(("key_pad", hex(&keys.pad)));
    v.push(("key_back_layer", hex(&keys.back_layer)));
    v.push(("key_back_seal", hex(&keys.back_seal)));

    // Onion layers, 3 hops, counters at 0.
    let hops: Vec<HopKeys> = (1..=3)
        .map(|i| HopKeys::from_material(&hop_material(i)))
        .collect();
    let mut client = ClientOnion::new();
    let mut relays = Vec::new();
    for k in &hops {
        client.push_hop(k)?;
        relays.push(RelayHop::new(k)?);
    }
    let mut body = [0u8; BODY_LEN];
    RelayMsg::write(
        &mut body[16..16 + outbound_room(3)],
        RelayCommand::Data,
        1,
        b"hello",
    )?;
    // Unused room: zeros here (nodes fill it with random bytes).
    let tag = client.wrap_outbound(&mut body)?;
    v.push(("outbound_at_hop1", hex(&body)));
    relays[0].open_outbound(&mut body)?;
    relays[0].prepare_forward(&mut body);
    v.push(("outbound_at_hop2", hex(&body)));
    relays[1].open_outbound(&mut body)?;
    relays[1].prepare_forward(&mut body);
    v.push(("outbound_at_hop3", hex(&body)));
    assert_eq!(relays[2].open_outbound(&mut body)?, tag);
    let m = RelayMsg::parse(&body[16..])?;
    assert_eq!(
        (m.command, m.stream, m.body),
        (RelayCommand::Data, 1, &b"hello"[..])
    );

    let mut back = [0u8; BODY_LEN];
    RelayMsg::write(&mut back[16..], RelayCommand::Data, 1, b"world")?;
    relays[2].seal_inbound(&mut back)?;
    relays[1].layer_inbound(&mut back);
    relays[0].layer_inbound(&mut back);
    v.push(("inbound_at_client", hex(&back)));
    client.unwrap_inbound(&mut back)?;
    let m = RelayMsg::parse(&back[16..])?;
    assert_eq!(m.body, b"world");

    // A cell on the wire.
    let mut cell = Cell::new(0x8000_002a, CellCommand::Destroy);
    cell.body_mut()[0] = 9;
    v.push(("destroy_cell_prefix", hex(&cell.as_bytes()[..8])));
    Ok(v)
}

/// Parses `name = hex` entries (hex may continue on following indented
/// lines) from the doc's vectors block.
fn parse_doc(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let Some(start) = doc.find("<!-- test-vectors -->") else {
        return out;
    };
    let block = &doc[start..];
    let mut in_code = false;
    for line in block.lines() {
        if line.starts_with("```") {
            if in_code {
                break;
            }
            in_code = true;
            continue;
        }
        if !in_code {
            continue;
        }
        if let Some((name, value)) = line.split_once(" = ") {
            out.push((name.trim().to_string(), value.trim().to_string()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(line.trim());
        }
    }
    out
}

#[test]
fn docs_vectors_match_the_code() -> Result<(), Box<dyn std::error::Error>> {
    let computed = compute()?;
    if std::env::var_os("RELAY_PRINT_VECTORS").is_some() {
        for (name, value) in &computed {
            let mut chunks = value.as_bytes().chunks(64);
            let first = chunks
                .next()
                .map(|c| String::from_utf8_lossy(c).to_string())
                .unwrap_or_default();
            println!("{name} = {first}");
            for c in chunks {
                println!("    {}", String::from_utf8_lossy(c));
            }
        }
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))?;
    let documented = parse_doc(&doc);
    assert_eq!(
        documented.len(),
        computed.len(),
        "vector count in docs/protocol.md"
    );
    for ((dn, dv), (cn, cv)) in documented.iter().zip(&computed) {
        assert_eq!(dn, cn);
        assert_eq!(dv, cv, "vector {cn}");
    }
    Ok(())
}

/// The handshake part of [`compute`] with X25519 backend `K`, as
/// (name, hex) pairs named as in the doc.
fn handshake_with<K: X25519Key>() -> Result<Vec<(&'static str, String)>, HandshakeError> {
    let id = NodeId::from_identity_key(&seq32(0x10));
    let onion = K::from_bytes(seq32(0x20));
    let (client, msg) =
        ClientHandshake::<K>::with_ephemeral_using(seq32(0x30), id, onion.public_key());
    let (reply, server_keys) = server_respond_using(seq32(0x40), &id, &onion, &msg)?;
    let keys = client.finish(&reply)?;
    assert_eq!(keys.back_seal, server_keys.back_seal);
    Ok(vec![
        ("onion_public", hex(&onion.public_key())),
        ("client_msg", hex(&msg)),
        ("server_reply", hex(&reply)),
        ("key_forward", hex(&keys.forward)),
        ("key_pad", hex(&keys.pad)),
        ("key_back_layer", hex(&keys.back_layer)),
        ("key_back_seal", hex(&keys.back_seal)),
    ])
}

#[test]
fn handshake_vectors_match_with_every_x25519_backend() -> Result<(), Box<dyn std::error::Error>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))?;
    let documented = parse_doc(&doc);
    #[cfg_attr(not(feature = "aws-lc"), allow(unused_mut))]
    let mut runs = vec![
        ("x25519-dalek", handshake_with::<DalekX25519>()?),
        (
            "curve25519-dalek edwards",
            handshake_with::<DalekEdwardsX25519>()?,
        ),
    ];
    #[cfg(feature = "aws-lc")]
    runs.push(("aws-lc", handshake_with::<AwsLcX25519>()?));
    for (backend, vectors) in runs {
        for (name, value) in vectors {
            let doc_value = documented.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            assert_eq!(doc_value, Some(&value), "{backend}: vector {name}");
        }
    }
    Ok(())
}

/// A client on one backend and a relay on another, with random secrets:
/// the same keys on both sides, and the relay's reply byte for byte the
/// same whichever backend computed it.
fn cross_check<C: X25519Key, S: X25519Key>(rng: &mut ChaCha20Rng) -> Result<(), HandshakeError> {
    let id = NodeId::from_identity_key(&rng.gen());
    let b: [u8; 32] = rng.gen();
    let (onion, onion_ladder) = (S::from_bytes(b), DalekX25519::from_bytes(b));
    assert_eq!(onion.public_key(), onion_ladder.public_key());
    let (client, msg) = ClientHandshake::<C>::start_using(rng, id, onion.public_key());
    let y: [u8; 32] = rng.gen();
    let (reply, server_keys) = server_respond_using(y, &id, &onion, &msg)?;
    let (reply_ladder, _) = server_respond_using(y, &id, &onion_ladder, &msg)?;
    assert_eq!(reply, reply_ladder);
    let keys = client.finish(&reply)?;
    assert_eq!(keys.forward, server_keys.forward);
    assert_eq!(keys.back_layer, server_keys.back_layer);
    // A low-order X is refused by the relay on every backend.
    let mut bad = msg;
    bad[64..].fill(0);
    bad[64] = 1;
    assert_eq!(
        server_respond_using(y, &id, &onion, &bad).err(),
        Some(HandshakeError::BadShare)
    );
    Ok(())
}

#[test]
fn x25519_backends_interoperate_on_random_inputs() -> Result<(), HandshakeError> {
    let mut rng = ChaCha20Rng::seed_from_u64(25519);
    for _ in 0..50 {
        cross_check::<DalekX25519, DalekEdwardsX25519>(&mut rng)?;
        cross_check::<DalekEdwardsX25519, DalekX25519>(&mut rng)?;
        #[cfg(feature = "aws-lc")]
        {
            cross_check::<AwsLcX25519, DalekX25519>(&mut rng)?;
            cross_check::<DalekX25519, AwsLcX25519>(&mut rng)?;
            cross_check::<AwsLcX25519, AwsLcX25519>(&mut rng)?;
        }
    }
    Ok(())
}
