//! The rl stage: fine-tunes the sft model as a policy with GRPO, RLOO or PPO.
//!
//! Each step: take `batch_size / group_size` train prompts, sample `group_size` answers for each (epsilon-greedy
//! and a temperature, both scheduled), score them with the configured rewards, turn rewards into per-token
//! advantages (group-relative, leave-one-out, or GAE with a value head), optionally add prioritized replayed
//! rollouts, and take `policy_epochs x minibatches` optimizer steps on the clipped surrogate with a k3 KL
//! penalty to the frozen sft model and an entropy bonus. The optimizer side is sft's: AdamW, the same
//! learning-rate schedules, gradient accumulation over micro-batches, global-norm clipping.
//!
//! Every random draw of a step comes from an RNG seeded by `(seed, step)`, and the prompt stream is a pure
//! function of `(seed, epoch)`, so a run killed and resumed from its checkpoint (policy, optimizer, value
//! head, schedule state, entropy coefficient, replay buffer, prompt cursor, metrics) replays exactly the
//! steps the uninterrupted run would have taken. Checkpoints live in `.NAME.rl-work/` beside the output,
//! keyed by the resolved config, the seed and the inputs' content hashes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::parallel::{sharded_grads, threads};
use mmrl_model::predict::load_trained;
use mmrl_model::schedule::{Schedule, ScheduleConfig, ScheduleKind, ScheduleState};
use mmrl_model::sft::{DeviceKind, clip_global_norm, decode_split, load_model, mix};
use mmrl_model::vocab::{ANSWER_SPECIALS, UNK, Vocab, normalize_answer};
use mmrl_model::{Decoding, Dropout, MultimodalModel};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::algo::{
    AdvantageScale, Algorithm, Decay, EntropyConfig, LossAggregation, LossSettings, TokenInputs,
    ValueHead, gae, group_advantages, policy_loss, rloo_advantages, value_loss,
};
use crate::error::{Error, Result, io};
use crate::replay::{PrioritizedReplay, ReplayConfig, ReplayState, SampleBatch};
use crate::reward::{
    Reward, RewardContext, RewardParams, RewardSet, RewardSpec, ShapingConfig, UNSURE, mean_std,
    shaping, validate_specs,
};

/// Stage name in manifests.
pub const STAGE: &str = "rl";

/// Parameters of the rl stage (`[stages.rl.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// `grpo`, `rloo` or `ppo`.
    pub algorithm: Algorithm,
    /// Rollout steps (each: generate, score, update).
    pub steps: u64,
    /// Rollouts per step (prompts x group_size).
    pub batch_size: usize,
    /// Answers sampled per prompt (at least 2 for grpo and rloo; must divide batch_size).
    pub group_size: usize,
    /// Passes over each step's rollouts.
    pub policy_epochs: usize,
    /// Optimizer steps per pass (the rollouts split into this many minibatches).
    pub minibatches: usize,
    /// Micro-batches whose gradients are accumulated into one optimizer step (must divide the minibatch).
    pub grad_accum: usize,
    /// Data-parallel shards of each micro-batch, computed concurrently on CPU threads (as sft's `shards`:
    /// results depend on this number, never on the thread count).
    pub shards: usize,
    /// Lower clip range of the ratio (ratio >= 1 - clip_low).
    pub clip_low: f64,
    /// Upper clip range of the ratio (ratio <= 1 + clip_high).
    pub clip_high: f64,
    /// KL coefficient towards the frozen sft model (k3 estimator; 0 turns it off).
    pub kl_beta: f64,
    /// Advantage scaling: `group`, `batch` or `none`.
    pub advantage_scale: AdvantageScale,
    /// `token_mean` or `sequence_mean`.
    pub loss_aggregation: LossAggregation,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    pub grad_clip: f64,
    /// Learning-rate schedule over optimizer steps (sft's schedules).
    pub schedule: ScheduleConfig,
    /// Probability of a uniformly random token while sampling, over steps.
    pub epsilon: Decay,
    /// Sampling temperature over steps.
    pub temperature: Decay,
    /// Sample only among the k most probable tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Entropy bonus.
    pub entropy: EntropyConfig,
    /// Replace prompts whose group rewards all tie with fresh prompts (up to `dynamic_sampling_tries`
    /// extra rounds per step).
    pub dynamic_sampling: bool,
    /// Extra generation rounds of dynamic sampling per step.
    pub dynamic_sampling_tries: usize,
    /// With the `abstention` reward: the last this many answers of each group are replaced by `unsure`
    /// (forced exploration of the abstain action, which the sft model gives almost no probability; like
    /// epsilon-drawn tokens they are trained as on-policy, the ratio being taken against the current
    /// policy). 0: off.
    pub unsure_probes: usize,
    /// When `unsure` is the `<unk>` slot (see the crate README): start its output row as the mean of the
    /// answer words' rows (new-token mean initialization), its bias raised so that `unsure` is the greedy
    /// first token on this fraction of train prompts, those where the best answer leads the mean answer
    /// logit least (the least confident). RL then moves it where abstaining pays. `None`: keep the slot as
    /// sft left it (pushed far down: the policy practically never tries `unsure`).
    pub unsure_init: Option<f64>,
    /// Rewards and their weights.
    pub rewards: Vec<RewardSpec>,
    /// Parameters of the built-in rewards.
    pub reward_params: RewardParams,
    /// Potential-based per-token shaping.
    pub shaping: ShapingConfig,
    /// Prioritized replay of earlier rollouts.
    pub replay: ReplayConfig,
    /// PPO discount over answer tokens.
    pub gamma: f64,
    /// PPO GAE lambda.
    pub gae_lambda: f64,
    /// PPO value clipping range.
    pub value_clip: f64,
    /// PPO value-head learning rate.
    pub value_lr: f64,
    /// PPO value-head hidden width.
    pub value_hidden: usize,
    /// Evaluate val exact match every this many steps (and at the end).
    pub eval_every: u64,
    /// Samples per batch when decoding val and scoring rollouts.
    pub eval_batch_size: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Where to train.
    pub device: DeviceKind,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Grpo,
            steps: 200,
            batch_size: 64,
            group_size: 8,
            policy_epochs: 1,
            minibatches: 1,
            grad_accum: 1,
            shards: mmrl_model::sft::DEFAULT_SHARDS,
            clip_low: 0.2,
            clip_high: 0.28,
            kl_beta: 0.05,
            advantage_scale: AdvantageScale::Group,
            loss_aggregation: LossAggregation::TokenMean,
            lr: 1e-4,
            weight_decay: 0.0,
            grad_clip: 1.0,
            schedule: ScheduleConfig {
                kind: ScheduleKind::WarmupCosine,
                warmup_steps: 5,
                min_lr: 1e-5,
                ..Default::default()
            },
            epsilon: Decay {
                start: 0.05,
                end: 0.0,
                kind: crate::algo::DecayKind::Linear,
                steps: 0,
            },
            temperature: Decay::constant(1.0),
            top_k: None,
            entropy: EntropyConfig::default(),
            dynamic_sampling: false,
            dynamic_sampling_tries: 1,
            unsure_probes: 0,
            unsure_init: Some(0.1),
            rewards: vec![RewardSpec {
                name: "exact_match".into(),
                weight: 1.0,
                weight_end: None,
                weight_steps: 0,
            }],
            reward_params: RewardParams::default(),
            shaping: ShapingConfig::default(),
            replay: ReplayConfig::default(),
            gamma: 1.0,
            gae_lambda: 0.95,
            value_clip: 0.2,
            value_lr: 1e-3,
            value_hidden: 64,
            eval_every: 50,
            eval_batch_size: 256,
            checkpoint_every: 50,
            device: DeviceKind::Cpu,
        }
    }
}

