//! Metrics over scored answers: the [`Metric`] trait, exact match, per-class precision/recall/F1 with
//! macro/micro/weighted averages, the confusion matrix, token-level F1, MAE on numeric answers, calibration
//! (ECE and the reliability diagram), abstention and risk-coverage.
//!
//! Conventions follow scikit-learn so the tests can pin every figure to its output: labels are the sorted
//! union of references and predictions; a precision or recall whose denominator is zero is 0.0 (sklearn's
//! `zero_division="warn"` default); F1 is `2tp / (2tp + fp + fn)`; calibration bins follow
//! `sklearn.calibration.calibration_curve(strategy="uniform")` (bin `i` holds `(i/B, (i+1)/B]`, bin 0 also 0).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mmrl_model::vocab::numbers;
pub use mmrl_model::vocab::token_f1;
use serde::Serialize;

/// One answer to score: normalized predicted and reference text, and the model's confidence in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Predicted answer, normalized (lowercase words joined by single spaces).
    pub answer: String,
    /// Reference answer, normalized.
    pub reference: String,
    /// Probability the model gave its answer (`exp(sequence logprob)`), when it has one.
    pub confidence: Option<f64>,
}

impl Scored {
    /// Builds a row, normalizing both texts the way exact match compares them.
    pub fn new(answer: &str, reference: &str, confidence: Option<f64>) -> Self {
        Self {
            answer: mmrl_model::vocab::normalize_answer(answer),
            reference: mmrl_model::vocab::normalize_answer(reference),
            confidence,
        }
    }

    /// Whether the answer equals the reference.
    pub fn correct(&self) -> bool {
        self.answer == self.reference
    }
}

/// A figure computed over a set of scored answers. Implement it to add a metric: [`crate::report`] and the
/// bootstrap take any `&dyn Metric`.
pub trait Metric: Send + Sync {
    /// Key in `metrics.json` and the report.
    fn name(&self) -> &str;
    /// The value, or `None` where it is undefined for these rows (e.g. no numeric answers for MAE).
    fn compute(&self, rows: &[Scored]) -> Option<f64>;
    /// Whether larger values are better (false for errors and rates of failure).
    fn higher_is_better(&self) -> bool {
        true
    }
}

/// Fraction of answers equal to their reference (sklearn `accuracy_score`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactMatch;

impl Metric for ExactMatch {
    fn name(&self) -> &str {
        "exact_match"
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        (!rows.is_empty()).then(|| exact_match(rows))
    }
}

/// Mean SQuAD-style token F1 (see [`token_f1`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenF1;

impl Metric for TokenF1 {
    fn name(&self) -> &str {
        "token_f1"
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        (!rows.is_empty()).then(|| mean_token_f1(rows))
    }
}

/// Which average of per-class F1 an [`AverageF1`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// Unweighted mean over classes.
    Macro,
    /// From global counts (equals exact match for single-label answers).
    Micro,
    /// Mean over classes weighted by reference support.
    Weighted,
}

/// F1 over answer classes, averaged as chosen.
#[derive(Debug, Clone, Copy)]
pub struct AverageF1(pub Average);

impl Metric for AverageF1 {
    fn name(&self) -> &str {
        match self.0 {
            Average::Macro => "macro_f1",
            Average::Micro => "micro_f1",
            Average::Weighted => "weighted_f1",
        }
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        if rows.is_empty() {
            return None;
        }
        let r = ClassReport::new(rows);
        Some(match self.0 {
            Average::Macro => r.macro_avg.f1,
            Average::Micro => r.micro_avg.f1,
            Average::Weighted => r.weighted_avg.f1,
        })
    }
}

/// Mean absolute error over numeric answers (see [`numeric_pairs`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanAbsoluteError;

impl Metric for MeanAbsoluteError {
    fn name(&self) -> &str {
        "mae"
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        mae(rows).map(|m| m.mae)
    }
    fn higher_is_better(&self) -> bool {
        false
    }
}

/// Expected calibration error with `bins` equal-width bins (rows without a confidence are skipped).
#[derive(Debug, Clone, Copy)]
pub struct ExpectedCalibrationError {
    /// Number of bins.
    pub bins: usize,
}

impl Metric for ExpectedCalibrationError {
    fn name(&self) -> &str {
        "ece"
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        calibration(rows, self.bins).map(|c| c.ece)
    }
    fn higher_is_better(&self) -> bool {
        false
    }
}

