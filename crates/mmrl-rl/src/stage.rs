//! The rl stage: fine-tunes the sft model as a policy with GRPO, RLOO, PPO or RFT.
//!
//! A run reads as its phases, the way TRL's `GRPOTrainer` does: [`run`] sets up (the starting model, the data,
//! the policy's vocabulary, the checkpoint to resume), then repeats `train_step` (generate and score in the
//! `rollout` module, advantages and the update in `update`), evaluates on val every `eval_every` steps,
//! checkpoints ([`crate::checkpoint`]), and commits the artifact (`commit`). Prompts come from every
//! train row; rows select marked unlabeled have no reference, so only checkers (rewards over the row's `accept`
//! and `check_*` columns, or an external command) score their answers.
//!
//! Every random draw of a step comes from an RNG seeded by `(seed, step)`, and the prompt stream is a pure
//! function of `(seed, epoch)`, so a run killed and resumed from its checkpoint (policy, optimizer, value
//! head, schedule state, entropy coefficient, replay buffer, prompt cursor, metrics) replays exactly the
//! steps the uninterrupted run would have taken. Checkpoints live in `.NAME.rl-work/` beside the output,
//! keyed by the resolved config, the seed and the inputs' content hashes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::predict::load_trained;
use mmrl_model::schedule::{Schedule, ScheduleState};
use mmrl_model::sft::{DeviceKind, load_model, mix};
use mmrl_model::vocab::{ANSWER_SPECIALS, UNK, Vocab, normalize_answer};
use mmrl_model::{Decoding, Dropout, MultimodalModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::algo::{Algorithm, ValueHead};
use crate::checkpoint::{self, Trainable};
use crate::error::{Error, Result, io};
use crate::metrics::{VAL_COLUMNS, table, val_row};
use crate::replay::PrioritizedReplay;
use crate::reward::{Reward, RewardSet, TOLERANCE_COLUMN, UNSURE, mean_std, parse_tolerance};
use crate::rollout::{Env, Gathered, next_prompts, resample_ties, rollouts};
use crate::update::{UpdateStats, compute_advantages, update, with_replay};

pub use crate::checkpoint::{RlState, Stored};
pub use crate::config::RlConfig;
pub use crate::metrics::{EvalMetrics, eval_metrics, evaluate, step_columns};

/// Stage name in manifests.
pub const STAGE: &str = "rl";

/// Inputs of the stage.
#[derive(Debug, Clone)]
pub struct RlInputs {
    /// The sft (or any model) artifact to start from.
    pub model: PathBuf,
    /// The data artifacts.
    pub data: InputPaths,
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
    /// Answers sampled over the run (dynamic sampling's extra rounds included): the generation cost.
    #[serde(default)]
    pub generated: u64,
    /// Train samples (the prompts), and how many of them are unlabeled (scored by checkers alone).
    pub train_samples: usize,
    /// Unlabeled train samples (select's label budget).
    #[serde(default)]
    pub unlabeled_train_samples: usize,
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

/// The work folder of a run writing `output`.
pub fn work_dir(output: &Path) -> PathBuf {
    mmrl_artifact::work_dir(output, "rl-work")
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
        return Err(Error::config(
            "unsure_init",
            "no train prompt to calibrate on",
        ));
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

/// What a run starts from: the data, the policy's vocabulary, the (possibly `unsure`-initialized) starting
/// model and its frozen reference copy, and the key its checkpoints are filed under.
struct Setup {
    data: Dataset,
    vocab: Vocab,
    unsure_slot: bool,
    unsure_init: Option<(u32, f32)>,
    reference: MultimodalModel,
    model_config: mmrl_model::model::ModelConfig,
    train: Vec<usize>,
    val: Vec<usize>,
    key: String,
}

impl Setup {
    /// Loads and checks the inputs; errors name the artifact and what to run first.
    fn load(config: &RlConfig, seed: u64, inputs: &RlInputs) -> Result<Self> {
        let start = load_start(&inputs.model, config.device)?;
        let data = Dataset::load(&inputs.data)?;
        data.check_compatible(start.model.config(), &inputs.data.samples)
            .map_err(|e| Error::Input {
                path: inputs.model.clone(),
                message: format!("the sft checkpoint does not match the data inputs: {e}"),
            })?;
        let (train, val) = (data.split(Split::Train), data.split(Split::Val));
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
        check_checker_cells(config, &data, &inputs.data.samples)?;
        let abstention = config.rewards.iter().any(|r| r.name == "abstention");
        let (vocab, unsure_slot) = policy_vocab(&start.vocab, abstention);
        let unsure_init = match config.unsure_init.filter(|_| unsure_slot) {
            Some(q) => Some((
                UNK,
                unsure_offset(&start.model, &data, &vocab, &train, q, config)?,
            )),
            None => None,
        };
        let model_config = start.model.config().clone();
        let start_model = match unsure_init {
            Some((id, offset)) => init_answer_row(start.model, id, offset),
            None => start.model,
        };
        let key = format!(
            "{}|{seed}|{}|{}",
            serde_json::to_string(config)?,
            Artifact::open(&inputs.model)?.manifest().content_hash,
            inputs.data.content_key()?
        );
        Ok(Self {
            reference: start_model.reference(),
            data,
            vocab,
            unsure_slot,
            unsure_init,
            model_config,
            train,
            val,
            key: mmrl_artifact::hash::hash_bytes(key.as_bytes()),
        })
    }

    /// What every phase reads.
    fn env<'a>(&'a self, config: &'a RlConfig, rewards: &'a RewardSet, seed: u64) -> Env<'a> {
        let mut answer_sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for i in self.data.labeled_train() {
            let s = &self.data.samples[i];
            answer_sets
                .entry(s.qtype.clone())
                .or_default()
                .insert(normalize_answer(&s.answer));
        }
        let abstention = config.rewards.iter().any(|r| r.name == "abstention");
        Env {
            config,
            data: &self.data,
            vocab: &self.vocab,
            rewards,
            answer_sets,
            reference: &self.reference,
            unsure: abstention
                .then(|| self.vocab.encode_answer(UNSURE, 1).first().copied())
                .flatten(),
            model_config: self.model_config.clone(),
            seed,
        }
    }

    /// The policy (on the autodiff device) with its optimizer, PPO's value head and the replay buffer.
    fn trainable(&self, config: &RlConfig, seed: u64, inputs: &RlInputs) -> Result<Trainable> {
        let device: Device = config.device.device()?.autodiff();
        let model_file = Artifact::open(&inputs.model)?.file("model.bpk")?;
        let mut policy = load_model(self.model_config.init(&device, 0)?, &model_file)?;
        if let Some((id, offset)) = self.unsure_init {
            policy = init_answer_row(policy, id, offset);
        }
        let c = &self.model_config;
        Ok(Trainable {
            policy,
            optim: AdamWConfig::new()
                .with_weight_decay(config.weight_decay as f32)
                .with_epsilon(1e-8)
                .init(),
            head: ValueHead::new(
                c.d_model,
                c.answer_vocab,
                c.max_answer_len + 1,
                config.value_hidden,
                &device,
                mix(seed, 9, 0),
            ),
            vopt: AdamWConfig::new().with_epsilon(1e-8).init(),
            replay: config.replay.enabled.then(|| {
                PrioritizedReplay::new(
                    config.replay.capacity,
                    config.replay.alpha,
                    config.replay.eps,
                )
            }),
        })
    }
}

/// With the `tolerance` reward, every `check_tolerance` cell must be a finite number of at least 0: an error
/// naming the sample before any training, rather than at the step that draws it. Warns when unlabeled rows
/// exist but no reward can score them.
fn check_checker_cells(config: &RlConfig, data: &Dataset, path: &Path) -> Result<()> {
    if config.rewards.iter().any(|r| r.name == "tolerance") {
        for s in &data.samples {
            if let Some(cell) = s.checks.get(TOLERANCE_COLUMN)
                && parse_tolerance(cell).is_none()
            {
                return Err(Error::Input {
                    path: path.to_path_buf(),
                    message: format!(
                        "sample {:?}: {TOLERANCE_COLUMN} {cell:?} is not a finite number of at least 0",
                        s.id
                    ),
                });
            }
        }
    }
    let unlabeled = data
        .samples
        .iter()
        .filter(|s| s.split == Split::Train && !s.labeled)
        .count();
    let checkers = config.rewards.iter().any(|r| {
        r.command.is_some() || matches!(r.name.as_str(), "accept" | "tolerance" | "abstention")
    });
    if unlabeled > 0 && !checkers {
        tracing::warn!(
            unlabeled,
            "train rows without a demonstration, and no reward that reads checker columns (accept, tolerance, abstention, a command): their rollouts carry no reward"
        );
    }
    Ok(())
}

/// One rollout step: generate and score (with dynamic sampling), advantages, replay, update. Returns the
/// step's metrics row in [`step_columns`] order.
fn train_step(
    env: &Env,
    t: &mut Trainable,
    schedule: &Schedule,
    state: &mut RlState,
) -> Result<Vec<f64>> {
    let c = env.config;
    let step = state.step;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(env.seed, 1, step));
    let epsilon = c.epsilon.at(step, c.steps);
    let temperature = c.temperature.at(step, c.steps);
    let decoding = Decoding::Sample {
        temperature: temperature as f32,
        top_k: c.top_k,
        epsilon,
    };
    let valid = t.policy.valid();
    let prompts = next_prompts(env.data, env.seed, state, c.batch_size / c.group_size);
    let mut got = rollouts(&valid, env, &prompts, decoding, step, &mut rng)?;
    let (zero, groups) = (got.zero_groups, got.groups);
    if c.dynamic_sampling {
        resample_ties(&valid, env, &mut got, state, decoding, step, &mut rng)?;
    }
    state.zero_groups.0 += zero as u64;
    state.zero_groups.1 += groups as u64;
    state.generated += got.generated;
    compute_advantages(env, &mut got, &valid, &t.head.valid());
    let rows = with_replay(env, &got, t.replay.as_mut(), step, &mut rng);
    let stats = update(env, t, schedule, state, &rows, step, &mut rng)?;
    let row = StepRow {
        got: &got,
        stats: &stats,
        replayed: rows.len() - got.rows.len(),
        zero_fraction: zero as f64 / groups.max(1) as f64,
        epsilon,
        temperature,
    };
    Ok(row.values(env, state))
}

