//! mmrl's audio stage: decode, resample, denoise, filter and featurize clips (see the crate README).
//!
//! The building blocks are usable alone: [`wav`] decodes any accepted WAV to mono `f32`, [`signal`] resamples,
//! fixes the length and normalizes loudness, [`denoise`] holds the denoisers (spectral gating, spectral
//! subtraction, Wiener, NMF separation in [`nmf`]), [`snr`] the blind SNR estimate and SI-SDR, [`mel`] log-mel
//! features and their train-fitted normalization, and [`augment`] the train-only augmentations. [`stage`] runs
//! them all over an artifact.
//!
//! ```
//! use std::sync::Arc;
//! use mmrl_audio::denoise::{DenoiseConfig, Denoiser, Method};
//! use mmrl_audio::snr::si_sdr;
//!
//! # fn main() -> mmrl_audio::Result<()> {
//! // A 440 Hz tone between 0.3 s and 0.7 s, in deterministic pseudo-noise.
//! let clean: Vec<f32> = (0..8000)
//!     .map(|i| if (2400..5600).contains(&i) { 0.3 * (i as f32 * 0.3456).sin() } else { 0.0 })
//!     .collect();
//! let mut state = 1u32;
//! let noisy: Vec<f32> = clean
//!     .iter()
//!     .map(|c| {
//!         state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
//!         c + 0.1 * ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
//!     })
//!     .collect();
//! let mut denoiser = Denoiser::new(&DenoiseConfig::with_method(Method::Wiener), 8000, Arc::default())?;
//! let mut enhanced = Vec::new();
//! denoiser.process(&noisy, &mut enhanced)?;
//! assert!(si_sdr(&clean, &enhanced) > si_sdr(&clean, &noisy) + 3.0);
//! # Ok(()) }
//! ```

pub mod augment;
pub mod denoise;
mod error;
pub mod fit;
pub mod mel;
pub mod nmf;
pub mod signal;
pub mod snr;
pub mod stage;
pub mod stft;
pub mod wav;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