/// Fraction of answers equal to the abstention answer.
#[derive(Debug, Clone)]
pub struct AbstentionRate {
    /// The normalized abstention answer (e.g. `unsure`).
    pub token: String,
}

impl Metric for AbstentionRate {
    fn name(&self) -> &str {
        "abstention_rate"
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        (!rows.is_empty()).then(|| abstention(rows, &self.token).rate)
    }
    fn higher_is_better(&self) -> bool {
        false
    }
}

/// Area under the risk-coverage curve by confidence threshold (see [`risk_coverage`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Aurc;

impl Metric for Aurc {
    fn name(&self) -> &str {
        "aurc"
    }
    fn compute(&self, rows: &[Scored]) -> Option<f64> {
        risk_coverage(rows).map(|r| r.aurc)
    }
    fn higher_is_better(&self) -> bool {
        false
    }
}

/// The built-in metrics, in report order.
pub fn standard_metrics(ece_bins: usize, abstain: &str) -> Vec<Box<dyn Metric>> {
    vec![
        Box::new(ExactMatch),
        Box::new(TokenF1),
        Box::new(AverageF1(Average::Macro)),
        Box::new(AverageF1(Average::Micro)),
        Box::new(AverageF1(Average::Weighted)),
        Box::new(MeanAbsoluteError),
        Box::new(ExpectedCalibrationError { bins: ece_bins }),
        Box::new(AbstentionRate {
            token: mmrl_model::vocab::normalize_answer(abstain),
        }),
        Box::new(Aurc),
    ]
}

/// Every metric on `rows`, by name (`None` where undefined).
pub fn evaluate(rows: &[Scored], metrics: &[Box<dyn Metric>]) -> BTreeMap<String, Option<f64>> {
    metrics
        .iter()
        .map(|m| (m.name().to_owned(), m.compute(rows)))
        .collect()
}

/// Fraction of rows whose answer equals the reference (0 for no rows).
pub fn exact_match(rows: &[Scored]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().filter(|r| r.correct()).count() as f64 / rows.len() as f64
}

/// Precision, recall, F1 and support of one class or one average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prf {
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F1.
    pub f1: f64,
    /// Reference rows of the class (all rows for an average).
    pub support: u64,
}

/// Per-class figures and their averages, like sklearn's `classification_report`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    /// Labels: the sorted union of references and answers.
    pub labels: Vec<String>,
    /// Figures per label, in `labels` order.
    pub per_class: Vec<Prf>,
    /// Unweighted mean over labels.
    pub macro_avg: Prf,
    /// From global true/false positive counts.
    pub micro_avg: Prf,
    /// Mean weighted by support.
    pub weighted_avg: Prf,
}

