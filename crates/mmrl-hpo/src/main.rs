//! `mmrl-hpo`: the hpo stage in the stage protocol of [`mmrl_artifact::cli`], a worker that joins a study
//! shared through PostgreSQL, a toy stage to tune in tests and demos, the sampler benchmark and the storage
//! hand-out benchmark.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging, print_resolved};
use mmrl_hpo::stage::{self, HpoConfig, ToyConfig};
use mmrl_hpo::worker::{WorkerOptions, run_worker};
use mmrl_hpo::{DbUrl, SamplerKind, bench, throughput};

#[derive(Parser)]
#[command(
    name = "mmrl-hpo",
    version,
    about = "mmrl hyperparameter optimization: the hpo stage and a sampler bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tune another stage (params: trial, space, objective, sampler, n_trials, workers, pruner, overrides,
    /// storage, study).
    Hpo {
        #[command(flatten)]
        args: StageArgs,
        #[command(flatten)]
        place: StudyPlace,
    },
    /// Join a study shared through PostgreSQL (made by an hpo stage with that storage) and run its trials
    /// until it has n_trials.
    Worker {
        /// The storage URL, postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME].
        #[arg(long, value_name = "URL")]
        storage: String,
        /// The study's name (the hpo stage logs it).
        #[arg(long, value_name = "NAME")]
        study: String,
        /// Trials this worker runs at once.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Where trial outputs and logs go (default: mmrl-hpo-work/<study>); one worker per folder.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// An input at another path on this machine, as NAME=PATH; repeat for several.
        #[arg(long = "input", value_name = "NAME=PATH", value_parser = parse_input)]
        inputs: Vec<(String, PathBuf)>,
    },
    /// A toy stage with a known optimum (x = 0.3, y = 0.7, kind = "b"), for tests and demos.
    Toy(StageArgs),
    /// Median simple regret of samplers on standard test functions (one JSON line per function x sampler).
    Bench {
        /// Functions, comma-separated, or `all` (branin, hartmann6, rosenbrock4, ackley5).
        #[arg(long, default_value = "all")]
        function: String,
        /// Samplers, comma-separated, or `all` (grid, random, sobol, tpe, gp, cmaes, ga).
        #[arg(long, default_value = "random,tpe,gp,cmaes")]
        sampler: String,
        /// Trials per run.
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// Seeds (runs) per function x sampler.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
    },
    /// Trials started and finished per second on a shared PostgreSQL study (trivial objective), next to
    /// Optuna's RDB storage on the same server when --optuna-python is given.
    StorageBench {
        /// Our storage URL.
        #[arg(
            long,
            default_value = "postgresql://postgres@127.0.0.1:5432/test?schema=mmrl_hpo_bench"
        )]
        storage: String,
        /// Concurrent workers.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Trials per run.
        #[arg(long, default_value_t = 2000)]
        trials: u64,
        /// A Python with optuna and psycopg2 (e.g. /tmp/optenv/bin/python); runs bench/optuna_rdb.py.
        #[arg(long, value_name = "PYTHON")]
        optuna_python: Option<PathBuf>,
        /// Optuna's storage (SQLAlchemy URL); its database is created if missing.
        #[arg(
            long,
            default_value = "postgresql+psycopg2://postgres@127.0.0.1:5432/mmrl_bench_optuna"
        )]
        optuna_storage: String,
    },
}

