//! Study storage: where a study's trials live, behind the small [`Storage`] trait. [`JournalStorage`] is an
//! append-only event journal in a directory (the default, one machine); [`crate::pg::PgStorage`] keeps a study
//! in PostgreSQL, shared by workers on many machines.
//!
//! [`JournalStorage`] keeps `journal.jsonl` in the study directory: one JSON event per line (a trial's
//! start with its parameters, each intermediate value, its end with state, value, error text and
//! duration), written and flushed under an exclusive file lock, so processes appending concurrently never
//! interleave lines or hand out a trial number twice. Replaying the events gives the trials.
//!
//! Crash safety: a process killed mid-write leaves at most one torn line at the end; opening the journal
//! moves such a tail to `journal.jsonl.corrupt-tail` with a warning and carries on. A line that cannot be
//! read anywhere else is an error naming the line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io};
use crate::space::Params;

/// The state of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Started, not finished.
    Running,
    /// Finished with an objective value.
    Complete,
    /// Stopped early by the pruner (its value is the last intermediate value).
    Pruned,
    /// The trial process failed, timed out, or its objective could not be read.
    Failed,
    /// The study stopped while it ran (killed); re-run as a new trial number and not counted.
    Interrupted,
}

impl TrialState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Running => "running",
            TrialState::Complete => "complete",
            TrialState::Pruned => "pruned",
            TrialState::Failed => "failed",
            TrialState::Interrupted => "interrupted",
        }
    }
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A trial started.
    Start {
        /// Trial number (0, 1, ...).
        trial: u64,
        /// Its parameters.
        params: Params,
        /// Unix time in seconds.
        time: f64,
        /// The interrupted trial this one re-runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<u64>,
    },
    /// An intermediate value (e.g. the val metric after an epoch).
    Intermediate {
        /// Trial number.
        trial: u64,
        /// Step (epoch, ...).
        step: u64,
        /// Value; always finite when written ([`Storage::report`] skips non-finite values). `None` reads a
        /// `null` that older journals hold for a non-finite value; replay skips it.
        value: Option<f64>,
    },
    /// A trial ended.
    Finish {
        /// Trial number.
        trial: u64,
        /// Final state (not running).
        state: TrialState,
        /// Objective value (complete; last intermediate when pruned).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        /// Error text (failed, interrupted).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time of the trial in seconds.
        duration_s: f64,
        /// Unix time in seconds.
        time: f64,
    },
}

/// A trial replayed from the journal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialRecord {
    /// Trial number.
    pub number: u64,
    /// State.
    pub state: TrialState,
    /// Parameters.
    pub params: Params,
    /// Objective value.
    pub value: Option<f64>,
    /// Intermediate values by step.
    pub intermediate: BTreeMap<u64, f64>,
    /// Error text.
    pub error: Option<String>,
    /// Start time (unix seconds).
    pub started: f64,
    /// Duration in seconds (finished trials).
    pub duration_s: Option<f64>,
    /// The interrupted trial this one re-runs.
    pub retry_of: Option<u64>,
    /// Failed because its worker stopped sending heartbeats (a shared storage's grace period ran out): its
    /// parameters are re-run under a new number and it does not count toward `n_trials`. Always false in a
    /// journal, where such trials are `interrupted`.
    pub lost: bool,
}

impl TrialRecord {
    /// Whether this trial's parameters are owed a re-run: it was interrupted or lost, not completed.
    pub fn needs_retry(&self) -> bool {
        self.state == TrialState::Interrupted || (self.state == TrialState::Failed && self.lost)
    }
}

/// A new trial's parameters and the trial they re-run, or `None` when no trial should start (the budget is
/// taken by finished and running trials).
pub type Choice = Option<(Params, Option<u64>)>;

/// Chooses a new trial from every trial of the study.
pub type Choose<'a> = dyn FnMut(&[TrialRecord]) -> Result<Choice> + 'a;

/// A fixed choice, for [`Storage::start_trial`].
pub(crate) fn fixed(
    params: &Params,
    retry_of: Option<u64>,
) -> impl FnMut(&[TrialRecord]) -> Result<Choice> + '_ {
    move |_| Ok(Some((params.clone(), retry_of)))
}

/// The number of a trial [`Storage::start_trial`] started (its choice never declines).
pub(crate) fn started(outcome: Option<(u64, Params)>) -> Result<u64> {
    outcome
        .map(|(number, _)| number)
        .ok_or_else(|| Error::Study("a fixed trial choice declined to start a trial".into()))
}

