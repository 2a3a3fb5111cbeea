//! Grid search: the cartesian product of per-parameter value lists, conditional parameters expanded only
//! under the parent values that activate them; draw `n` ([`Context::trial`], retries of interrupted trials
//! excluded) takes combination `n`.

use std::collections::BTreeSet;

use super::{Context, Sampler};
use crate::error::{Error, Result};
use crate::space::{Domain, Params, Space};

/// Points per float (and per int with more values than this) axis.
pub const DEFAULT_POINTS: usize = 5;

/// Refuse grids larger than this.
pub const MAX_GRID: usize = 1_000_000;

/// Enumerates a grid once and hands it out in order.
#[derive(Debug, Clone)]
pub struct GridSampler {
    points: Vec<Params>,
}

fn axis(domain: &Domain, points: usize) -> Vec<f64> {
    match domain.cardinality() {
        Some(k) if k as usize <= points.max(2) * 2 => (0..k)
            .map(|i| (i as f64 + 0.5) / k as f64)
            .map(|u| domain.snap(u))
            .collect(),
        _ => {
            let m = points.max(2);
            let mut us: Vec<f64> = (0..m)
                .map(|i| domain.snap(i as f64 / (m - 1) as f64))
                .collect();
            us.dedup();
            us
        }
    }
}

impl GridSampler {
    /// The grid of `space` with `points` values per continuous axis.
    pub fn new(space: &Space, points: usize) -> Result<Self> {
        let axes: Vec<Vec<f64>> = space
            .params
            .iter()
            .map(|p| axis(&p.domain, points))
            .collect();
        let mut partial: Vec<Vec<f64>> = vec![Vec::new()];
        for (i, _) in space.params.iter().enumerate() {
            let mut next = Vec::new();
            for u in partial {
                let mut probe = u.clone();
                probe.push(0.5);
                probe.resize(space.dim(), 0.5);
                if space.active(&probe)[i] {
                    for &a in &axes[i] {
                        let mut v = u.clone();
                        v.push(a);
                        next.push(v);
                    }
                } else {
                    let mut v = u;
                    v.push(f64::NAN);
                    next.push(v);
                }
                if next.len() > MAX_GRID {
                    return Err(Error::Config(format!(
                        "the grid has more than {MAX_GRID} points: use fewer parameters or another sampler"
                    )));
                }
            }
            partial = next;
        }
        let mut seen = BTreeSet::new();
        let points = partial
            .iter()
            .map(|u| space.decode(u))
            .filter(|p| seen.insert(serde_json::to_string(p).unwrap_or_default()))
            .collect();
        Ok(GridSampler { points })
    }

    /// The grid points in order.
    pub fn points(&self) -> &[Params] {
        &self.points
    }
}

impl Sampler for GridSampler {
    fn suggest(&mut self, ctx: &Context<'_>) -> Result<Params> {
        let n = self.points.len() as u64;
        // ctx.trial counts draws, not trial numbers, so a retried trial neither skips nor repeats a point.
        // Past the end (only when more trials than points were asked for), start over.
        Ok(self.points[(ctx.trial % n) as usize].clone())
    }

    fn budget(&self, _space: &Space) -> Option<u64> {
        Some(self.points.len() as u64)
    }
}