fn cfg_err(field: &str, message: impl Into<String>) -> Error {
    Error::config(field, message)
}

impl RlConfig {
    /// Checks every field before any compute; errors name the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&[])
    }

    /// [`validate`](Self::validate) with the names of custom rewards the library user supplies.
    pub fn validate_with(&self, custom_rewards: &[String]) -> Result<()> {
        if self.steps == 0 {
            return Err(cfg_err("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(cfg_err("batch_size", "must be at least 1"));
        }
        let min_group = if self.algorithm == Algorithm::Ppo {
            1
        } else {
            2
        };
        if self.group_size < min_group {
            return Err(cfg_err(
                "group_size",
                format!(
                    "must be at least {min_group} for {:?} (group baselines need several answers per prompt), got {}",
                    self.algorithm, self.group_size
                ),
            ));
        }
        if !self.batch_size.is_multiple_of(self.group_size) {
            return Err(cfg_err(
                "group_size",
                format!(
                    "must divide batch_size {}, got {}",
                    self.batch_size, self.group_size
                ),
            ));
        }
        if self.policy_epochs == 0 {
            return Err(cfg_err("policy_epochs", "must be at least 1"));
        }
        if self.minibatches == 0 || self.minibatches > self.batch_size {
            return Err(cfg_err(
                "minibatches",
                format!(
                    "must be in [1, batch_size {}], got {}",
                    self.batch_size, self.minibatches
                ),
            ));
        }
        let mb = self.batch_size / self.minibatches;
        if self.grad_accum == 0 || self.grad_accum > mb {
            return Err(cfg_err(
                "grad_accum",
                format!(
                    "must be in [1, rollouts per minibatch {mb}], got {}",
                    self.grad_accum
                ),
            ));
        }
        if self.shards == 0 || self.grad_accum * self.shards > mb {
            return Err(cfg_err(
                "shards",
                format!(
                    "must be at least 1 with grad_accum x shards <= rollouts per minibatch {mb}, got {} x {}",
                    self.grad_accum, self.shards
                ),
            ));
        }
        for (f, v) in [("clip_low", self.clip_low), ("clip_high", self.clip_high)] {
            if !(v > 0.0 && v < 10.0) {
                return Err(cfg_err(f, format!("must be in (0, 10), got {v}")));
            }
        }
        if self.clip_low >= 1.0 {
            return Err(cfg_err(
                "clip_low",
                format!(
                    "must be below 1 (ratio >= 1 - clip_low > 0), got {}",
                    self.clip_low
                ),
            ));
        }
        if !(self.kl_beta >= 0.0 && self.kl_beta.is_finite()) {
            return Err(cfg_err(
                "kl_beta",
                format!("must be 0 (off) or positive, got {}", self.kl_beta),
            ));
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return Err(cfg_err("lr", format!("must be in (0, 1), got {}", self.lr)));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(cfg_err(
                "weight_decay",
                format!("must be in [0, 1), got {}", self.weight_decay),
            ));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(cfg_err(
                "grad_clip",
                format!("must be 0 (off) or positive, got {}", self.grad_clip),
            ));
        }
        self.schedule
            .validate(self.lr)
            .map_err(|e| cfg_err("schedule", e.to_string()))?;
        self.epsilon.validate("epsilon", 0.0, 1.0)?;
        self.temperature.validate("temperature", 0.0, 100.0)?;
        if self.top_k == Some(0) {
            return Err(cfg_err(
                "top_k",
                "must be at least 1 (or absent for all tokens)",
            ));
        }
        let e = &self.entropy;
        if !(e.coef >= 0.0 && e.coef.is_finite() && e.min_coef >= 0.0 && e.min_coef <= e.max_coef) {
            return Err(cfg_err(
                "entropy",
                "coef must be >= 0 and min_coef <= max_coef",
            ));
        }
        validate_specs(&self.rewards, custom_rewards.to_vec())?;
        if let Some(q) = self.unsure_init
            && !(0.0..1.0).contains(&q)
        {
            return Err(cfg_err(
                "unsure_init",
                format!("must be a fraction of prompts in [0, 1), got {q}"),
            ));
        }
        if self.unsure_probes > 0 {
            if !self.rewards.iter().any(|r| r.name == "abstention") {
                return Err(cfg_err(
                    "unsure_probes",
                    "needs the abstention reward in [[rewards]] (it scores `unsure`); set it to 0 or add the reward",
                ));
            }
            if self.unsure_probes >= self.group_size {
                return Err(cfg_err(
                    "unsure_probes",
                    format!(
                        "must be below group_size {} (a group needs sampled answers), got {}",
                        self.group_size, self.unsure_probes
                    ),
                ));
            }
        }
        let p = &self.reward_params;
        if p.numeric_scale.is_nan() || p.numeric_scale <= 0.0 {
            return Err(cfg_err("reward_params.numeric_scale", "must be positive"));
        }
        if !(p.abstain_wrong < p.abstain_unsure && p.abstain_unsure < p.abstain_right) {
            return Err(cfg_err(
                "reward_params.abstain_unsure",
                format!(
                    "must lie strictly between abstain_wrong {} and abstain_right {}, got {}",
                    p.abstain_wrong, p.abstain_right, p.abstain_unsure
                ),
            ));
        }
        if !(self.shaping.coef.is_finite() && (0.0..=1.0).contains(&self.shaping.gamma)) {
            return Err(cfg_err(
                "shaping",
                "coef must be finite and gamma in [0, 1]",
            ));
        }
        self.replay.validate()?;
        if !((0.0..=1.0).contains(&self.gamma) && (0.0..=1.0).contains(&self.gae_lambda)) {
            return Err(cfg_err("gamma", "gamma and gae_lambda must be in [0, 1]"));
        }
        if !(self.value_clip > 0.0 && self.value_lr > 0.0 && self.value_hidden > 0) {
            return Err(cfg_err(
                "value_clip",
                "value_clip, value_lr and value_hidden must be positive",
            ));
        }
        if self.eval_every == 0 {
            return Err(cfg_err("eval_every", "must be at least 1"));
        }
        if self.eval_batch_size == 0 {
            return Err(cfg_err("eval_batch_size", "must be at least 1"));
        }
        Ok(())
    }

    /// Optimizer steps of the whole run (the schedule's length).
    pub fn optimizer_steps(&self) -> u64 {
        self.steps * (self.policy_epochs * self.minibatches) as u64
    }

    /// Sample forward+backward passes of the whole run (without replay): the compute that `compare`
    /// matches.
    pub fn train_passes(&self) -> u64 {
        self.steps * (self.batch_size * self.policy_epochs) as u64
    }
}

/// Inputs of the stage.
#[derive(Debug, Clone)]
pub struct RlInputs {
    /// The sft (or any model) artifact to start from.
    pub model: PathBuf,
    /// The data artifacts.
    pub data: InputPaths,
}

/// Serde for f64 that writes NaN (an undefined metric, e.g. no multi-token sample) as `null` and reads it
/// back as NaN: JSON has no NaN, and checkpoints must round-trip.
mod nan_safe {
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
    /// Exact match per question type.
    pub by_qtype: BTreeMap<String, f64>,
}

/// Scores greedy `predicted` answers against the references of `indices`.
pub fn eval_metrics(data: &Dataset, indices: &[usize], predicted: &[String]) -> EvalMetrics {
    let mut m = EvalMetrics {
        samples: indices.len(),
        ..Default::default()
    };
    let (mut multi_n, mut multi_hit) = (0usize, 0usize);
    let (mut num_n, mut num_sum, mut cnt_n, mut cnt_sum) = (0usize, 0.0, 0usize, 0.0);
    let (mut hits, mut wrong, mut unsure) = (0usize, 0usize, 0usize);
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (&i, p) in indices.iter().zip(predicted) {
        let s = &data.samples[i];
        let (p, r) = (normalize_answer(p), normalize_answer(&s.answer));
        let hit = p == r;
        hits += usize::from(hit);
        let e = per.entry(s.qtype.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(hit);
        if p == UNSURE {
            unsure += 1;
        } else if !hit {
            wrong += 1;
        }
        if r.split_whitespace().count() >= 2 {
            multi_n += 1;
            multi_hit += usize::from(hit);
        }
        if let Some(c) = crate::reward::numeric_closeness(&p, &r, 1.0) {
            num_n += 1;
            num_sum += c;
            if s.qtype.starts_with("count") {
                cnt_n += 1;
                cnt_sum += c;
            }
        }
    }
    let frac = |a: f64, n: usize| if n == 0 { f64::NAN } else { a / n as f64 };
    m.exact_match = frac(hits as f64, indices.len());
    m.exact_match_multi_token = frac(multi_hit as f64, multi_n);
    m.numeric_closeness = frac(num_sum, num_n);
    m.numeric_closeness_counting = frac(cnt_sum, cnt_n);
    m.confident_wrong = frac(wrong as f64, indices.len());
    m.unsure = frac(unsure as f64, indices.len());
    m.by_qtype = per
        .into_iter()
        .map(|(q, (n, h))| (q, h as f64 / n.max(1) as f64))
        .collect();
    m
}

/// Greedy val metrics of `model`.
pub fn evaluate(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
) -> EvalMetrics {
    let predicted: Vec<String> = decode_split(model, data, vocab, indices, batch_size)
        .iter()
        .map(|g| vocab.decode_answer(&g.tokens))
        .collect();
    eval_metrics(data, indices, &predicted)
}

/// `report.json` of the rl stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlReport {
    /// Val exact match of the final policy (greedy): what HPO reads.
    pub val_exact_match: f64,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Val metrics of the starting (sft) model.
    pub initial: EvalMetrics,
    /// Val metrics of the final policy.
    pub final_metrics: EvalMetrics,
    /// Rollout steps taken.
    pub steps: u64,
    /// Optimizer steps taken.
    pub optimizer_steps: u64,
    /// Sample forward+backward passes (fresh and replayed rollouts, all epochs).
    pub train_passes: u64,
    /// Mean combined reward of the last 10 steps.
    pub final_reward: f64,
    /// Fraction of zero-variance groups over the run.
    pub zero_variance_fraction: f64,
    /// Whether `unsure` is the answer vocabulary's `<unk>` slot (see the crate README).
    pub unsure_uses_unk_slot: bool,
    /// The bias offset `unsure_init` gave the `unsure` row (`None`: not initialized).
    #[serde(default)]
    pub unsure_init_offset: Option<f64>,
    /// Train / val samples.
    pub train_samples: usize,
    /// Val samples.
    pub val_samples: usize,
}

/// Progress of a run, for a binary's progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps planned.
    pub total: u64,
    /// Mean combined reward of the step.
    pub reward: f64,
    /// Latest val exact match.
    pub val_exact_match: Option<f64>,
}

