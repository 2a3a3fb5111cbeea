//! The rl stage's parameters (`[stages.rl.params]`), validated once before any compute.

use mmrl_model::schedule::{ScheduleConfig, ScheduleKind};
use mmrl_model::sft::DeviceKind;
use serde::{Deserialize, Serialize};

use crate::algo::{AdvantageScale, Algorithm, Decay, EntropyConfig, LossAggregation};
use crate::error::{Error, Result};
use crate::replay::ReplayConfig;
use crate::reward::{RewardParams, RewardSpec, ShapingConfig, validate_specs};

/// Parameters of the rl stage (`[stages.rl.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// `grpo`, `rloo`, `ppo`, or `rft` (rejection-sampling fine-tuning: cross-entropy on the sampled answers
    /// whose combined reward reaches `rft_min_reward`).
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
    /// `rft`: the combined reward at which a sampled answer is kept and trained on (1: the checker accepts it).
    pub rft_min_reward: f64,
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
            rewards: vec![RewardSpec::new("exact_match", 1.0)],
            reward_params: RewardParams::default(),
            shaping: ShapingConfig::default(),
            replay: ReplayConfig::default(),
            gamma: 1.0,
            gae_lambda: 0.95,
            value_clip: 0.2,
            value_lr: 1e-3,
            value_hidden: 64,
            rft_min_reward: 1.0,
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
        self.validate_batching()?;
        self.validate_optimizer()?;
        self.validate_exploration()?;
        self.validate_rewards(custom_rewards)?;
        self.validate_rest()
    }

    /// The batch shape: steps, rollouts, groups, epochs, minibatches, accumulation, shards.
    fn validate_batching(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(cfg_err("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(cfg_err("batch_size", "must be at least 1"));
        }
        // Group baselines need several answers per prompt; PPO's value head and RFT's filter do not.
        let min_group = if matches!(self.algorithm, Algorithm::Ppo | Algorithm::Rft) {
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
        Ok(())
    }

    /// Clipping, KL, learning rate, weight decay, gradient clipping and the schedule.
    fn validate_optimizer(&self) -> Result<()> {
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
        Ok(())
    }

    /// Epsilon, temperature, top-k and the entropy bonus.
    fn validate_exploration(&self) -> Result<()> {
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
        Ok(())
    }

    /// Rewards, abstention settings, reward parameters and shaping.
    fn validate_rewards(&self, custom_rewards: &[String]) -> Result<()> {
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
        Ok(())
    }

    /// Replay, PPO's value head, evaluation.
    fn validate_rest(&self) -> Result<()> {
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
        if !self.rft_min_reward.is_finite() {
            return Err(cfg_err(
                "rft_min_reward",
                format!("must be a finite number, got {}", self.rft_min_reward),
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
