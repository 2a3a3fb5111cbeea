//! Short-time Fourier transform with a periodic Hann window and weighted overlap-add resynthesis.
//!
//! Frames are centered (frame `t` covers samples `t*hop - n_fft/2 .. t*hop + n_fft/2`, zero outside the clip), so
//! a clip of `len` samples has `1 + len / hop` frames, as in librosa with `center=True, pad_mode="constant"`.
//! Resynthesis divides by the summed squared window, so analysis followed by synthesis returns the clip exactly
//! (up to rounding) for any `hop <= n_fft / 2`.
//!
//! All buffers live in [`Stft`] and [`Spectrogram`] and are reused: processing a frame never allocates, and a clip
//! allocates only when it is longer than every clip before it.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::error::{Error, Result};

/// A complex spectrogram stored frame-major: `data[t * n_bins + k]` is bin `k` of frame `t`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spectrogram {
    /// Frequency bins per frame (`n_fft / 2 + 1`).
    pub n_bins: usize,
    /// Number of frames.
    pub n_frames: usize,
    /// The values, `n_frames * n_bins` long.
    pub data: Vec<Complex32>,
}

impl Spectrogram {
    /// Resizes to `n_frames x n_bins`, reusing the allocation when it is large enough.
    pub fn reshape(&mut self, n_frames: usize, n_bins: usize) {
        self.n_frames = n_frames;
        self.n_bins = n_bins;
        self.data.clear();
        self.data
            .resize(n_frames * n_bins, Complex32::new(0.0, 0.0));
    }

    /// Frame `t`.
    pub fn frame(&self, t: usize) -> &[Complex32] {
        &self.data[t * self.n_bins..(t + 1) * self.n_bins]
    }

    /// Frame `t`, mutable.
    pub fn frame_mut(&mut self, t: usize) -> &mut [Complex32] {
        &mut self.data[t * self.n_bins..(t + 1) * self.n_bins]
    }

    /// Multiplies every value by the real gain at the same position (`gains` is `n_frames * n_bins` long).
    pub fn apply_gains(&mut self, gains: &[f32]) {
        for (v, g) in self.data.iter_mut().zip(gains) {
            *v *= *g;
        }
    }

    /// Writes `|X|^2` of every value into `out` (resized to `n_frames * n_bins`).
    pub fn power_into(&self, out: &mut Vec<f32>) {
        out.clear();
        out.extend(self.data.iter().map(|c| c.norm_sqr()));
    }
}

/// A planned STFT of one size with its window and scratch buffers.
pub struct Stft {
    n_fft: usize,
    hop: usize,
    window: Vec<f32>,
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
    frame: Vec<f32>,
    spectrum: Vec<Complex32>,
    scratch_fwd: Vec<Complex32>,
    scratch_inv: Vec<Complex32>,
    /// Overlap-add accumulators, reused across clips.
    acc: Vec<f32>,
    wsum: Vec<f32>,
}

impl std::fmt::Debug for Stft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stft")
            .field("n_fft", &self.n_fft)
            .field("hop", &self.hop)
            .finish()
    }
}

impl Clone for Stft {
    fn clone(&self) -> Self {
        Self {
            n_fft: self.n_fft,
            hop: self.hop,
            window: self.window.clone(),
            forward: Arc::clone(&self.forward),
            inverse: Arc::clone(&self.inverse),
            frame: self.frame.clone(),
            spectrum: self.spectrum.clone(),
            scratch_fwd: self.scratch_fwd.clone(),
            scratch_inv: self.scratch_inv.clone(),
            acc: Vec::new(),
            wsum: Vec::new(),
        }
    }
}

/// A periodic Hann window of length `n` (the DFT-even window used by librosa and scipy's `stft`).
pub fn hann(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
        .collect()
}

impl Stft {
    /// Plans an STFT. `n_fft` must be even and at least 16; `hop` in `1..=n_fft / 2`.
    pub fn new(n_fft: usize, hop: usize) -> Result<Self> {
        if n_fft < 16 || !n_fft.is_multiple_of(2) {
            return Err(Error::Dsp(format!(
                "n_fft must be even and at least 16, got {n_fft}"
            )));
        }
        if hop == 0 || hop > n_fft / 2 {
            return Err(Error::Dsp(format!(
                "hop must be in 1..={}, got {hop}",
                n_fft / 2
            )));
        }
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(n_fft);
        let inverse = planner.plan_fft_inverse(n_fft);
        Ok(Self {
            n_fft,
            hop,
            window: hann(n_fft),
            frame: forward.make_input_vec(),
            spectrum: forward.make_output_vec(),
            scratch_fwd: forward.make_scratch_vec(),
            scratch_inv: inverse.make_scratch_vec(),
            forward,
            inverse,
            acc: Vec::new(),
            wsum: Vec::new(),
        })
    }

    /// The FFT size.
    pub fn n_fft(&self) -> usize {
        self.n_fft
    }

    /// The hop between frames.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Bins per frame.
    pub fn n_bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Frames of a clip of `len` samples.
    pub fn n_frames(&self, len: usize) -> usize {
        1 + len / self.hop
    }

    /// The analysis window.
    pub fn window(&self) -> &[f32] {
        &self.window
    }

