//! The GPU backends against flex, the CPU backend: the same seeded model gives the same loss, gradient norm
//! and greedy answers, and a short sft run the same val exact match, on `cuda` and on `vulkan`.
//!
//! Each parity test compiles only with its feature (`cargo test -p mmrl-model --features cuda --test gpu`)
//! and runs only where its GPU is there: elsewhere it says so on stderr and returns, unless
//! `MMRL_GPU_TESTS=require`, which turns a missing GPU into a failure (the device script sets it, so a run
//! on a GPU machine cannot pass by skipping). Without either feature the file still checks that asking for a
//! GPU the binary lacks is a config error naming the feature.
//!
//! Tolerances, all float32 with fusion and autotune off: the loss within 1e-4 relative, the gradient norm
//! within 1e-3 relative (reduction order differs between backends), greedy answers identical (the sampled
//! logits differ by ~1e-6, far below the margins between tokens), and the val exact match of a 3-epoch sft
//! run within 0.05 (2 of its 45 val answers; the runs share every random draw, dropout is off, and only
//! float rounding differs over 21 optimizer steps).
#![allow(clippy::unwrap_used)]

mod common;

use mmrl_model::sft::DeviceKind;

#[test]
fn a_gpu_device_this_binary_lacks_is_a_config_error_naming_the_feature() {
    for kind in [DeviceKind::Vulkan, DeviceKind::Cuda] {
        if kind.is_built() {
            continue;
        }
        let err = kind.device().unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("device") && message.contains(&format!("--features {}", kind.name())),
            "{message}"
        );
    }
    assert!(DeviceKind::Cpu.is_built() && DeviceKind::Cpu.device().is_ok());
}

#[cfg(any(feature = "cuda", feature = "vulkan"))]
mod parity {
    use std::path::Path;

    use burn::module::Module;
    use burn::optim::GradientsParams;
    use mmrl_artifact::sample::Split;
    use mmrl_model::data::Dataset;
    use mmrl_model::schedule::{ScheduleConfig, ScheduleKind};
    use mmrl_model::sft::{self, DeviceKind, Hooks, Outcome, SftConfig, clip_global_norm};
    use mmrl_model::vocab::Vocab;
    use mmrl_model::{Decoding, Dropout};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::common;

    /// Whether `kind`'s GPU can be used here; if not, says so, and fails under `MMRL_GPU_TESTS=require`.
    fn gpu_here(kind: DeviceKind) -> bool {
        // The NVIDIA driver's control node exists wherever libcuda can open a device; Vulkan also needs its
        // loader. Mesa's CPU driver (lavapipe) is no GPU and crashes in burn's pipelines, so only a
        // render node of a real driver counts for vulkan.
        let nvidia = Path::new("/dev/nvidiactl").exists();
        let present = match kind {
            DeviceKind::Cuda => nvidia,
            DeviceKind::Vulkan => {
                let loader = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
                    .iter()
                    .any(|d| Path::new(d).join("libvulkan.so.1").exists());
                loader && (nvidia || Path::new("/dev/dri/renderD128").exists())
            }
            DeviceKind::Cpu => true,
        };
        if !present {
            let required = std::env::var("MMRL_GPU_TESTS").is_ok_and(|v| v == "require");
            assert!(
                !required,
                "MMRL_GPU_TESTS=require but no {} GPU here",
                kind.name()
            );
            eprintln!(
                "no {} GPU on this machine: parity test not run (it runs where one is)",
                kind.name()
            );
        }
        present
    }

    fn small() -> SftConfig {
        SftConfig {
            d_model: Some(32),
            encoder_layers: Some(1),
            decoder_layers: Some(1),
            heads: Some(2),
            image_patch: 4,
            dropout: 0.0,
            shards: 1,
            ..Default::default()
        }
    }

