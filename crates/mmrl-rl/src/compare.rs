//! Evidence: RL against the baselines a skeptic asks for, at the same number of forward+backward passes.
//!
//! From one sft checkpoint, for each seed: continued sft on the labeled rows with its learning rate swept (the
//! best on val is the "continued sft" a comparison names), self-training (sft on the labeled rows plus the
//! checkpoint's own greedy answers for the unlabeled ones), full-label sft (every train row with its hidden
//! answer revealed: the ceiling with more information), and the RL variants (GRPO with the pipeline's rewards,
//! and rejection-sampling fine-tuning, `rft`, on the same rewards). Compute is matched in sample
//! forward+backward passes: each RL run takes `steps x batch_size x policy_epochs` of them, each sft run
//! `passes / batch_size` optimizer steps of `batch_size` samples; generation is reported beside it.
//!
//! `run` writes an artifact: every model (`models.json`, loadable by `mmrl_model::predict::load_models`),
//! `compare.json` (each run's val metrics and per-sample outcomes) and `compare.md` (the val table with paired
//! bootstrap intervals per seed). It reads train and val only; [`evaluate_runs`] scores the same models on the
//! split eval gives it (test), for eval's report. Runs finished before a kill are kept in a work folder and not
//! run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::AdamWConfig;
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::predict::{MODELS_FILE, ModelEntry, Trained, load_trained};
use mmrl_model::schedule::{Schedule, ScheduleState};
use mmrl_model::sft::{DeviceKind, load_model, train_step};
use mmrl_model::vocab::{UNSURE, normalize_answer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::algo::{Algorithm, Decay};
use crate::config::RlConfig;
use crate::error::{Error, Result, io};
use crate::metrics::{EvalMetrics, QtypeGroups, accepted, eval_metrics, greedy_answers};
use crate::reward::RewardSpec;
use crate::stage::{self, Hooks, Outcome, RlInputs};

/// Stage name in manifests.
pub const STAGE: &str = "rl-compare";

/// The RL variants `variants` may name.
pub const RL_VARIANTS: [&str; 6] = [
    "grpo",
    "rloo",
    "ppo",
    "rft",
    "grpo em+f1+numeric",
    "grpo abstention",
];

/// Parameters of `mmrl-rl compare` (`--params FILE.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareConfig {
    /// Seeds; each runs every baseline and variant.
    pub seeds: Vec<u64>,
    /// RL variants ([`RL_VARIANTS`]), each the base RL config with its algorithm (and rewards) changed.
    pub variants: Vec<String>,
    /// Learning rates of continued sft (the best on val is "continued sft"; self-training and full-label sft
    /// use it too).
    pub sft_lrs: Vec<f64>,
    /// Run self-training.
    pub self_training: bool,
    /// Run full-label sft.
    pub full_label: bool,
    /// Paired bootstrap resamples of the tables.
    pub bootstrap_samples: usize,
    /// The RL config compared; absent: the config of the `rl` input artifact (the pipeline's rl stage).
    pub rl: Option<RlConfig>,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            seeds: vec![1, 2, 3],
            variants: vec!["grpo".into(), "rft".into()],
            sft_lrs: vec![1e-4, 3e-4, 1e-3],
            self_training: true,
            full_label: true,
            bootstrap_samples: 1000,
            rl: None,
        }
    }
}

impl CompareConfig {
    /// Checks every field before any compute.
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(Error::config("seeds", "give at least one seed"));
        }
        if let Some(v) = self
            .variants
            .iter()
            .find(|v| !RL_VARIANTS.contains(&v.as_str()))
        {
            return Err(Error::config(
                "variants",
                format!("unknown variant {v:?}; known: {}", RL_VARIANTS.join(", ")),
            ));
        }
        if self.sft_lrs.is_empty() || self.sft_lrs.iter().any(|lr| !(*lr > 0.0 && *lr < 1.0)) {
            return Err(Error::config(
                "sft_lrs",
                format!(
                    "give one or more learning rates in (0, 1), got {:?}",
                    self.sft_lrs
                ),
            ));
        }
        if self.bootstrap_samples == 0 {
            return Err(Error::config("bootstrap_samples", "must be at least 1"));
        }
        if let Some(rl) = &self.rl {
            rl.validate()?;
        }
        Ok(())
    }
}

/// Inputs of the comparison.
#[derive(Debug, Clone)]
pub struct CompareInputs {
    /// The sft checkpoint every run starts from.
    pub model: PathBuf,
    /// The rl artifact whose config is compared (when the params have no `rl` table).
    pub rl: Option<PathBuf>,
    /// The data artifacts.
    pub data: InputPaths,
}

/// The RL config compared: the params' `rl` table, else the `rl` input's resolved config.
pub fn base_config(config: &CompareConfig, inputs: &CompareInputs) -> Result<RlConfig> {
    if let Some(rl) = &config.rl {
        return Ok(rl.clone());
    }
    let Some(path) = &inputs.rl else {
        return Err(Error::config(
            "rl",
            "no RL config: pass the rl stage's artifact as --input rl=DIR, or give an [rl] table in the params",
        ));
    };
    let artifact = Artifact::open(path)?;
    let cfg: RlConfig =
        serde_json::from_value(artifact.manifest().config.clone()).map_err(|e| Error::Input {
            path: path.clone(),
            message: format!("the manifest's config is not an rl config: {e}"),
        })?;
    cfg.validate()?;
    Ok(cfg)
}