    /// Analyzes `signal` into `out` (reshaped to fit).
    pub fn analyze(&mut self, signal: &[f32], out: &mut Spectrogram) -> Result<()> {
        let n_frames = self.n_frames(signal.len());
        let n_bins = self.n_bins();
        out.reshape(n_frames, n_bins);
        let half = self.n_fft / 2;
        for t in 0..n_frames {
            // Frame j covers signal[t*hop + j - half]; j0..j1 is the part inside the clip.
            let start = t * self.hop;
            let j0 = half.saturating_sub(start);
            let j1 = (signal.len() + half)
                .saturating_sub(start)
                .min(self.n_fft)
                .max(j0);
            self.frame[..j0].fill(0.0);
            self.frame[j1..].fill(0.0);
            let src = &signal[start + j0 - half..start + j1 - half];
            for ((f, s), w) in self.frame[j0..j1]
                .iter_mut()
                .zip(src)
                .zip(&self.window[j0..j1])
            {
                *f = s * w;
            }
            self.forward
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch_fwd)
                .map_err(|e| Error::Dsp(format!("forward fft of size {}: {e}", self.n_fft)))?;
            out.frame_mut(t).copy_from_slice(&self.spectrum);
        }
        Ok(())
    }

    /// Resynthesizes `len` samples from `spec` into `out` by weighted overlap-add.
    pub fn synthesize(&mut self, spec: &Spectrogram, len: usize, out: &mut Vec<f32>) -> Result<()> {
        if spec.n_bins != self.n_bins() {
            return Err(Error::Dsp(format!(
                "spectrogram has {} bins, the stft {}",
                spec.n_bins,
                self.n_bins()
            )));
        }
        let half = self.n_fft / 2;
        let padded = len + self.n_fft + self.hop * spec.n_frames;
        self.acc.clear();
        self.acc.resize(padded, 0.0);
        self.wsum.clear();
        self.wsum.resize(padded, 0.0);
        let scale = 1.0 / self.n_fft as f32;
        for t in 0..spec.n_frames {
            self.spectrum.copy_from_slice(spec.frame(t));
            // A real signal's DC and Nyquist bins are real; drop rounding residue so the inverse is exact.
            self.spectrum[0].im = 0.0;
            if let Some(last) = self.spectrum.last_mut() {
                last.im = 0.0;
            }
            self.inverse
                .process_with_scratch(&mut self.spectrum, &mut self.frame, &mut self.scratch_inv)
                .map_err(|e| Error::Dsp(format!("inverse fft of size {}: {e}", self.n_fft)))?;
            // acc index = signal index + half.
            let start = t * self.hop;
            let acc = &mut self.acc[start..start + self.n_fft];
            let wsum = &mut self.wsum[start..start + self.n_fft];
            for (((a, s), f), w) in acc
                .iter_mut()
                .zip(wsum.iter_mut())
                .zip(&self.frame)
                .zip(&self.window)
            {
                *a += f * scale * w;
                *s += w * w;
            }
        }
        out.clear();
        out.extend(
            self.acc[half..half + len]
                .iter()
                .zip(&self.wsum[half..half + len])
                .map(|(a, s)| if *s > 1e-6 { a / s } else { 0.0 }),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_round_trip(n_fft: usize, hop: usize, len: usize) {
        let signal: Vec<f32> = (0..len)
            .map(|i| ((i as f32 * 0.37).sin() + (i as f32 * 0.011).cos()) * 0.5)
            .collect();
        let mut stft = Stft::new(n_fft, hop).unwrap();
        let mut spec = Spectrogram::default();
        stft.analyze(&signal, &mut spec).unwrap();
        assert_eq!(spec.n_frames, 1 + len / hop);
        let mut out = Vec::new();
        stft.synthesize(&spec, len, &mut out).unwrap();
        assert_eq!(out.len(), len);
        let err = signal
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 1e-4,
            "n_fft {n_fft} hop {hop} len {len}: max error {err}"
        );
    }

    #[test]
    fn analysis_then_synthesis_is_identity() {
        check_round_trip(256, 64, 8000);
        check_round_trip(256, 128, 7999);
        check_round_trip(512, 100, 1234);
        check_round_trip(16, 8, 5);
        check_round_trip(256, 64, 1);
    }

    #[test]
    fn a_tone_lands_in_its_bin() {
        let sr = 8000.0;
        let f = 1000.0; // bin 32 of a 256-point fft at 8 kHz
        let signal: Vec<f32> = (0..4000)
            .map(|i| (2.0 * std::f32::consts::PI * f * i as f32 / sr).sin())
            .collect();
        let mut stft = Stft::new(256, 64).unwrap();
        let mut spec = Spectrogram::default();
        stft.analyze(&signal, &mut spec).unwrap();
        let frame = spec.frame(spec.n_frames / 2);
        let peak = (0..frame.len())
            .max_by(|&a, &b| frame[a].norm().total_cmp(&frame[b].norm()))
            .unwrap();
        assert_eq!(peak, 32);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(Stft::new(15, 4).unwrap_err().to_string().contains("n_fft"));
        assert!(Stft::new(256, 200).unwrap_err().to_string().contains("hop"));
        assert!(Stft::new(256, 0).unwrap_err().to_string().contains("hop"));
    }
}
