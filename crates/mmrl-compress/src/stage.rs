//! The compress stage: loads a model artifact, builds the compressed variants, measures them on val and
//! writes one folder per variant (`model.bpk`, `config.json`, `vocab.json`), `models.json`,
//! `compress.parquet`, `sparsity.parquet` and `report.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use burn::module::Module;
use burn::optim::AdamWConfig;
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_model::MultimodalModel;
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::predict::{ModelEntry, load_trained};
use mmrl_model::sft::{DeviceKind, decode_split, exact_match, mix, train_step};
use mmrl_model::vocab::Vocab;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, config_err, io};
use crate::params::{Masks, apply_masks, load_state, state};
use crate::quant::{Bits, QuantSpec, quantize};
use crate::sparse::{
    LayerSparsity, Scope, cubic_sparsity, layer_targets, magnitude_masks, measure,
    unmatched_layer_keys,
};
use crate::structured::{
    Importance, LayerKeep, heads_to_remove, magnitude_scores, plan, shrink, taylor_scores,
};

/// Stage name in manifests.
pub const STAGE: &str = "compress";

/// Recovery fine-tuning shared by the pruning variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear decay to 0).
    pub lr: f64,
    /// Clip the global gradient norm to this (0: off).
    pub grad_clip: f64,
    /// Probability of masking each modality of a train sample (as in sft).
    pub modality_dropout: f64,
    /// Data-parallel shards per step (as sft's `shards`).
    pub shards: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            steps: 500,
            batch_size: 32,
            lr: 5e-4,
            grad_clip: 1.0,
            modality_dropout: 0.1,
            shards: mmrl_model::sft::DEFAULT_SHARDS,
        }
    }
}

/// Unstructured magnitude pruning (`[stages.compress.params.sparse]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparseConfig {
    /// Build this variant.
    pub enabled: bool,
    /// Final sparsity of the linear layers' weights, in [0, 1).
    pub sparsity: f64,
    /// `global` (one threshold) or `per_layer` (every matrix reaches its target).
    pub scope: Scope,
    /// Per-layer targets overriding `sparsity` under `per_layer`: parameter path prefix -> sparsity
    /// (e.g. `"encoder.0" = 0.3`, `"head.weight" = 0.0`).
    pub layers: BTreeMap<String, f64>,
    /// Prune every this many steps while the sparsity ramps up.
    pub prune_every: u64,
    /// Fraction of the recovery steps over which the sparsity ramps up (the rest trains with fixed masks).
    pub ramp: f64,
    /// Recovery fine-tuning.
    pub recovery: RecoveryConfig,
}

impl Default for SparseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sparsity: 0.5,
            scope: Scope::Global,
            layers: BTreeMap::new(),
            prune_every: 10,
            ramp: 0.6,
            recovery: RecoveryConfig::default(),
        }
    }
}

/// Structured pruning of heads and feed-forward neurons (`[stages.compress.params.structured]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StructuredConfig {
    /// Build this variant.
    pub enabled: bool,
    /// Fraction of each attention block's heads to remove (rounded to nearest), in [0, 1).
    pub head_fraction: f64,
    /// Fraction of each feed-forward layer's neurons to remove, in [0, 1).
    pub ff_fraction: f64,
    /// Exact heads to remove per layer (encoder layers, then decoder layers); overrides `head_fraction`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<usize>>,
    /// Exact neurons to remove per layer; overrides `ff_fraction`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ff: Option<Vec<usize>>,
    /// `magnitude` or `taylor`.
    pub importance: Importance,
    /// Train batches (of `recovery.batch_size`) the Taylor scores are summed over.
    pub taylor_batches: usize,
    /// Recovery fine-tuning.
    pub recovery: RecoveryConfig,
}

