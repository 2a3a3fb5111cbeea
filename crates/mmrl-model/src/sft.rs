//! The sft stage: supervised fine-tuning of the model on the train split, early stopping on val exact
//! match, resumable checkpoints.
//!
//! Every random draw is a pure function of `(seed, epoch)` (data order, views) or `(seed, step)` (dropout,
//! modality dropout), and parameters are initialized from the seed, so a run killed and resumed from its
//! last checkpoint replays exactly the steps the uninterrupted run would have taken. The "RNG state" saved
//! with a checkpoint is therefore the seed and the step/epoch counters.
//!
//! While training, checkpoints live in a work folder next to the output (`.NAME.sft-work/`), keyed by the
//! resolved config, the seed and the inputs' content hashes; running the stage again with the same key
//! resumes from there. The committed artifact holds the best model (`model.bpk`), the last checkpoint
//! (`checkpoint/`: model and training state; the optimizer state stays in the work folder), `config.json`, `vocab.json`, the metrics tables and `report.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor};
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, InputPaths};
use crate::error::{Error, Result, config_err, io};
use crate::model::{Decoding, Dropout, Generated, ModelConfig, MultimodalModel, Preset};
use crate::parallel::{sharded_grads, threads};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleState};
use crate::vocab::{Vocab, normalize_answer};

/// Stage name in manifests.
pub const STAGE: &str = "sft";

/// Default data-parallel shards per micro-batch ([`SftConfig::shards`]): one per core of a 2-core machine.
pub const DEFAULT_SHARDS: usize = 2;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// burn's flex CPU backend.
    Cpu,
    /// burn's wgpu backend on Vulkan (feature `vulkan`).
    Vulkan,
    /// burn's cuda backend on the first NVIDIA GPU (feature `cuda`).
    Cuda,
}

impl DeviceKind {
    /// The burn device (plain, without autodiff); a GPU kind this binary was built without is a config
    /// error that names the feature.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "vulkan")]
            DeviceKind::Vulkan => Ok(Device::vulkan(Default::default())),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            gpu => Err(config_err("device", missing_feature(gpu))),
        }
    }

    /// The name configs and `--device` use.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Vulkan => "vulkan",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the feature the device needs.
    pub fn is_built(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Vulkan => cfg!(feature = "vulkan"),
            DeviceKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

/// What to do about a GPU device whose feature this binary lacks.
fn missing_feature(kind: DeviceKind) -> String {
    let name = kind.name();
    let setup = if kind == DeviceKind::Cuda {
        " (after scripts/setup-cuda-llvm.sh)"
    } else {
        ""
    };
    format!(
        "\"{name}\" needs the stage built with `--features {name}`{setup}; this binary has no {name} backend, use \"cpu\""
    )
}

/// Parameters of the sft stage (`[stages.sft.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Size preset; the fields below override its width and depth when set.
    pub preset: Preset,
    /// Token width (overrides the preset).
    pub d_model: Option<usize>,
    /// Encoder layers (overrides the preset).
    pub encoder_layers: Option<usize>,
    /// Decoder layers (overrides the preset).
    pub decoder_layers: Option<usize>,
    /// Attention heads (overrides the preset).
    pub heads: Option<usize>,
    /// Feed-forward width / d_model.
    pub ff_mult: usize,
    /// Image patch side.
    pub image_patch: usize,
    /// Mel frames per audio token.
    pub audio_patch: usize,
    /// Dropout on embeddings and residual branches.
    pub dropout: f64,
    /// Probability of masking each present modality of a train sample.
    pub modality_dropout: f64,
    /// Question words kept.
    pub max_question_len: usize,
    /// Answer tokens generated at most.
    pub max_answer_len: usize,
    /// Passes over the train split at most.
    pub epochs: u32,
    /// Stop after this many optimizer steps (0: no limit).
    pub max_steps: u64,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (must divide `batch_size`).
    pub grad_accum: usize,
    /// Data-parallel shards of each micro-batch: their gradients are computed concurrently on CPU threads
    /// (`MMRL_THREADS`, default every core) and summed. The update equals one over the unsharded batch
    /// up to float rounding and dropout draws; results depend on this number, never on the thread count.
    pub shards: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    pub grad_clip: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Epochs without a val exact-match improvement before stopping (0: never stop early).
    pub early_stopping_patience: u32,
    /// Samples per batch when decoding val.
    pub eval_batch_size: usize,
    /// Save a checkpoint every this many steps (and at every epoch end; 0: epoch ends only).
    pub checkpoint_every: u64,
    /// Where to train.
    pub device: DeviceKind,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Tiny,
            d_model: None,
            encoder_layers: None,
            decoder_layers: None,
            heads: None,
            ff_mult: 4,
            image_patch: 8,
            audio_patch: 4,
            dropout: 0.1,
            modality_dropout: 0.1,
            max_question_len: 16,
            max_answer_len: 4,
            epochs: 30,
            max_steps: 0,
            batch_size: 32,
            grad_accum: 1,
            shards: DEFAULT_SHARDS,
            lr: 2e-3,
            weight_decay: 0.01,
            grad_clip: 1.0,
            schedule: ScheduleConfig::default(),
            early_stopping_patience: 6,
            eval_batch_size: 256,
            checkpoint_every: 200,
            device: DeviceKind::Cpu,
        }
    }
}

