//! Generate and score (TRL's `_generate_and_score_completions`): the next prompts of the train stream, a group
//! of sampled answers per prompt with the log-probabilities generation already computed, the frozen reference's
//! log-probabilities, the rewards, and dynamic sampling of fresh prompts for groups whose rewards all tie.

use std::collections::{BTreeMap, BTreeSet};

use mmrl_model::data::Dataset;
use mmrl_model::model::ModelConfig;
use mmrl_model::vocab::{Vocab, normalize_answer};
use mmrl_model::{Decoding, Dropout, MultimodalModel};
use rand_chacha::ChaCha8Rng;

use crate::algo::ValueHead;
use crate::checkpoint::RlState;
use crate::config::RlConfig;
use crate::error::Result;
use crate::reward::{RewardContext, RewardSet};

/// What every phase of a step reads and none changes.
pub(crate) struct Env<'a> {
    pub config: &'a RlConfig,
    pub data: &'a Dataset,
    pub vocab: &'a Vocab,
    pub rewards: &'a RewardSet,
    /// Normalized answers of the labeled train rows, per question type (the `format` reward).
    pub answer_sets: BTreeMap<String, BTreeSet<String>>,
    pub reference: &'a MultimodalModel,
    /// The `unsure` token when the abstention reward is on: an answer ends at it.
    pub unsure: Option<u32>,
    pub model_config: ModelConfig,
    pub seed: u64,
}

/// One rollout of a step (or a replayed one).
#[derive(Debug, Clone)]
pub(crate) struct Rollout {
    pub item: (usize, usize),
    pub tokens: Vec<u32>,
    /// Behaviour log-probabilities of the tokens then `<eos>`.
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub advantages: Vec<f32>,
    pub advantage: f64,
    pub returns: Vec<f32>,
    pub old_values: Vec<f32>,
    /// Loss weight of the row: 1 for fresh rows, the importance weight for replayed ones, 0 for rows an
    /// algorithm leaves out (RFT's rejected answers).
    pub is_weight: f64,
    pub replay_slot: Option<usize>,
}

/// A step's rollouts with their rewards.
#[derive(Default)]
pub(crate) struct Gathered {
    pub rows: Vec<Rollout>,
    pub rewards: Vec<f64>,
    pub each: Vec<Vec<Option<f64>>>,
    pub zero_groups: usize,
    pub groups: usize,
    /// Answers sampled (dynamic sampling's extra rounds included).
    pub generated: u64,
}

