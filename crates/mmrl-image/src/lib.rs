//! The image stage of mmrl: encoded PNG/JPEG bytes become fixed-shape, normalized `3 x size x size` tensors
//! that a patch embedding can consume.
//!
//! * [`stage::run`] is the pipeline stage: it reads the select stage's `samples` table and writes `images`
//!   (columns `id`, `split`, `view`, `image_present`, `image_tensor`), `state.json` (the per-channel mean and
//!   std fitted on train view-0 images, and the config), `report.json` and `rejects.parquet`.
//! * [`folder::preprocess`] does the same for a plain folder of images.
//! * [`Preprocessor`] is the per-image pipeline for library use: decode ([`decode`]), fit into the square
//!   ([`resize`]), check, hash ([`dedup`]), augment ([`augment`]); [`Normalization`] turns a [`resize::Canvas`]
//!   into the tensor.
//!
//! Images are checked in this order, each failure with a stable [`Reason`]: unsupported format, undecodable
//! (truncated, zero-size, corrupt), too many pixels (from the header, before decoding), extreme aspect ratio,
//! blank. Near-duplicates (perceptual hash within `dedup_max_distance` bits, confirmed by thumbnail correlation)
//! are grouped and never straddle splits: members outside the group's earliest split (train < val < test) are
//! dropped.
//!
//! ```no_run
//! use mmrl_image::{ImageConfig, Normalization, Preprocessor, Scratch};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ImageConfig { size: 64, ..ImageConfig::default() };
//! let pre = Preprocessor::new(&config)?;
//! let bytes = std::fs::read("cat.jpg")?;
//! let analysis = pre.analyze(&mut Scratch::new(), &bytes)?; // Err(Reject) says why an image is refused
//! let norm = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
//! let mut tensor = vec![0.0f32; 3 * 64 * 64];
//! norm.apply(&analysis.canvas, &mut tensor);
//! # Ok(()) }
//! ```

pub mod augment;
pub mod config;
pub mod decode;
pub mod dedup;
mod engine;
mod error;
pub mod folder;
pub mod normalize;
pub mod process;
pub mod reject;
pub mod resize;
pub mod stage;

pub use config::{AugmentConfig, Filter, Fit, ImageConfig, Policy};
pub use engine::{AbsentSample, DuplicateGroup, DuplicateReport, SplitStats};
pub use error::{Error, Result};
pub use normalize::{ChannelSums, Normalization};
pub use process::{Analysis, Preprocessor, Scratch};
pub use reject::{Reason, Reject};
pub use stage::{ImageReport, ImageState};
