//! Shared studies: the hpo stage over a PostgreSQL storage, and `mmrl-hpo worker`, which joins such a study
//! from any machine and runs its trials.
//!
//! The hpo stage creates the study (or joins it when it exists with the same search space and config key),
//! recording in it a [`Definition`]: the config, the inputs, the seed and the trial binary's hash. It then
//! runs trials like any worker and writes the artifact once the study has its `n_trials`. A worker needs only
//! the URL and the study's name: it reads the definition, runs the tuned stage's binary next to its own
//! `mmrl-hpo` on the inputs at the recorded paths (or at `--input NAME=PATH` on that machine), keeps trial
//! outputs in its own work directory, and returns when the study is done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::{DbUrl, NewStudy, PgStorage};
use crate::space::Space;
use crate::stage::{HpoConfig, ProcessLauncher};
use crate::study::{Study, StudySettings, best_trial, lock_dir};

/// Heartbeat interval when the config sets none (seconds).
pub const DEFAULT_HEARTBEAT_S: f64 = 10.0;
/// Grace period when the config sets none (seconds).
pub const DEFAULT_GRACE_S: f64 = 60.0;
/// The version of [`Definition`] this build writes and reads.
pub const DEFINITION_FORMAT: u32 = 1;

/// What the study's creator records for its workers (the `definition` column of `studies`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// [`DEFINITION_FORMAT`].
    pub format: u32,
    /// The hpo config (without storage and study name).
    pub config: HpoConfig,
    /// The inputs every trial gets, as absolute paths on the creator's machine.
    pub inputs: Vec<(String, PathBuf)>,
    /// The seed every trial gets (and the sampler's).
    pub seed: u64,
    /// The blake3 of the trial binary the study was created with.
    pub program_hash: String,
}

/// Checks the storage settings of a config: a database URL's form, and that database-only settings are not
/// set for the journal.
pub(crate) fn validate_storage(config: &HpoConfig) -> Result<()> {
    if config.database()?.is_none() {
        let set = [
            ("study", config.study.is_some()),
            (
                "heartbeat_interval_s",
                config.heartbeat_interval_s.is_some(),
            ),
            ("grace_period_s", config.grace_period_s.is_some()),
        ];
        if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
            return Err(Error::Config(format!(
                "{name} is set, but the study lives in the journal: it applies to a database storage \
                 (storage = \"postgresql://USER@HOST/DATABASE\")"
            )));
        }
        return Ok(());
    }
    if let Some(name) = &config.study
        && (name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control))
    {
        return Err(Error::Config(format!(
            "study = {name:?}: expected a name of 1 to 200 printable characters"
        )));
    }
    let (heartbeat, grace) = heartbeat_settings(config);
    let ok = |v: f64| v.is_finite() && v > 0.0 && Duration::try_from_secs_f64(v).is_ok();
    if !ok(heartbeat) {
        return Err(Error::Config(format!(
            "heartbeat_interval_s must be a positive, finite number of seconds, got {heartbeat}"
        )));
    }
    if !ok(grace) || grace <= heartbeat {
        return Err(Error::Config(format!(
            "grace_period_s must be a finite number of seconds above heartbeat_interval_s ({heartbeat}), got \
             {grace}: a trial is failed only after it missed heartbeats"
        )));
    }
    Ok(())
}

/// The heartbeat interval and grace period in seconds, defaults applied.
fn heartbeat_settings(config: &HpoConfig) -> (f64, f64) {
    (
        config.heartbeat_interval_s.unwrap_or(DEFAULT_HEARTBEAT_S),
        config.grace_period_s.unwrap_or(DEFAULT_GRACE_S),
    )
}

/// The study name when the config sets none: the output folder's name and the first 12 characters of the
/// config key, so a changed config gets a new study rather than another's trials.
pub fn default_study_name(output: &Path, key: &str) -> String {
    let folder = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hpo".into());
    format!("{folder}-{}", &key[..key.len().min(12)])
}

