//! The algorithms' maths: group-relative (GRPO) and leave-one-out (RLOO) advantages, GAE with a value head
//! (PPO), rejection sampling (RFT), the clipped surrogate with a k3 KL penalty and entropy bonus, and the
//! exploration schedules.
//!
//! Everything that is not a tensor op is a plain function over host vectors, so it is tested exactly;
//! [`policy_loss`] and [`value_loss`] build the differentiable losses from per-token host inputs.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData, activation, module as ops};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The RL algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Group-relative policy optimization: G answers per prompt, advantages relative to the group.
    Grpo,
    /// REINFORCE with the leave-one-out baseline of the other G-1 answers.
    Rloo,
    /// PPO with a value head and GAE over answer tokens.
    Ppo,
    /// Rejection-sampling fine-tuning: sample answers, keep those the rewards accept, cross-entropy on them.
    Rft,
}

/// How group advantages are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageScale {
    /// Divide by the group's reward std (GRPO as published).
    Group,
    /// Divide by the std of the whole batch's advantages.
    Batch,
    /// No scaling (Dr. GRPO).
    None,
}

/// How per-token losses are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// Sum over all tokens of the batch / number of tokens.
    TokenMean,
    /// Mean over sequences of each sequence's token mean.
    SequenceMean,
}

/// Shape of a decaying schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayKind {
    /// Straight line from `start` to `end`.
    Linear,
    /// Geometric: `start * (end / start)^t` (both positive).
    Exponential,
}

/// A value that moves from `start` to `end` over `steps` rollout steps, then stays (`[..epsilon]`,
/// `[..temperature]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decay {
    /// Value at step 0.
    pub start: f64,
    /// Value from `steps` on.
    pub end: f64,
    /// Curve.
    #[serde(default = "linear")]
    pub kind: DecayKind,
    /// Steps to reach `end` (0: the whole run).
    #[serde(default)]
    pub steps: u64,
}

fn linear() -> DecayKind {
    DecayKind::Linear
}

impl Decay {
    /// A constant.
    pub fn constant(v: f64) -> Self {
        Self {
            start: v,
            end: v,
            kind: DecayKind::Linear,
            steps: 0,
        }
    }

    /// The value at `step` of a run of `total` steps.
    pub fn at(&self, step: u64, total: u64) -> f64 {
        let span = if self.steps == 0 { total } else { self.steps }.max(1);
        let t = (step as f64 / span as f64).min(1.0);
        match self.kind {
            DecayKind::Linear => self.start + (self.end - self.start) * t,
            DecayKind::Exponential => self.start * (self.end / self.start).powf(t),
        }
    }

    /// Checks that both ends lie in `range` (and are positive for an exponential curve).
    pub fn validate(&self, field: &str, lo: f64, hi: f64) -> Result<()> {
        for (end, v) in [("start", self.start), ("end", self.end)] {
            if !(v >= lo && v <= hi) {
                return Err(Error::config(
                    format!("{field}.{end}"),
                    format!("must be in [{lo}, {hi}], got {v}"),
                ));
            }
        }
        if self.kind == DecayKind::Exponential && !(self.start > 0.0 && self.end > 0.0) {
            return Err(Error::config(
                format!("{field}.kind"),
                "exponential decay needs start and end above 0; use linear to reach 0",
            ));
        }
        Ok(())
    }
}

/// The entropy bonus (`[stages.rl.params.entropy]`): a fixed coefficient, or one adapted towards a target
/// entropy (raised when the policy's mean token entropy is below the target, lowered above it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntropyConfig {
    /// Coefficient at step 0.
    pub coef: f64,
    /// Target mean token entropy (nats); `None`: fixed coefficient.
    pub target: Option<f64>,
    /// Multiplicative adaptation rate: `coef *= exp(rate * (target - entropy))`.
    pub rate: f64,
    /// Bounds of the adapted coefficient.
    pub min_coef: f64,
    /// Upper bound of the adapted coefficient.
    pub max_coef: f64,
}

impl Default for EntropyConfig {
    fn default() -> Self {
        Self {
            coef: 0.0,
            target: None,
            rate: 0.5,
            min_coef: 1e-4,
            max_coef: 0.1,
        }
    }
}

impl EntropyConfig {
    /// The next coefficient after observing `entropy`.
    pub fn adapt(&self, coef: f64, entropy: f64) -> f64 {
        match self.target {
            None => coef,
            Some(t) if entropy.is_finite() => (coef.max(self.min_coef)
                * (self.rate * (t - entropy)).exp())
            .clamp(self.min_coef, self.max_coef),
            Some(_) => coef,
        }
    }
}

