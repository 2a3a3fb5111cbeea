//! SVG plots of the report (plotters, SVG backend): line charts for training curves, horizontal grouped bars
//! per question type, the confusion-matrix heatmap and the reliability diagram. Each function returns a
//! standalone `<svg>` string to embed inline.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::metrics::Calibration;

/// Series colors (Tableau 10), in order.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(89, 161, 79),
    RGBColor(225, 87, 89),
    RGBColor(118, 183, 178),
    RGBColor(237, 201, 72),
    RGBColor(176, 122, 161),
    RGBColor(255, 157, 167),
    RGBColor(156, 117, 95),
    RGBColor(186, 176, 172),
];

const FONT: &str = "sans-serif";
const GRID: RGBColor = RGBColor(225, 228, 232);
const INK: RGBColor = RGBColor(36, 41, 47);

fn err(name: &str) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Plot {
        name: name.to_owned(),
        message,
    }
}

fn draw<F>(name: &str, size: (u32, u32), f: F) -> Result<String>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String>,
{
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(name)(format!("{e:?}")))?;
        f(&root).map_err(err(name))?;
        root.present().map_err(|e| err(name)(format!("{e:?}")))?;
    }
    Ok(buf)
}

fn e<E: std::fmt::Debug>(x: E) -> String {
    format!("{x:?}")
}

/// Axis tick text: integers without decimals, otherwise up to three significant decimals.
pub fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 && v.abs() < 1e9 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn range_of(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// One line of a [`line_chart`].
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points `(x, y)`, in x order.
    pub points: Vec<(f64, f64)>,
    /// Draw markers at each point.
    pub markers: bool,
    /// Join the points with a line.
    pub line: bool,
}

/// A line chart; the y range is fit to the data unless `y_range` is given.
pub fn line_chart(
    name: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
    size: (u32, u32),
) -> Result<String> {
    let (x0, x1) = range_of(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = y_range
        .unwrap_or_else(|| range_of(series.iter().flat_map(|s| s.points.iter().map(|p| p.1))));
    draw(name, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18).into_font().color(&INK))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .axis_style(INK.mix(0.6))
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        for (k, s) in series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let points = if s.line { s.points.clone() } else { Vec::new() };
            let legend = chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(e)?
                .label(s.name.clone());
            if s.line {
                legend.legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            } else {
                legend.legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
            }
            if s.markers {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(e)?;
            }
        }
        if series.len() > 1 || series.iter().any(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(GRID)
                .label_font((FONT, 12).into_font().color(&INK))
                .draw()
                .map_err(e)?;
        }
        Ok(())
    })
}

/// Horizontal grouped bars: one band per category, one bar per series, values in [0, 1] with their value
/// printed at the bar's end.
pub fn grouped_bars(
    name: &str,
    title: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    width: u32,
) -> Result<String> {
    let n = categories.len().max(1);
    let k = series.len().max(1);
    let band = (10 * k + 12) as u32;
    let legend = 26 * series.len().div_ceil(4) as u32;
    let height = 70 + legend + band * n as u32 + 40;
    draw(name, (width, height), |root| {
        let (top, body) = root.split_vertically(40 + legend);
        top.draw(&Text::new(
            title.to_owned(),
            (12, 8),
            (FONT, 18).into_font().color(&INK),
        ))
        .map_err(e)?;
        for (s, (label, _)) in series.iter().enumerate() {
            let (col, row) = ((s % 4) as i32, (s / 4) as i32);
            let (x, y) = (170 + col * 200, 36 + row * 26);
            let color = PALETTE[s % PALETTE.len()];
            top.draw(&Rectangle::new([(x, y), (x + 14, y + 12)], color.filled()))
                .map_err(e)?;
            top.draw(&Text::new(
                label.clone(),
                (x + 20, y),
                (FONT, 13).into_font().color(&INK),
            ))
            .map_err(e)?;
        }
        let mut chart = ChartBuilder::on(&body)
            .margin_right(40)
            .margin_top(6)
            .x_label_area_size(30)
            .y_label_area_size(170)
            .build_cartesian_2d(0f64..1.0, 0f64..n as f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("exact match")
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .axis_style(INK.mix(0.6))
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        let slot = 0.8 / k as f64;
        for (s, (_, values)) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            for (c, &v) in values.iter().enumerate().take(n) {
                // Category 0 at the top.
                let base = (n - 1 - c) as f64 + 0.9 - slot * (s as f64 + 1.0);
                let v = if v.is_finite() {
                    v.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, base + slot * 0.1), (v, base + slot * 0.9)],
                        color.filled(),
                    )))
                    .map_err(e)?;
                // backend_coord is absolute: draw on the root area.
                let (px, py) = chart.backend_coord(&(v, base + slot * 0.5));
                root.draw(&Text::new(
                    format!("{v:.2}"),
                    (px + 3, py),
                    (FONT, 10)
                        .into_font()
                        .color(&INK.mix(0.8))
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(e)?;
            }
        }
        for (c, label) in categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, (n - 1 - c) as f64 + 0.5));
            root.draw(&Text::new(
                label.clone(),
                (px - 8, py),
                (FONT, 13)
                    .into_font()
                    .color(&INK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(e)?;
        }
        Ok(())
    })
}

