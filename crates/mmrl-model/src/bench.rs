//! Throughput probe: training and inference samples/s of a preset on synthetic inputs of the default
//! pipeline's shapes, and the process's peak memory.

use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::optim::ModuleOptimizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::model::{
    Batch, Decoding, Dropout, ModalityBatch, ModelConfig, MultimodalModel, Preset, TabularBatch,
};
use crate::sft::{DeviceKind, clip_global_norm};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Model size.
    pub preset: Preset,
    /// Train batch size.
    pub batch: usize,
    /// Timed train steps (after 2 warmup steps).
    pub steps: usize,
    /// Inference batch size.
    pub infer_batch: usize,
    /// Image shape `[C, H, W]`.
    pub image: [usize; 3],
    /// Audio mel shape `[mels, frames]`.
    pub audio: [usize; 2],
    /// Numeric and categorical tabular features.
    pub tabular: (usize, usize),
    /// Dropout while training.
    pub dropout: f64,
    /// Device.
    pub device: DeviceKind,
    /// Shards each training batch is split into ([`crate::parallel::sharded_grads`]).
    pub shards: usize,
    /// Threads the shards run on (0: every core).
    pub threads: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Tiny,
            batch: 32,
            steps: 20,
            infer_batch: 256,
            image: [3, 32, 32],
            audio: [32, 32],
            tabular: (6, 1),
            dropout: 0.1,
            device: DeviceKind::Cpu,
            shards: 1,
            threads: 1,
        }
    }
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Model parameters.
    pub parameters: usize,
    /// Encoder tokens per sample.
    pub tokens: usize,
    /// Training samples/s (forward, backward, clipping, AdamW).
    pub train_samples_per_s: f64,
    /// Greedy-decoding samples/s (encoder once, decoder per token, 2 answer tokens + eos).
    pub infer_samples_per_s: f64,
    /// Training samples per CPU-second of the process (all threads; robust to other load on the
    /// machine, unlike wall-clock figures); `None` off Linux.
    pub train_samples_per_cpu_s: Option<f64>,
    /// Inference samples per CPU-second of the process; `None` off Linux.
    pub infer_samples_per_cpu_s: Option<f64>,
    /// Peak resident memory of the process (VmHWM), MiB; `None` off Linux.
    pub peak_rss_mib: Option<f64>,
    /// Where a timed train step's wall time goes, ms per step (see [`TrainPhases`]).
    pub train_phases_ms: TrainPhases,
}

/// Wall time per train step by phase, in ms. On the CPU each phase computes. On a GPU the host only
/// enqueues kernels until something reads a result: `forward` and `backward` are then the host's dispatch
/// cost, and `clip` also holds the wait for the device to finish the step (its norm is read back), so a
/// step bound by per-op dispatch shows most time in `forward` + `backward`, one bound by the device in `clip`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TrainPhases {
    /// Building the forward graph (`nll`), dropout masks and input uploads included.
    pub forward: f64,
    /// The backward pass and collecting its gradients.
    pub backward: f64,
    /// The global gradient norm (read back: waits for the device) and clipping.
    pub clip: f64,
    /// Reading the losses back, after the norm (the device is done by then).
    pub loss_read: f64,
    /// The AdamW update.
    pub optimizer: f64,
}

impl TrainPhases {
    fn add(&mut self, other: &TrainPhases) {
        self.forward += other.forward;
        self.backward += other.backward;
        self.clip += other.clip;
        self.loss_read += other.loss_read;
        self.optimizer += other.optimizer;
    }

    fn per_step(mut self, steps: usize) -> Self {
        let n = steps.max(1) as f64;
        for v in [
            &mut self.forward,
            &mut self.backward,
            &mut self.clip,
            &mut self.loss_read,
            &mut self.optimizer,
        ] {
            *v *= 1000.0 / n;
        }
        self
    }
}

/// Waits until `device` has run everything queued, so a clock read after it covers that work (a no-op on
/// the CPU, whose ops run when called).
fn sync(device: &burn::tensor::Device) {
    if let Err(e) = device.sync() {
        tracing::warn!(error = ?e, "device sync failed: timings may be short");
    }
}

/// CPU time (user + system, all threads) this process has used, in seconds (Linux `/proc/self/stat`).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ ticks, 100 per second on every mainstream architecture.
    Some((utime + stime) / 100.0)
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `n` random samples of `config`'s shapes (8 question words, uniform image/audio values, constant tabular
/// features, every modality present) and two-token answers: the benches' inputs.
pub fn synthetic(config: &ModelConfig, n: usize, rng: &mut ChaCha8Rng) -> (Batch, Vec<Vec<u32>>) {
    let questions = (0..n)
        .map(|_| {
            (0..8)
                .map(|_| rng.random_range(2..config.question_vocab as u32))
                .collect()
        })
        .collect();
    let mut batch = Batch::new(questions);
    let mut modality = |per: usize| ModalityBatch {
        values: (0..n * per).map(|_| rng.random_range(-1.0..1.0)).collect(),
        present: vec![true; n],
    };
    batch.image = config.image_shape.map(|s| modality(s.iter().product()));
    batch.audio = config.audio_shape.map(|s| modality(s.iter().product()));
    batch.tabular = Some(TabularBatch {
        numeric: vec![0.5; n * config.numeric_features],
        categorical: vec![1; n * config.categorical_cardinalities.len()],
        present: vec![true; n],
    });
    let answers = (0..n).map(|i| vec![4 + (i % 6) as u32, 5]).collect();
    (batch, answers)
}