impl Default for StructuredConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            head_fraction: 0.5,
            ff_fraction: 0.5,
            heads: None,
            ff: None,
            importance: Importance::Taylor,
            taylor_batches: 8,
            // Shrinking perturbs the function more than gradual sparsification: a larger peak step.
            recovery: RecoveryConfig {
                lr: 1e-3,
                ..RecoveryConfig::default()
            },
        }
    }
}

/// Post-training quantization (`[stages.compress.params.quantize]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizeConfig {
    /// Build this variant (named after `bits`: `int8` or `int4`).
    pub enabled: bool,
    /// `int8` or `int4`.
    pub bits: Bits,
    /// Values per scale along the last axis (0: one scale per tensor; int4 needs a block).
    pub block: usize,
    /// Also quantize the structurally pruned model (variant `pruned_int8` / `pruned_int4`).
    pub pruned: bool,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bits: Bits::Int8,
            block: 0,
            pruned: true,
        }
    }
}

impl QuantizeConfig {
    /// The quantization spec.
    pub fn spec(&self) -> QuantSpec {
        QuantSpec {
            bits: self.bits,
            block: self.block,
        }
    }
}

/// Parameters of the compress stage (`[stages.compress.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressConfig {
    /// Unstructured pruning.
    pub sparse: SparseConfig,
    /// Structured pruning.
    pub structured: StructuredConfig,
    /// Quantization.
    pub quantize: QuantizeConfig,
    /// Samples per decoding batch (val exact match and throughput).
    pub eval_batch_size: usize,
    /// Timed greedy-decoding passes over val per model, interleaved across models (the fastest counts).
    pub throughput_rounds: usize,
    /// Where to run (throughput is always measured on the CPU it runs on).
    pub device: DeviceKind,
}

impl Default for CompressConfig {
    fn default() -> Self {
        Self {
            sparse: SparseConfig::default(),
            structured: StructuredConfig::default(),
            quantize: QuantizeConfig::default(),
            eval_batch_size: 256,
            throughput_rounds: 3,
            device: DeviceKind::Cpu,
        }
    }
}

fn fraction(field: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        return Err(config_err(field, format!("must be in [0, 1), got {v}")));
    }
    Ok(())
}

