//! Scenario files: the TOML schema, its defaults and its checks.
//!
//! A scenario names groups of hosts (clients, relays, exits) with access
//! links, optional per-pair link overrides, traffic generators, crashes,
//! partitions and probes. `docs/netsim.md` documents every key; unknown
//! keys are errors so a typo cannot silently change an experiment.

use std::path::Path;

use serde::Deserialize;

use relay_kernel::flow::CcAlgorithm;
use relay_link_udt::cc::CongestionKind;

use crate::error::SimError;
use crate::link::{Aqm, GilbertElliott};

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Link kind: one of [`LINK_KINDS`].
    #[serde(default = "default_link")]
    pub link: String,
    /// Congestion controller of udt links: "cubic", "bbr" or "udt" (None: the udt
    /// default).
    #[serde(default)]
    pub cc: Option<String>,
    /// Circuits' end-to-end congestion controller: "bbr" or "vegas" (None:
    /// the kernel default).
    #[serde(default)]
    pub circuit_cc: Option<String>,
    /// udt's datagram size discovery: the largest UDP payload it tries (0:
    /// off, and udt datagrams are as large as the MTU allows from the
    /// start). With it on, udt starts at 1,472 bytes (less if the MTU says
    /// so) and proves larger sizes as relayd does on real sockets.
    #[serde(default)]
    pub udt_max_datagram_probe: usize,
    /// Bytes of IPv4 + UDP header counted on the wire per datagram.
    #[serde(default = "default_ip_overhead")]
    pub ip_overhead: usize,
    /// Access-link defaults for every host.
    #[serde(default)]
    pub host_defaults: HostParams,
    /// Impairment defaults for every host pair.
    #[serde(default)]
    pub path_defaults: PathParams,
    /// Host groups.
    #[serde(rename = "group", default)]
    pub groups: Vec<Group>,
    /// Per-pair overrides.
    #[serde(rename = "pair", default)]
    pub links: Vec<LinkOverride>,
    /// Traffic generators.
    #[serde(rename = "traffic", default)]
    pub traffic: Vec<TrafficSpec>,
    /// Crashes.
    #[serde(rename = "crash", default)]
    pub crashes: Vec<CrashSpec>,
    /// Partitions.
    #[serde(rename = "partition", default)]
    pub partitions: Vec<PartitionSpec>,
    /// Cell-delay probes.
    #[serde(rename = "probe", default)]
    pub probes: Vec<ProbeSpec>,
    /// Host pairs whose datagrams (both directions) go into pcap files.
    #[serde(default)]
    pub pcap: Vec<[String; 2]>,
    /// Report options.
    #[serde(default)]
    pub report: ReportSpec,
}

/// The link kinds a scenario can ask for: `udt` (the real udt core),
/// `quic` (real quinn-proto connections), `tcp` (smoltcp's real TCP
/// state machine) and `tcp-model` (netsim's own NewReno model).
pub const LINK_KINDS: &[&str] = &["udt", "quic", "tcp", "tcp-model"];

fn default_link() -> String {
    "udt".into()
}
fn default_ip_overhead() -> usize {
    28
}

/// Access link of a host (overridable per group).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    /// Upload bandwidth in Mbit/s (0: unlimited).
    #[serde(default = "default_mbit")]
    pub up_mbit: f64,
    /// Download bandwidth in Mbit/s (0: unlimited).
    #[serde(default = "default_mbit")]
    pub down_mbit: f64,
    /// One-way latency from the host to the network core, ms.
    #[serde(default = "default_latency")]
    pub latency_ms: f64,
    /// Queue of each access bottleneck, KiB.
    #[serde(default = "default_queue")]
    pub queue_kib: f64,
    /// Exits: delay before the attached server answers a request, ms.
    #[serde(default)]
    pub server_delay_ms: f64,
    /// Queue management of the access bottlenecks: "droptail" or "codel".
    #[serde(default)]
    pub aqm: Aqm,
}

fn default_mbit() -> f64 {
    100.0
}
fn default_latency() -> f64 {
    10.0
}
fn default_queue() -> f64 {
    256.0
}

