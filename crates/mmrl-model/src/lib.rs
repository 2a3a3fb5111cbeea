//! mmrl-model: the multimodal transformer every later stage trains, samples from, compresses and
//! evaluates, its policy API (greedy decoding, sampling, per-token log-probabilities and entropies, a frozen
//! reference copy), and the supervised fine-tuning stage (`sft`) with `predict`.

pub mod bench;
pub mod data;
mod error;
pub mod model;
pub mod parallel;
pub mod predict;
pub mod schedule;
pub mod sft;
pub mod vocab;

pub use error::{Error, Result};
pub use model::{
    Batch, Decoding, Dropout, Generated, ModelConfig, MultimodalModel, Preset, SequenceScores,
};