fn ratio(num: u64, den: u64) -> f64 {
    // sklearn zero_division="warn": 0.0 where the denominator is zero.
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn f1_of(tp: u64, fp: u64, fneg: u64) -> f64 {
    ratio(2 * tp, 2 * tp + fp + fneg)
}

impl ClassReport {
    /// Computes the report; an empty input gives no labels and zero averages.
    pub fn new(rows: &[Scored]) -> Self {
        let labels = labels_of(rows);
        let index: HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let k = labels.len();
        let (mut tp, mut fp, mut fneg) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
        for r in rows {
            let (t, p) = (index[r.reference.as_str()], index[r.answer.as_str()]);
            if t == p {
                tp[t] += 1;
            } else {
                fp[p] += 1;
                fneg[t] += 1;
            }
        }
        let per_class: Vec<Prf> = (0..k)
            .map(|i| Prf {
                precision: ratio(tp[i], tp[i] + fp[i]),
                recall: ratio(tp[i], tp[i] + fneg[i]),
                f1: f1_of(tp[i], fp[i], fneg[i]),
                support: tp[i] + fneg[i],
            })
            .collect();
        let n = rows.len() as u64;
        let mean = |f: fn(&Prf) -> f64| {
            if k == 0 {
                0.0
            } else {
                per_class.iter().map(f).sum::<f64>() / k as f64
            }
        };
        let weighted = |f: fn(&Prf) -> f64| {
            if n == 0 {
                0.0
            } else {
                per_class
                    .iter()
                    .map(|c| f(c) * c.support as f64)
                    .sum::<f64>()
                    / n as f64
            }
        };
        let (stp, sfp, sfn) = (
            tp.iter().sum::<u64>(),
            fp.iter().sum::<u64>(),
            fneg.iter().sum::<u64>(),
        );
        Self {
            macro_avg: Prf {
                precision: mean(|c| c.precision),
                recall: mean(|c| c.recall),
                f1: mean(|c| c.f1),
                support: n,
            },
            micro_avg: Prf {
                precision: ratio(stp, stp + sfp),
                recall: ratio(stp, stp + sfn),
                f1: f1_of(stp, sfp, sfn),
                support: n,
            },
            weighted_avg: Prf {
                precision: weighted(|c| c.precision),
                recall: weighted(|c| c.recall),
                f1: weighted(|c| c.f1),
                support: n,
            },
            labels,
            per_class,
        }
    }
}

/// The sorted union of references and answers.
pub fn labels_of(rows: &[Scored]) -> Vec<String> {
    rows.iter()
        .flat_map(|r| [r.reference.clone(), r.answer.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Confusion matrix over `labels`: `m[i][j]` counts rows with reference `labels[i]` answered `labels[j]`
/// (sklearn `confusion_matrix(y_true, y_pred, labels=labels)`); rows with a label outside `labels` are
/// not counted.
pub fn confusion_matrix(rows: &[Scored], labels: &[String]) -> Vec<Vec<u64>> {
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut m = vec![vec![0u64; labels.len()]; labels.len()];
    for r in rows {
        if let (Some(&t), Some(&p)) = (
            index.get(r.reference.as_str()),
            index.get(r.answer.as_str()),
        ) {
            m[t][p] += 1;
        }
    }
    m
}

/// Mean [`token_f1`] over rows (0 for no rows).
pub fn mean_token_f1(rows: &[Scored]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter()
        .map(|r| token_f1(&r.answer, &r.reference))
        .sum::<f64>()
        / rows.len() as f64
}

/// The numeric token pairs of rows whose reference is numeric: every whitespace token of both texts parses
/// as a finite number and both have the same token count. A multi-token answer ("7 3") contributes one
/// pair per position, so MAE is sklearn's `mean_absolute_error` on the flattened positions. Returns the
/// `(reference, answer)` values and how many numeric-reference rows were skipped (answer not numeric, or a
/// different token count).
pub fn numeric_pairs(rows: &[Scored]) -> (Vec<(f64, f64)>, usize) {
    let mut pairs = Vec::new();
    let mut skipped = 0;
    for r in rows {
        let Some(t) = numbers(&r.reference) else {
            continue;
        };
        match numbers(&r.answer) {
            Some(p) if p.len() == t.len() => pairs.extend(t.into_iter().zip(p)),
            _ => skipped += 1,
        }
    }
    (pairs, skipped)
}

/// MAE on numeric answers and its coverage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mae {
    /// Mean absolute error over numeric positions.
    pub mae: f64,
    /// Numeric positions scored.
    pub values: usize,
    /// Rows with a numeric reference whose answer was not comparable (not numeric, other length).
    pub skipped_rows: usize,
}

/// MAE over [`numeric_pairs`]; `None` when no pair is comparable.
pub fn mae(rows: &[Scored]) -> Option<Mae> {
    let (pairs, skipped) = numeric_pairs(rows);
    (!pairs.is_empty()).then(|| Mae {
        mae: pairs.iter().map(|(t, p)| (t - p).abs()).sum::<f64>() / pairs.len() as f64,
        values: pairs.len(),
        skipped_rows: skipped,
    })
}

/// One bin of the reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Rows in the bin.
    pub count: u64,
    /// Fraction correct (sklearn's `prob_true`); 0 for an empty bin.
    pub accuracy: f64,
    /// Mean confidence (sklearn's `prob_pred`); 0 for an empty bin.
    pub confidence: f64,
}

/// Expected calibration error and the reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// `sum_b |B|/n * |accuracy(B) - confidence(B)|`.
    pub ece: f64,
    /// Every bin, empty ones included.
    pub bins: Vec<Bin>,
    /// Rows with a confidence.
    pub rows: u64,
}

/// Calibration over the rows that have a finite confidence (clamped to [0, 1]; NaN and infinities are ignored), with `bins` equal-width bins;
/// `None` when no row has one or `bins` is 0.
pub fn calibration(rows: &[Scored], bins: usize) -> Option<Calibration> {
    let scored: Vec<(f64, bool)> = rows
        .iter()
        .filter_map(|r| {
            r.confidence
                .filter(|c| c.is_finite())
                .map(|c| (c.clamp(0.0, 1.0), r.correct()))
        })
        .collect();
    if scored.is_empty() || bins == 0 {
        return None;
    }
    let step = 1.0 / bins as f64;
    // numpy.linspace(0, 1, bins + 1): edge i is i * step, the last exactly 1.
    let edge = |i: usize| if i == bins { 1.0 } else { i as f64 * step };
    let mut count = vec![0u64; bins];
    let mut hits = vec![0u64; bins];
    let mut conf = vec![0.0f64; bins];
    for &(c, ok) in &scored {
        // np.searchsorted(edges[1:-1], c, side="left"): interior edges strictly below c.
        let b = (1..bins).filter(|&i| edge(i) < c).count();
        count[b] += 1;
        hits[b] += u64::from(ok);
        conf[b] += c;
    }
    let n = scored.len() as f64;
    let mut ece = 0.0;
    let bins_out = (0..bins)
        .map(|b| {
            let (acc, mc) = if count[b] == 0 {
                (0.0, 0.0)
            } else {
                (hits[b] as f64 / count[b] as f64, conf[b] / count[b] as f64)
            };
            ece += count[b] as f64 / n * (acc - mc).abs();
            Bin {
                lo: edge(b),
                hi: edge(b + 1),
                count: count[b],
                accuracy: acc,
                confidence: mc,
            }
        })
        .collect();
    Some(Calibration {
        ece,
        bins: bins_out,
        rows: scored.len() as u64,
    })
}

/// Abstention figures: answers equal to the abstention token are not answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Abstention {
    /// Fraction of rows that abstained.
    pub rate: f64,
    /// `1 - rate`.
    pub coverage: f64,
    /// Error rate among the rows that answered (0 when none did).
    pub selective_risk: f64,
    /// Error rate counting abstentions as errors.
    pub full_risk: f64,
}