/// What a step's metrics row is built from.
struct StepRow<'a> {
    got: &'a Gathered,
    stats: &'a UpdateStats,
    replayed: usize,
    zero_fraction: f64,
    epsilon: f64,
    temperature: f64,
}

impl StepRow<'_> {
    /// The row, in [`step_columns`] order.
    fn values(&self, env: &Env, state: &RlState) -> Vec<f64> {
        let (got, st) = (self.got, self.stats);
        let tokens = st.tokens.max(1.0);
        let fresh = got.rows.len();
        let (rmean, rstd) = mean_std(got.rewards.iter().map(|&r| Some(r)));
        let ppo = env.config.algorithm == Algorithm::Ppo;
        let mut row = vec![
            (state.step + 1) as f64,
            rmean,
            rstd,
            st.kl / tokens,
            st.entropy / tokens,
            state.entropy_coef,
            st.clip / tokens,
            self.epsilon,
            self.temperature,
            st.lr,
            st.grad_norm,
            if ppo { st.value_loss } else { f64::NAN },
            self.zero_fraction,
            self.replayed as f64,
            got.rows.iter().map(|r| r.tokens.len() as f64).sum::<f64>() / fresh.max(1) as f64,
            self.unsure_fraction(env),
        ];
        for j in 0..env.rewards.names().len() {
            let (m, s) = mean_std(got.each.iter().map(|e| e[j]));
            row.push(m);
            row.push(s);
        }
        row
    }

    /// Fraction of sampled answers that are `unsure` (the `unsure_probes` slots, `unsure` by construction,
    /// left out); NaN without abstention.
    fn unsure_fraction(&self, env: &Env) -> f64 {
        let Some(u) = env.unsure else {
            return f64::NAN;
        };
        let g = env.config.group_size;
        let sampled = g - env.config.unsure_probes;
        let n = self
            .got
            .rows
            .iter()
            .enumerate()
            .filter(|(k, r)| k % g < sampled && r.tokens == [u])
            .count();
        n as f64 / (self.got.rows.len() / g * sampled).max(1) as f64
    }
}

