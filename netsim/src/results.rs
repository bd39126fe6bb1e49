//! Turning a finished run into what researchers read: `results.json`
//! (simulated outputs only, so it is byte-identical for a given scenario
//! and seed) and the per-transfer rows of `transfers.csv` with OnionPerf's
//! column names.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::host::Host;
use crate::link::Bottleneck;
use crate::sim::Sim;
use crate::stats::{percentiles, DelaySummary, Histogram, Percentiles};
use crate::traffic::{Kind, Transfer};

/// Per-size figures.
#[derive(Serialize)]
pub struct SizeStats {
    /// Transfers that ended (success or error).
    pub finished: usize,
    /// Completed byte-exact.
    pub ok: usize,
    /// Errors / finished.
    pub error_rate: f64,
    /// Time to first byte of successful transfers (s, from stream open).
    pub ttfb_s: Percentiles,
    /// Time to last byte (s, from stream open).
    pub ttlb_s: Percentiles,
    /// Per-transfer goodput, Mbit/s (size / TTLB).
    pub goodput_mbit: Percentiles,
}

/// Queueing delay at each kind of bottleneck.
#[derive(Serialize)]
pub struct Queueing {
    /// Host upload bottlenecks.
    pub uplink: DelaySummary,
    /// Host download bottlenecks.
    pub downlink: DelaySummary,
    /// Pair bottlenecks.
    pub pair: DelaySummary,
    /// Largest delay seen divided by the configured bound
    /// (queue size / bandwidth) of its bottleneck: never above 1.
    pub worst_fraction_of_bound: f64,
}

/// Link-level counters.
#[derive(Serialize)]
pub struct LinkCounters {
    /// Link kind.
    pub kind: String,
    /// Datagrams hosts sent.
    pub datagrams: u64,
    /// Cells the link cores retransmitted.
    pub retransmitted_cells: u64,
    /// Datagrams lost to random or bursty loss.
    pub lost_random: u64,
    /// Datagrams dropped by full queues (and by CoDel).
    pub lost_queue: u64,
    /// Of those, dropped by CoDel (absent when no queue runs it).
    #[serde(skip_serializing_if = "is_zero")]
    pub lost_aqm: u64,
    /// Datagrams above the MTU.
    pub too_big: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// Datagrams reordered.
    pub reordered: u64,
    /// Datagrams dropped by partitions.
    pub partitioned: u64,
    /// Datagrams that reached a crashed host.
    pub to_dead_host: u64,
}

/// Relay throughput.
#[derive(Serialize)]
pub struct RelayStats {
    /// Relays and exits.
    pub relays: usize,
    /// Relay cells forwarded by middle positions, all relays.
    pub cells_relayed: u64,
    /// Per-relay forwarding rate over the run, Mbit/s of cells.
    pub throughput_mbit: Percentiles,
}

/// One probe's cell delays.
#[derive(Serialize)]
pub struct ProbeStats {
    /// Link name.
    pub link: String,
    /// Datagrams lost on it.
    pub lost_datagrams: u64,
    /// Every cell.
    pub all: DelaySummary,
    /// Cells of circuits that lost nothing while they were in flight.
    pub clean: DelaySummary,
    /// The others.
    pub dirty: DelaySummary,
}

/// Success of transfers started after a point (crash recovery).
#[derive(Serialize)]
pub struct Recovery {
    /// From (s).
    pub after_s: f64,
    /// Transfers started since and finished.
    pub finished: usize,
    /// Of which byte-exact.
    pub ok: usize,
    /// ok / finished.
    pub success_rate: f64,
}

/// Web page loads (`web` traffic).
#[derive(Serialize)]
pub struct WebStats {
    /// Pages that ended.
    pub pages: usize,
    /// Loaded completely, every object byte-exact.
    pub ok: usize,
    /// Objects per page (document included).
    pub objects_per_page: Percentiles,
    /// Page load time (s): from the document's request on the ready
    /// circuit to the last byte of the last object.
    pub load_s: Percentiles,
    /// Time to first byte of the document (s).
    pub document_ttfb_s: Percentiles,
    /// Per object of loaded pages, request to last byte (s).
    pub object_ttlb_s: Percentiles,
}