impl Default for HostParams {
    fn default() -> Self {
        HostParams {
            up_mbit: default_mbit(),
            down_mbit: default_mbit(),
            latency_ms: default_latency(),
            queue_kib: default_queue(),
            server_delay_ms: 0.0,
            aqm: Aqm::Droptail,
        }
    }
}

/// Path impairments (defaults, or a pair override).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathParams {
    /// Random loss per datagram.
    #[serde(default)]
    pub loss: f64,
    /// Bursty loss (replaces `loss`).
    pub gilbert: Option<GilbertElliott>,
    /// Uniform extra delay 0..=jitter, ms (order kept).
    #[serde(default)]
    pub jitter_ms: f64,
    /// Duplication probability.
    #[serde(default)]
    pub duplicate: f64,
    /// Reordering probability.
    #[serde(default)]
    pub reorder: f64,
    /// Largest extra delay of a reordered datagram, ms.
    #[serde(default)]
    pub reorder_delay_ms: f64,
    /// MTU in bytes (IP header included); 0 means 1500.
    #[serde(default)]
    pub mtu: usize,
}

/// A group of hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Name; hosts are NAME0, NAME1, ... (just NAME when count is 1).
    pub name: String,
    /// How many.
    #[serde(default = "one")]
    pub count: usize,
    /// "client", "relay" or "exit".
    pub role: String,
    /// Path-selection weight (default: upload bandwidth).
    pub weight: Option<f64>,
    /// Upload Mbit/s.
    pub up_mbit: Option<f64>,
    /// Download Mbit/s.
    pub down_mbit: Option<f64>,
    /// One-way latency to the core, ms.
    pub latency_ms: Option<f64>,
    /// Access queues, KiB.
    pub queue_kib: Option<f64>,
    /// Exits: server answer delay, ms.
    pub server_delay_ms: Option<f64>,
    /// Access queue management.
    pub aqm: Option<Aqm>,
}

fn one() -> usize {
    1
}

/// Overrides for the paths between two hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    /// One end (host name).
    pub a: String,
    /// Other end.
    pub b: String,
    /// Only a -> b (default: both directions).
    #[serde(default)]
    pub one_way: bool,
    /// One-way latency, ms (replaces the hosts' latencies).
    pub latency_ms: Option<f64>,
    /// A pair bottleneck, Mbit/s.
    pub bandwidth_mbit: Option<f64>,
    /// Its queue, KiB.
    pub queue_kib: Option<f64>,
    /// Its queue management (default drop-tail).
    #[serde(default)]
    pub aqm: Aqm,
    /// Impairments (replace the defaults).
    #[serde(flatten)]
    pub path: PathParams,
}

/// A traffic generator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// "perf" (tornettools/OnionPerf-like), "bulk", "web" (pages of
    /// small objects over one circuit) or "echo" (interactive round trips).
    pub kind: String,
    /// Client group.
    pub clients: String,
    /// First transfer at or after this time, s.
    #[serde(default)]
    pub start_s: f64,
    /// No new transfers start after this time, s (default: never stop).
    pub stop_s: Option<f64>,
    /// Perf: pause between transfers, s (first start is uniform in
    /// start_s..start_s+pause_s).
    #[serde(default = "default_pause")]
    pub pause_s: f64,
    /// Perf: (bytes, weight) pairs.
    #[serde(default = "default_sizes")]
    pub sizes: Vec<(u64, u32)>,
    /// Perf: timeout per size, s.
    #[serde(default = "default_timeouts")]
    pub timeouts_s: Vec<f64>,
    /// Bulk: bytes per transfer.
    #[serde(default)]
    pub size: u64,
    /// Bulk: transfers one after another per client.
    #[serde(default = "one")]
    pub count: usize,
    /// Bulk: timeout, s.
    #[serde(default = "default_bulk_timeout")]
    pub timeout_s: f64,
    /// Bulk: circuits in parallel per client, each with one transfer.
    #[serde(default = "one")]
    pub parallel: usize,
    /// Fixed path (host names); default: random weighted path.
    #[serde(default)]
    pub path: Vec<String>,
    /// Hops of random paths.
    #[serde(default = "default_hops")]
    pub hops: usize,
    /// Web: objects per page after the first (the page itself, fetched
    /// alone before the others).
    #[serde(default = "default_objects")]
    pub objects: usize,
    /// Web: bytes of the first object (the HTML).
    #[serde(default = "default_page_size")]
    pub page_size: u64,
    /// Web: (bytes, weight) of the other objects.
    #[serde(default = "default_object_sizes")]
    pub object_sizes: Vec<(u64, u32)>,
    /// Web: objects fetched at once (streams on the circuit), like a
    /// browser's connections per host.
    #[serde(default = "default_streams")]
    pub streams: usize,
    /// Echo: messages per session.
    #[serde(default = "default_messages")]
    pub messages: usize,
    /// Echo: bytes per message (at least 8: a sequence number).
    #[serde(default = "default_message_bytes")]
    pub message_bytes: usize,
    /// Echo: time between messages, ms.
    #[serde(default = "default_interval")]
    pub interval_ms: f64,
}

