//! udtpath: the udt protocol core alone over a simulated long fat lossy
//! path in virtual time (`relay_link_udt::pathsim`), one connection per
//! congestion controller, printing goodput. The default is issue 3's
//! target path: 1 Gbit/s, 100 ms RTT, 1% random loss both ways, a 4 MiB
//! bottleneck queue; the target is goodput >= 50% of capacity.
//!
//! `cargo run --release -p relay-benches --bin udtpath -- [--secs S]
//! [--loss P] [--mbit R] [--window CELLS] [--seed N] [--cc cubic,bbr,udt]`
//!
//! Figures are a function of the arguments (virtual time); the wall time
//! printed is only the simulator's cost.

use std::process::ExitCode;
use std::time::Instant;

use relay_link_udt::cc::CongestionKind;
use relay_link_udt::pathsim::{bulk_goodput, long_fat};

struct Args {
    secs: u64,
    loss: f64,
    mbit: u64,
    window: u64,
    seed: u64,
    ccs: Vec<CongestionKind>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        secs: 10,
        loss: 0.01,
        mbit: 1000,
        window: 131_072,
        seed: 31,
        ccs: vec![
            CongestionKind::Cubic,
            CongestionKind::Bbr,
            CongestionKind::UdtRate,
        ],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--secs" => a.secs = value.parse().map_err(|e| bad(&e))?,
            "--loss" => a.loss = value.parse().map_err(|e| bad(&e))?,
            "--mbit" => a.mbit = value.parse().map_err(|e| bad(&e))?,
            "--window" => a.window = value.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
            "--cc" => {
                a.ccs = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&e))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !(0.0..1.0).contains(&a.loss) || a.mbit == 0 || a.secs == 0 {
        return Err("need 0 <= loss < 1, mbit > 0, secs > 0".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("udtpath: {e}");
            return ExitCode::from(2);
        }
    };
    let model = relay_link_udt::pathsim::PathModel {
        rate: args.mbit * 125_000,
        ..long_fat(args.loss)
    };
    let capacity = model.rate as f64;
    println!(
        "path: {} Mbit/s, {} ms RTT, {}% loss both ways, {} MiB queue; {} s per controller, receive window {} cells, seed {}",
        args.mbit,
        2 * model.latency / 1_000_000,
        args.loss * 100.0,
        model.queue_bytes >> 20,
        args.secs,
        args.window,
        args.seed
    );
    println!("| controller | goodput, whole run | goodput, last 60% | datagrams lost a->b | cells retransmitted | wall s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for cc in args.ccs {
        let start = Instant::now();
        match bulk_goodput(model, cc, args.window, args.secs, args.seed) {
            Ok(r) => println!(
                "| {cc} | {:.1} Mbit/s ({:.1}%) | {:.1} Mbit/s ({:.1}%) | {} of {} | {} | {:.1} |",
                r.whole * 8e-6,
                100.0 * r.whole / capacity,
                r.steady * 8e-6,
                100.0 * r.steady / capacity,
                r.lost,
                r.sent,
                r.retransmitted,
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("udtpath: {cc}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
