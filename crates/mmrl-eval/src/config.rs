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
    /// Question types that need two modalities; the report compares every system on them.
    pub cross_modal: Vec<String>,
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
            cross_modal: vec![
                "digit_and_count".into(),
                "digit_gt_count".into(),
                "battery_or_triangle".into(),
            ],
            classical_baselines: true,
            ablations: true,
            pool: 4,
            logistic_alpha: 1.0,
            logistic_max_iterations: 200,
            tree_max_depth: 12,
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
        if self.confusion_top < 2 {
            return Err(config_err("confusion_top", "must be at least 2"));
        }
        Ok(())
    }
}