fn default_pause() -> f64 {
    60.0
}
fn default_sizes() -> Vec<(u64, u32)> {
    vec![(51_200, 12), (1_048_576, 2), (5_242_880, 1)]
}
fn default_timeouts() -> Vec<f64> {
    vec![15.0, 60.0, 120.0]
}
fn default_bulk_timeout() -> f64 {
    600.0
}
fn default_hops() -> usize {
    3
}
// Web defaults: a small page in the spirit of the HTTP Archive's medians
// scaled down (a 30 KiB document, then 10 objects of 2-64 KiB, 6 at a
// time as browsers open per host).
fn default_objects() -> usize {
    10
}
fn default_page_size() -> u64 {
    30 * 1024
}
fn default_object_sizes() -> Vec<(u64, u32)> {
    vec![(2 * 1024, 4), (8 * 1024, 3), (24 * 1024, 2), (64 * 1024, 1)]
}
fn default_streams() -> usize {
    6
}
// Echo defaults: an interactive session (ssh-like keystrokes).
fn default_messages() -> usize {
    50
}
fn default_message_bytes() -> usize {
    64
}
fn default_interval() -> f64 {
    100.0
}

/// Hosts crash and restart.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashSpec {
    /// Group whose hosts crash.
    pub group: String,
    /// Fraction of the group (rounded up), chosen by the seed.
    #[serde(default = "one_f")]
    pub fraction: f64,
    /// When, s.
    pub at_s: f64,
    /// Restart after this long, s (never when absent).
    pub restart_after_s: Option<f64>,
}

fn one_f() -> f64 {
    1.0
}

/// Hosts cut off from all others for a while.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// Host names on one side.
    pub hosts: Vec<String>,
    /// From, s.
    pub from_s: f64,
    /// Until, s.
    pub until_s: f64,
}

/// A cell-delay probe on the link from one host to another.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Sender host.
    pub from: String,
    /// Receiver host.
    pub to: String,
}

/// Report options.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Also report the success rate of transfers started at or after this
    /// time (s): recovery after crashes.
    pub after_s: Option<f64>,
    /// Goodput time-series bin, s (default 1).
    pub bin_s: Option<f64>,
}