/// What the hpo stage knows when it opens a database study.
pub(crate) struct StageStudy<'a> {
    /// The storage.
    pub url: &'a DbUrl,
    /// The validated config.
    pub config: &'a HpoConfig,
    /// The stage's inputs.
    pub inputs: &'a [(String, PathBuf)],
    /// The stage's output (names the default study).
    pub output: &'a Path,
    /// The stage seed.
    pub seed: u64,
    /// [`crate::stage::config_key`].
    pub key: &'a str,
    /// The trial binary.
    pub program: &'a Path,
    /// The local study directory (trial outputs and logs).
    pub dir: &'a Path,
}

/// Creates or joins the stage's database study and opens it as one more worker. Returns the study and its
/// `URL#name` (no password) for the report.
pub(crate) fn stage_study(
    s: StageStudy<'_>,
    settings: StudySettings,
) -> Result<(Study, Option<String>)> {
    let name = s
        .config
        .study
        .clone()
        .unwrap_or_else(|| default_study_name(s.output, s.key));
    let (program_hash, _) = mmrl_artifact::hash::hash_file(s.program)?;
    let mut recorded = s.config.clone();
    recorded.storage = None;
    recorded.study = None;
    let definition = Definition {
        format: DEFINITION_FORMAT,
        config: recorded,
        inputs: s
            .inputs
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    std::path::absolute(p).unwrap_or_else(|_| p.clone()),
                )
            })
            .collect(),
        seed: s.seed,
        program_hash,
    };
    let (heartbeat, grace) = heartbeat_settings(s.config);
    let new = NewStudy {
        name: name.clone(),
        direction: s.config.objective.direction,
        n_trials: s.config.n_trials,
        space: json(&s.config.space)?,
        definition: json(&definition)?,
        config_key: s.key.to_owned(),
        heartbeat_interval: Duration::from_secs_f64(heartbeat),
        grace_period: Duration::from_secs_f64(grace),
    };
    let storage = PgStorage::create_or_join(s.url, &new)?;
    tracing::info!(
        study = %name,
        url = s.url.shown(),
        "shared study: workers on other machines join with `mmrl-hpo worker --storage {} --study {name:?}`",
        s.url.shown()
    );
    let lock = lock_dir(s.dir)?;
    let study = Study::shared(s.dir, Box::new(storage), settings, Some(lock))?;
    Ok((study, Some(format!("{}#{name}", s.url.shown()))))
}

fn json(v: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::Study(format!("serializing the study definition: {e}")))
}

/// `mmrl-hpo worker`'s settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The storage URL.
    pub storage: String,
    /// The study's name.
    pub study: String,
    /// Trials this worker runs at once.
    pub workers: usize,
    /// Where trial outputs and logs go (default `mmrl-hpo-work/<study>` in the current folder); one worker
    /// process per directory.
    pub work_dir: Option<PathBuf>,
    /// Inputs at other paths on this machine (`NAME=PATH`), replacing the recorded ones of that name.
    pub inputs: Vec<(String, PathBuf)>,
    /// How often running trials are polled.
    pub poll: Duration,
}

/// What a worker did.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    /// The study.
    pub study: String,
    /// This worker's id (host:pid), as recorded on its trials.
    pub worker: String,
    /// The trials this worker ran to their end, by number.
    pub ran: Vec<u64>,
    /// The whole study's trials by state.
    pub counts: BTreeMap<String, u64>,
    /// The study's best trial and value so far.
    pub best: Option<(u64, f64)>,
}

