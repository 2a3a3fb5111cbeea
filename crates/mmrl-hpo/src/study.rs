//! A study: a directory with the trial journal, a sampler and a pruner, and the loop that keeps up to
//! `workers` trials running until `n_trials` have finished.
//!
//! Resuming: opening a study takes `study.lock` for the whole run (a second hpo process on the same study is
//! refused), so a trial still `running` in the journal belonged to a process that died with the study. It
//! is marked `interrupted` (not counted) and its parameters are re-run under a new trial number; completed,
//! pruned and failed trials are kept and never run again. The sampler is rebuilt by replaying the finished
//! trials in number order and is indexed by its own draws (retries of interrupted trials are not draws), with
//! randomness seeded per draw: a grid neither skips nor repeats a point across a resume, and samplers whose
//! state is rebuilt from the history alone (grid, random, sobol, tpe, cmaes, ga) propose the same points as
//! an uninterrupted run with the same finished trials. GP warm-starts its hyperparameter fit from the
//! previous fit held in memory, which a resumed process does not have, so its suggestions after a resume may
//! differ (they remain valid suggestions from the same history).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result, io};
use crate::pruner::{Direction, PrunerConfig};
use crate::sampler::{Context, Observation, Sampler, SamplerKind};
use crate::space::{Params, Space};
use crate::storage::{JournalStorage, Storage, TrialRecord, TrialState};

/// What the study loop needs besides its directory.
#[derive(Debug, Clone)]
pub struct StudySettings {
    /// The search space.
    pub space: Space,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Trials to finish (complete, pruned or failed; interrupted ones are re-run and not counted).
    pub n_trials: u64,
    /// Trials running at once.
    pub workers: usize,
    /// Objective direction.
    pub direction: Direction,
    /// Pruner.
    pub pruner: PrunerConfig,
    /// Seed of the sampler.
    pub seed: u64,
}

/// The state of a launched trial.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// Still running; intermediate values reported since the last poll.
    Running(Vec<(u64, f64)>),
    /// Finished with the objective value, or failed with an error text; last intermediate values first.
    Done(Vec<(u64, f64)>, std::result::Result<f64, String>),
}

/// A trial in flight.
pub trait RunningTrial: Send {
    /// Checks on the trial without blocking.
    fn poll(&mut self) -> Poll;
    /// Stops the trial (pruned); must not block for long.
    fn kill(&mut self);
}

/// Starts trials.
pub trait Launcher {
    /// Starts trial `number` with `params`.
    fn launch(&mut self, number: u64, params: &Params) -> Result<Box<dyn RunningTrial>>;
}

/// An open study.
pub struct Study {
    dir: PathBuf,
    storage: Box<dyn Storage>,
    settings: StudySettings,
    sampler: Box<dyn Sampler>,
    _lock: File,
}

/// The study's lock file name.
pub const LOCK_FILE: &str = "study.lock";