/// An RL variant of `base`: GRPO, RLOO, PPO as configured; `rft` with no KL term (cross-entropy on the accepted
/// answers, as RFT is); GRPO on exact match + token F1 + numeric closeness; GRPO on the abstention reward (the
/// `unsure` row mean-initialized, no epsilon). `None` for an unknown name.
pub fn variant(base: &RlConfig, name: &str) -> Option<RlConfig> {
    let with = |algorithm: Algorithm| RlConfig {
        algorithm,
        ..base.clone()
    };
    Some(match name {
        "grpo" => with(Algorithm::Grpo),
        "rloo" => with(Algorithm::Rloo),
        "ppo" => with(Algorithm::Ppo),
        "rft" => RlConfig {
            kl_beta: 0.0,
            ..with(Algorithm::Rft)
        },
        "grpo em+f1+numeric" => RlConfig {
            rewards: vec![
                RewardSpec::new("exact_match", 1.0),
                RewardSpec::new("token_f1", 0.5),
                RewardSpec::new("numeric", 0.5),
            ],
            ..with(Algorithm::Grpo)
        },
        "grpo abstention" => RlConfig {
            unsure_init: Some(base.unsure_init.unwrap_or(0.1)),
            epsilon: Decay::constant(0.0),
            rewards: vec![RewardSpec::new("abstention", 1.0)],
            ..with(Algorithm::Grpo)
        },
        _ => return None,
    })
}

/// What a run of the comparison is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The sft checkpoint itself.
    Start,
    /// Continued sft on the labeled rows at one learning rate.
    Sft,
    /// The continued sft run with the best val exact match (the same model as one [`RunKind::Sft`] run).
    SftBest,
    /// Self-training.
    SelfTraining,
    /// Full-label sft.
    FullLabel,
    /// An RL variant.
    Rl,
}

/// One run of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// What was run (`grpo`, `continued sft lr=0.0003`, ...).
    pub name: String,
    /// The seed (0 for the checkpoint).
    pub seed: u64,
    /// Its kind.
    pub kind: RunKind,
    /// The learning rate of an sft run.
    pub lr: Option<f64>,
    /// The model's folder in the artifact (under `runs/`).
    pub dir: String,
    /// Sample forward+backward passes spent.
    pub train_passes: u64,
    /// Answers generated (RL rollouts, self-training's pseudo-labels).
    pub generated: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Val metrics.
    pub metrics: EvalMetrics,
    /// Per val sample (in split order): exact match with the reference.
    pub exact: Vec<bool>,
    /// Per val sample: accepted by the checker (the `accept` column, else the reference).
    pub accepted: Vec<bool>,
}

/// `compare.json`: the groups of question types and every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// The question-type groups of the data.
    pub groups: QtypeGroups,
    /// The RL config compared.
    pub rl: RlConfig,
    /// The comparison's parameters.
    pub config: CompareConfig,
    /// The question type of each val sample, in the order of the runs' outcomes.
    pub val_qtypes: Vec<String>,
    /// Every run, the checkpoint first, then by seed.
    pub runs: Vec<CompareRow>,
}

/// What every run of a comparison reads.
struct Bench<'a> {
    config: &'a CompareConfig,
    base: RlConfig,
    inputs: &'a CompareInputs,
    start: Trained,
    data: Dataset,
    val: Vec<usize>,
    work: PathBuf,
}

/// The work folder of a comparison writing `output`: finished runs stay there until the artifact is written.
pub fn work_dir(output: &Path) -> PathBuf {
    mmrl_artifact::work_dir(output, "compare-work")
}

/// Runs the comparison and commits the artifact at `output`; `on_row` sees each run as it finishes.
pub fn run(
    config: &CompareConfig,
    inputs: &CompareInputs,
    output: &Path,
    mut on_row: impl FnMut(&CompareRow),
) -> Result<CompareReport> {
    config.validate()?;
    let base = RlConfig {
        replay: crate::replay::ReplayConfig {
            enabled: false,
            ..Default::default()
        },
        ..base_config(config, inputs)?
    };
    let data = Dataset::load(&inputs.data)?;
    let bench = Bench {
        config,
        start: load_trained(&inputs.model, base.device)?,
        val: data.split(Split::Val),
        data,
        work: prepare_work(config, &base, inputs, output)?,
        base,
        inputs,
    };
    let mut runs = vec![cached(&bench, "start", || start_row(&bench))?];
    on_row(&runs[0]);
    for &seed in &config.seeds {
        for row in run_seed(&bench, seed, &mut on_row)? {
            runs.push(row);
        }
    }
    let report = CompareReport {
        groups: QtypeGroups::of(&bench.data),
        rl: bench.base.clone(),
        config: config.clone(),
        val_qtypes: bench
            .val
            .iter()
            .map(|&i| bench.data.samples[i].qtype.clone())
            .collect(),
        runs,
    };
    commit(&bench, output, &report)?;
    std::fs::remove_dir_all(&bench.work).map_err(io("removing", &bench.work))?;
    Ok(report)
}

