//! The `hpo` stage: tune another stage by running it as trial processes.
//!
//! Each trial writes the tuned stage's params (base + `overrides` + suggested values at their dotted paths)
//! to a TOML file and runs `<dir of this exe>/<first word of run> <rest of run> --params FILE --input ...
//! --output <study>/trials/<n> --seed <seed>` with `MMRL_TRIAL_REPORT=<study>/trials/<n>.intermediate.jsonl`.
//! The trial appends `{"step":N,"value":X}` lines there; the pruner reads them and may kill the process.
//! The objective is read from `<trial output>/report.json` at a dotted path. Every trial gets the stage's
//! seed, so trials differ only in their parameters.
//!
//! The study lives beside the output, `<parent>/.<name>.hpo-study/`, and survives kills; `study.json` holds
//! a hash of the resolved config, the seed, each input's content hash and the trial binary's hash
//! ([`config_key`]), and a study made under another hash is discarded.
//! With `storage` set to a PostgreSQL URL the trials live in the database instead, in a study that
//! `mmrl-hpo worker` processes on other machines join ([`crate::worker`], [`crate::pg`]); the stage is one more
//! worker, the directory holds its own trials' outputs, and the artifact is written once the study is done.
//! Before any trial, the tuned stage is run with `--check` on the trial params, so a path it does not have
//! or a value it refuses fails the stage at once.
//!
//! Determinism: with `workers = 1` the same seed and inputs give the same trials (samplers draw per-draw
//! seeded randomness from the finished trials). A resumed study re-runs interrupted trials without shifting
//! the sampler's draws; it proposes what an uninterrupted run would for every sampler but GP, whose
//! in-memory warm start is not rebuilt from the journal (see [`crate::study`]). With more workers the history a suggestion sees depends on
//! which trials finished first, so runs may differ.
//!
//! A trial dies with the hpo process: every process hpo starts gets [`PARENT_PID_ENV`], so the stage protocol
//! arms a parent-death signal in it ([`mmrl_artifact::cli::die_with_parent`]); an hpo killed with `kill -9`
//! leaves no trial writing into the study, and the next run re-runs the interrupted trials under new numbers.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result, io};
use crate::pruner::{Direction, PrunerConfig};
use crate::sampler::SamplerKind;
use crate::space::{ParamDef, Params, Space};
use crate::storage::TrialRecord;
use crate::study::{Launcher, Poll, RunningTrial, Study, StudySettings, best_trial};
use crate::{plots, table};

pub use mmrl_artifact::cli::PARENT_PID_ENV;
pub use mmrl_artifact::trial::TRIAL_REPORT_ENV;

/// The tuned stage (injected by the runner from `tune = "sft"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrialSpec {
    /// The stage command, e.g. `mmrl-model sft`.
    pub run: String,
    /// The tuned stage's full base params.
    pub params: Map<String, Value>,
}

/// What to optimize.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Objective {
    /// Dotted path into the trial artifact's `report.json`.
    pub metric: String,
    /// maximize or minimize.
    pub direction: Direction,
}

/// `[stages.hpo.params]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpoConfig {
    /// The tuned stage.
    pub trial: TrialSpec,
    /// Dotted path into the trial params -> parameter definition.
    pub space: BTreeMap<String, ParamDef>,
    /// The objective.
    pub objective: Objective,
    /// grid, random, sobol, tpe, gp, cmaes or ga.
    pub sampler: SamplerKind,
    /// Trials to finish (a grid stops at its size).
    pub n_trials: u64,
    /// Trials running at once (processes).
    pub workers: usize,
    /// Kill and fail a trial after this many seconds (0: no limit).
    pub trial_timeout_s: f64,
    /// Early stopping of poor trials.
    pub pruner: PrunerConfig,
    /// Dotted path -> value applied to every trial (e.g. fewer epochs); not part of the best overlay.
    pub overrides: Map<String, Value>,
    /// Where the study lives: absent or `"journal"` for the journal beside the artifact, or a PostgreSQL URL
    /// (`postgresql://USER@HOST/DB`) for a study that workers on other machines join. Written without its
    /// password wherever the config is recorded.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_storage"
    )]
    pub storage: Option<String>,
    /// The study's name in a database storage (default `<output folder>-<first 12 of the config key>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    /// Seconds between a worker's heartbeats for its running trials (database storage; default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_s: Option<f64>,
    /// Seconds without a heartbeat after which a running trial is failed and its parameters re-run under a new
    /// number (database storage; default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period_s: Option<f64>,
}