/// Interactive echo sessions (`echo` traffic).
#[derive(Serialize)]
pub struct EchoStats {
    /// Sessions that ended.
    pub sessions: usize,
    /// Every message came back byte-exact.
    pub ok: usize,
    /// Round trips measured (all sessions, failed ones included).
    pub messages: usize,
    /// Round-trip time of a message, client write to echo read (ms).
    pub rtt_ms: Percentiles,
}

/// Everything in `results.json`.
#[derive(Serialize)]
pub struct Results {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Hosts.
    pub hosts: usize,
    /// Transfers started.
    pub transfers: usize,
    /// Finished.
    pub finished: usize,
    /// Byte-exact.
    pub ok: usize,
    /// Still running at the end (not in the rates).
    pub unfinished: usize,
    /// Errors / finished.
    pub error_rate: f64,
    /// Error codes and counts.
    pub errors: BTreeMap<String, usize>,
    /// Per size label.
    pub by_size: BTreeMap<String, SizeStats>,
    /// Circuit build times (s).
    pub circuit_build_s: Percentiles,
    /// Client goodput over the run, Mbit/s.
    pub goodput_mbit: f64,
    /// Client goodput over the second half of the run, Mbit/s (steady
    /// state of long transfers).
    pub goodput_second_half_mbit: f64,
    /// Client goodput per bin, Mbit/s.
    pub goodput_series_mbit: Vec<f64>,
    /// Bin width (s).
    pub goodput_bin_s: f64,
    /// Relays.
    pub relays: RelayStats,
    /// Queueing delays.
    pub queueing: Queueing,
    /// Link counters.
    pub links: LinkCounters,
    /// Probes.
    pub probes: Vec<ProbeStats>,
    /// Recovery after `report.after_s`.
    pub recovery: Option<Recovery>,
    /// Hosts crashed.
    pub crashes: usize,
    /// Web page loads, if the scenario has web clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<WebStats>,
    /// Echo sessions, if the scenario has echo clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<EchoStats>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn merged<'a>(bs: impl Iterator<Item = &'a Bottleneck>) -> Histogram {
    let mut h = Histogram::default();
    for b in bs {
        h.merge(&b.queue_delay);
    }
    h
}

fn worst(bs: impl Iterator<Item = impl std::borrow::Borrow<Bottleneck>>) -> f64 {
    bs.filter_map(|b| {
        let b = b.borrow();
        let bound = b.max_queue_delay();
        (bound > 0).then(|| b.queue_delay.max() as f64 / bound as f64)
    })
    .fold(0.0, f64::max)
}