/// Where the hpo stage keeps its study, over the params' `storage` and `study`.
#[derive(Args)]
struct StudyPlace {
    /// The study's storage: `journal`, or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (overrides the
    /// params' `storage`).
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// The study's name in a database storage (overrides the params' `study`).
    #[arg(long, value_name = "NAME")]
    study: Option<String>,
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

/// The hpo config: the params, with `--storage` and `--study` laid over them when given.
fn hpo_config(args: &StageArgs, place: &StudyPlace) -> anyhow::Result<Option<HpoConfig>> {
    if place.storage.is_none() && place.study.is_none() {
        return config(args, HpoConfig::validate).map_err(|e| anyhow!(e));
    }
    let mut cfg: HpoConfig = args.params().map_err(|e| anyhow!(e))?;
    if let Some(s) = &place.storage {
        cfg.storage = Some(s.clone());
    }
    if let Some(s) = &place.study {
        cfg.study = Some(s.clone());
    }
    cfg.validate()?;
    if args.check {
        print_resolved(&cfg).map_err(|e| anyhow!(e))?;
        return Ok(None);
    }
    Ok(Some(cfg))
}

fn list<'a>(arg: &'a str, all: &'a [&'a str]) -> Vec<&'a str> {
    if arg == "all" {
        all.to_vec()
    } else {
        arg.split(',').map(str::trim).collect()
    }
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Hpo { args, place } => {
            let Some(cfg) = hpo_config(&args, &place)? else {
                return Ok(());
            };
            let output = args.output().map_err(|e| anyhow!(e))?;
            let report = stage::run(&cfg, &args.inputs, output, args.seed)
                .with_context(|| format!("hpo into {}", output.display()))?;
            tracing::info!(
                best_value = report.best_value,
                best_trial = report.best_trial,
                best_params = %serde_json::to_string(&report.best_params).unwrap_or_default(),
                counts = %serde_json::to_string(&report.counts).unwrap_or_default(),
                "hpo done"
            );
        }
        Command::Toy(args) => {
            let Some(cfg) = config(&args, ToyConfig::validate).map_err(|e| anyhow!(e))? else {
                return Ok(());
            };
            let output = args.output().map_err(|e| anyhow!(e))?;
            stage::run_toy(&cfg, output, args.seed)
                .with_context(|| format!("toy into {}", output.display()))?;
        }
        Command::Worker {
            storage,
            study,
            workers,
            work_dir,
            inputs,
        } => {
            let report = run_worker(&WorkerOptions {
                storage,
                study,
                workers,
                work_dir,
                inputs,
                poll: Duration::from_millis(250),
            })?;
            tracing::info!(
                study = %report.study,
                worker = %report.worker,
                ran = report.ran.len(),
                counts = %serde_json::to_string(&report.counts).unwrap_or_default(),
                best = ?report.best,
                "worker done: the study has its trials"
            );
        }
        Command::StorageBench {
            storage,
            workers,
            trials,
            optuna_python,
            optuna_storage,
        } => storage_bench(&storage, workers, trials, optuna_python, &optuna_storage)?,
        Command::Bench {
            function,
            sampler,
            trials,
            seeds,
        } => {
            let names: Vec<&str> = bench::FUNCTIONS.iter().map(|f| f.name).collect();
            let samplers: Vec<&str> = SamplerKind::ALL.iter().map(|s| s.name()).collect();
            for f in list(&function, &names) {
                let f = bench::function(f).map_err(|e| anyhow!(e))?;
                for s in list(&sampler, &samplers) {
                    let s = SamplerKind::parse(s).map_err(|e| anyhow!(e))?;
                    let line = bench::bench(&f, s, trials, seeds).map_err(|e| anyhow!(e))?;
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}

/// Runs our hand-out bench, then Optuna's when a Python is given, and prints them side by side.
fn storage_bench(
    storage: &str,
    workers: usize,
    trials: u64,
    python: Option<PathBuf>,
    optuna_storage: &str,
) -> anyhow::Result<()> {
    let url = DbUrl::parse(storage)?;
    let ours = throughput::measure(&url, workers, trials)?;
    println!("{}", serde_json::to_string(&ours)?);
    let Some(python) = python else {
        println!(
            "optuna: not run (give --optuna-python, a Python with optuna and psycopg2-binary installed)"
        );
        return Ok(());
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/optuna_rdb.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(["--storage", optuna_storage])
        .args(["--workers", &workers.to_string()])
        .args(["--trials", &trials.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line.lines().last().unwrap_or_default();
    let theirs: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{}: expected a JSON line, got {line:?}", script.display()))?;
    println!("{line}");
    let theirs_rate = theirs["trials_per_s"].as_f64().unwrap_or(f64::NAN);
    println!();
    println!("| storage | workers | trials | seconds | trials started+finished / s |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| mmrl-hpo PostgreSQL | {} | {} | {:.2} | {:.0} |",
        ours.workers, ours.trials, ours.seconds, ours.trials_per_s
    );
    println!(
        "| Optuna {} RDBStorage | {} | {} | {:.2} | {:.0} |",
        theirs["version"].as_str().unwrap_or("?"),
        theirs["workers"],
        theirs["trials"],
        theirs["seconds"].as_f64().unwrap_or(f64::NAN),
        theirs_rate
    );
    println!("ratio: {:.1}x", ours.trials_per_s / theirs_rate);
    Ok(())
}
