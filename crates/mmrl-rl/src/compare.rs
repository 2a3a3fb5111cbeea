//! Evidence: the sft checkpoint, continued sft, and RL variants at matched compute, on val.
//!
//! Compute is matched in sample forward+backward passes: each RL run takes `steps x batch_size x
//! policy_epochs` of them (generation and the no-grad scoring of rollouts come on top and are reported as
//! such), and continued sft takes `train_passes / batch_size` optimizer steps of `batch_size` samples from
//! the same checkpoint with the same peak learning rate, schedule, weight decay and shards.

use std::path::Path;

use burn::optim::AdamWConfig;
use mmrl_artifact::sample::Split;
use mmrl_model::data::Dataset;
use mmrl_model::schedule::{Schedule, ScheduleState};
use mmrl_model::sft::{decode_split, load_model, train_step};
use mmrl_model::vocab::UNSURE;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::algo::Algorithm;
use crate::error::{Error, Result};
use crate::reward::{RewardParams, RewardSpec};
use crate::stage::{self, EvalMetrics, Hooks, Outcome, RlConfig, RlInputs, eval_metrics, evaluate};

/// One line of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// What was run.
    pub name: String,
    /// Sample forward+backward passes spent.
    pub train_passes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Val metrics of the resulting model.
    pub metrics: EvalMetrics,
}

/// The RL variants compared by default: GRPO, RLOO and PPO on exact match; GRPO on exact match + token
/// F1 + numeric closeness; GRPO on the abstention reward (the `unsure` row mean-initialized so that the
/// starting policy abstains on the 10% least confident train prompts, no epsilon: random tokens are no
/// way to discover abstention, and the abstention reward scores them like any wrong answer).
pub fn default_variants(base: &RlConfig) -> Vec<(String, RlConfig)> {
    let spec = RewardSpec::new;
    let with = |algorithm: Algorithm, rewards: Vec<RewardSpec>| RlConfig {
        algorithm,
        rewards,
        ..base.clone()
    };
    vec![
        (
            "grpo".into(),
            with(Algorithm::Grpo, vec![spec("exact_match", 1.0)]),
        ),
        (
            "rloo".into(),
            with(Algorithm::Rloo, vec![spec("exact_match", 1.0)]),
        ),
        (
            "ppo".into(),
            with(Algorithm::Ppo, vec![spec("exact_match", 1.0)]),
        ),
        (
            "grpo em+f1+numeric".into(),
            with(
                Algorithm::Grpo,
                vec![
                    spec("exact_match", 1.0),
                    spec("token_f1", 0.5),
                    spec("numeric", 0.5),
                ],
            ),
        ),
        (
            "grpo abstention".into(),
            RlConfig {
                unsure_init: Some(base.unsure_init.unwrap_or(0.1)),
                epsilon: crate::algo::Decay::constant(0.0),
                ..with(Algorithm::Grpo, vec![spec("abstention", 1.0)])
            },
        ),
    ]
}

