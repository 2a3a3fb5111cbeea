//! A study: a storage of trials (a journal in a directory, or a database shared with other workers), a sampler
//! and a pruner, and the loop that keeps up to `workers` trials running until `n_trials` have finished.
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
//!
//! Shared studies ([`Study::shared`], a storage where [`Storage::is_shared`]): several processes, on one
//! machine or many, run trials of one study at once. Nothing is marked interrupted at open (the running trials
//! belong to live workers); each worker counts every worker's running trials against the budget, sends
//! heartbeats for its own, and fails the trials of a worker that stopped sending them (the storage's grace
//! period), whose parameters are then re-run under a new number, like an interrupted trial's. A trial starts
//! through [`Storage::start_next`], so its suggestion sees every trial finished before it and two workers
//! never draw the same point. A worker returns when the study has its `n_trials`, after waiting for the
//! trials other workers still run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    _lock: Option<File>,
}

/// The study's lock file name.
pub const LOCK_FILE: &str = "study.lock";

impl Study {
    /// Opens or creates the study in `dir` with a journal, marking trials left running by a dead process as
    /// interrupted.
    pub fn open(dir: &Path, settings: StudySettings) -> Result<Self> {
        let lock = lock_dir(dir)?;
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
        let study = Self::build(dir, storage, settings, Some(lock))?;
        study.interrupt_running()?;
        Ok(study)
    }

    /// Joins a study that other workers may be running at the same time (a storage where
    /// [`Storage::is_shared`]); `dir` holds this worker's trial outputs, `lock` (if any) guards it.
    pub fn shared(
        dir: &Path,
        storage: Box<dyn Storage>,
        settings: StudySettings,
        lock: Option<File>,
    ) -> Result<Self> {
        if !storage.is_shared() {
            return Err(Error::Config(
                "Study::shared needs a storage shared by workers (a database); open a journal with Study::open"
                    .into(),
            ));
        }
        Self::build(dir, storage, settings, lock)
    }

    fn build(
        dir: &Path,
        storage: Box<dyn Storage>,
        settings: StudySettings,
        lock: Option<File>,
    ) -> Result<Self> {
        if settings.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        let sampler = settings.sampler.build(&settings.space)?;
        Ok(Study {
            dir: dir.to_path_buf(),
            storage,
            settings,
            sampler,
            _lock: lock,
        })
    }

