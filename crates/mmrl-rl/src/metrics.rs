//! What the rl stage measures: greedy val metrics (overall, by question type and by the groups a label budget
//! and the checker columns define), the per-step metric columns, and their Parquet tables.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use mmrl_artifact::sample::{ACCEPT, Split};
use mmrl_model::MultimodalModel;
use mmrl_model::data::{Dataset, SampleRow};
use mmrl_model::sft::decode_split;
use mmrl_model::vocab::{Vocab, normalize_answer};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::reward::UNSURE;

/// Serde for f64 that writes NaN (an undefined metric, e.g. no multi-token sample) as `null` and reads it
/// back as NaN: JSON has no NaN, and checkpoints must round-trip.
pub(crate) mod nan_safe {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub mod rows {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(v: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
            let o: Vec<Vec<Option<f64>>> = v
                .iter()
                .map(|r| r.iter().map(|x| (!x.is_nan()).then_some(*x)).collect())
                .collect();
            o.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
            let o = Vec::<Vec<Option<f64>>>::deserialize(d)?;
            Ok(o.into_iter()
                .map(|r| r.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
                .collect())
        }
    }
}

/// The question-type groups a comparison reports on, as the data defines them: `label_scarce` (types with
/// train rows select marked unlabeled), `set_valued` (types whose `accept` lists several answers on some row),
/// `other` (the rest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QtypeGroups {
    /// Question types with unlabeled train rows.
    pub label_scarce: BTreeSet<String>,
    /// Question types with several valid answers on some row.
    pub set_valued: BTreeSet<String>,
}

/// Names of the groups of [`QtypeGroups`], in report order.
pub const GROUPS: [&str; 3] = ["label_scarce", "set_valued", "other"];

impl QtypeGroups {
    /// The groups of `data`'s question types.
    pub fn of(data: &Dataset) -> Self {
        let mut g = Self::default();
        for s in &data.samples {
            if s.split == Split::Train && !s.labeled {
                g.label_scarce.insert(s.qtype.clone());
            }
            if s.checks
                .get(ACCEPT)
                .is_some_and(|a| a.split('|').filter(|x| !x.trim().is_empty()).count() > 1)
            {
                g.set_valued.insert(s.qtype.clone());
            }
        }
        g
    }

    /// The groups a question type belongs to (a label-scarce type can be set-valued too; `other` alone).
    pub fn of_qtype(&self, qtype: &str) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.label_scarce.contains(qtype) {
            v.push(GROUPS[0]);
        }
        if self.set_valued.contains(qtype) {
            v.push(GROUPS[1]);
        }
        if v.is_empty() {
            v.push(GROUPS[2]);
        }
        v
    }
}

/// Exact match and acceptance of the samples of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// Samples.
    pub samples: usize,
    /// Exact match with the reference answer.
    #[serde(with = "nan_safe")]
    pub exact_match: f64,
    /// Fraction of answers a checker accepts ([`accepted`]).
    #[serde(with = "nan_safe")]
    pub accepted: f64,
}

/// Whether an answer is one a checker accepts: one of the row's `accept` answers, or its reference when it has
/// none.
pub fn accepted(sample: &SampleRow, answer: &str) -> bool {
    let answer = normalize_answer(answer);
    match sample.checks.get(ACCEPT) {
        Some(cell) => cell.split('|').any(|v| normalize_answer(v) == answer),
        None => normalize_answer(&sample.answer) == answer,
    }
}

/// Greedy-decoding metrics of a model on val (NaN where no sample qualifies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Val samples.
    pub samples: usize,
    /// Exact match over all val samples.
    #[serde(with = "nan_safe")]
    pub exact_match: f64,
    /// Exact match on samples whose reference has two or more tokens.
    #[serde(with = "nan_safe")]
    pub exact_match_multi_token: f64,
    /// Mean numeric closeness (scale 1) over samples with a numeric reference.
    #[serde(with = "nan_safe")]
    pub numeric_closeness: f64,
    /// Mean numeric closeness on the counting question types (`count_*`).
    #[serde(with = "nan_safe")]
    pub numeric_closeness_counting: f64,
    /// Fraction of answers that are wrong and not `unsure`.
    #[serde(with = "nan_safe")]
    pub confident_wrong: f64,
    /// Fraction answered `unsure`.
    #[serde(with = "nan_safe")]
    pub unsure: f64,
    /// Fraction of answers a checker accepts (the `accept` column, else the reference).
    #[serde(with = "nan_safe", default = "nan")]
    pub accepted: f64,
    /// Exact match per question type.
    pub by_qtype: BTreeMap<String, f64>,
    /// By group of [`QtypeGroups`] (only the groups with samples).
    #[serde(default)]
    pub groups: BTreeMap<String, GroupMetrics>,
}

fn nan() -> f64 {
    f64::NAN
}