/// Per-row token log-probabilities (tokens + `<eos>`) of `answers` under `model` (no dropout).
pub(crate) fn token_logprobs(
    model: &MultimodalModel,
    env: &Env,
    items: &[(usize, usize)],
    answers: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(items.len());
    let chunk = env.config.eval_batch_size;
    for (it, an) in items.chunks(chunk).zip(answers.chunks(chunk)) {
        let (batch, _) = env.data.batch(it, env.vocab, model.config(), None);
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
pub(crate) fn head_values(
    model: &MultimodalModel,
    head: &ValueHead,
    env: &Env,
    items: &[(usize, usize)],
    answers: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(items.len());
    let chunk = env.config.eval_batch_size;
    let max = model.config().max_answer_len;
    for (it, an) in items.chunks(chunk).zip(answers.chunks(chunk)) {
        let (batch, _) = env.data.batch(it, env.vocab, model.config(), None);
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

/// Takes the next `n` prompts of the train stream: every train row, labeled or not (checkers score the
/// answers of rows without a demonstration).
pub(crate) fn next_prompts(
    data: &Dataset,
    seed: u64,
    state: &mut RlState,
    n: usize,
) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(n);
    let mut order = data.prompt_order(seed ^ 0x0072_6c00, state.cursor_epoch);
    while out.len() < n && !order.is_empty() {
        if state.cursor_pos >= order.len() {
            state.cursor_epoch += 1;
            state.cursor_pos = 0;
            order = data.prompt_order(seed ^ 0x0072_6c00, state.cursor_epoch);
        }
        out.push(order[state.cursor_pos]);
        state.cursor_pos += 1;
    }
    out
}

/// Samples `group_size` answers per prompt. Each answer keeps the log-probabilities generation computed
/// (temperature 1, `<eos>` included), so the update needs no extra scoring pass; only answers changed after
/// generation (cut at `unsure`, or replaced by an `unsure` probe) are scored again. Returns the items, the
/// answers and their behaviour log-probabilities.
#[allow(clippy::type_complexity)]
fn sample_answers(
    policy: &MultimodalModel,
    env: &Env,
    prompts: &[(usize, usize)],
    decoding: Decoding,
    rng: &mut ChaCha8Rng,
) -> (Vec<(usize, usize)>, Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let g = env.config.group_size;
    let items: Vec<(usize, usize)> = prompts
        .iter()
        .flat_map(|&p| std::iter::repeat_n(p, g))
        .collect();
    let (mut answers, mut logps) = (Vec::with_capacity(items.len()), Vec::new());
    let mut changed = Vec::new();
    for chunk in items.chunks(env.config.eval_batch_size) {
        let (batch, _) = env.data.batch(chunk, env.vocab, policy.config(), None);
        for generated in policy.generate(&batch, decoding, rng) {
            let mut t = generated.tokens;
            // `unsure` is a whole answer: whatever follows it is cut (and the cut answer is what gets scored).
            if let Some(pos) = env.unsure.and_then(|u| t.iter().position(|&x| x == u))
                && pos + 1 < t.len()
            {
                t.truncate(pos + 1);
                changed.push(answers.len());
            }
            answers.push(t);
            logps.push(generated.token_logprobs);
        }
    }
    if let Some(u) = env.unsure {
        let probes = env.config.unsure_probes;
        for (k, a) in answers.iter_mut().enumerate() {
            if k % g >= g - probes {
                *a = vec![u];
                changed.push(k);
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    if !changed.is_empty() {
        let its: Vec<(usize, usize)> = changed.iter().map(|&k| items[k]).collect();
        let ans: Vec<Vec<u32>> = changed.iter().map(|&k| answers[k].clone()).collect();
        for (k, lp) in changed.iter().zip(token_logprobs(policy, env, &its, &ans)) {
            logps[*k] = lp;
        }
    }
    (items, answers, logps)
}

/// The rewards of `answers`: every reward scores the whole batch once. A labeled row shows its reference; an
/// unlabeled one only its checker columns.
fn score_answers(
    env: &Env,
    items: &[(usize, usize)],
    answers: &[Vec<u32>],
    step: u64,
) -> Result<Vec<crate::reward::Scored>> {
    let texts: Vec<(String, Option<String>)> = items
        .iter()
        .zip(answers)
        .map(|(&(i, _), tokens)| {
            let s = &env.data.samples[i];
            let answer = normalize_answer(&env.vocab.decode_answer(tokens));
            (answer, s.labeled.then(|| normalize_answer(&s.answer)))
        })
        .collect();
    let ctxs: Vec<RewardContext> = items
        .iter()
        .zip(answers)
        .zip(&texts)
        .map(|((&(i, _), tokens), (answer, reference))| {
            let s = &env.data.samples[i];
            RewardContext {
                sample_id: &s.id,
                qtype: &s.qtype,
                question: &s.question,
                reference: reference.as_deref(),
                answer,
                tokens,
                answer_set: env.answer_sets.get(&s.qtype),
                checks: &s.checks,
            }
        })
        .collect();
    env.rewards.score_batch(&ctxs, step, env.config.steps)
}

/// Generates `group_size` answers for each prompt and scores them: rollouts (advantages not yet set), their
/// combined rewards and each reward's values.
pub(crate) fn rollouts(
    policy: &MultimodalModel,
    env: &Env,
    prompts: &[(usize, usize)],
    decoding: Decoding,
    step: u64,
    rng: &mut ChaCha8Rng,
) -> Result<Gathered> {
    let (items, answers, old) = sample_answers(policy, env, prompts, decoding, rng);
    let reference = if env.config.kl_beta > 0.0 {
        token_logprobs(env.reference, env, &items, &answers)
    } else {
        old.iter().map(|v| vec![0.0; v.len()]).collect()
    };
    let scored = score_answers(env, &items, &answers, step)?;
    let mut out = Gathered {
        generated: items.len() as u64,
        ..Gathered::default()
    };
    for ((((&item, tokens), old_logp), ref_logp), s) in items
        .iter()
        .zip(answers)
        .zip(old)
        .zip(reference)
        .zip(scored)
    {
        out.rewards.push(s.total);
        out.each.push(s.each);
        out.rows.push(Rollout {
            item,
            tokens,
            old_logp,
            ref_logp,
            advantages: Vec::new(),
            advantage: 0.0,
            returns: Vec::new(),
            old_values: Vec::new(),
            is_weight: 1.0,
            replay_slot: None,
        });
    }
    for grp in out.rewards.chunks(env.config.group_size) {
        out.groups += 1;
        if ties(grp) {
            out.zero_groups += 1;
        }
    }
    Ok(out)
}

/// Whether a group's rewards all tie (it carries no group-relative signal).
fn ties(rewards: &[f64]) -> bool {
    rewards.iter().all(|x| (x - rewards[0]).abs() < 1e-12)
}

/// Dynamic sampling: groups whose rewards all tie are replaced by fresh prompts' groups that do not, for up to
/// `dynamic_sampling_tries` rounds.
pub(crate) fn resample_ties(
    policy: &MultimodalModel,
    env: &Env,
    got: &mut Gathered,
    state: &mut RlState,
    decoding: Decoding,
    step: u64,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let g = env.config.group_size;
    for _ in 0..env.config.dynamic_sampling_tries {
        let zero_idx: Vec<usize> = (0..got.groups)
            .filter(|&k| ties(&got.rewards[k * g..(k + 1) * g]))
            .collect();
        if zero_idx.is_empty() {
            break;
        }
        let fresh = next_prompts(env.data, env.seed, state, zero_idx.len());
        let more = rollouts(policy, env, &fresh, decoding, step, rng)?;
        got.generated += more.generated;
        for (j, &k) in zero_idx.iter().enumerate() {
            if ties(&more.rewards[j * g..(j + 1) * g]) {
                continue;
            }
            for t in 0..g {
                got.rows[k * g + t] = more.rows[j * g + t].clone();
                got.rewards[k * g + t] = more.rewards[j * g + t];
                got.each[k * g + t] = more.each[j * g + t].clone();
            }
        }
    }
    Ok(())
}
