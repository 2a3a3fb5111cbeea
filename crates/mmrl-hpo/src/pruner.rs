//! Pruners: stop poor trials early from their intermediate values (median rule, asynchronous successive
//! halving, Hyperband). Decisions are pure functions of the completed trials so far, so they are easy to
//! test and a resumed study decides the same way given the same completed trials. One exception: Hyperband
//! assigns brackets by trial number, and a retried interrupted trial takes a new number, so it may run in
//! another bracket than the interrupted attempt.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{TrialRecord, TrialState};

/// Whether larger or smaller objective values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Larger is better.
    #[default]
    Maximize,
    /// Smaller is better.
    Minimize,
}

impl Direction {
    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Maximize => a > b,
            Direction::Minimize => a < b,
        }
    }

    /// The value as a loss (lower is better).
    pub fn loss(self, v: f64) -> f64 {
        match self {
            Direction::Maximize => -v,
            Direction::Minimize => v,
        }
    }
}

/// Pruner configuration (`pruner = { kind = "median", ... }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PrunerConfig {
    /// Never prune.
    None,
    /// Prune when the trial's best intermediate value so far is worse than the median of other finished
    /// trials' values at the same step.
    Median {
        /// Finished trials needed before pruning starts.
        #[serde(default = "five")]
        n_startup_trials: usize,
        /// Steps below this are never pruned.
        #[serde(default)]
        n_warmup_steps: u64,
    },
    /// Asynchronous successive halving: at rung `k` (step `min_resource * eta^(s + k)`), a trial goes on
    /// only if it is in the best `1/eta` of the trials that reached that rung.
    Asha {
        /// First rung's step.
        #[serde(default = "one")]
        min_resource: u64,
        /// Reduction factor `eta` (2 or more).
        #[serde(default = "three")]
        reduction_factor: u64,
        /// `s`: skip the first rungs.
        #[serde(default)]
        min_early_stopping_rate: u32,
    },
    /// Hyperband: trials are spread over ASHA brackets with `s = 0..n_brackets` (by trial number), each
    /// bracket compared only with itself.
    Hyperband {
        /// Smallest rung's step.
        #[serde(default = "one")]
        min_resource: u64,
        /// The largest step a trial reports (e.g. the epochs).
        max_resource: u64,
        /// Reduction factor `eta` (2 or more).
        #[serde(default = "three")]
        reduction_factor: u64,
    },
}

fn one() -> u64 {
    1
}
fn three() -> u64 {
    3
}
fn five() -> usize {
    5
}

impl Default for PrunerConfig {
    fn default() -> Self {
        PrunerConfig::Median {
            n_startup_trials: 5,
            n_warmup_steps: 0,
        }
    }
}

