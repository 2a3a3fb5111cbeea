//! `mmrl-rl`: the rl stage in the stage protocol of [`mmrl_artifact::cli`], and the comparison of
//! continued sft against GRPO, RLOO and PPO at matched compute.

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging, progress_bar};
use mmrl_model::data::InputPaths;
use mmrl_rl::stage::{self, RlConfig, RlInputs};
use mmrl_rl::{compare, replay::ReplayConfig};

#[derive(Parser)]
#[command(
    name = "mmrl-rl",
    version,
    about = "mmrl rl: GRPO / RLOO / PPO fine-tuning of the sft model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune (--input model=SFT --input samples=SELECT [--input image=.. audio=.. tabular=..]).
    Rl(StageArgs),
    /// Continued sft vs GRPO, RLOO, PPO (and reward variants) at matched compute; prints a Markdown table.
    /// Same inputs as `rl`; --output is a scratch folder for the runs (the table goes there as well).
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Seeds to run (comma-separated); the table then shows mean ± half-range. Default: --seed alone.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Only these variants (comma-separated names, e.g. `grpo,grpo abstention`); default: all.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
}

fn inputs(args: &StageArgs) -> anyhow::Result<RlInputs> {
    Ok(RlInputs {
        model: args.input("model").map_err(|e| anyhow!(e))?.to_path_buf(),
        data: InputPaths::from_args(args).map_err(|e| anyhow!(e))?,
    })
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Rl(args) => {
            let Some(cfg) = config(&args, RlConfig::validate).map_err(|e| anyhow!(e))? else {
                return Ok(());
            };
            let inputs = inputs(&args)?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let bar = progress_bar(cfg.steps, "rl");
            let mut on_step = |p: stage::Progress| {
                bar.set_position(p.step);
                bar.set_message(format!(
                    "reward {:.3} val EM {}",
                    p.reward,
                    p.val_exact_match.map_or("-".into(), |v| format!("{v:.3}"))
                ));
            };
            let hooks = stage::Hooks {
                progress: Some(&mut on_step),
                ..Default::default()
            };
            let outcome = stage::run(&cfg, args.seed, &inputs, output, hooks)
                .with_context(|| format!("rl into {}", output.display()))?;
            bar.finish_and_clear();
            if let stage::Outcome::Done(r) = outcome {
                tracing::info!(
                    algorithm = ?r.algorithm,
                    val_exact_match = format!("{:.4}", r.val_exact_match),
                    initial = format!("{:.4}", r.initial.exact_match),
                    steps = r.steps,
                    "rl done"
                );
            }
        }
        Command::Compare(cargs) => {
            let args = cargs.stage;
            let Some(cfg) = config(&args, RlConfig::validate).map_err(|e| anyhow!(e))? else {
                return Ok(());
            };
            let cfg = RlConfig {
                replay: ReplayConfig {
                    enabled: false,
                    ..cfg.replay.clone()
                },
                ..cfg
            };
            let inputs = inputs(&args)?;
            // A folder of reports, written into and never replaced: not an artifact output.
            let output = args.folder_output().map_err(|e| anyhow!(e))?;
            std::fs::create_dir_all(output)
                .with_context(|| format!("creating {}", output.display()))?;
            let mut variants = compare::default_variants(&cfg);
            if !cargs.variants.is_empty() {
                for v in &cargs.variants {
                    if !variants.iter().any(|(n, _)| n == v) {
                        let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
                        return Err(anyhow!(
                            "--variants: unknown variant {v:?}; known: {names:?}"
                        ));
                    }
                }
                variants.retain(|(n, _)| cargs.variants.contains(n));
            }
            let seeds = if cargs.seeds.is_empty() {
                vec![args.seed]
            } else {
                cargs.seeds.clone()
            };
            let mut per_seed = Vec::new();
            for &seed in &seeds {
                let dir = if seeds.len() > 1 {
                    output.join(format!("seed{seed}"))
                } else {
                    output.to_path_buf()
                };
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let rows = compare::run(&cfg, seed, &inputs, &dir, &variants, |r| {
                    tracing::info!(seed, run = %r.name, val_exact_match = format!("{:.4}", r.metrics.exact_match), seconds = format!("{:.0}", r.seconds), "compare");
                })?;
                let table = compare::markdown(&rows, &cfg.reward_params);
                std::fs::write(dir.join("compare.md"), &table)?;
                std::fs::write(dir.join("compare.json"), serde_json::to_vec_pretty(&rows)?)?;
                per_seed.push((seed, rows));
            }
            let table = if per_seed.len() > 1 {
                compare::markdown_seeds(&per_seed, &cfg.reward_params)
            } else {
                compare::markdown(&per_seed[0].1, &cfg.reward_params)
            };
            println!("{table}");
            std::fs::write(output.join("compare.md"), &table)?;
            std::fs::write(
                output.join("compare.json"),
                serde_json::to_vec_pretty(&per_seed)?,
            )?;
        }
    }
    Ok(())
}
