//! `mmrl-hpo`: hyperparameter optimization for mmrl stages. Search spaces ([`space`]), samplers
//! ([`sampler`]: grid, random, sobol, tpe, gp, cmaes, ga), pruners ([`pruner`]: median, ASHA, Hyperband),
//! resumable studies in a journal or shared by many machines through PostgreSQL ([`storage`], [`pg`],
//! [`study`], [`worker`]), the `hpo` stage that runs another stage's
//! trials as processes ([`stage`]), plots ([`plots`]) and a sampler benchmark ([`mod@bench`]).
//!
//! The crate drives other stages as processes and depends on no model code, so it builds fast.

pub mod bench;
pub mod error;
pub mod linalg;
pub mod pg;
pub mod plots;
pub mod pruner;
pub mod sampler;
pub mod space;
pub mod stage;
pub mod storage;
pub mod study;
pub mod table;
pub mod throughput;
pub mod worker;

pub use error::{Error, Result};
pub use pg::{DbUrl, PgStorage};
pub use pruner::{Direction, PrunerConfig};
pub use sampler::{Context, Observation, Sampler, SamplerKind};
pub use space::{Params, Space};
pub use stage::HpoConfig;
pub use storage::{JournalStorage, Storage, TrialRecord, TrialState};
pub use study::{Study, StudySettings};
