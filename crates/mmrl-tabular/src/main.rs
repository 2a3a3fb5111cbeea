//! `mmrl-tabular`: the tabular stage as a command (`tabular`), in the stage protocol of [`mmrl_artifact::cli`].

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, init_logging, print_resolved};
use mmrl_tabular::stage;

#[derive(Parser)]
#[command(
    name = "mmrl-tabular",
    version,
    about = "mmrl tabular stage: impute, outliers, normalize, encode (fit on train)"
)]
struct Cli {
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Clean the tabular features of select's artifact (--input samples=DIR) into tabular.parquet.
    Tabular(StageArgs),
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().stage {
        Stage::Tabular(args) => {
            let config: stage::TabularConfig = args.params().map_err(|e| anyhow!(e))?;
            config.validate()?;
            if args.check {
                return print_resolved(&config).map_err(|e| anyhow!(e));
            }
            let samples = args.input("samples").map_err(|e| anyhow!(e))?;
            let output = args.output().map_err(|e| anyhow!(e))?;
            let summary = stage::run(&config, samples, output).with_context(|| {
                format!("tabular {} into {}", samples.display(), output.display())
            })?;
            // The fallbacks were logged as they were taken; the table is the stage's summary for people.
            print!("{}", summary.quality);
        }
    }
    Ok(())
}
