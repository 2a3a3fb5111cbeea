//! Baselines fit on the train split only: the majority answer (overall and per question type) and classical
//! models (linfa's multinomial logistic regression, a CART decision tree) on simple features: average-pooled
//! image pixels, per-mel-band audio mean and standard deviation, the cleaned tabular features, modality
//! presence flags, a one-hot question type and a bag of the question's words (the train questions'
//! vocabulary), so they read the question even where the data has no `qtype` column.
//!
//! The decision tree is [`Cart`], not linfa-trees: linfa-trees 0.8.1 sums Gini impurities and picks leaf
//! classes by iterating `std::collections::HashMap`s, whose order is random per process, so two fits on the
//! same rows can differ; eval promises byte-identical artifacts for the same seed and inputs.

use std::collections::{BTreeMap, BTreeSet};

use linfa::prelude::*;
use linfa_logistic::{MultiFittedLogisticRegression, MultiLogisticRegression};
use mmrl_artifact::sample::Split;
use mmrl_model::data::{Dataset, TensorStore};
use mmrl_model::vocab::{normalize_answer, words};
use ndarray::{Array1, Array2};

use crate::error::{Error, Result};

/// Settings of the classical baselines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassicalSettings {
    /// Image pooling grid: `pool x pool` cells per channel.
    pub pool: usize,
    /// L2 penalty of the logistic regression.
    pub logistic_alpha: f64,
    /// L-BFGS iterations of the logistic regression.
    pub logistic_max_iterations: u64,
    /// Depth limit of the decision tree.
    pub tree_max_depth: usize,
    /// Most frequent train-question words in the bag of words (words seen once are left out).
    pub question_words: usize,
}

/// An answer of a baseline with its confidence, when the baseline has one.
pub type Answer = (String, Option<f64>);

/// The feature map, fit on train rows: column names, standardization, the qtype one-hot and the question
/// words.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpace {
    /// Feature names, in column order.
    pub names: Vec<String>,
    /// Train means per column.
    pub mean: Vec<f64>,
    /// Train standard deviations per column (1 where constant).
    pub std: Vec<f64>,
    /// Question types seen in train, one-hot in this order.
    pub qtypes: Vec<String>,
    /// Words of the train questions (the most frequent, each seen at least twice), one presence flag each,
    /// in this order.
    pub words: Vec<String>,
    pool: usize,
}

fn pooled(store: &TensorStore, row: usize, pool: usize, out: &mut Vec<f64>) {
    let [c, h, w] = match store.shape.as_slice() {
        &[c, h, w] => [c, h, w],
        _ => return,
    };
    let per = c * h * w;
    let v = &store.values[row * per..(row + 1) * per];
    for ch in 0..c {
        for gy in 0..pool {
            for gx in 0..pool {
                let (y0, y1) = (gy * h / pool, ((gy + 1) * h / pool).max(gy * h / pool + 1));
                let (x0, x1) = (gx * w / pool, ((gx + 1) * w / pool).max(gx * w / pool + 1));
                let mut s = 0.0;
                let mut n = 0usize;
                for y in y0..y1.min(h) {
                    for x in x0..x1.min(w) {
                        s += f64::from(v[ch * h * w + y * w + x]);
                        n += 1;
                    }
                }
                out.push(if n == 0 { 0.0 } else { s / n as f64 });
            }
        }
    }
}

fn band_stats(store: &TensorStore, row: usize, out: &mut Vec<f64>) {
    let [m, t] = match store.shape.as_slice() {
        &[m, t] => [m, t],
        _ => return,
    };
    let v = &store.values[row * m * t..(row + 1) * m * t];
    for b in 0..m {
        let band = &v[b * t..(b + 1) * t];
        let mean = band.iter().map(|&x| f64::from(x)).sum::<f64>() / t.max(1) as f64;
        let var = band
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / t.max(1) as f64;
        out.push(mean);
        out.push(var.sqrt());
    }
}

