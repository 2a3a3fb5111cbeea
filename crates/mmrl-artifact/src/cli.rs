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

    /// The output artifact directory, checked and claimed before any work; every stage binary gets its output
    /// through this. Required unless `--check`. It must not be one of the inputs, hold one or sit inside one
    /// (the stage replaces its output); it must be absent, an empty folder or an artifact, so that nothing a user
    /// made is replaced ([`check_replaceable`](crate::check_replaceable)); and no other process may be writing it:
    /// this process takes the lock beside it and holds it until it exits ([`claim_output`](crate::claim_output)).
    pub fn output(&self) -> Result<&Path, String> {
        let output = self.folder_output()?;
        crate::check_replaceable(output).map_err(|e| e.to_string())?;
        crate::claim_output(output).map_err(|e| e.to_string())?;
        Ok(output)
    }

    /// The output of a command that writes a plain folder of files (reports), never replaced, only written
    /// into: required, and not one of the inputs, around one or inside one.
    pub fn folder_output(&self) -> Result<&Path, String> {
        let output = self
            .output
            .as_deref()
            .ok_or_else(|| "missing --output DIR".to_owned())?;
        for (name, input) in &self.inputs {
            if let Some(relation) = crate::overlap(output, input) {
                return Err(format!(
                    "--output {} {relation} --input {name}={}: a stage replaces its output, so it must not \
                     overlap an input; choose another --output",
                    output.display(),
                    input.display()
                ));
            }
        }
        Ok(output)
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
    let config: C = if args.check {
        args.params()?
    } else {
        with_overlay(args)?
    };
    validate(&config).map_err(|e| e.to_string())?;
    if args.check {
        print_resolved(&config)?;
        return Ok(None);
    }
    Ok(Some(config))
}

/// Name of the input whose best parameters are laid over a stage's params (an hpo artifact).
pub const OVERLAY_INPUT: &str = "overlay";

/// File of an overlay artifact: a flat JSON object of dotted parameter paths to values.
pub const OVERLAY_FILE: &str = "best_params.json";

/// The params with the overlay of `--input overlay=DIR` (an hpo artifact's [`OVERLAY_FILE`]) applied: each
/// dotted path (`schedule.kind`) is set, creating tables on the way. `--check` validates the params alone,
/// because the overlay does not exist before the hpo stage has run.
fn with_overlay<C: DeserializeOwned + Default>(args: &StageArgs) -> Result<C, String> {
    let Some((_, dir)) = args.inputs.iter().find(|(n, _)| n == OVERLAY_INPUT) else {
        return args.params();
    };
    let mut table = match &args.params {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?
        }
        None => toml::Table::new(),
    };
    let file = crate::Artifact::open(dir)
        .and_then(|a| a.file(OVERLAY_FILE))
        .map_err(|e| format!("--input {OVERLAY_INPUT}: {e}"))?;
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let overlay: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: expected a JSON object of dotted paths to values: {e}",
                file.display()
            )
        })?;
    for (path, value) in overlay {
        let value = toml::Value::try_from(&value)
            .map_err(|e| format!("{}: {path}: {e}", file.display()))?;
        let mut keys = path.split('.').peekable();
        let mut at = &mut table;
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                tracing::info!(param = %path, value = %value, "overlay from hpo");
                at.insert(key.to_owned(), value.clone());
                break;
            }
            let next = at
                .entry(key.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = next.as_table_mut().ok_or_else(|| {
                format!(
                    "{}: {path}: {key} is not a table in the params",
                    file.display()
                )
            })?;
        }
    }
    toml::Table::try_into(table).map_err(|e| {
        format!(
            "params with the overlay of {}: {}",
            file.display(),
            e.to_string().trim_end()
        )
    })
}

/// Prints a resolved configuration for `--check`.
pub fn print_resolved(config: &impl Serialize) -> Result<(), String> {
    let json = serde_json::to_string(config)
        .map_err(|e| format!("serializing the resolved config: {e}"))?;
    println!("{json}");
    Ok(())
}

