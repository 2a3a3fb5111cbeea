//! `report.md` and the self-contained `report.html` (inline SVG plots, no external assets) from the
//! metrics, plus the training-history figures (sft, rl, hpo) collected from the input artifacts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mmrl_artifact::Artifact;

use crate::bootstrap::Interval;
use crate::config::EvalConfig;
use crate::curves::{Columns, thin};
use crate::error::Result;
use crate::metrics::{Calibration, RiskCoverage};
use crate::plots::{self, Series};
use crate::stage::{Detail, Kind, MetricsFile, SystemReport};

/// A plot with its title and caption.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Anchor id.
    pub id: String,
    /// Heading.
    pub title: String,
    /// Inline `<svg>`.
    pub svg: String,
    /// One line under the plot.
    pub caption: String,
}

/// Training-history figures.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// sft, rl and hpo plots, in that order.
    pub figures: Vec<Figure>,
}

const CURVE_POINTS: usize = 300;

/// The figures collected so far and the `sources` notes (what was found, what is absent).
struct Collector<'a> {
    figures: Vec<Figure>,
    sources: &'a mut BTreeMap<String, String>,
}

impl Collector<'_> {
    /// Keeps `figure`, or notes under `key` why it could not be drawn.
    fn push(&mut self, key: &str, figure: Result<Figure>) {
        match figure {
            Ok(f) => self.figures.push(f),
            Err(e) => {
                self.sources
                    .insert(key.to_owned(), format!("could not be drawn: {e}"));
            }
        }
    }

    /// Notes under `key` where a group of figures came from, or why it is absent.
    fn note(&mut self, key: &str, text: String) {
        self.sources.insert(key.to_owned(), text);
    }

    /// The sft plots (training loss, val exact match) of input `name`, or a note that there is none.
    fn sft_curves(&mut self, input: Option<(String, &Artifact)>, cross_modal: &[String]) {
        let Some((name, a)) = input else {
            self.note(
                "sft_curves",
                "absent: no sft artifact among the inputs".into(),
            );
            return;
        };
        let steps = Columns::read(a, "metrics_steps");
        let val = Columns::read(a, "metrics_val");
        let mut found = Vec::new();
        if let Some(s) = &steps
            && self.sft_loss(&name, s)
        {
            found.push("metrics_steps");
        }
        if let Some(v) = &val
            && self.sft_val(v, cross_modal)
        {
            found.push("metrics_val");
        }
        self.note(
            "sft_curves",
            if found.is_empty() {
                format!("absent: input {name:?} has no metrics_steps/metrics_val tables")
            } else {
                format!("input {name:?} ({})", found.join(", "))
            },
        );
    }

    /// The sft training-loss plot from table `metrics_steps`; false when it has no loss.
    fn sft_loss(&mut self, name: &str, s: &Columns) -> bool {
        let loss = thin(&s.points("step", "loss", None), CURVE_POINTS);
        if loss.is_empty() {
            return false;
        }
        self.push(
            "sft_loss",
            plots::line_chart(
                "sft_loss",
                "sft: training loss",
                "step",
                "loss",
                &[Series {
                    name: "loss (window mean)".into(),
                    points: loss,
                    markers: false,
                    line: true,
                }],
                None,
                (560, 320),
            )
            .map(|svg| Figure {
                id: "sft-loss".into(),
                title: "sft training loss".into(),
                svg,
                caption: format!("Per-step loss of input {name:?}, averaged over windows."),
            }),
        );
        true
    }

    /// The sft val exact-match plot from table `metrics_val`, overall and per cross-modal question type;
    /// false when it has no overall exact match.
    fn sft_val(&mut self, v: &Columns, cross_modal: &[String]) -> bool {
        let x = if v.numeric.contains_key("step") {
            "step"
        } else {
            "epoch"
        };
        let has_q = v.text.contains_key("qtype");
        let mut series = vec![Series {
            name: "all".into(),
            points: v.points(x, "exact_match", has_q.then_some(("qtype", "all"))),
            markers: true,
            line: true,
        }];
        if has_q {
            for q in cross_modal {
                let p = v.points(x, "exact_match", Some(("qtype", q)));
                if !p.is_empty() {
                    series.push(Series {
                        name: q.clone(),
                        points: p,
                        markers: false,
                        line: true,
                    });
                }
            }
        }
        if series[0].points.is_empty() {
            return false;
        }
        self.push(
            "sft_val",
            plots::line_chart(
                "sft_val",
                "sft: validation exact match",
                x,
                "exact match",
                &series,
                Some((0.0, 1.0)),
                (560, 320),
            )
            .map(|svg| Figure {
                id: "sft-val".into(),
                title: "sft validation".into(),
                svg,
                caption:
                    "Val exact match per epoch, overall and on the cross-modal question types."
                        .into(),
            }),
        );
        true
    }

    /// The rl plots (reward, KL, entropy per step; val exact match) of input `name`, or a note that
    /// there is none.
    fn rl_curves(&mut self, input: Option<(String, &Artifact)>) {
        let Some((name, a)) = input else {
            self.note(
                "rl_curves",
                "absent: no rl artifact among the inputs".into(),
            );
            return;
        };
        let mut found = Vec::new();
        if let Some(s) = Columns::read(a, "metrics_steps") {
            found.extend(self.rl_steps(&name, &s));
        }
        if let Some(v) = Columns::read(a, "metrics_val")
            && self.rl_val(&name, &v)
        {
            found.push("val exact_match");
        }
        self.note(
            "rl_curves",
            if found.is_empty() {
                format!("absent: input {name:?} has no reward/kl/entropy or val columns")
            } else {
                format!("input {name:?} ({})", found.join(", "))
            },
        );
    }

    /// One plot per column of `metrics_steps` among reward, kl and entropy; returns the columns drawn.
    fn rl_steps(&mut self, name: &str, s: &Columns) -> Vec<&'static str> {
        let mut found = Vec::new();
        for (col, label) in [
            ("reward", "mean reward"),
            ("kl", "KL to reference"),
            ("entropy", "entropy"),
        ] {
            let p = thin(&s.points("step", col, None), CURVE_POINTS);
            if p.is_empty() {
                continue;
            }
            found.push(col);
            self.push(
                &format!("rl_{col}"),
                plots::line_chart(
                    &format!("rl_{col}"),
                    &format!("rl: {label}"),
                    "step",
                    col,
                    &[Series {
                        name: String::new(),
                        points: p,
                        markers: false,
                        line: true,
                    }],
                    None,
                    (420, 300),
                )
                .map(|svg| Figure {
                    id: format!("rl-{col}"),
                    title: format!("rl {label}"),
                    svg,
                    caption: format!("{label} per step of input {name:?}."),
                }),
            );
        }
        found
    }

    /// The rl val exact-match plot from table `metrics_val`; false when it has no exact match.
    fn rl_val(&mut self, name: &str, v: &Columns) -> bool {
        let x = if v.numeric.contains_key("step") {
            "step"
        } else {
            "epoch"
        };
        let filter = v.text.contains_key("qtype").then_some(("qtype", "all"));
        let p = v.points(x, "exact_match", filter);
        if p.is_empty() {
            return false;
        }
        self.push(
            "rl_val",
            plots::line_chart(
                "rl_val",
                "rl: validation exact match",
                x,
                "exact match",
                &[Series {
                    name: String::new(),
                    points: p,
                    markers: true,
                    line: true,
                }],
                Some((0.0, 1.0)),
                (420, 300),
            )
            .map(|svg| Figure {
                id: "rl-val".into(),
                title: "rl validation".into(),
                svg,
                caption: format!("Val exact match of input {name:?}."),
            }),
        );
        true
    }

    /// The hpo plot (objective per completed trial and best so far), or a note why there is none.
    fn hpo_history(&mut self, hpo: Option<&Artifact>) {
        let Some(a) = hpo else {
            self.note("hpo_history", "absent: no hpo input".into());
            return;
        };
        let trials = Columns::read(a, "trials");
        let minimize = hpo_minimizes(a);
        let points = trials.as_ref().map(completed_trials).unwrap_or_default();
        if points.is_empty() {
            self.note(
                "hpo_history",
                "absent: the hpo input has no completed trials with a value (table trials: number, state, value)".into(),
            );
            return;
        }
        let best = best_so_far(&points, minimize);
        self.note(
            "hpo_history",
            format!("hpo input, {} completed trials", points.len()),
        );
        self.push(
            "hpo",
            plots::line_chart(
                "hpo",
                "hpo: objective per trial",
                "trial",
                "objective",
                &[
                    Series {
                        name: "trial".into(),
                        points: points.clone(),
                        markers: true,
                        line: false,
                    },
                    Series {
                        name: "best so far".into(),
                        points: best,
                        markers: false,
                        line: true,
                    },
                ],
                None,
                (560, 320),
            )
            .map(|svg| Figure {
                id: "hpo".into(),
                title: "hpo history".into(),
                svg,
                caption: format!(
                    "Objective of each completed trial ({}).",
                    if minimize { "minimized" } else { "maximized" }
                ),
            }),
        );
    }
}

