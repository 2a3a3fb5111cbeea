//! Parameters of the eval stage (`[stages.eval.params]`), validated once before anything runs.

use serde::{Deserialize, Serialize};

use crate::error::{Result, config_err};

/// Parameters of eval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Samples per decoding batch.
    pub batch_size: usize,
    /// Bootstrap resamples for confidence intervals and paired tests.
    pub bootstrap_samples: usize,
    /// Confidence level of the intervals.
    pub confidence_level: f64,
    /// Equal-width bins of the expected calibration error and reliability diagram.
    pub ece_bins: usize,
    /// The answer that means "I do not know" (abstention).
    pub abstain_answer: String,
    /// Question types that need two modalities; the report compares every system on them. Each must be a
    /// question type of the data. `None` (the default): derived from the leave-one-out ablations, the types
    /// that need two modalities or more (see `needs_threshold`).
    pub cross_modal: Option<Vec<String>>,
    /// A question type needs a modality when masking it lowers our exact match on that type by more than this
    /// (a fraction) and the paired bootstrap interval of the drop lies above zero.
    pub needs_threshold: f64,
    /// Fit and score the linfa baselines (logistic regression, decision tree).
    pub classical_baselines: bool,
    /// Score our model with each modality masked in turn.
    pub ablations: bool,
    /// Image pooling grid of the classical baselines' features (`pool x pool` per channel).
    pub pool: usize,
    /// L2 penalty of the logistic regression.
    pub logistic_alpha: f64,
    /// L-BFGS iterations of the logistic regression.
    pub logistic_max_iterations: u64,
    /// Depth limit of the decision tree.
    pub tree_max_depth: usize,
    /// Words of the classical baselines' bag of words: the most frequent words of the train questions that
    /// occur at least twice (0: no question words).
    pub question_words: usize,
    /// Classes shown in the confusion-matrix heatmap (most frequent references; metrics.json has all).
    pub confusion_top: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            bootstrap_samples: 1000,
            confidence_level: 0.95,
            ece_bins: 15,
            abstain_answer: "unsure".into(),
            cross_modal: None,
            needs_threshold: 0.05,
            classical_baselines: true,
            ablations: true,
            pool: 4,
            logistic_alpha: 1.0,
            logistic_max_iterations: 200,
            tree_max_depth: 12,
            question_words: 200,
            confusion_top: 20,
        }
    }
}

impl EvalConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(config_err("batch_size", "must be at least 1"));
        }
        if self.bootstrap_samples == 0 {
            return Err(config_err("bootstrap_samples", "must be at least 1"));
        }
        if !(self.confidence_level > 0.0 && self.confidence_level < 1.0) {
            return Err(config_err(
                "confidence_level",
                format!("must be in (0, 1), got {}", self.confidence_level),
            ));
        }
        if self.ece_bins == 0 {
            return Err(config_err("ece_bins", "must be at least 1"));
        }
        if mmrl_model::vocab::normalize_answer(&self.abstain_answer).is_empty() {
            return Err(config_err("abstain_answer", "must hold a word"));
        }
        if self.pool == 0 {
            return Err(config_err("pool", "must be at least 1"));
        }
        if !(self.logistic_alpha >= 0.0 && self.logistic_alpha.is_finite()) {
            return Err(config_err(
                "logistic_alpha",
                format!("must be finite and >= 0, got {}", self.logistic_alpha),
            ));
        }
        if self.logistic_max_iterations == 0 {
            return Err(config_err("logistic_max_iterations", "must be at least 1"));
        }
        if self.tree_max_depth == 0 {
            return Err(config_err("tree_max_depth", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.needs_threshold) {
            return Err(config_err(
                "needs_threshold",
                format!("must be in [0, 1), got {}", self.needs_threshold),
            ));
        }
        if let Some(types) = &self.cross_modal
            && let Some(q) = types.iter().find(|q| q.trim().is_empty())
        {
            return Err(config_err(
                "cross_modal",
                format!("{q:?} is not a question type; list the types by name"),
            ));
        }
        if self.confusion_top < 2 {
            return Err(config_err("confusion_top", "must be at least 2"));
        }
        Ok(())
    }

    /// Checks the params that name data against the data: every `cross_modal` entry must be one of
    /// `qtypes`, the question types of select's samples.
    pub fn check_against(&self, qtypes: &[String]) -> Result<()> {
        let Some(listed) = &self.cross_modal else {
            return Ok(());
        };
        if let Some(unknown) = listed.iter().find(|q| !qtypes.contains(q)) {
            let have = if qtypes.iter().all(String::is_empty) {
                "none: every sample's qtype is empty (the dataset has no qtype column); leave cross_modal \
                 out and eval derives the cross-modal types from its ablations"
                    .to_owned()
            } else {
                qtypes
                    .iter()
                    .filter(|q| !q.is_empty())
                    .map(|q| format!("{q:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(config_err(
                "cross_modal",
                format!(
                    "{unknown:?} is not a question type of the data; its question types: {have}"
                ),
            ));
        }
        Ok(())
    }
}