impl RecoveryConfig {
    fn validate(&self, field: &str) -> Result<()> {
        if self.batch_size == 0 {
            return Err(config_err(
                &format!("{field}.batch_size"),
                "must be at least 1",
            ));
        }
        if self.shards == 0 || self.shards > self.batch_size {
            return Err(config_err(
                &format!("{field}.shards"),
                format!(
                    "must be between 1 and batch_size {}, got {}",
                    self.batch_size, self.shards
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(config_err(
                &format!("{field}.lr"),
                format!("must be a finite number >= 0, got {}", self.lr),
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(config_err(
                &format!("{field}.grad_clip"),
                format!("must be >= 0 (0: off), got {}", self.grad_clip),
            ));
        }
        fraction(&format!("{field}.modality_dropout"), self.modality_dropout)
    }
}

impl CompressConfig {
    /// Checks every field; messages name the field as written in the pipeline TOML.
    pub fn validate(&self) -> Result<()> {
        let s = &self.sparse;
        fraction("sparse.sparsity", s.sparsity)?;
        for (k, v) in &s.layers {
            fraction(&format!("sparse.layers.{k:?}"), *v)?;
        }
        if !s.layers.is_empty() && s.scope == Scope::Global {
            return Err(config_err(
                "sparse.layers",
                "per-layer targets need scope = \"per_layer\"",
            ));
        }
        if s.prune_every == 0 {
            return Err(config_err("sparse.prune_every", "must be at least 1"));
        }
        if !(s.ramp > 0.0 && s.ramp <= 1.0) {
            return Err(config_err(
                "sparse.ramp",
                format!("must be in (0, 1], got {}", s.ramp),
            ));
        }
        s.recovery.validate("sparse.recovery")?;
        let t = &self.structured;
        fraction("structured.head_fraction", t.head_fraction)?;
        fraction("structured.ff_fraction", t.ff_fraction)?;
        if t.importance == Importance::Taylor && t.taylor_batches == 0 {
            return Err(config_err(
                "structured.taylor_batches",
                "must be at least 1 for taylor importance",
            ));
        }
        t.recovery.validate("structured.recovery")?;
        self.quantize.spec().validate("quantize")?;
        if self.eval_batch_size == 0 {
            return Err(config_err("eval_batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// One row of `compress.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantRow {
    /// `original`, `sparse`, `pruned`, `int8`, `int4`.
    pub variant: String,
    /// Parameters (values stored, quantized or not).
    pub parameters: u64,
    /// Parameters that are not exactly zero.
    pub nonzero_parameters: u64,
    /// Size of `model.bpk`.
    pub file_bytes: u64,
    /// Greedy-decoding samples/s over val on this machine's CPU (best of `throughput_rounds`).
    pub cpu_infer_samples_per_s: f64,
    /// Val exact match.
    pub val_exact_match: f64,
    /// `val_exact_match` minus the original's (fraction; x100 for points).
    pub delta_exact_match: f64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressReport {
    /// One row per model, the original first.
    pub variants: Vec<VariantRow>,
    /// Measured sparsity of every prunable matrix of the sparse variant.
    pub sparsity: Vec<LayerSparsity>,
    /// Zeros over all prunable weights of the sparse variant.
    pub sparse_overall: Option<f64>,
    /// Heads and neurons each layer kept in the pruned variant.
    pub structured_keep: Option<Vec<LayerKeep>>,
    /// Removed heads / all heads and removed neurons / all neurons of the pruned variant.
    pub structured_removed: Option<(f64, f64)>,
    /// Final recovery loss per variant.
    pub recovery_loss: BTreeMap<String, f64>,
    /// How each variant is stored and computed.
    pub notes: BTreeMap<String, String>,
}

/// Val exact match of `model` (greedy answers).
pub fn val_exact_match(
    model: &MultimodalModel,
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
) -> f64 {
    let generated = decode_split(model, data, vocab, indices, batch_size);
    let predicted: Vec<String> = generated
        .iter()
        .map(|g| vocab.decode_answer(&g.tokens))
        .collect();
    exact_match(data, indices, &predicted)
        .get("all")
        .map_or(0.0, |v| v.1)
}

/// Greedy-decoding samples/s of each model over `indices`: `rounds` rounds, each timing every model once in
/// turn (so a change in machine load hits all models alike), the fastest round of each model counting.
pub fn throughput(
    models: &[&MultimodalModel],
    data: &Dataset,
    vocab: &Vocab,
    indices: &[usize],
    batch_size: usize,
    rounds: usize,
) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; models.len()];
    for _ in 0..rounds.max(1) {
        for (m, b) in models.iter().zip(best.iter_mut()) {
            let t = Instant::now();
            let _ = decode_split(m, data, vocab, indices, batch_size);
            *b = b.min(t.elapsed().as_secs_f64());
        }
    }
    best.iter()
        .map(|s| indices.len() as f64 / s.max(1e-9))
        .collect()
}

/// The same model on an autodiff device (parameters keep their ids).
fn to_autodiff(model: &MultimodalModel, device: DeviceKind) -> Result<MultimodalModel> {
    let fresh = model.config().init(&device.device()?.autodiff(), 0)?;
    load_state(fresh, &state(model))
}

/// Fine-tunes `model` (plain device) for `rc.steps` steps on train with the sft loss; after every step
/// `after_step(step, model)` may rewrite the model (e.g. re-apply masks). Returns the plain-device model and
/// the mean loss of the last 10 steps.
pub fn recover(
    model: &MultimodalModel,
    rc: &RecoveryConfig,
    data: &Dataset,
    vocab: &Vocab,
    seed: u64,
    device: DeviceKind,
    mut after_step: impl FnMut(u64, MultimodalModel) -> MultimodalModel,
) -> Result<(MultimodalModel, f64)> {
    let mut m = after_step(0, to_autodiff(model, device)?);
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).init();
    let mut epoch = 0u64;
    let mut order = data.epoch_order(seed, epoch);
    let mut pos = 0usize;
    let mut losses = Vec::new();
    for step in 0..rc.steps {
        if pos + rc.batch_size > order.len() {
            epoch += 1;
            order = data.epoch_order(seed, epoch);
            pos = 0;
        }
        let end = (pos + rc.batch_size).min(order.len());
        let items = &order[pos..end];
        pos = end;
        let lr = rc.lr * (1.0 - step as f64 / rc.steps as f64);
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, 7, step));
        let (next, result) = train_step(
            m,
            &mut optim,
            data,
            vocab,
            items,
            rc.shards,
            lr,
            rc.grad_clip,
            rc.modality_dropout,
            &mut rng,
        )?;
        if let Some((loss, _)) = result {
            losses.push(loss);
        }
        m = after_step(step + 1, next);
    }
    let tail = &losses[losses.len().saturating_sub(10)..];
    let loss = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    Ok((m.valid(), loss))
}

/// Unstructured pruning on the cubic schedule with recovery; masks are recomputed from magnitudes at every
/// pruning step while the sparsity ramps up and re-applied after every optimizer step, so pruned weights stay
/// exactly zero. Returns the model, its measured sparsity rows and the final recovery loss.
pub fn sparse_variant(
    model: &MultimodalModel,
    sc: &SparseConfig,
    data: &Dataset,
    vocab: &Vocab,
    seed: u64,
    device: DeviceKind,
) -> Result<(MultimodalModel, Vec<LayerSparsity>, f64)> {
    fraction("sparse.sparsity", sc.sparsity)?;
    let st = state(model);
    if let Some(key) = unmatched_layer_keys(&st, &sc.layers).first() {
        return Err(config_err(
            &format!("sparse.layers.{key:?}"),
            "matches no prunable weight; name a module path such as \"encoder.0\" or \"decoder.0.ff\"",
        ));
    }
    let targets = layer_targets(&st, sc.sparsity, &sc.layers);
    let steps = sc.recovery.steps;
    let end = ((steps as f64 * sc.ramp).round() as u64).min(steps);
    let mut masks: Masks = Masks::new();
    let mut last_fraction = -1.0;
    let (pruned, loss) = recover(model, &sc.recovery, data, vocab, seed, device, |step, m| {
        let due = step.is_multiple_of(sc.prune_every) || step >= end;
        let frac = if sc.sparsity > 0.0 {
            cubic_sparsity(step, 0, end, 0.0, sc.sparsity) / sc.sparsity
        } else {
            1.0
        };
        // The first pruning happens after the first interval; with no steps at all prune at once.
        let frac = if steps == 0 { 1.0 } else { frac };
        if due && frac > last_fraction {
            last_fraction = frac;
            masks = magnitude_masks(&state(&m), &targets, sc.scope, frac);
        }
        apply_masks(m, &masks)
    })?;
    let rows = measure(&state(&pruned), &targets, sc.scope);
    Ok((pruned, rows, loss))
}

/// Removal counts per layer (heads, feed-forward neurons) for a structured config and model.
pub fn removal_counts(
    model: &MultimodalModel,
    sc: &StructuredConfig,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let cfg = model.config();
    let layers = cfg.encoder_layers + cfg.decoder_layers;
    let heads = match &sc.heads {
        Some(v) => v.clone(),
        None => (0..layers)
            .map(|l| heads_to_remove(cfg.layer_shape(l).heads, sc.head_fraction))
            .collect(),
    };
    let ff = match &sc.ff {
        Some(v) => v.clone(),
        None => (0..layers)
            .map(|l| (cfg.layer_shape(l).ff as f64 * sc.ff_fraction).round() as usize)
            .collect(),
    };
    for (field, v) in [("structured.heads", &heads), ("structured.ff", &ff)] {
        if v.len() != layers {
            return Err(config_err(
                field,
                format!(
                    "needs one count per layer ({layers}: encoder then decoder), got {}",
                    v.len()
                ),
            ));
        }
    }
    Ok((heads, ff))
}

/// Structured pruning with recovery: scores, plan, shrink, fine-tune. Returns the shrunk model, the plan
/// and the final recovery loss.
pub fn structured_variant(
    model: &MultimodalModel,
    sc: &StructuredConfig,
    data: &Dataset,
    vocab: &Vocab,
    seed: u64,
    device: DeviceKind,
) -> Result<(MultimodalModel, Vec<LayerKeep>, f64)> {
    fraction("structured.head_fraction", sc.head_fraction)?;
    fraction("structured.ff_fraction", sc.ff_fraction)?;
    let (remove_heads, remove_ff) = removal_counts(model, sc)?;
    let scores = match sc.importance {
        Importance::Magnitude => magnitude_scores(model)?,
        Importance::Taylor => {
            let ad = to_autodiff(model, device)?;
            let order = data.epoch_order(mix(seed, 3, 0), 0);
            let batches: Vec<Vec<(usize, usize)>> = order
                .chunks(sc.recovery.batch_size)
                .take(sc.taylor_batches)
                .map(<[_]>::to_vec)
                .collect();
            taylor_scores(&ad, data, vocab, &batches)?
        }
    };
    let keep = plan(&scores, &remove_heads, &remove_ff)?;
    let small = shrink(model, &keep)?;
    let (small, loss) = recover(&small, &sc.recovery, data, vocab, seed, device, |_, m| m)?;
    Ok((small, keep, loss))
}

fn count_nonzero(model: &MultimodalModel) -> u64 {
    state(model)
        .values()
        .map(|e| e.values.iter().filter(|v| **v != 0.0).count() as u64)
        .sum()
}

fn save_model(dir: &Path, model: &MultimodalModel, vocab: &Vocab) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join("model.bpk");
    model
        .clone()
        .into_record()
        .save(&path)
        .map_err(|e| Error::Input {
            path: path.clone(),
            message: format!("saving the model: {e}"),
        })?;
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_vec_pretty(model.config())?)
        .map_err(io("writing", &config))?;
    let v = dir.join("vocab.json");
    std::fs::write(&v, serde_json::to_vec_pretty(vocab)?).map_err(io("writing", &v))?;
    Ok(std::fs::metadata(&path)
        .map_err(io("reading", &path))?
        .len())
}

fn table(rows: &[VariantRow]) -> Result<(Arc<Schema>, RecordBatch)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("variant", DataType::Utf8, false),
        Field::new("parameters", DataType::UInt64, false),
        Field::new("nonzero_parameters", DataType::UInt64, false),
        Field::new("file_bytes", DataType::UInt64, false),
        Field::new("cpu_infer_samples_per_s", DataType::Float64, false),
        Field::new("val_exact_match", DataType::Float64, false),
        Field::new("delta_exact_match", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.variant.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.parameters),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.nonzero_parameters),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.file_bytes),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.cpu_infer_samples_per_s),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.val_exact_match),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.delta_exact_match),
            )),
        ],
    )?;
    Ok((schema, batch))
}