impl FeatureSpace {
    /// Raw (unstandardized) features of one sample; its view-0 modality rows.
    fn raw(&self, data: &Dataset, i: usize) -> Vec<f64> {
        let s = &data.samples[i];
        let mut out = Vec::with_capacity(self.names.len());
        if let Some(store) = &data.image {
            let present = s.image.first().is_some_and(|&r| store.present[r]);
            out.push(f64::from(u8::from(present)));
            let start = out.len();
            match s.image.first() {
                Some(&r) if present => pooled(store, r, self.pool, &mut out),
                _ => {}
            }
            let width = store.shape.first().copied().unwrap_or(0) * self.pool * self.pool;
            out.resize(start + width, 0.0);
        }
        if let Some(store) = &data.audio {
            let present = s.audio.first().is_some_and(|&r| store.present[r]);
            out.push(f64::from(u8::from(present)));
            let start = out.len();
            match s.audio.first() {
                Some(&r) if present => band_stats(store, r, &mut out),
                _ => {}
            }
            out.resize(start + 2 * store.shape.first().copied().unwrap_or(0), 0.0);
        }
        if let Some(t) = &data.tabular {
            let (nf, nc) = (t.numeric_names.len(), t.categorical_names.len());
            let row = s.tabular.filter(|&r| t.present[r]);
            out.push(f64::from(u8::from(row.is_some())));
            for j in 0..nf {
                out.push(row.map_or(0.0, |r| f64::from(t.numeric[r * nf + j])));
            }
            for (j, &card) in t.cardinalities.iter().enumerate() {
                let code = row.map_or(u32::MAX, |r| t.categorical[r * nc + j]) as usize;
                out.extend((0..card).map(|k| f64::from(u8::from(k == code))));
            }
        }
        out.extend(
            self.qtypes
                .iter()
                .map(|q| f64::from(u8::from(*q == s.qtype))),
        );
        let asked: BTreeSet<String> = words(&s.question).into_iter().collect();
        out.extend(
            self.words
                .iter()
                .map(|w| f64::from(u8::from(asked.contains(w)))),
        );
        out
    }

    /// Builds the feature map from the train rows of `data`, with at most `question_words` words.
    pub fn fit(data: &Dataset, train: &[usize], pool: usize, question_words: usize) -> Self {
        let mut names = Vec::new();
        if let Some(store) = &data.image {
            names.push("image_present".to_owned());
            for ch in 0..store.shape.first().copied().unwrap_or(0) {
                for cell in 0..pool * pool {
                    names.push(format!("image_c{ch}_cell{cell}"));
                }
            }
        }
        if let Some(store) = &data.audio {
            names.push("audio_present".to_owned());
            for b in 0..store.shape.first().copied().unwrap_or(0) {
                names.push(format!("audio_mel{b}_mean"));
                names.push(format!("audio_mel{b}_std"));
            }
        }
        if let Some(t) = &data.tabular {
            names.push("tabular_present".to_owned());
            names.extend(t.numeric_names.iter().cloned());
            for (name, &card) in t.categorical_names.iter().zip(&t.cardinalities) {
                names.extend((0..card).map(|k| format!("{name}={k}")));
            }
        }
        let qtypes: Vec<String> = train
            .iter()
            .map(|&i| data.samples[i].qtype.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        names.extend(qtypes.iter().map(|q| format!("qtype={q}")));
        let words = question_vocabulary(data, train, question_words);
        names.extend(words.iter().map(|w| format!("word={w}")));
        let mut space = Self {
            mean: vec![0.0; names.len()],
            std: vec![1.0; names.len()],
            names,
            qtypes,
            words,
            pool,
        };
        let rows: Vec<Vec<f64>> = train.iter().map(|&i| space.raw(data, i)).collect();
        let n = rows.len().max(1) as f64;
        for j in 0..space.names.len() {
            let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            let var = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / n;
            space.mean[j] = mean;
            space.std[j] = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
        }
        space
    }

    /// The standardized feature matrix of `indices`.
    pub fn matrix(&self, data: &Dataset, indices: &[usize]) -> Array2<f64> {
        let d = self.names.len();
        let mut x = Array2::<f64>::zeros((indices.len(), d));
        for (r, &i) in indices.iter().enumerate() {
            for (j, v) in self.raw(data, i).into_iter().enumerate().take(d) {
                x[[r, j]] = (v - self.mean[j]) / self.std[j];
            }
        }
        x
    }
}

/// The `max` words found in the most train questions (ties: alphabetical), each in at least two, sorted.
fn question_vocabulary(data: &Dataset, train: &[usize], max: usize) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for &i in train {
        let asked: BTreeSet<String> = words(&data.samples[i].question).into_iter().collect();
        for w in asked {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().filter(|(_, c)| *c >= 2).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<String> = ranked.into_iter().take(max).map(|(w, _)| w).collect();
    kept.sort();
    kept
}

/// Most frequent answer and its share; ties go to the alphabetically first answer.
fn majority<'a>(answers: impl IntoIterator<Item = &'a str>) -> Option<(String, f64)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0u64;
    for a in answers {
        *counts.entry(normalize_answer(a)).or_default() += 1;
        n += 1;
    }
    let (best, c) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    Some((best.clone(), *c as f64 / n as f64))
}

/// Every baseline, fit on the train rows.
pub struct Baselines {
    /// The most frequent train answer and its train share.
    pub majority_overall: (String, f64),
    /// Per question type, the most frequent train answer and its share.
    pub majority_qtype: BTreeMap<String, (String, f64)>,
    /// The feature map of the classical models.
    pub features: FeatureSpace,
    /// Answer classes (sorted normalized train answers).
    pub classes: Vec<String>,
    logistic: Option<MultiFittedLogisticRegression<f64, usize>>,
    tree: Option<Cart>,
}

