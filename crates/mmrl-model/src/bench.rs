//! Throughput probe: training and inference samples/s of a preset on synthetic inputs of the default
//! pipeline's shapes, and the process's peak memory.

use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamWConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::model::{Batch, Decoding, Dropout, ModalityBatch, ModelConfig, Preset, TabularBatch};
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
    for step in 0..bench.steps + 2 {
        if step == 2 {
            start = Instant::now();
            cpu_start = cpu_seconds();
        }
        let seeds: Vec<u64> = (0..shards).map(|_| rng.random()).collect();
        let (mut grads, _) = crate::parallel::sharded_grads(&model, shards, threads, |m, i| {
            let (batch, answers) = &parts[i];
            let mut shard_rng = ChaCha8Rng::seed_from_u64(seeds[i]);
            let loss = m.nll(
                batch,
                answers,
                normalizer,
                &mut Dropout::train(&mut shard_rng, config.dropout),
            );
            let value = loss.clone().into_scalar::<f32>();
            Ok::<_, crate::Error>((loss, value))
        })?;
        clip_global_norm(&model, &mut grads, 1.0);
        model = optim.step(1e-3, model, grads);
    }
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
    })
}
