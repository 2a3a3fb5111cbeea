//! `cargo xtask`: the pipeline runner and other project chores.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
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
        /// The pipeline file [default: pipelines/default.toml, or pipelines/recipe.toml with --dataset].
        #[arg(long)]
        config: Option<PathBuf>,
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
        /// Run on your own dataset folder (manifest.csv, Hugging Face ImageFolder/AudioFolder, or Parquet).
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Where artifacts go (default artifacts/<pipeline name>).
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// Build and run the stages with the release profile instead of dev (which shares the test build).
        #[arg(long)]
        release: bool,
    },
    /// Profile a dataset folder and write a commented pipeline file for it.
    Init {
        /// The dataset folder (or Parquet file).
        dataset: PathBuf,
        /// The pipeline file to write [default: pipelines/<folder name>.toml].
        #[arg(long)]
        output: Option<PathBuf>,
        /// The pipeline's name (its artifacts land in artifacts/<name>/) [default: the folder's name].
        #[arg(long)]
        name: Option<String>,
        /// Overwrite an existing pipeline file.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .map_or(manifest_dir.clone(), PathBuf::from);
    match Cli::parse().command {
        Cmd::Pipeline {
            config,
            from,
            to,
            force,
            dry_run,
            dataset,
            artifacts,
            release,
        } => {
            let default = if dataset.is_some() {
                "pipelines/recipe.toml"
            } else {
                "pipelines/default.toml"
            };
            let opts = Options {
                config: config.unwrap_or_else(|| workspace.join(default)),
                from,
                to,
                force,
                dry_run,
                dataset,
                artifacts,
                profile: if release { "release" } else { "dev" }.to_owned(),
                workspace,
            };
            pipeline(&opts)
        }
        Cmd::Init {
            dataset,
            output,
            name,
            force,
        } => init(&workspace, &dataset, output, name, force),
    }
}

fn pipeline(opts: &Options) -> Result<()> {
    let outcome = runner::run(opts)?;
    eprint!("\n{}", runner::table(&outcome));
    eprint!("{}", runner::summaries(&outcome));
    if let Some(error) = outcome.error {
        bail!(error);
    }
    Ok(())
}

/// `init`: mmrl-data profiles the folder and writes the pipeline file; this only picks the defaults.
fn init(
    workspace: &Path,
    dataset: &Path,
    output: Option<PathBuf>,
    name: Option<String>,
    force: bool,
) -> Result<()> {
    let stem = dataset
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("dataset")
        .to_owned();
    let name = name.unwrap_or(stem);
    let output = output.unwrap_or_else(|| workspace.join("pipelines").join(format!("{name}.toml")));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "run",
            "--quiet",
            "--package",
            "mmrl-data",
            "--",
            "init",
            "--dataset",
        ])
        .arg(std::path::absolute(dataset)?)
        .arg("--output")
        .arg(std::path::absolute(&output)?)
        .args(["--name", &name, "--recipe"])
        .arg(workspace.join("pipelines").join("recipe.toml"));
    if force {
        command.arg("--force");
    }
    let status = command
        .status()
        .context("starting cargo run -p mmrl-data -- init")?;
    if !status.success() {
        bail!("init failed ({status})");
    }
    Ok(())
}
