//! `cargo xtask`: the pipeline runner and other project chores.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use xtask::runner::{self, Options};

#[derive(Parser)]
#[command(name = "xtask", about = "mmrl project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: stages in DAG order, unchanged stages skipped.
    Pipeline {
        /// The pipeline file.
        #[arg(long, default_value = "pipelines/default.toml")]
        config: PathBuf,
        /// Run this stage and everything downstream of it.
        #[arg(long)]
        from: Option<String>,
        /// Run this stage and everything upstream of it.
        #[arg(long)]
        to: Option<String>,
        /// Re-run every selected stage.
        #[arg(long)]
        force: bool,
        /// Show what would run and why, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run on your own dataset folder (with manifest.csv) instead of the generated one.
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Where artifacts go (default artifacts/<pipeline name>).
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// Build and run the stages with the release profile instead of dev (which shares the test build).
        #[arg(long)]
        release: bool,
    },
}

fn main() -> Result<()> {
    let Cmd::Pipeline {
        config,
        from,
        to,
        force,
        dry_run,
        dataset,
        artifacts,
        release,
    } = Cli::parse().command;
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .map_or(manifest_dir.clone(), PathBuf::from);
    let opts = Options {
        config,
        from,
        to,
        force,
        dry_run,
        dataset,
        artifacts,
        profile: if release { "release" } else { "dev" }.to_owned(),
        workspace,
    };
    let outcome = runner::run(&opts)?;
    eprint!("\n{}", runner::table(&outcome));
    eprint!("{}", runner::summaries(&outcome));
    if let Some(error) = outcome.error {
        bail!(error);
    }
    Ok(())
}
