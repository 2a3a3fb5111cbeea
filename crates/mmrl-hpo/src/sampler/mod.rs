//! Samplers: propose the next trial's parameters from the finished trials (ask/tell over a history).
//!
//! Every sampler works in the unit-cube encoding of [`Space`] and draws its randomness from a generator
//! seeded by `(seed, draw index)` ([`Context::trial`]: the number of suggestions made before, retries of
//! interrupted trials excluded), so a study resumed from its journal proposes the same points as long as the
//! sampler holds no state beyond the history: grid, random, sobol, tpe, cmaes and ga. GP keeps a warm start
//! for its hyperparameter fit in memory, so after a resume its suggestions may differ.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::space::{Params, Space};

pub mod cmaes;
pub mod ga;
pub mod gp;
pub mod grid;
pub mod tpe;

/// A finished trial as samplers see it: parameters and a loss (lower is better; maximized objectives are
/// negated before they reach a sampler).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The trial number.
    pub number: u64,
    /// Its parameters.
    pub params: Params,
    /// The loss.
    pub loss: f64,
}

/// What a sampler gets for one suggestion.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The space.
    pub space: &'a Space,
    /// Completed trials, by trial number.
    pub history: &'a [Observation],
    /// The index of this suggestion among the sampler's draws: trials started before from a suggestion
    /// (retries of interrupted trials take a trial number but are not draws). Equals the trial number when
    /// nothing was retried. Grid takes point `trial`; the per-draw generators are seeded by it.
    pub trial: u64,
    /// The study seed.
    pub seed: u64,
}

impl Context<'_> {
    /// The generator for this trial.
    pub fn rng(&self, salt: u64) -> ChaCha8Rng {
        let mix = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(self.trial.wrapping_mul(0xD1B5_4A32_D192_ED03))
            .wrapping_add(salt);
        ChaCha8Rng::seed_from_u64(mix)
    }
}

/// A search strategy.
pub trait Sampler: Send {
    /// Proposes parameters for `ctx.trial`.
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params>;
    /// The most trials worth running (grid: its size).
    fn budget(&self, _space: &Space) -> Option<u64> {
        None
    }
}

/// The samplers by command-line name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Every combination of a grid.
    Grid,
    /// Independent uniform draws.
    Random,
    /// Owen-scrambled Sobol points.
    Sobol,
    /// Tree-structured Parzen estimator (multivariate).
    #[default]
    Tpe,
    /// Gaussian-process Bayesian optimization with expected improvement.
    Gp,
    /// CMA-ES.
    Cmaes,
    /// A steady-state genetic algorithm for mixed spaces.
    Ga,
}

impl SamplerKind {
    /// All samplers.
    pub const ALL: [SamplerKind; 7] = [
        SamplerKind::Grid,
        SamplerKind::Random,
        SamplerKind::Sobol,
        SamplerKind::Tpe,
        SamplerKind::Gp,
        SamplerKind::Cmaes,
        SamplerKind::Ga,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Grid => "grid",
            SamplerKind::Random => "random",
            SamplerKind::Sobol => "sobol",
            SamplerKind::Tpe => "tpe",
            SamplerKind::Gp => "gp",
            SamplerKind::Cmaes => "cmaes",
            SamplerKind::Ga => "ga",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown sampler {name:?}: expected grid, random, sobol, tpe, gp, cmaes or ga"
                ))
            })
    }

    /// A fresh sampler of this kind for `space`.
    pub fn build(self, space: &Space) -> Result<Box<dyn Sampler>> {
        Ok(match self {
            SamplerKind::Grid => Box::new(grid::GridSampler::new(space, grid::DEFAULT_POINTS)?),
            SamplerKind::Random => Box::new(RandomSampler),
            SamplerKind::Sobol => {
                if space.dim() > 256 {
                    return Err(Error::Config(format!(
                        "sobol supports 256 parameters at most, the space has {}",
                        space.dim()
                    )));
                }
                Box::new(SobolSampler)
            }
            SamplerKind::Tpe => Box::new(tpe::TpeSampler::default()),
            SamplerKind::Gp => Box::new(gp::GpSampler::default()),
            SamplerKind::Cmaes => Box::new(cmaes::CmaEsSampler::new(space)),
            SamplerKind::Ga => Box::new(ga::GaSampler::default()),
        })
    }
}

/// Uniform random points.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomSampler;

impl Sampler for RandomSampler {
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params> {
        use rand::Rng;
        let mut rng = ctx.rng(1);
        let u: Vec<f64> = (0..ctx.space.dim()).map(|_| rng.random::<f64>()).collect();
        Ok(ctx.space.decode(&u))
    }
}

/// Owen-scrambled Sobol points: trial `n` takes point `n` of a sequence scrambled by the seed.
#[derive(Debug, Default, Clone, Copy)]
pub struct SobolSampler;

impl Sampler for SobolSampler {
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params> {
        Ok(ctx
            .space
            .decode(&sobol_point(ctx.trial, ctx.space.dim(), ctx.seed)))
    }
}

/// Point `index` of a `dim`-dimensional Owen-scrambled Sobol sequence (dimensions above 256 wrap).
pub fn sobol_point(index: u64, dim: usize, seed: u64) -> Vec<f64> {
    let seed = (seed ^ (seed >> 32)) as u32;
    (0..dim)
        .map(|d| {
            let v = sobol_burley::sample(
                (index % (1 << 32)) as u32,
                (d % 256) as u32,
                seed.wrapping_add((d / 256) as u32),
            );
            // sobol_burley returns f32 in [0, 1); widened as is (coordinates sit on the f32 grid).
            f64::from(v)
        })
        .collect()
}

/// Random unit-cube point from a generator.
pub(crate) fn random_point(rng: &mut impl rand::Rng, dim: usize) -> Vec<f64> {
    (0..dim).map(|_| rng.random::<f64>()).collect()
}

/// Encodes the history as unit-cube rows (NaN for inactive parameters) and losses.
pub(crate) fn encode_history(space: &Space, history: &[Observation]) -> (Vec<Vec<f64>>, Vec<f64>) {
    history
        .iter()
        .filter(|o| o.loss.is_finite())
        .map(|o| (space.encode(&o.params), o.loss))
        .unzip()
}