/// The work folder, emptied when it holds runs of another config, RL config or inputs.
fn prepare_work(
    config: &CompareConfig,
    base: &RlConfig,
    inputs: &CompareInputs,
    output: &Path,
) -> Result<PathBuf> {
    let work = work_dir(output);
    let key = mmrl_artifact::hash::hash_bytes(
        format!(
            "{}|{}|{}|{}",
            serde_json::to_string(config)?,
            serde_json::to_string(base)?,
            Artifact::open(&inputs.model)?.manifest().content_hash,
            inputs.data.content_key()?
        )
        .as_bytes(),
    );
    let key_file = work.join("key");
    if std::fs::read_to_string(&key_file).ok().as_deref() != Some(key.as_str()) && work.exists() {
        tracing::warn!(dir = %work.display(), "runs of another comparison: starting over");
        std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
    }
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
    std::fs::write(&key_file, &key).map_err(io("writing", &key_file))?;
    Ok(work)
}

/// The run in `work/DIR` if it finished before (its `row.json` exists), else `f()`, whose row is then saved.
fn cached(bench: &Bench, dir: &str, f: impl FnOnce() -> Result<CompareRow>) -> Result<CompareRow> {
    let path = bench.work.join(dir).join("row.json");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(row) = serde_json::from_slice::<CompareRow>(&bytes)
    {
        tracing::info!(run = %row.name, seed = row.seed, "finished before: kept");
        return Ok(row);
    }
    let row = f()?;
    std::fs::write(&path, serde_json::to_vec(&row)?).map_err(io("writing", &path))?;
    Ok(row)
}

/// The val outcomes of `model` as a row (passes, generation and seconds filled by the caller).
fn scored_row(
    bench: &Bench,
    model: &Trained,
    name: &str,
    seed: u64,
    kind: RunKind,
    dir: &str,
) -> CompareRow {
    let answers = greedy_answers(
        &model.model,
        &bench.data,
        &model.vocab,
        &bench.val,
        bench.base.eval_batch_size,
    );
    let (exact, accepted) = outcomes(&bench.data, &bench.val, &answers);
    CompareRow {
        name: name.to_owned(),
        seed,
        kind,
        lr: None,
        dir: dir.to_owned(),
        train_passes: 0,
        generated: 0,
        seconds: 0.0,
        metrics: eval_metrics(&bench.data, &bench.val, &answers),
        exact,
        accepted,
    }
}

/// Per sample: exact match with the reference, and accepted by the checker.
pub fn outcomes(data: &Dataset, indices: &[usize], answers: &[String]) -> (Vec<bool>, Vec<bool>) {
    indices
        .iter()
        .zip(answers)
        .map(|(&i, a)| {
            let s = &data.samples[i];
            (
                normalize_answer(a) == normalize_answer(&s.answer),
                accepted(s, a),
            )
        })
        .unzip()
}

/// Saves `model` with the checkpoint's config and vocabulary as a model folder (`model.bpk`, `config.json`,
/// `vocab.json`).
fn save_model(dir: &Path, model: &mmrl_model::MultimodalModel, start: &Trained) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    model
        .clone()
        .into_record()
        .save(dir.join("model.bpk"))
        .map_err(|e| Error::Checkpoint {
            path: dir.join("model.bpk"),
            message: e.to_string(),
        })?;
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(io("writing", &p))
    };
    write(
        "config.json",
        serde_json::to_vec_pretty(start.model.config())?,
    )?;
    write("vocab.json", serde_json::to_vec_pretty(&start.vocab)?)
}

/// The checkpoint itself, copied into `runs/start`.
fn start_row(bench: &Bench) -> Result<CompareRow> {
    let t = std::time::Instant::now();
    save_model(&bench.work.join("start"), &bench.start.model, &bench.start)?;
    let mut row = scored_row(
        bench,
        &bench.start,
        "sft checkpoint",
        0,
        RunKind::Start,
        "start",
    );
    row.seconds = t.elapsed().as_secs_f64();
    Ok(row)
}