impl SftConfig {
    /// Checks every field before any compute; errors name the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        self.model_config().check()?;
        if self.batch_size == 0 {
            return Err(config_err("batch_size", "must be at least 1"));
        }
        if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
            return Err(config_err(
                "grad_accum",
                format!(
                    "must be at least 1 and divide batch_size {}, got {}",
                    self.batch_size, self.grad_accum
                ),
            ));
        }
        if self.shards == 0 || self.grad_accum * self.shards > self.batch_size {
            return Err(config_err(
                "shards",
                format!(
                    "must be at least 1 with grad_accum x shards <= batch_size {}, got {} x {}",
                    self.batch_size, self.grad_accum, self.shards
                ),
            ));
        }
        if self.epochs == 0 {
            return Err(config_err("epochs", "must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return Err(config_err(
                "lr",
                format!("must be in (0, 1), got {}", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(config_err(
                "weight_decay",
                format!("must be in [0, 1), got {}", self.weight_decay),
            ));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(config_err(
                "grad_clip",
                format!("must be 0 (off) or positive, got {}", self.grad_clip),
            ));
        }
        if !(0.0..1.0).contains(&self.modality_dropout) {
            return Err(config_err(
                "modality_dropout",
                format!("must be in [0, 1), got {}", self.modality_dropout),
            ));
        }
        if self.eval_batch_size == 0 {
            return Err(config_err("eval_batch_size", "must be at least 1"));
        }
        self.schedule.validate(self.lr)
    }

    /// The model hyperparameters (data-derived sizes still at their defaults).
    pub fn model_config(&self) -> ModelConfig {
        let mut c = ModelConfig::preset(self.preset)
            .with_ff_mult(self.ff_mult)
            .with_image_patch(self.image_patch)
            .with_audio_patch(self.audio_patch)
            .with_dropout(self.dropout)
            .with_max_question_len(self.max_question_len)
            .with_max_answer_len(self.max_answer_len);
        if let Some(v) = self.d_model {
            c.d_model = v;
        }
        if let Some(v) = self.encoder_layers {
            c.encoder_layers = v;
        }
        if let Some(v) = self.decoder_layers {
            c.decoder_layers = v;
        }
        if let Some(v) = self.heads {
            c.heads = v;
        }
        c
    }
}

/// One row of `metrics_steps.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    /// Optimizer step (1-based).
    pub step: u64,
    /// Epoch (0-based).
    pub epoch: u32,
    /// Mean token NLL of the step's batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the batch was skipped for NaN/inf inputs (then no update happened).
    pub skipped: bool,
}

/// One row of `metrics_val.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValRow {
    /// Epoch (0-based).
    pub epoch: u32,
    /// Question type, or `all`.
    pub qtype: String,
    /// Val samples of that type.
    pub samples: u64,
    /// Exact-match accuracy.
    pub exact_match: f64,
}

/// Everything besides tensors that a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Identity of the run (config, seed, inputs); a checkpoint with another key is not resumed.
    pub key: String,
    /// The stage seed: every random stream is derived from it and the counters below.
    pub seed: u64,
    /// Optimizer steps taken.
    pub step: u64,
    /// Current epoch.
    pub epoch: u32,
    /// Batches of the current epoch already done.
    pub batch_in_epoch: u64,
    /// Learning-rate schedule state.
    pub schedule: ScheduleState,
    /// Best val exact match so far.
    pub best_exact_match: Option<f64>,
    /// Its epoch.
    pub best_epoch: Option<u32>,
    /// Epochs since the best.
    pub bad_epochs: u32,
    /// Whether training ended (early stop, max steps or epochs).
    pub finished: bool,
    /// Whether it ended by early stopping.
    pub stopped_early: bool,
    /// Step metrics so far.
    pub steps: Vec<StepRow>,
    /// Val metrics so far.
    pub val: Vec<ValRow>,
}

