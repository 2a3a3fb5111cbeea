//! Train-split augmentation: speed perturbation, time shift, noise injection at a random SNR and gain on the
//! waveform; SpecAugment time and frequency masks on the normalized log-mel.
//!
//! Every draw comes from the RNG the caller passes (seeded per sample and view), so results do not depend on
//! thread count or processing order.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::error::{Result, config_error};
use crate::signal::{Resampler, Trim, fix_length, rms};

/// Augmentation parameters. Set a range to a single value (`[1.0, 1.0]`) or a count to 0 to disable a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Augmented copies written per train sample (views `1..=views`); 0 disables augmentation.
    pub views: u16,
    /// Speed factor range (resampling: 1.1 is 10% faster and higher).
    pub speed: [f32; 2],
    /// Largest time shift in seconds, either direction, zero-filled.
    pub max_shift_s: f32,
    /// Probability of injecting white noise.
    pub noise_prob: f32,
    /// SNR range of injected noise, dB relative to the clip's power.
    pub noise_snr_db: [f32; 2],
    /// Gain range in dB, applied after loudness normalization.
    pub gain_db: [f32; 2],
    /// SpecAugment time masks per view.
    pub time_masks: usize,
    /// Widest time mask, in frames.
    pub time_mask_frames: usize,
    /// SpecAugment frequency masks per view.
    pub freq_masks: usize,
    /// Widest frequency mask, in mel bins.
    pub freq_mask_bins: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            views: 1,
            speed: [0.9, 1.1],
            max_shift_s: 0.1,
            noise_prob: 0.5,
            noise_snr_db: [10.0, 30.0],
            gain_db: [-6.0, 6.0],
            time_masks: 2,
            time_mask_frames: 6,
            freq_masks: 2,
            freq_mask_bins: 4,
        }
    }
}

impl AugmentConfig {
    /// Checks every field; `prefix` names the table in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let f = |name: &str| format!("{prefix}{name}");
        let range = |name: &str, r: [f32; 2], lo: f32, hi: f32| -> Result<()> {
            if r[0].is_finite() && r[1].is_finite() && lo <= r[0] && r[0] <= r[1] && r[1] <= hi {
                Ok(())
            } else {
                Err(config_error(
                    &f(name),
                    format!("must be [low, high] with {lo} <= low <= high <= {hi}, got {r:?}"),
                ))
            }
        };
        if self.views > 64 {
            return Err(config_error(
                &f("views"),
                format!("must be in 0..=64, got {}", self.views),
            ));
        }
        range("speed", self.speed, 0.5, 2.0)?;
        if !(0.0..=10.0).contains(&self.max_shift_s) {
            return Err(config_error(
                &f("max_shift_s"),
                format!("must be in [0, 10], got {}", self.max_shift_s),
            ));
        }
        if !(0.0..=1.0).contains(&self.noise_prob) {
            return Err(config_error(
                &f("noise_prob"),
                format!("must be in [0, 1], got {}", self.noise_prob),
            ));
        }
        range("noise_snr_db", self.noise_snr_db, -20.0, 100.0)?;
        range("gain_db", self.gain_db, -60.0, 60.0)?;
        if self.time_masks > 64 || self.freq_masks > 64 {
            return Err(config_error(
                &f("time_masks"),
                "time_masks and freq_masks must be in 0..=64",
            ));
        }
        Ok(())
    }
}

fn draw(rng: &mut ChaCha8Rng, r: [f32; 2]) -> f32 {
    if r[0] < r[1] {
        rng.random_range(r[0]..=r[1])
    } else {
        r[0]
    }
}

/// Applies speed perturbation, time shift and noise injection to a clip of fixed length, in place (the length is
/// kept).
pub fn augment_waveform(
    x: &mut Vec<f32>,
    sample_rate: u32,
    config: &AugmentConfig,
    rng: &mut ChaCha8Rng,
    resampler: &mut Resampler,
) -> Result<()> {
    let len = x.len();
    // Speed: play the clip as if recorded at sample_rate * speed, i.e. resample from that rate; quantized to
    // 1% steps so resampler plans stay few.
    let speed = (draw(rng, config.speed) * 100.0).round() / 100.0;
    if speed != 1.0 {
        let from = (sample_rate as f32 * speed).round() as u32;
        let mut y = resampler.resample(x, from, sample_rate)?;
        fix_length(&mut y, len, Trim::Start);
        *x = y;
    }
    let max_shift = (config.max_shift_s * sample_rate as f32) as i64;
    if max_shift > 0 {
        let shift = rng.random_range(-max_shift..=max_shift);
        let s = shift.unsigned_abs() as usize;
        if s >= len {
            x.fill(0.0);
        } else if shift > 0 {
            x.copy_within(0..len - s, s);
            x[..s].fill(0.0);
        } else if shift < 0 {
            x.copy_within(s..len, 0);
            x[len - s..].fill(0.0);
        }
    }
    if rng.random_bool(f64::from(config.noise_prob)) {
        let snr_db = draw(rng, config.noise_snr_db);
        let level = rms(x);
        if level > 0.0 {
            let sigma = level / 10f32.powf(snr_db / 20.0);
            for v in x.iter_mut() {
                let z: f32 = rng.sample(StandardNormal);
                *v = (*v + sigma * z).clamp(-1.0, 1.0);
            }
        }
    }
    Ok(())
}