/// Every run of one seed: the sft sweep and its best, self-training, full-label sft, the RL variants.
fn run_seed(
    bench: &Bench,
    seed: u64,
    on_row: &mut impl FnMut(&CompareRow),
) -> Result<Vec<CompareRow>> {
    let mut rows: Vec<CompareRow> = Vec::new();
    let mut push = |row: CompareRow, rows: &mut Vec<CompareRow>| {
        on_row(&row);
        rows.push(row);
    };
    for &lr in &bench.config.sft_lrs {
        let dir = format!("seed{seed}/sft-lr{lr:e}");
        let row = cached(bench, &dir, || {
            sft_run(
                bench,
                seed,
                &dir,
                SftData::Labeled,
                lr,
                &format!("continued sft lr={lr:e}"),
                RunKind::Sft,
            )
        })?;
        push(row, &mut rows);
    }
    let best = rows
        .iter()
        .filter(|r| r.kind == RunKind::Sft)
        .max_by(|a, b| a.metrics.exact_match.total_cmp(&b.metrics.exact_match))
        .cloned()
        .ok_or_else(|| Error::config("sft_lrs", "no continued sft run"))?;
    let best_lr = best.lr.unwrap_or(bench.base.lr);
    push(
        CompareRow {
            name: "continued sft (best lr on val)".into(),
            kind: RunKind::SftBest,
            ..best
        },
        &mut rows,
    );
    let extra = [
        (
            bench.config.self_training,
            SftData::SelfTrained,
            "self-training",
            RunKind::SelfTraining,
        ),
        (
            bench.config.full_label,
            SftData::FullLabel,
            "full-label sft (ceiling)",
            RunKind::FullLabel,
        ),
    ];
    for (on, which, name, kind) in extra {
        if on {
            let dir = format!("seed{seed}/{}", slug(name));
            let row = cached(bench, &dir, || {
                sft_run(bench, seed, &dir, which, best_lr, name, kind)
            })?;
            push(row, &mut rows);
        }
    }
    for name in &bench.config.variants {
        let dir = format!("seed{seed}/{}", slug(name));
        let row = cached(bench, &dir, || rl_run(bench, seed, &dir, name))?;
        push(row, &mut rows);
    }
    Ok(rows)
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Which train rows an sft run learns from, with which answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SftData {
    /// The labeled rows, as sft saw them.
    Labeled,
    /// The labeled rows, and the unlabeled ones with the checkpoint's greedy answers.
    SelfTrained,
    /// Every train row with its answer, the hidden ones revealed.
    FullLabel,
}

/// One continued-sft run at `lr` on `which` data, its model saved in `work/dir`.
fn sft_run(
    bench: &Bench,
    seed: u64,
    dir: &str,
    which: SftData,
    lr: f64,
    name: &str,
    kind: RunKind,
) -> Result<CompareRow> {
    let t = std::time::Instant::now();
    let mut data = bench.data.clone();
    let mut generated = 0;
    let unlabeled: Vec<usize> = (0..data.samples.len())
        .filter(|&i| data.samples[i].split == Split::Train && !data.samples[i].labeled)
        .collect();
    if which == SftData::SelfTrained {
        let pseudo = greedy_answers(
            &bench.start.model,
            &data,
            &bench.start.vocab,
            &unlabeled,
            bench.base.eval_batch_size,
        );
        generated = pseudo.len() as u64;
        for (&i, a) in unlabeled.iter().zip(pseudo) {
            // An `unsure` or empty pseudo-label teaches nothing: such rows stay out.
            if !a.is_empty() && a != UNSURE {
                data.samples[i].answer = a;
                data.samples[i].labeled = true;
            }
        }
    }
    if which == SftData::FullLabel {
        for &i in &unlabeled {
            data.samples[i].labeled = true;
        }
    }
    let passes = bench.base.train_passes();
    let model = continued_sft(bench, &data, seed, lr, passes)?;
    let path = bench.work.join(dir);
    save_model(&path, &model, &bench.start)?;
    let trained = Trained {
        model: model.valid(),
        vocab: bench.start.vocab.clone(),
    };
    let mut row = scored_row(bench, &trained, name, seed, kind, dir);
    row.lr = Some(lr);
    row.train_passes = passes / bench.base.batch_size as u64 * bench.base.batch_size as u64;
    row.generated = generated;
    row.seconds = t.elapsed().as_secs_f64();
    Ok(row)
}

/// Continued sft from the checkpoint for `passes` sample forward+backward passes at peak `lr` with the RL
/// config's schedule, weight decay and shards; trains on `data`'s labeled train rows.
fn continued_sft(
    bench: &Bench,
    data: &Dataset,
    seed: u64,
    lr: f64,
    passes: u64,
) -> Result<mmrl_model::MultimodalModel> {
    let base = &bench.base;
    let device = base.device.device()?.autodiff();
    let file = Artifact::open(&bench.inputs.model)?.file("model.bpk")?;
    let mut model = load_model(bench.start.model.config().init(&device, 0)?, &file)?;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(base.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let bs = base.batch_size;
    let steps = passes / bs as u64;
    let schedule = Schedule {
        config: base.schedule.clone(),
        lr,
        total_steps: steps,
        state: ScheduleState::default(),
    };
    let (mut epoch, mut pos) = (0u64, 0usize);
    let mut order = data.epoch_order(seed, epoch);
    for s in 0..steps {
        let mut items = Vec::with_capacity(bs);
        while items.len() < bs && !order.is_empty() {
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
            data,
            &bench.start.vocab,
            &items,
            base.grad_accum * base.shards,
            schedule.lr(s),
            base.grad_clip,
            0.1,
            &mut rng,
        )?;
        model = next;
    }
    Ok(model)
}

/// One RL variant: the rl stage into `work/dir`, then its val outcomes.
fn rl_run(bench: &Bench, seed: u64, dir: &str, name: &str) -> Result<CompareRow> {
    let cfg = variant(&bench.base, name)
        .ok_or_else(|| Error::config("variants", format!("unknown variant {name:?}")))?;
    let t = std::time::Instant::now();
    let out = bench.work.join(dir);
    let inputs = RlInputs {
        model: bench.inputs.model.clone(),
        data: bench.inputs.data.clone(),
    };
    let Outcome::Done(report) = stage::run(&cfg, seed, &inputs, &out, Hooks::default())? else {
        return Err(Error::config("variants", format!("{name} did not finish")));
    };
    let trained = load_trained(&out, DeviceKind::Cpu)?;
    let mut row = scored_row(bench, &trained, name, seed, RunKind::Rl, dir);
    row.train_passes = report.train_passes;
    row.generated = report.generated;
    row.seconds = t.elapsed().as_secs_f64();
    Ok(row)
}

/// Writes the artifact: `runs/` (every model), `models.json`, `compare.json`, `compare.md`.
fn commit(bench: &Bench, output: &Path, report: &CompareReport) -> Result<()> {
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(bench.config)?,
        seed: None,
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("model", &Artifact::open(&bench.inputs.model)?);
    if let Some(rl) = &bench.inputs.rl {
        writer.input_artifact("rl", &Artifact::open(rl)?);
    }
    writer.input_artifact("samples", &Artifact::open(&bench.inputs.data.samples)?);
    bench.inputs.data.record_modalities(&mut writer)?;
    writer.fit_splits(&["train"]);
    let runs = writer.tmp_dir().join("runs");
    let mut entries: Vec<ModelEntry> = Vec::new();
    for row in &report.runs {
        if row.kind == RunKind::SftBest
            || entries.iter().any(|e| e.dir == format!("runs/{}", row.dir))
        {
            continue;
        }
        let (from, to) = (bench.work.join(&row.dir), runs.join(&row.dir));
        std::fs::create_dir_all(&to).map_err(io("creating", &to))?;
        for f in ["model.bpk", "config.json", "vocab.json"] {
            std::fs::copy(from.join(f), to.join(f)).map_err(io("copying", &from.join(f)))?;
        }
        entries.push(ModelEntry {
            name: row.dir.clone(),
            dir: format!("runs/{}", row.dir),
        });
    }
    writer.add_dir("runs", Role::State, Some(entries.len() as u64))?;
    writer.write_json(MODELS_FILE, Role::State, &entries)?;
    writer.write_json("compare.json", Role::Report, report)?;
    let md = markdown(report, bench.config.bootstrap_samples);
    let md_path = writer.tmp_dir().join("compare.md");
    std::fs::write(&md_path, md).map_err(io("writing", &md_path))?;
    writer.add_file("compare.md", Role::Report)?;
    writer.commit()?;
    Ok(())
}

/// Paired bootstrap of the difference in mean of `a` and `b` (aligned 0/1 outcomes): the observed difference
/// and its 95% percentile interval, from `samples` resamples seeded by `seed`. `None` without samples.
pub fn paired_delta(a: &[bool], b: &[bool], samples: usize, seed: u64) -> Option<(f64, f64, f64)> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let n = a.len();
    let diff: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(u8::from(x)) - f64::from(u8::from(y)))
        .collect();
    let delta = diff.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut deltas: Vec<f64> = (0..samples)
        .map(|_| (0..n).map(|_| diff[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    deltas.sort_by(f64::total_cmp);
    let at =
        |q: f64| deltas[((q * (deltas.len() - 1) as f64).round() as usize).min(deltas.len() - 1)];
    Some((delta, at(0.025), at(0.975)))
}

/// The mean of the outcomes of the samples whose question type is in `qtypes` (`None`: all samples).
fn group_mean(values: &[bool], qtypes: &[&str], keep: &dyn Fn(&str) -> bool) -> (f64, usize) {
    let kept: Vec<bool> = values
        .iter()
        .zip(qtypes)
        .filter(|(_, q)| keep(q))
        .map(|(v, _)| *v)
        .collect();
    let n = kept.len();
    let hits = kept.iter().filter(|v| **v).count();
    (
        if n == 0 {
            f64::NAN
        } else {
            hits as f64 / n as f64
        },
        n,
    )
}

/// The comparison table, one row per run name (mean over seeds), as a header and rows of cells.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComparisonTable {
    /// The split scored.
    pub split: String,
    /// Samples per group on that split.
    pub samples: BTreeMap<String, usize>,
    /// Column names.
    pub header: Vec<String>,
    /// One row of cells per run name.
    pub rows: Vec<Vec<String>>,
    /// Per run name and seed: the label-scarce exact-match difference against the checkpoint and against
    /// continued sft (points) with its 95% paired-bootstrap interval.
    pub deltas: BTreeMap<String, Vec<SeedDelta>>,
}

/// The label-scarce differences of one run in one seed (points of exact match).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedDelta {
    /// The seed.
    pub seed: u64,
    /// Against the sft checkpoint: difference, interval low, interval high.
    pub vs_sft: (f64, f64, f64),
    /// Against continued sft (best lr on val).
    pub vs_continued: (f64, f64, f64),
}

/// Outcomes of a run on some split, aligned with the split's samples.
pub struct RunOutcomes<'a> {
    /// The run.
    pub row: &'a CompareRow,
    /// Exact match per sample.
    pub exact: &'a [bool],
    /// Accepted per sample.
    pub accepted: &'a [bool],
}