/// Exact match of one qtype in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QtypeReport {
    /// Val samples.
    pub samples: u64,
    /// The model's val exact match (best epoch).
    pub exact_match: f64,
    /// Val exact match of always answering the train majority answer of this qtype.
    pub majority_baseline: f64,
    /// That answer.
    pub majority_answer: String,
}

/// `report.json` of the sft stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftReport {
    /// Val exact match of the best epoch, all types.
    pub val_exact_match: f64,
    /// Per-qtype majority baseline, all types.
    pub majority_baseline: f64,
    /// Per question type.
    pub by_qtype: BTreeMap<String, QtypeReport>,
    /// The epoch whose model was kept.
    pub best_epoch: u32,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Steps skipped for NaN/inf inputs.
    pub skipped_steps: u64,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// Model parameters.
    pub parameters: usize,
    /// Train / val samples after the joins.
    pub train_samples: usize,
    /// Val samples.
    pub val_samples: usize,
    /// Samples excluded because a modality stage dropped them, by modality.
    pub dropped: BTreeMap<String, usize>,
}

/// Progress of a run, for a binary's progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps planned.
    pub total: u64,
    /// Loss of the last step.
    pub loss: f64,
}

/// Outside control of a run.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every optimizer step.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// Stop (as if killed) right after saving the checkpoint of this step; for resume tests.
    pub stop_after_step: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The artifact was committed.
    Done(Box<SftReport>),
    /// Stopped by [`Hooks::stop_after_step`]; the work folder holds the checkpoint.
    Interrupted {
        /// The last step.
        step: u64,
    },
}

/// A seed for one random stream: splitmix64 over (stage seed, purpose, counter), so every stream of a
/// stage (per step, per purpose) is independent and reproducible.
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Global L2 norm of the gradients of `model`'s parameters.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    squares: Vec<Tensor<1>>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.squares.push(g.square().sum());
        }
    }
}

/// Multiplies every gradient by `factor`.
struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl ModuleVisitor for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global gradient norm; when `clip > 0` and the norm exceeds it, scales the gradients down to `clip`.
pub fn clip_global_norm(model: &MultimodalModel, grads: &mut GradientsParams, clip: f64) -> f64 {
    let mut v = GradNorm {
        grads,
        squares: Vec::new(),
    };
    model.visit(&mut v);
    if v.squares.is_empty() {
        return 0.0;
    }
    let norm = f64::from(Tensor::cat(v.squares, 0).sum().into_scalar::<f32>()).sqrt();
    if clip > 0.0 && norm > clip {
        model.visit(&mut ScaleGrads {
            grads,
            factor: (clip / (norm + 1e-6)) as f32,
        });
    }
    norm
}

/// One optimizer step over `items` split into `micro_batches` parts (gradient accumulation x data-parallel
/// shards): returns the updated model, the mean token loss, the gradient norm, or `None` for the model
/// when a batch held NaN/inf inputs (skipped). The parts run forward and backward on
/// [`crate::parallel::threads`] threads at a time; the result does not depend on that number.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: MultimodalModel,
    optim: &mut ModuleOptimizer,
    data: &Dataset,
    vocab: &Vocab,
    items: &[(usize, usize)],
    micro_batches: usize,
    lr: f64,
    clip: f64,
    modality_dropout: f64,
    rng: &mut ChaCha8Rng,
) -> Result<(MultimodalModel, Option<(f64, f64)>)> {
    let cfg = model.config().clone();
    let micro = items.len().div_ceil(micro_batches.max(1)).max(1);
    let mut parts = Vec::new();
    for chunk in items.chunks(micro) {
        let (batch, answers) = data.batch(chunk, vocab, &cfg, Some((&mut *rng, modality_dropout)));
        if batch.has_non_finite(&cfg) {
            tracing::warn!(
                samples = chunk.len(),
                "batch holds NaN/inf inputs: skipped, not trained on"
            );
            return Ok((model, None));
        }
        // Each part draws its dropout masks from its own generator, so parts can run concurrently.
        parts.push((batch, answers, rng.random::<u64>()));
    }
    let tokens: usize = parts
        .iter()
        .flat_map(|(_, a, _)| a.iter().map(|a| a.len().min(cfg.max_answer_len) + 1))
        .sum();
    let (mut grads, losses) = sharded_grads(&model, parts.len(), threads(), |m, i| {
        let (batch, answers, seed) = &parts[i];
        let mut part_rng = ChaCha8Rng::seed_from_u64(*seed);
        let loss = m.nll(
            batch,
            answers,
            tokens as f32,
            &mut Dropout::train(&mut part_rng, cfg.dropout),
        );
        let value = f64::from(loss.clone().into_scalar::<f32>());
        Ok::<_, Error>((loss, value))
    })?;
    let loss_sum: f64 = losses.iter().sum();
    if !loss_sum.is_finite() {
        return Err(Error::Diverged {
            step: 0,
            message: format!(
                "loss is {loss_sum} at lr {lr:.3e}; lower lr, raise schedule.warmup_steps or set grad_clip"
            ),
        });
    }
    let norm = clip_global_norm(&model, &mut grads, clip);
    let model = optim.step(lr, model, grads);
    Ok((model, Some((loss_sum, norm))))
}