/// Confusion-matrix heatmap, each row shaded by its share of the reference's rows, counts printed.
pub fn heatmap(name: &str, title: &str, labels: &[String], matrix: &[Vec<u64>]) -> Result<String> {
    let n = labels.len().max(1);
    let cell = (640 / n as u32).clamp(18, 44);
    let side = cell * n as u32;
    let size = (side + 200, side + 110);
    draw(name, size, |root| {
        root.draw(&Text::new(
            title.to_owned(),
            (12, 8),
            (FONT, 18).into_font().color(&INK),
        ))
        .map_err(e)?;
        let (ox, oy) = (130i32, 70i32);
        let c = cell as i32;
        let blue = PALETTE[0];
        for (i, row) in matrix.iter().enumerate().take(n) {
            let total: u64 = row.iter().sum();
            for (j, &v) in row.iter().enumerate().take(n) {
                let share = if total == 0 {
                    0.0
                } else {
                    v as f64 / total as f64
                };
                let (x, y) = (ox + j as i32 * c, oy + i as i32 * c);
                let mix =
                    |a: u8, b: u8| (f64::from(a) * share + f64::from(b) * (1.0 - share)) as u8;
                let fill = RGBColor(mix(blue.0, 247), mix(blue.1, 249), mix(blue.2, 252));
                root.draw(&Rectangle::new([(x, y), (x + c, y + c)], fill.filled()))
                    .map_err(e)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + c, y + c)],
                    WHITE.stroke_width(1),
                ))
                .map_err(e)?;
                if v > 0 {
                    let ink = if share > 0.5 { WHITE } else { INK };
                    root.draw(&Text::new(
                        v.to_string(),
                        (x + c / 2, y + c / 2),
                        (FONT, (cell as f64 * 0.38).clamp(8.0, 13.0))
                            .into_font()
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(e)?;
                }
            }
        }
        let small = (FONT, (cell as f64 * 0.42).clamp(9.0, 13.0)).into_font();
        for (i, l) in labels.iter().enumerate() {
            root.draw(&Text::new(
                l.clone(),
                (ox - 6, oy + i as i32 * c + c / 2),
                small
                    .clone()
                    .color(&INK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                l.clone(),
                (ox + i as i32 * c + c / 2, oy - 6),
                small
                    .clone()
                    .color(&INK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(e)?;
        }
        let axis = (FONT, 13).into_font().color(&INK.mix(0.7));
        root.draw(&Text::new(
            "predicted".to_owned(),
            (ox + side as i32 / 2, oy + side as i32 + 12),
            axis.clone().pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(e)?;
        root.draw(&Text::new(
            "reference".to_owned(),
            (12, oy - 24),
            axis.pos(Pos::new(HPos::Left, VPos::Bottom)),
        ))
        .map_err(e)?;
        Ok(())
    })
}

/// Reliability diagram: accuracy per confidence bin (bars, with row counts) against the diagonal.
pub fn reliability(name: &str, title: &str, cal: &Calibration) -> Result<String> {
    draw(name, (560, 460), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18).into_font().color(&INK))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1.0, 0f64..1.0)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("confidence")
            .y_desc("accuracy")
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .axis_style(INK.mix(0.6))
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(cal.bins.iter().filter(|b| b.count > 0).map(|b| {
                Rectangle::new(
                    [(b.lo + 0.004, 0.0), (b.hi - 0.004, b.accuracy)],
                    PALETTE[0].mix(0.85).filled(),
                )
            }))
            .map_err(e)?
            .label("accuracy per bin")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], PALETTE[0].filled()));
        chart
            .draw_series(
                cal.bins
                    .iter()
                    .filter(|b| b.count > 0)
                    .map(|b| Circle::new((b.confidence, b.accuracy), 3, PALETTE[1].filled())),
            )
            .map_err(e)?
            .label("mean confidence")
            .legend(|(x, y)| Circle::new((x + 7, y), 3, PALETTE[1].filled()));
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                INK.mix(0.5).stroke_width(1),
            ))
            .map_err(e)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], INK.mix(0.5)));
        for b in cal.bins.iter().filter(|b| b.count > 0) {
            let (px, py) = chart.backend_coord(&((b.lo + b.hi) / 2.0, b.accuracy));
            root.draw(&Text::new(
                b.count.to_string(),
                (px, py - 3),
                (FONT, 10)
                    .into_font()
                    .color(&INK.mix(0.7))
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(GRID)
            .label_font((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}