/// The columns of the comparison table.
const TABLE_HEADER: [&str; 11] = [
    "run",
    "fwd+bwd passes",
    "answers generated",
    "label-scarce EM",
    "Δ vs sft (points, 95% CI per seed)",
    "Δ vs continued sft",
    "set-valued accepted",
    "set-valued EM",
    "other types EM",
    "all EM",
    "seconds",
];

/// The table over `runs` (outcomes on `split`, whose samples have question types `qtypes`).
pub fn table(
    groups: &QtypeGroups,
    split: &str,
    qtypes: &[&str],
    runs: &[RunOutcomes],
    bootstrap: usize,
) -> ComparisonTable {
    let in_group = |g: &'static str| move |q: &str| groups.of_qtype(q).contains(&g);
    let scarce = in_group("label_scarce");
    let set = in_group("set_valued");
    let other = in_group("other");
    let mut t = ComparisonTable {
        split: split.to_owned(),
        header: TABLE_HEADER.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    for (name, keep) in [
        ("label_scarce", &scarce as &dyn Fn(&str) -> bool),
        ("set_valued", &set),
        ("other", &other),
    ] {
        t.samples
            .insert(name.to_owned(), qtypes.iter().filter(|q| keep(q)).count());
    }
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.row.name.as_str()) {
            names.push(&r.row.name);
        }
    }
    for name in names {
        let mine: Vec<&RunOutcomes> = runs.iter().filter(|r| r.row.name == name).collect();
        let mean = |f: &dyn Fn(&RunOutcomes) -> f64| mean_cell(&mine, f);
        let seeds = seed_deltas(&mine, runs, qtypes, &scarce, bootstrap);
        let show = |f: &dyn Fn(&SeedDelta) -> (f64, f64, f64)| delta_cell(name, &seeds, f);
        let first = mine[0].row;
        t.rows.push(vec![
            name.to_owned(),
            first.train_passes.to_string(),
            first.generated.to_string(),
            mean(&|r| group_mean(r.exact, qtypes, &scarce).0),
            show(&|s| s.vs_sft),
            show(&|s| s.vs_continued),
            mean(&|r| group_mean(r.accepted, qtypes, &set).0),
            mean(&|r| group_mean(r.exact, qtypes, &set).0),
            mean(&|r| group_mean(r.exact, qtypes, &other).0),
            mean(&|r| group_mean(r.exact, qtypes, &|_| true).0),
            format!(
                "{:.0}",
                mine.iter().map(|r| r.row.seconds).sum::<f64>() / mine.len() as f64
            ),
        ]);
        if name != "sft checkpoint" {
            t.deltas.insert(name.to_owned(), seeds);
        }
    }
    t
}