fn serialize_storage<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    url.as_deref().map(crate::pg::redact).serialize(s)
}

impl Default for HpoConfig {
    fn default() -> Self {
        HpoConfig {
            trial: TrialSpec::default(),
            space: BTreeMap::new(),
            objective: Objective::default(),
            sampler: SamplerKind::Tpe,
            n_trials: 20,
            workers: 1,
            trial_timeout_s: 0.0,
            pruner: PrunerConfig::default(),
            overrides: Map::new(),
            storage: None,
            study: None,
            heartbeat_interval_s: None,
            grace_period_s: None,
        }
    }
}

/// Looks up a dotted path in a JSON object.
pub fn get_path<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = root.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Sets a dotted path in a JSON object, creating tables on the way.
pub fn set_path(root: &mut Map<String, Value>, path: &str, value: Value) -> Result<()> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur.insert((*p).to_owned(), value);
            return Ok(());
        }
        let next = cur
            .entry((*p).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = next.as_object_mut().ok_or_else(|| {
            Error::Config(format!(
                "{path:?}: {:?} is not a table",
                parts[..=i].join(".")
            ))
        })?;
    }
    Ok(())
}

impl HpoConfig {
    /// Checks the config; messages name the field.
    pub fn validate(&self) -> Result<()> {
        if self.trial.run.split_whitespace().next().is_none() {
            return Err(Error::Config(
                "trial.run is empty: the runner sets it from `tune = \"STAGE\"` (e.g. \"mmrl-model sft\")".into(),
            ));
        }
        Space::new(&self.space)?;
        for name in self.space.keys() {
            if get_path(&self.trial.params, name).is_none() {
                return Err(Error::Config(format!(
                    "space parameter {name:?} is not a parameter of the tuned stage ({}): set it in that stage's params first",
                    self.trial.run
                )));
            }
            if self.overrides.contains_key(name) {
                return Err(Error::Config(format!(
                    "{name:?} is both in space and in overrides"
                )));
            }
        }
        if self.objective.metric.trim().is_empty() {
            return Err(Error::Config(
                "objective.metric is empty: name a value of the trial's report.json (e.g. \"val_exact_match\")".into(),
            ));
        }
        if self.n_trials == 0 {
            return Err(Error::Config("n_trials must be at least 1".into()));
        }
        if self.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        if self.trial_timeout_s.is_nan()
            || self.trial_timeout_s < 0.0
            || Duration::try_from_secs_f64(self.trial_timeout_s).is_err()
        {
            return Err(Error::Config(format!(
                "trial_timeout_s must be 0 (no limit) or a positive, finite number of seconds that fits a \
                 duration, got {}",
                self.trial_timeout_s
            )));
        }
        self.pruner.validate()?;
        crate::worker::validate_storage(self)?;
        Ok(())
    }

    /// The database storage the study lives in, or `None` for the journal.
    pub fn database(&self) -> Result<Option<crate::pg::DbUrl>> {
        match self.storage.as_deref().map(str::trim) {
            None | Some("journal") => Ok(None),
            Some(url) => crate::pg::DbUrl::parse(url).map(Some),
        }
    }

    /// The trial params for `suggested` values: base, then overrides, then the suggestion.
    pub fn trial_params(&self, suggested: &Params) -> Result<Map<String, Value>> {
        let mut p = self.trial.params.clone();
        for (k, v) in &self.overrides {
            set_path(&mut p, k, v.clone())?;
        }
        for (k, v) in suggested {
            set_path(&mut p, k, v.clone())?;
        }
        Ok(p)
    }
}

/// The study directory for an output: `<parent>/.<name>.hpo-study`.
pub fn study_dir(output: &Path) -> PathBuf {
    mmrl_artifact::work_dir(output, "hpo-study")
}