/// Greedy answers of the samples `indices`, in order.
pub fn decode_split(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
) -> Vec<Generated> {
    decode_split_with(model, data, vocab, indices, batch_size, |_| {})
}

/// As [`decode_split`], with `adjust` applied to each batch before decoding (eval's ablations mark a
/// modality absent there).
pub fn decode_split_with(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
    adjust: impl Fn(&mut crate::model::Batch),
) -> Vec<Generated> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for chunk in indices.chunks(batch_size.max(1)) {
        let items: Vec<(usize, usize)> = chunk.iter().map(|&i| (i, 0)).collect();
        let (mut batch, _) = data.batch(&items, vocab, model.config(), None);
        adjust(&mut batch);
        out.extend(model.generate(&batch, Decoding::Greedy, &mut rng));
    }
    out
}

/// Exact match per qtype (and `all`) of predicted answers against the references of `indices`.
pub fn exact_match(
    data: &Dataset,
    indices: &[usize],
    predicted: &[String],
) -> BTreeMap<String, (u64, f64)> {
    let mut hits: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (&i, p) in indices.iter().zip(predicted) {
        let s = &data.samples[i];
        let hit = u64::from(normalize_answer(p) == normalize_answer(&s.answer));
        for key in [s.qtype.clone(), "all".to_owned()] {
            let e = hits.entry(key).or_default();
            e.0 += 1;
            e.1 += hit;
        }
    }
    hits.into_iter()
        .map(|(k, (n, h))| (k, (n, h as f64 / n.max(1) as f64)))
        .collect()
}

/// The most frequent labeled train answer of each qtype (ties: alphabetically first).
pub fn majority_answers(data: &Dataset) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for i in data.labeled_train() {
        let s = &data.samples[i];
        *counts
            .entry(s.qtype.clone())
            .or_default()
            .entry(normalize_answer(&s.answer))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .filter_map(|(q, c)| {
            let best = c
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))?;
            Some((q, best.0.clone()))
        })
        .collect()
}

/// The work folder of a run writing `output`.
pub fn work_dir(output: &Path) -> PathBuf {
    mmrl_artifact::work_dir(output, "sft-work")
}

fn save_checkpoint(
    dir: &Path,
    model: &MultimodalModel,
    optim: &ModuleOptimizer,
    state: &TrainState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let ck = |e: burn::store::RecordError| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    // state.json is written last and renamed into place: a checkpoint without it is never read.
    let state_path = dir.join("state.json");
    let _ = std::fs::remove_file(&state_path);
    model
        .clone()
        .into_record()
        .save(dir.join("model.bpk"))
        .map_err(ck)?;
    optim.save(dir.join("optimizer.bpk")).map_err(ck)?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io("renaming", &tmp))?;
    Ok(())
}

/// Loads a model record into `model`, with a message that says what to fix when it does not fit.
pub fn load_model(model: MultimodalModel, path: &Path) -> Result<MultimodalModel> {
    let record = ModuleRecord::load(path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    model.try_load_record(record).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("{e}; the checkpoint comes from a different model config: use the config.json it was saved with"),
    })
}

fn stage_info(config: &SftConfig, seed: u64) -> Result<StageInfo> {
    Ok(StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        seed: Some(seed),
    })
}

fn steps_table(rows: &[StepRow]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("epoch", DataType::UInt32, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
        Field::new("skipped", DataType::Boolean, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.step))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epoch))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.loss))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.lr))),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.grad_norm),
            )),
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.skipped).collect::<Vec<_>>(),
            )),
        ],
    )?)
}

