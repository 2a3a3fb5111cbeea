//! `cargo xtask`: the pipeline runner and other project chores.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use xtask::chaos::ChaosOptions;
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
    /// Crash test: kill -9 every stage at seeded moments, and the runner itself, then check the artifacts and
    /// that the next run completes with the clean run's content hashes (docs/ARCHITECTURE.md, "Crash safety").
    Chaos(ChaosArgs),
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

/// `cargo xtask chaos` arguments.
#[derive(clap::Args)]
struct ChaosArgs {
    /// The pipeline file.
    #[arg(long, default_value = "pipelines/smoke.toml")]
    config: PathBuf,
    /// Artifacts of an uninterrupted run of the pipeline (e.g. artifacts/smoke); default: run one first.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Scratch folder [default: artifacts/<pipeline name>-chaos].
    #[arg(long)]
    work: Option<PathBuf>,
    /// Kill points per stage, spread over its run time.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Times the runner itself is killed while a stage runs.
    #[arg(long, default_value_t = 2)]
    runner_kills: usize,
    /// Seed of the kill moments.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Only this stage (repeat for several).
    #[arg(long = "stage")]
    stages: Vec<String>,
    /// Stages whose artifacts record timings, so their hashes differ between clean runs too; `STAGE:FILE` allows
    /// only that output to differ (eval's report.html draws hpo's trial history, whose trial numbers count the
    /// trials a kill interrupted).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hpo,compress,eval:report.html"
    )]
    measured: Vec<String>,
    /// Run the pipeline with the release profile.
    #[arg(long)]
    release: bool,
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
        Cmd::Chaos(args) => chaos(&workspace, args),
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

/// `chaos`: the crash test; prints its counts and fails when one that must be zero is not.
fn chaos(workspace: &Path, args: ChaosArgs) -> Result<()> {
    // Paths as given from the current folder, else from the workspace root (where `cargo xtask` may run from).
    let locate = |p: PathBuf| if p.exists() { p } else { workspace.join(p) };
    let config = locate(args.config);
    let name = xtask::pipeline::Pipeline::load(&config)?.pipeline.name;
    let opts = ChaosOptions {
        work: args
            .work
            .unwrap_or_else(|| workspace.join("artifacts").join(format!("{name}-chaos"))),
        reference: args.reference.map(locate),
        config,
        kills: args.kills,
        runner_kills: args.runner_kills,
        seed: args.seed,
        stages: args.stages,
        measured: args.measured,
        release: args.release,
    };
    let tally = xtask::chaos::run(&opts)?;
    let pipeline = xtask::pipeline::Pipeline::load(&opts.config)?;
    let stages: Vec<String> = pipeline
        .order()?
        .into_iter()
        .filter(|s| opts.stages.is_empty() || opts.stages.contains(s))
        .collect();
    print!("{}", tally.report(&stages));
    if !tally.passed(&stages, opts.kills) {
        bail!(
            "the crash test failed; the logs of every run are in {}",
            opts.work.join("logs").display()
        );
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