fn sparsity_table(rows: &[LayerSparsity]) -> Result<(Arc<Schema>, RecordBatch)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("variant", DataType::Utf8, false),
        Field::new("layer", DataType::Utf8, false),
        Field::new("parameters", DataType::UInt64, false),
        Field::new("zeros", DataType::UInt64, false),
        Field::new("sparsity", DataType::Float64, false),
        Field::new("target", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "sparse"))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.layer.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.parameters),
            )),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.zeros))),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.sparsity),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.target).collect::<Vec<_>>(),
            )),
        ],
    )?;
    Ok((schema, batch))
}

/// Runs the stage: compresses the model of `model_dir` and commits the artifact at `output`.
pub fn run(
    config: &CompressConfig,
    seed: u64,
    model_dir: &Path,
    inputs: &InputPaths,
    output: &Path,
) -> Result<CompressReport> {
    config.validate()?;
    let source = load_source(config, model_dir, inputs)?;
    let mut writer = create_writer(config, seed, model_dir, inputs, output)?;
    let mut variants = Variants::new(config, &source, writer.tmp_dir().to_path_buf());
    let mut report = CompressReport {
        variants: Vec::new(),
        sparsity: Vec::new(),
        sparse_overall: None,
        structured_keep: None,
        structured_removed: None,
        recovery_loss: BTreeMap::new(),
        notes: BTreeMap::new(),
    };
    let mut pruned_model: Option<MultimodalModel> = None;
    if config.sparse.enabled {
        build_sparse(config, seed, &source, &mut variants, &mut report)?;
    }
    if config.structured.enabled {
        pruned_model = Some(build_pruned(
            config,
            seed,
            &source,
            &mut variants,
            &mut report,
        )?);
    }
    if config.quantize.enabled {
        build_quantized(config, &source, pruned_model, &mut variants, &mut report)?;
    }
    variants.measure_throughput(config);
    write_outputs(&mut writer, variants, &mut report)?;
    writer.commit()?;
    Ok(report)
}