    /// Marks trials left running by a process that died with the study as interrupted (single-process
    /// storages: a running trial there has no live worker).
    fn interrupt_running(&self) -> Result<()> {
        for t in self.storage.trials()? {
            if t.state == TrialState::Running {
                tracing::warn!(
                    trial = t.number,
                    "trial was running when the study stopped: marking it interrupted; it is re-run as a new trial"
                );
                self.storage.finish(
                    t.number,
                    TrialState::Interrupted,
                    None,
                    Some("interrupted: the study stopped while this trial ran; re-run as a new trial".into()),
                    0.0,
                )?;
            }
        }
        Ok(())
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

    /// Trials finished and counted toward `n_trials` (a lost trial is not: its parameters are re-run).
    pub fn counted(trials: &[TrialRecord]) -> u64 {
        trials
            .iter()
            .filter(|t| {
                matches!(
                    t.state,
                    TrialState::Complete | TrialState::Pruned | TrialState::Failed
                ) && !t.lost
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
        observations(self.settings.direction, trials)
    }

    /// Chooses the next trial's parameters and starts it in the storage: an interrupted or lost trial's
    /// parameters first, else the sampler's suggestion; `None` when finished and running trials (every
    /// worker's) already take the budget. The check, the choice and the start are one step of the storage
    /// ([`Storage::start_next`]), so concurrent workers of a shared study never draw the same point nor start
    /// more than `n_trials`.
    pub fn ask(&mut self) -> Result<Option<(u64, Params)>> {
        let target = self.target();
        let Study {
            storage,
            sampler,
            settings,
            ..
        } = self;
        storage.start_next(&mut |trials| {
            let running = trials
                .iter()
                .filter(|t| t.state == TrialState::Running)
                .count() as u64;
            if Self::counted(trials) + running >= target {
                return Ok(None);
            }
            let retried: std::collections::BTreeSet<u64> =
                trials.iter().filter_map(|t| t.retry_of).collect();
            if let Some(t) = trials
                .iter()
                .find(|t| t.needs_retry() && !retried.contains(&t.number))
            {
                tracing::info!(
                    trial = t.number,
                    state = t.state.as_str(),
                    lost = t.lost,
                    "re-running the parameters of a trial that did not finish"
                );
                return Ok(Some((t.params.clone(), Some(t.number))));
            }
            // The sampler's own index: trials it drew, not trial numbers (a retry takes a number, not a draw).
            let draw = trials.iter().filter(|t| t.retry_of.is_none()).count() as u64;
            let history = observations(settings.direction, trials);
            let params = sampler.suggest(&Context {
                space: &settings.space,
                history: &history,
                trial: draw,
                seed: settings.seed,
            })?;
            Ok(Some((params, None)))
        })
    }

    /// Runs trials through `launcher` until the budget is finished; `on_finish` sees each ended trial. On a
    /// shared storage, trials other workers run count against the budget, and the loop returns once the
    /// study has its `n_trials` (waiting for theirs).
    pub fn optimize(
        &mut self,
        launcher: &mut dyn Launcher,
        poll_every: Duration,
        mut on_finish: impl FnMut(&TrialRecord),
    ) -> Result<Vec<TrialRecord>> {
        let target = self.target();
        let shared = self.storage.is_shared();
        let mut running: Vec<Flight> = Vec::new();
        let mut last_beat = Instant::now();
        // Trials that ended here since the last read of the storage: `on_finish` sees their stored records.
        let mut ended: Vec<u64> = Vec::new();
        loop {
            self.keep_alive(&running, &mut last_beat)?;
            let trials = self.storage.trials()?;
            report_ended(&mut ended, &trials, &mut on_finish);
            let done = Self::counted(&trials);
            // A journal study runs only this process's trials; a shared one counts every worker's.
            let in_flight = if shared {
                trials
                    .iter()
                    .filter(|t| t.state == TrialState::Running)
                    .count() as u64
            } else {
                running.len() as u64
            };
            let done = self.fill(
                launcher,
                &mut running,
                done,
                in_flight,
                target,
                &mut on_finish,
            )?;
            if running.is_empty() {
                if done >= target || !shared {
                    break;
                }
                // Other workers still run trials that the budget counts: wait for them, or for their grace
                // period to run out (then their parameters are re-run here).
                std::thread::sleep(poll_every.max(Duration::from_millis(20)));
                continue;
            }
            std::thread::sleep(poll_every);
            let mut still = Vec::with_capacity(running.len());
            for mut f in running {
                match self.poll_flight(&mut f)? {
                    Polled::Running => still.push(f),
                    Polled::Ended => ended.push(f.number),
                }
            }
            running = still;
        }
        let trials = self.storage.trials()?;
        report_ended(&mut ended, &trials, &mut on_finish);
        Ok(trials)
    }

    /// Starts trials while fewer than `workers` run here and the budget allows; returns the trials counted
    /// (a trial that could not be launched is failed and counted).
    fn fill(
        &mut self,
        launcher: &mut dyn Launcher,
        running: &mut Vec<Flight>,
        mut done: u64,
        mut in_flight: u64,
        target: u64,
        on_finish: &mut impl FnMut(&TrialRecord),
    ) -> Result<u64> {
        while running.len() < self.settings.workers && done + in_flight < target {
            // Another worker may have taken the last places since `in_flight` was counted.
            let Some((number, params)) = self.ask()? else {
                break;
            };
            tracing::info!(trial = number, params = %serde_json::to_string(&params).unwrap_or_default(), "trial started");
            match launcher.launch(number, &params) {
                Ok(trial) => {
                    in_flight += 1;
                    running.push(Flight {
                        number,
                        started: Instant::now(),
                        trial,
                    })
                }
                Err(e) => {
                    done += 1;
                    self.storage.finish(
                        number,
                        TrialState::Failed,
                        None,
                        Some(e.to_string()),
                        0.0,
                    )?;
                    if let Some(t) = self.record(number)? {
                        on_finish(&t);
                    }
                }
            }
        }
        Ok(done)
    }

    /// On a storage with heartbeats, every interval: confirms this worker's running trials and fails the
    /// trials of workers that stopped confirming theirs.
    fn keep_alive(&self, running: &[Flight], last_beat: &mut Instant) -> Result<()> {
        let Some(every) = self.storage.heartbeat_interval() else {
            return Ok(());
        };
        if last_beat.elapsed() < every {
            return Ok(());
        }
        *last_beat = Instant::now();
        let mine: Vec<u64> = running.iter().map(|f| f.number).collect();
        self.storage.heartbeat(&mine)?;
        let lost = self.storage.fail_lost()?;
        if !lost.is_empty() {
            tracing::warn!(
                trials = ?lost,
                "trials whose worker stopped sending heartbeats were marked failed; their parameters are re-run"
            );
        }
        Ok(())
    }

    /// The stored record of trial `number`.
    fn record(&self, number: u64) -> Result<Option<TrialRecord>> {
        Ok(self
            .storage
            .trials()?
            .into_iter()
            .find(|t| t.number == number))
    }

    /// Polls one running trial: records its intermediate values, prunes it if the pruner says so, records
    /// its end.
    fn poll_flight(&mut self, f: &mut Flight) -> Result<Polled> {
        let (reports, result) = match f.trial.poll() {
            Poll::Running(r) => (r, None),
            Poll::Done(r, res) => (r, Some(res)),
        };
        let mut pruned_at = None;
        for (step, value) in reports {
            self.storage.report(f.number, step, value)?;
            if result.is_none() && pruned_at.is_none() {
                let all = self.storage.trials()?;
                if let Some(cur) = all.iter().find(|t| t.number == f.number)
                    && self
                        .settings
                        .pruner
                        .should_prune(cur, step, &all, self.settings.direction)
                {
                    pruned_at = Some((step, value));
                }
            }
        }
        let secs = f.started.elapsed().as_secs_f64();
        if let Some((step, value)) = pruned_at {
            f.trial.kill();
            tracing::info!(trial = f.number, step, value, "trial pruned");
            self.storage
                .finish(f.number, TrialState::Pruned, Some(value), None, secs)?;
        } else if let Some(res) = result {
            let (state, value, error) = match res {
                Ok(v) if v.is_finite() => {
                    tracing::info!(
                        trial = f.number,
                        value = v,
                        seconds = secs,
                        "trial complete"
                    );
                    (TrialState::Complete, Some(v), None)
                }
                Ok(v) => (
                    TrialState::Failed,
                    None,
                    Some(format!("objective is not a finite number: {v}")),
                ),
                Err(e) => {
                    tracing::warn!(trial = f.number, error = %e, "trial failed");
                    (TrialState::Failed, None, Some(e))
                }
            };
            self.storage.finish(f.number, state, value, error, secs)?;
        } else {
            return Ok(Polled::Running);
        }
        Ok(Polled::Ended)
    }
}

/// A trial in flight in this process.
struct Flight {
    number: u64,
    started: Instant,
    trial: Box<dyn RunningTrial>,
}

/// Creates `dir` and takes its [`LOCK_FILE`] for as long as the returned file lives; a directory another
/// hpo process holds is an error.
pub fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(io("creating", &lock_path))?;
    if let Err(e) = lock.try_lock() {
        return Err(Error::Busy(format!(
            "study {} is in use by another hpo process ({e})",
            dir.display()
        )));
    }
    Ok(lock)
}

/// What polling a trial found.
enum Polled {
    /// Still running.
    Running,
    /// Ended (recorded in the storage).
    Ended,
}

/// Calls `on_finish` with the records of the `ended` trials, and forgets them.
fn report_ended(
    ended: &mut Vec<u64>,
    trials: &[TrialRecord],
    on_finish: &mut impl FnMut(&TrialRecord),
) {
    for number in ended.drain(..) {
        if let Some(t) = trials.iter().find(|t| t.number == number) {
            on_finish(t);
        }
    }
}

/// [`Study::observations`] for a direction.
fn observations(direction: Direction, trials: &[TrialRecord]) -> Vec<Observation> {
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
