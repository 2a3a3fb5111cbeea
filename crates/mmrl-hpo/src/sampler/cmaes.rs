//! CMA-ES (Hansen's (mu/mu_w, lambda) tutorial algorithm) over the unit cube, as ask/tell over a history.
//!
//! Finished trials are consumed in trial-number order; every `lambda` of them make one generation and
//! update the mean, step size and covariance. Samples outside the cube are redrawn (then clipped).
//! Integers and categoricals are searched through their continuous relaxation; for mixed spaces `ga` or
//! `gp` suit better. The state is rebuilt from the history alone, so a resumed study continues the same run.

use std::collections::BTreeSet;

use super::tpe::gaussian;
use super::{Context, Sampler};
use crate::error::Result;
use crate::linalg::symmetric_eigen;
use crate::space::{Params, Space};

/// CMA-ES state.
#[derive(Debug, Clone)]
pub struct CmaEsSampler {
    n: usize,
    lambda: usize,
    mu: usize,
    weights: Vec<f64>,
    mueff: f64,
    cc: f64,
    cs: f64,
    c1: f64,
    cmu: f64,
    damps: f64,
    chi_n: f64,
    mean: Vec<f64>,
    sigma: f64,
    c: Vec<f64>,
    b: Vec<f64>,
    d: Vec<f64>,
    pc: Vec<f64>,
    ps: Vec<f64>,
    generation: u64,
    consumed: BTreeSet<u64>,
    pending: Vec<(Vec<f64>, f64)>,
}

impl CmaEsSampler {
    /// A fresh run centred in the cube with step size 0.2 (a fifth of each range), population
    /// `4 + floor(3 ln d)`.
    pub fn new(space: &Space) -> Self {
        let n = space.dim().max(1);
        let nf = n as f64;
        let lambda = 4 + (3.0 * nf.ln()).floor() as usize;
        let mu = lambda / 2;
        let raw: Vec<f64> = (0..mu)
            .map(|i| ((lambda as f64 + 1.0) / 2.0).ln() - ((i + 1) as f64).ln())
            .collect();
        let sum: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / sum).collect();
        let mueff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let cc = (4.0 + mueff / nf) / (nf + 4.0 + 2.0 * mueff / nf);
        let cs = (mueff + 2.0) / (nf + mueff + 5.0);
        let c1 = 2.0 / ((nf + 1.3).powi(2) + mueff);
        let cmu = (1.0 - c1).min(2.0 * (mueff - 2.0 + 1.0 / mueff) / ((nf + 2.0).powi(2) + mueff));
        let damps = 1.0 + 2.0 * (0.0f64).max(((mueff - 1.0) / (nf + 1.0)).sqrt() - 1.0) + cs;
        let chi_n = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        let mut eye = vec![0.0; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        CmaEsSampler {
            n,
            lambda,
            mu,
            weights,
            mueff,
            cc,
            cs,
            c1,
            cmu,
            damps,
            chi_n,
            mean: vec![0.5; n],
            sigma: 0.2,
            c: eye.clone(),
            b: eye,
            d: vec![1.0; n],
            pc: vec![0.0; n],
            ps: vec![0.0; n],
            generation: 0,
            consumed: BTreeSet::new(),
            pending: Vec::new(),
        }
    }

    /// The current mean (unit cube).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    fn update(&mut self, mut gen_: Vec<(Vec<f64>, f64)>) {
        let n = self.n;
        gen_.sort_by(|a, b| a.1.total_cmp(&b.1));
        let old = self.mean.clone();
        let ys: Vec<Vec<f64>> = gen_
            .iter()
            .take(self.mu)
            .map(|(x, _)| {
                x.iter()
                    .zip(&old)
                    .map(|(a, m)| (a - m) / self.sigma)
                    .collect()
            })
            .collect();
        let mut yw = vec![0.0; n];
        for (w, y) in self.weights.iter().zip(&ys) {
            for i in 0..n {
                yw[i] += w * y[i];
            }
        }
        for i in 0..n {
            self.mean[i] = old[i] + self.sigma * yw[i];
        }
        // C^-1/2 yw = B D^-1 B^T yw
        let bty: Vec<f64> = (0..n)
            .map(|j| (0..n).map(|i| self.b[i * n + j] * yw[i]).sum::<f64>() / self.d[j])
            .collect();
        let inv_sqrt_y: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| self.b[i * n + j] * bty[j]).sum())
            .collect();
        let csn = (self.cs * (2.0 - self.cs) * self.mueff).sqrt();
        for (p, y) in self.ps.iter_mut().zip(&inv_sqrt_y) {
            *p = (1.0 - self.cs) * *p + csn * y;
        }
        let ps_norm = self.ps.iter().map(|v| v * v).sum::<f64>().sqrt();
        self.generation += 1;
        let hsig =
            ps_norm / (1.0 - (1.0 - self.cs).powi(2 * self.generation as i32)).sqrt() / self.chi_n
                < 1.4 + 2.0 / (n as f64 + 1.0);
        let ccn = (self.cc * (2.0 - self.cc) * self.mueff).sqrt();
        for (p, y) in self.pc.iter_mut().zip(&yw) {
            *p = (1.0 - self.cc) * *p + if hsig { ccn * y } else { 0.0 };
        }
        let dh = if hsig { 0.0 } else { self.cc * (2.0 - self.cc) };
        for i in 0..n {
            for j in 0..n {
                let rank_mu: f64 = self
                    .weights
                    .iter()
                    .zip(&ys)
                    .map(|(w, y)| w * y[i] * y[j])
                    .sum();
                self.c[i * n + j] = (1.0 - self.c1 - self.cmu) * self.c[i * n + j]
                    + self.c1 * (self.pc[i] * self.pc[j] + dh * self.c[i * n + j])
                    + self.cmu * rank_mu;
            }
        }
        self.sigma *= ((self.cs / self.damps) * (ps_norm / self.chi_n - 1.0)).exp();
        self.sigma = self.sigma.clamp(1e-12, 1.0);
        let (w, v) = symmetric_eigen(&self.c, n);
        self.d = w.iter().map(|x| x.max(1e-20).sqrt()).collect();
        self.b = v;
    }
}

impl Sampler for CmaEsSampler {
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params> {
        let mut fresh: Vec<_> = ctx
            .history
            .iter()
            .filter(|o| o.loss.is_finite() && !self.consumed.contains(&o.number))
            .collect();
        fresh.sort_by_key(|o| o.number);
        for o in fresh {
            self.consumed.insert(o.number);
            let x: Vec<f64> = ctx
                .space
                .encode(&o.params)
                .into_iter()
                .map(|v| if v.is_nan() { 0.5 } else { v })
                .collect();
            if x.len() == self.n {
                self.pending.push((x, o.loss));
            }
            if self.pending.len() >= self.lambda {
                let gen_ = std::mem::take(&mut self.pending);
                self.update(gen_);
            }
        }
        let mut rng = ctx.rng(4);
        let n = self.n;
        let mut x = vec![0.0; n];
        for _attempt in 0..100 {
            let z: Vec<f64> = (0..n).map(|j| self.d[j] * gaussian(&mut rng)).collect();
            for (i, xi) in x.iter_mut().enumerate() {
                *xi = self.mean[i]
                    + self.sigma * (0..n).map(|j| self.b[i * n + j] * z[j]).sum::<f64>();
            }
            if x.iter().all(|v| (0.0..=1.0).contains(v)) {
                break;
            }
        }
        for v in x.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
        Ok(ctx.space.decode(&x[..ctx.space.dim().min(n)]))
    }
}
