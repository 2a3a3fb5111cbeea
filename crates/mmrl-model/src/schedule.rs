//! Learning-rate schedules with serializable state, so a resumed run continues the same curve.
//!
//! burn's schedulers cover constant, linear, cosine and composed curves but not reduce-on-plateau, and
//! their state would need its own record; these four are small enough to keep here as plain functions of
//! the step plus a tiny plateau state saved in the checkpoint.

use serde::{Deserialize, Serialize};

use crate::error::{Result, config_err};

/// Which schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr` throughout.
    Constant,
    /// Linear warmup from 0 over `warmup_steps`, then cosine annealing to `min_lr` at the last step.
    WarmupCosine,
    /// Linear warmup, then cosine from `lr` to `min_lr` over `restart_steps`, restarting (SGDR), each cycle
    /// `restart_mult` times longer than the previous.
    CosineRestarts,
    /// Warmup, then `lr` multiplied by `plateau_factor` whenever the val metric has not improved for
    /// `plateau_patience` evaluations, never below `min_lr`.
    Plateau,
}

/// Schedule parameters (`[stages.sft.params.schedule]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// The schedule.
    pub kind: ScheduleKind,
    /// Linear warmup steps (all kinds but constant).
    pub warmup_steps: u64,
    /// Floor of the learning rate.
    pub min_lr: f64,
    /// First cycle length of `cosine_restarts`.
    pub restart_steps: u64,
    /// Growth of each cycle of `cosine_restarts` (1 or more).
    pub restart_mult: u64,
    /// Multiplier of `plateau` on a plateau, in (0, 1).
    pub plateau_factor: f64,
    /// Evaluations without improvement before `plateau` lowers the rate.
    pub plateau_patience: u32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::WarmupCosine,
            warmup_steps: 50,
            min_lr: 1e-5,
            restart_steps: 500,
            restart_mult: 1,
            plateau_factor: 0.5,
            plateau_patience: 2,
        }
    }
}

impl ScheduleConfig {
    /// Checks the ranges; `lr` is the peak rate.
    pub fn validate(&self, lr: f64) -> Result<()> {
        if !(0.0..=lr).contains(&self.min_lr) {
            return Err(config_err(
                "schedule.min_lr",
                format!("must be in [0, lr = {lr}], got {}", self.min_lr),
            ));
        }
        if self.restart_steps == 0 {
            return Err(config_err("schedule.restart_steps", "must be at least 1"));
        }
        if self.restart_mult == 0 {
            return Err(config_err("schedule.restart_mult", "must be at least 1"));
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor < 1.0) {
            return Err(config_err(
                "schedule.plateau_factor",
                format!("must be in (0, 1), got {}", self.plateau_factor),
            ));
        }
        Ok(())
    }
}

/// The mutable part of a schedule (only `plateau` has any), saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Current multiplier of the peak rate (plateau).
    pub scale: f64,
    /// Best val metric seen (plateau).
    pub best: Option<f64>,
    /// Evaluations since the best (plateau).
    pub bad_evals: u32,
}

impl Default for ScheduleState {
    fn default() -> Self {
        Self {
            scale: 1.0,
            best: None,
            bad_evals: 0,
        }
    }
}

/// A schedule over `total_steps` optimizer steps with peak rate `lr`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Parameters.
    pub config: ScheduleConfig,
    /// Peak rate.
    pub lr: f64,
    /// Planned optimizer steps.
    pub total_steps: u64,
    /// Mutable state.
    pub state: ScheduleState,
}

fn cosine(from: f64, to: f64, t: f64) -> f64 {
    to + 0.5 * (from - to) * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos())
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let c = &self.config;
        let warm = c.warmup_steps;
        let warmup = |lr: f64| {
            if step < warm {
                lr * (step + 1) as f64 / warm as f64
            } else {
                lr
            }
        };
        match c.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::WarmupCosine => {
                if step < warm {
                    return warmup(self.lr);
                }
                let span = self.total_steps.saturating_sub(warm).max(1);
                cosine(self.lr, c.min_lr, (step - warm) as f64 / span as f64)
            }
            ScheduleKind::CosineRestarts => {
                if step < warm {
                    return warmup(self.lr);
                }
                let (mut t, mut len) = (step - warm, c.restart_steps);
                while t >= len {
                    t -= len;
                    len = len.saturating_mul(c.restart_mult);
                }
                cosine(self.lr, c.min_lr, t as f64 / len as f64)
            }
            ScheduleKind::Plateau => warmup((self.lr * self.state.scale).max(c.min_lr)),
        }
    }

    /// Feeds one val evaluation (higher is better) to `plateau`; other kinds ignore it.
    pub fn observe(&mut self, metric: f64) {
        if self.config.kind != ScheduleKind::Plateau {
            return;
        }
        let s = &mut self.state;
        if s.best.is_none_or(|b| metric > b) {
            s.best = Some(metric);
            s.bad_evals = 0;
        } else {
            s.bad_evals += 1;
            if s.bad_evals >= self.config.plateau_patience {
                s.scale *= self.config.plateau_factor;
                s.bad_evals = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind) -> Schedule {
        let config = ScheduleConfig {
            kind,
            warmup_steps: 10,
            min_lr: 0.1,
            restart_steps: 20,
            restart_mult: 2,
            plateau_factor: 0.5,
            plateau_patience: 2,
        };
        Schedule {
            config,
            lr: 1.0,
            total_steps: 110,
            state: ScheduleState::default(),
        }
    }

    fn check(kind: ScheduleKind, expected: &[(u64, f64)]) {
        let s = schedule(kind);
        for &(step, lr) in expected {
            assert!(
                (s.lr(step) - lr).abs() < 1e-9,
                "{kind:?} step {step}: {} != {lr}",
                s.lr(step)
            );
        }
    }

    #[test]
    fn schedules_follow_their_curves() {
        check(ScheduleKind::Constant, &[(0, 1.0), (500, 1.0)]);
        check(
            ScheduleKind::WarmupCosine,
            &[
                (0, 0.1),
                (4, 0.5),
                (10, 1.0),
                (60, 0.55),
                (110, 0.1),
                (500, 0.1),
            ],
        );
        // Cycles of 20 then 40 steps after warmup: restarts at 10 + 20 = 30 and 30 + 40 = 70.
        check(
            ScheduleKind::CosineRestarts,
            &[(10, 1.0), (20, 0.55), (30, 1.0), (50, 0.55), (70, 1.0)],
        );
    }

    #[test]
    fn plateau_halves_after_patience_and_respects_the_floor() {
        let mut s = schedule(ScheduleKind::Plateau);
        s.observe(0.5);
        s.observe(0.4);
        assert_eq!(s.lr(50), 1.0);
        s.observe(0.4);
        assert_eq!(s.lr(50), 0.5);
        for _ in 0..20 {
            s.observe(0.0);
        }
        assert_eq!(s.lr(50), 0.1);
    }
}
