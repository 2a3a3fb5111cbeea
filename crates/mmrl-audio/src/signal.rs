//! Waveform utilities: resampling (rubato), fixed length, loudness normalization and level statistics.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Resamples mono clips with rubato's synchronous FFT resampler, keeping the planned resampler for the last
/// rate pair (clips of one dataset usually share one rate).
#[derive(Default)]
pub struct Resampler {
    cached: Option<(u32, u32, Fft<f32>)>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("rates", &self.cached.as_ref().map(|(a, b, _)| (*a, *b)))
            .finish()
    }
}

impl Resampler {
    /// A resampler with nothing planned yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resamples `input` from `from` Hz to `to` Hz. Returns the input unchanged when the rates are equal.
    /// The output has `round(len * to / from)` samples and no startup delay.
    pub fn resample(&mut self, input: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
        if from == to || input.is_empty() {
            return Ok(input.to_vec());
        }
        if from == 0 || to == 0 {
            return Err(Error::Dsp(format!(
                "cannot resample from {from} Hz to {to} Hz"
            )));
        }
        let replan = !matches!(&self.cached, Some((a, b, _)) if *a == from && *b == to);
        if replan {
            let fft = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
                .map_err(|e| {
                    Error::Dsp(format!("planning a resampler {from} Hz -> {to} Hz: {e}"))
                })?;
            self.cached = Some((from, to, fft));
        }
        let Some((_, _, fft)) = self.cached.as_mut() else {
            return Err(Error::Dsp("resampler missing after planning".into()));
        };
        let adapter = InterleavedSlice::new(input, 1, input.len()).map_err(|e| {
            Error::Dsp(format!(
                "wrapping {} samples for the resampler: {e}",
                input.len()
            ))
        })?;
        let out = fft
            .process_all(&adapter, input.len(), None)
            .map_err(|e| Error::Dsp(format!("resampling {from} Hz -> {to} Hz: {e}")))?;
        let mut out = out.take_data();
        let expected = (input.len() as f64 * f64::from(to) / f64::from(from)).round() as usize;
        out.resize(expected, 0.0);
        Ok(out)
    }
}

/// How a clip is brought to the fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trim {
    /// Keep the start; pad zeros at the end.
    Start,
    /// Keep the middle; pad zeros equally on both sides.
    Center,
}

/// Trims or zero-pads `x` to exactly `len` samples.
pub fn fix_length(x: &mut Vec<f32>, len: usize, trim: Trim) {
    match trim {
        Trim::Start => x.resize(len, 0.0),
        Trim::Center => {
            if x.len() > len {
                let start = (x.len() - len) / 2;
                x.drain(..start);
                x.truncate(len);
            } else if x.len() < len {
                let pad = (len - x.len()) / 2;
                x.splice(0..0, std::iter::repeat_n(0.0, pad));
                x.resize(len, 0.0);
            }
        }
    }
}

/// Loudness normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loudness {
    /// Leave the level as it is.
    None,
    /// Scale so the RMS is `target_dbfs`.
    Rms,
    /// Scale so the peak is `target_dbfs`.
    Peak,
}

/// Scales `x` to the target level in dBFS. A clip whose level is below `min_level` (silence) is left as it is, so
/// there is never a division by zero. The result is clamped to `[-1, 1]`. Returns the gain applied.
pub fn normalize_loudness(x: &mut [f32], mode: Loudness, target_dbfs: f32, min_level: f32) -> f32 {
    let level = match mode {
        Loudness::None => return 1.0,
        Loudness::Rms => rms(x),
        Loudness::Peak => peak(x),
    };
    if level.is_nan() || level <= min_level {
        return 1.0;
    }
    let gain = 10f32.powf(target_dbfs / 20.0) / level;
    for v in x.iter_mut() {
        *v = (*v * gain).clamp(-1.0, 1.0);
    }
    gain
}

/// Root mean square (0 for an empty clip).
pub fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / x.len() as f64).sqrt() as f32
}