/// The input model, its vocabulary, the samples and the val indices it is measured on.
struct Source {
    /// The model to compress.
    model: MultimodalModel,
    /// Its vocabulary.
    vocab: Vocab,
    /// The samples with their modality inputs.
    data: Dataset,
    /// The val samples, where every variant is measured.
    val: Vec<usize>,
    /// The size of the input's `model.bpk`.
    source_bytes: u64,
}

/// Loads the model and the data and checks that they fit each other and the config: an unquantized model, train
/// and val samples.
fn load_source(config: &CompressConfig, model_dir: &Path, inputs: &InputPaths) -> Result<Source> {
    let trained = load_trained(model_dir, config.device).map_err(|e| Error::Input {
        path: model_dir.to_path_buf(),
        message: format!("loading the model artifact (model.bpk, config.json, vocab.json): {e}"),
    })?;
    let (model, vocab) = (trained.model, trained.vocab);
    let data = Dataset::load(inputs)?;
    data.check_compatible(model.config(), &inputs.samples)
        .map_err(|e| Error::Input {
            path: model_dir.to_path_buf(),
            message: format!("the checkpoint was trained on another config or data: {e}"),
        })?;
    if config.quantize.enabled && crate::params::is_quantized(&model) {
        return Err(Error::Quantize(format!(
            "{}: the input model is already quantized; compress the f32 model it came from",
            model_dir.display()
        )));
    }
    let val = data.split(Split::Val);
    if val.is_empty() || data.split(Split::Train).is_empty() {
        return Err(Error::Input {
            path: inputs.samples.clone(),
            message:
                "compress needs train samples (recovery, calibration) and val samples (measurement)"
                    .into(),
        });
    }
    let source_bytes = std::fs::metadata(Artifact::open(model_dir)?.file("model.bpk")?)
        .map_err(io("reading", model_dir))?
        .len();
    Ok(Source {
        model,
        vocab,
        data,
        val,
        source_bytes,
    })
}

