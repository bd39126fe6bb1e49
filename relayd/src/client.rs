//! The client side: choosing paths (explicit hops, peers-file names, `rand`
//! hops from tracker lists), keeping the directory fresh from trackers,
//! and building circuits with retries around dead relays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use relay_kernel::{CircuitRef, NodeId, StreamKind, TargetAddr};
use relay_link::PeerAddr;

use crate::daemon::{Daemon, DaemonError, RelayStream};
use crate::descriptor::Descriptor;
use crate::peers::Peers;
use crate::services;
use crate::spec::Hop;

/// Time to build one circuit before trying another path.
const BUILD_TIMEOUT: Duration = Duration::from_secs(5);
/// Paths tried per request.
const ATTEMPTS: usize = 3;
/// A relay on a failed path is avoided this long.
const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// How long a request waits for the directory to know enough relays.
const DIRECTORY_WAIT: Duration = Duration::from_secs(15);

/// Path selection and circuit building for one client.
pub struct Client {
    /// The node.
    pub daemon: Daemon,
    peers: Peers,
    suspects: Mutex<HashMap<NodeId, Instant>>,
}

/// A hop resolved to a node, or left to chance.
enum Choice {
    Fixed(Descriptor),
    Rand,
}

impl Client {
    /// A client on `daemon` that knows the names in `peers`.
    pub fn new(daemon: Daemon, peers: Peers) -> Client {
        Client {
            daemon,
            peers,
            suspects: Mutex::new(HashMap::new()),
        }
    }