impl Scenario {
    /// Parses a scenario from TOML text.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Scenario {
            file: file.into(),
            msg: e.to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
        Scenario::parse(&path.display().to_string(), &text)
    }

    /// Names of the hosts of a group.
    pub fn host_names(g: &Group) -> Vec<String> {
        if g.count == 1 {
            vec![g.name.clone()]
        } else {
            (0..g.count).map(|i| format!("{}{i}", g.name)).collect()
        }
    }

    /// Sets the random loss of every path (defaults and pair overrides).
    pub fn set_loss(&mut self, p: f64) {
        self.path_defaults.loss = p;
        for l in &mut self.links {
            l.path.loss = p;
        }
    }

    /// The udt congestion controller the scenario asks for.
    pub fn congestion(&self) -> Result<CongestionKind, SimError> {
        match &self.cc {
            None => Ok(CongestionKind::default()),
            Some(s) => s.parse().map_err(SimError::Invalid),
        }
    }

    /// The circuit congestion controller the scenario asks for.
    pub fn circuit_congestion(&self) -> Result<CcAlgorithm, SimError> {
        match &self.circuit_cc {
            None => Ok(CcAlgorithm::default()),
            Some(s) => s.parse().map_err(SimError::Invalid),
        }
    }

    /// Checks the scenario makes sense.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Invalid(m));
        if self.duration_s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return bad("duration_s must be positive".into());
        }
        if !LINK_KINDS.contains(&self.link.as_str()) {
            return bad(format!(
                "link must be one of {}, not {}",
                LINK_KINDS.join(", "),
                self.link
            ));
        }
        self.congestion()?;
        self.circuit_congestion()?;
        for g in &self.groups {
            if !matches!(g.role.as_str(), "client" | "relay" | "exit") {
                return bad(format!(
                    "group {}: role must be client, relay or exit",
                    g.name
                ));
            }
        }
        for t in &self.traffic {
            if !matches!(t.kind.as_str(), "perf" | "bulk" | "web" | "echo") {
                return bad(format!(
                    "traffic kind must be perf, bulk, web or echo, not {}",
                    t.kind
                ));
            }
            if t.kind == "web" && (t.object_sizes.is_empty() || t.streams == 0 || t.objects > 250) {
                return bad("web traffic needs object_sizes, streams >= 1, objects <= 250".into());
            }
            if t.kind == "echo"
                && (t.message_bytes < 8 || t.messages == 0 || t.message_bytes > 65_536)
            {
                return bad(
                    "echo traffic needs messages >= 1 and 8 <= message_bytes <= 65536".into(),
                );
            }
            if !self.groups.iter().any(|g| g.name == t.clients) {
                return bad(format!("traffic: no group {}", t.clients));
            }
            if t.kind == "perf" && (t.sizes.is_empty() || t.sizes.len() != t.timeouts_s.len()) {
                return bad("perf traffic needs as many timeouts_s as sizes".into());
            }
            if t.kind == "bulk" && t.size == 0 {
                return bad("bulk traffic needs a size".into());
            }
            if t.path.is_empty() && !(1..=8).contains(&t.hops) {
                return bad("hops must be 1 to 8".into());
            }
        }
        for c in &self.crashes {
            if !self.groups.iter().any(|g| g.name == c.group) {
                return bad(format!("crash: no group {}", c.group));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_rejects_typos() {
        let s = Scenario::parse(
            "t",
            r#"
            name = "t"
            duration_s = 10
            [[group]]
            name = "c"
            role = "client"
            [[traffic]]
            kind = "perf"
            clients = "c"
            "#,
        )
        .unwrap();
        assert_eq!(s.link, "udt");
        assert_eq!(s.traffic[0].sizes.len(), 3);
        assert_eq!(s.traffic[0].timeouts_s, vec![15.0, 60.0, 120.0]);
        assert!(Scenario::parse("t", "name = \"t\"\nduration_s = 1\nlnk = \"tcp\"").is_err());
        assert!(Scenario::parse("t", "name = \"t\"\nduration_s = 1\nlink = \"sctp\"").is_err());
        assert_eq!(s.congestion().unwrap(), CongestionKind::default());
        let bbr = Scenario::parse("t", "name = \"t\"\nduration_s = 1\ncc = \"bbr\"").unwrap();
        assert_eq!(bbr.congestion().unwrap(), CongestionKind::Bbr);
        assert!(Scenario::parse("t", "name = \"t\"\nduration_s = 1\ncc = \"reno\"").is_err());
        let vegas =
            Scenario::parse("t", "name = \"t\"\nduration_s = 1\ncircuit_cc = \"vegas\"").unwrap();
        assert_eq!(vegas.circuit_congestion().unwrap(), CcAlgorithm::Vegas);
        assert!(
            Scenario::parse("t", "name = \"t\"\nduration_s = 1\ncircuit_cc = \"cubic\"").is_err()
        );
    }
}