/// Where a study's trials live.
pub trait Storage: Send + Sync {
    /// Starts a trial with the next free number and returns the number.
    fn start_trial(&self, params: &Params, retry_of: Option<u64>) -> Result<u64>;
    /// Records an intermediate value (a non-finite one is skipped by the journal).
    fn report(&self, trial: u64, step: u64, value: f64) -> Result<()>;
    /// Ends a trial.
    fn finish(
        &self,
        trial: u64,
        state: TrialState,
        value: Option<f64>,
        error: Option<String>,
        duration_s: f64,
    ) -> Result<()>;
    /// All trials, by number.
    fn trials(&self) -> Result<Vec<TrialRecord>>;
    /// Starts the next trial atomically: `choose` sees every trial the storage holds at that moment and no
    /// other trial starts until it returns, so a suggestion sees every trial finished before it and two
    /// suggestions never share a draw. Returns the new number and the chosen parameters, or `None` (and
    /// starts nothing) when `choose` declines.
    fn start_next(&self, choose: &mut Choose<'_>) -> Result<Option<(u64, Params)>> {
        let trials = self.trials()?;
        let Some((params, retry_of)) = choose(&trials)? else {
            return Ok(None);
        };
        let number = self.start_trial(&params, retry_of)?;
        Ok(Some((number, params)))
    }
    /// Whether other processes run trials of this study at the same time (a database storage): the study
    /// loop then counts their running trials, waits for them, and sends heartbeats for its own.
    fn is_shared(&self) -> bool {
        false
    }
    /// How often a worker confirms that its running trials are alive (`None`: no heartbeats).
    fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        None
    }
    /// Confirms that this worker's `running` trials are alive.
    fn heartbeat(&self, _running: &[u64]) -> Result<()> {
        Ok(())
    }
    /// Marks running trials whose worker sent no heartbeat within the grace period as failed and lost (their
    /// parameters are then re-run); returns their numbers.
    fn fail_lost(&self) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The JSON-lines journal in a study directory.
#[derive(Debug)]
pub struct JournalStorage {
    path: PathBuf,
}

/// The journal's file name.
pub const JOURNAL_FILE: &str = "journal.jsonl";

impl JournalStorage {
    /// Opens (creating) `dir/journal.jsonl`, recovering a torn or corrupt last line.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let path = dir.join(JOURNAL_FILE);
        let storage = JournalStorage { path };
        let mut file = storage.locked()?;
        storage.recover_tail(&mut file)?;
        Ok(storage)
    }

    /// The journal path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn locked(&self) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(io("opening", &self.path))?;
        file.lock().map_err(io("locking", &self.path))?;
        Ok(file)
    }

    fn read_all(&self, file: &mut File) -> Result<String> {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))
            .map_err(io("reading", &self.path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io("reading", &self.path))?;
        text.push_str(&String::from_utf8_lossy(&bytes));
        Ok(text)
    }

    /// Moves a last line that does not parse (or lacks its newline) out of the journal.
    fn recover_tail(&self, file: &mut File) -> Result<()> {
        let text = self.read_all(file)?;
        if text.is_empty() {
            return Ok(());
        }
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let (head, last) = match body.rfind('\n') {
            Some(i) => (&text[..=i], &body[i + 1..]),
            None => ("", body),
        };
        let torn = !text.ends_with('\n');
        let bad = !last.trim().is_empty() && serde_json::from_str::<Event>(last).is_err();
        if torn || bad {
            tracing::warn!(
                journal = %self.path.display(),
                line = head.lines().count() + 1,
                "recovering a corrupt last journal line (likely a crash mid-write); moved to {}.corrupt-tail",
                JOURNAL_FILE
            );
            let tail_path = self.path.with_extension("jsonl.corrupt-tail");
            std::fs::write(&tail_path, &text.as_bytes()[head.len()..])
                .map_err(io("writing", &tail_path))?;
            file.set_len(head.len() as u64)
                .map_err(io("truncating", &self.path))?;
            file.sync_data().map_err(io("syncing", &self.path))?;
        }
        Ok(())
    }

    fn append(&self, file: &mut File, event: &Event) -> Result<()> {
        let mut line = serde_json::to_string(event)
            .map_err(|e| Error::Study(format!("serializing a journal event: {e}")))?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(io("appending to", &self.path))?;
        file.flush().map_err(io("flushing", &self.path))?;
        file.sync_data().map_err(io("syncing", &self.path))?;
        Ok(())
    }

    fn with_lock<T>(&self, f: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
        let mut file = self.locked()?;
        let out = f(&mut file);
        let _ = file.unlock();
        out
    }
}