fn val_table(rows: &[ValRow]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("qtype", DataType::Utf8, false),
        Field::new("samples", DataType::UInt64, false),
        Field::new("exact_match", DataType::Float64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epoch))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.qtype.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.samples),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.exact_match),
            )),
        ],
    )?)
}

/// Runs the stage: trains on `inputs` and commits the artifact at `output`.
pub fn run(
    config: &SftConfig,
    seed: u64,
    inputs: &InputPaths,
    output: &Path,
    hooks: Hooks,
) -> Result<Outcome> {
    config.validate()?;
    let samples_artifact = Artifact::open(&inputs.samples)?;
    let data = Dataset::load(inputs)?;
    let (train, val) = train_and_val(&data, inputs)?;
    let (vocab, model_config) = shape_model(config, &data)?;
    let key = run_key(config, seed, inputs)?;

    let base = config.device.device()?;
    let device = base.clone().autodiff();
    let model = model_config.init(&device, seed)?;
    let parameters = model.num_params();
    tracing::info!(
        parameters,
        d_model = model_config.d_model,
        train = train.len(),
        val = val.len(),
        "sft model"
    );
    let optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let planned = planned_steps(config, &data, seed);
    let mut schedule = Schedule {
        config: config.schedule.clone(),
        lr: config.lr,
        total_steps: planned,
        state: ScheduleState::default(),
    };

    let work = work_dir(output);
    let (model, optim, saved) = resume(&work, &key, model, optim)?;
    let state = match saved {
        Some(saved) => {
            schedule.state = saved.schedule.clone();
            saved
        }
        None => TrainState::fresh(key, seed),
    };
    let mut training = Training {
        config,
        seed,
        data: &data,
        vocab: &vocab,
        val: &val,
        work,
        planned,
        optim,
        schedule,
        state,
    };
    let mut hooks = hooks;
    if let Some(step) = training.train(model, &mut hooks)? {
        return Ok(Outcome::Interrupted { step });
    }
    let report = training.commit(
        inputs,
        output,
        &samples_artifact,
        &model_config,
        parameters,
        train.len(),
    )?;
    Ok(Outcome::Done(Box::new(report)))
}

/// The train and val rows of `data`; either empty is an input error that says what to change.
fn train_and_val(data: &Dataset, inputs: &InputPaths) -> Result<(Vec<usize>, Vec<usize>)> {
    let train = data.split(Split::Train);
    let val = data.split(Split::Val);
    if train.is_empty() {
        return Err(Error::Input {
            path: inputs.samples.clone(),
            message: "no train samples after the joins; check select's split fractions and the modality stages' rejects".into(),
        });
    }
    if val.is_empty() {
        return Err(Error::Input {
            path: inputs.samples.clone(),
            message: "the val split is empty; give select a val fraction above 0 (sft needs val for early stopping)".into(),
        });
    }
    Ok((train, val))
}

/// The vocabulary (fit on labeled train rows) and the model config shaped to the data and that vocabulary.
fn shape_model(config: &SftConfig, data: &Dataset) -> Result<(Vocab, ModelConfig)> {
    // The vocabulary sees what supervised training sees: labeled train rows.
    let vocab = fit_vocab(data, &data.labeled_train());
    let mut model_config = data.shape_config(config.model_config(), &vocab);
    // Room for the intermediate tokens select derived (see `mmrl_artifact::sample::RATIONALE`).
    model_config.max_answer_len += data.rationale_len(&vocab);
    model_config.check()?;
    Ok((vocab, model_config))
}

/// The checkpoint key: a hash of the resolved config, the seed and the inputs' content.
fn run_key(config: &SftConfig, seed: u64, inputs: &InputPaths) -> Result<String> {
    let key = format!(
        "{}|{seed}|{}",
        serde_json::to_string(config)?,
        inputs.content_key()?
    );
    Ok(mmrl_artifact::hash::hash_bytes(key.as_bytes()))
}

/// Optimizer steps the run plans: every batch of every epoch, capped by `max_steps`.
fn planned_steps(config: &SftConfig, data: &Dataset, seed: u64) -> u64 {
    let epoch_len = data.epoch_order(seed, 0).len().div_ceil(config.batch_size) as u64;
    let all = epoch_len * u64::from(config.epochs);
    if config.max_steps > 0 {
        all.min(config.max_steps)
    } else {
        all
    }
}