impl std::fmt::Debug for Baselines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baselines")
            .field("majority_overall", &self.majority_overall)
            .field("majority_qtype", &self.majority_qtype)
            .field("classes", &self.classes.len())
            .field("features", &self.features.names.len())
            .finish()
    }
}

impl Baselines {
    /// Fits every baseline on the train split of `data` (and nothing else); `classical: None` skips the
    /// linfa models.
    pub fn fit(data: &Dataset, classical: Option<ClassicalSettings>) -> Result<Self> {
        let train = data.split(Split::Train);
        let majority_overall = majority(train.iter().map(|&i| data.samples[i].answer.as_str()))
            .ok_or_else(|| Error::Baseline {
                name: "majority".into(),
                message: "the train split is empty".into(),
            })?;
        let mut by_q: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for &i in &train {
            let s = &data.samples[i];
            by_q.entry(&s.qtype).or_default().push(&s.answer);
        }
        let majority_qtype = by_q
            .into_iter()
            .filter_map(|(q, a)| majority(a).map(|m| (q.to_owned(), m)))
            .collect();
        let classes: Vec<String> = train
            .iter()
            .map(|&i| normalize_answer(&data.samples[i].answer))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (pool, question_words) = classical.map_or((4, 0), |c| (c.pool, c.question_words));
        let features = FeatureSpace::fit(data, &train, pool, question_words);
        let mut out = Self {
            majority_overall,
            majority_qtype,
            features,
            classes,
            logistic: None,
            tree: None,
        };
        if let Some(settings) = classical {
            let x = out.features.matrix(data, &train);
            let y: Array1<usize> = train
                .iter()
                .map(|&i| {
                    let a = normalize_answer(&data.samples[i].answer);
                    out.classes.binary_search(&a).unwrap_or(0)
                })
                .collect();
            let dataset = linfa::Dataset::new(x, y);
            if out.classes.len() >= 2 {
                let lr = MultiLogisticRegression::default()
                    .alpha(settings.logistic_alpha)
                    .max_iterations(settings.logistic_max_iterations)
                    .fit(&dataset)
                    .map_err(|e| Error::Baseline {
                        name: "logistic".into(),
                        message: e.to_string(),
                    })?;
                out.logistic = Some(lr);
            }
            let (x, y) = (dataset.records(), dataset.targets());
            let y: Vec<usize> = y.iter().copied().collect();
            out.tree = Some(Cart::fit(x, &y, out.classes.len(), settings.tree_max_depth));
            tracing::info!(
                features = out.features.names.len(),
                classes = out.classes.len(),
                train = train.len(),
                "classical baselines fit on train"
            );
        }
        Ok(out)
    }

    /// Answers of every fitted baseline on `indices`, by baseline name (`majority`, `majority_qtype`,
    /// `logistic`, `tree`).
    pub fn predict(&self, data: &Dataset, indices: &[usize]) -> Vec<(String, Vec<Answer>)> {
        let mut out = Vec::new();
        let (ans, share) = &self.majority_overall;
        out.push((
            "majority".to_owned(),
            indices
                .iter()
                .map(|_| (ans.clone(), Some(*share)))
                .collect(),
        ));
        out.push((
            "majority_qtype".to_owned(),
            indices
                .iter()
                .map(|&i| {
                    let (a, s) = self
                        .majority_qtype
                        .get(&data.samples[i].qtype)
                        .unwrap_or(&self.majority_overall);
                    (a.clone(), Some(*s))
                })
                .collect(),
        ));
        if self.logistic.is_none() && self.tree.is_none() {
            return out;
        }
        let x = self.features.matrix(data, indices);
        if let Some(lr) = &self.logistic {
            let probs = lr.predict_probabilities(&x);
            let classes = lr.classes();
            let answers = probs
                .rows()
                .into_iter()
                .map(|row| {
                    let (best, p) = row.iter().enumerate().filter(|(_, p)| p.is_finite()).fold(
                        (0usize, f64::NEG_INFINITY),
                        |acc, (k, &p)| {
                            if p > acc.1 { (k, p) } else { acc }
                        },
                    );
                    let class = classes.get(best).copied().unwrap_or(0);
                    (
                        self.classes.get(class).cloned().unwrap_or_default(),
                        p.is_finite().then_some(p),
                    )
                })
                .collect();
            out.push(("logistic".to_owned(), answers));
        }
        if let Some(tree) = &self.tree {
            out.push((
                "tree".to_owned(),
                x.rows()
                    .into_iter()
                    .map(|row| {
                        let (c, share) = tree.predict(row.as_slice().unwrap_or_default());
                        (
                            self.classes.get(c).cloned().unwrap_or_default(),
                            Some(share),
                        )
                    })
                    .collect(),
            ));
        }
        out
    }
}