    /// Loss, gradient norm and greedy answers of one seeded model on one batch.
    fn step_on(kind: DeviceKind) -> (f32, f64, Vec<Vec<u32>>) {
        let dir = tempfile::tempdir().unwrap();
        let rows = common::rows(40);
        let data = Dataset::load(&common::inputs(dir.path(), &rows)).unwrap();
        let train = data.split(Split::Train);
        let vocab = Vocab::fit(train.iter().map(|&i| {
            let s = &data.samples[i];
            (s.question.as_str(), s.answer.as_str())
        }));
        let cfg = data.shape_config(small().model_config(), &vocab);
        let items: Vec<(usize, usize)> = train.iter().take(16).map(|&i| (i, 0)).collect();
        let (batch, answers) = data.batch(&items, &vocab, &cfg, None);
        let device = kind.device().unwrap().autodiff();
        let model = cfg.init(&device, 1).unwrap();
        let loss = model.nll(&batch, &answers, 16.0, &mut Dropout::off());
        let value = loss.clone().into_scalar::<f32>();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = clip_global_norm(&model, &mut grads, 0.0);
        let greedy = model
            .valid()
            .generate(&batch, Decoding::Greedy, &mut ChaCha8Rng::seed_from_u64(0))
            .into_iter()
            .map(|g| g.tokens)
            .collect();
        (value, norm, greedy)
    }

    fn check_step(kind: DeviceKind) {
        if !gpu_here(kind) {
            return;
        }
        let (cpu, gpu) = (step_on(DeviceKind::Cpu), step_on(kind));
        assert!(cpu.0.is_finite() && cpu.0 > 0.0);
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs();
        eprintln!(
            "{}: loss {} vs cpu {} (rel {:.2e}), grad norm {} vs {} (rel {:.2e})",
            kind.name(),
            gpu.0,
            cpu.0,
            rel(cpu.0.into(), gpu.0.into()),
            gpu.1,
            cpu.1,
            rel(cpu.1, gpu.1)
        );
        assert!(
            rel(cpu.0.into(), gpu.0.into()) <= 1e-4,
            "loss {} vs {}",
            cpu.0,
            gpu.0
        );
        assert!(
            rel(cpu.1, gpu.1) <= 1e-3,
            "grad norm {} vs {}",
            cpu.1,
            gpu.1
        );
        assert_eq!(cpu.2, gpu.2, "greedy answers");
    }

    /// Val exact match and steps of a 3-epoch sft run on 150 samples (105 train, 45 val).
    fn sft_on(kind: DeviceKind) -> (f64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let inputs = common::inputs(dir.path(), &common::rows(150));
        let config = SftConfig {
            epochs: 3,
            batch_size: 16,
            lr: 3e-3,
            early_stopping_patience: 0,
            checkpoint_every: 0,
            schedule: ScheduleConfig {
                kind: ScheduleKind::WarmupCosine,
                warmup_steps: 5,
                ..Default::default()
            },
            device: kind,
            ..small()
        };
        let out = dir.path().join("sft");
        match sft::run(&config, 3, &inputs, &out, Hooks::default()).unwrap() {
            Outcome::Done(r) => (r.val_exact_match, r.steps),
            Outcome::Interrupted { step } => panic!("interrupted at {step}"),
        }
    }

    fn check_sft(kind: DeviceKind) {
        if !gpu_here(kind) {
            return;
        }
        let (cpu, gpu) = (sft_on(DeviceKind::Cpu), sft_on(kind));
        eprintln!(
            "{}: sft val exact match {:.4} vs cpu {:.4} ({} steps)",
            kind.name(),
            gpu.0,
            cpu.0,
            gpu.1
        );
        assert_eq!(cpu.1, gpu.1, "optimizer steps");
        assert!(cpu.0 > 0.0, "the cpu run learned nothing: {}", cpu.0);
        assert!(
            (cpu.0 - gpu.0).abs() <= 0.05,
            "val exact match {} vs cpu {}",
            gpu.0,
            cpu.0
        );
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_matches_the_cpu_backend() {
        check_step(DeviceKind::Cuda);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_sft_reaches_the_cpu_val_exact_match() {
        check_sft(DeviceKind::Cuda);
    }

    #[cfg(feature = "vulkan")]
    #[test]
    fn vulkan_matches_the_cpu_backend() {
        check_step(DeviceKind::Vulkan);
    }

    #[cfg(feature = "vulkan")]
    #[test]
    fn vulkan_sft_reaches_the_cpu_val_exact_match() {
        check_sft(DeviceKind::Vulkan);
    }
}