/// Converts JSON to TOML text (nulls are errors: TOML has none).
pub fn to_toml(v: &Map<String, Value>) -> Result<String> {
    toml::to_string(v).map_err(|e| Error::Config(format!("trial params as TOML: {e}")))
}

/// How trial processes are started.
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    /// The program (`<exe dir>/<first word of run>`).
    pub program: PathBuf,
    /// The rest of `run` (the subcommand).
    pub args: Vec<String>,
    /// Inputs forwarded to every trial.
    pub inputs: Vec<(String, PathBuf)>,
    /// The study directory.
    pub study: PathBuf,
    /// The seed every trial gets.
    pub seed: u64,
    /// Config (params, objective, trial timeout).
    pub config: HpoConfig,
    /// [`THREADS_ENV`] for each trial process (`None`: inherit).
    pub trial_threads: Option<usize>,
}

/// The environment variable mmrl's training stages read for their thread count (speed only, never
/// results; see `mmrl_model::parallel`).
pub const THREADS_ENV: &str = "MMRL_THREADS";

/// Threads for each of `workers` concurrent trials on `cores` cores: an equal share (at least one), so
/// trials do not oversubscribe the machine; `None` (the stage's own default) for a single worker or when
/// the user set [`THREADS_ENV`].
pub fn trial_threads(workers: usize, cores: usize, user_set: bool) -> Option<usize> {
    (workers > 1 && !user_set).then(|| (cores / workers).max(1))
}

impl ProcessLauncher {
    /// A launcher for `config` running binaries next to the current executable.
    pub fn new(
        config: &HpoConfig,
        inputs: &[(String, PathBuf)],
        study: &Path,
        seed: u64,
    ) -> Result<Self> {
        let exe =
            std::env::current_exe().map_err(io("locating", Path::new("the current executable")))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        let mut words = config.trial.run.split_whitespace();
        let first = words.next().unwrap_or_default();
        Ok(ProcessLauncher {
            program: dir.join(first),
            args: words.map(str::to_owned).collect(),
            inputs: inputs.to_vec(),
            study: study.to_path_buf(),
            seed,
            config: config.clone(),
            trial_threads: trial_threads(
                config.workers,
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                std::env::var_os(THREADS_ENV).is_some(),
            ),
        })
    }

    fn command(&self, params_file: &Path, output: Option<&Path>, check: bool) -> Command {
        let mut cmd = Command::new(&self.program);
        // The trial dies with this process, so a killed hpo leaves no trial running (see the module doc).
        cmd.env(PARENT_PID_ENV, std::process::id().to_string());
        cmd.args(&self.args).arg("--params").arg(params_file);
        for (name, path) in &self.inputs {
            cmd.arg("--input").arg(format!("{name}={}", path.display()));
        }
        if let Some(o) = output {
            cmd.arg("--output").arg(o);
        }
        cmd.arg("--seed").arg(self.seed.to_string());
        if check {
            cmd.arg("--check");
        }
        cmd
    }