/// Opens the output artifact and records the inputs and that fitting read only train.
fn create_writer(
    config: &CompressConfig,
    seed: u64,
    model_dir: &Path,
    inputs: &InputPaths,
    output: &Path,
) -> Result<ArtifactWriter> {
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        seed: Some(seed),
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("model", &Artifact::open(model_dir)?);
    writer.input_artifact("samples", &Artifact::open(&inputs.samples)?);
    inputs.record_modalities(&mut writer)?;
    writer.fit_splits(&["train"]);
    Ok(writer)
}

/// The variants built so far: their saved folders, their rows (the original first) and the models.
struct Variants<'a> {
    /// The input: the original model, the data and val.
    source: &'a Source,
    /// The writer's temporary folder, where each variant's folder is saved.
    tmp: std::path::PathBuf,
    /// Val batch size.
    eval_batch_size: usize,
    /// The original's val exact match.
    base_em: f64,
    /// One row per model, the original first.
    rows: Vec<VariantRow>,
    /// One entry per variant for `models.json`.
    entries: Vec<ModelEntry>,
    /// The variants' models, in the order of `entries`.
    built: Vec<MultimodalModel>,
}

impl<'a> Variants<'a> {
    /// Measures the original on val: the first row.
    fn new(config: &CompressConfig, source: &'a Source, tmp: std::path::PathBuf) -> Self {
        let (model, data, vocab, val) = (&source.model, &source.data, &source.vocab, &source.val);
        let base_em = val_exact_match(model, data, vocab, val, config.eval_batch_size);
        tracing::info!(val_exact_match = format!("{base_em:.4}"), "original");
        let rows = vec![VariantRow {
            variant: "original".into(),
            parameters: model.num_params() as u64,
            nonzero_parameters: count_nonzero(model),
            file_bytes: source.source_bytes,
            cpu_infer_samples_per_s: 0.0,
            val_exact_match: base_em,
            delta_exact_match: 0.0,
        }];
        Self {
            source,
            tmp,
            eval_batch_size: config.eval_batch_size,
            base_em,
            rows,
            entries: Vec::new(),
            built: Vec::new(),
        }
    }