/// Group-relative advantages of `rewards` (consecutive groups of `group`): reward minus the group mean,
/// scaled per `scale`; also the number of groups whose rewards all tie (they carry no signal).
pub fn group_advantages(rewards: &[f64], group: usize, scale: AdvantageScale) -> (Vec<f64>, usize) {
    let mut adv = Vec::with_capacity(rewards.len());
    let mut zero = 0;
    for g in rewards.chunks(group) {
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let std = (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        if std < 1e-12 {
            zero += 1;
        }
        for r in g {
            adv.push(match scale {
                AdvantageScale::Group => (r - mean) / (std + 1e-4),
                _ => r - mean,
            });
        }
    }
    if scale == AdvantageScale::Batch {
        normalize_std(&mut adv);
    }
    (adv, zero)
}

/// Leave-one-out advantages: `r_i - mean_{j != i} r_j` within each group, scaled per `scale` (group
/// scaling divides by the group's std as GRPO does).
pub fn rloo_advantages(rewards: &[f64], group: usize, scale: AdvantageScale) -> (Vec<f64>, usize) {
    let mut adv = Vec::with_capacity(rewards.len());
    let mut zero = 0;
    for g in rewards.chunks(group) {
        let n = g.len() as f64;
        let sum: f64 = g.iter().sum();
        let mean = sum / n;
        let std = (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        if std < 1e-12 {
            zero += 1;
        }
        for r in g {
            let a = if g.len() > 1 {
                r - (sum - r) / (n - 1.0)
            } else {
                0.0
            };
            adv.push(match scale {
                AdvantageScale::Group => a / (std + 1e-4),
                _ => a,
            });
        }
    }
    if scale == AdvantageScale::Batch {
        normalize_std(&mut adv);
    }
    (adv, zero)
}

/// Rejection sampling: advantage 1 for the rollouts whose reward reaches `min_reward` (kept and trained on with
/// cross-entropy: with one policy epoch the surrogate's gradient is exactly that of `log pi`), 0 for the others
/// (left out of the loss); also the number of groups with nothing kept.
pub fn rft_advantages(rewards: &[f64], group: usize, min_reward: f64) -> (Vec<f64>, usize) {
    let adv: Vec<f64> = rewards
        .iter()
        .map(|&r| f64::from(u8::from(r >= min_reward - 1e-12)))
        .collect();
    let empty = adv
        .chunks(group.max(1))
        .filter(|g| g.iter().all(|&a| a == 0.0))
        .count();
    (adv, empty)
}

fn normalize_std(v: &mut [f64]) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt();
    for a in v.iter_mut() {
        *a /= std + 1e-8;
    }
}

/// Generalized advantage estimation over one answer: `rewards[t]` and `values[t]` per token (the last is
/// `<eos>`, after which the episode ends with value 0). Returns `(advantages, returns)`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        last = delta + gamma * lambda * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Per-token host inputs of one (micro-)batch of rollouts, all `[rows * steps]` row-major.
#[derive(Debug, Clone)]
pub struct TokenInputs {
    /// Rows.
    pub rows: usize,
    /// Steps (answer tokens + `<eos>`, padded).
    pub steps: usize,
    /// Behaviour log-probabilities (the policy that generated the rollout).
    pub old_logp: Vec<f32>,
    /// Reference model log-probabilities (for the KL term).
    pub ref_logp: Vec<f32>,
    /// Advantage of each token.
    pub advantages: Vec<f32>,
    /// Loss weight of each token: aggregation normalizer times the row's importance weight; 0 on padding.
    pub weights: Vec<f32>,
    /// 1 for replayed rows (truncated importance ratio instead of the clipped surrogate).
    pub replayed: Vec<f32>,
}

/// The clipping and penalty settings of [`policy_loss`].
#[derive(Debug, Clone, Copy)]
pub struct LossSettings {
    /// Lower clip: ratio >= 1 - clip_low.
    pub clip_low: f64,
    /// Upper clip: ratio <= 1 + clip_high.
    pub clip_high: f64,
    /// KL coefficient (0: no KL term).
    pub beta: f64,
    /// Entropy bonus coefficient.
    pub entropy_coef: f64,
    /// Truncation of the importance ratio of replayed rows.
    pub replay_ratio_clip: f64,
}

/// Statistics of one loss evaluation (host side, weighted like the loss).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    /// The loss value.
    pub loss: f64,
    /// Mean k3 KL to the reference over real tokens.
    pub kl: f64,
    /// Mean token entropy over real tokens.
    pub entropy: f64,
    /// Fraction of real tokens whose ratio lies outside the clip range.
    pub clip_fraction: f64,
    /// Real tokens.
    pub tokens: f64,
}