/// Loads the work folder's checkpoint (model, optimizer, training state) when it was saved under `key`;
/// one of another config, seed or inputs is removed and training starts over.
fn resume(
    work: &Path,
    key: &str,
    mut model: MultimodalModel,
    mut optim: ModuleOptimizer,
) -> Result<(MultimodalModel, ModuleOptimizer, Option<TrainState>)> {
    let state_path = work.join("state.json");
    if !state_path.is_file() {
        return Ok((model, optim, None));
    }
    let text = std::fs::read(&state_path).map_err(io("reading", &state_path))?;
    let saved: TrainState = serde_json::from_slice(&text)?;
    if saved.key == key {
        model = load_model(model, &work.join("model.bpk"))?;
        optim = optim
            .load(work.join("optimizer.bpk"))
            .map_err(|e| Error::Checkpoint {
                path: work.join("optimizer.bpk"),
                message: e.to_string(),
            })?;
        tracing::info!(step = saved.step, epoch = saved.epoch, dir = %work.display(), "resuming from checkpoint");
        Ok((model, optim, Some(saved)))
    } else {
        tracing::warn!(dir = %work.display(), "checkpoint of another config, seed or inputs: starting over");
        std::fs::remove_dir_all(work).map_err(io("removing", work))?;
        Ok((model, optim, None))
    }
}

impl TrainState {
    /// The state of a run that has not taken a step.
    fn fresh(key: String, seed: u64) -> Self {
        TrainState {
            key,
            seed,
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            schedule: ScheduleState::default(),
            best_exact_match: None,
            best_epoch: None,
            bad_epochs: 0,
            finished: false,
            stopped_early: false,
            steps: Vec::new(),
            val: Vec::new(),
        }
    }
}

/// What the steps of one sft run share: config, data and vocabulary, the work folder, the optimizer and
/// schedule, and the training state a checkpoint saves.
struct Training<'a> {
    config: &'a SftConfig,
    seed: u64,
    data: &'a Dataset,
    vocab: &'a Vocab,
    val: &'a [usize],
    work: PathBuf,
    planned: u64,
    optim: ModuleOptimizer,
    schedule: Schedule,
    state: TrainState,
}

