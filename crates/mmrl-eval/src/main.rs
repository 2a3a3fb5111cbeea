//! `mmrl-eval`: the eval stage in the stage protocol of [`mmrl_artifact::cli`].

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging};
use mmrl_eval::{EvalConfig, EvalInputs};

#[derive(Parser)]
#[command(
    name = "mmrl-eval",
    version,
    about = "mmrl eval: test-split metrics, baselines, ablations and the report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score the test split (--input samples=SELECT --input model=MODEL [image/audio/tabular]
    /// [sft/rl/compress/model_*=MODEL]... [predictions_*=PREDICTIONS]... [hpo=HPO]).
    Eval(StageArgs),
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let Command::Eval(args) = Cli::parse().command;
    let Some(cfg) = config(&args, EvalConfig::validate).map_err(|e| anyhow!(e))? else {
        return Ok(());
    };
    let inputs = EvalInputs::from_named(&args.inputs)?;
    let output = args.output().map_err(|e| anyhow!(e))?;
    let summary = mmrl_eval::run(&cfg, &inputs, output, args.seed)
        .with_context(|| format!("eval into {}", output.display()))?;
    for line in mmrl_eval::report::headline_table(&summary.metrics).lines() {
        tracing::info!("{line}");
    }
    println!("report: {}", summary.report_html.display());
    Ok(())
}