/// Largest absolute value (0 for an empty clip).
pub fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Fraction of samples whose magnitude is at least `level` (clipping detection).
pub fn clipped_fraction(x: &[f32], level: f32) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    x.iter().filter(|v| v.abs() >= level).count() as f32 / x.len() as f32
}

/// Converts a power ratio to decibels, with `10 log10(max(r, 1e-12))`.
pub fn db(power_ratio: f64) -> f64 {
    10.0 * power_ratio.max(1e-12).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, sr: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / sr as f32).sin() * 0.5)
            .collect()
    }

    /// Resamples one second of a 440 Hz tone (amplitude 0.5) and fits a 440 Hz sinusoid to the middle of the
    /// output: the amplitude must be kept within 1% and the residual below 1% of it (a fit, so a sub-sample delay of
    /// the resampler does not count as error).
    fn check_resample(from: u32, to: u32) {
        let input = tone(440.0, from, from as usize);
        let out = Resampler::new().resample(&input, from, to).unwrap();
        assert_eq!(out.len(), to as usize, "{from} -> {to}");
        let margin = to as usize / 20;
        let w = 2.0 * std::f64::consts::PI * 440.0 / f64::from(to);
        let mid = &out[margin..out.len() - margin];
        let (mut a, mut b) = (0.0f64, 0.0f64);
        for (i, y) in mid.iter().enumerate() {
            let t = (i + margin) as f64;
            a += f64::from(*y) * (w * t).sin();
            b += f64::from(*y) * (w * t).cos();
        }
        let (a, b) = (2.0 * a / mid.len() as f64, 2.0 * b / mid.len() as f64);
        let amplitude = (a * a + b * b).sqrt();
        assert!(
            (amplitude - 0.5).abs() < 0.005,
            "{from} -> {to}: amplitude {amplitude}"
        );
        let residual = mid
            .iter()
            .enumerate()
            .map(|(i, y)| {
                let t = (i + margin) as f64;
                (f64::from(*y) - a * (w * t).sin() - b * (w * t).cos()).abs()
            })
            .fold(0.0f64, f64::max);
        assert!(residual < 0.005, "{from} -> {to}: residual {residual}");
    }

    #[test]
    fn resampling_keeps_a_tone() {
        check_resample(16000, 8000);
        check_resample(8000, 16000);
        check_resample(44100, 8000);
        check_resample(22050, 16000);
        assert_eq!(
            Resampler::new().resample(&[0.1, 0.2], 8000, 8000).unwrap(),
            vec![0.1, 0.2]
        );
    }

    #[test]
    fn fix_length_trims_and_pads() {
        let check = |input: &[f32], len: usize, trim: Trim, expected: &[f32]| {
            let mut x = input.to_vec();
            fix_length(&mut x, len, trim);
            assert_eq!(x, expected, "{input:?} to {len} ({trim:?})");
        };
        check(&[1.0, 2.0, 3.0], 5, Trim::Start, &[1.0, 2.0, 3.0, 0.0, 0.0]);
        check(&[1.0, 2.0, 3.0], 2, Trim::Start, &[1.0, 2.0]);
        check(
            &[1.0, 2.0, 3.0],
            5,
            Trim::Center,
            &[0.0, 1.0, 2.0, 3.0, 0.0],
        );
        check(
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            3,
            Trim::Center,
            &[2.0, 3.0, 4.0],
        );
        check(&[], 2, Trim::Center, &[0.0, 0.0]);
    }

    #[test]
    fn loudness_normalization_hits_the_target_and_leaves_silence_alone() {
        let mut x = tone(100.0, 8000, 8000);
        normalize_loudness(&mut x, Loudness::Rms, -20.0, 1e-5);
        assert!((rms(&x) - 0.1).abs() < 1e-4, "rms {}", rms(&x));
        normalize_loudness(&mut x, Loudness::Peak, -6.0, 1e-5);
        assert!((peak(&x) - 10f32.powf(-6.0 / 20.0)).abs() < 1e-4);
        let mut silence = vec![0.0; 100];
        assert_eq!(
            normalize_loudness(&mut silence, Loudness::Rms, -20.0, 1e-5),
            1.0
        );
        assert!(silence.iter().all(|v| *v == 0.0));
    }
}
