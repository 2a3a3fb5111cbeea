//! A steady-state genetic algorithm for mixed spaces: every finished trial is in the population; a child
//! comes from two tournament-selected parents by uniform crossover, then Gaussian mutation of numeric genes
//! (in the unit cube) and resampling of categorical genes, each gene with probability `1/d` (at least one).

use rand::Rng;

use super::tpe::gaussian;
use super::{Context, Sampler, encode_history, random_point};
use crate::error::Result;
use crate::space::{Domain, Params};

/// GA settings.
#[derive(Debug, Clone)]
pub struct GaSampler {
    /// Random trials before breeding.
    pub population: usize,
    /// Tournament size.
    pub tournament: usize,
    /// Standard deviation of numeric mutation (unit cube).
    pub mutation_sd: f64,
}

impl Default for GaSampler {
    fn default() -> Self {
        GaSampler {
            population: 10,
            tournament: 3,
            mutation_sd: 0.1,
        }
    }
}

impl Sampler for GaSampler {
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params> {
        let mut rng = ctx.rng(5);
        let dim = ctx.space.dim();
        let (xs, ys) = encode_history(ctx.space, ctx.history);
        if xs.len() < self.population.max(2) {
            return Ok(ctx.space.decode(&random_point(&mut rng, dim)));
        }
        let pick = |rng: &mut rand_chacha::ChaCha8Rng| {
            (0..self.tournament.max(1))
                .map(|_| rng.random_range(0..xs.len()))
                .min_by(|&a, &b| ys[a].total_cmp(&ys[b]))
                .unwrap_or(0)
        };
        let (a, b) = (pick(&mut rng), pick(&mut rng));
        let mut child: Vec<f64> = (0..dim)
            .map(|j| {
                let (pa, pb) = (xs[a][j], xs[b][j]);
                let v = if rng.random::<bool>() { pa } else { pb };
                match (v.is_nan(), pa.is_nan(), pb.is_nan()) {
                    (false, _, _) => v,
                    (true, false, _) => pa,
                    (true, _, false) => pb,
                    _ => rng.random(),
                }
            })
            .collect();
        let p = 1.0 / dim.max(1) as f64;
        let forced = rng.random_range(0..dim.max(1));
        for (j, gene) in child.iter_mut().enumerate() {
            if j != forced && rng.random::<f64>() >= p {
                continue;
            }
            *gene = match &ctx.space.params[j].domain {
                Domain::Categorical { .. } => rng.random(),
                _ => (*gene + self.mutation_sd * gaussian(&mut rng)).clamp(0.0, 1.0),
            };
        }
        Ok(ctx.space.decode(&child))
    }
}
