//! Plots of a finished run as small self-contained SVG files: TTLB CDF per
//! size, client goodput over time, circuit build time CDF.
//!
//! Drawn with plotters' SVG backend and no font features: the backend
//! writes text as SVG `<text>` elements for the viewer to render, and
//! plotters only estimates text extents for layout (its built-in naive
//! metrics), so no font files or system fonts are needed. PNG (the
//! bitmap backend) would need a rasterizing font backend (font-kit and
//! system fonts, or a bundled font), so only SVG is written. The output
//! is deterministic for a given run directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::SimError;

use plotters::prelude::*;

const W: u32 = 720;
const H: u32 = 440;
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
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

/// A line chart as SVG text (plotters' SVG backend).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_max: Option<f64>,
) -> Result<String, SimError> {
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
    let mut svg = String::new();
    draw(&mut svg, title, x_label, y_label, series, xmax, ymax)
        .map_err(|e| SimError::Invalid(format!("plot {title}: {e}")))?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    svg: &mut String,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    xmax: f64,
    ymax: f64,
) -> DrawResult {
    let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                se.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(se.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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
    // TTLB per label (downloads by size, pages together; echo sessions
    // have no meaningful TTLB), ordered by size.
    let mut ttlb: BTreeMap<String, (u64, Vec<f64>)> = BTreeMap::new();
    let mut builds = Vec::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 10 {
            continue;
        }
        if let Ok(b) = f[8].parse::<f64>() {
            builds.push(b);
        }
        if f[1] == "NONE" && f[3] != "echo" {
            if let (Ok(size), Ok(t)) = (f[2].parse::<u64>(), f[7].parse::<f64>()) {
                let e = ttlb.entry(f[3].to_string()).or_insert((size, Vec::new()));
                e.0 = e.0.min(size);
                e.1.push(t);
            }
        }
    }
    let mut out = Vec::new();
    let mut by_size: Vec<(&String, &(u64, Vec<f64>))> = ttlb.iter().collect();
    by_size.sort_by_key(|(label, (size, _))| (*size, (*label).clone()));
    let series: Vec<Series> = by_size
        .iter()
        .map(|(label, (_, v))| Series {
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
        )?,
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
        )?,
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
        )?,
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
        )
        .unwrap();
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.trim_end().ends_with("</svg>"));
        // Each series is drawn in its colour, in the plot and the legend.
        for color in ["#1F77B4", "#D62728"] {
            let n = s.matches(&format!("stroke=\"{color}\"")).count();
            assert!(n >= 2, "{color}: {n}\n{s}");
        }
        // Text is written as text: no font was needed to lay it out.
        assert!(
            s.contains(">\na\n</text>") || s.contains(">a</text>"),
            "{s}"
        );
        assert!(s.contains("t&lt;1&gt;"));
        assert_eq!(cdf(&[2.0, 1.0]).last(), Some(&(2.0, 1.0)));
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(0.3), 0.5);
    }
}