    /// Runs the tuned stage with `--check` on the params of a suggestion, so a path it does not know or a
    /// value it refuses fails before any trial runs.
    pub fn check(&self, suggested: &Params) -> Result<()> {
        let dir = self.study.join("trials");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let file = dir.join("check.params.toml");
        let text = to_toml(&self.config.trial_params(suggested)?)?;
        std::fs::write(&file, text).map_err(io("writing", &file))?;
        let out = self
            .command(&file, None, true)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running", &self.program))?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "the tuned stage `{}` refuses the trial params ({}): {}",
                self.config.trial.run,
                file.display(),
                tail(&String::from_utf8_lossy(&out.stderr), 10)
            )));
        }
        Ok(())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The error of a failed trial from its stderr: from the last `Error:` line (anyhow's report) when there is
/// one, else the last lines; at most 20 lines either way.
fn error_text(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines
        .iter()
        .rposition(|l| l.starts_with("Error:") || l.contains("panicked at"))
    {
        Some(i) => lines[i..lines.len().min(i + 20)].join("\n"),
        None => tail(stderr, 20),
    }
}

/// A trial process.
struct ProcessTrial {
    child: Option<Child>,
    started: Instant,
    timeout: Option<Duration>,
    report_file: PathBuf,
    offset: u64,
    output: PathBuf,
    stderr_file: PathBuf,
    metric: String,
}

impl ProcessTrial {
    fn read_reports(&mut self) -> Vec<(u64, f64)> {
        let mut out = Vec::new();
        let Ok(mut f) = std::fs::File::open(&self.report_file) else {
            return out;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return out;
        }
        let mut text = String::new();
        if f.read_to_string(&mut text).is_err() {
            return out;
        }
        // Only whole lines; a line being written is read next time.
        let Some(end) = text.rfind('\n') else {
            return out;
        };
        for line in text[..end].lines() {
            #[derive(Deserialize)]
            struct Line {
                step: u64,
                value: Option<f64>,
            }
            match serde_json::from_str::<Line>(line) {
                Ok(Line {
                    step,
                    value: Some(v),
                }) => out.push((step, v)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %self.report_file.display(), error = %e, "ignoring an unreadable intermediate value")
                }
            }
        }
        self.offset += end as u64 + 1;
        out
    }

    fn objective(&self) -> std::result::Result<f64, String> {
        let path = self.output.join("report.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{}: not a JSON object", path.display()))?;
        let found = get_path(obj, &self.metric).ok_or_else(|| {
            format!(
                "objective metric {:?} is not in {} (top-level keys: {})",
                self.metric,
                path.display(),
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        found.as_f64().ok_or_else(|| {
            format!(
                "objective metric {:?} in {} is not a number: {found}",
                self.metric,
                path.display()
            )
        })
    }
}

impl RunningTrial for ProcessTrial {
    fn poll(&mut self) -> Poll {
        let reports = self.read_reports();
        let Some(child) = self.child.as_mut() else {
            return Poll::Done(reports, Err("the trial process is gone".into()));
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                let mut reports = reports;
                reports.extend(self.read_reports());
                if status.success() {
                    Poll::Done(reports, self.objective())
                } else {
                    let stderr = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
                    Poll::Done(
                        reports,
                        Err(format!(
                            "trial exited with {status}: {}",
                            error_text(&stderr)
                        )),
                    )
                }
            }
            Ok(None) => {
                if let Some(t) = self.timeout
                    && self.started.elapsed() > t
                {
                    self.kill();
                    return Poll::Done(
                        reports,
                        Err(format!("timed out after {:.0} s", t.as_secs_f64())),
                    );
                }
                Poll::Running(reports)
            }
            Err(e) => {
                self.kill();
                Poll::Done(reports, Err(format!("waiting for the trial process: {e}")))
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ProcessTrial {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Launcher for ProcessLauncher {
    fn launch(&mut self, number: u64, params: &Params) -> Result<Box<dyn RunningTrial>> {
        let dir = self.study.join("trials");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let params_file = dir.join(format!("{number}.params.toml"));
        let text = to_toml(&self.config.trial_params(params)?)?;
        std::fs::write(&params_file, text).map_err(io("writing", &params_file))?;
        let report_file = dir.join(format!("{number}.intermediate.jsonl"));
        let _ = std::fs::remove_file(&report_file);
        let output = dir.join(number.to_string());
        if output.exists() {
            std::fs::remove_dir_all(&output).map_err(io("removing", &output))?;
        }
        let stdout_file = dir.join(format!("{number}.stdout.log"));
        let stderr_file = dir.join(format!("{number}.stderr.log"));
        let stdout = std::fs::File::create(&stdout_file).map_err(io("creating", &stdout_file))?;
        let stderr = std::fs::File::create(&stderr_file).map_err(io("creating", &stderr_file))?;
        let mut cmd = self.command(&params_file, Some(&output), false);
        if let Some(n) = self.trial_threads {
            cmd.env(THREADS_ENV, n.to_string());
        }
        let child = cmd
            .env(TRIAL_REPORT_ENV, &report_file)
            // anyhow errors without a backtrace, so the error text is the error (panics keep theirs).
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io("starting", &self.program))?;
        Ok(Box::new(ProcessTrial {
            child: Some(child),
            started: Instant::now(),
            // validate() guarantees the conversion succeeds; no limit should it ever not.
            timeout: (self.config.trial_timeout_s > 0.0)
                .then(|| Duration::try_from_secs_f64(self.config.trial_timeout_s).ok())
                .flatten(),
            report_file,
            offset: 0,
            output,
            stderr_file,
            metric: self.config.objective.metric.clone(),
        }))
    }
}

/// Summary written as `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct HpoReport {
    /// Objective metric.
    pub metric: String,
    /// Direction.
    pub direction: Direction,
    /// Best objective value.
    pub best_value: f64,
    /// Best trial number.
    pub best_trial: u64,
    /// Its suggested parameters (dotted path -> value).
    pub best_params: Params,
    /// Trials by state.
    pub counts: BTreeMap<String, u64>,
    /// Sampler name.
    pub sampler: String,
    /// Pruner settings.
    pub pruner: PrunerConfig,
    /// Parameter importances (first-order eta^2 by binning, normalized).
    pub importances: BTreeMap<String, f64>,
    /// How importances were computed.
    pub importance_method: String,
    /// The study directory (journal, trial outputs and logs).
    pub study_dir: String,
    /// The database study (`URL#study`, no password) when the study was shared through one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
}

/// The key a study is kept under: the resolved config, the seed, what each input holds (an artifact's
/// `content_hash`; the path only for an input that is not an artifact) and the blake3 of the trial binary.
/// Anything that changes the trials' data or code starts a fresh study, even at unchanged paths.
pub fn config_key(
    config: &HpoConfig,
    seed: u64,
    inputs: &[(String, PathBuf)],
    program: &Path,
) -> Result<String> {
    let inputs: Vec<String> = inputs
        .iter()
        .map(|(n, p)| match Artifact::open(p) {
            Ok(a) => format!("{n}=artifact:{}", a.manifest().content_hash),
            Err(_) => format!("{n}=path:{}", p.display()),
        })
        .collect();
    let (program_hash, _) = mmrl_artifact::hash::hash_file(program)?;
    let text = serde_json::to_string(&serde_json::json!({
        "config": config,
        "seed": seed,
        "inputs": inputs,
        "program": program_hash,
    }))
    .map_err(|e| Error::Study(format!("serializing the study key: {e}")))?;
    Ok(mmrl_artifact::hash::hash_bytes(text.as_bytes()))
}

/// Opens the study for `output`, discarding one made under another config.
fn prepare_study_dir(dir: &Path, key: &str) -> Result<()> {
    let meta = dir.join("study.json");
    if dir.exists() {
        let old = std::fs::read_to_string(&meta)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| {
                v.get("config_hash")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        if old.as_deref() != Some(key) {
            // Never delete a study another hpo process is running: hold its lock while removing it.
            let lock_path = dir.join(crate::study::LOCK_FILE);
            let _held = match std::fs::File::open(&lock_path) {
                Ok(lock) => match lock.try_lock() {
                    Ok(()) => Some(lock),
                    Err(e) => {
                        return Err(Error::Busy(format!(
                            "study {} is in use by another hpo process ({e}); it was started with another config",
                            dir.display()
                        )));
                    }
                },
                Err(_) => None,
            };
            tracing::info!(study = %dir.display(), "the config changed: starting a fresh study");
            std::fs::remove_dir_all(dir).map_err(io("removing", dir))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    if !meta.exists() {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "config_hash": key }))
            .unwrap_or_default();
        std::fs::write(&meta, text).map_err(io("writing", &meta))?;
    }
    Ok(())
}

/// Runs the hpo stage: the study (resumed if one exists for this config), then the artifact.
pub fn run(
    config: &HpoConfig,
    inputs: &[(String, PathBuf)],
    output: &Path,
    seed: u64,
) -> Result<HpoReport> {
    config.validate()?;
    let space = Space::new(&config.space)?;
    let dir = study_dir(output);
    let mut launcher = ProcessLauncher::new(config, inputs, &dir, seed)?;
    if !launcher.program.is_file() {
        return Err(Error::Config(format!(
            "trial.run {:?}: {} does not exist (stage binaries must sit next to mmrl-hpo)",
            config.trial.run,
            launcher.program.display()
        )));
    }
    let key = config_key(config, seed, inputs, &launcher.program)?;
    prepare_study_dir(&dir, &key)?;
    launcher.check(&space.decode(&vec![0.5; space.dim()]))?;
    let settings = StudySettings {
        space: space.clone(),
        sampler: config.sampler,
        n_trials: config.n_trials,
        workers: config.workers,
        direction: config.objective.direction,
        pruner: config.pruner.clone(),
        seed,
    };
    let (mut study, storage) = match config.database()? {
        None => (Study::open(&dir, settings)?, None),
        Some(url) => crate::worker::stage_study(
            crate::worker::StageStudy {
                url: &url,
                config,
                inputs,
                output,
                seed,
                key: &key,
                program: &launcher.program,
                dir: &dir,
            },
            settings,
        )?,
    };
    let trials = study.optimize(&mut launcher, Duration::from_millis(250), |_| {})?;
    let direction = config.objective.direction;
    let best = best_trial(&trials, direction).ok_or_else(|| {
        let last = trials
            .iter()
            .rev()
            .find_map(|t| t.error.clone())
            .unwrap_or_else(|| "no error recorded".into());
        Error::Study(format!(
            "no trial completed ({} trials; study {}): last error: {last}",
            trials.len(),
            dir.display()
        ))
    })?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for t in &trials {
        *counts.entry(t.state.as_str().to_owned()).or_default() += 1;
    }
    let importances = plots::importances(&space, &trials);
    let report = HpoReport {
        metric: config.objective.metric.clone(),
        direction,
        best_value: best.value.unwrap_or(f64::NAN),
        best_trial: best.number,
        best_params: best.params.clone(),
        counts,
        sampler: config.sampler.name().to_owned(),
        pruner: config.pruner.clone(),
        importances: importances.clone(),
        importance_method: "first-order variance share per parameter (correlation ratio eta^2 over quantile bins or categories), normalized".into(),
        study_dir: dir.display().to_string(),
        storage,
    };
    write_artifact(config, inputs, output, seed, &space, &trials, &report)?;
    Ok(report)
}

/// The best parameters as a nested TOML overlay.
pub fn overlay_toml(best: &Params) -> Result<String> {
    let mut m = Map::new();
    for (k, v) in best {
        set_path(&mut m, k, v.clone())?;
    }
    to_toml(&m)
}

fn write_artifact(
    config: &HpoConfig,
    inputs: &[(String, PathBuf)],
    output: &Path,
    seed: u64,
    space: &Space,
    trials: &[TrialRecord],
    report: &HpoReport,
) -> Result<()> {
    let info = StageInfo {
        stage: "hpo".into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config).unwrap_or(Value::Null),
        seed: Some(seed),
    };
    let mut w = ArtifactWriter::create(output, info)?;
    for (name, path) in inputs {
        match Artifact::open(path) {
            Ok(a) => w.input_artifact(name, &a),
            Err(e) => {
                tracing::warn!(input = %name, error = %e, "input is not an artifact; not recorded in the lineage")
            }
        }
    }
    // Hyperparameters are chosen on the trials' validation metric.
    w.fit_splits(&["train", "val"]);
    w.write_table(
        "trials",
        Role::Data,
        table::trials_schema(),
        &[table::trials_batch(trials)?],
    )?;
    w.write_json(
        mmrl_artifact::cli::OVERLAY_FILE,
        Role::Data,
        &report.best_params,
    )?;
    let toml_text = format!(
        "# Best parameters of hpo (trial {}, {} = {}); an overlay on the tuned stage's params.\n{}",
        report.best_trial,
        report.metric,
        report.best_value,
        overlay_toml(&report.best_params)?
    );
    w.write_bytes("best.toml", Role::Data, toml_text.as_bytes())?;
    w.write_json("report.json", Role::Report, report)?;
    let direction = config.objective.direction;
    w.write_bytes(
        "history.svg",
        Role::Report,
        plots::history(trials, direction, &config.objective.metric)?.as_bytes(),
    )?;
    w.write_bytes(
        "parallel_coordinates.svg",
        Role::Report,
        plots::parallel_coordinates(space, trials, direction)?.as_bytes(),
    )?;
    w.write_bytes(
        "importances.svg",
        Role::Report,
        plots::importance_chart(&report.importances)?.as_bytes(),
    )?;
    w.commit()?;
    Ok(())
}

/// A tiny stage for tests and demos: a smooth objective of `x`, `y`, `kind`, reported over `steps`
/// intermediate values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyConfig {
    /// A float in [0, 1].
    pub x: f64,
    /// A float in [0, 1].
    pub y: f64,
    /// "a" or "b" ("b" adds 0.1).
    pub kind: String,
    /// Intermediate values reported.
    pub steps: u64,
    /// Milliseconds slept per step.
    pub sleep_ms: u64,
    /// Exit with an error instead.
    pub fail: bool,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            x: 0.5,
            y: 0.5,
            kind: "a".into(),
            steps: 3,
            sleep_ms: 0,
            fail: false,
        }
    }
}

