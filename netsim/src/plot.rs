//! Plots of a finished run as small self-contained SVG files: TTLB CDF per
//! size, client goodput over time, circuit build time CDF.
//!
//! The SVG is written directly rather than through plotters: plotters'
//! text layout needs a font backend (font-kit and system fonts, or a
//! bundled font file), which is more than four line charts need. The
//! output is deterministic for a given run directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::SimError;

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line of a chart.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as SVG text.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_max: Option<f64>,
) -> String {
    let xmax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let ymax = y_max.unwrap_or_else(|| {
        nice_max(
            series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0.0, f64::max),
        )
    });
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / xmax * pw;
    let sy = |y: f64| TOP + ph - y / ymax * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = (sx(f * xmax), sy(f * ymax));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 16.0,
            fmt_tick(f * xmax)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(f * ymax)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 15.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(y.min(ymax))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            lx + 20.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            ly + 4.0,
            esc(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Empirical CDF points of `values`.
pub fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mut pts = vec![(0.0, 0.0)];
    for (i, x) in v.iter().enumerate() {
        pts.push((*x, i as f64 / n));
        pts.push((*x, (i + 1) as f64 / n));
    }
    pts
}

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))
}

fn write(path: PathBuf, text: &str, out: &mut Vec<PathBuf>) -> Result<(), SimError> {
    std::fs::write(&path, text).map_err(|e| SimError::io(&path, e))?;
    out.push(path);
    Ok(())
}

/// Writes the plots of the run in `dir`; returns the files written.
pub fn plot_dir(dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let csv = read(&dir.join("transfers.csv"))?;
    let results: serde_json::Value = serde_json::from_str(&read(&dir.join("results.json"))?)?;
    let mut ttlb: BTreeMap<(u64, String), Vec<f64>> = BTreeMap::new();
    let mut builds = Vec::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 10 {
            continue;
        }
        if let Ok(b) = f[8].parse::<f64>() {
            builds.push(b);
        }
        if f[1] == "NONE" {
            if let (Ok(size), Ok(t)) = (f[2].parse::<u64>(), f[7].parse::<f64>()) {
                ttlb.entry((size, f[3].to_string())).or_default().push(t);
            }
        }
    }
    let mut out = Vec::new();
    let series: Vec<Series> = ttlb
        .iter()
        .map(|((_, label), v)| Series {
            label: format!("{label} (n={})", v.len()),
            points: cdf(v),
        })
        .collect();
    write(
        dir.join("ttlb_cdf.svg"),
        &line_chart(
            "Time to last byte",
            "seconds",
            "fraction of transfers",
            &series,
            Some(1.0),
        ),
        &mut out,
    )?;
    let bin = results["goodput_bin_s"].as_f64().unwrap_or(1.0);
    let gp: Vec<(f64, f64)> = results["goodput_series_mbit"]
        .as_array()
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * bin, v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    write(
        dir.join("goodput.svg"),
        &line_chart(
            "Client goodput",
            "simulated seconds",
            "Mbit/s",
            &[Series {
                label: "all clients".into(),
                points: gp,
            }],
            None,
        ),
        &mut out,
    )?;
    write(
        dir.join("circuit_build_cdf.svg"),
        &line_chart(
            "Circuit build time",
            "seconds",
            "fraction of circuits",
            &[Series {
                label: format!("n={}", builds.len()),
                points: cdf(&builds),
            }],
            Some(1.0),
        ),
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_every_series() {
        let s = line_chart(
            "t<1>",
            "x",
            "y",
            &[
                Series {
                    label: "a".into(),
                    points: cdf(&[1.0, 2.0, 3.0]),
                },
                Series {
                    label: "b".into(),
                    points: vec![(0.0, 0.5), (4.0, 0.7)],
                },
            ],
            Some(1.0),
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("t&lt;1&gt;"));
        assert_eq!(cdf(&[2.0, 1.0]).last(), Some(&(2.0, 1.0)));
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(0.3), 0.5);
    }
}
