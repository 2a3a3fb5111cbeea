//! `mmrl-compress`: the compress stage in the stage protocol of [`mmrl_artifact::cli`], and a bench that
//! prints the compression figures.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging};
use mmrl_compress::stage::{self, CompressConfig};
use mmrl_model::data::InputPaths;
use mmrl_model::model::Preset;

#[derive(Parser)]
#[command(
    name = "mmrl-compress",
    version,
    about = "mmrl compress: pruning and quantization of a trained model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a model (--input model=SFT|RL --input samples=SELECT [--input image=.. audio=.. tabular=..]).
    Compress(StageArgs),
    /// Run the stage on existing artifacts into a temporary folder and print its table, then time the
    /// structured-pruned and int8 copies of a randomly initialized preset on synthetic inputs.
    Bench {
        /// Folder holding the default pipeline's artifacts (sft, select, image, audio, tabular).
        #[arg(long, default_value = "artifacts/default")]
        artifacts: PathBuf,
        /// Model stage folder under `--artifacts` (sft or rl).
        #[arg(long, default_value = "sft")]
        model: String,
        /// Stage params (TOML or JSON) for the stage run; defaults otherwise.
        #[arg(long)]
        params: Option<PathBuf>,
        /// Skip the stage run (synthetic timings only).
        #[arg(long)]
        synthetic_only: bool,
        /// Presets for the synthetic timings.
        #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
        presets: Vec<String>,
        /// Fraction of heads removed in the synthetic timings.
        #[arg(long, default_value_t = 0.5)]
        head_fraction: f64,
        /// Fraction of feed-forward neurons removed in the synthetic timings.
        #[arg(long, default_value_t = 0.5)]
        ff_fraction: f64,
        /// Samples per decoding batch in the synthetic timings.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Timed rounds (the fastest counts).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seed of the stage run.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn input_paths(args: &StageArgs) -> anyhow::Result<InputPaths> {
    const KNOWN: [&str; 5] = ["model", "samples", "image", "audio", "tabular"];
    if let Some((name, _)) = args
        .inputs
        .iter()
        .find(|(n, _)| !KNOWN.contains(&n.as_str()))
    {
        return Err(anyhow!(
            "unknown input {name:?}; compress reads {}",
            KNOWN.join(", ")
        ));
    }
    InputPaths::from_args(args).map_err(|e| anyhow!(e))
}

fn print_table(rows: &[stage::VariantRow]) {
    let base = rows
        .first()
        .map_or(1.0, |r| r.cpu_infer_samples_per_s.max(1e-9));
    let base_bytes = rows.first().map_or(1, |r| r.file_bytes.max(1));
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>7} {:>10} {:>7} {:>8} {:>8}",
        "variant",
        "params",
        "nonzero",
        "bytes",
        "smaller",
        "samples/s",
        "speedup",
        "val_em",
        "delta_pt"
    );
    for r in rows {
        println!(
            "{:<12} {:>10} {:>10} {:>10} {:>6.2}x {:>10.1} {:>6.2}x {:>8.4} {:>+8.2}",
            r.variant,
            r.parameters,
            r.nonzero_parameters,
            r.file_bytes,
            base_bytes as f64 / r.file_bytes.max(1) as f64,
            r.cpu_infer_samples_per_s,
            r.cpu_infer_samples_per_s / base,
            r.val_exact_match,
            100.0 * r.delta_exact_match
        );
    }
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Compress(args) => {
            let Some(cfg) = config(&args, CompressConfig::validate).map_err(|e| anyhow!(e))? else {
                return Ok(());
            };
            let inputs = input_paths(&args)?;
            let model = args.input("model").map_err(|e| anyhow!(e))?.to_path_buf();
            let output = args.output().map_err(|e| anyhow!(e))?;
            let report = stage::run(&cfg, args.seed, &model, &inputs, output)
                .with_context(|| format!("compress into {}", output.display()))?;
            for r in &report.variants {
                tracing::info!(
                    variant = %r.variant,
                    parameters = r.parameters,
                    nonzero = r.nonzero_parameters,
                    file_bytes = r.file_bytes,
                    samples_per_s = format!("{:.1}", r.cpu_infer_samples_per_s),
                    val_exact_match = format!("{:.4}", r.val_exact_match),
                    "compress"
                );
            }
        }
        Command::Bench {
            artifacts,
            model,
            params,
            synthetic_only,
            presets,
            head_fraction,
            ff_fraction,
            batch,
            rounds,
            seed,
        } => {
            if !synthetic_only {
                let cfg: CompressConfig = match &params {
                    None => CompressConfig::default(),
                    Some(p) => {
                        let text = std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?;
                        if p.extension().is_some_and(|e| e == "json") {
                            serde_json::from_str(&text)?
                        } else {
                            toml::from_str(&text)?
                        }
                    }
                };
                cfg.validate()?;
                let inputs = InputPaths {
                    samples: artifacts.join("select"),
                    image: Some(artifacts.join("image")).filter(|p| p.is_dir()),
                    audio: Some(artifacts.join("audio")).filter(|p| p.is_dir()),
                    tabular: Some(artifacts.join("tabular")).filter(|p| p.is_dir()),
                };
                let out = std::env::temp_dir()
                    .join(format!("mmrl-compress-bench-{}", std::process::id()));
                let report = stage::run(&cfg, seed, &artifacts.join(&model), &inputs, &out)
                    .with_context(|| format!("compressing {}", artifacts.join(&model).display()))?;
                let _ = std::fs::remove_dir_all(&out);
                println!(
                    "stage on {} (val split, seed {seed}):",
                    artifacts.join(&model).display()
                );
                print_table(&report.variants);
                if let Some(s) = report.sparse_overall {
                    println!(
                        "sparse: {:.1}% of linear weights are exactly zero",
                        100.0 * s
                    );
                }
                if let Some((h, f)) = report.structured_removed {
                    println!(
                        "pruned: {:.0}% of heads and {:.0}% of feed-forward neurons removed",
                        100.0 * h,
                        100.0 * f
                    );
                }
                println!("{}", serde_json::to_string(&report.variants)?);
            }
            for p in &presets {
                let preset: Preset =
                    serde_json::from_value(serde_json::Value::String(p.clone()))
                        .map_err(|_| anyhow!("--presets takes tiny, small or base, got {p:?}"))?;
                let rows =
                    mmrl_compress::bench::run(preset, head_fraction, ff_fraction, batch, rounds)?;
                for r in &rows {
                    println!(
                        "synthetic {p}: {:<8} {:>9} params {:>9.1} samples/s {:>5.2}x (batch {batch}, {:.0}% heads and {:.0}% neurons removed)",
                        r.variant,
                        r.parameters,
                        r.infer_samples_per_s,
                        r.speedup,
                        100.0 * head_fraction,
                        100.0 * ff_fraction
                    );
                }
            }
        }
    }
    Ok(())
}
