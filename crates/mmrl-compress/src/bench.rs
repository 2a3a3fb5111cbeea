//! Throughput probe of structured pruning and quantization on synthetic inputs: forward samples/s
//! of a randomly initialized preset, of its structurally pruned copy and of its int8 copy (accuracy is not
//! measured here; the stage's table has it).

use std::time::Instant;

use burn::module::Module;
use mmrl_model::model::Preset;
use mmrl_model::sft::DeviceKind;
use mmrl_model::{Batch, Dropout, ModelConfig, MultimodalModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::quant::{QuantSpec, quantize};
use crate::stage::{StructuredConfig, removal_counts};
use crate::structured::{magnitude_scores, plan, shrink};

/// One measured model.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `original`, `pruned`, `int8`.
    pub variant: String,
    /// Parameters.
    pub parameters: usize,
    /// Forward samples/s: encoder + decoder over 3 answer positions (best of the rounds).
    pub infer_samples_per_s: f64,
    /// Over the original.
    pub speedup: f64,
}

/// Fixed work per sample (greedy decoding of random weights stops at a random `<eos>`): the encoder once
/// and the decoder over 3 answer positions (2 tokens + `<eos>`), as a 2-token greedy answer costs.
fn speed(model: &MultimodalModel, batch: &Batch, answers: &[Vec<u32>], rounds: usize) -> f64 {
    let run = || {
        let s = model.score(batch, answers, &mut Dropout::off());
        let _ = s.token_logprobs.into_data();
    };
    run();
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed().as_secs_f64());
    }
    batch.size as f64 / best.max(1e-9)
}

/// Measures a preset (default pipeline shapes: 3x32x32 images, 32x63 mels, 6 numeric + 1 categorical
/// features) with `head_fraction` of heads and `ff_fraction` of neurons removed.
pub fn run(
    preset: Preset,
    head_fraction: f64,
    ff_fraction: f64,
    batch: usize,
    rounds: usize,
) -> Result<Vec<BenchRow>> {
    let mut config = ModelConfig::preset(preset);
    config.question_vocab = 31;
    config.answer_vocab = 20;
    config.image_shape = Some([3, 32, 32]);
    config.audio_shape = Some([32, 63]);
    config.numeric_features = 6;
    config.categorical_cardinalities = vec![8];
    let model = config.init(&DeviceKind::Cpu.device()?, 0)?;
    let scores = magnitude_scores(&model)?;
    let (heads, ff) = removal_counts(
        &model,
        &StructuredConfig {
            head_fraction,
            ff_fraction,
            ..Default::default()
        },
    )?;
    let pruned = shrink(&model, &plan(&scores, &heads, &ff)?)?;
    let q = quantize(model.clone(), QuantSpec::default())?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (input, answers) = mmrl_model::bench::synthetic(&config, batch, &mut rng);
    let mut rows = Vec::new();
    let mut base = 0.0;
    for (name, m) in [("original", &model), ("pruned", &pruned), ("int8", &q)] {
        let s = speed(m, &input, &answers, rounds);
        if name == "original" {
            base = s;
        }
        rows.push(BenchRow {
            variant: name.into(),
            parameters: m.num_params(),
            infer_samples_per_s: s,
            speedup: s / base.max(1e-9),
        });
    }
    Ok(rows)
}