/// Installs the `tracing` subscriber of a stage binary: to stderr, filtered by `RUST_LOG` (default `info`).
///
/// Every stage binary calls this first, so it also ties the process to the runner or hpo process that started
/// it ([`die_with_parent`]); when that process is already gone, the stage exits at once.
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
    if let Err(e) = die_with_parent() {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

/// Environment variable a supervising process (the pipeline runner, the hpo stage) sets to its own pid on each
/// stage process it starts, so that the stage dies with it ([`die_with_parent`]).
pub const PARENT_PID_ENV: &str = "MMRL_PARENT_PID";

/// When [`PARENT_PID_ENV`] is set, asks the kernel to SIGKILL this process as soon as its parent exits (Linux
/// `PR_SET_PDEATHSIG`), so a runner or hpo process killed with `kill -9` leaves no stage or trial running on
/// into the outputs of the next run. Set after the process started, so the parent may already be gone: then
/// the parent pid differs from the variable's, and this is an error. Without the variable (a stage run by
/// hand) nothing changes; on other systems nothing does.
pub fn die_with_parent() -> Result<(), String> {
    let Some(expected) = std::env::var_os(PARENT_PID_ENV) else {
        return Ok(());
    };
    let expected = expected.to_string_lossy();
    let expected: i32 = expected
        .trim()
        .parse()
        .map_err(|_| format!("{PARENT_PID_ENV}={expected:?} is not a process id"))?;
    die_with_parent_pid(expected)
}

#[cfg(target_os = "linux")]
fn die_with_parent_pid(expected: i32) -> Result<(), String> {
    use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| format!("setting the parent-death signal: {e}"))?;
    // Checked after arming: a parent that exits from here on kills us; one that exited before is seen here.
    let parent = Pid::as_raw(getppid());
    if parent != expected {
        return Err(format!(
            "the process that started this stage (pid {expected}) has exited (parent is now pid {parent}); \
             stopping so that nothing of a stopped run keeps writing"
        ));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent_pid(_expected: i32) -> Result<(), String> {
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArtifactWriter, Role, StageInfo};

    #[derive(Debug, Default, PartialEq, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    struct Params {
        lr: f64,
        epochs: u32,
        schedule: Schedule,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    struct Schedule {
        kind: String,
        warmup: u32,
    }

    fn overlay_artifact(dir: &Path, overlay: serde_json::Value) -> PathBuf {
        let out = dir.join("hpo");
        let info = StageInfo {
            stage: "hpo".into(),
            crate_name: "t".into(),
            crate_version: "0".into(),
            config: serde_json::json!({}),
            seed: None,
        };
        let mut w = ArtifactWriter::create(&out, info).unwrap();
        w.write_json(OVERLAY_FILE, Role::Data, &overlay).unwrap();
        w.commit().unwrap();
        out
    }

    fn args(params: &Path, overlay: Option<&Path>, check: bool) -> StageArgs {
        StageArgs {
            params: Some(params.to_path_buf()),
            inputs: overlay
                .map(|p| (OVERLAY_INPUT.to_owned(), p.to_path_buf()))
                .into_iter()
                .collect(),
            output: None,
            seed: 0,
            check,
        }
    }

    #[test]
    fn output_is_checked_against_the_inputs_and_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("proj/data/images")).unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let check = |output: &str, inputs: &[(&str, &str)], expected: Result<(), &str>| {
            let args = StageArgs {
                params: None,
                inputs: inputs
                    .iter()
                    .map(|(n, p)| ((*n).to_owned(), d.join(p)))
                    .collect(),
                output: Some(d.join(output)),
                seed: 0,
                check: false,
            };
            match (args.output(), expected) {
                (Ok(p), Ok(())) => assert_eq!(p, d.join(output)),
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{output}: {e}"),
                (got, want) => panic!("{output}: got {got:?}, expected {want:?}"),
            }
        };
        let data = [("dataset", "proj/data")];
        check(
            "proj/data",
            &data,
            Err("is the same folder as --input dataset="),
        );
        check(
            "proj/./data/",
            &data,
            Err("is the same folder as --input dataset="),
        );
        check("proj", &data, Err("contains --input dataset="));
        check("proj/data/images", &data, Err("is inside --input dataset="));
        check(
            "proj/data/new/out",
            &data,
            Err("is inside --input dataset="),
        );
        check("notes.txt", &[], Err("refusing to replace a file"));
        check(
            "proj",
            &[],
            Err("a folder that is not an artifact (no manifest.json)"),
        );
        check("out", &data, Ok(()));
        assert!(d.join(".out.lock").is_file(), "the output was not claimed");
    }

    #[test]
    fn overlay_sets_dotted_paths_over_the_params() {
        let dir = tempfile::tempdir().unwrap();
        let params = dir.path().join("p.toml");
        std::fs::write(&params, "lr = 0.1\nepochs = 3\n").unwrap();
        let hpo = overlay_artifact(
            dir.path(),
            serde_json::json!({ "lr": 0.002, "schedule.kind": "cosine" }),
        );
        let c: Params = config(&args(&params, Some(&hpo), false), |_: &Params| {
            Ok::<_, String>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            c,
            Params {
                lr: 0.002,
                epochs: 3,
                schedule: Schedule {
                    kind: "cosine".into(),
                    warmup: 0
                }
            }
        );
        // Without the overlay input the params are read as written.
        let plain: Params = config(
            &args(&params, None, false),
            |_: &Params| Ok::<_, String>(()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(plain.lr, 0.1);
    }

    #[test]
    fn overlay_with_an_unknown_parameter_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let params = dir.path().join("p.toml");
        std::fs::write(&params, "lr = 0.1\n").unwrap();
        let hpo = overlay_artifact(dir.path(), serde_json::json!({ "schedule.kindd": "x" }));
        let err =
            config::<Params, String>(&args(&params, Some(&hpo), false), |_| Ok(())).unwrap_err();
        assert!(err.contains("kindd") && err.contains(OVERLAY_FILE), "{err}");
        let missing = dir.path().join("nothing");
        let err = config::<Params, String>(&args(&params, Some(&missing), false), |_| Ok(()))
            .unwrap_err();
        assert!(err.contains("--input overlay"), "{err}");
    }
}