/// Whether the hpo study minimized its objective (`direction` in its `report.json`).
fn hpo_minimizes(a: &Artifact) -> bool {
    a.file("report.json")
        .ok()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("direction")
                .and_then(|d| d.as_str().map(str::to_owned))
        })
        .is_some_and(|d| d.eq_ignore_ascii_case("minimize"))
}

/// (trial number, value) of each trial of table `trials` that finished with a finite value.
fn completed_trials(t: &Columns) -> Vec<(f64, f64)> {
    // Any trial with a value counts unless its state says it did not finish.
    let done = |i: usize| {
        t.text.get("state").is_none_or(|s| {
            s[i].as_deref().is_none_or(|x| {
                let x = x.to_ascii_lowercase();
                !(x.starts_with("prun") || x.starts_with("fail") || x.starts_with("run"))
            })
        })
    };
    let (Some(n), Some(v)) = (t.numeric.get("number"), t.numeric.get("value")) else {
        return Vec::new();
    };
    (0..t.rows)
        .filter(|&i| done(i))
        .filter_map(|i| match (n[i], v[i]) {
            (Some(a), Some(b)) if b.is_finite() => Some((a, b)),
            _ => None,
        })
        .collect::<Vec<_>>()
}

/// The best objective so far after each trial (the running minimum or maximum).
fn best_so_far(points: &[(f64, f64)], minimize: bool) -> Vec<(f64, f64)> {
    let mut best = Vec::new();
    let mut cur: Option<f64> = None;
    for &(x, y) in points {
        let b = match cur {
            None => y,
            Some(c) if minimize => c.min(y),
            Some(c) => c.max(y),
        };
        cur = Some(b);
        best.push((x, b));
    }
    best
}

