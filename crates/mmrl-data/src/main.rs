//! `mmrl-data`: the data stages as commands (`generate`, `ingest`, `select`), in the stage protocol of
//! [`mmrl_artifact::cli`].

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging};
use mmrl_data::{generate, ingest, profile, select};

#[derive(Parser)]
#[command(
    name = "mmrl-data",
    version,
    about = "mmrl data stages: default dataset generation, ingest, selection"
)]
struct Cli {
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Write the seeded synthetic dataset folder (manifest.csv, images/, audio/) as an artifact.
    Generate(StageArgs),
    /// Validate a dataset folder (--input dataset=DIR) into samples.parquet and rejects.parquet.
    Ingest(StageArgs),
    /// Filter, deduplicate and split the ingest artifact (--input samples=DIR).
    Select(StageArgs),
    /// Profile a dataset folder and write a commented pipeline file for it (`cargo xtask init DIR`).
    Init(InitArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// The dataset folder (or Parquet file).
    #[arg(long)]
    dataset: std::path::PathBuf,
    /// The pipeline file to write.
    #[arg(long)]
    output: std::path::PathBuf,
    /// The pipeline's name.
    #[arg(long)]
    name: String,
    /// The shared recipe the file extends.
    #[arg(long, default_value = "pipelines/recipe.toml")]
    recipe: std::path::PathBuf,
    /// Overwrite an existing pipeline file.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().stage {
        Stage::Generate(args) => {
            let Some(config) =
                config(&args, generate::GenerateConfig::validate).map_err(|e| anyhow!(e))?
            else {
                return Ok(());
            };
            let output = args.output().map_err(|e| anyhow!(e))?;
            let summary = generate::run(&config, args.seed, output)
                .with_context(|| format!("generate into {}", output.display()))?;
            tracing::info!(rows = summary.rows, output = %output.display(), "generated the default dataset");
        }
        Stage::Ingest(args) => {
            let Some(config) =
                config(&args, ingest::IngestConfig::validate).map_err(|e| anyhow!(e))?
            else {
                return Ok(());
            };
            let dataset = args.input("dataset").map_err(|e| anyhow!(e))?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let summary = ingest::run(&config, dataset, output)
                .with_context(|| format!("ingest {}", dataset.display()))?;
            for (reason, n) in &summary.rejects_by_reason {
                tracing::warn!(reason = %reason, rows = n, "rows rejected");
            }
        }
        Stage::Select(args) => {
            let Some(config) =
                config(&args, select::SelectConfig::validate).map_err(|e| anyhow!(e))?
            else {
                return Ok(());
            };
            let input = args.input("samples").map_err(|e| anyhow!(e))?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let report = select::run(&config, args.seed, input, output)
                .with_context(|| format!("select from {}", input.display()))?;
            for f in &report.filters {
                tracing::info!(filter = %f.filter, removed = f.removed, "filter");
            }
        }
        Stage::Init(args) => {
            let profile = profile::init(
                &args.dataset,
                &args.output,
                &args.name,
                &args.recipe,
                args.force,
            )
            .with_context(|| format!("init {}", args.dataset.display()))?;
            print!("{}", profile::render(&profile));
            println!(
                "\nwrote {}\nrun it with: cargo xtask pipeline --config {}",
                args.output.display(),
                args.output.display()
            );
        }
    }
    Ok(())
}