/// A node of a [`Cart`].
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf {
        class: usize,
        share: f64,
    },
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

/// A deterministic CART classification tree: Gini impurity, thresholds at midpoints between consecutive
/// distinct values, a depth limit. Ties go to the first feature, the lowest threshold and the smallest class,
/// so a fit is a pure function of its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Cart {
    nodes: Vec<Node>,
}

/// `sum(c^2)` of class counts.
fn sum_sq(counts: &[u64]) -> u128 {
    counts.iter().map(|&c| u128::from(c) * u128::from(c)).sum()
}

impl Cart {
    /// Fits on rows `x` with classes `y` (each `< n_classes`), at most `max_depth` splits deep.
    pub fn fit(x: &Array2<f64>, y: &[usize], n_classes: usize, max_depth: usize) -> Self {
        let mut tree = Cart { nodes: Vec::new() };
        let rows: Vec<usize> = (0..y.len().min(x.nrows())).collect();
        tree.grow(x, y, n_classes.max(1), &rows, max_depth);
        tree
    }

    fn leaf(y: &[usize], n_classes: usize, rows: &[usize]) -> Node {
        let mut counts = vec![0u64; n_classes];
        for &r in rows {
            counts[y[r].min(n_classes - 1)] += 1;
        }
        let (class, c) =
            counts.iter().enumerate().fold(
                (0, 0),
                |best, (k, &c)| if c > best.1 { (k, c) } else { best },
            );
        Node::Leaf {
            class,
            share: if rows.is_empty() {
                0.0
            } else {
                c as f64 / rows.len() as f64
            },
        }
    }

    fn grow(
        &mut self,
        x: &Array2<f64>,
        y: &[usize],
        k: usize,
        rows: &[usize],
        depth: usize,
    ) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Self::leaf(y, k, rows));
        let n = rows.len() as u64;
        let mut parent = vec![0u64; k];
        for &r in rows {
            parent[y[r].min(k - 1)] += 1;
        }
        if depth == 0 || n < 2 || parent.iter().filter(|&&c| c > 0).count() < 2 {
            return id;
        }
        // Weighted Gini times n: n_l - S_l/n_l + n_r - S_r/n_r; the parent's is n - S/n.
        let parent_score = n as f64 - sum_sq(&parent) as f64 / n as f64;
        let mut best: Option<(f64, usize, f64)> = None;
        let mut order = rows.to_vec();
        for f in 0..x.ncols() {
            order.sort_by(|&a, &b| x[[a, f]].total_cmp(&x[[b, f]]).then(a.cmp(&b)));
            let mut left = vec![0u64; k];
            let mut right = parent.clone();
            let (mut sl, mut sr) = (0u128, sum_sq(&parent));
            for i in 0..order.len() - 1 {
                let c = y[order[i]].min(k - 1);
                sl += 2 * u128::from(left[c]) + 1;
                sr -= 2 * u128::from(right[c]) - 1;
                left[c] += 1;
                right[c] -= 1;
                let (v, next) = (x[[order[i], f]], x[[order[i + 1], f]]);
                if v == next {
                    continue;
                }
                let (nl, nr) = ((i + 1) as f64, (order.len() - i - 1) as f64);
                let score = nl - sl as f64 / nl + nr - sr as f64 / nr;
                if best.is_none_or(|b| score < b.0) {
                    best = Some((score, f, v + (next - v) / 2.0));
                }
            }
        }
        let Some((score, feature, threshold)) = best else {
            return id;
        };
        // As scikit-learn: a split that does not lower the impurity is still taken (it may enable a later one).
        if score > parent_score + 1e-9 {
            return id;
        }
        let (l, r): (Vec<usize>, Vec<usize>) = rows
            .iter()
            .partition(|&&row| x[[row, feature]] <= threshold);
        let left = self.grow(x, y, k, &l, depth - 1);
        let right = self.grow(x, y, k, &r, depth - 1);
        self.nodes[id] = Node::Split {
            feature,
            threshold,
            left,
            right,
        };
        id
    }

    /// The class of one row and the share of its leaf's train rows in that class.
    pub fn predict(&self, row: &[f64]) -> (usize, f64) {
        let mut i = 0;
        loop {
            match self.nodes.get(i) {
                Some(Node::Leaf { class, share }) => return (*class, *share),
                Some(Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                }) => {
                    i = if row.get(*feature).copied().unwrap_or(0.0) <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
                None => return (0, 0.0),
            }
        }
    }

    /// Nodes in the tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no node (never after [`Cart::fit`]).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
