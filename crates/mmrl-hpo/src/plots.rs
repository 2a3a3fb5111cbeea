//! Study plots as SVG (plotters): optimization history, parallel coordinates, parameter importances; and the
//! importances themselves.
//!
//! Importance is a first-order variance decomposition estimated by binning (the correlation ratio eta^2,
//! i.e. one-way ANOVA, as the first-order terms of fANOVA): for each parameter, the share of the objective's
//! variance over complete trials explained by its value (quantile bins for numbers, one bin per category,
//! one for "inactive"), normalized to sum to 1. It ignores interactions and needs a dozen trials to mean much.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::pruner::Direction;
use crate::space::{Domain, Space};
use crate::storage::{TrialRecord, TrialState};

const FONT: &str = "sans-serif";
const INK: RGBColor = RGBColor(36, 41, 47);
const GRID: RGBColor = RGBColor(225, 228, 232);
const BLUE: RGBColor = RGBColor(78, 121, 167);
const ORANGE: RGBColor = RGBColor(242, 142, 43);
const RED: RGBColor = RGBColor(225, 87, 89);
const GREY: RGBColor = RGBColor(186, 176, 172);

fn draw<F>(name: &str, size: (u32, u32), f: F) -> Result<String>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String>,
{
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| Error::Study(format!("plot {name}: {e:?}")))?;
        f(&root).map_err(|e| Error::Study(format!("plot {name}: {e}")))?;
        root.present()
            .map_err(|e| Error::Study(format!("plot {name}: {e:?}")))?;
    }
    Ok(buf)
}

fn e<E: std::fmt::Debug>(x: E) -> String {
    format!("{x:?}")
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Objective per trial (complete and pruned, by state) with the best-so-far line.
pub fn history(trials: &[TrialRecord], direction: Direction, metric: &str) -> Result<String> {
    let points: Vec<(f64, f64, TrialState)> = trials
        .iter()
        .filter_map(|t| t.value.map(|v| (t.number as f64, v, t.state)))
        .filter(|p| p.1.is_finite())
        .collect();
    let mut best = Vec::new();
    let mut cur: Option<f64> = None;
    for t in trials.iter().filter(|t| t.state == TrialState::Complete) {
        if let Some(v) = t.value.filter(|v| v.is_finite()) {
            if cur.is_none_or(|c| direction.better(v, c)) {
                cur = Some(v);
            }
            if let Some(c) = cur {
                best.push((t.number as f64, c));
            }
        }
    }
    let (x0, x1) = range(trials.iter().map(|t| t.number as f64).chain([0.0]));
    let (y0, y1) = range(points.iter().map(|p| p.1));
    draw("history", (720, 420), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("optimization history", (FONT, 18).into_font().color(&INK))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("trial")
            .y_desc(metric)
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(best.iter().copied(), RED.stroke_width(2)))
            .map_err(e)?
            .label("best so far")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.2 == TrialState::Complete)
                    .map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())),
            )
            .map_err(e)?
            .label("complete")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, BLUE.filled()));
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.2 == TrialState::Pruned)
                    .map(|p| Circle::new((p.0, p.1), 4, GREY.filled())),
            )
            .map_err(e)?
            .label("pruned (last value)")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, GREY.filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(GRID)
            .label_font((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)
    })
}

/// One polyline per complete trial across the parameter axes (unit-cube coordinates), coloured from
/// orange (worst) to blue (best).
pub fn parallel_coordinates(
    space: &Space,
    trials: &[TrialRecord],
    direction: Direction,
) -> Result<String> {
    let done: Vec<(&TrialRecord, f64)> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| t.value.filter(|v| v.is_finite()).map(|v| (t, v)))
        .collect();
    let (lo, hi) = range(done.iter().map(|d| d.1));
    let n = space.dim();
    draw(
        "parallel_coordinates",
        (160 * n.max(2) as u32 + 120, 420),
        |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(
                    "parallel coordinates (blue: best)",
                    (FONT, 18).into_font().color(&INK),
                )
                .margin(16)
                .x_label_area_size(40)
                .y_label_area_size(40)
                .build_cartesian_2d(-0.2f64..(n as f64 - 0.8), 0.0f64..1.0)
                .map_err(e)?;
            let names: Vec<String> = space.params.iter().map(|p| p.name.clone()).collect();
            chart
                .configure_mesh()
                .x_labels(n.max(1))
                .x_label_formatter(&|x| index_label(&names, *x))
                .y_desc("position in range")
                .light_line_style(WHITE)
                .bold_line_style(GRID)
                .label_style((FONT, 12).into_font().color(&INK))
                .draw()
                .map_err(e)?;
            for i in 0..n {
                chart
                    .draw_series(LineSeries::new(
                        [(i as f64, 0.0), (i as f64, 1.0)],
                        INK.mix(0.5),
                    ))
                    .map_err(e)?;
            }
            let mut sorted = done.clone();
            // Draw the best last so they are on top.
            sorted.sort_by(|a, b| direction.loss(b.1).total_cmp(&direction.loss(a.1)));
            for (t, v) in sorted {
                let q = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
                let q = if direction == Direction::Maximize {
                    q
                } else {
                    1.0 - q
                };
                let mix = |a: u8, b: u8| (a as f64 * (1.0 - q) + b as f64 * q) as u8;
                let color = RGBColor(
                    mix(ORANGE.0, BLUE.0),
                    mix(ORANGE.1, BLUE.1),
                    mix(ORANGE.2, BLUE.2),
                );
                let u = space.encode(&t.params);
                let pts: Vec<(f64, f64)> = u
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| !x.is_nan())
                    .map(|(i, x)| (i as f64, *x))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, color.mix(0.8).stroke_width(2)))
                    .map_err(e)?;
            }
            Ok(())
        },
    )
}