impl Study {
    /// Opens or creates the study in `dir` with a journal, marking trials left running by a dead process as
    /// interrupted.
    pub fn open(dir: &Path, settings: StudySettings) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io("creating", &lock_path))?;
        if let Err(e) = lock.try_lock() {
            return Err(Error::Busy(format!(
                "study {} is in use by another hpo process ({e})",
                dir.display()
            )));
        }
        let storage = Box::new(JournalStorage::open(dir)?);
        Self::with_storage(dir, storage, settings, lock)
    }

    /// Opens a study over any storage (the lock file guards the directory).
    pub fn with_storage(
        dir: &Path,
        storage: Box<dyn Storage>,
        settings: StudySettings,
        lock: File,
    ) -> Result<Self> {
        if settings.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        let sampler = settings.sampler.build(&settings.space)?;
        let study = Study {
            dir: dir.to_path_buf(),
            storage,
            settings,
            sampler,
            _lock: lock,
        };
        for t in study.storage.trials()? {
            if t.state == TrialState::Running {
                tracing::warn!(
                    trial = t.number,
                    "trial was running when the study stopped: marking it interrupted; it is re-run as a new trial"
                );
                study.storage.finish(
                    t.number,
                    TrialState::Interrupted,
                    None,
                    Some("interrupted: the study stopped while this trial ran; re-run as a new trial".into()),
                    0.0,
                )?;
            }
        }
        Ok(study)
    }

    /// The study directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The settings.
    pub fn settings(&self) -> &StudySettings {
        &self.settings
    }

    /// All trials.
    pub fn trials(&self) -> Result<Vec<TrialRecord>> {
        self.storage.trials()
    }

    /// Trials finished and counted toward `n_trials`.
    pub fn counted(trials: &[TrialRecord]) -> u64 {
        trials
            .iter()
            .filter(|t| {
                matches!(
                    t.state,
                    TrialState::Complete | TrialState::Pruned | TrialState::Failed
                )
            })
            .count() as u64
    }

    /// The trial budget: `n_trials`, or the grid size when smaller.
    pub fn target(&self) -> u64 {
        match self.sampler.budget(&self.settings.space) {
            Some(b) => b.min(self.settings.n_trials),
            None => self.settings.n_trials,
        }
    }

    /// Observations for the sampler, in number order: completed trials with their losses, and pruned trials
    /// with the worst completed loss (they were stopped for being poor; their partial values are not
    /// comparable with final ones, but leaving them out would let a sampler propose the same region again).
    pub fn observations(&self, trials: &[TrialRecord]) -> Vec<Observation> {
        let direction = self.settings.direction;
        let worst = trials
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .filter_map(|t| t.value.map(|v| direction.loss(v)))
            .filter(|l| l.is_finite())
            .fold(None, |acc: Option<f64>, l| {
                Some(acc.map_or(l, |a| a.max(l)))
            });
        trials
            .iter()
            .filter_map(|t| {
                let loss = match t.state {
                    TrialState::Complete => direction.loss(t.value?),
                    TrialState::Pruned => worst?,
                    _ => return None,
                };
                Some(Observation {
                    number: t.number,
                    params: t.params.clone(),
                    loss,
                })
            })
            .collect()
    }

    /// Chooses the next trial's parameters and starts it in the storage: an interrupted trial's parameters
    /// first, else the sampler's suggestion.
    pub fn ask(&mut self) -> Result<(u64, Params)> {
        let trials = self.storage.trials()?;
        let retried: std::collections::BTreeSet<u64> =
            trials.iter().filter_map(|t| t.retry_of).collect();
        if let Some(t) = trials
            .iter()
            .find(|t| t.state == TrialState::Interrupted && !retried.contains(&t.number))
        {
            let number = self.storage.start_trial(&t.params, Some(t.number))?;
            return Ok((number, t.params.clone()));
        }
        // The sampler's own index: trials it drew, not trial numbers (a retry takes a number, not a draw).
        let draw = trials.iter().filter(|t| t.retry_of.is_none()).count() as u64;
        let history = self.observations(&trials);
        let params = self.sampler.suggest(&Context {
            space: &self.settings.space,
            history: &history,
            trial: draw,
            seed: self.settings.seed,
        })?;
        let number = self.storage.start_trial(&params, None)?;
        Ok((number, params))
    }

    /// Runs trials through `launcher` until the budget is finished; `on_finish` sees each ended trial.
    pub fn optimize(
        &mut self,
        launcher: &mut dyn Launcher,
        poll_every: Duration,
        mut on_finish: impl FnMut(&TrialRecord),
    ) -> Result<Vec<TrialRecord>> {
        struct Flight {
            number: u64,
            started: std::time::Instant,
            trial: Box<dyn RunningTrial>,
        }
        let target = self.target();
        let mut running: Vec<Flight> = Vec::new();
        loop {
            let trials = self.storage.trials()?;
            let mut done = Self::counted(&trials);
            while running.len() < self.settings.workers && done + (running.len() as u64) < target {
                let (number, params) = self.ask()?;
                tracing::info!(trial = number, params = %serde_json::to_string(&params).unwrap_or_default(), "trial started");
                match launcher.launch(number, &params) {
                    Ok(trial) => running.push(Flight {
                        number,
                        started: std::time::Instant::now(),
                        trial,
                    }),
                    Err(e) => {
                        done += 1;
                        self.storage.finish(
                            number,
                            TrialState::Failed,
                            None,
                            Some(e.to_string()),
                            0.0,
                        )?;
                        if let Some(t) = self
                            .storage
                            .trials()?
                            .into_iter()
                            .find(|t| t.number == number)
                        {
                            on_finish(&t);
                        }
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(poll_every);
            let mut still = Vec::with_capacity(running.len());
            for mut f in running {
                let poll = f.trial.poll();
                let (reports, result) = match poll {
                    Poll::Running(r) => (r, None),
                    Poll::Done(r, res) => (r, Some(res)),
                };
                let mut pruned_at = None;
                for (step, value) in reports {
                    self.storage.report(f.number, step, value)?;
                    if result.is_none() && pruned_at.is_none() {
                        let all = self.storage.trials()?;
                        if let Some(cur) = all.iter().find(|t| t.number == f.number)
                            && self.settings.pruner.should_prune(
                                cur,
                                step,
                                &all,
                                self.settings.direction,
                            )
                        {
                            pruned_at = Some((step, value));
                        }
                    }
                }
                let secs = f.started.elapsed().as_secs_f64();
                let ended = if let Some((step, value)) = pruned_at {
                    f.trial.kill();
                    tracing::info!(trial = f.number, step, value, "trial pruned");
                    self.storage
                        .finish(f.number, TrialState::Pruned, Some(value), None, secs)?;
                    true
                } else if let Some(res) = result {
                    match res {
                        Ok(v) if v.is_finite() => {
                            tracing::info!(
                                trial = f.number,
                                value = v,
                                seconds = secs,
                                "trial complete"
                            );
                            self.storage.finish(
                                f.number,
                                TrialState::Complete,
                                Some(v),
                                None,
                                secs,
                            )?;
                        }
                        Ok(v) => {
                            self.storage.finish(
                                f.number,
                                TrialState::Failed,
                                None,
                                Some(format!("objective is not a finite number: {v}")),
                                secs,
                            )?;
                        }
                        Err(e) => {
                            tracing::warn!(trial = f.number, error = %e, "trial failed");
                            self.storage.finish(
                                f.number,
                                TrialState::Failed,
                                None,
                                Some(e),
                                secs,
                            )?;
                        }
                    }
                    true
                } else {
                    false
                };
                if ended {
                    if let Some(t) = self
                        .storage
                        .trials()?
                        .into_iter()
                        .find(|t| t.number == f.number)
                    {
                        on_finish(&t);
                    }
                } else {
                    still.push(f);
                }
            }
            running = still;
        }
        self.storage.trials()
    }
}

/// The best complete trial.
pub fn best_trial(trials: &[TrialRecord], direction: Direction) -> Option<&TrialRecord> {
    trials
        .iter()
        .filter(|t| t.state == TrialState::Complete && t.value.is_some_and(f64::is_finite))
        .reduce(|a, b| match (a.value, b.value) {
            (Some(x), Some(y)) if direction.better(y, x) => b,
            _ => a,
        })
}