/// Outside control of a run.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every step.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// Stop (as if killed) right after saving the checkpoint of this step; for resume tests.
    pub stop_after_step: Option<u64>,
    /// Custom rewards, found by the names in `config.rewards`.
    pub custom_rewards: Vec<Box<dyn Reward>>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The artifact was committed.
    Done(Box<RlReport>),
    /// Stopped by [`Hooks::stop_after_step`]; the work folder holds the checkpoint.
    Interrupted {
        /// The last step.
        step: u64,
    },
}

/// A rollout as stored for replay: what the loss needs besides the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// Sample index and view.
    pub item: (usize, usize),
    /// Generated answer tokens.
    pub tokens: Vec<u32>,
    /// Behaviour log-probabilities (tokens then `<eos>`).
    pub old_logp: Vec<f32>,
    /// Reference log-probabilities.
    pub ref_logp: Vec<f32>,
    /// Per-token advantages.
    pub advantages: Vec<f32>,
    /// Sequence-level advantage (priority source).
    pub advantage: f64,
}

/// Everything besides tensors that a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlState {
    /// Identity of the run; a checkpoint with another key is not resumed.
    pub key: String,
    /// Rollout steps done.
    pub step: u64,
    /// Optimizer steps done.
    pub optimizer_step: u64,
    /// Prompt stream position: epoch.
    pub cursor_epoch: u64,
    /// Prompt stream position: index in the epoch.
    pub cursor_pos: usize,
    /// Learning-rate schedule state.
    pub schedule: ScheduleState,
    /// Current entropy coefficient (adaptive).
    pub entropy_coef: f64,
    /// Step metrics, one row per step in [`step_columns`] order.
    #[serde(with = "nan_safe::rows")]
    pub rows: Vec<Vec<f64>>,
    /// Val metrics per evaluation.
    pub val: Vec<(u64, EvalMetrics)>,
    /// Replay buffer.
    pub replay: Option<ReplayState<Stored>>,
    /// Zero-variance groups and groups seen.
    pub zero_groups: (u64, u64),
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

/// The work folder of a run writing `output`.
pub fn work_dir(output: &Path) -> PathBuf {
    mmrl_artifact::work_dir(output, "rl-work")
}

/// PPO's value-loss inputs of one micro-batch, `[rows * steps]` row-major.
struct ValueTargets {
    /// Per-token weight (0 for replayed rows and padding).
    weights: Vec<f32>,
    /// Values at rollout time (for value clipping).
    old: Vec<f32>,
    /// GAE returns.
    returns: Vec<f32>,
}

/// The vocabulary the policy answers with: when the abstention reward is on and `unsure` is not an answer
/// word, the `<unk>` slot (id 1, never a training target) is named `unsure`, so generating it decodes to
/// `unsure` and `encode_answer("unsure")` maps back to it. Returns the vocabulary and whether the slot is
/// used.
pub fn policy_vocab(vocab: &Vocab, abstention: bool) -> (Vocab, bool) {
    let mut v = vocab.clone();
    let has = v
        .answer
        .iter()
        .skip(ANSWER_SPECIALS.len())
        .any(|w| w == UNSURE);
    if abstention && !has {
        v.answer[UNK as usize] = UNSURE.to_owned();
        return (v, true);
    }
    (v, false)
}