impl ToyConfig {
    /// Checks the config.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.kind.as_str(), "a" | "b") {
            return Err(Error::Config(format!(
                "kind: expected \"a\" or \"b\", got {:?}",
                self.kind
            )));
        }
        Ok(())
    }

    /// The toy objective (maximum 1.1 at x = 0.3, y = 0.7, kind b).
    pub fn score(&self) -> f64 {
        1.0 - (self.x - 0.3).powi(2) - (self.y - 0.7).powi(2)
            + if self.kind == "b" { 0.1 } else { 0.0 }
    }
}

/// Runs the toy stage: reports `score * step / steps` after each step, then writes `report.json`
/// (`{"score": .., "nested": {"score": ..}}`).
pub fn run_toy(config: &ToyConfig, output: &Path, seed: u64) -> Result<()> {
    config.validate()?;
    if config.fail {
        return Err(Error::Study("toy stage asked to fail".into()));
    }
    let score = config.score();
    for step in 1..=config.steps {
        std::thread::sleep(Duration::from_millis(config.sleep_ms));
        mmrl_artifact::trial::report_intermediate(
            step,
            score * step as f64 / config.steps.max(1) as f64,
        );
    }
    let info = StageInfo {
        stage: "toy".into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config).unwrap_or(Value::Null),
        seed: Some(seed),
    };
    let mut w = ArtifactWriter::create(output, info)?;
    w.write_json(
        "report.json",
        Role::Report,
        &serde_json::json!({ "score": score, "nested": { "score": score } }),
    )?;
    w.commit()?;
    Ok(())
}

