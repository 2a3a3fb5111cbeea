//! `mmrl-rl`: the rl stage in the stage protocol of [`mmrl_artifact::cli`], and the comparison of RL against
//! continued sft, self-training, RFT and full-label sft at matched compute.

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging, progress_bar};
use mmrl_model::data::InputPaths;
use mmrl_rl::compare;
use mmrl_rl::stage::{self, RlConfig, RlInputs};

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
    /// RL against continued sft (lr swept), self-training, RFT and full-label sft at matched compute, over
    /// several seeds, on val; writes an artifact of every model (eval scores them on test) and prints the table.
    /// Inputs as `rl`, plus --input rl=RL_ARTIFACT (its config is the RL config compared) unless the params
    /// have an [rl] table.
    Compare(StageArgs),
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
        Command::Compare(args) => {
            let Some(cfg) =
                config(&args, compare::CompareConfig::validate).map_err(|e| anyhow!(e))?
            else {
                return Ok(());
            };
            let rl_inputs = inputs(&args)?;
            let inputs = compare::CompareInputs {
                model: rl_inputs.model,
                rl: args
                    .inputs
                    .iter()
                    .find(|(n, _)| n == "rl")
                    .map(|(_, p)| p.clone()),
                data: rl_inputs.data,
            };
            let output = args.output().map_err(|e| anyhow!(e))?;
            let report = compare::run(&cfg, &inputs, output, |r| {
                tracing::info!(seed = r.seed, run = %r.name, val_exact_match = format!("{:.4}", r.metrics.exact_match), seconds = format!("{:.0}", r.seconds), "compare");
            })
            .with_context(|| format!("compare into {}", output.display()))?;
            println!("{}", compare::markdown(&report, cfg.bootstrap_samples));
        }
    }
    Ok(())
}
