//! Log-mel spectrograms and their per-mel-bin normalization (fit on train clips only).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, config_error};
use crate::stft::{Spectrogram, Stft};

/// Log-mel parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MelConfig {
    /// FFT size (even, ≥ 16).
    pub n_fft: usize,
    /// Hop between frames, in `1..=n_fft/2`.
    pub hop: usize,
    /// Mel bands, in `1..=n_fft/2+1`.
    pub n_mels: usize,
    /// Lowest band edge in Hz.
    pub fmin: f32,
    /// Highest band edge in Hz; 0 means the Nyquist frequency.
    pub fmax: f32,
}

impl Default for MelConfig {
    fn default() -> Self {
        Self {
            n_fft: 256,
            hop: 128,
            n_mels: 32,
            fmin: 0.0,
            fmax: 0.0,
        }
    }
}

impl MelConfig {
    /// Checks every field for clips at `sample_rate`; `prefix` names the table in errors.
    pub fn validate(&self, sample_rate: u32, prefix: &str) -> Result<()> {
        let f = |name: &str| format!("{prefix}{name}");
        if self.n_fft < 16 || !self.n_fft.is_multiple_of(2) || self.n_fft > 65536 {
            return Err(config_error(
                &f("n_fft"),
                format!("must be even and in 16..=65536, got {}", self.n_fft),
            ));
        }
        if self.hop == 0 || self.hop > self.n_fft / 2 {
            return Err(config_error(
                &f("hop"),
                format!("must be in 1..={}, got {}", self.n_fft / 2, self.hop),
            ));
        }
        if self.n_mels == 0 || self.n_mels > self.n_fft / 2 + 1 {
            return Err(config_error(
                &f("n_mels"),
                format!(
                    "must be in 1..={} (n_fft/2+1), got {}",
                    self.n_fft / 2 + 1,
                    self.n_mels
                ),
            ));
        }
        let nyquist = sample_rate as f32 / 2.0;
        let fmax = self.fmax_hz(sample_rate);
        if !(self.fmin >= 0.0 && self.fmin.is_finite()) {
            return Err(config_error(
                &f("fmin"),
                format!("must be finite and >= 0, got {}", self.fmin),
            ));
        }
        if !(fmax > self.fmin && fmax <= nyquist) {
            return Err(config_error(
                &f("fmax"),
                format!(
                    "must be in (fmin, {nyquist}] (0 = Nyquist), got {} with fmin {}",
                    self.fmax, self.fmin
                ),
            ));
        }
        Ok(())
    }

    /// The upper edge in Hz.
    pub fn fmax_hz(&self, sample_rate: u32) -> f32 {
        if self.fmax == 0.0 {
            sample_rate as f32 / 2.0
        } else {
            self.fmax
        }
    }

    /// Frames of a clip of `len` samples.
    pub fn n_frames(&self, len: usize) -> usize {
        1 + len / self.hop
    }
}

fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// One triangular filter: weights for bins `start..start + weights.len()`.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    start: usize,
    weights: Vec<f32>,
}

/// Triangular filters on the HTK mel scale with Slaney area normalization. A filter narrower than the bin
/// spacing (low bands of a small FFT) takes the nearest bin, so no band is ever empty.
fn filterbank(config: &MelConfig, sample_rate: u32) -> Vec<Filter> {
    let n_bins = config.n_fft / 2 + 1;
    let bin_hz = f64::from(sample_rate) / config.n_fft as f64;
    let (m_lo, m_hi) = (
        hz_to_mel(f64::from(config.fmin)),
        hz_to_mel(f64::from(config.fmax_hz(sample_rate))),
    );
    let edges: Vec<f64> = (0..config.n_mels + 2)
        .map(|i| mel_to_hz(m_lo + (m_hi - m_lo) * i as f64 / (config.n_mels + 1) as f64))
        .collect();
    (0..config.n_mels)
        .map(|m| {
            let (lo, center, hi) = (edges[m], edges[m + 1], edges[m + 2]);
            let norm = 2.0 / (hi - lo);
            let mut start = None;
            let mut weights = Vec::new();
            for k in 0..n_bins {
                let f = k as f64 * bin_hz;
                let w = if f > lo && f <= center {
                    (f - lo) / (center - lo)
                } else if f > center && f < hi {
                    (hi - f) / (hi - center)
                } else {
                    0.0
                };
                if w > 0.0 {
                    start.get_or_insert(k);
                    weights.push((w * norm) as f32);
                } else if start.is_some() {
                    break;
                }
            }
            match start {
                Some(start) => Filter { start, weights },
                None => {
                    let k = ((center / bin_hz).round() as usize).min(n_bins - 1);
                    Filter {
                        start: k,
                        weights: vec![norm as f32],
                    }
                }
            }
        })
        .collect()
}

