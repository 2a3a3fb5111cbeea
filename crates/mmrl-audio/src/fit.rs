//! Fitting a denoiser's train state from clips: the noise profile (`noise_source = "train"`) and the NMF speech
//! and noise dictionaries (`method = "nmf"`). Used by the stage on train view 0 and by the standalone `denoise`
//! command on a `--fit` folder.

use std::sync::Arc;

use crate::denoise::{DenoiseConfig, Denoiser, Fitted, Method, NoiseAccumulator, NoiseSource};
use crate::error::{Error, Result};
use crate::nmf::NmfModel;

/// What one clip contributes to the fit.
#[derive(Debug, Clone)]
pub struct ClipFit {
    noise: NoiseAccumulator,
    speech_frames: Vec<f32>,
    noise_frames: Vec<f32>,
}

/// Measures clips for a fit with the STFT of a [`DenoiseConfig`]; one per thread.
#[derive(Debug, Clone)]
pub struct FitProbe {
    config: DenoiseConfig,
    probe: Denoiser,
    power: Vec<f32>,
}

impl FitProbe {
    /// A probe for clips at `sample_rate`.
    pub fn new(config: &DenoiseConfig, sample_rate: u32) -> Result<Self> {
        let probe_config = DenoiseConfig {
            method: Method::None,
            noise_source: NoiseSource::Clip,
            ..config.clone()
        };
        Ok(Self {
            config: config.clone(),
            probe: Denoiser::new(&probe_config, sample_rate, Arc::default())?,
            power: Vec::new(),
        })
    }

    /// Whether the config fits anything at all.
    pub fn needed(config: &DenoiseConfig) -> bool {
        (config.method != Method::None && config.noise_source == NoiseSource::Train)
            || config.method == Method::Nmf
    }

    /// Measures one clip: its quietest frames for the noise profile and, for NMF, up to `max_frames` frames split
    /// into speech (energy `nmf.speech_frame_snr_db` above the clip's noise floor, noise floor subtracted) and noise
    /// (within 2 dB of the floor). `None` for an empty clip.
    pub fn measure(&mut self, x: &[f32], max_frames: usize) -> Result<Option<ClipFit>> {
        if x.is_empty() {
            return Ok(None);
        }
        let n_bins = self.config.n_fft / 2 + 1;
        let mut noise = NoiseAccumulator::new(self.config.n_fft);
        self.probe.clip_noise(x, &mut noise)?;
        let (mut speech_frames, mut noise_frames) = (Vec::new(), Vec::new());
        if self.config.method == Method::Nmf {
            let Some(profile) = noise.finish() else {
                return Ok(None);
            };
            self.probe.power_spectrogram(x, &mut self.power)?;
            let floor: f32 = profile.mean_power.iter().sum();
            let speech_ratio = 10f32.powf(self.config.nmf.speech_frame_snr_db / 10.0);
            let n_frames = self.power.len() / n_bins;
            let step = n_frames.div_ceil(max_frames.max(1)).max(1);
            for frame in self.power.chunks_exact(n_bins).step_by(step) {
                let e: f32 = frame.iter().sum();
                if e > speech_ratio * floor {
                    speech_frames.extend(
                        frame
                            .iter()
                            .zip(&profile.mean_power)
                            .map(|(p, n)| (p - n).max(0.0).sqrt()),
                    );
                } else if e < floor * 1.585 {
                    noise_frames.extend(frame.iter().map(|p| p.sqrt()));
                }
            }
        }
        Ok(Some(ClipFit {
            noise,
            speech_frames,
            noise_frames,
        }))
    }
}

/// Combines clip measurements, in the order given (so the result is deterministic), into the fitted state.
/// Returns it and the number of clips used.
pub fn finish_fit(
    config: &DenoiseConfig,
    clips: impl IntoIterator<Item = ClipFit>,
    seed: u64,
) -> Result<(Fitted, usize)> {
    let n_bins = config.n_fft / 2 + 1;
    let mut acc = NoiseAccumulator::new(config.n_fft);
    let (mut speech, mut noise) = (Vec::new(), Vec::new());
    let mut used = 0;
    for clip in clips {
        acc.merge(&clip.noise);
        speech.extend(clip.speech_frames);
        noise.extend(clip.noise_frames);
        used += 1;
    }
    let mut fitted = Fitted::default();
    if config.method != Method::None && config.noise_source == NoiseSource::Train {
        fitted.noise = Some(acc.finish().ok_or_else(|| {
            Error::State("noise_source is \"train\" but no usable clip was found to fit the noise profile on".into())
        })?);
    }
    if config.method == Method::Nmf {
        fitted.nmf = Some(
            NmfModel::fit(&speech, &noise, n_bins, &config.nmf, seed).map_err(|e| {
                Error::State(format!("fitting nmf dictionaries on {used} clips: {e}"))
            })?,
        );
    }
    tracing::info!(
        clips = used,
        speech_frames = speech.len() / n_bins,
        noise_frames = noise.len() / n_bins,
        "fit the denoiser"
    );
    Ok((fitted, used))
}
