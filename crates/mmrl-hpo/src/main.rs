//! `mmrl-hpo`: the hpo stage in the stage protocol of [`mmrl_artifact::cli`], a toy stage to tune in tests
//! and demos, and the sampler benchmark.

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging};
use mmrl_hpo::stage::{self, HpoConfig, ToyConfig};
use mmrl_hpo::{SamplerKind, bench};

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
    /// Tune another stage (params: trial, space, objective, sampler, n_trials, workers, pruner, overrides).
    Hpo(StageArgs),
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
        Command::Hpo(args) => {
            let Some(cfg) = config(&args, HpoConfig::validate).map_err(|e| anyhow!(e))? else {
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