impl Training<'_> {
    /// Trains epoch by epoch, validating after each, until the epochs, the step budget or early stopping
    /// end it; `Some(step)` when [`Hooks::stop_after_step`] interrupted it.
    fn train(&mut self, mut model: MultimodalModel, hooks: &mut Hooks) -> Result<Option<u64>> {
        let started = Instant::now();
        let first_step = self.state.step;
        while !self.state.finished {
            let epoch = self.state.epoch;
            let (next, interrupted) = self.train_epoch(model, epoch, hooks)?;
            model = next;
            if interrupted {
                return Ok(Some(self.state.step));
            }
            self.end_epoch(&model, epoch, started, first_step)?;
        }
        Ok(None)
    }

    /// The steps of one epoch from the checkpointed batch on, saving a checkpoint every `checkpoint_every`
    /// steps; true when [`Hooks::stop_after_step`] stopped it.
    fn train_epoch(
        &mut self,
        mut model: MultimodalModel,
        epoch: u32,
        hooks: &mut Hooks,
    ) -> Result<(MultimodalModel, bool)> {
        let config = self.config;
        let order = self.data.epoch_order(self.seed, u64::from(epoch));
        let batches: Vec<&[(usize, usize)]> = order.chunks(config.batch_size).collect();
        let mut b = self.state.batch_in_epoch as usize;
        while b < batches.len() {
            if config.max_steps > 0 && self.state.step >= config.max_steps {
                break;
            }
            let lr = self.schedule.lr(self.state.step);
            let (next, result) = self.step(model, batches[b], lr)?;
            model = next;
            self.state.step += 1;
            b += 1;
            self.state.batch_in_epoch = b as u64;
            self.log_step(epoch, lr, result, hooks);
            let stop_here = hooks.stop_after_step == Some(self.state.step);
            if stop_here
                || (config.checkpoint_every > 0
                    && self.state.step.is_multiple_of(config.checkpoint_every))
            {
                self.state.schedule = self.schedule.state.clone();
                save_checkpoint(&self.work, &model, &self.optim, &self.state)?;
            }
            if stop_here {
                return Ok((model, true));
            }
        }
        Ok((model, false))
    }

    /// One optimizer step on `batch` at learning rate `lr`, its random draws seeded by `(seed, step)`.
    fn step(
        &mut self,
        model: MultimodalModel,
        batch: &[(usize, usize)],
        lr: f64,
    ) -> Result<(MultimodalModel, Option<(f64, f64)>)> {
        let config = self.config;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, 1, self.state.step));
        let step = self.state.step;
        train_step(
            model,
            &mut self.optim,
            self.data,
            self.vocab,
            batch,
            config.grad_accum * config.shards,
            lr,
            config.grad_clip,
            config.modality_dropout,
            &mut rng,
        )
        .map_err(|e| match e {
            Error::Diverged { message, .. } => Error::Diverged {
                step: step + 1,
                message,
            },
            other => other,
        })
    }

    /// Records the step's row of `metrics_steps` (a skipped batch has NaN loss) and reports progress.
    fn log_step(&mut self, epoch: u32, lr: f64, result: Option<(f64, f64)>, hooks: &mut Hooks) {
        let (loss, grad_norm, skipped) = match result {
            Some((loss, norm)) => (loss, norm, false),
            None => (f64::NAN, f64::NAN, true),
        };
        self.state.steps.push(StepRow {
            step: self.state.step,
            epoch,
            loss,
            lr,
            grad_norm,
            skipped,
        });
        if let Some(p) = hooks.progress.as_deref_mut() {
            p(Progress {
                step: self.state.step,
                total: self.planned,
                loss,
            });
        }
    }

    /// End of an epoch (or of the step budget): validates, keeps the best model, decides whether training
    /// is finished, and saves a checkpoint.
    fn end_epoch(
        &mut self,
        model: &MultimodalModel,
        epoch: u32,
        started: Instant,
        first_step: u64,
    ) -> Result<()> {
        let valid = model.valid();
        let overall = self.validate(&valid, epoch, started, first_step);
        self.schedule.observe(overall);
        // Under hpo, the trial's pruner reads this (a no-op otherwise).
        mmrl_artifact::trial::report_intermediate(u64::from(epoch), overall);
        self.keep_best(&valid, epoch, overall)?;
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        let config = self.config;
        let out_of_steps = config.max_steps > 0 && self.state.step >= config.max_steps;
        let early = config.early_stopping_patience > 0
            && self.state.bad_epochs >= config.early_stopping_patience;
        self.state.stopped_early = early && !out_of_steps && self.state.epoch < config.epochs;
        self.state.finished = early || out_of_steps || self.state.epoch >= config.epochs;
        self.state.schedule = self.schedule.state.clone();
        save_checkpoint(&self.work, model, &self.optim, &self.state)
    }

    /// Val exact match of the epoch, overall and per question type, recorded in `metrics_val` and logged;
    /// returns the overall figure.
    fn validate(
        &mut self,
        valid: &MultimodalModel,
        epoch: u32,
        started: Instant,
        first_step: u64,
    ) -> f64 {
        let (data, vocab, val) = (self.data, self.vocab, self.val);
        let predicted: Vec<String> =
            decode_split(valid, data, vocab, val, self.config.eval_batch_size)
                .iter()
                .map(|g| vocab.decode_answer(&g.tokens))
                .collect();
        let em = exact_match(data, val, &predicted);
        for (qtype, (n, acc)) in &em {
            self.state.val.push(ValRow {
                epoch,
                qtype: qtype.clone(),
                samples: *n,
                exact_match: *acc,
            });
        }
        let overall = em.get("all").map_or(0.0, |e| e.1);
        let elapsed = started.elapsed().as_secs_f64();
        tracing::info!(
            epoch,
            step = self.state.step,
            val_exact_match = format!("{overall:.4}"),
            samples_per_s = format!(
                "{:.1}",
                (self.state.step - first_step) as f64 * self.config.batch_size as f64
                    / elapsed.max(1e-9)
            ),
            "epoch done"
        );
        overall
    }

    /// Early stopping's bookkeeping: a better val exact match saves the model as `best.bpk` in the work
    /// folder, anything else counts a bad epoch.
    fn keep_best(&mut self, valid: &MultimodalModel, epoch: u32, overall: f64) -> Result<()> {
        let state = &mut self.state;
        if state.best_exact_match.is_none_or(|b| overall > b) {
            state.best_exact_match = Some(overall);
            state.best_epoch = Some(epoch);
            state.bad_epochs = 0;
            let work = &self.work;
            std::fs::create_dir_all(work).map_err(io("creating", work))?;
            valid
                .clone()
                .into_record()
                .save(work.join("best.bpk"))
                .map_err(|e| Error::Checkpoint {
                    path: work.join("best.bpk"),
                    message: e.to_string(),
                })?;
        } else {
            state.bad_epochs += 1;
        }
        Ok(())
    }

    /// Commits the artifact (best model, last checkpoint, config, vocabulary, metrics tables, report) and
    /// removes the work folder.
    fn commit(
        &self,
        inputs: &InputPaths,
        output: &Path,
        samples_artifact: &Artifact,
        model_config: &ModelConfig,
        parameters: usize,
        train_samples: usize,
    ) -> Result<SftReport> {
        let work = &self.work;
        let mut writer = ArtifactWriter::create(output, stage_info(self.config, self.seed)?)?;
        writer.input_artifact("samples", samples_artifact);
        inputs.record_modalities(&mut writer)?;
        writer.fit_splits(&["train"]);
        let tmp = writer.tmp_dir().to_path_buf();
        let copy = |from: &Path, to: &Path| {
            std::fs::copy(from, to)
                .map(|_| ())
                .map_err(io("copying", from))
        };
        copy(&work.join("best.bpk"), &tmp.join("model.bpk"))?;
        writer.add_file("model.bpk", Role::State)?;
        // The optimizer state stays in the work folder: burn serializes it in hash-map order, so its bytes
        // differ between identical runs and would make the artifact's content hash irreproducible.
        let ck = tmp.join("checkpoint");
        std::fs::create_dir_all(&ck).map_err(io("creating", &ck))?;
        for f in ["model.bpk", "state.json"] {
            copy(&work.join(f), &ck.join(f))?;
        }
        writer.add_dir("checkpoint", Role::State, None)?;
        writer.write_json("config.json", Role::State, model_config)?;
        writer.write_json("vocab.json", Role::State, self.vocab)?;
        let steps = steps_table(&self.state.steps)?;
        writer.write_table("metrics_steps", Role::Report, steps.schema(), &[steps])?;
        let vals = val_table(&self.state.val)?;
        writer.write_table("metrics_val", Role::Report, vals.schema(), &[vals])?;
        let report = self.report(parameters, train_samples);
        writer.write_json("report.json", Role::Report, &report)?;
        writer.commit()?;
        std::fs::remove_dir_all(work).map_err(io("removing", work))?;
        Ok(report)
    }

    /// `report.json`: the best epoch's val exact match, overall and per question type, next to the
    /// train-majority baseline, and the run's counts.
    fn report(&self, parameters: usize, train_samples: usize) -> SftReport {
        let (data, val, state) = (self.data, self.val, &self.state);
        let best_epoch = state.best_epoch.unwrap_or(0);
        let majority = majority_answers(data);
        let baseline: Vec<String> = val
            .iter()
            .map(|&i| {
                majority
                    .get(&data.samples[i].qtype)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let base_em = exact_match(data, val, &baseline);
        let mut by_qtype = BTreeMap::new();
        for row in state
            .val
            .iter()
            .filter(|r| r.epoch == best_epoch && r.qtype != "all")
        {
            by_qtype.insert(
                row.qtype.clone(),
                QtypeReport {
                    samples: row.samples,
                    exact_match: row.exact_match,
                    majority_baseline: base_em.get(&row.qtype).map_or(0.0, |e| e.1),
                    majority_answer: majority.get(&row.qtype).cloned().unwrap_or_default(),
                },
            );
        }
        SftReport {
            val_exact_match: state.best_exact_match.unwrap_or(0.0),
            majority_baseline: base_em.get("all").map_or(0.0, |e| e.1),
            by_qtype,
            best_epoch,
            steps: state.step,
            skipped_steps: state.steps.iter().filter(|r| r.skipped).count() as u64,
            stopped_early: state.stopped_early,
            parameters,
            train_samples,
            val_samples: val.len(),
            dropped: data.dropped.clone(),
        }
    }
}

/// The vocabularies of the train rows: questions, answers and their rationales, with the separator token when
/// any train row has a rationale.
pub fn fit_vocab(data: &Dataset, train: &[usize]) -> Vocab {
    let rows = train.iter().map(|&i| &data.samples[i]);
    let pairs = rows
        .clone()
        .map(|s| (s.question.as_str(), s.answer.as_str()));
    let rationales = rows
        .clone()
        .filter_map(|s| s.rationale.as_deref())
        .map(|r| ("", r));
    let vocab = Vocab::fit(pairs.chain(rationales));
    if rows.clone().any(|s| s.rationale.is_some()) {
        vocab.with_separator()
    } else {
        vocab
    }
}
