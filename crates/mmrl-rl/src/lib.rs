//! mmrl-rl: reinforcement-learning fine-tuning of the sft model as a policy that generates answers.
//!
//! * [`replay`]: prioritized experience replay (flat sum-tree + min-tree, stratified batch sampling);
//! * [`reward`]: the [`reward::Reward`] trait, built-in rewards, weighted combination with schedules,
//!   potential-based per-token shaping;
//! * [`algo`]: advantages and losses of GRPO, RLOO and PPO (value head, GAE), exploration schedules;
//! * [`stage`]: the `rl` stage (rollouts, optimizer steps, evaluation, checkpoints, the artifact);
//! * [`compare`]: continued sft vs GRPO vs RLOO vs PPO at matched compute.

pub mod algo;
pub mod compare;
mod error;
pub mod replay;
pub mod reward;
pub mod stage;

pub use error::{Error, Result};