/// Joins a study and runs its trials until it has `n_trials`.
pub fn run_worker(opts: &WorkerOptions) -> Result<WorkerReport> {
    let url = DbUrl::parse(&opts.storage)?;
    if opts.workers == 0 {
        return Err(Error::Config("--workers must be at least 1".into()));
    }
    let storage = PgStorage::join(&url, &opts.study)?;
    let def: Definition = serde_json::from_value(storage.definition().clone()).map_err(|e| Error::Storage {
        url: url.shown().to_owned(),
        message: format!(
            "study {:?}: its definition is not one this mmrl-hpo reads ({e}); run workers of the same version as \
             the hpo stage that created it",
            opts.study
        ),
    })?;
    if def.format != DEFINITION_FORMAT {
        return Err(Error::Storage {
            url: url.shown().to_owned(),
            message: format!(
                "study {:?}: definition format {}, expected {DEFINITION_FORMAT}",
                opts.study, def.format
            ),
        });
    }
    let mut config = def.config;
    config.workers = opts.workers;
    // The recorded config has no storage; its heartbeat settings are the study's (and need one).
    config.storage = Some(opts.storage.clone());
    config.study = Some(opts.study.clone());
    config.validate()?;
    let inputs = replace_inputs(&def.inputs, &opts.inputs)?;
    let space = Space::new(&config.space)?;
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| Path::new("mmrl-hpo-work").join(folder_name(&opts.study)));
    let work = std::path::absolute(&work).unwrap_or(work);
    let lock = lock_dir(&work)?;
    let mut launcher = ProcessLauncher::new(&config, &inputs, &work, def.seed)?;
    check_program(&launcher, &def.program_hash)?;
    launcher.check(&space.decode(&vec![0.5; space.dim()]))?;
    let settings = StudySettings {
        space,
        sampler: config.sampler,
        n_trials: config.n_trials,
        workers: opts.workers,
        direction: config.objective.direction,
        pruner: config.pruner.clone(),
        seed: def.seed,
    };
    let worker = storage.worker().to_owned();
    tracing::info!(study = %opts.study, url = url.shown(), worker = %worker, work = %work.display(), "joined the study");
    let mut study = Study::shared(&work, Box::new(storage), settings, Some(lock))?;
    let mut ran = Vec::new();
    let trials = study.optimize(&mut launcher, opts.poll, |t| ran.push(t.number))?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for t in &trials {
        *counts.entry(t.state.as_str().to_owned()).or_default() += 1;
    }
    let best =
        best_trial(&trials, config.objective.direction).and_then(|t| Some((t.number, t.value?)));
    ran.sort_unstable();
    Ok(WorkerReport {
        study: opts.study.clone(),
        worker,
        ran,
        counts,
        best,
    })
}

/// The recorded inputs with `replacements` (by name) applied; a name the study does not have is an error.
fn replace_inputs(
    recorded: &[(String, PathBuf)],
    replacements: &[(String, PathBuf)],
) -> Result<Vec<(String, PathBuf)>> {
    let mut inputs = recorded.to_vec();
    for (name, path) in replacements {
        let Some(slot) = inputs.iter_mut().find(|(n, _)| n == name) else {
            let names: Vec<&str> = recorded.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Config(format!(
                "--input {name}=...: the study has no input {name:?} (its inputs: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        };
        slot.1 = path.clone();
    }
    for (name, path) in &inputs {
        if !path.exists() {
            return Err(Error::Config(format!(
                "input {name} = {} does not exist on this machine: give its path here with --input {name}=PATH",
                path.display()
            )));
        }
    }
    Ok(inputs)
}

/// The trial binary must exist here; one that differs from the study's is run with a warning (a build on
/// another machine rarely has the same bytes, but results are comparable only for the same code).
fn check_program(launcher: &ProcessLauncher, recorded: &str) -> Result<()> {
    if !launcher.program.is_file() {
        return Err(Error::Config(format!(
            "the tuned stage's binary {} does not exist on this machine (build the workspace: stage binaries \
             must sit next to mmrl-hpo)",
            launcher.program.display()
        )));
    }
    let (hash, _) = mmrl_artifact::hash::hash_file(&launcher.program)?;
    if hash != recorded {
        tracing::warn!(
            program = %launcher.program.display(),
            "the trial binary differs from the one the study was created with; its trials are comparable only \
             if it was built from the same code"
        );
    }
    Ok(())
}

/// A study name as a folder name.
fn folder_name(study: &str) -> String {
    study
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