/// Computes log-mel spectrograms (dB of mel power, floored at -100 dB) into `[n_mels, n_frames]` row-major
/// buffers. Owns its buffers; computing one clip allocates nothing after the first.
#[derive(Debug, Clone)]
pub struct LogMel {
    config: MelConfig,
    stft: Stft,
    spec: Spectrogram,
    filters: Vec<Filter>,
}

impl LogMel {
    /// A log-mel extractor for clips at `sample_rate`.
    pub fn new(config: &MelConfig, sample_rate: u32) -> Result<Self> {
        config.validate(sample_rate, "mel.")?;
        Ok(Self {
            config: *config,
            stft: Stft::new(config.n_fft, config.hop)?,
            spec: Spectrogram::default(),
            filters: filterbank(config, sample_rate),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MelConfig {
        &self.config
    }

    /// Writes the log-mel of `x` into `out` (`n_mels * n_frames`, mel-major).
    pub fn compute(&mut self, x: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.stft.analyze(x, &mut self.spec)?;
        let n_frames = self.spec.n_frames;
        out.clear();
        out.resize(self.config.n_mels * n_frames, 0.0);
        for t in 0..n_frames {
            let frame = self.spec.frame(t);
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &frame[filter.start..filter.start + filter.weights.len()];
                let e: f32 = bins
                    .iter()
                    .zip(&filter.weights)
                    .map(|(c, w)| c.norm_sqr() * w)
                    .sum();
                out[m * n_frames + t] = 10.0 * e.max(1e-10).log10();
            }
        }
        Ok(())
    }
}

/// Per-mel-bin mean and standard deviation of log-mel values, fit on train clips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MelNorm {
    /// Mean per mel bin (dB).
    pub mean: Vec<f32>,
    /// Standard deviation per mel bin (dB), at least [`MelNorm::MIN_STD`].
    pub std: Vec<f32>,
    /// Frames the statistics were computed on.
    pub frames: u64,
}

impl MelNorm {
    /// Floor of the standard deviation, so a constant band never divides by zero.
    pub const MIN_STD: f32 = 1e-3;

    /// Normalizes a `[n_mels, n_frames]` log-mel in place.
    pub fn apply(&self, mel: &mut [f32], n_frames: usize) -> Result<()> {
        if mel.len() != self.mean.len() * n_frames {
            return Err(Error::State(format!(
                "log-mel of {} values does not match {} mel bins x {n_frames} frames",
                mel.len(),
                self.mean.len()
            )));
        }
        for (m, row) in mel.chunks_exact_mut(n_frames).enumerate() {
            let (mean, inv) = (self.mean[m], 1.0 / self.std[m]);
            for v in row {
                *v = (*v - mean) * inv;
            }
        }
        Ok(())
    }
}

/// Accumulates [`MelNorm`] statistics; add clips in a fixed order for a deterministic result.
#[derive(Debug, Clone)]
pub struct MelNormAccumulator {
    sum: Vec<f64>,
    sum2: Vec<f64>,
    frames: u64,
}

impl MelNormAccumulator {
    /// An empty accumulator for `n_mels` bins.
    pub fn new(n_mels: usize) -> Self {
        Self {
            sum: vec![0.0; n_mels],
            sum2: vec![0.0; n_mels],
            frames: 0,
        }
    }

