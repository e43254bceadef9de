//! The report's charts, drawn with plotters into SVG strings that the page inlines.
//!
//! plotters is built without a font library: it estimates text widths for layout and writes `<text>`
//! elements, which the browser renders with its own sans-serif font. Labels may sit a few pixels off
//! their estimated box; in exchange nothing is loaded at run time and the build stays small.

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::results::{Results, Run};

/// Width and height of every chart, in CSS pixels.
pub const SIZE: (u32, u32) = (560, 400);

/// Distinguishable colours (Tableau 10), one per series.
const PALETTE: [RGBColor; 8] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(225, 87, 89),
    RGBColor(89, 161, 79),
    RGBColor(176, 122, 161),
    RGBColor(118, 183, 178),
    RGBColor(156, 117, 95),
    RGBColor(237, 201, 72),
];
const GREY: RGBColor = RGBColor(120, 120, 120);

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line of a chart.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Bounds are dashed, measurements solid.
    pub dashed: bool,
    /// Dots on the measured points (sweeps have few points; a CDF has many).
    pub markers: bool,
}

/// What a chart says around its lines.
pub struct Frame<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x_fmt: &'a dyn Fn(&f64) -> String,
    pub y_fmt: &'a dyn Fn(&f64) -> String,
}

type Error = String;

fn err(e: impl std::fmt::Display) -> Error {
    e.to_string()
}

/// Font size of labels as plotters takes it; it draws text at 1/1.24 of the size given, so this is
/// about 12 px on the page.
const FONT: f64 = 15.0;

/// Height of one row of the legend, which sits under the chart so it never hides a line.
const LEGEND_ROW: u32 = 20;

/// Where each legend entry goes, left to right, wrapping within `width`: `(x, y)` of each entry's
/// sample line, and the total height. Text widths are estimated (~6.6 px per character at 12 px),
/// as plotters itself does without a font library.
pub fn legend_layout(labels: &[&str], width: u32) -> (Vec<(i32, i32)>, u32) {
    const SAMPLE: i32 = 28;
    const GAP: i32 = 22;
    let (left, right) = (64, width as i32 - 16);
    let (mut x, mut row) = (left, 0);
    let mut at = Vec::new();
    for label in labels {
        let w = SAMPLE + (label.chars().count() as f64 * 6.6).ceil() as i32;
        if x > left && x + w > right {
            x = left;
            row += 1;
        }
        at.push((x, row * LEGEND_ROW as i32 + LEGEND_ROW as i32 / 2));
        x += w + GAP;
    }
    let rows = if labels.is_empty() { 0 } else { row as u32 + 1 };
    (at, rows * LEGEND_ROW + 6)
}

/// A stretch of the x axis to shade, with its label (a fault, from its start to its end).
pub struct Span {
    pub from: f64,
    pub to: f64,
    pub label: String,
    pub color: RGBColor,
}

/// Draws `lines` on axes `x` × `y` (linear ranges or `.log_scale()` ones) into an SVG string.
pub fn plot<X, Y>(frame: &Frame, x: X, y: Y, lines: &[Line]) -> Result<String, Error>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    plot_with_spans(frame, x, y, lines, &[])
}