/// Abstention rate and the risk of the answered rows.
pub fn abstention(rows: &[Scored], token: &str) -> Abstention {
    let n = rows.len();
    let answered: Vec<&Scored> = rows.iter().filter(|r| r.answer != token).collect();
    let wrong = answered.iter().filter(|r| !r.correct()).count();
    let rate = if n == 0 {
        0.0
    } else {
        1.0 - answered.len() as f64 / n as f64
    };
    Abstention {
        rate,
        coverage: 1.0 - rate,
        selective_risk: ratio(wrong as u64, answered.len() as u64),
        full_risk: ratio((n - answered.len() + wrong) as u64, n as u64),
    }
}

/// One point of the risk-coverage curve: answer only when confidence >= threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RcPoint {
    /// The confidence threshold.
    pub threshold: f64,
    /// Fraction of rows answered.
    pub coverage: f64,
    /// Error rate among them.
    pub risk: f64,
}

/// Risk-coverage by confidence threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RiskCoverage {
    /// One point per distinct confidence, thresholds descending (coverage ascending).
    pub points: Vec<RcPoint>,
    /// Area under the curve: `sum risk(t) * (coverage(t) - coverage(previous t))`, the previous coverage
    /// starting at 0.
    pub aurc: f64,
}

/// Risk-coverage over the rows with a finite confidence (NaN and infinities are ignored); `None` when none
/// has one.
pub fn risk_coverage(rows: &[Scored]) -> Option<RiskCoverage> {
    let mut scored: Vec<(f64, bool)> = rows
        .iter()
        .filter_map(|r| {
            r.confidence
                .filter(|c| c.is_finite())
                .map(|c| (c, r.correct()))
        })
        .collect();
    if scored.is_empty() {
        return None;
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = scored.len() as f64;
    let mut points = Vec::new();
    let (mut covered, mut wrong) = (0usize, 0usize);
    let mut aurc = 0.0;
    let mut prev_cov = 0.0;
    let mut i = 0;
    while i < scored.len() {
        let t = scored[i].0;
        while i < scored.len() && scored[i].0 == t {
            covered += 1;
            wrong += usize::from(!scored[i].1);
            i += 1;
        }
        let coverage = covered as f64 / n;
        let risk = wrong as f64 / covered as f64;
        aurc += risk * (coverage - prev_cov);
        prev_cov = coverage;
        points.push(RcPoint {
            threshold: t,
            coverage,
            risk,
        });
    }
    Some(RiskCoverage { points, aurc })
}
