//! `mmrl-eval`: the eval stage in the stage protocol of [`mmrl_artifact::cli`].

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, config, init_logging};
use mmrl_eval::report::ordered;
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
    let m = &summary.metrics;
    tracing::info!(
        "{:<26} {:<11} {:>22} {:>12} {:>9}",
        "system",
        "kind",
        "exact match [95% CI]",
        "cross-modal",
        "p vs ours"
    );
    for (name, r) in ordered(m) {
        let ci = r
            .exact_match_ci
            .map_or(String::new(), |c| format!(" [{:.3},{:.3}]", c.lo, c.hi));
        let p = m
            .comparisons
            .get(&name)
            .and_then(|c| c.overall)
            .map_or(String::new(), |c| format!("{:.3}", c.p_value));
        let kind = serde_json::to_value(r.kind)?
            .as_str()
            .unwrap_or_default()
            .to_owned();
        tracing::info!(
            "{:<26} {:<11} {:>22} {:>12} {:>9}",
            name,
            kind,
            format!("{:.3}{ci}", r.exact_match),
            r.cross_modal_exact_match
                .map_or("n/a".into(), |x| format!("{x:.3}")),
            p
        );
    }
    tracing::info!(
        beats_all = m.cross_modal.ours_beats_all,
        not_beaten = %m.cross_modal.not_beaten.join("; "),
        "cross-modal verdict"
    );
    println!("report: {}", summary.report_html.display());
    Ok(())
}