/// [`plot`], with `spans` shaded behind the lines, each labelled at the top of the plot.
pub fn plot_with_spans<X, Y>(
    frame: &Frame,
    x: X,
    y: Y,
    lines: &[Line],
    spans: &[Span],
) -> Result<String, Error>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let labels: Vec<&str> = lines.iter().map(|l| l.label.as_str()).collect();
    let (legend_at, legend_height) = legend_layout(&labels, SIZE.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (upper, legend) = root.split_vertically(SIZE.1 - legend_height);
        let mut chart = ChartBuilder::on(&upper)
            .caption(frame.title, ("sans-serif", FONT * 1.4))
            .margin(12)
            .margin_right(22)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(frame.x_desc)
            .y_desc(frame.y_desc)
            .x_label_formatter(frame.x_fmt)
            .y_label_formatter(frame.y_fmt)
            .axis_desc_style(("sans-serif", FONT * 1.1))
            .label_style(("sans-serif", FONT))
            .bold_line_style(RGBColor(228, 228, 228))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(err)?;
        let (y_lo, y_hi) = {
            let r = chart.y_range();
            (r.start, r.end)
        };
        for (i, span) in spans.iter().enumerate() {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(span.from, y_lo), (span.to, y_hi)],
                    span.color.mix(0.18).filled(),
                )))
                .map_err(err)?;
            for at in [span.from, span.to] {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(at, y_lo), (at, y_hi)],
                        4,
                        3,
                        span.color.stroke_width(1),
                    ))
                    .map_err(err)?;
            }
            // Labels on three rows, so that overlapping spans keep readable labels.
            let row = (i % 3) as f64;
            let label_y = y_hi - (y_hi - y_lo) * (0.03 + 0.06 * row);
            let font = ("sans-serif", FONT * 0.8)
                .into_font()
                .color(&span.color)
                .pos(Pos::new(HPos::Left, VPos::Top));
            chart
                .draw_series(std::iter::once(Text::new(
                    span.label.clone(),
                    (span.from, label_y),
                    font,
                )))
                .map_err(err)?;
        }
        for (line, &(lx, ly)) in lines.iter().zip(&legend_at) {
            let style = line.color.stroke_width(2);
            let points = line.points.iter().copied();
            if line.dashed {
                chart.draw_series(DashedLineSeries::new(points, 7, 5, style))
            } else {
                chart.draw_series(LineSeries::new(points, style))
            }
            .map_err(err)?;
            if line.markers {
                chart
                    .draw_series(
                        line.points
                            .iter()
                            .map(|&p| Circle::new(p, 3, line.color.filled())),
                    )
                    .map_err(err)?;
            }
            let sample: Vec<(i32, i32)> = if line.dashed {
                vec![(lx, ly), (lx + 7, ly)]
            } else {
                vec![(lx, ly), (lx + 22, ly)]
            };
            legend.draw(&PathElement::new(sample, style)).map_err(err)?;
            if line.dashed {
                legend
                    .draw(&PathElement::new(vec![(lx + 12, ly), (lx + 22, ly)], style))
                    .map_err(err)?;
            }
            let font = ("sans-serif", FONT)
                .into_font()
                .color(&RGBColor(50, 50, 50))
                .pos(Pos::new(HPos::Left, VPos::Center));
            legend
                .draw(&Text::new(line.label.clone(), (lx + 28, ly), font))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A log axis that holds every value in `values` with some room; `None` without a positive value.
/// It starts at or below a power of ten, because plotters labels a log axis from the first power of
/// ten inside it: an axis from 27 to 120 would show only "100".
pub fn log_range(values: impl IntoIterator<Item = f64>) -> Option<Range<f64>> {
    let positive: Vec<f64> = values
        .into_iter()
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = positive.iter().copied().fold(0.0, f64::max);
    (hi > 0.0).then(|| log_start(lo)..hi * 1.5)
}

/// A little below `lo`, and at or below the power of ten under it.
fn log_start(lo: f64) -> f64 {
    (lo / 1.4).min(10f64.powf(lo.log10().floor()))
}

/// A linear axis from 0 to a bit above the largest value.
pub fn zero_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let hi = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    0.0..if hi > 0.0 { hi * 1.15 } else { 1.0 }
}

/// Axis labels: whole numbers with thousands separators, small ones with the digits they need.
fn number(v: &f64) -> String {
    if *v >= 10.0 {
        crate::table::rate(*v)
    } else if *v >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

fn runs_by_clients(results: &Results) -> Vec<&Run> {
    let mut runs: Vec<&Run> = results.runs.iter().collect();
    runs.sort_by_key(|r| r.clients);
    runs
}

/// One line's worth of runs: a strategy under one fault mode, on one decision log.
#[derive(Clone, Copy, PartialEq)]
struct Series<'a> {
    strategy: &'a str,
    faults: &'a str,
    log: &'a str,
}

impl Series<'_> {
    fn of(run: &Run) -> Series<'_> {
        Series {
            strategy: &run.strategy,
            faults: &run.faults,
            log: &run.log,
        }
    }

    fn holds(&self, run: &Run) -> bool {
        Series::of(run) == *self
    }
}

/// The series of the runs, in the order they ran.
fn series(results: &Results) -> Vec<Series<'_>> {
    let mut seen: Vec<Series> = Vec::new();
    for r in &results.runs {
        if !seen.contains(&Series::of(r)) {
            seen.push(Series::of(r));
        }
    }
    seen
}