/// Continued sft from the checkpoint for `passes` sample forward+backward passes.
pub fn continued_sft(
    base: &RlConfig,
    seed: u64,
    inputs: &RlInputs,
    passes: u64,
) -> Result<EvalMetrics> {
    let start = mmrl_model::predict::load_trained(&inputs.model, base.device)?;
    let data = Dataset::load(&inputs.data)?;
    let val = data.split(Split::Val);
    let device = base.device.device()?.autodiff();
    let file = mmrl_artifact::Artifact::open(&inputs.model)?.file("model.bpk")?;
    let mut model = load_model(start.model.config().init(&device, 0)?, &file)?;
    // The RL runs' optimizer: same weight decay and epsilon.
    let mut optim = AdamWConfig::new()
        .with_weight_decay(base.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let bs = base.batch_size;
    let steps = passes / bs as u64;
    let schedule = Schedule {
        config: base.schedule.clone(),
        lr: base.lr,
        total_steps: steps,
        state: ScheduleState::default(),
    };
    let (mut epoch, mut pos) = (0u64, 0usize);
    let mut order = data.epoch_order(seed, epoch);
    for s in 0..steps {
        let mut items = Vec::with_capacity(bs);
        while items.len() < bs {
            if pos >= order.len() {
                epoch += 1;
                pos = 0;
                order = data.epoch_order(seed, epoch);
            }
            items.push(order[pos]);
            pos += 1;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ s.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (next, _) = train_step(
            model,
            &mut optim,
            &data,
            &start.vocab,
            &items,
            base.grad_accum * base.shards,
            schedule.lr(s),
            base.grad_clip,
            0.1,
            &mut rng,
        )?;
        model = next;
    }
    use burn::module::Module;
    Ok(evaluate(
        &model.valid(),
        &data,
        &start.vocab,
        &val,
        base.eval_batch_size,
    ))
}

/// The answer probability below which `unsure` pays more in expectation than answering:
/// `p r + (1 - p) w < u` for `p < (u - w) / (r - w)` (a calibrated model's optimal abstention rule).
pub fn abstention_threshold(p: &RewardParams) -> f64 {
    (p.abstain_unsure - p.abstain_wrong) / (p.abstain_right - p.abstain_wrong)
}

/// The mean abstention reward of a row: right, `unsure` and wrong answers scored as `p` says.
pub fn abstention_reward(m: &EvalMetrics, p: &RewardParams) -> f64 {
    m.exact_match * p.abstain_right
        + m.unsure * p.abstain_unsure
        + m.confident_wrong * p.abstain_wrong
}

/// Runs the comparison; each RL run's artifact goes under `work/NAME`.
pub fn run(
    base: &RlConfig,
    seed: u64,
    inputs: &RlInputs,
    work: &Path,
    variants: &[(String, RlConfig)],
    mut on_row: impl FnMut(&CompareRow),
) -> Result<Vec<CompareRow>> {
    base.validate()?;
    let mut rows = Vec::new();
    let start = mmrl_model::predict::load_trained(&inputs.model, base.device)?;
    let data = Dataset::load(&inputs.data)?;
    let val = data.split(Split::Val);
    let t = std::time::Instant::now();
    let generated = decode_split(
        &start.model,
        &data,
        &start.vocab,
        &val,
        base.eval_batch_size,
    );
    let greedy: Vec<String> = generated
        .iter()
        .map(|g| start.vocab.decode_answer(&g.tokens))
        .collect();
    let row = CompareRow {
        name: "sft checkpoint".into(),
        train_passes: 0,
        seconds: t.elapsed().as_secs_f64(),
        metrics: eval_metrics(&data, &val, &greedy),
    };
    on_row(&row);
    rows.push(row);
    // The baseline abstention must beat: sft's greedy answer, replaced by `unsure` where its probability
    // is below the break-even point of the abstention reward.
    let cut = abstention_threshold(&base.reward_params);
    let thresholded: Vec<String> = generated
        .iter()
        .zip(greedy)
        .map(|(g, a)| {
            if f64::from(g.logprob).exp() < cut {
                UNSURE.to_owned()
            } else {
                a
            }
        })
        .collect();
    let row = CompareRow {
        name: format!("sft, unsure below p = {cut:.2}"),
        train_passes: 0,
        seconds: 0.0,
        metrics: eval_metrics(&data, &val, &thresholded),
    };
    on_row(&row);
    rows.push(row);

    let passes = base.train_passes();
    let t = std::time::Instant::now();
    let m = continued_sft(base, seed, inputs, passes)?;
    let row = CompareRow {
        name: "continued sft".into(),
        train_passes: passes / base.batch_size as u64 * base.batch_size as u64,
        seconds: t.elapsed().as_secs_f64(),
        metrics: m,
    };
    on_row(&row);
    rows.push(row);

    for (name, cfg) in variants {
        let out = work.join(name.replace([' ', '+'], "_"));
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(|source| Error::Io {
                action: "removing",
                path: out.clone(),
                source,
            })?;
        }
        let t = std::time::Instant::now();
        let outcome = stage::run(cfg, seed, inputs, &out, Hooks::default())?;
        let Outcome::Done(report) = outcome else {
            continue;
        };
        let row = CompareRow {
            name: name.clone(),
            train_passes: report.train_passes,
            seconds: t.elapsed().as_secs_f64(),
            metrics: report.final_metrics.clone(),
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The comparison as a Markdown table; `params` scores the abstention-reward column.
pub fn markdown(rows: &[CompareRow], params: &RewardParams) -> String {
    let mut s = format!(
        "| run | fwd+bwd passes | val EM | EM multi-token | numeric closeness (count_*) | numeric closeness (all numeric) | confident wrong | unsure | abstention reward ({}) | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n",
        reward_legend(params)
    );
    for r in rows {
        let m = &r.metrics;
        s.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |\n",
            r.name,
            r.train_passes,
            m.exact_match,
            m.exact_match_multi_token,
            m.numeric_closeness_counting,
            m.numeric_closeness,
            m.confident_wrong,
            m.unsure,
            abstention_reward(m, params),
            r.seconds
        ));
    }
    s
}

fn reward_legend(p: &RewardParams) -> String {
    format!(
        "right {}, unsure {}, wrong {}",
        p.abstain_right, p.abstain_unsure, p.abstain_wrong
    )
}

/// Comparisons of several seeds as one Markdown table: each metric as `mean ± half-range` over the seeds
/// (rows matched by name, in the first seed's order).
pub fn markdown_seeds(per_seed: &[(u64, Vec<CompareRow>)], params: &RewardParams) -> String {
    let seeds: Vec<String> = per_seed.iter().map(|(s, _)| s.to_string()).collect();
    let mut s = format!(
        "Seeds {}; each cell: mean ± half the range over the seeds.\n\n| run | fwd+bwd passes | val EM | EM multi-token | numeric closeness (count_*) | numeric closeness (all numeric) | confident wrong | unsure | abstention reward ({}) | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n",
        seeds.join(", "),
        reward_legend(params)
    );
    let Some((_, first)) = per_seed.first() else {
        return s;
    };
    for row in first {
        let runs: Vec<&CompareRow> = per_seed
            .iter()
            .filter_map(|(_, rows)| rows.iter().find(|r| r.name == row.name))
            .collect();
        let cell = |f: &dyn Fn(&CompareRow) -> f64| {
            let v: Vec<f64> = runs.iter().map(|r| f(r)).filter(|x| !x.is_nan()).collect();
            if v.is_empty() {
                return "-".to_owned();
            }
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{mean:.3} ± {:.3}", (hi - lo) / 2.0)
        };
        let secs = runs.iter().map(|r| r.seconds).sum::<f64>() / runs.len().max(1) as f64;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {secs:.0} |\n",
            row.name,
            row.train_passes,
            cell(&|r| r.metrics.exact_match),
            cell(&|r| r.metrics.exact_match_multi_token),
            cell(&|r| r.metrics.numeric_closeness_counting),
            cell(&|r| r.metrics.numeric_closeness),
            cell(&|r| r.metrics.confident_wrong),
            cell(&|r| r.metrics.unsure),
            cell(&|r| abstention_reward(&r.metrics, params)),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_the_break_even_probability_of_the_abstention_reward() {
        for (right, unsure, wrong, cut) in [
            (1.0, 0.0, -1.0, 0.5),
            (1.0, 0.0, -3.0, 0.75),
            (2.0, 1.0, 0.0, 0.5),
        ] {
            let p = RewardParams {
                abstain_right: right,
                abstain_unsure: unsure,
                abstain_wrong: wrong,
                ..Default::default()
            };
            let t = abstention_threshold(&p);
            assert!((t - cut).abs() < 1e-12, "{t} vs {cut}");
            // At the threshold answering and abstaining pay the same.
            assert!((t * right + (1.0 - t) * wrong - unsure).abs() < 1e-12);
        }
        let m = EvalMetrics {
            exact_match: 0.7,
            unsure: 0.2,
            confident_wrong: 0.1,
            ..Default::default()
        };
        let p = RewardParams {
            abstain_wrong: -3.0,
            ..Default::default()
        };
        assert!((abstention_reward(&m, &p) - 0.4).abs() < 1e-12);
    }
}
