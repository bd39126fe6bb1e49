//! A 3-hop circuit in memory: builds it with the real handshake, sends a
//! message through an echo at the exit, then shows a relay tampering with
//! one cell being caught by the next hop. Run with
//! `cargo run --release -p relay-kernel --example demo`.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use relay_kernel::crypto::onion::{outbound_room, INBOUND_ROOM};
use relay_kernel::relay_msg::MSG_HEADER_LEN;
use relay_kernel::*;

/// Nodes 0 (client) .. 3 (exit), linked in a line; node i's link to i+1 is
/// LinkId(2i+1) on its side and LinkId(2i+2) on the other.
struct Line {
    nodes: Vec<Node>,
    now: Time,
    /// Bytes the exit's echo application has read.
    exit_read: usize,
}

impl Line {
    fn new() -> Line {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut nodes: Vec<Node> = (0..4u8)
            .map(|i| {
                let id = NodeId::from_identity_key(&[i; 32]);
                let onion = OnionKeypair::generate(&mut rng);
                Node::new(
                    id,
                    onion,
                    NodeConfig::default(),
                    Box::new(ChaCha20Rng::seed_from_u64(u64::from(i))),
                )
            })
            .collect();
        for i in 0..3 {
            let (a, b) = (nodes[i].id(), nodes[i + 1].id());
            nodes[i].link_up(Time(0), LinkId(2 * i as u64 + 1), b, true);
            nodes[i + 1].link_up(Time(0), LinkId(2 * i as u64 + 2), a, false);
        }
        Line {
            nodes,
            now: Time(0),
            exit_read: 0,
        }
    }

    /// Delivers everything queued, calling `tamper` on cells from node 1 to 2.
    fn run(&mut self, tamper: &mut dyn FnMut(&mut Cell)) -> Vec<(usize, Event)> {
        let mut events = Vec::new();
        for _ in 0..100 {
            self.now = self.now.plus_nanos(1_000_000);
            let mut moved = false;
            for i in 0..3 {
                while let Some(mut cell) = self.nodes[i].poll_transmit(LinkId(2 * i as u64 + 1)) {
                    if i == 1 {
                        tamper(&mut cell);
                    }
                    self.nodes[i + 1].handle_cell(self.now, LinkId(2 * i as u64 + 2), cell);
                    moved = true;
                }
                while let Some(cell) = self.nodes[i + 1].poll_transmit(LinkId(2 * i as u64 + 2)) {
                    self.nodes[i].handle_cell(self.now, LinkId(2 * i as u64 + 1), cell);
                    moved = true;
                }
            }
            for (i, n) in self.nodes.iter_mut().enumerate() {
                while let Some(ev) = n.poll_event() {
                    if let Event::StreamRequest { stream, .. } = &ev {
                        let _ = n.accept_stream(self.now, *stream, None);
                    }
                    events.push((i, ev));
                }
            }
            // The exit echoes whatever it reads.
            let streams: Vec<StreamRef> =
                self.nodes[3].streams().iter().map(|s| s.stream).collect();
            for s in streams {
                let mut buf = [0u8; 4096];
                while let Ok(n) = self.nodes[3].stream_read(self.now, s, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    self.exit_read += n;
                    let _ = self.nodes[3].stream_write(self.now, s, &buf[..n]);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        events
    }

    fn hop(&self, i: usize) -> HopSpec {
        HopSpec {
            id: self.nodes[i].id(),
            onion_key: self.nodes[i].onion_key(),
            addr: format!("mem://{i}"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cells are {CELL_LEN} bytes; DATA payload outbound: 1 hop {} B, 3 hops {} B, 8 hops {} B; inbound {} B",
        outbound_room(1) - MSG_HEADER_LEN, outbound_room(3) - MSG_HEADER_LEN,
        outbound_room(8) - MSG_HEADER_LEN, INBOUND_ROOM - MSG_HEADER_LEN);
    let mut line = Line::new();
    let path = vec![line.hop(1), line.hop(2), line.hop(3)];
    let circ = line.nodes[0].build_circuit(line.now, LinkId(1), path)?;
    let events = line.run(&mut |_| {});
    assert!(
        events.contains(&(0, Event::CircuitReady(circ))),
        "circuit not built"
    );
    println!(
        "circuit built through {} hops: {}",
        line.nodes[0].circuit_hops(circ).unwrap_or(0),
        (1..4)
            .map(|i| line.nodes[i].id().to_string()[..8].to_string())
            .collect::<Vec<_>>()
            .join(" > ")
    );
    let now = line.now;
    let s = line.nodes[0].open_stream(
        now,
        circ,
        StreamKind::Tcp,
        &TargetAddr::Host("echo.example".into(), 7),
    )?;
    line.nodes[0].stream_write(now, s, b"hello through three layers")?;
    line.run(&mut |_| {});
    let mut buf = [0u8; 64];
    let n = line.nodes[0].stream_read(line.now, s, &mut buf)?;
    println!("echoed back: {:?}", String::from_utf8_lossy(&buf[..n]));

    // Relay 1 flips one bit of the next cell it forwards: relay 2 catches it.
    line.nodes[0].stream_write(line.now, s, b"this one gets tampered with")?;
    let before = line.exit_read;
    let mut done = false;
    let events = line.run(&mut |cell| {
        if !done && cell.raw_command() == CellCommand::Relay as u8 {
            let mut raw = cell.as_bytes().to_vec();
            raw[200] ^= 1;
            if let Ok(c) = Cell::from_slice(&raw) {
                *cell = c;
            }
            done = true;
        }
    });
    let closed = events
        .iter()
        .find(|(i, e)| *i == 0 && matches!(e, Event::CircuitClosed { .. }));
    println!(
        "after one flipped bit: {:?}; relay 2 killed {} circuit(s); bytes the exit received: {}",
        closed.map(|(_, e)| e),
        line.nodes[2].stats().circuits_killed,
        line.exit_read - before
    );
    Ok(())
}