/// Runs the probe.
pub fn run(bench: &BenchConfig) -> Result<BenchResult> {
    let mut config = ModelConfig::preset(bench.preset).with_dropout(bench.dropout);
    config.question_vocab = 40;
    config.answer_vocab = 30;
    config.image_shape = Some(bench.image);
    config.audio_shape = Some(bench.audio);
    config.numeric_features = bench.tabular.0;
    config.categorical_cardinalities = vec![6; bench.tabular.1];
    let base = bench.device.device()?;
    let mut model = config.init(&base.clone().autodiff(), 0)?;
    let parameters = model.num_params();
    let tokens = 1
        + 8
        + (bench.image[1] / config.image_patch) * (bench.image[2] / config.image_patch)
        + bench.audio[1] / config.audio_patch
        + bench.tabular.0
        + bench.tabular.1;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let shards = bench.shards.clamp(1, bench.batch.max(1));
    let parts: Vec<(Batch, Vec<Vec<u32>>)> = (0..shards)
        .map(|i| {
            let n = bench.batch / shards + usize::from(i < bench.batch % shards);
            synthetic(&config, n, &mut rng)
        })
        .collect();
    let normalizer = parts
        .iter()
        .flat_map(|(_, a)| a.iter().map(|a| a.len() + 1))
        .sum::<usize>() as f32;
    if bench.threads > 0 {
        crate::parallel::set_threads(bench.threads);
    }
    let threads = crate::parallel::threads();
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let mut start = Instant::now();
    let mut cpu_start = cpu_seconds();
    let mut phases = TrainPhases::default();
    for step in 0..bench.steps + 2 {
        if step == 2 {
            sync(&base);
            start = Instant::now();
            cpu_start = cpu_seconds();
            phases = TrainPhases::default();
        }
        let seeds: Vec<u64> = (0..shards).map(|_| rng.random()).collect();
        let (step_phases, next) = train_step(
            model, &mut optim, &parts, &seeds, normalizer, &config, threads,
        )?;
        phases.add(&step_phases);
        model = next;
    }
    sync(&base);
    let train_s = start.elapsed().as_secs_f64();
    let train_cpu = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);
    let valid = model.valid();
    let (ibatch, _) = synthetic(&config, bench.infer_batch, &mut rng);
    let _ = valid.generate(&ibatch, Decoding::Greedy, &mut rng);
    let rounds = 10;
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    for _ in 0..rounds {
        let _ = valid.generate(&ibatch, Decoding::Greedy, &mut rng);
    }
    let infer_s = start.elapsed().as_secs_f64();
    let infer_cpu = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);
    let per =
        |samples: usize, secs: Option<f64>| secs.filter(|&s| s > 0.0).map(|s| samples as f64 / s);
    Ok(BenchResult {
        parameters,
        tokens,
        train_samples_per_s: (bench.steps * bench.batch) as f64 / train_s,
        infer_samples_per_s: (rounds * bench.infer_batch) as f64 / infer_s,
        train_samples_per_cpu_s: per(bench.steps * bench.batch, train_cpu),
        infer_samples_per_cpu_s: per(rounds * bench.infer_batch, infer_cpu),
        peak_rss_mib: peak_rss_mib(),
        train_phases_ms: phases.per_step(bench.steps),
    })
}

/// One timed training step as sft takes it (forward, backward, clip to norm 1, AdamW), except that the
/// losses are read back after the gradient norm rather than before the backward pass: reading a value
/// waits for the device, and a wait between forward and backward keeps the host from queueing the
/// backward while the device runs the forward.
fn train_step(
    model: MultimodalModel,
    optim: &mut ModuleOptimizer,
    parts: &[(Batch, Vec<Vec<u32>>)],
    seeds: &[u64],
    normalizer: f32,
    config: &ModelConfig,
    threads: usize,
) -> Result<(TrainPhases, MultimodalModel)> {
    let t = Instant::now();
    let (mut grads, outputs) =
        crate::parallel::sharded_grads(&model, parts.len(), threads, |m, i| {
            let forward = Instant::now();
            let (batch, answers) = &parts[i];
            let mut shard_rng = ChaCha8Rng::seed_from_u64(seeds[i]);
            let loss = m.nll(
                batch,
                answers,
                normalizer,
                &mut Dropout::train(&mut shard_rng, config.dropout),
            );
            let value = loss.clone().detach();
            Ok::<_, crate::Error>((loss, (value, forward.elapsed().as_secs_f64())))
        })?;
    let total = t.elapsed().as_secs_f64();
    let forward: f64 = outputs.iter().map(|(_, s)| s).sum();
    let t = Instant::now();
    clip_global_norm(&model, &mut grads, 1.0);
    let clip = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loss: f32 = outputs
        .into_iter()
        .map(|(l, _)| l.into_scalar::<f32>())
        .sum();
    let loss_read = t.elapsed().as_secs_f64();
    if !loss.is_finite() {
        return Err(crate::Error::Diverged {
            step: 0,
            message: format!("bench loss is {loss}"),
        });
    }
    let t = Instant::now();
    let next = optim.step(1e-3, model, grads);
    Ok((
        TrainPhases {
            forward,
            backward: (total - forward).max(0.0),
            clip,
            loss_read,
            optimizer: t.elapsed().as_secs_f64(),
        },
        next,
    ))
}
