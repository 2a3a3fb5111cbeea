//! Which question types need which modality, measured rather than declared: our model against our model
//! with one modality masked for every sample (the leave-one-out ablations).
//!
//! The rule: a question type *needs* a modality when masking it lowers our exact match on that type by more
//! than `needs_threshold`, and the paired bootstrap interval of that drop lies wholly above zero. A type that
//! needs two or more modalities is cross-modal. A type that needs none is answered from the question alone, or
//! from any one of several modalities that each carry its answer.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bootstrap::{Interval, derive_seed, paired_bootstrap};
use crate::metrics::{ExactMatch, Scored};

/// What masking one modality costs our model on one question type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// Exact match of ours minus exact match with the modality masked.
    pub drop: f64,
    /// Paired bootstrap interval of that drop.
    pub ci: Interval,
    /// Whether the type needs the modality: `drop > threshold` and `ci.lo > 0`.
    pub needed: bool,
}

/// The measured needs of one question type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeNeeds {
    /// Test rows of the type.
    pub samples: usize,
    /// The modalities it needs, in the order image, audio, tabular.
    pub needs: Vec<String>,
    /// The cost of masking each measured modality.
    pub costs: BTreeMap<String, Cost>,
}

impl TypeNeeds {
    /// `image`, `image + audio`, ... or `none` (question alone, or any one modality suffices).
    pub fn label(&self) -> String {
        if self.needs.is_empty() {
            "none".to_owned()
        } else {
            self.needs.join(" + ")
        }
    }

    /// Needs two modalities or more.
    pub fn is_cross_modal(&self) -> bool {
        self.needs.len() >= 2
    }
}

/// The settings of the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Smallest drop of exact match (a fraction) that counts.
    pub threshold: f64,
    /// Bootstrap resamples of the paired interval.
    pub samples: usize,
    /// Interval level.
    pub level: f64,
    /// Stage seed.
    pub seed: u64,
}

/// Measures every question type of `qtypes` (the type of each row, aligned with `ours`): `masked` holds, per
/// modality, our model's rows with that modality masked, aligned the same way.
pub fn measure(
    qtypes: &[&str],
    ours: &[Scored],
    masked: &[(&str, Vec<Scored>)],
    rule: Rule,
) -> BTreeMap<String, TypeNeeds> {
    let mut by_type: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, q) in qtypes.iter().enumerate() {
        by_type.entry(q).or_default().push(i);
    }
    let pick = |rows: &[Scored], idx: &[usize]| -> Vec<Scored> {
        idx.iter().map(|&i| rows[i].clone()).collect()
    };
    by_type
        .into_iter()
        .map(|(q, idx)| {
            let a = pick(ours, &idx);
            let mut costs = BTreeMap::new();
            let mut needs = Vec::new();
            for (modality, rows) in masked {
                let b = pick(rows, &idx);
                let Some(test) = paired_bootstrap(
                    &a,
                    &b,
                    &ExactMatch,
                    rule.samples,
                    rule.level,
                    derive_seed(rule.seed, &format!("needs/{q}/{modality}")),
                ) else {
                    continue;
                };
                let needed = test.delta > rule.threshold && test.ci.lo > 0.0;
                if needed {
                    needs.push((*modality).to_owned());
                }
                costs.insert(
                    (*modality).to_owned(),
                    Cost {
                        drop: test.delta,
                        ci: test.ci,
                        needed,
                    },
                );
            }
            (
                q.to_owned(),
                TypeNeeds {
                    samples: idx.len(),
                    needs,
                    costs,
                },
            )
        })
        .collect()
}