/// A cell over the seeds of one run: the mean of `f` (NaN left out) ± half its range, or `-`.
fn mean_cell(mine: &[&RunOutcomes], f: &dyn Fn(&RunOutcomes) -> f64) -> String {
    let v: Vec<f64> = mine.iter().map(|r| f(r)).filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.len() > 1 {
            format!("{m:.3} ± {:.3}", (hi - lo) / 2.0)
        } else {
            format!("{m:.3}")
        }
    }
}

/// Per seed of one run, its label-scarce exact-match difference (points, paired-bootstrap interval) against
/// the sft checkpoint and against continued sft of the same seed; seeds without both are left out.
fn seed_deltas(
    mine: &[&RunOutcomes],
    runs: &[RunOutcomes],
    qtypes: &[&str],
    scarce: &dyn Fn(&str) -> bool,
    bootstrap: usize,
) -> Vec<SeedDelta> {
    let reference = |seed: u64, kind: RunKind| {
        runs.iter()
            .find(|r| r.row.kind == kind && (kind == RunKind::Start || r.row.seed == seed))
    };
    let mut seeds = Vec::new();
    for r in mine {
        let delta = |kind: RunKind| {
            let b = reference(r.row.seed, kind)?;
            let pick = |v: &[bool]| -> Vec<bool> {
                v.iter()
                    .zip(qtypes)
                    .filter(|(_, q)| scarce(q))
                    .map(|(x, _)| *x)
                    .collect()
            };
            let (d, lo, hi) = paired_delta(&pick(r.exact), &pick(b.exact), bootstrap, r.row.seed)?;
            Some((100.0 * d, 100.0 * lo, 100.0 * hi))
        };
        if let (Some(vs_sft), Some(vs_continued)) = (delta(RunKind::Start), delta(RunKind::SftBest))
        {
            seeds.push(SeedDelta {
                seed: r.row.seed,
                vs_sft,
                vs_continued,
            });
        }
    }
    seeds
}

