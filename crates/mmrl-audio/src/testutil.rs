//! Synthetic signals with known answers, shared by the unit tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A 1 s clip at `sr` Hz holding a two-tone (770 + 1336 Hz, DTMF "5") burst over the middle `fraction` of
/// the clip with 5 ms ramps, peak about 0.5; returns the clip and the burst's sample range.
pub fn tone_burst(sr: u32, fraction: f32) -> (Vec<f32>, usize, usize) {
    let len = sr as usize;
    let active = (len as f32 * fraction) as usize;
    let start = (len - active) / 2;
    let end = start + active;
    let ramp = (sr as usize / 200).max(1);
    let x = (0..len)
        .map(|i| {
            if i < start || i >= end {
                return 0.0;
            }
            let j = (i - start).min(end - 1 - i);
            let env = (j as f32 / ramp as f32).min(1.0);
            let t = i as f32 / sr as f32;
            let two_pi = 2.0 * std::f32::consts::PI;
            env * 0.25 * ((two_pi * 770.0 * t).sin() + (two_pi * 1336.0 * t).sin())
        })
        .collect();
    (x, start, end)
}

/// Unit-variance white Gaussian noise.
pub fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

/// `clean + noise` with the noise scaled to `snr_db` relative to the clean power over `start..end`.
pub fn mix(clean: &[f32], noise: &[f32], start: usize, end: usize, snr_db: f32) -> Vec<f32> {
    let p = |x: &[f32]| x[start..end].iter().map(|v| v * v).sum::<f32>() / (end - start) as f32;
    let g = (p(clean) / (p(noise) * 10f32.powf(snr_db / 10.0))).sqrt();
    clean.iter().zip(noise).map(|(s, n)| s + g * n).collect()
}

/// Scale-invariant SNR (SI-SDR) in dB of `estimate` against `clean`.
pub fn si_snr(clean: &[f32], estimate: &[f32]) -> f32 {
    crate::snr::si_sdr(clean, estimate) as f32
}