fn tensor2(values: Vec<f32>, rows: usize, steps: usize, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(values, [rows, steps]), device)
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap_or_default()
}

/// The policy loss of a batch: `-sum_t w_t [ min(rho A, clip(rho, 1-l, 1+h) A) - beta min(k3, 10) + c H ]` for
/// fresh rows, with `min(rho, c_r) A log pi` (truncated importance ratio, no gradient through the ratio)
/// in place of the surrogate for replayed rows. `logp`, `entropy` and `mask` come from
/// [`mmrl_model::MultimodalModel::score`].
pub fn policy_loss(
    logp: Tensor<2>,
    entropy: Tensor<2>,
    mask: &Tensor<2>,
    inputs: &TokenInputs,
    s: &LossSettings,
) -> (Tensor<1>, LossStats) {
    let device = logp.device();
    let (r, n) = (inputs.rows, inputs.steps);
    let old = tensor2(inputs.old_logp.clone(), r, n, &device);
    let reference = tensor2(inputs.ref_logp.clone(), r, n, &device);
    let adv = tensor2(inputs.advantages.clone(), r, n, &device);
    let w = tensor2(inputs.weights.clone(), r, n, &device);
    let replayed = tensor2(inputs.replayed.clone(), r, n, &device);
    let fresh = replayed.clone().neg().add_scalar(1.0);

    let ratio = (logp.clone() - old).exp();
    let surr = (ratio.clone() * adv.clone())
        .min_pair(ratio.clone().clamp(1.0 - s.clip_low, 1.0 + s.clip_high) * adv.clone());
    let truncated = ratio.clone().detach().clamp_max(s.replay_ratio_clip) * adv * logp.clone();
    let objective = surr * fresh + truncated * replayed;
    let mut per_token = objective + entropy.clone().mul_scalar(s.entropy_coef);
    let log_r = reference - logp;
    // k3 = e^x - x - 1 is unbounded when the policy gives a token almost no mass the reference likes (tokens
    // drawn by epsilon exploration are off-policy): clamped per token at 10 as verl does.
    let kl = (log_r.clone().exp() - log_r - 1.0).clamp_max(10.0);
    if s.beta > 0.0 {
        per_token = per_token - kl.clone().mul_scalar(s.beta);
    }
    let loss = -(per_token * w).sum();

    // Host statistics over real tokens.
    let m = host(mask.clone());
    let (kl_h, ent_h, ratio_h) = (
        host(kl.detach()),
        host(entropy.detach()),
        host(ratio.detach()),
    );
    let mut st = LossStats::default();
    for k in 0..m.len() {
        if m[k] > 0.0 {
            st.tokens += 1.0;
            st.kl += f64::from(kl_h[k]);
            st.entropy += f64::from(ent_h[k]);
            let q = f64::from(ratio_h[k]);
            if q < 1.0 - s.clip_low || q > 1.0 + s.clip_high {
                st.clip_fraction += 1.0;
            }
        }
    }
    if st.tokens > 0.0 {
        st.kl /= st.tokens;
        st.entropy /= st.tokens;
        st.clip_fraction /= st.tokens;
    }
    (loss, st)
}

/// The value head of PPO: `V(s_t) = w2 . tanh(W1 [memory_fusion ; onehot(prev token) ; onehot(t)])`.
/// It reads the encoder's fusion token (detached: value gradients never reach the policy) and the answer
/// prefix, so it predicts a value per answer token.
#[derive(Module, Debug)]
pub struct ValueHead {
    w1: Param<Tensor<2>>,
    b1: Param<Tensor<1>>,
    w2: Param<Tensor<2>>,
    b2: Param<Tensor<1>>,
    vocab: usize,
    positions: usize,
}