struct Ctx<'a> {
    config: &'a RlConfig,
    data: &'a Dataset,
    vocab: &'a Vocab,
    rewards: &'a RewardSet,
    answer_sets: BTreeMap<String, BTreeSet<String>>,
    reference: &'a MultimodalModel,
    /// The `unsure` token when the abstention reward is on: an answer ends at it.
    unsure: Option<u32>,
}

/// One rollout of a step.
#[derive(Debug, Clone)]
struct Row {
    item: (usize, usize),
    tokens: Vec<u32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    advantages: Vec<f32>,
    advantage: f64,
    returns: Vec<f32>,
    old_values: Vec<f32>,
    is_weight: f64,
    replay_slot: Option<usize>,
}

/// Per-row token log-probabilities (tokens + `<eos>`) of `answers` under `model` (no dropout).
fn token_logprobs(
    model: &MultimodalModel,
    ctx: &Ctx,
    items: &[(usize, usize)],
    answers: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(items.len());
    let chunk = ctx.config.eval_batch_size;
    for (it, an) in items.chunks(chunk).zip(answers.chunks(chunk)) {
        let (batch, _) = ctx.data.batch(it, ctx.vocab, model.config(), None);
        let s = model.score(&batch, an, &mut Dropout::off());
        let [_, steps] = s.token_logprobs.dims();
        let lp: Vec<f32> = s
            .token_logprobs
            .into_data()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        for (r, a) in an.iter().enumerate() {
            let n = a.len().min(model.config().max_answer_len) + 1;
            out.push(lp[r * steps..r * steps + n].to_vec());
        }
    }
    out
}

/// Per-row values (tokens + `<eos>`) of the value head.
fn head_values(
    model: &MultimodalModel,
    head: &ValueHead,
    ctx: &Ctx,
    items: &[(usize, usize)],
    answers: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(items.len());
    let chunk = ctx.config.eval_batch_size;
    let max = model.config().max_answer_len;
    for (it, an) in items.chunks(chunk).zip(answers.chunks(chunk)) {
        let (batch, _) = ctx.data.batch(it, ctx.vocab, model.config(), None);
        let steps = an.iter().map(|a| a.len().min(max)).max().unwrap_or(0) + 1;
        let enc = model.encode(&batch, &mut Dropout::off());
        let v: Vec<f32> = head
            .forward(enc.memory, an, steps)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        for (r, a) in an.iter().enumerate() {
            let n = a.len().min(max) + 1;
            out.push(v[r * steps..r * steps + n].to_vec());
        }
    }
    out
}

/// Step statistics gathered while generating and scoring.
#[derive(Default)]
struct Gathered {
    rows: Vec<Row>,
    rewards: Vec<f64>,
    each: Vec<Vec<Option<f64>>>,
    zero_groups: usize,
    groups: usize,
}

/// Takes the next `n` prompts of the train stream.
fn next_prompts(data: &Dataset, seed: u64, state: &mut RlState, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(n);
    let mut order = data.epoch_order(seed ^ 0x0072_6c00, state.cursor_epoch);
    while out.len() < n {
        if state.cursor_pos >= order.len() {
            state.cursor_epoch += 1;
            state.cursor_pos = 0;
            order = data.epoch_order(seed ^ 0x0072_6c00, state.cursor_epoch);
        }
        out.push(order[state.cursor_pos]);
        state.cursor_pos += 1;
    }
    out
}

/// Generates `group_size` answers for each prompt and scores them: returns rows (advantages not yet
/// set), combined rewards and each reward's values.
fn rollouts(
    policy: &MultimodalModel,
    ctx: &Ctx,
    prompts: &[(usize, usize)],
    decoding: Decoding,
    step: u64,
    rng: &mut ChaCha8Rng,
) -> Result<Gathered> {
    let g = ctx.config.group_size;
    let items: Vec<(usize, usize)> = prompts
        .iter()
        .flat_map(|&p| std::iter::repeat_n(p, g))
        .collect();
    let mut answers = Vec::with_capacity(items.len());
    for chunk in items.chunks(ctx.config.eval_batch_size) {
        let (batch, _) = ctx.data.batch(chunk, ctx.vocab, policy.config(), None);
        answers.extend(policy.generate(&batch, decoding, rng).into_iter().map(|g| {
            let mut t = g.tokens;
            // `unsure` is a whole answer: whatever follows it is cut (and the cut answer is what gets scored).
            if let Some(pos) = ctx.unsure.and_then(|u| t.iter().position(|&x| x == u)) {
                t.truncate(pos + 1);
            }
            t
        }));
    }
    if let Some(u) = ctx.unsure {
        let probes = ctx.config.unsure_probes;
        for (k, a) in answers.iter_mut().enumerate() {
            if k % g >= g - probes {
                *a = vec![u];
            }
        }
    }
    let old = token_logprobs(policy, ctx, &items, &answers);
    let reference = if ctx.config.kl_beta > 0.0 {
        token_logprobs(ctx.reference, ctx, &items, &answers)
    } else {
        old.iter().map(|v| vec![0.0; v.len()]).collect()
    };
    let mut out = Gathered::default();
    for (k, (&item, tokens)) in items.iter().zip(&answers).enumerate() {
        let s = &ctx.data.samples[item.0];
        let answer = normalize_answer(&ctx.vocab.decode_answer(tokens));
        let reference_text = normalize_answer(&s.answer);
        let rc = RewardContext {
            sample_id: &s.id,
            qtype: &s.qtype,
            question: &s.question,
            reference: &reference_text,
            answer: &answer,
            tokens,
            answer_set: ctx.answer_sets.get(&s.qtype),
        };
        let scored = ctx.rewards.score(&rc, step, ctx.config.steps)?;
        out.rewards.push(scored.total);
        out.each.push(scored.each);
        out.rows.push(Row {
            item,
            tokens: tokens.clone(),
            old_logp: old[k].clone(),
            ref_logp: reference[k].clone(),
            advantages: Vec::new(),
            advantage: 0.0,
            returns: Vec::new(),
            old_values: Vec::new(),
            is_weight: 1.0,
            replay_slot: None,
        });
    }
    for grp in out.rewards.chunks(g) {
        out.groups += 1;
        let m = grp.iter().sum::<f64>() / grp.len() as f64;
        if grp.iter().all(|r| (r - m).abs() < 1e-12) {
            out.zero_groups += 1;
        }
    }
    Ok(out)
}

fn save_checkpoint(
    dir: &Path,
    model: &MultimodalModel,
    optim: &ModuleOptimizer,
    value: Option<(&ValueHead, &ModuleOptimizer)>,
    state: &RlState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let ck = |e: burn::store::RecordError| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let state_path = dir.join("state.json");
    let _ = std::fs::remove_file(&state_path);
    model
        .clone()
        .into_record()
        .save(dir.join("model.bpk"))
        .map_err(ck)?;
    optim.save(dir.join("optimizer.bpk")).map_err(ck)?;
    if let Some((head, vopt)) = value {
        head.clone()
            .into_record()
            .save(dir.join("value.bpk"))
            .map_err(ck)?;
        vopt.save(dir.join("value_optimizer.bpk")).map_err(ck)?;
    }
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io("renaming", &tmp))?;
    Ok(())
}