impl Results {
    /// Computes the results of a finished run.
    pub fn of(sim: &Sim) -> Results {
        let ts = &sim.traffic.transfers;
        let finished: Vec<&Transfer> = ts.iter().filter(|t| t.finished).collect();
        let ok = finished.iter().filter(|t| t.ok()).count();
        let mut errors = BTreeMap::new();
        for t in &finished {
            if let Some(e) = t.error {
                *errors.entry(e.to_string()).or_insert(0) += 1;
            }
        }
        let rate = |bad: usize, n: usize| if n == 0 { 0.0 } else { bad as f64 / n as f64 };
        let mut by_size = BTreeMap::new();
        // Downloads by size (OnionPerf's labels) and pages as `page`; echo
        // sessions have their own section.
        let mut labels: Vec<String> = ts
            .iter()
            .filter(|t| !matches!(t.kind, Kind::Echo(_)))
            .map(Transfer::label)
            .collect();
        labels.sort_unstable();
        labels.dedup();
        for label in labels {
            let fin: Vec<&&Transfer> = finished.iter().filter(|t| t.label() == label).collect();
            let good: Vec<&&Transfer> = fin.iter().copied().filter(|t| t.ok()).collect();
            let times = |f: &dyn Fn(&Transfer) -> Option<u64>| -> Vec<f64> {
                good.iter().filter_map(|t| f(t).map(secs)).collect()
            };
            let ttfb = times(&|t| Some(t.first_byte?.since(t.opened?)));
            let ttlb = times(&|t| Some(t.last_byte?.since(t.opened?)));
            let gp: Vec<f64> = good
                .iter()
                .filter_map(|t| Some((t.size, t.last_byte?.since(t.opened?))))
                .filter(|(_, d)| *d > 0)
                .map(|(size, d)| size as f64 * 8.0 / secs(d) / 1e6)
                .collect();
            by_size.insert(
                label,
                SizeStats {
                    finished: fin.len(),
                    ok: good.len(),
                    error_rate: rate(fin.len() - good.len(), fin.len()),
                    ttfb_s: percentiles(&ttfb),
                    ttlb_s: percentiles(&ttlb),
                    goodput_mbit: percentiles(&gp),
                },
            );
        }
        let builds: Vec<f64> = ts
            .iter()
            .filter_map(|t| Some(secs(t.built?.since(t.start))))
            .collect();
        let duration = sim.end.nanos() as f64 / 1e9;
        let total_bytes: u64 = sim.traffic.goodput_bins.iter().sum();
        let bin_s = sim.traffic.bin as f64 / 1e9;
        let relays: Vec<usize> = (0..sim.hosts.len())
            .filter(|&i| sim.traffic.info[i].role != "client")
            .collect();
        let relay_rates: Vec<f64> = relays
            .iter()
            .map(|&i| sim.hosts[i].cells_relayed() as f64 * 514.0 * 8.0 / duration / 1e6)
            .collect();
        let paths = sim.net.paths().map(|(_, p)| p);
        let net = &sim.net;
        let queueing = Queueing {
            uplink: merged(net.up.iter()).summary_ms(),
            downlink: merged(net.down.iter()).summary_ms(),
            pair: merged(net.paths().map(|(_, p)| &p.bottleneck)).summary_ms(),
            worst_fraction_of_bound: worst(net.up.iter())
                .max(worst(net.down.iter()))
                .max(worst(net.paths().map(|(_, p)| &p.bottleneck))),
        };
        let mut links = LinkCounters {
            kind: sim.scenario.link.clone(),
            datagrams: sim.datagrams,
            retransmitted_cells: sim.hosts.iter().map(Host::retransmitted).sum(),
            lost_random: 0,
            lost_queue: net
                .up
                .iter()
                .chain(net.down.iter())
                .map(|b| b.dropped)
                .sum(),
            lost_aqm: net
                .up
                .iter()
                .chain(net.down.iter())
                .map(|b| b.aqm_dropped)
                .sum(),
            too_big: 0,
            duplicated: 0,
            reordered: 0,
            partitioned: net.partitioned,
            to_dead_host: sim.to_dead_host,
        };
        for p in paths {
            links.lost_random += p.lost;
            links.lost_queue += p.bottleneck.dropped;
            links.lost_aqm += p.bottleneck.aqm_dropped;
            links.too_big += p.too_big;
            links.duplicated += p.duplicated;
            links.reordered += p.reordered;
        }
        let probes = sim
            .probes
            .list
            .iter()
            .map(|p| ProbeStats {
                link: p.name.clone(),
                lost_datagrams: p.lost_datagrams,
                all: p.all.summary_ms(),
                clean: p.clean.summary_ms(),
                dirty: p.dirty.summary_ms(),
            })
            .collect();
        let recovery = sim.scenario.report.after_s.map(|after| {
            let from = crate::traffic::secs(after);
            let fin: Vec<&&Transfer> = finished
                .iter()
                .filter(|t| t.start.nanos() >= from)
                .collect();
            let good = fin.iter().filter(|t| t.ok()).count();
            Recovery {
                after_s: after,
                finished: fin.len(),
                ok: good,
                success_rate: if fin.is_empty() {
                    0.0
                } else {
                    good as f64 / fin.len() as f64
                },
            }
        });
        Results {
            scenario: sim.scenario.name.clone(),
            seed: sim.seed,
            duration_s: duration,
            hosts: sim.hosts.len(),
            transfers: ts.len(),
            finished: finished.len(),
            ok,
            unfinished: ts.len() - finished.len(),
            error_rate: rate(finished.len() - ok, finished.len()),
            errors,
            by_size,
            circuit_build_s: percentiles(&builds),
            goodput_mbit: total_bytes as f64 * 8.0 / duration / 1e6,
            goodput_second_half_mbit: {
                let half = sim.end.nanos() / 2;
                let bytes: u64 = sim
                    .traffic
                    .goodput_bins
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i as u64 * sim.traffic.bin >= half)
                    .map(|(_, b)| *b)
                    .sum();
                bytes as f64 * 8.0 / ((sim.end.nanos() - half) as f64 / 1e9).max(1e-9) / 1e6
            },
            goodput_series_mbit: sim
                .traffic
                .goodput_bins
                .iter()
                .map(|b| *b as f64 * 8.0 / bin_s / 1e6)
                .collect(),
            goodput_bin_s: bin_s,
            relays: RelayStats {
                relays: relays.len(),
                cells_relayed: relays.iter().map(|&i| sim.hosts[i].cells_relayed()).sum(),
                throughput_mbit: percentiles(&relay_rates),
            },
            queueing,
            links,
            probes,
            recovery,
            crashes: sim.crashes.len(),
            web: web_stats(&finished),
            echo: echo_stats(&finished),
        }
    }
}