    /// Saves variant `name`, measures it on val and adds its row.
    fn finish(&mut self, name: &str, m: MultimodalModel) -> Result<()> {
        let Source {
            data, vocab, val, ..
        } = self.source;
        let bytes = save_model(&self.tmp.join(name), &m, vocab)?;
        let em = val_exact_match(&m, data, vocab, val, self.eval_batch_size);
        tracing::info!(
            variant = name,
            val_exact_match = format!("{em:.4}"),
            file_bytes = bytes,
            "compressed"
        );
        self.rows.push(VariantRow {
            variant: name.into(),
            parameters: m.num_params() as u64,
            nonzero_parameters: count_nonzero(&m),
            file_bytes: bytes,
            cpu_infer_samples_per_s: 0.0,
            val_exact_match: em,
            delta_exact_match: em - self.base_em,
        });
        self.entries.push(ModelEntry {
            name: name.into(),
            dir: name.into(),
        });
        self.built.push(m);
        Ok(())
    }

    /// Times the original and every variant on val, interleaved, and fills in the rows' speeds.
    fn measure_throughput(&mut self, config: &CompressConfig) {
        let source = self.source;
        let all: Vec<&MultimodalModel> = std::iter::once(&source.model)
            .chain(self.built.iter())
            .collect();
        let speeds = throughput(
            &all,
            &source.data,
            &source.vocab,
            &source.val,
            config.eval_batch_size,
            config.throughput_rounds,
        );
        for (r, s) in self.rows.iter_mut().zip(speeds) {
            r.cpu_infer_samples_per_s = s;
        }
    }
}

/// The sparse variant: magnitude pruning with recovery, and its measured sparsity.
fn build_sparse(
    config: &CompressConfig,
    seed: u64,
    source: &Source,
    variants: &mut Variants,
    report: &mut CompressReport,
) -> Result<()> {
    let (m, layer_rows, loss) = sparse_variant(
        &source.model,
        &config.sparse,
        &source.data,
        &source.vocab,
        seed,
        config.device,
    )?;
    report.sparse_overall = Some(crate::sparse::overall(&layer_rows));
    report.sparsity = layer_rows;
    report.recovery_loss.insert("sparse".into(), loss);
    report.notes.insert(
        "sparse".into(),
        "dense f32 storage with exact zeros: the file and the dense matmuls do not shrink".into(),
    );
    variants.finish("sparse", m)
}