/// Running sums of [`eval_metrics`].
#[derive(Default)]
struct Tally {
    hits: usize,
    wrong: usize,
    unsure: usize,
    accepted: usize,
    multi: (usize, usize),
    numeric: (usize, f64),
    counting: (usize, f64),
    per_qtype: BTreeMap<String, (usize, usize)>,
    per_group: BTreeMap<&'static str, (usize, usize, usize)>,
}

fn frac(a: f64, n: usize) -> f64 {
    if n == 0 { f64::NAN } else { a / n as f64 }
}

/// Scores greedy `predicted` answers against the references of `indices`.
pub fn eval_metrics(data: &Dataset, indices: &[usize], predicted: &[String]) -> EvalMetrics {
    let groups = QtypeGroups::of(data);
    let mut t = Tally::default();
    for (&i, p) in indices.iter().zip(predicted) {
        let s = &data.samples[i];
        let (p, r) = (normalize_answer(p), normalize_answer(&s.answer));
        let hit = p == r;
        let ok = accepted(s, &p);
        t.hits += usize::from(hit);
        t.accepted += usize::from(ok);
        let e = t.per_qtype.entry(s.qtype.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(hit);
        for g in groups.of_qtype(&s.qtype) {
            let e = t.per_group.entry(g).or_default();
            e.0 += 1;
            e.1 += usize::from(hit);
            e.2 += usize::from(ok);
        }
        if p == UNSURE {
            t.unsure += 1;
        } else if !hit {
            t.wrong += 1;
        }
        if r.split_whitespace().count() >= 2 {
            t.multi.0 += 1;
            t.multi.1 += usize::from(hit);
        }
        if let Some(c) = crate::reward::numeric_closeness(&p, &r, 1.0) {
            t.numeric.0 += 1;
            t.numeric.1 += c;
            if s.qtype.starts_with("count") {
                t.counting.0 += 1;
                t.counting.1 += c;
            }
        }
    }
    let n = indices.len();
    EvalMetrics {
        samples: n,
        exact_match: frac(t.hits as f64, n),
        exact_match_multi_token: frac(t.multi.1 as f64, t.multi.0),
        numeric_closeness: frac(t.numeric.1, t.numeric.0),
        numeric_closeness_counting: frac(t.counting.1, t.counting.0),
        confident_wrong: frac(t.wrong as f64, n),
        unsure: frac(t.unsure as f64, n),
        accepted: frac(t.accepted as f64, n),
        by_qtype: t
            .per_qtype
            .into_iter()
            .map(|(q, (n, h))| (q, h as f64 / n.max(1) as f64))
            .collect(),
        groups: t
            .per_group
            .into_iter()
            .map(|(g, (n, h, a))| {
                (
                    g.to_owned(),
                    GroupMetrics {
                        samples: n,
                        exact_match: frac(h as f64, n),
                        accepted: frac(a as f64, n),
                    },
                )
            })
            .collect(),
    }
}

/// Greedy answers of `model` to the samples `indices`, decoded to text.
pub fn greedy_answers(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
) -> Vec<String> {
    decode_split(model, data, vocab, indices, batch_size)
        .iter()
        .map(|g| vocab.decode_answer(&g.tokens))
        .collect()
}

/// Greedy val metrics of `model`.
pub fn evaluate(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
) -> EvalMetrics {
    let predicted = greedy_answers(model, data, vocab, indices, batch_size);
    eval_metrics(data, indices, &predicted)
}

/// The step-metrics columns for `reward_names`.
pub fn step_columns(reward_names: &[String]) -> Vec<String> {
    let mut c: Vec<String> = [
        "step",
        "reward",
        "reward_std",
        "kl",
        "entropy",
        "entropy_coef",
        "clip_fraction",
        "epsilon",
        "temperature",
        "lr",
        "grad_norm",
        "value_loss",
        "zero_variance_fraction",
        "replayed",
        "answer_tokens",
        "unsure_fraction",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for n in reward_names {
        c.push(format!("reward_{n}_mean"));
        c.push(format!("reward_{n}_std"));
    }
    c
}

/// The columns of `metrics_val`.
pub const VAL_COLUMNS: [&str; 8] = [
    "step",
    "exact_match",
    "exact_match_multi_token",
    "numeric_closeness",
    "numeric_closeness_counting",
    "confident_wrong",
    "unsure",
    "accepted",
];

/// One `metrics_val` row, in [`VAL_COLUMNS`] order.
pub fn val_row(step: u64, m: &EvalMetrics) -> Vec<f64> {
    vec![
        step as f64,
        m.exact_match,
        m.exact_match_multi_token,
        m.numeric_closeness,
        m.numeric_closeness_counting,
        m.confident_wrong,
        m.unsure,
        m.accepted,
    ]
}

/// A Float64 table (NaN written as null).
pub fn table(columns: &[String], rows: &[Vec<f64>]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c, DataType::Float64, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|j| {
            Arc::new(Float64Array::from_iter(
                rows.iter()
                    .map(|r| r.get(j).copied().filter(|v| !v.is_nan())),
            )) as ArrayRef
        })
        .collect();
    Ok(RecordBatch::try_new(schema, arrays)?)
}
