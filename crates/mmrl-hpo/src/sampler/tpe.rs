//! Multivariate tree-structured Parzen estimator (Bergstra et al. 2011; Falkner et al. 2018's joint
//! kernels): split finished trials into the best `gamma(n)` ("below") and the rest, fit a Parzen mixture of
//! product kernels to each, draw candidates from the "below" mixture and keep the one that maximizes
//! `log l(x) - log g(x)`.
//!
//! Defaults follow Optuna's TPE: 10 random start-up trials, `gamma(n) = min(ceil(0.1 n), 25)`, 24
//! candidates, a prior component N(0.5, 1) of weight 1, and per-dimension bandwidths from the gaps to the
//! sorted neighbouring observations, clipped
//! below, and truncated-Gaussian kernels on the unit interval. An inactive coordinate makes that kernel
//! uniform in that dimension, so conditional parameters are handled without a separate tree.

use rand::Rng;

use super::{Context, Sampler, encode_history, random_point};
use crate::error::Result;
use crate::linalg::norm_cdf;
use crate::space::{Domain, Params, Space};

/// TPE settings.
#[derive(Debug, Clone)]
pub struct TpeSampler {
    /// Random trials before the model is used.
    pub n_startup: usize,
    /// Candidates drawn from `l(x)` per suggestion.
    pub n_candidates: usize,
}

impl Default for TpeSampler {
    fn default() -> Self {
        TpeSampler {
            n_startup: 10,
            n_candidates: 24,
        }
    }
}

/// A Parzen mixture of product kernels in the unit cube.
struct Parzen<'a> {
    space: &'a Space,
    centers: Vec<&'a [f64]>,
    /// Bandwidth per component (the prior last) and dimension (numeric dimensions).
    sigma: Vec<Vec<f64>>,
    /// Per-dimension probability mass on the kernel's own category (categorical dimensions).
    keep: Vec<f64>,
    /// log of per-component weight: observations have weight 1, and the prior (index len) too.
    log_w: f64,
}

fn categories(d: &Domain) -> Option<usize> {
    match d {
        Domain::Categorical { choices } => Some(choices.len()),
        _ => None,
    }
}

impl<'a> Parzen<'a> {
    fn new(space: &'a Space, centers: Vec<&'a [f64]>) -> Self {
        let n = centers.len();
        let d = space.dim();
        // Optuna's rule per dimension: the larger gap to the sorted neighbours (the cube's ends count, except
        // for the outermost points), clipped to [1 / min(100, kernels + 1), 1]; the prior gets 1.
        let mut sigma = vec![vec![1.0; d]; n + 1];
        for (j, p) in space.params.iter().enumerate() {
            let mut idx: Vec<usize> = (0..n).filter(|&i| !centers[i][j].is_nan()).collect();
            idx.sort_by(|&a, &b| centers[a][j].total_cmp(&centers[b][j]));
            let m = idx.len();
            let mut ends = Vec::with_capacity(m + 2);
            ends.push(0.0);
            ends.extend(idx.iter().map(|&i| centers[i][j]));
            ends.push(1.0);
            let min_sigma = {
                let clip = 1.0 / (100.0f64).min(2.0 + m as f64);
                match p.domain.cardinality() {
                    Some(k) if categories(&p.domain).is_none() => clip.max(0.5 / k as f64),
                    _ => clip,
                }
            };
            for (r, &i) in idx.iter().enumerate() {
                let mut g = (ends[r + 1] - ends[r]).max(ends[r + 2] - ends[r + 1]);
                if m >= 2 && r == 0 {
                    g = ends[2] - ends[1];
                } else if m >= 2 && r == m - 1 {
                    g = ends[m] - ends[m - 1];
                }
                sigma[i][j] = g.clamp(min_sigma, 1.0);
            }
        }
        let keep = space
            .params
            .iter()
            .map(|p| match categories(&p.domain) {
                // Optuna-like: the own category holds most of the mass, the prior smooths the rest.
                Some(k) => 0.5 + 0.5 / k as f64,
                None => 1.0,
            })
            .collect();
        Parzen {
            space,
            centers,
            sigma,
            keep,
            log_w: -((n + 1) as f64).ln(),
        }
    }