/// The pruned variant: heads and neurons removed, with recovery. Returns the pruned model (before saving) for
/// the quantized copy.
fn build_pruned(
    config: &CompressConfig,
    seed: u64,
    source: &Source,
    variants: &mut Variants,
    report: &mut CompressReport,
) -> Result<MultimodalModel> {
    let (m, keep, loss) = structured_variant(
        &source.model,
        &config.structured,
        &source.data,
        &source.vocab,
        seed,
        config.device,
    )?;
    let (mut h0, mut h1, mut f0, mut f1) = (0usize, 0usize, 0usize, 0usize);
    let cfg = source.model.config();
    for (l, k) in keep.iter().enumerate() {
        let s = cfg.layer_shape(l);
        h0 += s.heads + s.cross_heads;
        h1 += k.heads.len() + k.cross_heads.len();
        f0 += s.ff;
        f1 += k.ff.len();
    }
    report.structured_removed = Some((
        1.0 - h1 as f64 / h0.max(1) as f64,
        1.0 - f1 as f64 / f0.max(1) as f64,
    ));
    report.structured_keep = Some(keep);
    report.recovery_loss.insert("pruned".into(), loss);
    report.notes.insert(
        "pruned".into(),
        "physically smaller f32 tensors (config.json layer_shapes)".into(),
    );
    let pruned = m.clone();
    variants.finish("pruned", m)?;
    Ok(pruned)
}

/// The quantized variants: the original's, and the pruned model's when asked.
fn build_quantized(
    config: &CompressConfig,
    source: &Source,
    pruned_model: Option<MultimodalModel>,
    variants: &mut Variants,
    report: &mut CompressReport,
) -> Result<()> {
    let bits = config.quantize.bits.name();
    let note = format!(
        "burn QFloat weights ({bits}, symmetric, min/max scales {}): the record stores the quantized values and their scales and reloads quantized; burn's flex backend dequantizes the weights for each matmul (f32 compute){}",
        if config.quantize.block == 0 {
            "per tensor".to_owned()
        } else {
            format!("per block of {}", config.quantize.block)
        },
        if config.quantize.bits == Bits::Int4 {
            "; flex keeps one byte per 4-bit value, so int4 files are no smaller than int8"
        } else {
            ""
        }
    );
    let mut todo = vec![(bits.to_owned(), source.model.clone())];
    if let Some(p) = pruned_model.filter(|_| config.quantize.pruned) {
        todo.push((format!("pruned_{bits}"), p));
    }
    for (name, m) in todo {
        let q = quantize(m, config.quantize.spec())?;
        report.notes.insert(name.clone(), note.clone());
        variants.finish(&name, q)?;
    }
    Ok(())
}

/// Writes `compress.parquet`, `sparsity.parquet` (when there is a sparse variant), the variant folders,
/// `models.json` and `report.json`.
fn write_outputs(
    writer: &mut ArtifactWriter,
    variants: Variants,
    report: &mut CompressReport,
) -> Result<()> {
    let Variants { rows, entries, .. } = variants;
    let (schema, batch) = table(&rows)?;
    writer.write_table("compress", Role::Report, schema, &[batch])?;
    if !report.sparsity.is_empty() {
        let (schema, batch) = sparsity_table(&report.sparsity)?;
        writer.write_table("sparsity", Role::Report, schema, &[batch])?;
    }
    for e in &entries {
        writer.add_dir(&e.dir, Role::State, None)?;
    }
    writer.write_json(mmrl_model::predict::MODELS_FILE, Role::State, &entries)?;
    report.variants = rows;
    writer.write_json("report.json", Role::Report, &*report)?;
    Ok(())
}
