//! Advantages and the update (TRL's `compute_loss` and its optimizer step): per-token advantages of each
//! algorithm, prioritized replay of earlier rollouts, then `policy_epochs x minibatches` optimizer steps whose
//! micro-batches run as data-parallel shards. Each shard encodes its rows once: the policy's log-probabilities
//! and PPO's value head read the same encoder output.

use std::collections::BTreeMap;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use mmrl_model::parallel::{sharded_grads, threads};
use mmrl_model::schedule::Schedule;
use mmrl_model::sft::clip_global_norm;
use mmrl_model::{Dropout, MultimodalModel};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::algo::{
    AdvantageScale, Algorithm, LossAggregation, LossSettings, LossStats, TokenInputs, ValueHead,
    gae, group_advantages, policy_loss, rft_advantages, rloo_advantages, value_loss,
};
use crate::checkpoint::{RlState, Stored, Trainable};
use crate::error::{Error, Result};
use crate::replay::{PrioritizedReplay, SampleBatch};
use crate::reward::shaping;
use crate::rollout::{Env, Gathered, Rollout, head_values};

/// Sets each fresh rollout's per-token advantages: GRPO group-relative, RLOO leave-one-out, RFT 1 for kept
/// answers (the rest get loss weight 0), each plus the shaping return-to-go; PPO GAE over the value head's
/// values (with the shaping rewards on the tokens and the reward on the last).
pub(crate) fn compute_advantages(
    env: &Env,
    got: &mut Gathered,
    policy: &MultimodalModel,
    head: &ValueHead,
) {
    let c = env.config;
    let max_len = env.model_config.max_answer_len;
    // The shaping potential needs the demonstration; an unlabeled row has none.
    let references: Vec<Vec<u32>> = got
        .rows
        .iter()
        .map(|r| {
            let s = &env.data.samples[r.item.0];
            if s.labeled {
                env.vocab.encode_answer(&s.answer, max_len)
            } else {
                Vec::new()
            }
        })
        .collect();
    let g = c.group_size;
    let seq_adv = match c.algorithm {
        Algorithm::Grpo => group_advantages(&got.rewards, g, c.advantage_scale).0,
        Algorithm::Rloo => rloo_advantages(&got.rewards, g, c.advantage_scale).0,
        Algorithm::Rft => rft_advantages(&got.rewards, g, c.rft_min_reward).0,
        Algorithm::Ppo => return gae_advantages(env, got, policy, head, &references),
    };
    for (k, row) in got.rows.iter_mut().enumerate() {
        let f = shaping(&row.tokens, &references[k], &c.shaping);
        // Per-token credit: the sequence advantage plus the shaping return-to-go.
        let mut to_go = 0.0;
        let mut adv = vec![0f32; f.len()];
        for t in (0..f.len()).rev() {
            to_go += f[t];
            adv[t] = (seq_adv[k] + to_go) as f32;
        }
        row.advantage = seq_adv[k];
        row.advantages = adv;
        if c.algorithm == Algorithm::Rft && seq_adv[k] == 0.0 {
            row.is_weight = 0.0;
        }
    }
}

