//! Running a scenario end to end and writing its files: `transfers.csv`,
//! `results.json` (simulated outputs only), `perf.json` (how fast the
//! simulator ran: the only place wall-clock time appears) and the
//! tornettools-style JSON files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::SimError;
use crate::results::{transfers_csv, Results};
use crate::scenario::Scenario;
use crate::sim::Sim;
use crate::traffic::Kind;

/// How fast a run was.
#[derive(Serialize)]
pub struct Perf {
    /// Wall-clock seconds of the event loop.
    pub wall_s: f64,
    /// Wall-clock seconds to build the world.
    pub setup_s: f64,
    /// Events processed.
    pub events: u64,
    /// Events per wall-clock second.
    pub events_per_s: f64,
    /// Simulated seconds.
    pub sim_s: f64,
    /// Wall seconds per simulated second.
    pub real_s_per_sim_s: f64,
    /// Peak resident memory (VmHWM), MiB; 0 when unknown.
    pub peak_rss_mib: f64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Wake-up events that found no deadline due (counted in `events`).
    pub idle_wakes: u64,
    /// Hosts.
    pub hosts: usize,
}

/// Peak resident set size from /proc/self/status, in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What a finished run produced.
pub struct Run {
    /// The simulation, after the run.
    pub sim: Sim,
    /// Results.
    pub results: Results,
    /// Speed.
    pub perf: Perf,
}

/// Runs `scenario` with `seed`.
pub fn run(
    scenario: Scenario,
    seed: u64,
    mut progress: impl FnMut(f64, f64),
) -> Result<Run, SimError> {
    let t0 = Instant::now();
    let mut sim = Sim::new(scenario, seed)?;
    let setup_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let end = sim.end.nanos() as f64 / 1e9;
    sim.run(|now| progress(now.nanos() as f64 / 1e9, end))?;
    let wall_s = t1.elapsed().as_secs_f64();
    let results = Results::of(&sim);
    let perf = Perf {
        wall_s,
        setup_s,
        events: sim.events,
        events_per_s: sim.events as f64 / wall_s.max(1e-9),
        sim_s: end,
        real_s_per_sim_s: wall_s / end.max(1e-9),
        peak_rss_mib: peak_rss_kib() as f64 / 1024.0,
        datagrams: sim.datagrams,
        idle_wakes: sim.idle_wakes,
        hosts: sim.hosts.len(),
    };
    Ok(Run { sim, results, perf })
}

fn write(path: PathBuf, text: &str) -> Result<(), SimError> {
    std::fs::write(&path, text).map_err(|e| SimError::io(&path, e))
}

/// tornettools-style files: `time_to_first_byte_recv.exit.json` and
/// `time_to_last_byte_recv.exit.json` map a size in bytes to the list of
/// seconds of every successful transfer; `error_rate.exit.json` maps error
/// codes to counts.
fn tornettools(run: &Run, dir: &Path) -> Result<(), SimError> {
    let mut ttfb: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut ttlb: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Downloads only: tornettools keys by file size.
    let downloads = run
        .sim
        .traffic
        .transfers
        .iter()
        .filter(|t| matches!(t.kind, Kind::Download));
    for t in downloads.filter(|t| t.ok()) {
        if let (Some(o), Some(f), Some(l)) = (t.opened, t.first_byte, t.last_byte) {
            ttfb.entry(t.size.to_string())
                .or_default()
                .push(f.since(o) as f64 / 1e9);
            ttlb.entry(t.size.to_string())
                .or_default()
                .push(l.since(o) as f64 / 1e9);
        }
    }
    write(
        dir.join("time_to_first_byte_recv.exit.json"),
        &serde_json::to_string(&ttfb)?,
    )?;
    write(
        dir.join("time_to_last_byte_recv.exit.json"),
        &serde_json::to_string(&ttlb)?,
    )?;
    write(
        dir.join("error_rate.exit.json"),
        &serde_json::to_string(&run.results.errors)?,
    )?;
    Ok(())
}

/// Writes every output file into `dir`.
pub fn write_outputs(run: &Run, dir: &Path) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
    write(dir.join("transfers.csv"), &transfers_csv(&run.sim))?;
    write(
        dir.join("results.json"),
        &(serde_json::to_string_pretty(&run.results)? + "\n"),
    )?;
    write(
        dir.join("perf.json"),
        &(serde_json::to_string_pretty(&run.perf)? + "\n"),
    )?;
    tornettools(run, dir)?;
    for c in run.sim.captures.values() {
        let path = dir.join(&c.name);
        std::fs::write(&path, c.bytes()).map_err(|e| SimError::io(&path, e))?;
    }
    Ok(())
}

/// The directory of shipped scenarios.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Finds a scenario by file path or shipped name.
pub fn find_scenario(name: &str) -> Result<Scenario, SimError> {
    let p = Path::new(name);
    if p.is_file() {
        return Scenario::load(p);
    }
    let shipped = scenario_dir().join(format!("{name}.toml"));
    if shipped.is_file() {
        return Scenario::load(&shipped);
    }
    Err(SimError::Usage(format!(
        "no scenario file {name} and no shipped scenario of that name (try `netsim list`)"
    )))
}

/// Shipped scenarios: (name, description).
pub fn list_scenarios() -> Result<Vec<(String, String)>, SimError> {
    let dir = scenario_dir();
    let mut v = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| SimError::io(&dir, e))?;
    for e in entries {
        let path = e.map_err(|e| SimError::io(&dir, e))?.path();
        if path.extension().is_some_and(|x| x == "toml") {
            let s = Scenario::load(&path)?;
            v.push((s.name, s.description));
        }
    }
    v.sort();
    Ok(v)
}