    /// Adds a `[n_mels, n_frames]` log-mel.
    pub fn add(&mut self, mel: &[f32], n_frames: usize) {
        if n_frames == 0 {
            return;
        }
        for (m, row) in mel.chunks_exact(n_frames).enumerate().take(self.sum.len()) {
            for v in row {
                self.sum[m] += f64::from(*v);
                self.sum2[m] += f64::from(*v) * f64::from(*v);
            }
        }
        self.frames += n_frames as u64;
    }

    /// The statistics; mean 0 and std 1 when nothing was added.
    pub fn finish(&self) -> MelNorm {
        if self.frames == 0 {
            return MelNorm {
                mean: vec![0.0; self.sum.len()],
                std: vec![1.0; self.sum.len()],
                frames: 0,
            };
        }
        let n = self.frames as f64;
        let mean: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        let std = self
            .sum
            .iter()
            .zip(&self.sum2)
            .map(|(s, s2)| {
                (((s2 / n) - (s / n) * (s / n)).max(0.0).sqrt() as f32).max(MelNorm::MIN_STD)
            })
            .collect();
        MelNorm {
            mean,
            std,
            frames: self.frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_band_is_non_empty_and_a_tone_peaks_in_its_band() {
        let config = MelConfig {
            n_mels: 40,
            ..MelConfig::default()
        };
        let filters = filterbank(&config, 8000);
        assert_eq!(filters.len(), 40);
        assert!(
            filters
                .iter()
                .all(|f| !f.weights.is_empty() && f.weights.iter().all(|w| *w > 0.0))
        );
        let mut mel = LogMel::new(&config, 8000).unwrap();
        let check = |mel: &mut LogMel, freq: f32| {
            let x: Vec<f32> = (0..8000)
                .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / 8000.0).sin())
                .collect();
            let mut out = Vec::new();
            mel.compute(&x, &mut out).unwrap();
            let n_frames = config.n_frames(8000);
            assert_eq!(out.len(), 40 * n_frames);
            let t = n_frames / 2;
            let best = (0..40)
                .max_by(|&a, &b| out[a * n_frames + t].total_cmp(&out[b * n_frames + t]))
                .unwrap();
            let m = hz_to_mel(f64::from(freq));
            let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(4000.0));
            let expected = ((m - lo) / (hi - lo) * 41.0 - 1.0).round() as i64;
            assert!(
                (best as i64 - expected).abs() <= 1,
                "{freq} Hz peaked in band {best}, expected about {expected}"
            );
        };
        check(&mut mel, 500.0);
        check(&mut mel, 1336.0);
        check(&mut mel, 3000.0);
    }

    #[test]
    fn normalization_makes_train_bins_zero_mean_unit_std() {
        let mut acc = MelNormAccumulator::new(2);
        acc.add(&[1.0, 3.0, 10.0, 10.0], 2);
        acc.add(&[1.0, 3.0, 10.0, 10.0], 2);
        let norm = acc.finish();
        assert_eq!(norm.mean, vec![2.0, 10.0]);
        assert_eq!(norm.std, vec![1.0, MelNorm::MIN_STD]);
        let mut x = vec![1.0, 3.0, 10.0, 10.0];
        norm.apply(&mut x, 2).unwrap();
        assert_eq!(x, vec![-1.0, 1.0, 0.0, 0.0]);
        assert!(norm.apply(&mut x, 3).is_err());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let check = |c: MelConfig, field: &str| {
            let e = c.validate(8000, "mel.").unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        };
        check(
            MelConfig {
                n_fft: 100,
                hop: 200,
                ..MelConfig::default()
            },
            "mel.hop",
        );
        check(
            MelConfig {
                n_mels: 0,
                ..MelConfig::default()
            },
            "mel.n_mels",
        );
        check(
            MelConfig {
                fmax: 5000.0,
                ..MelConfig::default()
            },
            "mel.fmax",
        );
        check(
            MelConfig {
                fmin: 4000.0,
                ..MelConfig::default()
            },
            "mel.fmax",
        );
        check(
            MelConfig {
                fmin: f32::NAN,
                ..MelConfig::default()
            },
            "mel.fmin",
        );
    }
}
