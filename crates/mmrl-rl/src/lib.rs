//! mmrl-rl: reinforcement-learning fine-tuning of the sft model as a policy that generates answers.
//!
//! * [`stage`]: the `rl` stage, as its phases: `rollout` (generate and score), `update` (advantages, replay,
//!   optimizer steps), [`metrics`] (val evaluation, step logs), [`checkpoint`] (resume), the artifact;
//! * [`config`]: its parameters, validated before any compute;
//! * [`reward`]: the [`reward::Reward`] trait, built-in rewards (checkers over the row's `accept` and `check_*`
//!   columns among them), weighted combination with schedules, potential-based per-token shaping;
//! * [`external`]: rewards computed by an external command over JSON lines;
//! * [`algo`]: advantages and losses of GRPO, RLOO, PPO (value head, GAE) and RFT, exploration schedules;
//! * [`replay`]: prioritized experience replay (flat sum-tree + min-tree, stratified batch sampling);
//! * [`compare`]: RL against continued sft, self-training, RFT and full-label sft at matched compute.

pub mod algo;
pub mod checkpoint;
pub mod compare;
pub mod config;
mod error;
pub mod external;
pub mod metrics;
pub mod replay;
pub mod reward;
mod rollout;
pub mod stage;
mod update;

pub use error::{Error, Result};
