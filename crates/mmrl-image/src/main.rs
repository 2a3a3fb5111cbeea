//! `mmrl-image`: the image stage (`image`, in the stage protocol of [`mmrl_artifact::cli`]) and standalone
//! preprocessing of a folder (`preprocess`).

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, init_logging, print_resolved};
use mmrl_image::{ImageConfig, folder, stage};

#[derive(Parser)]
#[command(
    name = "mmrl-image",
    version,
    about = "mmrl image stage: decode, filter, deduplicate, resize, augment, normalize"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The pipeline stage: --input samples=SELECT_ARTIFACT into images.parquet, state.json, report.json and
    /// rejects.parquet.
    Image(StageArgs),
    /// Preprocess every PNG/JPEG under a folder into one Parquet file of tensors keyed by relative file name.
    Preprocess(PreprocessArgs),
}

#[derive(clap::Args)]
struct PreprocessArgs {
    /// The folder of images (searched recursively for .png, .jpg, .jpeg).
    #[arg(long, value_name = "DIR")]
    input: PathBuf,
    /// The Parquet file to write; FILE.report.json and FILE.state.json are written next to it.
    #[arg(long, value_name = "FILE.parquet")]
    output: PathBuf,
    /// Parameters as TOML (the stage's params table); defaults when absent.
    #[arg(long, value_name = "FILE.toml", conflicts_with = "state")]
    params: Option<PathBuf>,
    /// A state.json (from the stage or an earlier preprocess) whose config and mean/std are applied unchanged.
    #[arg(long, value_name = "state.json")]
    state: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Image(args) => {
            let config: ImageConfig = args.params().map_err(|e| anyhow!(e))?;
            config.validate()?;
            if args.check {
                return print_resolved(&config).map_err(|e| anyhow!(e));
            }
            let samples = args.input("samples").map_err(|e| anyhow!(e))?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let report = stage::run(&config, args.seed, samples, output)
                .with_context(|| format!("image stage on {}", samples.display()))?;
            for (split, reasons) in &report.dropped_by_split {
                for (reason, n) in reasons {
                    tracing::warn!(split = %split, reason = %reason, samples = n, "samples dropped");
                }
            }
            for (reason, n) in &report.marked_absent_by_reason {
                tracing::warn!(reason = %reason, samples = n, "images marked absent");
            }
        }
        Command::Preprocess(args) => {
            let config = match &args.params {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let config: ImageConfig = toml::from_str(&text)
                        .map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
                    Some(config)
                }
                None => None,
            };
            let state = args
                .state
                .as_deref()
                .map(stage::ImageState::read)
                .transpose()?;
            let report =
                folder::preprocess(config.as_ref(), state.as_ref(), &args.input, &args.output)
                    .with_context(|| format!("preprocess {}", args.input.display()))?;
            for r in &report.rejects {
                tracing::warn!(file = %r.file, reason = %r.reason, "{}", r.detail);
            }
            let s = &report.summary;
            println!(
                "{} images -> {}: {} with tensors, {} dropped {:?}, {} marked absent, {} duplicate groups; mean {:?} std {:?}",
                s.rows_in,
                args.output.display(),
                s.present,
                s.dropped,
                folder::reject_counts(&report),
                s.marked_absent,
                s.duplicates.groups,
                s.normalization.mean,
                s.normalization.std,
            );
        }
    }
    Ok(())
}