/// PPO: GAE over each answer's tokens with the value head's values at rollout time; advantages normalized over
/// the batch unless `advantage_scale = "none"`.
fn gae_advantages(
    env: &Env,
    got: &mut Gathered,
    policy: &MultimodalModel,
    head: &ValueHead,
    references: &[Vec<u32>],
) {
    let c = env.config;
    let items: Vec<(usize, usize)> = got.rows.iter().map(|r| r.item).collect();
    let answers: Vec<Vec<u32>> = got.rows.iter().map(|r| r.tokens.clone()).collect();
    let values = head_values(policy, head, env, &items, &answers);
    let mut all = Vec::new();
    for (k, row) in got.rows.iter_mut().enumerate() {
        let mut r = shaping(&row.tokens, &references[k], &c.shaping);
        if let Some(last) = r.last_mut() {
            *last += got.rewards[k];
        }
        let v: Vec<f64> = values[k].iter().map(|&x| f64::from(x)).collect();
        let (adv, ret) = gae(&r, &v, c.gamma, c.gae_lambda);
        all.extend(adv.iter().copied());
        row.advantage = adv.first().copied().unwrap_or(0.0);
        row.advantages = adv.iter().map(|&a| a as f32).collect();
        row.returns = ret.iter().map(|&a| a as f32).collect();
        row.old_values = values[k].clone();
    }
    if c.advantage_scale != AdvantageScale::None && !all.is_empty() {
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let std = (all.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt();
        for row in &mut got.rows {
            for a in &mut row.advantages {
                *a = ((f64::from(*a) - mean) / (std + 1e-8)) as f32;
            }
        }
    }
}

/// The rows to train on: this step's rollouts, then earlier ones sampled from the replay buffer by priority
/// (importance-weighted); this step's rollouts are then stored.
pub(crate) fn with_replay(
    env: &Env,
    got: &Gathered,
    replay: Option<&mut PrioritizedReplay<Stored>>,
    step: u64,
    rng: &mut ChaCha8Rng,
) -> Vec<Rollout> {
    let mut rows = got.rows.clone();
    let Some(buf) = replay else {
        return rows;
    };
    let c = &env.config.replay;
    if !buf.is_empty() {
        let span = if c.beta_steps == 0 {
            env.config.steps
        } else {
            c.beta_steps
        };
        let beta = PrioritizedReplay::<Stored>::beta(c.beta0, step, span);
        let mut batch = SampleBatch::with_capacity(c.batch);
        buf.sample_into(c.batch, beta, rng, &mut batch);
        for (&slot, &w) in batch.indices.iter().zip(&batch.weights) {
            if let Some(s) = buf.get(slot) {
                rows.push(Rollout {
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
    rows
}

/// What the update of one step measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UpdateStats {
    /// Token-weighted sums of KL, entropy and clip fraction, and the token count.
    pub kl: f64,
    pub entropy: f64,
    pub clip: f64,
    pub tokens: f64,
    pub grad_norm: f64,
    pub value_loss: f64,
    pub lr: f64,
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

/// What one shard of a micro-batch hands back besides its policy gradient.
struct PartOut {
    stats: LossStats,
    /// (replay slot, mean ratio) of its replayed rows.
    ratios: Vec<(usize, f64)>,
    /// PPO: the encoder output (detached) the value head reads, the answers and their padded length.
    memory: Option<(Tensor<3>, Vec<Vec<u32>>, usize, ValueTargets)>,
}

/// The loss normalization of a minibatch: the tokens that carry weight (token mean), or the rows (sequence
/// mean), and the fresh tokens PPO's value loss averages over.
struct Norms {
    tokens: usize,
    rows: usize,
    fresh_tokens: usize,
}

impl Norms {
    fn of(rows: &[Rollout], mb: &[usize]) -> Self {
        let weighted = || mb.iter().filter(|&&k| rows[k].is_weight > 0.0);
        Self {
            tokens: weighted().map(|&k| rows[k].tokens.len() + 1).sum(),
            rows: weighted().count(),
            fresh_tokens: mb
                .iter()
                .filter(|&&k| rows[k].replay_slot.is_none())
                .map(|&k| rows[k].tokens.len() + 1)
                .sum(),
        }
    }
}

/// The host inputs of one shard's rows: per-token behaviour and reference log-probabilities, advantages, loss
/// weights, replay flags and PPO's value targets, `[rows * steps]`.
fn token_inputs(
    env: &Env,
    rows: &[Rollout],
    part: &[usize],
    steps: usize,
    norms: &Norms,
) -> (TokenInputs, ValueTargets) {
    let nr = part.len();
    let ppo = env.config.algorithm == Algorithm::Ppo;
    let zeros = || vec![0f32; nr * steps];
    let mut ti = TokenInputs {
        rows: nr,
        steps,
        old_logp: zeros(),
        ref_logp: zeros(),
        advantages: zeros(),
        weights: zeros(),
        replayed: zeros(),
    };
    let mut value = ValueTargets {
        weights: zeros(),
        old: zeros(),
        returns: zeros(),
    };
    for (r, &k) in part.iter().enumerate() {
        let row = &rows[k];
        let n = row.old_logp.len().min(steps);
        let w_row = match env.config.loss_aggregation {
            LossAggregation::TokenMean => row.is_weight / norms.tokens.max(1) as f64,
            LossAggregation::SequenceMean => row.is_weight / (n as f64 * norms.rows.max(1) as f64),
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
                value.weights[j] = 1.0 / norms.fresh_tokens.max(1) as f32;
                value.old[j] = row.old_values.get(t).copied().unwrap_or(0.0);
                value.returns[j] = row.returns.get(t).copied().unwrap_or(0.0);
            }
        }
    }
    (ti, value)
}

/// The mean ratio `pi / behaviour` over each replayed row's tokens, by replay slot.
fn replay_ratios(rows: &[Rollout], part: &[usize], lp: &[f32], steps: usize) -> Vec<(usize, f64)> {
    part.iter()
        .enumerate()
        .filter_map(|(r, &k)| {
            let slot = rows[k].replay_slot?;
            let n = rows[k].old_logp.len().min(steps);
            let mean = (0..n)
                .map(|t| f64::from(lp[r * steps + t] - rows[k].old_logp[t]).exp())
                .sum::<f64>()
                / n.max(1) as f64;
            Some((slot, mean))
        })
        .collect()
}

/// The policy loss of one shard (one encoder pass), with what the step logs and PPO's value head needs.
fn part_loss(
    env: &Env,
    policy: &MultimodalModel,
    rows: &[Rollout],
    part: &[usize],
    norms: &Norms,
    settings: &LossSettings,
) -> (Tensor<1>, PartOut) {
    let items: Vec<(usize, usize)> = part.iter().map(|&k| rows[k].item).collect();
    let answers: Vec<Vec<u32>> = part.iter().map(|&k| rows[k].tokens.clone()).collect();
    let (batch, _) = env.data.batch(&items, env.vocab, &env.model_config, None);
    let enc = policy.encode(&batch, &mut Dropout::off());
    let scores = policy.score_encoded(&enc, &answers, &mut Dropout::off());
    let [_, steps] = scores.token_logprobs.dims();
    let (ti, value) = token_inputs(env, rows, part, steps, norms);
    let ratios = if part.iter().any(|&k| rows[k].replay_slot.is_some()) {
        let lp: Vec<f32> = scores
            .token_logprobs
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        replay_ratios(rows, part, &lp, steps)
    } else {
        Vec::new()
    };
    let (loss, stats) = policy_loss(
        scores.token_logprobs,
        scores.entropy,
        &scores.mask,
        &ti,
        settings,
    );
    let memory = (env.config.algorithm == Algorithm::Ppo)
        .then(|| (enc.memory.detach(), answers, steps, value));
    (
        loss,
        PartOut {
            stats,
            ratios,
            memory,
        },
    )
}

/// What every minibatch step of one rollout step shares.
struct StepSettings {
    loss: LossSettings,
    lr: f64,
    /// The rollout step (for error messages).
    step: u64,
}

/// One optimizer step on the minibatch `mb` of `rows`: its micro-batches' shards run concurrently, their
/// gradients summed in order; PPO's value head steps on the same encoder outputs.
fn minibatch_step(
    env: &Env,
    t: &mut Trainable,
    rows: &[Rollout],
    mb: &[usize],
    s: &StepSettings,
    stats: &mut UpdateStats,
    replay_ratio: &mut BTreeMap<usize, f64>,
) -> Result<()> {
    let c = env.config;
    let (settings, lr, step) = (&s.loss, s.lr, s.step);
    let norms = Norms::of(rows, mb);
    if norms.tokens == 0 && norms.fresh_tokens == 0 {
        return Ok(()); // nothing carries weight (RFT kept no answer): no step, no momentum drift
    }
    let n = c.grad_accum * c.shards;
    let parts: Vec<&[usize]> = mb.chunks(mb.len().div_ceil(n).max(1)).collect();
    let (grads, outs) = sharded_grads(&t.policy, parts.len(), threads(), |policy, pi| {
        let (loss, out) = part_loss(env, policy, rows, parts[pi], &norms, settings);
        let lv = f64::from(loss.clone().into_scalar::<f32>());
        if !lv.is_finite() {
            return Err(Error::Diverged {
                step: step + 1,
                message: format!(
                    "policy loss is {lv} at lr {lr:.3e}; lower lr or kl_beta, or raise grad_clip"
                ),
            });
        }
        Ok((loss, out))
    })?;
    let mut vacc = GradientsAccumulator::<ValueHead>::new();
    let mut value_steps = 0;
    for out in outs {
        let st = out.stats;
        stats.kl += st.kl * st.tokens;
        stats.entropy += st.entropy * st.tokens;
        stats.clip += st.clip_fraction * st.tokens;
        stats.tokens += st.tokens;
        replay_ratio.extend(out.ratios);
        if let Some((memory, answers, steps, v)) = out.memory.filter(|_| norms.fresh_tokens > 0) {
            let values = t.head.forward(memory, &answers, steps);
            let vl = value_loss(values, v.old, v.returns, v.weights, c.value_clip);
            stats.value_loss += f64::from(vl.clone().into_scalar::<f32>());
            vacc.accumulate(&t.head, GradientsParams::from_grads(vl.backward(), &t.head));
            value_steps += 1;
        }
    }
    let mut grads = grads;
    if norms.tokens > 0 {
        stats.grad_norm = clip_global_norm(&t.policy, &mut grads, c.grad_clip);
        t.policy = t.optim.step(lr, t.policy.clone(), grads);
    }
    if value_steps > 0 {
        t.head = t.vopt.step(c.value_lr, t.head.clone(), vacc.grads());
    }
    Ok(())
}

/// `policy_epochs` passes over `rows`, each shuffled into `minibatches` optimizer steps; then the replayed rows'
/// priorities are set to the advantage magnitude their truncated ratio still lets through.
pub(crate) fn update(
    env: &Env,
    t: &mut Trainable,
    schedule: &Schedule,
    state: &mut RlState,
    rows: &[Rollout],
    step: u64,
    rng: &mut ChaCha8Rng,
) -> Result<UpdateStats> {
    let c = env.config;
    let settings = LossSettings {
        clip_low: c.clip_low,
        clip_high: c.clip_high,
        beta: c.kl_beta,
        entropy_coef: state.entropy_coef,
        replay_ratio_clip: c.replay.ratio_clip,
    };
    let mut stats = UpdateStats {
        lr: schedule.lr(state.optimizer_step),
        ..Default::default()
    };
    let mut replay_ratio: BTreeMap<usize, f64> = BTreeMap::new();
    let mb_size = rows.len().div_ceil(c.minibatches);
    for _epoch in 0..c.policy_epochs {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(rng);
        for mb in order.chunks(mb_size.max(1)) {
            stats.lr = schedule.lr(state.optimizer_step);
            let s = StepSettings {
                loss: settings,
                lr: stats.lr,
                step,
            };
            minibatch_step(env, t, rows, mb, &s, &mut stats, &mut replay_ratio)?;
            state.optimizer_step += 1;
        }
    }
    if let Some(buf) = t.replay.as_mut()
        && !replay_ratio.is_empty()
    {
        let slots: Vec<usize> = replay_ratio.keys().copied().collect();
        let mags: Vec<f64> = slots
            .iter()
            .map(|&s| {
                let a = buf.get(s).map_or(0.0, |x| x.advantage.abs());
                a * replay_ratio[&s].min(c.replay.ratio_clip)
            })
            .collect();
        let mut b = SampleBatch::with_capacity(slots.len());
        b.indices.copy_from_slice(&slots);
        buf.update_priorities(&mut b, &mags);
    }
    Ok(stats)
}