/// Importance per parameter (eta^2, normalized), over complete trials; empty with fewer than 3.
pub fn importances(space: &Space, trials: &[TrialRecord]) -> BTreeMap<String, f64> {
    let done: Vec<(&TrialRecord, f64)> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| t.value.filter(|v| v.is_finite()).map(|v| (t, v)))
        .collect();
    let mut out = BTreeMap::new();
    if done.len() < 3 {
        return out;
    }
    let ys: Vec<f64> = done.iter().map(|d| d.1).collect();
    let mean = ys.iter().sum::<f64>() / ys.len() as f64;
    let total: f64 = ys.iter().map(|y| (y - mean).powi(2)).sum();
    let encoded: Vec<Vec<f64>> = done.iter().map(|d| space.encode(&d.0.params)).collect();
    for (i, p) in space.params.iter().enumerate() {
        let us: Vec<f64> = encoded.iter().map(|u| u[i]).collect();
        let bins: Vec<i64> = match &p.domain {
            Domain::Categorical { choices } => us
                .iter()
                .map(|u| {
                    if u.is_nan() {
                        -1
                    } else {
                        (u * choices.len() as f64) as i64
                    }
                })
                .collect(),
            _ => {
                let nb = (done.len() / 3).clamp(2, 5);
                let mut sorted: Vec<f64> = us.iter().copied().filter(|u| !u.is_nan()).collect();
                sorted.sort_by(f64::total_cmp);
                us.iter()
                    .map(|u| {
                        if u.is_nan() {
                            -1
                        } else {
                            let rank = sorted.partition_point(|s| s < u);
                            (rank * nb / sorted.len().max(1)) as i64
                        }
                    })
                    .collect()
            }
        };
        let mut groups: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
        for (b, y) in bins.iter().zip(&ys) {
            let g = groups.entry(*b).or_insert((0.0, 0));
            g.0 += y;
            g.1 += 1;
        }
        let between: f64 = groups
            .values()
            .map(|(s, c)| *c as f64 * (s / *c as f64 - mean).powi(2))
            .sum();
        out.insert(
            p.name.clone(),
            if total > 0.0 { between / total } else { 0.0 },
        );
    }
    let sum: f64 = out.values().sum();
    if sum > 0.0 {
        for v in out.values_mut() {
            *v /= sum;
        }
    }
    out
}

/// Horizontal bars of the importances, largest on top.
pub fn importance_chart(importances: &BTreeMap<String, f64>) -> Result<String> {
    let mut items: Vec<(&String, f64)> = importances.iter().map(|(k, v)| (k, *v)).collect();
    items.sort_by(|a, b| a.1.total_cmp(&b.1));
    let n = items.len().max(1);
    draw("importances", (720, 80 + 36 * n as u32), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "parameter importance (first-order eta^2)",
                (FONT, 18).into_font().color(&INK),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(160)
            .build_cartesian_2d(0.0f64..1.0, -0.5f64..(n as f64 - 0.5))
            .map_err(e)?;
        let names: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
        chart
            .configure_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| index_label(&names, *y))
            .x_desc("share of variance")
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
                Rectangle::new(
                    [(0.0, i as f64 - 0.35), (*v, i as f64 + 0.35)],
                    BLUE.filled(),
                )
            }))
            .map_err(e)?;
        Ok(())
    })
}

/// The name at an integer axis position (a parameter's index), empty between positions.
fn index_label(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}
