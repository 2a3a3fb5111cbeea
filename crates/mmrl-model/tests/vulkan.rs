//! The `vulkan` feature against the CPU backend: the same seeded model gives the same loss, gradient norm
//! and greedy answers on both (run with `cargo test -p mmrl-model --features vulkan --test vulkan`; needs a
//! Vulkan driver, e.g. a GPU's or Mesa's lavapipe on the CPU).
#![cfg(feature = "vulkan")]
#![allow(clippy::unwrap_used)]

mod common;

use burn::module::Module;
use burn::optim::GradientsParams;
use mmrl_artifact::sample::Split;
use mmrl_model::data::Dataset;
use mmrl_model::sft::{DeviceKind, SftConfig, clip_global_norm};
use mmrl_model::vocab::Vocab;
use mmrl_model::{Decoding, Dropout};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn vulkan_matches_the_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::rows(40);
    let data = Dataset::load(&common::inputs(dir.path(), &rows)).unwrap();
    let train = data.split(Split::Train);
    let vocab = Vocab::fit(train.iter().map(|&i| {
        (
            data.samples[i].question.as_str(),
            data.samples[i].answer.as_str(),
        )
    }));
    let sft = SftConfig {
        d_model: Some(32),
        encoder_layers: Some(1),
        decoder_layers: Some(1),
        heads: Some(2),
        image_patch: 4,
        dropout: 0.0,
        ..Default::default()
    };
    let cfg = data.shape_config(sft.model_config(), &vocab);
    let items: Vec<(usize, usize)> = train.iter().take(16).map(|&i| (i, 0)).collect();
    let (batch, answers) = data.batch(&items, &vocab, &cfg, None);
    let mut out = Vec::new();
    for kind in [DeviceKind::Cpu, DeviceKind::Vulkan] {
        let device = kind.device().unwrap().autodiff();
        let model = cfg.init(&device, 1).unwrap();
        let loss = model.nll(&batch, &answers, 16.0, &mut Dropout::off());
        let value = loss.clone().into_scalar::<f32>();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = clip_global_norm(&model, &mut grads, 0.0);
        let greedy: Vec<Vec<u32>> = model
            .valid()
            .generate(&batch, Decoding::Greedy, &mut ChaCha8Rng::seed_from_u64(0))
            .into_iter()
            .map(|g| g.tokens)
            .collect();
        out.push((value, norm, greedy));
    }
    let (cpu, gpu) = (&out[0], &out[1]);
    assert!(cpu.0.is_finite() && cpu.0 > 0.0);
    assert!(
        (cpu.0 - gpu.0).abs() <= 1e-4 * cpu.0.abs(),
        "loss {} vs {}",
        cpu.0,
        gpu.0
    );
    assert!(
        (cpu.1 - gpu.1).abs() <= 1e-3 * cpu.1,
        "grad norm {} vs {}",
        cpu.1,
        gpu.1
    );
    assert_eq!(cpu.2, gpu.2, "greedy answers");
}