/// A line's label: `what`, after the strategy's name when several strategies ran, the decision log
/// when several ran, and the fault mode when several ran.
fn labelled(results: &Results, s: Series, what: &str) -> String {
    let all = series(results);
    let mut label = Vec::new();
    if all.iter().any(|o| o.strategy != s.strategy) {
        label.push(s.strategy.to_owned());
    }
    if all.iter().any(|o| o.log != s.log) {
        label.push(format!("on {}", s.log));
    }
    if all.iter().any(|o| o.faults != s.faults) {
        label.push(format!("faults {}", s.faults));
    }
    label.push(what.to_owned());
    label.join(" ")
}

fn client_axis(runs: &[&Run]) -> Option<Range<f64>> {
    let lo = runs.iter().map(|r| r.clients).min()? as f64;
    let hi = runs.iter().map(|r| r.clients).max()? as f64;
    Some(log_start(lo)..hi * 1.4)
}

/// Committed changes per second against clients, under the bounds the floors imply.
pub fn throughput(results: &Results) -> Result<Option<String>, Error> {
    let runs = runs_by_clients(results);
    let Some(x) = client_axis(&runs) else {
        return Ok(None);
    };
    let floors = &results.floors;
    let flat = |per_s: f64| vec![(x.start, per_s), (x.end, per_s)];
    let first = series(results).first().copied();
    let mut lines: Vec<Line> = series(results)
        .into_iter()
        .enumerate()
        .map(|(i, s)| Line {
            label: labelled(results, s, "committed/s"),
            points: runs
                .iter()
                .filter(|r| s.holds(r))
                .map(|r| (r.clients as f64, r.committed_per_s))
                .collect(),
            color: color(if i == 0 { 0 } else { i + 2 }),
            dashed: false,
            markers: true,
        })
        .collect();
    lines.extend([
        Line {
            label: format!("RPC bound (bare RPC/s ÷ {})", floors.rpcs_per_change),
            points: runs
                .iter()
                .filter(|r| first.is_some_and(|s| s.holds(r)))
                .map(|r| (r.clients as f64, r.rpc_floor_per_s / floors.rpcs_per_change))
                .collect(),
            color: color(1),
            dashed: true,
            markers: true,
        },
        Line {
            label: format!(
                "argon2 bound (hashes/s ÷ {}, {})",
                floors.hashes_per_change, results.config.argon2
            ),
            points: flat(floors.argon2_bound_per_s),
            color: color(2),
            dashed: true,
            markers: false,
        },
        Line {
            label: format!(
                "forced-write bound (fsyncs/s ÷ {})",
                floors.forced_writes_per_change
            ),
            points: flat(floors.forced_write_bound_per_s),
            color: GREY,
            dashed: true,
            markers: false,
        },
    ]);
    let Some(y) = log_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1))) else {
        return Ok(None);
    };
    let frame = Frame {
        title: "Throughput against the bounds",
        x_desc: "concurrent clients (log)",
        y_desc: "changes per second (log)",
        x_fmt: &|v| format!("{v:.0}"),
        y_fmt: &number,
    };
    plot(&frame, x.log_scale(), y.log_scale(), &lines).map(Some)
}

/// p50, p90 and p99 latency against clients.
pub fn latency(results: &Results) -> Result<Option<String>, Error> {
    let runs = runs_by_clients(results);
    let Some(x) = client_axis(&runs) else {
        return Ok(None);
    };
    let pick = |s: Series, f: fn(&Run) -> f64| -> Vec<(f64, f64)> {
        runs.iter()
            .filter(|r| s.holds(r))
            .map(|r| (r.clients as f64, f(r)))
            .collect()
    };
    type Quantile = (&'static str, fn(&Run) -> f64, usize);
    let quantiles: [Quantile; 3] = [
        ("p50", |r| r.p50_ms, 0),
        ("p90", |r| r.p90_ms, 5),
        ("p99", |r| r.p99_ms, 2),
    ];
    let mut lines = Vec::new();
    for (i, s) in series(results).into_iter().enumerate() {
        for (name, f, c) in quantiles {
            lines.push(Line {
                label: labelled(results, s, name),
                points: pick(s, f),
                color: color(c),
                // One style per strategy, one colour per quantile.
                dashed: i % 2 == 1,
                markers: true,
            });
        }
    }
    let Some(y) = log_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1))) else {
        return Ok(None);
    };
    let frame = Frame {
        title: "Latency of committed changes",
        x_desc: "concurrent clients (log)",
        y_desc: "milliseconds (log)",
        x_fmt: &|v| format!("{v:.0}"),
        y_fmt: &number,
    };
    plot(&frame, x.log_scale(), y.log_scale(), &lines).map(Some)
}