fn load_value_head(head: ValueHead, path: &Path) -> Result<ValueHead> {
    let record = burn::store::ModuleRecord::load(path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    head.try_load_record(record).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn table(columns: &[String], rows: &[Vec<f64>]) -> Result<RecordBatch> {
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

/// Loads the starting model (plain device) with its vocabulary; errors say to run sft first.
fn load_start(model_dir: &Path, device: DeviceKind) -> Result<mmrl_model::predict::Trained> {
    if !model_dir.join("manifest.json").is_file() {
        return Err(Error::Input {
            path: model_dir.to_path_buf(),
            message: "the model input is not an artifact (no manifest.json); pass the sft stage's output as --input model=DIR (run sft first)".into(),
        });
    }
    load_trained(model_dir, device).map_err(|e| Error::Input {
        path: model_dir.to_path_buf(),
        message: format!(
            "cannot load the sft checkpoint (model.bpk, config.json, vocab.json): {e}"
        ),
    })
}

/// The bias offset of [`init_answer_row`] for token `id = <unk>` at which it is the greedy first token on
/// about a fraction `q` of (up to 512) train prompts: the `q`-quantile of `log p(best) - log p(unsure)` with
/// the offset at 0.
fn unsure_offset(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    train: &[usize],
    q: f64,
    config: &RlConfig,
) -> Result<f32> {
    let m = init_answer_row(model.clone(), UNK, 0.0);
    let mut gaps = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let take = &train[..train.len().min(512)];
    for chunk in take.chunks(config.eval_batch_size) {
        let items: Vec<(usize, usize)> = chunk.iter().map(|&i| (i, 0)).collect();
        let (batch, _) = data.batch(&items, vocab, m.config(), None);
        let best = m.generate(&batch, Decoding::Greedy, &mut rng);
        let answers = vec![vec![UNK]; items.len()];
        let s = m.score(&batch, &answers, &mut Dropout::off());
        let [_, steps] = s.token_logprobs.dims();
        let lp: Vec<f32> = s
            .token_logprobs
            .into_data()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        for (r, g) in best.iter().enumerate() {
            if let (Some(&b), Some(&u)) = (g.token_logprobs.first(), lp.get(r * steps)) {
                gaps.push(b - u);
            }
        }
    }
    if gaps.is_empty() {
        return Err(cfg_err("unsure_init", "no train prompt to calibrate on"));
    }
    gaps.sort_by(f32::total_cmp);
    let k = ((gaps.len() as f64 * q) as usize).min(gaps.len() - 1);
    // Just above the k-th smallest gap: `unsure` wins on the k least confident prompts.
    Ok(if k == 0 {
        gaps[0] - 1.0
    } else {
        (gaps[k - 1] + gaps[k]) / 2.0
    })
}

/// Sets the output row of answer token `id` (column `id` of `head.weight`, entry `id` of `head.bias`) to the
/// mean over the answer words (ids from [`ANSWER_SPECIALS`] on), the bias `offset` above their mean.
pub fn init_answer_row(model: MultimodalModel, id: u32, offset: f32) -> MultimodalModel {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::{Tensor, TensorData};
    struct Init {
        path: Vec<String>,
        id: usize,
        offset: f32,
    }
    impl ModuleMapper for Init {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.join(".");
            if path != "head.weight" && path != "head.bias" {
                return param;
            }
            let shape = param.lazy_shape().to_vec();
            let device = param.lazy_device();
            let id = param.id;
            let mut v: Vec<f32> = param
                .val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            let cols = *shape.last().unwrap_or(&0);
            let words = ANSWER_SPECIALS.len()..cols;
            if self.id < cols && !words.is_empty() {
                let n = words.len() as f32;
                for row in v.chunks_mut(cols) {
                    let mean = row[words.clone()].iter().sum::<f32>() / n;
                    row[self.id] = if D == 1 { mean + self.offset } else { mean };
                }
            }
            let t = Tensor::<D>::from_data(TensorData::new(v, shape), &device);
            param.transform_for_load(t, id)
        }
    }
    let mut m = Init {
        path: Vec::new(),
        id: id as usize,
        offset,
    };
    model.map(&mut m)
}

/// Runs the stage: fine-tunes the model of `inputs.model` and commits the artifact at `output`.
pub fn run(
    config: &RlConfig,
    seed: u64,
    inputs: &RlInputs,
    output: &Path,
    hooks: Hooks,
) -> Result<Outcome> {
    let mut hooks = hooks;
    let custom = std::mem::take(&mut hooks.custom_rewards);
    let custom_names: Vec<String> = custom.iter().map(|c| c.name().to_owned()).collect();
    config.validate_with(&custom_names)?;
    let rewards = RewardSet::build(&config.rewards, &config.reward_params, custom)?;

    let start = load_start(&inputs.model, config.device)?;
    let data = Dataset::load(&inputs.data)?;
    data.check_compatible(start.model.config(), &inputs.data.samples)
        .map_err(|e| Error::Input {
            path: inputs.model.clone(),
            message: format!("the sft checkpoint does not match the data inputs: {e}"),
        })?;
    let train = data.split(Split::Train);
    let val = data.split(Split::Val);
    if train.is_empty() || val.is_empty() {
        return Err(Error::Input {
            path: inputs.data.samples.clone(),
            message: format!(
                "rl needs train and val samples, got {} train and {} val",
                train.len(),
                val.len()
            ),
        });
    }
    let abstention = config.rewards.iter().any(|r| r.name == "abstention");
    let (vocab, unsure_slot) = policy_vocab(&start.vocab, abstention);
    let mut answer_sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for &i in &train {
        let s = &data.samples[i];
        answer_sets
            .entry(s.qtype.clone())
            .or_default()
            .insert(normalize_answer(&s.answer));
    }
    let model_config = start.model.config().clone();
    let unsure_init = match config.unsure_init.filter(|_| unsure_slot) {
        Some(q) => Some((
            UNK,
            unsure_offset(&start.model, &data, &vocab, &train, q, config)?,
        )),
        None => None,
    };
    let start_model = match unsure_init {
        Some((id, offset)) => init_answer_row(start.model, id, offset),
        None => start.model,
    };
    let reference = start_model.reference();

    let key = format!(
        "{}|{seed}|{}|{}",
        serde_json::to_string(config)?,
        Artifact::open(&inputs.model)?.manifest().content_hash,
        inputs.data.content_key()?
    );
    let key = mmrl_artifact::hash::hash_bytes(key.as_bytes());

    let base: Device = config.device.device()?;
    let device = base.clone().autodiff();
    let model_file = Artifact::open(&inputs.model)?.file("model.bpk")?;
    let mut policy = load_model(model_config.init(&device, 0)?, &model_file)?;
    if let Some((id, offset)) = unsure_init {
        policy = init_answer_row(policy, id, offset);
    }
    let mut optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let ppo = config.algorithm == Algorithm::Ppo;
    let mut head = ValueHead::new(
        model_config.d_model,
        model_config.answer_vocab,
        model_config.max_answer_len + 1,
        config.value_hidden,
        &device,
        mix(seed, 9, 0),
    );
    let mut vopt = AdamWConfig::new().with_epsilon(1e-8).init();
    let mut schedule = Schedule {
        config: config.schedule.clone(),
        lr: config.lr,
        total_steps: config.optimizer_steps(),
        state: ScheduleState::default(),
    };
    let columns = step_columns(&rewards.names());
    let mut replay: Option<PrioritizedReplay<Stored>> = config.replay.enabled.then(|| {
        PrioritizedReplay::new(
            config.replay.capacity,
            config.replay.alpha,
            config.replay.eps,
        )
    });

    let ctx = Ctx {
        config,
        data: &data,
        vocab: &vocab,
        rewards: &rewards,
        answer_sets,
        reference: &reference,
        unsure: abstention
            .then(|| vocab.encode_answer(UNSURE, 1).first().copied())
            .flatten(),
    };

    let work = work_dir(output);
    let mut state = RlState {
        key: key.clone(),
        step: 0,
        optimizer_step: 0,
        cursor_epoch: 0,
        cursor_pos: 0,
        schedule: ScheduleState::default(),
        entropy_coef: config.entropy.coef,
        rows: Vec::new(),
        val: Vec::new(),
        replay: None,
        zero_groups: (0, 0),
    };
    let state_path = work.join("state.json");
    if state_path.is_file() {
        let text = std::fs::read(&state_path).map_err(io("reading", &state_path))?;
        let saved: RlState = serde_json::from_slice(&text)?;
        if saved.key == key {
            policy = load_model(policy, &work.join("model.bpk"))?;
            let ck = |p: PathBuf| {
                move |e: burn::store::RecordError| Error::Checkpoint {
                    path: p,
                    message: e.to_string(),
                }
            };
            optim = optim
                .load(work.join("optimizer.bpk"))
                .map_err(ck(work.join("optimizer.bpk")))?;
            if ppo {
                head = load_value_head(head, &work.join("value.bpk"))?;
                vopt = vopt
                    .load(work.join("value_optimizer.bpk"))
                    .map_err(ck(work.join("value_optimizer.bpk")))?;
            }
            if let (Some(r), Some(s)) = (replay.as_mut(), saved.replay.clone()) {
                *r = PrioritizedReplay::from_state(
                    config.replay.capacity,
                    config.replay.alpha,
                    config.replay.eps,
                    s,
                );
            }
            tracing::info!(step = saved.step, dir = %work.display(), "resuming from checkpoint");
            state = saved;
            schedule.state = state.schedule.clone();
        } else {
            tracing::warn!(dir = %work.display(), "checkpoint of another config, seed or inputs: starting over");
            std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
        }
    }

    if state.val.is_empty() {
        let m = evaluate(&reference, &data, &vocab, &val, config.eval_batch_size);
        tracing::info!(
            val_exact_match = format!("{:.4}", m.exact_match),
            "starting model"
        );
        state.val.push((0, m));
    }

    let prompts_per_step = config.batch_size / config.group_size;
    let mut replay_batch = SampleBatch::with_capacity(config.replay.batch);
    while state.step < config.steps {
        let step = state.step;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, 1, step));
        let epsilon = config.epsilon.at(step, config.steps);
        let temperature = config.temperature.at(step, config.steps);
        let decoding = Decoding::Sample {
            temperature: temperature as f32,
            top_k: config.top_k,
            epsilon,
        };
        let valid = policy.valid();

        // Rollouts, with dynamic sampling of fresh prompts for zero-variance groups.
        let prompts = next_prompts(&data, seed, &mut state, prompts_per_step);
        let mut got = rollouts(&valid, &ctx, &prompts, decoding, step, &mut rng)?;
        let (zero0, groups0) = (got.zero_groups, got.groups);
        if config.dynamic_sampling {
            let g = config.group_size;
            for _ in 0..config.dynamic_sampling_tries {
                let zero_idx: Vec<usize> = (0..got.groups)
                    .filter(|&k| {
                        let r = &got.rewards[k * g..(k + 1) * g];
                        r.iter().all(|x| (x - r[0]).abs() < 1e-12)
                    })
                    .collect();
                if zero_idx.is_empty() {
                    break;
                }
                let fresh = next_prompts(&data, seed, &mut state, zero_idx.len());
                let more = rollouts(&valid, &ctx, &fresh, decoding, step, &mut rng)?;
                for (j, &k) in zero_idx.iter().enumerate() {
                    let r = &more.rewards[j * g..(j + 1) * g];
                    if r.iter().all(|x| (x - r[0]).abs() < 1e-12) {
                        continue;
                    }
                    for t in 0..g {
                        got.rows[k * g + t] = more.rows[j * g + t].clone();
                        got.rewards[k * g + t] = more.rewards[j * g + t];
                        got.each[k * g + t] = more.each[j * g + t].clone();
                    }
                }
            }
        }
        state.zero_groups.0 += zero0 as u64;
        state.zero_groups.1 += groups0 as u64;

        // Advantages.
        let g = config.group_size;
        let seq_adv = match config.algorithm {
            Algorithm::Grpo => group_advantages(&got.rewards, g, config.advantage_scale).0,
            Algorithm::Rloo => rloo_advantages(&got.rewards, g, config.advantage_scale).0,
            Algorithm::Ppo => vec![0.0; got.rewards.len()],
        };
        let max_len = model_config.max_answer_len;
        let references: Vec<Vec<u32>> = got
            .rows
            .iter()
            .map(|r| vocab.encode_answer(&data.samples[r.item.0].answer, max_len))
            .collect();
        if ppo {
            let items: Vec<(usize, usize)> = got.rows.iter().map(|r| r.item).collect();
            let answers: Vec<Vec<u32>> = got.rows.iter().map(|r| r.tokens.clone()).collect();
            let values = head_values(&valid, &head.valid(), &ctx, &items, &answers);
            let mut all = Vec::new();
            for (k, row) in got.rows.iter_mut().enumerate() {
                let mut r = shaping(&row.tokens, &references[k], &config.shaping);
                if let Some(last) = r.last_mut() {
                    *last += got.rewards[k];
                }
                let v: Vec<f64> = values[k].iter().map(|&x| f64::from(x)).collect();
                let (adv, ret) = gae(&r, &v, config.gamma, config.gae_lambda);
                all.extend(adv.iter().copied());
                row.advantage = adv.first().copied().unwrap_or(0.0);
                row.advantages = adv.iter().map(|&a| a as f32).collect();
                row.returns = ret.iter().map(|&a| a as f32).collect();
                row.old_values = values[k].clone();
            }
            if config.advantage_scale != AdvantageScale::None && !all.is_empty() {
                let n = all.len() as f64;
                let mean = all.iter().sum::<f64>() / n;
                let std = (all.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt();
                for row in &mut got.rows {
                    for a in &mut row.advantages {
                        *a = ((f64::from(*a) - mean) / (std + 1e-8)) as f32;
                    }
                }
            }
        } else {
            for (k, row) in got.rows.iter_mut().enumerate() {
                let f = shaping(&row.tokens, &references[k], &config.shaping);
                // Per-token credit: the sequence advantage plus the shaping return-to-go.
                let mut to_go = 0.0;
                let mut adv = vec![0f32; f.len()];
                for t in (0..f.len()).rev() {
                    to_go += f[t];
                    adv[t] = (seq_adv[k] + to_go) as f32;
                }
                row.advantage = seq_adv[k];
                row.advantages = adv;
            }
        }

        // Replay: older rollouts by priority, then store this step's.
        let mut rows = got.rows.clone();
        let fresh_n = rows.len();
        if let Some(buf) = replay.as_mut() {
            if !buf.is_empty() {
                let beta = PrioritizedReplay::<Stored>::beta(
                    config.replay.beta0,
                    step,
                    if config.replay.beta_steps == 0 {
                        config.steps
                    } else {
                        config.replay.beta_steps
                    },
                );
                buf.sample_into(config.replay.batch, beta, &mut rng, &mut replay_batch);
                for (&slot, &w) in replay_batch.indices.iter().zip(&replay_batch.weights) {
                    if let Some(s) = buf.get(slot) {
                        rows.push(Row {
                            item: s.item,
                            tokens: s.tokens.clone(),
                            old_logp: s.old_logp.clone(),
                            ref_logp: s.ref_logp.clone(),
                            advantages: s.advantages.clone(),
                            advantage: s.advantage,
                            returns: Vec::new(),
                            old_values: Vec::new(),
                            is_weight: w,
                            replay_slot: Some(slot),
                        });
                    }
                }
            }
            for r in &got.rows {
                buf.push(Stored {
                    item: r.item,
                    tokens: r.tokens.clone(),
                    old_logp: r.old_logp.clone(),
                    ref_logp: r.ref_logp.clone(),
                    advantages: r.advantages.clone(),
                    advantage: r.advantage,
                });
            }
        }

        // Policy epochs over minibatches, gradient accumulation over micro-batches.
        let mut stats_sum = (0.0, 0.0, 0.0, 0.0); // kl, entropy, clip, tokens
        let mut grad_norm = 0.0;
        let mut vloss_sum = 0.0;
        let mut lr = schedule.lr(state.optimizer_step);
        let mut replay_ratio: BTreeMap<usize, f64> = BTreeMap::new();
        let mb_size = rows.len().div_ceil(config.minibatches);
        for _epoch in 0..config.policy_epochs {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.shuffle(&mut rng);
            for mb in order.chunks(mb_size) {
                let real_tokens: usize = mb.iter().map(|&k| rows[k].tokens.len() + 1).sum();
                let fresh_tokens: usize = mb
                    .iter()
                    .filter(|&&k| rows[k].replay_slot.is_none())
                    .map(|&k| rows[k].tokens.len() + 1)
                    .sum();
                let parts: Vec<&[usize]> = {
                    let n = config.grad_accum * config.shards;
                    mb.chunks(mb.len().div_ceil(n).max(1)).collect()
                };
                let settings = LossSettings {
                    clip_low: config.clip_low,
                    clip_high: config.clip_high,
                    beta: config.kl_beta,
                    entropy_coef: state.entropy_coef,
                    replay_ratio_clip: config.replay.ratio_clip,
                };
                // The parts' policy gradients are computed concurrently (data-parallel shards) and summed
                // in part order; what else each part yields is folded in below, in the same order.
                let (grads, outs) = sharded_grads(
                    &policy,
                    parts.len(),
                    threads(),
                    |policy, pi| {
                        let part = parts[pi];
                        let items: Vec<(usize, usize)> =
                            part.iter().map(|&k| rows[k].item).collect();
                        let answers: Vec<Vec<u32>> =
                            part.iter().map(|&k| rows[k].tokens.clone()).collect();
                        let (batch, _) = data.batch(&items, &vocab, &model_config, None);
                        let scores = policy.score(&batch, &answers, &mut Dropout::off());
                        let [nr, steps] = scores.token_logprobs.dims();
                        let mut ti = TokenInputs {
                            rows: nr,
                            steps,
                            old_logp: vec![0.0; nr * steps],
                            ref_logp: vec![0.0; nr * steps],
                            advantages: vec![0.0; nr * steps],
                            weights: vec![0.0; nr * steps],
                            replayed: vec![0.0; nr * steps],
                        };
                        let mut value = ValueTargets {
                            weights: vec![0f32; nr * steps],
                            old: vec![0f32; nr * steps],
                            returns: vec![0f32; nr * steps],
                        };
                        for (r, &k) in part.iter().enumerate() {
                            let row = &rows[k];
                            let n = row.old_logp.len().min(steps);
                            let w_row = match config.loss_aggregation {
                                LossAggregation::TokenMean => row.is_weight / real_tokens as f64,
                                LossAggregation::SequenceMean => {
                                    row.is_weight / (n as f64 * mb.len() as f64)
                                }
                            };
                            for t in 0..n {
                                let j = r * steps + t;
                                ti.old_logp[j] = row.old_logp[t];
                                ti.ref_logp[j] = row.ref_logp.get(t).copied().unwrap_or(0.0);
                                ti.advantages[j] = row.advantages.get(t).copied().unwrap_or(0.0);
                                ti.weights[j] = w_row as f32;
                                if row.replay_slot.is_some() {
                                    ti.replayed[j] = 1.0;
                                } else if ppo {
                                    value.weights[j] = 1.0 / fresh_tokens.max(1) as f32;
                                    value.old[j] = row.old_values.get(t).copied().unwrap_or(0.0);
                                    value.returns[j] = row.returns.get(t).copied().unwrap_or(0.0);
                                }
                            }
                        }
                        let lp_host: Vec<f32> = scores
                            .token_logprobs
                            .clone()
                            .into_data()
                            .try_into_vec::<f32>()
                            .unwrap_or_default();
                        let (loss, st) = policy_loss(
                            scores.token_logprobs,
                            scores.entropy,
                            &scores.mask,
                            &ti,
                            &settings,
                        );
                        let ratios: Vec<(usize, f64)> = part
                            .iter()
                            .enumerate()
                            .filter_map(|(r, &k)| {
                                let slot = rows[k].replay_slot?;
                                let n = rows[k].old_logp.len().min(steps);
                                let mean_ratio = (0..n)
                                    .map(|t| {
                                        f64::from(lp_host[r * steps + t] - rows[k].old_logp[t])
                                            .exp()
                                    })
                                    .sum::<f64>()
                                    / n.max(1) as f64;
                                Some((slot, mean_ratio))
                            })
                            .collect();
                        let lv = f64::from(loss.clone().into_scalar::<f32>());
                        if !lv.is_finite() {
                            return Err(Error::Diverged {
                                step: step + 1,
                                message: format!(
                                    "policy loss is {lv} at lr {lr:.3e}; lower lr or kl_beta, or raise grad_clip"
                                ),
                            });
                        }
                        Ok((loss, (st, ratios, batch, answers, steps, value)))
                    },
                )?;
                let mut vacc = GradientsAccumulator::<ValueHead>::new();
                for (st, ratios, batch, answers, steps, value) in outs {
                    stats_sum.0 += st.kl * st.tokens;
                    stats_sum.1 += st.entropy * st.tokens;
                    stats_sum.2 += st.clip_fraction * st.tokens;
                    stats_sum.3 += st.tokens;
                    replay_ratio.extend(ratios);
                    if ppo && fresh_tokens > 0 {
                        let enc = policy.encode(&batch, &mut Dropout::off());
                        let values = head.forward(enc.memory, &answers, steps);
                        let vl = value_loss(
                            values,
                            value.old,
                            value.returns,
                            value.weights,
                            config.value_clip,
                        );
                        vloss_sum += f64::from(vl.clone().into_scalar::<f32>());
                        let vg = GradientsParams::from_grads(vl.backward(), &head);
                        vacc.accumulate(&head, vg);
                    }
                }
                lr = schedule.lr(state.optimizer_step);
                let mut grads = grads;
                grad_norm = clip_global_norm(&policy, &mut grads, config.grad_clip);
                policy = optim.step(lr, policy, grads);
                if ppo && fresh_tokens > 0 {
                    let vgrads = vacc.grads();
                    head = vopt.step(config.value_lr, head, vgrads);
                }
                state.optimizer_step += 1;
            }
        }
        if let Some(buf) = replay.as_mut()
            && !replay_ratio.is_empty()
        {
            // New priority: the advantage magnitude the truncated ratio still lets through.
            let slots: Vec<usize> = replay_ratio.keys().copied().collect();
            let mags: Vec<f64> = slots
                .iter()
                .map(|&s| {
                    let a = buf.get(s).map_or(0.0, |x| x.advantage.abs());
                    a * replay_ratio[&s].min(config.replay.ratio_clip)
                })
                .collect();
            let mut b = SampleBatch::with_capacity(slots.len());
            b.indices.copy_from_slice(&slots);
            buf.update_priorities(&mut b, &mags);
        }

        // Logging.
        let tokens = stats_sum.3.max(1.0);
        let entropy = stats_sum.1 / tokens;
        let (rmean, rstd) = mean_std(got.rewards.iter().map(|&r| Some(r)));
        let mut row = vec![
            (step + 1) as f64,
            rmean,
            rstd,
            stats_sum.0 / tokens,
            entropy,
            state.entropy_coef,
            stats_sum.2 / tokens,
            epsilon,
            temperature,
            lr,
            grad_norm,
            if ppo { vloss_sum } else { f64::NAN },
            zero0 as f64 / groups0.max(1) as f64,
            (rows.len() - fresh_n) as f64,
            got.rows.iter().map(|r| r.tokens.len() as f64).sum::<f64>() / fresh_n.max(1) as f64,
            match ctx.unsure {
                Some(u) => {
                    // Sampled answers only: the `unsure_probes` slots are `unsure` by construction.
                    let sampled = g - config.unsure_probes;
                    let n = got
                        .rows
                        .iter()
                        .enumerate()
                        .filter(|(k, r)| k % g < sampled && r.tokens == [u])
                        .count();
                    n as f64 / (fresh_n / g * sampled).max(1) as f64
                }
                None => f64::NAN,
            },
        ];
        for j in 0..rewards.names().len() {
            let (m, s) = mean_std(got.each.iter().map(|e| e[j]));
            row.push(m);
            row.push(s);
        }
        if (step + 1).is_multiple_of(10) {
            tracing::info!(
                step = step + 1,
                reward = format!("{rmean:.3}"),
                kl = format!("{:.4}", row[3]),
                entropy = format!("{entropy:.3}"),
                clip_fraction = format!("{:.3}", row[6]),
                zero_variance = format!("{:.2}", row[12]),
                unsure = format!("{:.3}", row[15]),
                "step"
            );
        }
        state.rows.push(row);
        state.entropy_coef = config.entropy.adapt(state.entropy_coef, entropy);
        state.step += 1;

        let mut val_em = state.val.last().map(|(_, m)| m.exact_match);
        if state.step.is_multiple_of(config.eval_every) || state.step == config.steps {
            let m = evaluate(&policy.valid(), &data, &vocab, &val, config.eval_batch_size);
            tracing::info!(
                step = state.step,
                reward = format!("{rmean:.3}"),
                val_exact_match = format!("{:.4}", m.exact_match),
                "eval"
            );
            mmrl_artifact::trial::report_intermediate(state.step, m.exact_match);
            schedule.observe(m.exact_match);
            val_em = Some(m.exact_match);
            state.val.push((state.step, m));
        }
        if let Some(p) = hooks.progress.as_deref_mut() {
            p(Progress {
                step: state.step,
                total: config.steps,
                reward: rmean,
                val_exact_match: val_em,
            });
        }
        let stop_here = hooks.stop_after_step == Some(state.step);
        if stop_here
            || (config.checkpoint_every > 0 && state.step.is_multiple_of(config.checkpoint_every))
        {
            state.schedule = schedule.state.clone();
            state.replay = replay.as_ref().map(PrioritizedReplay::state);
            save_checkpoint(
                &work,
                &policy,
                &optim,
                ppo.then_some((&head, &vopt)),
                &state,
            )?;
        }
        if stop_here {
            return Ok(Outcome::Interrupted { step: state.step });
        }
    }

    // Commit the artifact.
    let final_metrics = state.val.last().map(|(_, m)| m.clone()).unwrap_or_default();
    let initial = state
        .val
        .first()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        seed: Some(seed),
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("model", &Artifact::open(&inputs.model)?);
    writer.input_artifact("samples", &Artifact::open(&inputs.data.samples)?);
    inputs.data.record_modalities(&mut writer)?;
    writer.fit_splits(&["train"]);
    let tmp = writer.tmp_dir().to_path_buf();
    policy
        .valid()
        .into_record()
        .save(tmp.join("model.bpk"))
        .map_err(|e| Error::Checkpoint {
            path: tmp.join("model.bpk"),
            message: e.to_string(),
        })?;
    writer.add_file("model.bpk", Role::State)?;
    writer.write_json("config.json", Role::State, &model_config)?;
    writer.write_json("vocab.json", Role::State, &vocab)?;
    let steps_batch = table(&columns, &state.rows)?;
    writer.write_table(
        "metrics_steps",
        Role::Report,
        steps_batch.schema(),
        &[steps_batch],
    )?;
    let val_cols: Vec<String> = [
        "step",
        "exact_match",
        "exact_match_multi_token",
        "numeric_closeness",
        "numeric_closeness_counting",
        "confident_wrong",
        "unsure",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let val_rows: Vec<Vec<f64>> = state
        .val
        .iter()
        .map(|(s, m)| {
            vec![
                *s as f64,
                m.exact_match,
                m.exact_match_multi_token,
                m.numeric_closeness,
                m.numeric_closeness_counting,
                m.confident_wrong,
                m.unsure,
            ]
        })
        .collect();
    let val_batch = table(&val_cols, &val_rows)?;
    writer.write_table(
        "metrics_val",
        Role::Report,
        val_batch.schema(),
        &[val_batch],
    )?;
    let last: Vec<f64> = state.rows.iter().rev().take(10).map(|r| r[1]).collect();
    let report = RlReport {
        val_exact_match: final_metrics.exact_match,
        algorithm: config.algorithm,
        initial,
        final_metrics,
        steps: state.step,
        optimizer_steps: state.optimizer_step,
        train_passes: state.rows.iter().map(|r| r[13]).sum::<f64>() as u64
            * config.policy_epochs as u64
            + state.step * (config.batch_size * config.policy_epochs) as u64,
        final_reward: last.iter().sum::<f64>() / last.len().max(1) as f64,
        zero_variance_fraction: state.zero_groups.0 as f64 / state.zero_groups.1.max(1) as f64,
        unsure_uses_unk_slot: unsure_slot,
        unsure_init_offset: unsure_init.map(|(_, o)| f64::from(o)),
        train_samples: train.len(),
        val_samples: val.len(),
    };
    writer.write_json("report.json", Role::Report, &report)?;
    writer.commit()?;
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
    }
    Ok(Outcome::Done(Box::new(report)))
}
