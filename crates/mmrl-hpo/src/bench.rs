//! The sampler benchmark: standard test functions (the definitions and domains of
//! `shared/bench/hpo/functions.py`), median simple regret over seeds after 25/50/100/200 trials, and the
//! mean time per suggestion.

use std::f64::consts::{E, PI};
use std::time::Instant;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::sampler::{Context, Observation, SamplerKind};
use crate::space::Space;

/// A test function: bounds, the function, its known minimum.
#[derive(Debug, Clone, Copy)]
pub struct TestFunction {
    /// Name (branin, hartmann6, rosenbrock4, ackley5).
    pub name: &'static str,
    /// Bounds per dimension.
    pub bounds: &'static [(f64, f64)],
    /// The function.
    pub f: fn(&[f64]) -> f64,
    /// Its global minimum.
    pub minimum: f64,
}

fn branin(x: &[f64]) -> f64 {
    let (x1, x2) = (x[0], x[1]);
    let (a, b, c, r, s, t) = (
        1.0,
        5.1 / (4.0 * PI * PI),
        5.0 / PI,
        6.0,
        10.0,
        1.0 / (8.0 * PI),
    );
    a * (x2 - b * x1 * x1 + c * x1 - r).powi(2) + s * (1.0 - t) * x1.cos() + s
}

const A6: [[f64; 6]; 4] = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
];
const P6: [[f64; 6]; 4] = [
    [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
    [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
    [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
    [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
];
const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];

fn hartmann6(x: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..4 {
        let e: f64 = (0..6)
            .map(|j| A6[i][j] * (x[j] - P6[i][j] * 1e-4).powi(2))
            .sum();
        s -= ALPHA[i] * (-e).exp();
    }
    s
}

fn rosenbrock(x: &[f64]) -> f64 {
    (0..x.len() - 1)
        .map(|i| 100.0 * (x[i + 1] - x[i] * x[i]).powi(2) + (1.0 - x[i]).powi(2))
        .sum()
}

fn ackley(x: &[f64]) -> f64 {
    let d = x.len() as f64;
    -20.0 * (-0.2 * (x.iter().map(|v| v * v).sum::<f64>() / d).sqrt()).exp()
        - (x.iter().map(|v| (2.0 * PI * v).cos()).sum::<f64>() / d).exp()
        + 20.0
        + E
}

/// The benchmark functions.
pub const FUNCTIONS: [TestFunction; 4] = [
    TestFunction {
        name: "branin",
        bounds: &[(-5.0, 10.0), (0.0, 15.0)],
        f: branin,
        minimum: 0.397887,
    },
    TestFunction {
        name: "hartmann6",
        bounds: &[(0.0, 1.0); 6],
        f: hartmann6,
        minimum: -3.32237,
    },
    TestFunction {
        name: "rosenbrock4",
        bounds: &[(-2.0, 2.0); 4],
        f: rosenbrock,
        minimum: 0.0,
    },
    TestFunction {
        name: "ackley5",
        bounds: &[(-32.768, 32.768); 5],
        f: ackley,
        minimum: 0.0,
    },
];

/// Looks a function up by name.
pub fn function(name: &str) -> Result<TestFunction> {
    FUNCTIONS
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            Error::Config(format!(
                "unknown function {name:?}: expected branin, hartmann6, rosenbrock4 or ackley5"
            ))
        })
}

/// Regret trajectory of one run: best-so-far minus the minimum after each trial, and total suggest time.
pub fn run_once(
    f: &TestFunction,
    sampler: SamplerKind,
    trials: usize,
    seed: u64,
) -> Result<(Vec<f64>, f64)> {
    let space = Space::floats(f.bounds);
    let mut s = sampler.build(&space)?;
    let mut history: Vec<Observation> = Vec::with_capacity(trials);
    let mut best = f64::INFINITY;
    let mut regrets = Vec::with_capacity(trials);
    let mut spent = 0.0;
    for t in 0..trials as u64 {
        let ctx = Context {
            space: &space,
            history: &history,
            trial: t,
            seed,
        };
        let start = Instant::now();
        let params = s.suggest(&ctx)?;
        spent += start.elapsed().as_secs_f64();
        let x: Vec<f64> = (0..f.bounds.len())
            .map(|i| {
                params
                    .get(&format!("x{i}"))
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN)
            })
            .collect();
        let y = (f.f)(&x);
        best = best.min(y);
        regrets.push(best - f.minimum);
        history.push(Observation {
            number: t,
            params,
            loss: y,
        });
    }
    Ok((regrets, spent))
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One JSON line for (function, sampler) in the format (and key order) of `run_optuna.py`.
pub fn bench(f: &TestFunction, sampler: SamplerKind, trials: usize, seeds: u64) -> Result<String> {
    let checkpoints: Vec<usize> = [25, 50, 100, 200]
        .into_iter()
        .filter(|c| *c <= trials)
        .collect();
    let mut at: Vec<Vec<f64>> = vec![Vec::new(); checkpoints.len()];
    let mut overhead = Vec::new();
    for seed in 0..seeds {
        let (regrets, spent) = run_once(f, sampler, trials, seed)?;
        for (k, c) in checkpoints.iter().enumerate() {
            at[k].push(regrets[c - 1]);
        }
        overhead.push(spent / trials as f64 * 1000.0);
    }
    let num = |v: f64| Value::from(v).to_string();
    let mut line = format!(
        "{{\"function\": {}, \"sampler\": {}, \"seeds\": {seeds}",
        Value::from(f.name),
        Value::from(sampler.name())
    );
    for (k, c) in checkpoints.iter().enumerate() {
        line.push_str(&format!(
            ", \"median_regret@{c}\": {}",
            num(round(median(&mut at[k]), 6))
        ));
    }
    let mean = overhead.iter().sum::<f64>() / overhead.len().max(1) as f64;
    line.push_str(&format!(", \"ms_per_suggest\": {}}}", num(round(mean, 3))));
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_reach_their_known_minima() {
        let cases: [(&str, Vec<f64>); 4] = [
            ("branin", vec![PI, 2.275]),
            (
                "hartmann6",
                vec![0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573],
            ),
            ("rosenbrock4", vec![1.0; 4]),
            ("ackley5", vec![0.0; 5]),
        ];
        for (name, x) in cases {
            let f = function(name).unwrap_or(FUNCTIONS[0]);
            assert!(((f.f)(&x) - f.minimum).abs() < 1e-4, "{name}");
        }
    }
}