    fn is_suspect(&self, id: &NodeId) -> bool {
        let mut s = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, t| t.elapsed() < SUSPECT_FOR);
        s.contains_key(id)
    }

    /// Avoid these relays for a while (their circuit failed).
    pub fn suspect(&self, ids: &[NodeId]) {
        let mut s = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            s.insert(*id, Instant::now());
        }
    }

    /// The descriptor of a peer named by address: from the directory, else
    /// from its LinkInfo on a direct link (which tells that node we asked).
    pub async fn descriptor_for(&self, peer: &PeerAddr) -> Result<Descriptor, DaemonError> {
        if let Some(d) = self.daemon.descriptor_of(&peer.id) {
            return Ok(d);
        }
        self.daemon.ensure_link(peer).await?;
        self.daemon
            .wait_descriptor(&peer.id, Duration::from_secs(10))
            .await
    }

    async fn choose(&self, hop: &Hop) -> Result<Choice, DaemonError> {
        match hop {
            Hop::Rand => Ok(Choice::Rand),
            Hop::Peer(p) => Ok(Choice::Fixed(self.descriptor_for(p).await?)),
            Hop::Name(n) => {
                let p = self
                    .peers
                    .get(n)
                    .cloned()
                    .ok_or_else(|| DaemonError::Connect {
                        peer: n.clone(),
                        why: "not in the peers file".into(),
                    })?;
                Ok(Choice::Fixed(self.descriptor_for(&p).await?))
            }
        }
    }

    /// Fills `rand` hops: distinct nodes, not this one, not fixed elsewhere
    /// in the path, not suspect; the last hop an exit when `need_exit`.
    fn fill(&self, choices: &[Choice], need_exit: bool) -> Result<Vec<Descriptor>, String> {
        let me = self.daemon.id();
        let fixed: Vec<NodeId> = choices
            .iter()
            .filter_map(|c| match c {
                Choice::Fixed(d) => Some(d.node_id()),
                Choice::Rand => None,
            })
            .collect();
        let mut pool: Vec<Descriptor> = self
            .daemon
            .known_relays()
            .into_iter()
            .filter(|d| {
                let id = d.node_id();
                id != me && !fixed.contains(&id) && !self.is_suspect(&id) && !d.addrs.is_empty()
            })
            .collect();
        let mut rng = rand::thread_rng();
        pool.shuffle(&mut rng);
        let mut path = Vec::with_capacity(choices.len());
        let last = choices.len().saturating_sub(1);
        for (i, c) in choices.iter().enumerate() {
            match c {
                Choice::Fixed(d) => path.push(d.clone()),
                Choice::Rand => {
                    let pos = if i == last && need_exit {
                        pool.iter().position(|d| d.exit)
                    } else {
                        // Keep exits for the last hop when they are scarce.
                        pool.iter().position(|d| !d.exit).or(if pool.len() > 1 {
                            Some(0)
                        } else {
                            None
                        })
                    };
                    let Some(pos) = pos else {
                        return Err(format!(
                            "hop {}: no {}relay left ({} known)",
                            i + 1,
                            if i == last && need_exit { "exit " } else { "" },
                            self.daemon.known_relays().len()
                        ));
                    };
                    path.push(pool.remove(pos));
                }
            }
        }
        Ok(path)
    }

    /// Builds a circuit along `hops`, retrying other `rand` choices when a
    /// build fails.
    pub async fn build(&self, hops: &[Hop], need_exit: bool) -> Result<CircuitRef, DaemonError> {
        let mut choices = Vec::with_capacity(hops.len());
        for h in hops {
            choices.push(self.choose(h).await?);
        }
        let deadline = Instant::now() + DIRECTORY_WAIT;
        let mut last_err = DaemonError::NotEnoughRelays("no attempt".into());
        let mut attempts = 0;
        while attempts < ATTEMPTS {
            let path = match self.fill(&choices, need_exit) {
                Ok(p) => p,
                Err(why) => {
                    if Instant::now() >= deadline {
                        return Err(DaemonError::NotEnoughRelays(why));
                    }
                    // The tracker lists may still be arriving.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            attempts += 1;
            match self.daemon.build_circuit(&path, BUILD_TIMEOUT).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::info!("circuit through {} hops failed: {e}", path.len());
                    let rand_ids: Vec<NodeId> = path
                        .iter()
                        .zip(&choices)
                        .filter(|(_, c)| matches!(c, Choice::Rand))
                        .map(|(d, _)| d.node_id())
                        .collect();
                    self.suspect(&rand_ids);
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    /// Node ids along a circuit this node built.
    pub fn path_of(&self, circ: CircuitRef) -> Vec<NodeId> {
        self.daemon
            .snapshot()
            .circuits
            .into_iter()
            .find(|c| c.circuit == circ)
            .map(|c| c.hops)
            .unwrap_or_default()
    }
}

/// One round trip with a tracker: publish our descriptor (when `publish`)
/// and learn its list.
pub async fn tracker_round(
    client: &Client,
    tracker: &PeerAddr,
    publish: bool,
) -> Result<usize, DaemonError> {
    let d = &client.daemon;
    let desc = client.descriptor_for(tracker).await?;
    let circ = d.build_circuit(&[desc], BUILD_TIMEOUT).await?;
    let result = tracker_exchange(d, circ, publish).await;
    d.close_circuit_when_idle(circ);
    result
}

async fn open_service(
    d: &Daemon,
    circ: CircuitRef,
    name: &str,
) -> Result<RelayStream, DaemonError> {
    d.open_stream(
        circ,
        StreamKind::Internal,
        TargetAddr::Host(name.into(), 0),
        Duration::from_secs(10),
    )
    .await
}

async fn tracker_exchange(
    d: &Daemon,
    circ: CircuitRef,
    publish: bool,
) -> Result<usize, DaemonError> {
    let fail = |why: String| DaemonError::Connect {
        peer: "tracker".into(),
        why,
    };
    if publish {
        let s = open_service(d, circ, services::TRACKER).await?;
        let line = format!("PUBLISH {}", crate::keys::to_hex(&d.descriptor_bytes()));
        services::request(s, &line, false).await.map_err(fail)?;
    }
    let s = open_service(d, circ, services::TRACKER).await?;
    let lines = services::request(s, "LIST", true).await.map_err(fail)?;
    let mut learned = 0;
    for l in lines {
        if let Some(hex) = l.strip_prefix("D ") {
            match crate::keys::hex_decode(hex).map(|b| Descriptor::decode(&b)) {
                Some(Ok(desc)) => {
                    d.learn(desc);
                    learned += 1;
                }
                _ => tracing::debug!("tracker sent a bad descriptor; skipped"),
            }
        }
    }
    Ok(learned)
}

/// Keeps publishing to and fetching from the trackers: every 2 s while few
/// relays are known, else every minute.
pub async fn tracker_loop(client: std::sync::Arc<Client>, trackers: Vec<PeerAddr>, publish: bool) {
    loop {
        if publish {
            client.daemon.refresh_descriptor();
        }
        for t in &trackers {
            match tracker_round(&client, t, publish).await {
                Ok(n) => tracing::debug!(tracker = %t.id, "tracker listed {n} relays"),
                Err(e) => tracing::info!(tracker = %t.id, "tracker: {e}"),
            }
        }
        let few = client.daemon.known_relays().len() < 8;
        tokio::time::sleep(Duration::from_secs(if few { 2 } else { 60 })).await;
    }
}

/// Sends a text message to node `to` over a one-hop circuit (control port
/// `send`).
pub async fn send_message(client: &Client, to: &NodeId, text: &str) -> Result<(), DaemonError> {
    let d = &client.daemon;
    let desc = d.descriptor_of(to).ok_or(DaemonError::NoDescriptor(*to))?;
    let circ = d.build_circuit(&[desc], BUILD_TIMEOUT).await?;
    let r = async {
        let s = open_service(d, circ, services::MESSAGES).await?;
        services::request(s, text, false)
            .await
            .map_err(|why| DaemonError::Connect {
                peer: to.to_string(),
                why,
            })
    }
    .await;
    d.close_circuit_when_idle(circ);
    r.map(|_| ())
}