#[cfg(test)]
mod study_dir_tests {
    use super::*;

    #[test]
    fn a_changed_config_never_deletes_a_study_in_use() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("study");
        prepare_study_dir(&dir, "old").unwrap();
        std::fs::write(dir.join("journal.jsonl"), "{}\n").unwrap();
        let lock = std::fs::File::create(dir.join(crate::study::LOCK_FILE)).unwrap();
        lock.lock().unwrap();
        let err = prepare_study_dir(&dir, "new").unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        assert!(dir.join("journal.jsonl").exists(), "the live study is kept");
        lock.unlock().unwrap();
        prepare_study_dir(&dir, "new").unwrap();
        assert!(!dir.join("journal.jsonl").exists(), "a fresh study");
        let meta = std::fs::read_to_string(dir.join("study.json")).unwrap();
        assert!(meta.contains("\"new\""), "{meta}");
    }
}

#[cfg(test)]
mod trial_threads_tests {
    use super::trial_threads;

    #[test]
    fn concurrent_trials_split_the_cores_unless_the_user_chose() {
        // (workers, cores, user set MMRL_THREADS) -> threads per trial
        for (workers, cores, user, want) in [
            (1, 16, false, None),
            (2, 2, false, Some(1)),
            (4, 16, false, Some(4)),
            (3, 16, false, Some(5)),
            (8, 2, false, Some(1)),
            (4, 16, true, None),
        ] {
            assert_eq!(
                trial_threads(workers, cores, user),
                want,
                "{workers} workers, {cores} cores, user set: {user}"
            );
        }
    }
}