fn web_stats(finished: &[&Transfer]) -> Option<WebStats> {
    let pages: Vec<&&Transfer> = finished
        .iter()
        .filter(|t| matches!(t.kind, Kind::Page(_)))
        .collect();
    if pages.is_empty() {
        return None;
    }
    let good: Vec<&&Transfer> = pages.iter().copied().filter(|t| t.ok()).collect();
    let per = |f: &dyn Fn(&Transfer) -> Option<u64>| -> Percentiles {
        percentiles(
            &good
                .iter()
                .filter_map(|t| f(t).map(secs))
                .collect::<Vec<_>>(),
        )
    };
    let mut objects = Vec::new();
    let mut counts = Vec::new();
    for t in &good {
        if let Kind::Page(p) = &t.kind {
            counts.push(p.objects.len() as f64);
            objects.extend(
                p.objects
                    .iter()
                    .filter_map(|o| Some(secs(o.last_byte?.since(o.opened?)))),
            );
        }
    }
    Some(WebStats {
        pages: pages.len(),
        ok: good.len(),
        objects_per_page: percentiles(&counts),
        load_s: per(&|t| Some(t.last_byte?.since(t.opened?))),
        document_ttfb_s: per(&|t| Some(t.first_byte?.since(t.opened?))),
        object_ttlb_s: percentiles(&objects),
    })
}

fn echo_stats(finished: &[&Transfer]) -> Option<EchoStats> {
    let sessions: Vec<&&Transfer> = finished
        .iter()
        .filter(|t| matches!(t.kind, Kind::Echo(_)))
        .collect();
    if sessions.is_empty() {
        return None;
    }
    let rtts: Vec<f64> = sessions
        .iter()
        .filter_map(|t| match &t.kind {
            Kind::Echo(e) => Some(e.rtts.iter().map(|r| *r as f64 / 1e6)),
            _ => None,
        })
        .flatten()
        .collect();
    Some(EchoStats {
        sessions: sessions.len(),
        ok: sessions.iter().filter(|t| t.ok()).count(),
        messages: rtts.len(),
        rtt_ms: percentiles(&rtts),
    })
}

fn opt_secs(t: Option<u64>) -> String {
    t.map_or(String::new(), |ns| format!("{:.6}", secs(ns)))
}

/// `transfers.csv`: OnionPerf's columns plus circuit build time and path.
pub fn transfers_csv(sim: &Sim) -> String {
    let mut s = String::from(
        "id,error_code,filesize_bytes,label,server,start,time_to_first_byte,time_to_last_byte,circuit_build_time,path\n",
    );
    for t in &sim.traffic.transfers {
        let error = match (t.finished, t.error) {
            (false, _) => "UNFINISHED",
            (true, Some(e)) => e,
            (true, None) => "NONE",
        };
        let name = |h: usize| sim.name(h).to_string();
        let server = t.path.last().map_or(String::new(), |&h| name(h));
        let path: Vec<String> = t.path.iter().map(|&h| name(h)).collect();
        let ttfb = t.first_byte.zip(t.opened).map(|(f, o)| f.since(o));
        let ttlb = t.last_byte.zip(t.opened).map(|(l, o)| l.since(o));
        s.push_str(&format!(
            "{},{},{},{},{},{:.6},{},{},{},{}\n",
            t.id,
            error,
            t.size,
            t.label(),
            server,
            secs(t.start.nanos()),
            opt_secs(ttfb),
            opt_secs(ttlb),
            opt_secs(t.built.map(|b| b.since(t.start))),
            path.join(">"),
        ));
    }
    s
}