impl ValueHead {
    /// A head for width `d`, `vocab` answer tokens and `positions` answer steps; parameters from `seed`.
    pub fn new(
        d: usize,
        vocab: usize,
        positions: usize,
        hidden: usize,
        device: &Device,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d_in = d + vocab + positions;
        // Ids far from the policy's (which count up from 1), so the two modules never share a gradient slot.
        let mut next = 1u64 << 40;
        let mut param = |values: Vec<f32>, shape: Vec<usize>| {
            next += 1;
            let t = Tensor::<2>::from_data(TensorData::new(values, shape.clone()), device);
            let (_, v, mapper) = Param::from_tensor(t).consume();
            Param::from_mapped_value(ParamId::from(next), v, mapper)
        };
        let mut uniform = |n: usize, bound: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
        };
        let b = (6.0 / (d_in + hidden) as f32).sqrt();
        let w1 = param(uniform(d_in * hidden, b), vec![d_in, hidden]);
        let w2 = param(uniform(hidden, 0.01), vec![hidden, 1]);
        let bias = |n: usize, id: u64| {
            let t = Tensor::<1>::from_data(TensorData::new(vec![0f32; n], [n]), device);
            let (_, v, mapper) = Param::from_tensor(t).consume();
            Param::from_mapped_value(ParamId::from(id), v, mapper)
        };
        Self {
            w1,
            b1: bias(hidden, (1u64 << 40) + 100),
            w2,
            b2: bias(1, (1u64 << 40) + 101),
            vocab,
            positions,
        }
    }

    /// Values `[rows, steps]` of each answer prefix: `memory` is the encoder output `[rows, tokens, d]`
    /// (its first token, the fusion token, is read), `answers` the answer token ids per row.
    pub fn forward(&self, memory: Tensor<3>, answers: &[Vec<u32>], steps: usize) -> Tensor<2> {
        let [rows, _, d] = memory.dims();
        let device = memory.device();
        let fusion = memory.narrow(1, 0, 1).detach().expand([rows, steps, d]);
        let f = self.vocab + self.positions;
        let mut feats = vec![0f32; rows * steps * f];
        for (i, a) in answers.iter().enumerate() {
            for t in 0..steps {
                let prev = if t == 0 {
                    mmrl_model::vocab::BOS as usize
                } else {
                    a.get(t - 1).copied().unwrap_or(mmrl_model::vocab::PAD) as usize
                };
                let base = (i * steps + t) * f;
                feats[base + prev.min(self.vocab - 1)] = 1.0;
                feats[base + self.vocab + t.min(self.positions - 1)] = 1.0;
            }
        }
        let feats = Tensor::<3>::from_data(TensorData::new(feats, [rows, steps, f]), &device);
        let x = Tensor::cat(vec![fusion, feats], 2);
        let h = activation::tanh(ops::linear(x, self.w1.val(), Some(self.b1.val())));
        ops::linear(h, self.w2.val(), Some(self.b2.val())).reshape([rows, steps])
    }
}

