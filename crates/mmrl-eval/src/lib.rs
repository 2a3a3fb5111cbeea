//! mmrl-eval: the eval stage, the only stage that reads the test split. It checks every input's lineage
//! (refusing a model fit on test), decodes every test row select wrote with every trained checkpoint and
//! with our model under modality ablations, measures which question types need which modality, fits
//! majority and linfa baselines on train, and scores everything with task metrics, bootstrap intervals and
//! paired bootstrap tests into `metrics.json`, `predictions.parquet`, `report.md` and a self-contained
//! `report.html`.

pub mod baselines;
pub mod bootstrap;
pub mod config;
pub mod coverage;
pub mod curves;
mod error;
pub mod metrics;
pub mod needs;
pub mod plots;
pub mod report;
pub mod stage;

pub use config::EvalConfig;
pub use error::{Error, Result};
pub use metrics::{Metric, Scored};
pub use stage::{EvalInputs, MetricsFile, Summary, run};
