//! Seeded bootstrap: percentile confidence intervals of any [`Metric`] and the paired bootstrap test of
//! two models scored on the same samples.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::metrics::{Metric, Scored};

/// The `q`-th quantile (0..=1) of sorted values with linear interpolation (numpy's default `percentile`
/// method); `None` for no values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// A stable 64-bit seed for a named purpose (FNV-1a of the name mixed with the stage seed), so each
/// interval has its own stream and adding one never shifts another.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn resample_indices(rng: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
    (0..n).map(|_| rng.random_range(0..n)).collect()
}

/// A percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

/// Percentile bootstrap interval of `metric` at `level` (e.g. 0.95) from `samples` resamples of the rows,
/// drawn with ChaCha8 seeded by `seed`. `None` when there are no rows, no samples, or the metric is
/// undefined on every resample.
pub fn bootstrap_ci(
    rows: &[Scored],
    metric: &dyn Metric,
    samples: usize,
    level: f64,
    seed: u64,
) -> Option<Interval> {
    if rows.is_empty() || samples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(samples);
    let mut buf = Vec::with_capacity(rows.len());
    for _ in 0..samples {
        buf.clear();
        buf.extend(
            resample_indices(&mut rng, rows.len())
                .into_iter()
                .map(|i| rows[i].clone()),
        );
        if let Some(v) = metric.compute(&buf) {
            values.push(v);
        }
    }
    values.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Some(Interval {
        lo: quantile(&values, alpha)?,
        hi: quantile(&values, 1.0 - alpha)?,
    })
}

/// The paired bootstrap test of model A against model B on the same samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedTest {
    /// `metric(A) - metric(B)` on the full set.
    pub delta: f64,
    /// Percentile interval of the resampled deltas.
    pub ci: Interval,
    /// Two-sided p-value of "no difference": `(1 + #{b : |delta_b - delta| >= |delta|}) / (1 + B)`, the
    /// resampled deltas centred on the observed one standing in for the null distribution.
    pub p_value: f64,
    /// Resamples.
    pub samples: usize,
}

/// Paired bootstrap of `metric(a) - metric(b)`: both models are resampled with the same indices. `a` and `b`
/// must be aligned (row `i` of both is the same sample); `None` when they differ in length or are empty.
pub fn paired_bootstrap(
    a: &[Scored],
    b: &[Scored],
    metric: &dyn Metric,
    samples: usize,
    level: f64,
    seed: u64,
) -> Option<PairedTest> {
    if a.len() != b.len() || a.is_empty() || samples == 0 {
        return None;
    }
    let delta = metric.compute(a)? - metric.compute(b)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut deltas = Vec::with_capacity(samples);
    let (mut ra, mut rb) = (Vec::with_capacity(a.len()), Vec::with_capacity(a.len()));
    for _ in 0..samples {
        ra.clear();
        rb.clear();
        for i in resample_indices(&mut rng, a.len()) {
            ra.push(a[i].clone());
            rb.push(b[i].clone());
        }
        if let (Some(x), Some(y)) = (metric.compute(&ra), metric.compute(&rb)) {
            deltas.push(x - y);
        }
    }
    let extreme = deltas
        .iter()
        .filter(|&&d| (d - delta).abs() >= delta.abs())
        .count();
    let p_value = (1 + extreme) as f64 / (1 + deltas.len()) as f64;
    deltas.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Some(PairedTest {
        delta,
        ci: Interval {
            lo: quantile(&deltas, alpha)?,
            hi: quantile(&deltas, 1.0 - alpha)?,
        },
        p_value: p_value.min(1.0),
        samples: deltas.len(),
    })
}
