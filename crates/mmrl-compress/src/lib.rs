//! mmrl-compress: the compress stage. From a trained model artifact (sft or rl) it builds
//! * `sparse`: unstructured magnitude pruning to a sparsity target on the cubic schedule of Zhu & Gupta,
//!   masks fixed through recovery fine-tuning;
//! * `pruned`: structured pruning of whole attention heads and feed-forward neurons, ranked by weight
//!   magnitude or a first-order Taylor score, with physically smaller tensors, then recovery fine-tuning;
//! * `int8`: post-training weight quantization through burn's quantization API;
//!
//! and a table comparing parameters, non-zero parameters, file size, CPU inference throughput and val
//! exact match.
#![warn(missing_docs)]

pub mod bench;
mod error;
pub mod params;
pub mod quant;
pub mod sparse;
pub mod stage;
pub mod structured;

pub use error::{Error, Result};