impl History {
    /// Collects the curves of every model artifact by the stage that wrote it (`sft`, `rl`) and the hpo
    /// trials (the sft val plot also draws the `cross_modal` question types); what is absent is noted in
    /// `sources`, never an error.
    pub fn collect(
        models: &[(String, Artifact)],
        hpo: Option<&Artifact>,
        cross_modal: &[String],
        sources: &mut BTreeMap<String, String>,
    ) -> Self {
        let by_stage = |stage: &str| {
            models
                .iter()
                .find(|(_, a)| a.manifest().stage == stage)
                .map(|(n, a)| (n.clone(), a))
        };
        let mut c = Collector {
            figures: Vec::new(),
            sources,
        };
        c.sft_curves(by_stage("sft"), cross_modal);
        c.rl_curves(by_stage("rl"));
        c.hpo_history(hpo);
        History { figures: c.figures }
    }
}

fn f3(x: f64) -> String {
    format!("{x:.3}")
}

fn opt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), f3)
}

fn ci(c: Option<&Interval>) -> String {
    c.map_or(String::new(), |c| format!(" [{:.3}, {:.3}]", c.lo, c.hi))
}

fn pval(p: f64) -> String {
    if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::Ours => "ours",
        Kind::Checkpoint => "checkpoint",
        Kind::Ablation => "ablation",
        Kind::Baseline => "baseline",
        Kind::External => "predictions",
    }
}

fn order(k: Kind) -> u8 {
    match k {
        Kind::Ours => 0,
        Kind::Checkpoint => 1,
        Kind::External => 2,
        Kind::Ablation => 3,
        Kind::Baseline => 4,
    }
}

/// The headline as plain text: the test rows scored (and those answered without a modality a curation
/// stage dropped, with the reasons), one line per system (exact match with its interval, cross-modal exact
/// match, paired-bootstrap p against ours), then the cross-modal verdict. The binary logs it and the
/// artifact keeps it as `summary.txt`, which the pipeline runner prints last.
pub fn headline_table(m: &MetricsFile) -> String {
    let mut out = format!("{}\n", m.test_rows.headline());
    out += &format!(
        "{:<26} {:<11} {:>22} {:>12} {:>9}\n",
        "system", "kind", "exact match [95% CI]", "cross-modal", "p vs ours"
    );
    for (name, r) in ordered(m) {
        let ci = r
            .exact_match_ci
            .map_or(String::new(), |c| format!(" [{:.3},{:.3}]", c.lo, c.hi));
        let p = m
            .comparisons
            .get(&name)
            .and_then(|c| c.overall)
            .map_or(String::new(), |c| format!("{:.3}", c.p_value));
        let kind = serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<26} {:<11} {:>22} {:>12} {:>9}\n",
            name,
            kind,
            format!("{:.3}{ci}", r.exact_match),
            r.cross_modal_exact_match
                .map_or("n/a".into(), |x| format!("{x:.3}")),
            p
        ));
    }
    if m.cross_modal.qtypes.is_empty() {
        out.push_str(&format!(
            "cross-modal questions: none in the test split (types from {})\n",
            m.cross_modal.source
        ));
    } else if m.cross_modal.ours_beats_all {
        out.push_str("cross-modal questions: ours beats every baseline and ablation\n");
    } else {
        let shown = 4;
        let list = &m.cross_modal.not_beaten;
        let more = list.len().saturating_sub(shown);
        out.push_str(&format!(
            "cross-modal questions: not beaten by ours: {}{}\n",
            list[..list.len().min(shown)].join("; "),
            if more > 0 {
                format!("; and {more} more (report.md)")
            } else {
                String::new()
            }
        ));
    }
    out
}

/// Systems in report order: ours, checkpoints, external, ablations, baselines.
pub fn ordered(m: &MetricsFile) -> Vec<(String, &SystemReport)> {
    let mut v: Vec<(String, &SystemReport)> = std::iter::once((m.headline.clone(), &m.test))
        .chain(m.baselines.iter().map(|(k, r)| (k.clone(), r)))
        .collect();
    v.sort_by(|a, b| order(a.1.kind).cmp(&order(b.1.kind)).then(a.0.cmp(&b.0)));
    v
}

/// A plain table: header and rows of cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Rows to highlight (ours).
    strong: Vec<bool>,
    /// Bold the largest number of each row from this column on (per-type tables).
    best_from: Option<usize>,
}