/// Replays journal text into trials. The last line may be torn (ignored with a warning); any other
/// unreadable line is an error naming it.
pub fn replay(path: &Path, text: &str) -> Result<Vec<TrialRecord>> {
    let mut trials: BTreeMap<u64, TrialRecord> = BTreeMap::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let last_nonempty = lines.iter().rposition(|l| !l.trim().is_empty());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| Error::Journal {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let event: Event = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) if Some(i) == last_nonempty => {
                tracing::warn!(journal = %path.display(), line = i + 1, error = %e, "ignoring a corrupt last journal line");
                continue;
            }
            Err(e) => return Err(err(format!("not a journal event: {e}"))),
        };
        match event {
            Event::Start {
                trial,
                params,
                time,
                retry_of,
            } => {
                if trials.contains_key(&trial) {
                    return Err(err(format!("trial {trial} started twice")));
                }
                trials.insert(
                    trial,
                    TrialRecord {
                        number: trial,
                        state: TrialState::Running,
                        params,
                        value: None,
                        intermediate: BTreeMap::new(),
                        error: None,
                        started: time,
                        duration_s: None,
                        retry_of,
                        lost: false,
                    },
                );
            }
            Event::Intermediate { trial, step, value } => {
                let t = trials
                    .get_mut(&trial)
                    .ok_or_else(|| err(format!("intermediate value for unknown trial {trial}")))?;
                // A null (a non-finite value written by an older version) carries nothing: skip it.
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    t.intermediate.insert(step, v);
                }
            }
            Event::Finish {
                trial,
                state,
                value,
                error,
                duration_s,
                ..
            } => {
                let t = trials
                    .get_mut(&trial)
                    .ok_or_else(|| err(format!("end of unknown trial {trial}")))?;
                if t.state != TrialState::Running {
                    return Err(err(format!("trial {trial} ended twice")));
                }
                if state == TrialState::Running {
                    return Err(err(format!("trial {trial} ended in state running")));
                }
                t.state = state;
                t.value = value;
                t.error = error;
                t.duration_s = Some(duration_s);
            }
        }
    }
    Ok(trials.into_values().collect())
}

impl Storage for JournalStorage {
    fn start_trial(&self, params: &Params, retry_of: Option<u64>) -> Result<u64> {
        started(self.start_next(&mut fixed(params, retry_of))?)
    }

    fn start_next(&self, choose: &mut Choose<'_>) -> Result<Option<(u64, Params)>> {
        self.with_lock(|file| {
            let text = self.read_all(file)?;
            let trials = replay(&self.path, &text)?;
            let Some((params, retry_of)) = choose(&trials)? else {
                return Ok(None);
            };
            let number = trials.last().map_or(0, |t| t.number + 1);
            self.append(
                file,
                &Event::Start {
                    trial: number,
                    params: params.clone(),
                    time: now(),
                    retry_of,
                },
            )?;
            Ok(Some((number, params)))
        })
    }

    fn report(&self, trial: u64, step: u64, value: f64) -> Result<()> {
        // JSON has no NaN or infinity (serde_json writes null); like `finish`, a non-finite value is not
        // recorded, so the journal always replays.
        if !value.is_finite() {
            tracing::warn!(
                trial,
                step,
                value,
                "skipping a non-finite intermediate value"
            );
            return Ok(());
        }
        self.with_lock(|file| {
            self.append(
                file,
                &Event::Intermediate {
                    trial,
                    step,
                    value: Some(value),
                },
            )
        })
    }

    fn finish(
        &self,
        trial: u64,
        state: TrialState,
        value: Option<f64>,
        error: Option<String>,
        duration_s: f64,
    ) -> Result<()> {
        self.with_lock(|file| {
            self.append(
                file,
                &Event::Finish {
                    trial,
                    state,
                    value: value.filter(|v| v.is_finite()),
                    error,
                    duration_s,
                    time: now(),
                },
            )
        })
    }

    fn trials(&self) -> Result<Vec<TrialRecord>> {
        self.with_lock(|file| {
            let text = self.read_all(file)?;
            replay(&self.path, &text)
        })
    }
}