    /// log density of component `c` (index `centers.len()` is the prior) at `x`, in dimension `j`.
    fn log_kernel(&self, c: usize, j: usize, x: f64) -> f64 {
        let center = self.centers.get(c).map_or(0.5, |row| row[j]);
        if center.is_nan() || x.is_nan() {
            return 0.0;
        }
        let is_prior = c == self.centers.len();
        match categories(&self.space.params[j].domain) {
            Some(_) if is_prior => 0.0,
            Some(k) => {
                let same = ((x * k as f64) as usize).min(k - 1)
                    == ((center * k as f64) as usize).min(k - 1);
                let p = if same {
                    self.keep[j]
                } else {
                    (1.0 - self.keep[j]) / (k - 1).max(1) as f64
                };
                // A density over [0,1]: each category is a 1/k-wide cell.
                (p * k as f64).max(1e-300).ln()
            }
            None => {
                let s = self.sigma[c][j];
                let z = (x - center) / s;
                let mass = (norm_cdf((1.0 - center) / s) - norm_cdf(-center / s)).max(1e-300);
                -0.5 * z * z - (s * (2.0 * std::f64::consts::PI).sqrt()).ln() - mass.ln()
            }
        }
    }

    fn log_pdf(&self, x: &[f64]) -> f64 {
        let m = self.centers.len() + 1;
        let logs: Vec<f64> = (0..m)
            .map(|c| {
                (0..x.len())
                    .map(|j| self.log_kernel(c, j, x[j]))
                    .sum::<f64>()
                    + self.log_w
            })
            .collect();
        log_sum_exp(&logs)
    }

    fn sample(&self, rng: &mut impl Rng) -> Vec<f64> {
        let c = rng.random_range(0..=self.centers.len());
        let Some(center) = self.centers.get(c) else {
            // The prior: N(0.5, 1) truncated to the cube, uniform over categories.
            return (0..self.space.dim())
                .map(|j| match categories(&self.space.params[j].domain) {
                    Some(_) => rng.random::<f64>(),
                    None => truncated_normal(rng, 0.5, 1.0),
                })
                .collect();
        };
        (0..self.space.dim())
            .map(|j| {
                let mu = center[j];
                if mu.is_nan() {
                    return rng.random::<f64>();
                }
                match categories(&self.space.params[j].domain) {
                    Some(k) => {
                        let own = ((mu * k as f64) as usize).min(k - 1);
                        let cat = if rng.random::<f64>() < self.keep[j] || k == 1 {
                            own
                        } else {
                            let mut o = rng.random_range(0..k - 1);
                            if o >= own {
                                o += 1;
                            }
                            o
                        };
                        (cat as f64 + 0.5) / k as f64
                    }
                    None => truncated_normal(rng, mu, self.sigma[c][j]),
                }
            })
            .collect()
    }
}

/// A draw from N(mu, s) truncated to [0, 1] (rejection, then clipping as a last resort).
pub(crate) fn truncated_normal(rng: &mut impl Rng, mu: f64, s: f64) -> f64 {
    for _ in 0..64 {
        let x = mu + s * gaussian(rng);
        if (0.0..=1.0).contains(&x) {
            return x;
        }
    }
    mu.clamp(0.0, 1.0)
}

/// A standard normal draw (Box-Muller).
pub(crate) fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub(crate) fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

impl Sampler for TpeSampler {
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params> {
        let mut rng = ctx.rng(2);
        let (xs, ys) = encode_history(ctx.space, ctx.history);
        if xs.len() < self.n_startup.max(2) {
            return Ok(ctx.space.decode(&random_point(&mut rng, ctx.space.dim())));
        }
        let mut order: Vec<usize> = (0..ys.len()).collect();
        order.sort_by(|&a, &b| ys[a].total_cmp(&ys[b]));
        let n_below = ((0.1 * ys.len() as f64).ceil() as usize).clamp(1, 25);
        let below: Vec<&[f64]> = order[..n_below].iter().map(|&i| xs[i].as_slice()).collect();
        let above: Vec<&[f64]> = order[n_below..].iter().map(|&i| xs[i].as_slice()).collect();
        let l = Parzen::new(ctx.space, below);
        let g = Parzen::new(ctx.space, above);
        let mut best = (f64::NEG_INFINITY, Vec::new());
        for _ in 0..self.n_candidates {
            let x = l.sample(&mut rng);
            let score = l.log_pdf(&x) - g.log_pdf(&x);
            if score > best.0 || best.1.is_empty() {
                best = (score, x);
            }
        }
        Ok(ctx.space.decode(&best.1))
    }
}