/// Evaluates the policy on val when the step is due (every `eval_every` steps and at the end); returns the
/// latest val exact match.
fn maybe_evaluate(
    env: &Env,
    t: &Trainable,
    schedule: &mut Schedule,
    state: &mut RlState,
    val: &[usize],
) -> Option<f64> {
    let c = env.config;
    if !(state.step.is_multiple_of(c.eval_every) || state.step == c.steps) {
        return state.val.last().map(|(_, m)| m.exact_match);
    }
    let m = evaluate(
        &t.policy.valid(),
        env.data,
        env.vocab,
        val,
        c.eval_batch_size,
    );
    tracing::info!(
        step = state.step,
        reward = format!("{:.3}", state.rows.last().map_or(f64::NAN, |r| r[1])),
        val_exact_match = format!("{:.4}", m.exact_match),
        val_accepted = format!("{:.4}", m.accepted),
        groups = %m
            .groups
            .iter()
            .map(|(g, x)| format!("{g} EM {:.3} accepted {:.3}", x.exact_match, x.accepted))
            .collect::<Vec<_>>()
            .join("; "),
        "eval"
    );
    mmrl_artifact::trial::report_intermediate(state.step, m.exact_match);
    schedule.observe(m.exact_match);
    let em = m.exact_match;
    state.val.push((state.step, m));
    Some(em)
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
    let setup = Setup::load(config, seed, inputs)?;
    let env = setup.env(config, &rewards, seed);
    let mut t = setup.trainable(config, seed, inputs)?;
    let ppo = config.algorithm == Algorithm::Ppo;
    let mut schedule = Schedule {
        config: config.schedule.clone(),
        lr: config.lr,
        total_steps: config.optimizer_steps(),
        state: ScheduleState::default(),
    };
    let work = work_dir(output);
    let mut state = checkpoint::resume(&work, &setup.key, &mut t, ppo, &config.replay)?
        .unwrap_or_else(|| RlState::new(setup.key.clone(), config.entropy.coef));
    schedule.state = state.schedule.clone();
    if state.val.is_empty() {
        let m = evaluate(
            &setup.reference,
            &setup.data,
            &setup.vocab,
            &setup.val,
            config.eval_batch_size,
        );
        tracing::info!(
            val_exact_match = format!("{:.4}", m.exact_match),
            "starting model"
        );
        state.val.push((0, m));
    }
    while state.step < config.steps {
        let row = train_step(&env, &mut t, &schedule, &mut state)?;
        if (state.step + 1).is_multiple_of(10) {
            tracing::info!(
                step = state.step + 1,
                reward = format!("{:.3}", row[1]),
                kl = format!("{:.4}", row[3]),
                entropy = format!("{:.3}", row[4]),
                zero_variance = format!("{:.2}", row[12]),
                "step"
            );
        }
        state.entropy_coef = config.entropy.adapt(state.entropy_coef, row[4]);
        let reward = row[1];
        state.rows.push(row);
        state.step += 1;
        let val_em = maybe_evaluate(&env, &t, &mut schedule, &mut state, &setup.val);
        if let Some(p) = hooks.progress.as_deref_mut() {
            p(Progress {
                step: state.step,
                total: config.steps,
                reward,
                val_exact_match: val_em,
            });
        }
        let stop_here = hooks.stop_after_step == Some(state.step);
        if stop_here
            || (config.checkpoint_every > 0 && state.step.is_multiple_of(config.checkpoint_every))
        {
            state.schedule = schedule.state.clone();
            state.replay = t.replay.as_ref().map(PrioritizedReplay::state);
            checkpoint::save(&work, &t, ppo, &state)?;
        }
        if stop_here {
            return Ok(Outcome::Interrupted { step: state.step });
        }
    }
    let report = commit(config, seed, inputs, output, &setup, &rewards, &t, &state)?;
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
    }
    Ok(Outcome::Done(Box::new(report)))
}