/// Applies a random gain in `gain_db`, clamping to `[-1, 1]`.
pub fn random_gain(x: &mut [f32], config: &AugmentConfig, rng: &mut ChaCha8Rng) {
    let gain = 10f32.powf(draw(rng, config.gain_db) / 20.0);
    for v in x {
        *v = (*v * gain).clamp(-1.0, 1.0);
    }
}

/// SpecAugment: zeroes (the normalized mean) random time and mel-bin stripes of a `[n_mels, n_frames]` log-mel.
pub fn spec_augment(
    mel: &mut [f32],
    n_mels: usize,
    n_frames: usize,
    config: &AugmentConfig,
    rng: &mut ChaCha8Rng,
) {
    for _ in 0..config.time_masks {
        let width = rng.random_range(0..=config.time_mask_frames.min(n_frames));
        let start = rng.random_range(0..=n_frames - width);
        for m in 0..n_mels {
            mel[m * n_frames + start..m * n_frames + start + width].fill(0.0);
        }
    }
    for _ in 0..config.freq_masks {
        let width = rng.random_range(0..=config.freq_mask_bins.min(n_mels));
        let start = rng.random_range(0..=n_mels - width);
        mel[start * n_frames..(start + width) * n_frames].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn waveform_augmentation_keeps_length_and_is_seeded() {
        let config = AugmentConfig {
            noise_prob: 1.0,
            ..AugmentConfig::default()
        };
        let x: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let run = |seed: u64| {
            let mut y = x.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            augment_waveform(&mut y, 8000, &config, &mut rng, &mut Resampler::new()).unwrap();
            y
        };
        let (a, b, c) = (run(1), run(1), run(2));
        assert_eq!(a.len(), 8000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, x);
    }

    #[test]
    fn disabled_steps_leave_the_clip_unchanged() {
        let config = AugmentConfig {
            speed: [1.0, 1.0],
            max_shift_s: 0.0,
            noise_prob: 0.0,
            gain_db: [0.0, 0.0],
            time_masks: 0,
            freq_masks: 0,
            ..AugmentConfig::default()
        };
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let mut y = x.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        augment_waveform(&mut y, 8000, &config, &mut rng, &mut Resampler::new()).unwrap();
        random_gain(&mut y, &config, &mut rng);
        assert_eq!(y, x);
        let mut mel = vec![1.0; 20];
        spec_augment(&mut mel, 4, 5, &config, &mut rng);
        assert_eq!(mel, vec![1.0; 20]);
    }

    #[test]
    fn spec_augment_masks_stripes() {
        let config = AugmentConfig {
            time_masks: 1,
            time_mask_frames: 3,
            freq_masks: 0,
            ..AugmentConfig::default()
        };
        let mut zeroed_somewhere = false;
        for seed in 0..20 {
            let mut mel = vec![1.0; 4 * 10];
            spec_augment(
                &mut mel,
                4,
                10,
                &config,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            // A time mask zeroes the same frames in every mel row.
            for t in 0..10 {
                let col: Vec<f32> = (0..4).map(|m| mel[m * 10 + t]).collect();
                assert!(
                    col.iter().all(|v| *v == col[0]),
                    "seed {seed} frame {t}: {col:?}"
                );
                zeroed_somewhere |= col[0] == 0.0;
            }
            assert!(mel.iter().filter(|v| **v == 0.0).count() <= 4 * 3);
        }
        assert!(zeroed_somewhere);
    }

    #[test]
    fn bad_ranges_name_the_field() {
        let e = AugmentConfig {
            speed: [1.2, 0.9],
            ..AugmentConfig::default()
        }
        .validate("augment.")
        .unwrap_err();
        assert!(e.to_string().contains("augment.speed"), "{e}");
        let e = AugmentConfig {
            noise_prob: 2.0,
            ..AugmentConfig::default()
        }
        .validate("augment.")
        .unwrap_err();
        assert!(e.to_string().contains("augment.noise_prob"), "{e}");
    }
}
