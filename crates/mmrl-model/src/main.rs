//! `mmrl-model`: the sft and predict stages in the stage protocol of [`mmrl_artifact::cli`], and a
//! throughput bench.

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging, progress_bar};
use mmrl_model::data::InputPaths;
use mmrl_model::model::Preset;
use mmrl_model::{bench, predict, sft};

#[derive(Parser)]
#[command(
    name = "mmrl-model",
    version,
    about = "mmrl model: supervised fine-tuning, prediction, throughput bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the model (--input samples=SELECT [--input image=.. audio=.. tabular=..]).
    Sft(StageArgs),
    /// Answer a split with a trained model (--input model=SFT --input samples=SELECT [modalities]).
    Predict(StageArgs),
    /// Print training and inference samples/s and peak memory on synthetic inputs.
    Bench {
        /// Preset: tiny, small or base.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Train batch size.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Timed train steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Dropout while training.
        #[arg(long, default_value_t = 0.1)]
        dropout: f64,
        /// Shards each training batch is split into, computed concurrently (data parallel).
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Threads the shards run on (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Device: cpu, vulkan (needs `--features vulkan`) or cuda (needs `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Sft(args) => {
            let Some(cfg) = config(&args, sft::SftConfig::validate).map_err(|e| anyhow!(e))? else {
                return Ok(());
            };
            let inputs = InputPaths::from_args(&args).map_err(|e| anyhow!(e))?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let bar = progress_bar(0, "sft");
            let mut on_step = |p: sft::Progress| {
                bar.set_length(p.total);
                bar.set_position(p.step);
                bar.set_message(format!("loss {:.3}", p.loss));
            };
            let hooks = sft::Hooks {
                progress: Some(&mut on_step),
                stop_after_step: None,
            };
            let outcome = sft::run(&cfg, args.seed, &inputs, output, hooks)
                .with_context(|| format!("sft into {}", output.display()))?;
            bar.finish_and_clear();
            if let sft::Outcome::Done(report) = outcome {
                tracing::info!(
                    val_exact_match = format!("{:.4}", report.val_exact_match),
                    majority_baseline = format!("{:.4}", report.majority_baseline),
                    best_epoch = report.best_epoch,
                    parameters = report.parameters,
                    "sft done"
                );
                for (q, r) in &report.by_qtype {
                    tracing::info!(qtype = %q, samples = r.samples, exact_match = format!("{:.3}", r.exact_match),
                        majority = format!("{:.3}", r.majority_baseline), "val");
                }
            }
        }
        Command::Predict(args) => {
            let Some(cfg) =
                config(&args, predict::PredictConfig::validate).map_err(|e| anyhow!(e))?
            else {
                return Ok(());
            };
            let model = args.input("model").map_err(|e| anyhow!(e))?.to_path_buf();
            let inputs = InputPaths::from_args(&args).map_err(|e| anyhow!(e))?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let n = predict::run(&cfg, &model, &inputs, output)
                .with_context(|| format!("predict into {}", output.display()))?;
            tracing::info!(rows = n, output = %output.display(), "predictions written");
        }
        Command::Bench {
            preset,
            batch,
            steps,
            dropout,
            shards,
            threads,
            device,
        } => {
            let device: sft::DeviceKind =
                serde_json::from_value(serde_json::Value::String(device.clone()))
                    .map_err(|_| anyhow!("--device must be cpu, vulkan or cuda, got {device:?}"))?;
            let preset: Preset = serde_json::from_value(serde_json::Value::String(preset.clone()))
                .map_err(|_| anyhow!("--preset must be tiny, small or base, got {preset:?}"))?;
            let cfg = bench::BenchConfig {
                preset,
                batch,
                steps,
                dropout,
                shards,
                threads,
                device,
                ..Default::default()
            };
            let r = bench::run(&cfg)?;
            println!("{}", serde_json::to_string(&r)?);
            println!(
                "preset {preset:?}: {} parameters, {} tokens/sample; train {:.1} samples/s (batch {batch}), inference {:.1} samples/s (batch {}), peak RSS {} MiB",
                r.parameters,
                r.tokens,
                r.train_samples_per_s,
                r.infer_samples_per_s,
                cfg.infer_batch,
                r.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.0}"))
            );
        }
    }
    Ok(())
}