/// Writes the artifact: the policy in sft's format (`model.bpk`, `config.json`, `vocab.json`), the step and
/// val metrics, and `report.json`.
#[allow(clippy::too_many_arguments)]
fn commit(
    config: &RlConfig,
    seed: u64,
    inputs: &RlInputs,
    output: &Path,
    setup: &Setup,
    rewards: &RewardSet,
    t: &Trainable,
    state: &RlState,
) -> Result<RlReport> {
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
    let model_path = writer.tmp_dir().join("model.bpk");
    t.policy
        .valid()
        .into_record()
        .save(&model_path)
        .map_err(|e| Error::Checkpoint {
            path: model_path.clone(),
            message: e.to_string(),
        })?;
    writer.add_file("model.bpk", Role::State)?;
    writer.write_json("config.json", Role::State, &setup.model_config)?;
    writer.write_json("vocab.json", Role::State, &setup.vocab)?;
    let steps = table(&step_columns(&rewards.names()), &state.rows)?;
    writer.write_table("metrics_steps", Role::Report, steps.schema(), &[steps])?;
    let val_cols: Vec<String> = VAL_COLUMNS.iter().map(|s| (*s).to_owned()).collect();
    let val_rows: Vec<Vec<f64>> = state.val.iter().map(|(s, m)| val_row(*s, m)).collect();
    let vals = table(&val_cols, &val_rows)?;
    writer.write_table("metrics_val", Role::Report, vals.schema(), &[vals])?;
    let report = report(config, setup, state);
    writer.write_json("report.json", Role::Report, &report)?;
    writer.commit()?;
    Ok(report)
}

