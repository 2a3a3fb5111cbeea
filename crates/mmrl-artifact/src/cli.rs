//! The command-line protocol every stage binary speaks, so the runner can drive any stage the same way.
//!
//! `BIN STAGE [--params FILE.toml] [--input NAME=PATH]... [--output DIR] [--seed N] [--check]`
//!
//! With `--check` the stage only validates its parameters and prints the resolved configuration as JSON on
//! stdout; the runner does this for every stage before the first one runs.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The arguments every stage subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    /// Stage parameters as a TOML file (the stage's `params` table of a pipeline); defaults when absent.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// An input as NAME=PATH; repeat for several.
    #[arg(long = "input", value_name = "NAME=PATH", value_parser = parse_input)]
    pub inputs: Vec<(String, PathBuf)>,
    /// The artifact directory to write (replaced atomically when complete).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Seed for everything random in the stage.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate the parameters, print the resolved configuration as JSON, and exit.
    #[arg(long)]
    pub check: bool,
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

impl StageArgs {
    /// Reads the parameters file into `T` (`T::default()` without one). Unknown keys and wrong types are
    /// errors that name the file and the key.
    pub fn params<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        let Some(path) = &self.params else {
            return Ok(T::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
    }

    /// The path given for input `name`.
    pub fn input(&self, name: &str) -> Result<&Path, String> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
            .ok_or_else(|| format!("missing --input {name}=PATH"))
    }

    /// The output directory; required unless `--check`.
    pub fn output(&self) -> Result<&Path, String> {
        self.output
            .as_deref()
            .ok_or_else(|| "missing --output DIR".to_owned())
    }
}

/// Reads the params into `C` and validates them; with `--check`, prints the resolved config and returns `None`.
///
/// Every stage subcommand starts with this, so `--check` behaves the same everywhere.
pub fn config<C, E>(
    args: &StageArgs,
    validate: impl FnOnce(&C) -> Result<(), E>,
) -> Result<Option<C>, String>
where
    C: DeserializeOwned + Default + Serialize,
    E: std::fmt::Display,
{
    let config: C = args.params()?;
    validate(&config).map_err(|e| e.to_string())?;
    if args.check {
        print_resolved(&config)?;
        return Ok(None);
    }
    Ok(Some(config))
}

/// Prints a resolved configuration for `--check`.
pub fn print_resolved(config: &impl Serialize) -> Result<(), String> {
    let json = serde_json::to_string(config)
        .map_err(|e| format!("serializing the resolved config: {e}"))?;
    println!("{json}");
    Ok(())
}

/// Installs the `tracing` subscriber of a stage binary: to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A progress bar over `len` items, hidden when stderr is not a terminal or `CI` is set.
pub fn progress_bar(len: u64, message: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let hidden = !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some();
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}