/// The latency distribution of each run.
pub fn cdf(results: &Results) -> Result<Option<String>, Error> {
    let lines: Vec<Line> = runs_by_clients(results)
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.latency_cdf.is_empty())
        .map(|(i, r)| Line {
            label: labelled(results, Series::of(r), &crate::table::clients(r.clients)),
            points: r.latency_cdf.clone(),
            color: color(i),
            dashed: false,
            markers: false,
        })
        .collect();
    let Some(x) = log_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0))) else {
        return Ok(None);
    };
    let frame = Frame {
        title: "Latency distribution (CDF)",
        x_desc: "milliseconds (log)",
        y_desc: "fraction of committed changes",
        x_fmt: &number,
        y_fmt: &|v| format!("{v:.1}"),
    };
    plot(&frame, x.log_scale(), 0.0..1.02, &lines).map(Some)
}

/// Windows worth a chart over time: a run long enough to have more than a few.
pub const MIN_WINDOWS_FOR_TIME_CHARTS: usize = 4;

/// Committed/s and p99 per 10-second window, one line per run: the long-run stability charts.
pub fn over_time(results: &Results) -> Result<Vec<String>, Error> {
    let runs = runs_by_clients(results);
    if runs
        .iter()
        .all(|r| r.windows.len() < MIN_WINDOWS_FOR_TIME_CHARTS)
    {
        return Ok(Vec::new());
    }
    let series = |f: fn(&crate::results::Window) -> Option<f64>| -> Vec<Line> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| Line {
                label: labelled(results, Series::of(r), &crate::table::clients(r.clients)),
                points: r
                    .windows
                    .iter()
                    .filter_map(|w| Some((w.t_s + w.length_s / 2.0, f(w)?)))
                    .collect(),
                color: color(i),
                dashed: false,
                markers: true,
            })
            .collect()
    };
    let end = runs
        .iter()
        .flat_map(|r| r.windows.iter().map(|w| w.t_s + w.length_s))
        .fold(0.0, f64::max);
    let mut charts = Vec::new();
    for (title, y_desc, lines) in [
        (
            "Throughput per 10 s window",
            "committed changes per second",
            series(|w| Some(w.committed_per_s)),
        ),
        (
            "p99 latency per 10 s window",
            "milliseconds",
            series(|w| w.p99_ms),
        ),
    ] {
        let y = zero_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
        let frame = Frame {
            title,
            x_desc: "seconds into the measured period",
            y_desc,
            x_fmt: &|v| format!("{v:.0}"),
            y_fmt: &number,
        };
        charts.push(plot(&frame, 0.0..end.max(1.0), y, &lines)?);
    }
    Ok(charts)
}

/// One group of bars: a name under it, and one bar per series.
pub struct BarGroup {
    pub name: String,
    pub values: Vec<u64>,
}