/// Clipped value loss `0.5 * sum_t w_t max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`.
pub fn value_loss(
    values: Tensor<2>,
    old_values: Vec<f32>,
    returns: Vec<f32>,
    weights: Vec<f32>,
    clip: f64,
) -> Tensor<1> {
    let [r, n] = values.dims();
    let device = values.device();
    let old = tensor2(old_values, r, n, &device);
    let ret = tensor2(returns, r, n, &device);
    let w = tensor2(weights, r, n, &device);
    let unclipped = (values.clone() - ret.clone()).powi_scalar(2);
    let clipped = (old.clone() + (values - old).clamp(-clip, clip) - ret).powi_scalar(2);
    (unclipped.max_pair(clipped) * w).sum().mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn group_advantages_per_scaling() {
        let r = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5];
        let (a, zero) = group_advantages(&r, 2, AdvantageScale::None);
        close(&a, &[0.5, -0.5, -0.5, 0.5, 0.0, 0.0]);
        assert_eq!(zero, 1);
        let (a, _) = group_advantages(&r, 2, AdvantageScale::Group);
        close(&a, &[1.0, -1.0, -1.0, 1.0, 0.0, 0.0]);
        let (a, _) = group_advantages(&r, 3, AdvantageScale::Batch);
        let std = (a.iter().map(|x| x * x).sum::<f64>() / 6.0).sqrt();
        assert!((std - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rloo_uses_the_others_mean() {
        let (a, zero) = rloo_advantages(&[1.0, 0.0, 0.0, 0.0], 4, AdvantageScale::None);
        close(&a, &[1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0]);
        assert_eq!(zero, 0);
        assert_eq!(rloo_advantages(&[2.0, 2.0], 2, AdvantageScale::None).1, 1);
    }

    #[test]
    fn rft_keeps_the_answers_that_reach_the_threshold() {
        let (a, empty) = rft_advantages(&[1.0, 0.0, 0.0, 0.0, 2.0, 1.0], 2, 1.0);
        close(&a, &[1.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(empty, 1);
        assert_eq!(rft_advantages(&[0.4, 0.6], 2, 0.5).0, [0.0, 1.0]);
    }

    #[test]
    fn gae_matches_hand_computation() {
        // Two tokens, terminal reward 1 on the last; V = [0.5, 0.2].
        let (adv, ret) = gae(&[0.0, 1.0], &[0.5, 0.2], 1.0, 0.5);
        // delta1 = 1 - 0.2 = 0.8; delta0 = 0 + 0.2 - 0.5 = -0.3; A0 = -0.3 + 0.5 * 0.8 = 0.1.
        close(&adv, &[0.1, 0.8]);
        close(&ret, &[0.6, 1.0]);
        // lambda 1, gamma 1: returns are the reward-to-go.
        let (_, ret) = gae(&[0.1, 0.2, 0.3], &[9.0, 9.0, 9.0], 1.0, 1.0);
        close(&ret, &[0.6, 0.5, 0.3]);
    }

    #[test]
    fn decays_and_entropy_adaptation() {
        let lin = Decay {
            start: 0.2,
            end: 0.0,
            kind: DecayKind::Linear,
            steps: 10,
        };
        assert!((lin.at(5, 100) - 0.1).abs() < 1e-12);
        assert_eq!(lin.at(50, 100), 0.0);
        let exp = Decay {
            start: 1.0,
            end: 0.01,
            kind: DecayKind::Exponential,
            steps: 0,
        };
        assert!((exp.at(50, 100) - 0.1).abs() < 1e-12);
        assert!(exp.validate("epsilon", 0.0, 1.0).is_ok());
        let bad = Decay { end: 0.0, ..exp };
        assert!(
            bad.validate("epsilon", 0.0, 1.0)
                .unwrap_err()
                .to_string()
                .contains("epsilon.kind")
        );
        let e = EntropyConfig {
            coef: 0.01,
            target: Some(1.0),
            ..Default::default()
        };
        assert!(e.adapt(0.01, 0.5) > 0.01, "below target: raise");
        assert!(e.adapt(0.01, 1.5) < 0.01, "above target: lower");
        assert_eq!(EntropyConfig::default().adapt(0.02, 0.0), 0.02);
    }

    #[test]
    fn policy_loss_values_and_clip_statistics() {
        let device = Device::flex();
        // One row, two real tokens and one pad; ratios e^0.5 (clipped above 1.2) and 1.
        let logp = tensor2(vec![-0.5, -1.0, 0.0], 1, 3, &device);
        let entropy = tensor2(vec![0.3, 0.1, 0.0], 1, 3, &device);
        let mask = tensor2(vec![1.0, 1.0, 0.0], 1, 3, &device);
        let inputs = TokenInputs {
            rows: 1,
            steps: 3,
            old_logp: vec![-1.0, -1.0, 0.0],
            ref_logp: vec![-0.5, -1.0, 0.0],
            advantages: vec![2.0, 2.0, 0.0],
            weights: vec![0.5, 0.5, 0.0],
            replayed: vec![0.0; 3],
        };
        let s = LossSettings {
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.1,
            entropy_coef: 0.0,
            replay_ratio_clip: 1.0,
        };
        let (loss, st) = policy_loss(logp, entropy, &mask, &inputs, &s);
        // Surrogates: min(e^0.5 * 2, 1.2 * 2) = 2.4 and 2; KL 0 (logp == ref); loss = -(0.5*2.4 + 0.5*2).
        let v = f64::from(loss.into_scalar::<f32>());
        assert!((v + 2.2).abs() < 1e-5, "{v}");
        assert_eq!(st.clip_fraction, 0.5);
        assert!(st.kl.abs() < 1e-7);
        assert!((st.entropy - 0.2).abs() < 1e-6);
    }

    #[test]
    fn value_loss_clips_towards_the_pessimistic_side() {
        let device = Device::flex();
        let v = tensor2(vec![1.0], 1, 1, &device);
        // V_old 0, clip 0.2: clipped V = 0.2; R = 1: max((1-1)^2, (0.2-1)^2) = 0.64; * 0.5.
        let l = value_loss(v, vec![0.0], vec![1.0], vec![1.0], 0.2);
        assert!((f64::from(l.into_scalar::<f32>()) - 0.32).abs() < 1e-6);
    }
}