impl PrunerConfig {
    /// Checks the settings; messages name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("pruner: {m}")));
        match self {
            PrunerConfig::Asha {
                min_resource,
                reduction_factor,
                ..
            } => {
                if *min_resource == 0 {
                    return bad("min_resource must be at least 1");
                }
                if *reduction_factor < 2 {
                    return bad("reduction_factor must be at least 2");
                }
            }
            PrunerConfig::Hyperband {
                min_resource,
                max_resource,
                reduction_factor,
            } => {
                if *min_resource == 0 {
                    return bad("min_resource must be at least 1");
                }
                if *reduction_factor < 2 {
                    return bad("reduction_factor must be at least 2");
                }
                if max_resource < min_resource {
                    return bad("max_resource must be at least min_resource");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Hyperband's number of brackets.
    fn brackets(min_resource: u64, max_resource: u64, eta: u64) -> u32 {
        let mut n = 1;
        let mut r = min_resource;
        while r.saturating_mul(eta) <= max_resource {
            r *= eta;
            n += 1;
        }
        n
    }

    /// Whether trial `current` (its intermediate values include the latest `step`) should stop now.
    pub fn should_prune(
        &self,
        current: &TrialRecord,
        step: u64,
        trials: &[TrialRecord],
        direction: Direction,
    ) -> bool {
        match self {
            PrunerConfig::None => false,
            PrunerConfig::Median {
                n_startup_trials,
                n_warmup_steps,
            } => median(
                current,
                step,
                trials,
                direction,
                *n_startup_trials,
                *n_warmup_steps,
            ),
            PrunerConfig::Asha {
                min_resource,
                reduction_factor,
                min_early_stopping_rate,
            } => asha(
                current,
                step,
                trials,
                direction,
                *min_resource,
                *reduction_factor,
                *min_early_stopping_rate,
                |_| true,
            ),
            PrunerConfig::Hyperband {
                min_resource,
                max_resource,
                reduction_factor,
            } => {
                let n = u64::from(Self::brackets(
                    *min_resource,
                    *max_resource,
                    *reduction_factor,
                ));
                let bracket = |t: u64| (t % n) as u32;
                let mine = bracket(current.number);
                asha(
                    current,
                    step,
                    trials,
                    direction,
                    *min_resource,
                    *reduction_factor,
                    mine,
                    |t| bracket(t.number) == mine,
                )
            }
        }
    }
}

fn median(
    current: &TrialRecord,
    step: u64,
    trials: &[TrialRecord],
    direction: Direction,
    n_startup: usize,
    n_warmup: u64,
) -> bool {
    if step < n_warmup {
        return false;
    }
    let finished: Vec<&TrialRecord> = trials
        .iter()
        .filter(|t| t.number != current.number && t.state == TrialState::Complete)
        .collect();
    if finished.len() < n_startup.max(1) {
        return false;
    }
    let mut at: Vec<f64> = finished
        .iter()
        .filter_map(|t| t.intermediate.get(&step).copied())
        .filter(|v| v.is_finite())
        .collect();
    if at.is_empty() {
        return false;
    }
    at.sort_by(f64::total_cmp);
    let n = at.len();
    let med = if n % 2 == 1 {
        at[n / 2]
    } else {
        (at[n / 2 - 1] + at[n / 2]) / 2.0
    };
    let best = current
        .intermediate
        .range(..=step)
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .reduce(|a, b| if direction.better(a, b) { a } else { b });
    match best {
        Some(b) => direction.better(med, b),
        None => true,
    }
}

/// The value a trial brought to the rung at `threshold`: its first intermediate value at a step at or above.
fn rung_value(t: &TrialRecord, threshold: u64) -> Option<f64> {
    t.intermediate.range(threshold..).next().map(|(_, v)| *v)
}

#[allow(clippy::too_many_arguments)]
fn asha(
    current: &TrialRecord,
    step: u64,
    trials: &[TrialRecord],
    direction: Direction,
    min_resource: u64,
    eta: u64,
    s: u32,
    same_bracket: impl Fn(&TrialRecord) -> bool,
) -> bool {
    let previous = current
        .intermediate
        .range(..step)
        .next_back()
        .map(|(k, _)| *k);
    // The rungs this report reaches for the first time.
    let mut k = 0u32;
    loop {
        let Some(threshold) = eta
            .checked_pow(s + k)
            .and_then(|p| p.checked_mul(min_resource))
        else {
            return false;
        };
        if threshold > step {
            return false;
        }
        let newly = previous.is_none_or(|p| p < threshold);
        if newly {
            let Some(value) = rung_value(current, threshold) else {
                return false;
            };
            let mut competing: Vec<f64> = trials
                .iter()
                .filter(|t| t.number != current.number && same_bracket(t))
                .filter_map(|t| rung_value(t, threshold))
                .filter(|v| v.is_finite())
                .collect();
            competing.push(value);
            let mut losses: Vec<f64> = competing.iter().map(|v| direction.loss(*v)).collect();
            losses.sort_by(f64::total_cmp);
            let idx = (losses.len() / eta as usize).saturating_sub(1);
            if direction.loss(value) > losses[idx] {
                return true;
            }
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn trial(number: u64, state: TrialState, values: &[f64]) -> TrialRecord {
        TrialRecord {
            number,
            state,
            params: BTreeMap::new(),
            value: values.last().copied(),
            intermediate: values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64 + 1, *v))
                .collect(),
            error: None,
            started: 0.0,
            duration_s: None,
            retry_of: None,
            lost: false,
        }
    }

    /// (pruner, finished trials' curves, current curve, direction, expected decision at its last step)
    fn check(p: &PrunerConfig, others: &[&[f64]], current: &[f64], dir: Direction, expected: bool) {
        let mut trials: Vec<TrialRecord> = others
            .iter()
            .enumerate()
            .map(|(i, v)| trial(i as u64, TrialState::Complete, v))
            .collect();
        let cur = trial(others.len() as u64, TrialState::Running, current);
        trials.push(cur.clone());
        let step = current.len() as u64;
        assert_eq!(
            p.should_prune(&cur, step, &trials, dir),
            expected,
            "{p:?} {others:?} {current:?} {dir:?}"
        );
    }

    #[test]
    fn median_prunes_below_the_median_only_after_startup() {
        let m = PrunerConfig::Median {
            n_startup_trials: 3,
            n_warmup_steps: 0,
        };
        let others: [&[f64]; 3] = [&[0.5, 0.6], &[0.4, 0.7], &[0.3, 0.8]];
        check(&m, &others, &[0.2, 0.3], Direction::Maximize, true);
        check(&m, &others, &[0.9, 0.3], Direction::Maximize, false); // best so far 0.9 beats median 0.7
        check(&m, &others, &[0.2, 0.75], Direction::Maximize, false);
        check(&m, &others[..2], &[0.0, 0.0], Direction::Maximize, false); // startup
        check(&m, &others, &[0.2, 0.3], Direction::Minimize, false);
        let warm = PrunerConfig::Median {
            n_startup_trials: 1,
            n_warmup_steps: 5,
        };
        check(&warm, &others, &[0.0, 0.0], Direction::Maximize, false);
    }

    #[test]
    fn asha_keeps_the_top_third_at_each_rung() {
        let a = PrunerConfig::Asha {
            min_resource: 1,
            reduction_factor: 3,
            min_early_stopping_rate: 0,
        };
        // Rung 0 at step 1 with 6 trials: the best 2 go on.
        let others: [&[f64]; 5] = [&[0.1], &[0.2], &[0.3], &[0.4], &[0.5]];
        check(&a, &others, &[0.45], Direction::Maximize, false);
        check(&a, &others, &[0.35], Direction::Maximize, true);
        check(&a, &others, &[0.05], Direction::Minimize, false);
        check(&a, &others, &[0.25], Direction::Minimize, true);
        // Step 2 is no new rung: no decision.
        check(&a, &others, &[0.9, 0.0], Direction::Maximize, false);
        // Step 3 is rung 1: alone there, it goes on.
        check(&a, &others, &[0.9, 0.0, 0.0], Direction::Maximize, false);
    }

    #[test]
    fn hyperband_compares_within_a_bracket() {
        let h = PrunerConfig::Hyperband {
            min_resource: 1,
            max_resource: 9,
            reduction_factor: 3,
        };
        // 3 brackets; trial 6 is in bracket 0 with trials 0 and 3 only.
        let others: [&[f64]; 6] = [&[0.9], &[0.1], &[0.1], &[0.8], &[0.1], &[0.1]];
        check(&h, &others, &[0.5], Direction::Maximize, true);
        check(&h, &others, &[0.95], Direction::Maximize, false);
        assert_eq!(PrunerConfig::brackets(1, 9, 3), 3);
        assert!(
            PrunerConfig::Hyperband {
                min_resource: 4,
                max_resource: 2,
                reduction_factor: 3
            }
            .validate()
            .is_err()
        );
    }
}
