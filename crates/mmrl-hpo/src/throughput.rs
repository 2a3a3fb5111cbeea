//! The hand-out bench: how many trials per second a database study starts and finishes for `workers`
//! concurrent workers and a trivial objective, so the figure is the storage's, not a model's.
//!
//! Each worker is a thread with its own connection, running [`Study::optimize`] on one shared study with the
//! random sampler and an in-process objective (`x²`, answered at once). The clock starts when every worker
//! has connected and stops when the study has its trials. `bench/optuna_rdb.py` measures Optuna's RDB
//! storage the same way; `mmrl-hpo storage-bench --optuna-python PYTHON` runs both and prints them side by
//! side.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pg::{DbUrl, NewStudy, PgStorage, delete_study};
use crate::pruner::{Direction, PrunerConfig};
use crate::sampler::SamplerKind;
use crate::space::{Params, Space};
use crate::storage::{Storage, TrialState};
use crate::study::{Launcher, Poll, RunningTrial, Study, StudySettings};

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// `mmrl-hpo` or `optuna`.
    pub storage: String,
    /// Concurrent workers.
    pub workers: usize,
    /// Trials started and finished.
    pub trials: u64,
    /// Wall seconds from the first trial to the last.
    pub seconds: f64,
    /// `trials / seconds`.
    pub trials_per_s: f64,
}

/// A trial that is over as soon as it is polled: `x²`.
struct Instantly(f64);

impl RunningTrial for Instantly {
    fn poll(&mut self) -> Poll {
        Poll::Done(Vec::new(), Ok(self.0))
    }
    fn kill(&mut self) {}
}

struct Quadratic;

impl Launcher for Quadratic {
    fn launch(&mut self, _number: u64, params: &Params) -> Result<Box<dyn RunningTrial>> {
        let x = params.get("x").and_then(|v| v.as_f64()).unwrap_or(0.0);
        Ok(Box::new(Instantly(x * x)))
    }
}

fn space() -> Result<Space> {
    Space::from_toml(r#"x = { type = "float", low = -10.0, high = 10.0 }"#)
}

/// Runs `trials` trials of a fresh study with `workers` worker threads; the study is deleted afterwards.
pub fn measure(url: &DbUrl, workers: usize, trials: u64) -> Result<Throughput> {
    if workers == 0 || trials == 0 {
        return Err(Error::Config(
            "workers and trials must be at least 1".into(),
        ));
    }
    let name = format!(
        "storage-bench-{}-{}",
        std::process::id(),
        crate::storage::now() as u64
    );
    let new = NewStudy {
        name: name.clone(),
        direction: Direction::Minimize,
        n_trials: trials,
        space: serde_json::json!({ "x": { "type": "float", "low": -10.0, "high": 10.0 } }),
        definition: serde_json::json!({ "bench": true }),
        config_key: "storage-bench".into(),
        heartbeat_interval: Duration::from_secs(10),
        grace_period: Duration::from_secs(60),
    };
    drop(PgStorage::create_or_join(url, &new)?);
    let outcome = run_workers(url, &name, workers, trials);
    if let Err(e) = delete_study(url, &name) {
        tracing::warn!(error = %e, study = %name, "could not delete the bench study");
    }
    let seconds = outcome?;
    Ok(Throughput {
        storage: "mmrl-hpo".into(),
        workers,
        trials,
        seconds,
        trials_per_s: trials as f64 / seconds,
    })
}

/// Starts the workers, releases them together, and returns the wall seconds until the study is done.
fn run_workers(url: &DbUrl, name: &str, workers: usize, trials: u64) -> Result<f64> {
    let ready = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (url, name, ready) = (url.clone(), name.to_owned(), Arc::clone(&ready));
            std::thread::spawn(move || -> Result<()> {
                let joined = PgStorage::join(&url, &name).and_then(|storage| {
                    let settings = StudySettings {
                        space: space()?,
                        sampler: SamplerKind::Random,
                        n_trials: trials,
                        workers: 1,
                        direction: Direction::Minimize,
                        pruner: PrunerConfig::None,
                        seed: 0,
                    };
                    Study::shared(std::path::Path::new("."), Box::new(storage), settings, None)
                });
                ready.wait();
                joined?.optimize(&mut Quadratic, Duration::ZERO, |_| {})?;
                Ok(())
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    let mut first_error = None;
    for h in handles {
        let result = h
            .join()
            .unwrap_or_else(|_| Err(Error::Study("a bench worker panicked".into())));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        return Err(e);
    }
    let storage = PgStorage::join(url, name)?;
    let done = storage
        .trials()?
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .count() as u64;
    if done != trials {
        return Err(Error::Study(format!(
            "the bench study finished {done} trials, expected {trials}"
        )));
    }
    Ok(seconds)
}