/// A Δ cell: each seed's difference `f` with its interval, and in how many seeds the interval lies above
/// zero; `-` for the sft checkpoint itself or without seeds.
fn delta_cell(
    name: &str,
    seeds: &[SeedDelta],
    f: &dyn Fn(&SeedDelta) -> (f64, f64, f64),
) -> String {
    if seeds.is_empty() || name == "sft checkpoint" {
        return "-".to_owned();
    }
    let above = seeds.iter().filter(|s| f(s).1 > 0.0).count();
    let each: Vec<String> = seeds
        .iter()
        .map(|s| {
            let (d, lo, hi) = f(s);
            format!("{d:+.1} [{lo:+.1}, {hi:+.1}]")
        })
        .collect();
    format!("{} (CI > 0 in {above}/{})", each.join("; "), seeds.len())
}

/// A table as Markdown.
pub fn table_markdown(t: &ComparisonTable) -> String {
    let mut s = format!(
        "| {} |\n|{}|\n",
        t.header.join(" | "),
        vec!["---"; t.header.len()].join("|")
    );
    for r in &t.rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// `compare.md`: the val table with its legend.
pub fn markdown(report: &CompareReport, bootstrap: usize) -> String {
    let runs: Vec<RunOutcomes> = report
        .runs
        .iter()
        .map(|row| RunOutcomes {
            row,
            exact: &row.exact,
            accepted: &row.accepted,
        })
        .collect();
    let val_qtypes: Vec<&str> = report.val_qtypes.iter().map(String::as_str).collect();
    let t = table(&report.groups, "val", &val_qtypes, &runs, bootstrap);
    format!("{}\n\n{}", legend(report, &t), table_markdown(&t))
}

/// What a comparison table shows, in words.
pub fn legend(report: &CompareReport, t: &ComparisonTable) -> String {
    format!(
        "RL against its baselines on the {} split ({} label-scarce, {} set-valued, {} other samples). \
         Label-scarce types: {}; set-valued: {}. Seeds {:?}; each cell is the mean ± half the range over the seeds; \
         Δ columns: label-scarce exact-match difference in points with its 95% paired-bootstrap interval, per seed. \
         RL rewards: {}.",
        t.split,
        t.samples.get("label_scarce").copied().unwrap_or(0),
        t.samples.get("set_valued").copied().unwrap_or(0),
        t.samples.get("other").copied().unwrap_or(0),
        join(report.groups.label_scarce.iter()),
        join(report.groups.set_valued.iter()),
        report.config.seeds,
        report
            .rl
            .rewards
            .iter()
            .map(|r| format!("{} x{}", r.name, r.weight))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn join<'a>(v: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = v.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Scores every model of the comparison artifact at `dir` on the samples `indices` of `data` (eval gives the test
/// split) and builds the table, with paired bootstrap intervals per seed; also returns `compare.json`.
pub fn evaluate_runs(
    dir: &Path,
    data: &Dataset,
    indices: &[usize],
    split: &str,
    batch_size: usize,
    bootstrap: usize,
) -> Result<(CompareReport, ComparisonTable)> {
    let artifact = Artifact::open(dir)?;
    let path = artifact.file("compare.json")?;
    let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
    let report: CompareReport = serde_json::from_slice(&bytes)?;
    let models: BTreeMap<String, Trained> = mmrl_model::predict::load_models(dir, DeviceKind::Cpu)?
        .into_iter()
        .map(|(name, t)| {
            // `load_models` names them `STAGE/ENTRY`; entries are the runs' folders.
            let entry = name
                .split_once('/')
                .map_or(name.clone(), |(_, e)| e.to_owned());
            (entry, t)
        })
        .collect();
    let mut outcomes: BTreeMap<String, (Vec<bool>, Vec<bool>)> = BTreeMap::new();
    for row in &report.runs {
        if outcomes.contains_key(&row.dir) {
            continue;
        }
        let model = models.get(&row.dir).ok_or_else(|| Error::Input {
            path: dir.to_path_buf(),
            message: format!(
                "models.json lists no model for run {:?} ({})",
                row.name, row.dir
            ),
        })?;
        let answers = greedy_answers(&model.model, data, &model.vocab, indices, batch_size);
        outcomes.insert(row.dir.clone(), self::outcomes(data, indices, &answers));
        tracing::info!(run = %row.name, seed = row.seed, "scored");
    }
    let runs: Vec<RunOutcomes> = report
        .runs
        .iter()
        .map(|row| {
            let (e, a) = &outcomes[&row.dir];
            RunOutcomes {
                row,
                exact: e,
                accepted: a,
            }
        })
        .collect();
    let qtypes: Vec<&str> = indices
        .iter()
        .map(|&i| data.samples[i].qtype.as_str())
        .collect();
    let t = table(&report.groups, split, &qtypes, &runs, bootstrap);
    Ok((report, t))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(name: &str, seed: u64, kind: RunKind) -> CompareRow {
        CompareRow {
            name: name.to_owned(),
            seed,
            kind,
            lr: None,
            dir: format!("{name}-{seed}"),
            train_passes: 100,
            generated: 0,
            seconds: 2.0,
            metrics: EvalMetrics::default(),
            exact: Vec::new(),
            accepted: Vec::new(),
        }
    }

    /// `hits` trues then falses, `n` in all.
    fn outcomes(hits: usize, n: usize) -> Vec<bool> {
        (0..n).map(|i| i < hits).collect()
    }

    #[test]
    fn paired_delta_is_the_mean_difference_with_a_seeded_interval() {
        let a = outcomes(30, 40);
        let b = outcomes(10, 40);
        let (d, lo, hi) = paired_delta(&a, &b, 2000, 7).unwrap();
        assert!((d - 0.5).abs() < 1e-12);
        assert!(lo > 0.3 && lo < 0.5 && hi > 0.5 && hi < 0.7, "[{lo}, {hi}]");
        assert_eq!(paired_delta(&a, &b, 2000, 7), Some((d, lo, hi)));
        assert_eq!(paired_delta(&a, &a, 500, 1), Some((0.0, 0.0, 0.0)));
        assert_eq!(paired_delta(&a, &b[..39], 500, 1), None);
        assert_eq!(paired_delta(&[], &[], 500, 1), None);
    }

    #[test]
    fn the_table_scores_each_group_and_compares_rl_with_both_baselines_per_seed() {
        let groups = QtypeGroups {
            label_scarce: ["scarce".to_owned()].into(),
            set_valued: ["set".to_owned()].into(),
        };
        // 40 label-scarce, 10 set-valued and 10 other samples.
        let mut qtypes = vec!["scarce"; 40];
        qtypes.extend(["set"; 10]);
        qtypes.extend(["other"; 10]);
        let with = |scarce: usize, set: usize, other: usize| {
            let mut v = outcomes(scarce, 40);
            v.extend(outcomes(set, 10));
            v.extend(outcomes(other, 10));
            v
        };
        let start = (
            row("sft checkpoint", 0, RunKind::Start),
            with(4, 2, 8),
            with(4, 6, 8),
        );
        let mut runs = vec![start];
        for seed in [1, 2] {
            runs.push((
                row("continued sft", seed, RunKind::SftBest),
                with(8, 2, 8),
                with(8, 6, 8),
            ));
            let rl = 26 + 4 * seed as usize;
            runs.push((
                row("grpo", seed, RunKind::Rl),
                with(rl, 3, 7),
                with(rl, 10, 7),
            ));
        }
        let runs: Vec<RunOutcomes> = runs
            .iter()
            .map(|(row, exact, accepted)| RunOutcomes {
                row,
                exact,
                accepted,
            })
            .collect();
        let t = table(&groups, "test", &qtypes, &runs, 1000);
        assert_eq!(t.split, "test");
        assert_eq!(t.samples["label_scarce"], 40);
        assert_eq!(t.samples["set_valued"], 10);
        assert_eq!(t.samples["other"], 10);
        let names: Vec<&str> = t.rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, ["sft checkpoint", "continued sft", "grpo"]);
        let cell = |name: &str, column: &str| {
            let c = t.header.iter().position(|h| h == column).unwrap();
            t.rows.iter().find(|r| r[0] == name).unwrap()[c].clone()
        };
        assert_eq!(cell("sft checkpoint", "label-scarce EM"), "0.100");
        assert_eq!(
            cell("sft checkpoint", "Δ vs sft (points, 95% CI per seed)"),
            "-"
        );
        // grpo: 30/40 and 34/40 label-scarce.
        assert_eq!(cell("grpo", "label-scarce EM"), "0.800 ± 0.050");
        assert_eq!(cell("grpo", "set-valued accepted"), "1.000 ± 0.000");
        assert_eq!(cell("grpo", "set-valued EM"), "0.300 ± 0.000");
        assert_eq!(cell("grpo", "other types EM"), "0.700 ± 0.000");
        assert_eq!(cell("grpo", "seconds"), "2");
        let vs_sft = cell("grpo", "Δ vs sft (points, 95% CI per seed)");
        assert!(
            vs_sft.starts_with("+65.0 [")
                && vs_sft.contains("; +75.0 [")
                && vs_sft.ends_with("(CI > 0 in 2/2)"),
            "{vs_sft}"
        );
        let vs_continued = cell("grpo", "Δ vs continued sft");
        assert!(vs_continued.starts_with("+55.0 ["), "{vs_continued}");
        let deltas = &t.deltas["grpo"];
        assert_eq!(deltas.iter().map(|d| d.seed).collect::<Vec<_>>(), [1, 2]);
        assert!((deltas[1].vs_continued.0 - 65.0).abs() < 1e-9);
        assert!(!t.deltas.contains_key("sft checkpoint"));
        // The checkpoint's own interval is not compared with itself; continued sft is +10 points over it.
        let continued = &t.deltas["continued sft"];
        assert!((continued[0].vs_sft.0 - 10.0).abs() < 1e-9);
        assert_eq!(continued[0].vs_continued, (0.0, 0.0, 0.0));
    }
}
