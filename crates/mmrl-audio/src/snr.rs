//! Quality measures: a blind per-clip SNR estimate (no clean reference) and SI-SDR (with one).
//!
//! The blind estimate measures the noise power spectrum on the clip's quietest frames, finds the time-frequency
//! bins that stand [`BIN_MARGIN_DB`] above it, and compares the energy those bins carry above the noise with the
//! noise power of the frames where the signal is. It follows the usual definition (signal power over noise power
//! during the signal), sees narrow-band signals (tones, voiced speech) that a frame-energy estimate misses, and
//! reads [`MIN_SNR_DB`] when no signal stands out at all.

use crate::error::Result;
use crate::stft::{Spectrogram, Stft};

/// A bin counts as signal when its power, averaged over three frames, exceeds the noise power of its frequency by
/// this much; Gaussian noise almost never does, and a frame needs several such bins (see [`ACTIVE_FRACTION`]) to
/// count as signal.
pub const BIN_MARGIN_DB: f32 = 10.0;
/// A frame counts as active when the power its signal bins carry above the noise is at least this fraction of
/// the frame's noise power.
pub const ACTIVE_FRACTION: f32 = 0.1;
/// The noise estimate of a bin averages this many neighbours on each side.
pub const NOISE_SMOOTH_BINS: usize = 2;
/// Lowest reported estimate (no signal detected).
pub const MIN_SNR_DB: f32 = -30.0;
/// Highest reported estimate (no noise detected).
pub const MAX_SNR_DB: f32 = 100.0;

/// Estimates SNRs with one STFT size; owns its buffers.
#[derive(Debug, Clone)]
pub struct SnrEstimator {
    stft: Stft,
    spec: Spectrogram,
    power: Vec<f32>,
    order: Vec<(f32, u32)>,
    noise: Vec<f32>,
    smoothed: Vec<f32>,
    noise_quantile: f32,
}

impl SnrEstimator {
    /// An estimator measuring noise on the quietest `noise_quantile` of each clip's frames. The quietest frames of
    /// noise are quieter than its average, so a small quantile under-estimates the noise and lets noise peaks pass
    /// for signal, while a quantile above the share of noise-only frames counts signal as noise; 0.4 suits clips
    /// whose signal fills up to about half of them.
    pub fn new(n_fft: usize, hop: usize, noise_quantile: f32) -> Result<Self> {
        Ok(Self {
            stft: Stft::new(n_fft, hop)?,
            spec: Spectrogram::default(),
            power: Vec::new(),
            order: Vec::new(),
            noise: vec![0.0; n_fft / 2 + 1],
            smoothed: vec![0.0; n_fft / 2 + 1],
            noise_quantile: noise_quantile.clamp(1e-3, 1.0),
        })
    }

    /// The estimated SNR of `x` in dB, in `[MIN_SNR_DB, MAX_SNR_DB]`.
    pub fn estimate(&mut self, x: &[f32]) -> Result<f32> {
        if x.is_empty() {
            return Ok(MIN_SNR_DB);
        }
        self.stft.analyze(x, &mut self.spec)?;
        self.spec.power_into(&mut self.power);
        let n_bins = self.spec.n_bins;
        let n_frames = self.spec.n_frames;
        let half = self.stft.n_fft() / 2;
        let hop = self.stft.hop();
        self.order.clear();
        for t in 0..n_frames {
            if (t * hop >= half && t * hop + half <= x.len()) || x.len() < 2 * half {
                let e: f32 = self.power[t * n_bins..(t + 1) * n_bins].iter().sum();
                self.order.push((e, t as u32));
            }
        }
        if self.order.is_empty() {
            return Ok(MIN_SNR_DB);
        }
        self.order
            .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let keep = ((self.order.len() as f32 * self.noise_quantile).ceil() as usize)
            .clamp(1, self.order.len());
        self.noise.fill(0.0);
        for &(_, t) in &self.order[..keep] {
            for (n, p) in self
                .noise
                .iter_mut()
                .zip(&self.power[t as usize * n_bins..(t as usize + 1) * n_bins])
            {
                *n += p;
            }
        }
        // Average over neighbouring bins too: a mean over a few frames per bin is too noisy to threshold against.
        let n_bins_f = self.noise.len();
        let mut noise_total = 0.0f64;
        for k in 0..n_bins_f {
            let lo = k.saturating_sub(NOISE_SMOOTH_BINS);
            let hi = (k + NOISE_SMOOTH_BINS + 1).min(n_bins_f);
            let sum: f32 = self.noise[lo..hi].iter().sum();
            self.smoothed[k] = (sum / (hi - lo) as f32 / keep as f32).max(1e-20);
            noise_total += f64::from(self.smoothed[k]);
        }
        std::mem::swap(&mut self.noise, &mut self.smoothed);
        let margin = 10f32.powf(BIN_MARGIN_DB / 10.0);
        let mut signal = 0.0f64;
        let mut active = 0usize;
        for t in 0..n_frames {
            // Power averaged over the frame and its neighbours: a lone noise peak is diluted, a signal that lasts
            // is not.
            let (lo, hi) = (t.saturating_sub(1), (t + 2).min(n_frames));
            let inv = 1.0 / (hi - lo) as f32;
            let mut s = 0.0f64;
            for (k, n) in self.noise.iter().enumerate() {
                let mut p = 0.0f32;
                for u in lo..hi {
                    p += self.power[u * n_bins + k];
                }
                let p = p * inv;
                if p > margin * n {
                    s += f64::from(p - n);
                }
            }
            if s >= f64::from(ACTIVE_FRACTION) * noise_total {
                signal += s;
                active += 1;
            }
        }
        if active == 0 {
            return Ok(MIN_SNR_DB);
        }
        let snr = 10.0 * (signal / (active as f64 * noise_total)).log10();
        Ok((snr as f32).clamp(MIN_SNR_DB, MAX_SNR_DB))
    }
}