impl Table {
    fn markdown(&self) -> String {
        let mut s = format!("| {} |\n", self.header.join(" | "));
        let _ = writeln!(
            s,
            "|{}|",
            self.header
                .iter()
                .map(|_| " --- ")
                .collect::<Vec<_>>()
                .join("|")
        );
        for (r, strong) in self.rows.iter().zip(&self.strong) {
            let cells: Vec<String> = r
                .iter()
                .map(|c| {
                    if *strong && !c.is_empty() {
                        format!("**{c}**")
                    } else {
                        c.clone()
                    }
                })
                .collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s
    }

    fn html(&self) -> String {
        let mut s = String::from("<table><thead><tr>");
        for h in &self.header {
            let _ = write!(s, "<th>{}</th>", esc(h));
        }
        s.push_str("</tr></thead><tbody>");
        for (r, strong) in self.rows.iter().zip(&self.strong) {
            s.push_str(if *strong {
                "<tr class=\"ours\">"
            } else {
                "<tr>"
            });
            let best = self.best_from.and_then(|from| {
                r.iter()
                    .skip(from)
                    .filter_map(|c| c.split(' ').next().and_then(|v| v.parse::<f64>().ok()))
                    .reduce(f64::max)
            });
            for (i, c) in r.iter().enumerate() {
                let is_best = self.best_from.is_some_and(|from| i >= from)
                    && best.is_some()
                    && c.split(' ').next().and_then(|v| v.parse::<f64>().ok()) == best;
                let class = match (i, is_best) {
                    (0, _) => "",
                    (_, true) => " class=\"num best\"",
                    _ => " class=\"num\"",
                };
                let _ = write!(s, "<td{class}>{}</td>", esc(c));
            }
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table>");
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Section {
    id: &'static str,
    title: String,
    intro: String,
    notes: Vec<String>,
    tables: Vec<Table>,
    figures: Vec<Figure>,
}

fn comparison_table(m: &MetricsFile) -> Table {
    let mut t = Table {
        header: [
            "system",
            "kind",
            "exact match [95% CI]",
            "cross-modal EM [95% CI]",
            "token F1",
            "macro F1",
            "Δ EM vs ours",
            "p (paired bootstrap)",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: None,
    };
    for (name, r) in ordered(m) {
        let cmp = m.comparisons.get(&name).and_then(|c| c.overall);
        t.rows.push(vec![
            name.clone(),
            kind_label(r.kind).into(),
            format!("{}{}", f3(r.exact_match), ci(r.exact_match_ci.as_ref())),
            format!(
                "{}{}",
                opt(r.cross_modal_exact_match),
                ci(r.cross_modal_ci.as_ref())
            ),
            opt(r.metrics.get("token_f1").copied().flatten()),
            opt(r.metrics.get("macro_f1").copied().flatten()),
            cmp.map_or("".into(), |c| format!("{:+.3}", c.delta)),
            cmp.map_or("".into(), |c| pval(c.p_value)),
        ]);
        t.strong.push(r.kind == Kind::Ours);
    }
    t
}

fn cross_modal_table(m: &MetricsFile) -> Table {
    let qs = &m.cross_modal.qtypes;
    let mut header = vec!["system".to_owned(), "all cross-modal".to_owned()];
    header.extend(qs.iter().cloned());
    header.push("p (cross-modal, vs ours)".into());
    let mut t = Table {
        header,
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: None,
    };
    for (name, r) in ordered(m) {
        let mut row = vec![name.clone(), opt(r.cross_modal_exact_match)];
        for q in qs {
            row.push(opt(r.by_question.get(q).copied()));
        }
        row.push(
            m.comparisons
                .get(&name)
                .and_then(|c| c.cross_modal)
                .map_or("".into(), |c| {
                    format!("{} (Δ {:+.3})", pval(c.p_value), c.delta)
                }),
        );
        t.rows.push(row);
        t.strong.push(r.kind == Kind::Ours);
    }
    t
}

fn needs_table(m: &MetricsFile) -> Table {
    let modalities: Vec<String> = m
        .modality_needs
        .values()
        .flat_map(|n| n.costs.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut header = vec![
        "question type".to_owned(),
        "n".to_owned(),
        "needs".to_owned(),
    ];
    header.extend(modalities.iter().map(|x| format!("EM drop without {x}")));
    let mut t = Table {
        header,
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: None,
    };
    for (q, n) in &m.modality_needs {
        let mut row = vec![
            if q.is_empty() {
                "(none)".into()
            } else {
                q.clone()
            },
            n.samples.to_string(),
            n.label(),
        ];
        for x in &modalities {
            row.push(n.costs.get(x).map_or(String::new(), |c| {
                format!("{}{}", f3(c.drop), ci(Some(&c.ci)))
            }));
        }
        t.rows.push(row);
        t.strong.push(false);
    }
    t
}

/// `s` with its first letter upper-case.
fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn qtype_table(m: &MetricsFile) -> Table {
    let systems = ordered(m);
    let mut header = vec!["question type".to_owned(), "n".to_owned()];
    header.extend(systems.iter().map(|(n, _)| n.clone()));
    let mut t = Table {
        header,
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: Some(2),
    };
    for q in m.test.by_question.keys() {
        let n = m
            .test
            .by_question_samples
            .get(q)
            .map_or(String::new(), usize::to_string);
        let mut row = vec![q.clone(), n];
        for (_, r) in &systems {
            row.push(opt(r.by_question.get(q).copied()));
        }
        t.rows.push(row);
        t.strong.push(false);
    }
    t
}

fn metric_table(m: &MetricsFile) -> Table {
    let mut t = Table {
        header: ["metric", "value", "95% CI"].map(String::from).to_vec(),
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: None,
    };
    for (k, v) in &m.test.metrics {
        t.rows.push(vec![
            k.clone(),
            opt(*v),
            m.test
                .metrics_ci
                .get(k)
                .map_or("".into(), |c| format!("[{:.3}, {:.3}]", c.lo, c.hi)),
        ]);
        t.strong.push(false);
    }
    t
}

fn group_table(title: &str, groups: &BTreeMap<String, BTreeMap<String, Option<f64>>>) -> Table {
    let keys = [
        "exact_match",
        "token_f1",
        "macro_f1",
        "weighted_f1",
        "mae",
        "ece",
        "abstention_rate",
    ];
    let mut header = vec![title.to_owned()];
    header.extend(keys.iter().map(|k| (*k).to_owned()));
    let mut t = Table {
        header,
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: None,
    };
    for (g, vals) in groups {
        let mut row = vec![if g.is_empty() {
            "(none)".into()
        } else {
            g.clone()
        }];
        row.extend(keys.iter().map(|k| opt(vals.get(*k).copied().flatten())));
        t.rows.push(row);
        t.strong.push(false);
    }
    t
}

fn class_table(m: &MetricsFile, top: usize) -> Option<Table> {
    let d = m.test.detail.as_ref()?;
    let c = &d.classes;
    let mut idx: Vec<usize> = (0..c.labels.len()).collect();
    idx.sort_by(|&a, &b| {
        c.per_class[b]
            .support
            .cmp(&c.per_class[a].support)
            .then(c.labels[a].cmp(&c.labels[b]))
    });
    let mut t = Table {
        header: ["class", "precision", "recall", "F1", "support"]
            .map(String::from)
            .to_vec(),
        rows: Vec::new(),
        strong: Vec::new(),
        best_from: None,
    };
    for &i in idx.iter().take(top) {
        let p = &c.per_class[i];
        t.rows.push(vec![
            c.labels[i].clone(),
            f3(p.precision),
            f3(p.recall),
            f3(p.f1),
            p.support.to_string(),
        ]);
        t.strong.push(false);
    }
    for (name, p) in [
        ("macro avg", &c.macro_avg),
        ("micro avg", &c.micro_avg),
        ("weighted avg", &c.weighted_avg),
    ] {
        t.rows.push(vec![
            name.into(),
            f3(p.precision),
            f3(p.recall),
            f3(p.f1),
            p.support.to_string(),
        ]);
        t.strong.push(true);
    }
    Some(t)
}

/// "Which modality each question type needs", when the ablations measured it.
fn needs_section(m: &MetricsFile, config: &EvalConfig) -> Option<Section> {
    if m.modality_needs.is_empty() {
        return None;
    }
    Some(Section {
        id: "needs",
        title: "Which modality each question type needs".into(),
        intro: format!(
            "Measured on the test split: a question type needs a modality when masking that modality for \
             every row lowers the headline model's exact match on the type by more than {:.3} \
             (needs_threshold) and the {:.0}% paired bootstrap interval of the drop lies above zero. \
             Cells: the drop [interval]. \"none\": the question alone suffices, or any one of several modalities.",
            config.needs_threshold,
            config.confidence_level * 100.0
        ),
        notes: Vec::new(),
        tables: vec![needs_table(m)],
        figures: Vec::new(),
    })
}

/// RL against its baselines (the `compare` input), when eval was given one.
fn rl_comparison_section(m: &MetricsFile) -> Option<Section> {
    let c = m.rl_comparison.as_ref()?;
    Some(Section {
        id: "rl-comparison",
        title: "RL against its baselines".into(),
        intro: c.legend.clone(),
        notes: Vec::new(),
        tables: vec![Table {
            header: c.table.header.clone(),
            rows: c.table.rows.clone(),
            strong: c.table.rows.iter().map(|_| false).collect(),
            best_from: None,
        }],
        figures: Vec::new(),
    })
}

/// The report's sections in order: comparison, RL against its baselines, cross-modal questions, which
/// modality each question type needs, per question type, all metrics, errors and calibration, training
/// history.
fn sections(m: &MetricsFile, history: &History, config: &EvalConfig) -> Result<Vec<Section>> {
    let mut out = vec![summary_section(m, config)];
    out.extend(rl_comparison_section(m));
    out.push(cross_modal_section(m));
    out.extend(needs_section(m, config));
    out.push(qtypes_section(m)?);
    out.push(metrics_section(m, config));
    out.push(errors_section(m, config)?);
    out.push(training_section(m, history));
    Ok(out)
}

/// "Comparison": the headline figure, the test rows, the cross-modal verdict and every system's scores.
fn summary_section(m: &MetricsFile, config: &EvalConfig) -> Section {
    let ours = &m.test;
    let verdict = if m.cross_modal.ours_beats_all {
        format!(
            "Ours beats every baseline and ablation on the cross-modal question types ({}).",
            m.cross_modal.qtypes.join(", ")
        )
    } else if m.cross_modal.qtypes.is_empty() {
        format!(
            "No cross-modal question type is in the test split (types from {}).",
            m.cross_modal.source
        )
    } else {
        format!(
            "Ours does not beat every baseline and ablation on the cross-modal question types; not beaten: {}.",
            m.cross_modal.not_beaten.join("; ")
        )
    };
    Section {
        id: "summary",
        title: "Comparison".into(),
        intro: format!(
            "Headline model **{}** on {} test samples: exact match {}{}. {}. {} \
             Intervals: {} percentile bootstrap resamples; p: paired bootstrap, two-sided, against ours.",
            m.headline,
            ours.samples,
            f3(ours.exact_match),
            ci(ours.exact_match_ci.as_ref()),
            capitalized(&m.test_rows.headline()),
            verdict,
            config.bootstrap_samples
        ),
        notes: Vec::new(),
        tables: vec![comparison_table(m)],
        figures: Vec::new(),
    }
}

/// "Cross-modal questions": exact match of every system on the cross-modal question types.
fn cross_modal_section(m: &MetricsFile) -> Section {
    Section {
        id: "cross-modal",
        title: "Cross-modal questions".into(),
        intro: format!(
            "Exact match on the question types whose answer needs two modalities; the types come from {}.",
            m.cross_modal.source
        ),
        notes: Vec::new(),
        tables: vec![cross_modal_table(m)],
        figures: Vec::new(),
    }
}

/// Grouped bars of exact match per question type of the systems `pick` keeps (✱ marks cross-modal types).
fn qtype_bars(
    m: &MetricsFile,
    name: &str,
    title: &str,
    pick: &dyn Fn(&SystemReport) -> bool,
) -> Result<String> {
    let qtypes: Vec<String> = m.test.by_question.keys().cloned().collect();
    let series: Vec<(String, Vec<f64>)> = ordered(m)
        .into_iter()
        .filter(|(_, r)| pick(r))
        .map(|(n, r)| {
            (
                n,
                qtypes
                    .iter()
                    .map(|q| r.by_question.get(q).copied().unwrap_or(0.0))
                    .collect(),
            )
        })
        .collect();
    let labels: Vec<String> = qtypes
        .iter()
        .map(|q| {
            if m.cross_modal.qtypes.contains(q) {
                format!("{q} ✱")
            } else {
                q.clone()
            }
        })
        .collect();
    plots::grouped_bars(name, title, &labels, &series, 980)
}

/// "Per question type": the table of every system and the bars of ours vs baselines and vs ablations.
fn qtypes_section(m: &MetricsFile) -> Result<Section> {
    Ok(Section {
        id: "qtypes",
        title: "Per question type".into(),
        intro: "Exact match per question type, every system.".into(),
        notes: Vec::new(),
        tables: vec![qtype_table(m)],
        figures: vec![
            Figure {
                id: "bars-baselines".into(),
                title: "ours vs baselines".into(),
                svg: qtype_bars(
                    m,
                    "bars_baselines",
                    "Exact match per question type: ours, checkpoints and baselines",
                    &|r| r.kind != Kind::Ablation,
                )?,
                caption: "Baselines are fit on train only; ✱ marks the cross-modal question types."
                    .into(),
            },
            Figure {
                id: "bars-ablations".into(),
                title: "ablations".into(),
                svg: qtype_bars(
                    m,
                    "bars_ablations",
                    "Exact match per question type: ours vs modality ablations",
                    &|r| matches!(r.kind, Kind::Ours | Kind::Ablation),
                )?,
                caption: "X-only: every other modality masked out of attention for every sample."
                    .into(),
            },
        ],
    })
}

/// "All metrics": every metric of ours, per question type, per task and per class.
fn metrics_section(m: &MetricsFile, config: &EvalConfig) -> Section {
    let ours = &m.test;
    let mut detail_tables = vec![
        metric_table(m),
        group_table("question type", &ours.by_question_metrics),
        group_table("task", &ours.by_task_metrics),
    ];
    if let Some(t) = class_table(m, config.confusion_top) {
        detail_tables.push(t);
    }
    let mae_line = ours.mae.map_or("No numeric answers were comparable.".into(), |x| {
        format!(
            "MAE {:.3} over {} numeric answer positions ({} numeric-reference answers not comparable).",
            x.mae, x.values, x.skipped_rows
        )
    });
    Section {
        id: "metrics",
        title: format!("All metrics of {}", m.headline),
        intro: format!(
            "{mae_line} Abstention ({:?}): rate {:.3}, selective risk {:.3}. \
             Per-class precision/recall/F1 follow scikit-learn (zero_division = 0); the table lists the {} most frequent classes.",
            config.abstain_answer,
            ours.abstention.rate,
            ours.abstention.selective_risk,
            config.confusion_top
        ),
        notes: Vec::new(),
        tables: detail_tables,
        figures: Vec::new(),
    }
}

/// "Errors and calibration": confusion matrix, reliability diagram and risk-coverage curve of ours.
fn errors_section(m: &MetricsFile, config: &EvalConfig) -> Result<Section> {
    let ours = &m.test;
    let mut figures = Vec::new();
    if let Some(d) = &ours.detail {
        figures.push(confusion_figure(d, config)?);
        if let Some(cal) = &d.calibration {
            figures.push(reliability_figure(cal, config)?);
        }
        if let Some(rc) = &d.risk_coverage {
            figures.push(risk_coverage_figure(m, rc)?);
        }
    }
    Ok(Section {
        id: "errors",
        title: "Errors and calibration".into(),
        intro: format!(
            "ECE {} ; AURC {}.",
            opt(ours.metrics.get("ece").copied().flatten()),
            opt(ours.metrics.get("aurc").copied().flatten())
        ),
        notes: Vec::new(),
        tables: Vec::new(),
        figures,
    })
}

/// Heatmap of the confusion matrix over the `confusion_top` most frequent reference classes.
fn confusion_figure(d: &Detail, config: &EvalConfig) -> Result<Figure> {
    let c = &d.classes;
    let mut idx: Vec<usize> = (0..c.labels.len()).collect();
    idx.sort_by(|&a, &b| {
        c.per_class[b]
            .support
            .cmp(&c.per_class[a].support)
            .then(c.labels[a].cmp(&c.labels[b]))
    });
    idx.truncate(config.confusion_top);
    idx.sort_unstable();
    let labels: Vec<String> = idx.iter().map(|&i| d.confusion.labels[i].clone()).collect();
    let matrix: Vec<Vec<u64>> = idx
        .iter()
        .map(|&i| idx.iter().map(|&j| d.confusion.matrix[i][j]).collect())
        .collect();
    Ok(Figure {
        id: "confusion".into(),
        title: "confusion matrix".into(),
        svg: plots::heatmap(
            "confusion",
            &format!("Confusion matrix ({} most frequent classes)", labels.len()),
            &labels,
            &matrix,
        )?,
        caption: "Rows: reference; columns: answer; shade: share of the row.".into(),
    })
}

/// Reliability diagram of the calibration bins.
fn reliability_figure(cal: &Calibration, config: &EvalConfig) -> Result<Figure> {
    Ok(Figure {
        id: "reliability".into(),
        title: "reliability diagram".into(),
        svg: plots::reliability(
            "reliability",
            &format!("Reliability (ECE {:.3})", cal.ece),
            cal,
        )?,
        caption: format!(
            "{} equal-width bins of confidence = exp(sequence log-prob); numbers are rows per bin.",
            config.ece_bins
        ),
    })
}

/// Risk vs coverage of ours, with the error rate at full coverage as a flat line.
fn risk_coverage_figure(m: &MetricsFile, rc: &RiskCoverage) -> Result<Figure> {
    let ours = &m.test;
    let mut series = vec![Series {
        name: format!("{} (AURC {:.3})", m.headline, rc.aurc),
        points: rc.points.iter().map(|p| (p.coverage, p.risk)).collect(),
        markers: false,
        line: true,
    }];
    series.push(Series {
        name: "error rate at full coverage".into(),
        points: vec![(0.0, 1.0 - ours.exact_match), (1.0, 1.0 - ours.exact_match)],
        markers: false,
        line: true,
    });
    Ok(Figure {
        id: "risk-coverage".into(),
        title: "risk-coverage".into(),
        svg: plots::line_chart(
            "risk_coverage",
            "Risk vs coverage (answer only above a confidence threshold)",
            "coverage",
            "risk (error rate)",
            &series,
            Some((0.0, 1.0)),
            (560, 460),
        )?,
        caption: "Lower is better; the gap to the flat line is what the confidence buys.".into(),
    })
}

/// "Training history": the collected curves and where each came from.
fn training_section(m: &MetricsFile, history: &History) -> Section {
    let notes: Vec<String> = m.sources.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    Section {
        id: "training",
        title: "Training history".into(),
        intro: "Curves of the trained checkpoints among the inputs; sources:".into(),
        notes,
        tables: Vec::new(),
        figures: history.figures.clone(),
    }
}

const CSS: &str = r#"
:root { --ink:#24292f; --muted:#57606a; --line:#d0d7de; --bg:#f6f8fa; --accent:#4e79a7; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink); margin: 0; background: #fff; }
header { background: linear-gradient(90deg, #1f3b57, #4e79a7); color: #fff; padding: 28px 48px; }
header h1 { margin: 0 0 6px 0; font-size: 28px; }
header p { margin: 0; opacity: .9; }
.cards { display: flex; gap: 16px; flex-wrap: wrap; margin-top: 18px; }
.card { background: rgba(255,255,255,.14); border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card b { display: block; font-size: 22px; }
.card span { font-size: 12px; opacity: .85; }
nav { padding: 10px 48px; border-bottom: 1px solid var(--line); background: var(--bg); position: sticky; top: 0; }
nav a { margin-right: 18px; color: var(--accent); text-decoration: none; font-size: 14px; }
main { padding: 8px 48px 48px 48px; max-width: 1400px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 6px; margin-top: 36px; }
p.intro { color: var(--muted); max-width: 1100px; line-height: 1.5; }
table { border-collapse: collapse; margin: 14px 0 22px 0; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left; white-space: nowrap; }
th { background: var(--bg); font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; color: #116329; }
tr.ours td { background: #eaf1f8; font-weight: 600; }
.scroll { overflow-x: auto; }
.figs { display: flex; flex-wrap: wrap; gap: 20px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff; }
figcaption { color: var(--muted); font-size: 12px; padding: 4px 6px; max-width: 600px; }
ul.notes { color: var(--muted); font-size: 14px; margin-top: -6px; }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.yes { background: #dafbe1; color: #116329; } .no { background: #fff8c5; color: #7d4e00; }
"#;

fn md_inline(s: &str) -> String {
    // The intros use **bold** for markdown; HTML gets <b>.
    let mut out = String::new();
    let mut bold = false;
    for (i, part) in esc(s).split("**").enumerate() {
        if i > 0 {
            out.push_str(if bold { "</b>" } else { "<b>" });
            bold = !bold;
        }
        out.push_str(part);
    }
    if bold {
        out.push_str("</b>");
    }
    out
}

/// Renders `report.md` and `report.html`.
pub fn render(m: &MetricsFile, history: &History, config: &EvalConfig) -> Result<(String, String)> {
    let secs = sections(m, history, config)?;
    let md = markdown(m, &secs);
    let html = html(m, &secs);
    Ok((md, html))
}

/// `report.md`: the headline line, then each section's intro, notes, tables and a line per plot.
fn markdown(m: &MetricsFile, secs: &[Section]) -> String {
    let mut md = format!(
        "# Evaluation report\n\nHeadline model: **{}**; split: test ({} samples); seed {}.\n\n{}.\n\n",
        m.headline,
        m.test.samples,
        m.seed,
        capitalized(&m.test_rows.headline())
    );
    for s in secs {
        let _ = writeln!(md, "## {}\n\n{}\n", s.title, s.intro);
        for n in &s.notes {
            let _ = writeln!(md, "- {n}");
        }
        if !s.notes.is_empty() {
            md.push('\n');
        }
        for t in &s.tables {
            let _ = writeln!(md, "{}", t.markdown());
        }
        for f in &s.figures {
            let _ = writeln!(
                md,
                "- plot *{}*: {} (see report.html#{})",
                f.title, f.caption, f.id
            );
        }
        if !s.figures.is_empty() {
            md.push('\n');
        }
    }
    md
}

/// `report.html`: the header with the headline cards, the navigation, then every section.
fn html(m: &MetricsFile, secs: &[Section]) -> String {
    let mut html = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mmrl evaluation report</title><style>",
    );
    html.push_str(CSS);
    html.push_str("</style></head><body><header><h1>Evaluation report</h1>");
    html_cards(m, &mut html);
    html.push_str("</div></header><nav>");
    for s in secs {
        let _ = write!(html, "<a href=\"#{}\">{}</a>", s.id, esc(&s.title));
    }
    html.push_str("</nav><main>");
    for s in secs {
        html_section(m, s, &mut html);
    }
    html.push_str("</main></body></html>\n");
    html
}

/// The header's headline line and cards: exact match, cross-modal exact match, macro F1, ECE, best
/// baseline.
fn html_cards(m: &MetricsFile, html: &mut String) {
    let ours = &m.test;
    let card = |v: String, label: &str| {
        format!(
            "<div class=\"card\"><b>{}</b><span>{}</span></div>",
            esc(&v),
            esc(label)
        )
    };
    let _ = write!(
        html,
        "<p>Headline model <b>{}</b> on the held-out test split ({} samples), seed {}.</p><p>{}.</p><div class=\"cards\">",
        esc(&m.headline),
        ours.samples,
        m.seed,
        esc(&capitalized(&m.test_rows.headline()))
    );
    html.push_str(&card(
        format!(
            "{}{}",
            f3(ours.exact_match),
            ci(ours.exact_match_ci.as_ref())
        ),
        "exact match [95% CI]",
    ));
    html.push_str(&card(
        opt(ours.cross_modal_exact_match),
        "cross-modal exact match",
    ));
    html.push_str(&card(
        opt(ours.metrics.get("macro_f1").copied().flatten()),
        "macro F1",
    ));
    html.push_str(&card(
        opt(ours.metrics.get("ece").copied().flatten()),
        "ECE",
    ));
    if let Some(best) = m
        .baselines
        .iter()
        .filter(|(_, r)| r.kind == Kind::Baseline)
        .max_by(|a, b| a.1.exact_match.total_cmp(&b.1.exact_match))
    {
        html.push_str(&card(
            format!("{} ({})", f3(best.1.exact_match), best.0),
            "best baseline",
        ));
    }
}

/// One `<section>`: title, intro, notes, the cross-modal verdict box, tables and figures.
fn html_section(m: &MetricsFile, s: &Section, html: &mut String) {
    let _ = write!(
        html,
        "<section id=\"{}\"><h2>{}</h2><p class=\"intro\">{}</p>",
        s.id,
        esc(&s.title),
        md_inline(&s.intro)
    );
    if !s.notes.is_empty() {
        html.push_str("<ul class=\"notes\">");
        for n in &s.notes {
            let _ = write!(html, "<li>{}</li>", esc(n));
        }
        html.push_str("</ul>");
    }
    if s.id == "cross-modal" && !m.cross_modal.qtypes.is_empty() {
        let (class, text) = if m.cross_modal.ours_beats_all {
            (
                "yes",
                "Ours beats every baseline and ablation on every cross-modal question type."
                    .to_owned(),
            )
        } else {
            (
                "no",
                format!("Not beaten: {}", m.cross_modal.not_beaten.join("; ")),
            )
        };
        let _ = write!(html, "<div class=\"verdict {class}\">{}</div>", esc(&text));
    }
    for t in &s.tables {
        let _ = write!(html, "<div class=\"scroll\">{}</div>", t.html());
    }
    if !s.figures.is_empty() {
        html.push_str("<div class=\"figs\">");
        for f in &s.figures {
            let _ = write!(
                html,
                "<figure id=\"{}\">{}<figcaption>{}</figcaption></figure>",
                f.id,
                f.svg,
                esc(&f.caption)
            );
        }
        html.push_str("</div>");
    }
    html.push_str("</section>");
}