/// `report.json` of a finished run.
fn report(config: &RlConfig, setup: &Setup, state: &RlState) -> RlReport {
    let final_metrics = state.val.last().map(|(_, m)| m.clone()).unwrap_or_default();
    let last: Vec<f64> = state.rows.iter().rev().take(10).map(|r| r[1]).collect();
    let replayed: f64 = state.rows.iter().map(|r| r[13]).sum();
    RlReport {
        val_exact_match: final_metrics.exact_match,
        algorithm: config.algorithm,
        initial: state
            .val
            .first()
            .map(|(_, m)| m.clone())
            .unwrap_or_default(),
        final_metrics,
        steps: state.step,
        optimizer_steps: state.optimizer_step,
        train_passes: (replayed as u64 + state.step * config.batch_size as u64)
            * config.policy_epochs as u64,
        final_reward: last.iter().sum::<f64>() / last.len().max(1) as f64,
        zero_variance_fraction: state.zero_groups.0 as f64 / state.zero_groups.1.max(1) as f64,
        unsure_uses_unk_slot: setup.unsure_slot,
        unsure_init_offset: setup.unsure_init.map(|(_, o)| f64::from(o)),
        generated: state.generated,
        train_samples: setup.train.len(),
        unlabeled_train_samples: setup
            .train
            .iter()
            .filter(|&&i| !setup.data.samples[i].labeled)
            .count(),
        val_samples: setup.val.len(),
    }
}