/// Scale-invariant signal-to-distortion ratio of `estimate` against `reference`, in dB (Le Roux et al. 2019),
/// computed as in the bench's `score.py`: both truncated to the shorter length and made zero-mean.
pub fn si_sdr(reference: &[f32], estimate: &[f32]) -> f64 {
    let n = reference.len().min(estimate.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |x: &[f32]| x[..n].iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
    let (mr, me) = (mean(reference), mean(estimate));
    let mut dot = 0.0;
    let mut rr = 0.0;
    for i in 0..n {
        let r = f64::from(reference[i]) - mr;
        let e = f64::from(estimate[i]) - me;
        dot += e * r;
        rr += r * r;
    }
    let a = dot / (rr + 1e-12);
    let mut tt = 0.0;
    let mut ee = 0.0;
    for i in 0..n {
        let r = f64::from(reference[i]) - mr;
        let e = f64::from(estimate[i]) - me;
        let target = a * r;
        tt += target * target;
        ee += (e - target) * (e - target);
    }
    10.0 * ((tt + 1e-12) / (ee + 1e-12)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{noise, tone_burst};

    /// A two-tone burst over the middle 45% of a 1 s clip at `snr_db` (tone power over noise power during the
    /// burst), in white noise: the estimate must be within `tol` dB.
    fn check_estimate(snr_db: f32, tol: f32) {
        let (clean, start, end) = tone_burst(8000, 0.45);
        let n = noise(8000, 3);
        let p_s: f32 = clean[start..end].iter().map(|v| v * v).sum::<f32>() / (end - start) as f32;
        let p_n: f32 = n[start..end].iter().map(|v| v * v).sum::<f32>() / (end - start) as f32;
        let g = (p_s / (p_n * 10f32.powf(snr_db / 10.0))).sqrt();
        let x: Vec<f32> = clean.iter().zip(&n).map(|(s, v)| s + g * v).collect();
        let est = SnrEstimator::new(256, 64, 0.4)
            .unwrap()
            .estimate(&x)
            .unwrap();
        assert!(
            (est - snr_db).abs() <= tol,
            "true {snr_db} dB, estimated {est} dB"
        );
    }

    #[test]
    fn the_estimate_follows_the_true_snr() {
        check_estimate(20.0, 1.5);
        check_estimate(10.0, 1.5);
        check_estimate(0.0, 2.0);
        check_estimate(-5.0, 3.0);
    }

    #[test]
    fn noise_alone_and_silence_read_as_no_signal() {
        let mut est = SnrEstimator::new(256, 64, 0.4).unwrap();
        for seed in 0..20 {
            assert_eq!(
                est.estimate(&noise(8000, seed)).unwrap(),
                MIN_SNR_DB,
                "white noise seed {seed}"
            );
        }
        assert_eq!(est.estimate(&vec![0.0; 8000]).unwrap(), MIN_SNR_DB);
        assert_eq!(est.estimate(&[]).unwrap(), MIN_SNR_DB);
    }

    #[test]
    fn si_sdr_matches_known_values() {
        let r: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.1).sin()).collect();
        // A scaled copy is perfect; adding an orthogonal component at a tenth of the power gives 10 dB.
        assert!(si_sdr(&r, &r.iter().map(|v| v * 0.3).collect::<Vec<_>>()) > 100.0);
        let ortho: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.1).cos()).collect();
        let p_r: f32 = r.iter().map(|v| v * v).sum();
        let p_o: f32 = ortho.iter().map(|v| v * v).sum();
        let g = (p_r / p_o / 10.0).sqrt();
        let est: Vec<f32> = r.iter().zip(&ortho).map(|(a, b)| a + g * b).collect();
        assert!(
            (si_sdr(&r, &est) - 10.0).abs() < 0.1,
            "{}",
            si_sdr(&r, &est)
        );
    }
}