/// Grouped bars: one group per entry of `groups`, one bar per series (named in `series`, coloured in
/// order) in each, with each non-zero count written above its bar.
pub fn bars(
    title: &str,
    y_desc: &str,
    series: &[&str],
    groups: &[BarGroup],
) -> Result<String, Error> {
    let (legend_at, legend_height) = legend_layout(series, SIZE.0);
    let n = groups.len().max(1);
    let hi = groups
        .iter()
        .flat_map(|g| g.values.iter().copied())
        .max()
        .unwrap_or(0);
    let y_hi = if hi > 0 { hi as f64 * 1.2 } else { 1.0 };
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (upper, legend) = root.split_vertically(SIZE.1 - legend_height);
        let x = 0.0..n as f64;
        let mut chart = ChartBuilder::on(&upper)
            .caption(title, ("sans-serif", FONT * 1.4))
            .margin(12)
            .margin_right(22)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x, 0.0..y_hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_desc)
            .y_label_formatter(&number)
            .axis_desc_style(("sans-serif", FONT * 1.1))
            .label_style(("sans-serif", FONT))
            .bold_line_style(RGBColor(228, 228, 228))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(err)?;
        let width = 0.8 / series.len().max(1) as f64;
        for (g, group) in groups.iter().enumerate() {
            for (k, &value) in group.values.iter().enumerate() {
                let left = g as f64 + 0.1 + k as f64 * width;
                let right = left + width * 0.85;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(left, 0.0), (right, value as f64)],
                        color(k).filled(),
                    )))
                    .map_err(err)?;
                if value > 0 {
                    let font = ("sans-serif", FONT * 0.75)
                        .into_font()
                        .color(&RGBColor(50, 50, 50))
                        .pos(Pos::new(HPos::Center, VPos::Bottom));
                    chart
                        .draw_series(std::iter::once(Text::new(
                            value.to_string(),
                            ((left + right) / 2.0, value as f64),
                            font,
                        )))
                        .map_err(err)?;
                }
            }
            // The group's name under the axis, centred on its bars (plotters' own tick labels cannot
            // be placed at chosen points of an f64 axis).
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            let font = ("sans-serif", FONT)
                .into_font()
                .color(&RGBColor(50, 50, 50))
                .pos(Pos::new(HPos::Center, VPos::Top));
            upper
                .draw(&Text::new(names[g].clone(), (px, py + 8), font))
                .map_err(err)?;
            if group.values.iter().all(|&v| v == 0) {
                let font = ("sans-serif", FONT * 0.85)
                    .into_font()
                    .color(&GREY)
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                chart
                    .draw_series(std::iter::once(Text::new(
                        "none".to_owned(),
                        (g as f64 + 0.5, y_hi * 0.02),
                        font,
                    )))
                    .map_err(err)?;
            }
        }
        for (k, (name, &(lx, ly))) in series.iter().zip(&legend_at).enumerate() {
            legend
                .draw(&Rectangle::new(
                    [(lx, ly - 5), (lx + 22, ly + 5)],
                    color(k).filled(),
                ))
                .map_err(err)?;
            let font = ("sans-serif", FONT)
                .into_font()
                .color(&RGBColor(50, 50, 50))
                .pos(Pos::new(HPos::Left, VPos::Center));
            legend
                .draw(&Text::new(name.to_string(), (lx + 28, ly), font))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A run's short name in a chart: strategy and fault mode, and the clients when several counts ran.
fn short_name(results: &Results, run: &Run) -> String {
    let mut name = if run.log == "sled" {
        format!("{} / {}", run.strategy, run.faults)
    } else {
        format!("{} on {} / {}", run.strategy, run.log, run.faults)
    };
    let counts: std::collections::BTreeSet<usize> =
        results.runs.iter().map(|r| r.clients).collect();
    if counts.len() > 1 {
        name += &format!(" / {}", run.clients);
    }
    name
}

/// The anomaly kinds as the chart's legend names them.
pub const ANOMALY_KINDS: [&str; 6] = [
    "torn reads",
    "dirty reads",
    "divergent users",
    "wrong e-mails",
    "missing e-mails",
    "duplicate e-mails",
];

/// Anomalies per run (strategy × fault mode): grouped bars, one per kind.
pub fn anomalies(results: &Results) -> Result<Option<String>, Error> {
    let groups: Vec<BarGroup> = results
        .runs
        .iter()
        .filter_map(|r| {
            Some(BarGroup {
                name: short_name(results, r),
                values: r.anomalies.as_ref()?.kinds().map(|k| k.1).to_vec(),
            })
        })
        .collect();
    if groups.is_empty() {
        return Ok(None);
    }
    bars(
        "Anomalies per strategy and fault mode",
        "count",
        &ANOMALY_KINDS,
        &groups,
    )
    .map(Some)
}

/// The colour of a fault's span: crashes red, partitions orange, the mail server grey.
fn fault_color(kind: &str) -> RGBColor {
    if kind.starts_with("crash") {
        color(2)
    } else if kind.starts_with("partition") {
        color(1)
    } else {
        GREY
    }
}

/// Committed changes per second over the measured period, one chart per fault mode and client count,
/// a line per strategy, with the faults (of the first strategy's run; every strategy gets the same
/// schedule) shaded.
pub fn per_second(results: &Results) -> Result<Vec<String>, Error> {
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for r in &results.runs {
        if !r.per_second.is_empty() && !keys.contains(&(r.faults.as_str(), r.clients)) {
            keys.push((&r.faults, r.clients));
        }
    }
    let mut charts = Vec::new();
    for (faults, clients) in keys {
        let runs: Vec<&Run> = results
            .runs
            .iter()
            .filter(|r| r.faults == faults && r.clients == clients && !r.per_second.is_empty())
            .collect();
        let lines: Vec<Line> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| Line {
                label: r.strategy.clone(),
                points: r
                    .per_second
                    .iter()
                    .enumerate()
                    .map(|(t, &n)| {
                        // The last second may be cut short by the end of the period.
                        let length = (r.measured_s - t as f64).clamp(0.001, 1.0);
                        (t as f64 + 0.5, n as f64 / length)
                    })
                    .collect(),
                color: color(if i == 0 { 0 } else { i + 2 }),
                dashed: false,
                markers: false,
            })
            .collect();
        let spans: Vec<Span> = runs
            .first()
            .map(|r| {
                r.fault_events
                    .iter()
                    .map(|e| Span {
                        from: e.start_s,
                        to: e.end_s.max(e.start_s),
                        label: e.kind.clone(),
                        color: fault_color(&e.kind),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let end = runs.iter().map(|r| r.measured_s).fold(1.0, f64::max);
        let y = zero_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
        let title = format!(
            "Throughput per second, faults {faults}, {}",
            crate::table::clients(clients)
        );
        let frame = Frame {
            title: &title,
            x_desc: "seconds into the measured period",
            y_desc: "committed changes per second",
            x_fmt: &|v| format!("{v:.0}"),
            y_fmt: &number,
        };
        charts.push(plot_with_spans(&frame, 0.0..end, y, &lines, &spans)?);
    }
    Ok(charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_wraps_within_the_chart() {
        let (at, height) = legend_layout(&["a", "b"], 560);
        assert_eq!(at.len(), 2);
        assert_eq!(at[0].1, at[1].1, "short labels share a row");
        assert_eq!(height, LEGEND_ROW + 6);
        let long = "a label long enough to fill most of the width";
        let (at, height) = legend_layout(&[long, long, long], 560);
        assert!(at[1].1 > at[0].1 && at[2].1 > at[1].1);
        assert_eq!(height, 3 * LEGEND_ROW + 6);
        assert_eq!(legend_layout(&[], 560).1, 6);
    }

    #[test]
    fn every_chart_is_an_svg_with_its_labels() {
        let results = crate::fixtures::results(&[1, 4, 16]);
        let svg = throughput(&results).unwrap().unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("concurrent clients (log)"));
        assert!(svg.contains("RPC bound"));
        assert!(latency(&results).unwrap().unwrap().contains("p99"));
        assert!(cdf(&results).unwrap().unwrap().contains("16 clients"));
        assert!(
            over_time(&results).unwrap().is_empty(),
            "two windows are not a trend"
        );
    }

    #[test]
    fn anomalies_are_grouped_bars_per_strategy_and_fault_mode() {
        let mut results = crate::fixtures::results(&[64, 64]);
        results.runs[1].strategy = "saga".into();
        results.runs[1].faults = "all".into();
        if let Some(a) = results.runs[1].anomalies.as_mut() {
            a.torn_reads = 123;
            a.dirty_reads = 7;
        }
        let svg = anomalies(&results).unwrap().unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("saga / all"), "{svg}");
        assert!(svg.contains("2pc / none"));
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once('<')?.0.trim()))
            .collect();
        assert!(
            texts.contains(&"123") && texts.contains(&"7"),
            "counts on the bars: {texts:?}"
        );
        assert!(texts.contains(&"duplicate e-mails"));
        assert!(texts.contains(&"none"), "a run without any anomaly says so");
    }

    #[test]
    fn throughput_per_second_marks_the_faults() {
        let mut results = crate::fixtures::results(&[64]);
        results.runs[0].faults = "all".into();
        results.runs[0].fault_events = vec![crate::faults::FaultEvent {
            kind: "partition coordinator-history".into(),
            start_s: 5.0,
            end_s: 8.0,
            error: None,
        }];
        let charts = per_second(&results).unwrap();
        assert_eq!(charts.len(), 1);
        assert!(charts[0].contains("partition coordinator-history"));
        assert!(charts[0].contains("faults all, 64 clients"));
    }

    #[test]
    fn one_client_count_still_makes_a_chart() {
        let results = crate::fixtures::results(&[2]);
        assert!(throughput(&results).unwrap().is_some());
    }

    #[test]
    fn ranges_leave_room_and_skip_zeros() {
        let r = log_range([0.0, 10.0, 100.0]).unwrap();
        assert!(r.start < 10.0 && r.end > 100.0);
        let r = log_range([27.0, 120.0]).unwrap();
        assert_eq!(r.start, 10.0, "down to a power of ten, where labels start");
        assert_eq!(log_range([0.0]), None);
        assert_eq!(zero_range([]), 0.0..1.0);
    }
}
