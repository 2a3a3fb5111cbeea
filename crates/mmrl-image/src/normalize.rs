//! Per-channel statistics and the normalization fitted from them.
//!
//! Sums are accumulated in `f64` per image and combined in input order, so the fitted mean and std do not depend
//! on how many threads ran.

use serde::{Deserialize, Serialize};

use crate::resize::Canvas;

/// The smallest standard deviation a normalization divides by (0-1 scale), so a nearly constant train set does
/// not blow values up.
pub const MIN_STD: f64 = 1e-3;

/// Running per-channel sums over the pixels that hold image content (padding is left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ChannelSums {
    /// Pixels counted.
    pub pixels: u64,
    /// Sum of values per channel (0-1 scale).
    pub sum: [f64; 3],
    /// Sum of squared values per channel.
    pub sum_sq: [f64; 3],
}

impl ChannelSums {
    /// The sums over one canvas.
    pub fn of(canvas: &Canvas) -> Self {
        let plane = canvas.plane();
        let mut sums = ChannelSums::default();
        for c in 0..3 {
            let mut sum = 0.0f64;
            let mut sum_sq = 0.0f64;
            let mut n = 0u64;
            for &v in &canvas.data[c * plane..(c + 1) * plane] {
                if !v.is_nan() {
                    let v = f64::from(v);
                    sum += v;
                    sum_sq += v * v;
                    n += 1;
                }
            }
            sums.sum[c] = sum;
            sums.sum_sq[c] = sum_sq;
            if c == 0 {
                sums.pixels = n;
            }
        }
        sums
    }

    /// Adds another set of sums.
    pub fn add(&mut self, other: &ChannelSums) {
        self.pixels += other.pixels;
        for c in 0..3 {
            self.sum[c] += other.sum[c];
            self.sum_sq[c] += other.sum_sq[c];
        }
    }

    /// Mean per channel (0 when nothing was counted).
    pub fn mean(&self) -> [f64; 3] {
        let n = self.pixels.max(1) as f64;
        self.sum.map(|s| s / n)
    }

    /// Population standard deviation per channel.
    pub fn std(&self) -> [f64; 3] {
        let n = self.pixels.max(1) as f64;
        let mean = self.mean();
        std::array::from_fn(|c| (self.sum_sq[c] / n - mean[c] * mean[c]).max(0.0).sqrt())
    }
}

/// Per-channel `(x - mean) / std` on the 0-1 scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean per channel (R, G, B).
    pub mean: [f64; 3],
    /// Standard deviation per channel, at least [`MIN_STD`].
    pub std: [f64; 3],
}

impl Normalization {
    /// Fits from sums; `None` when they count no pixel.
    pub fn fit(sums: &ChannelSums) -> Option<Self> {
        (sums.pixels > 0).then(|| Normalization {
            mean: sums.mean(),
            std: sums.std().map(|s| s.max(MIN_STD)),
        })
    }

    /// Writes the normalized canvas into `out` (`3 * size * size` values); pixels without content become 0.
    pub fn apply(&self, canvas: &Canvas, out: &mut [f32]) {
        let plane = canvas.plane();
        for c in 0..3 {
            let mean = self.mean[c] as f32;
            let inv = (1.0 / self.std[c]) as f32;
            let src = &canvas.data[c * plane..(c + 1) * plane];
            for (o, &v) in out[c * plane..(c + 1) * plane].iter_mut().zip(src) {
                *o = if v.is_nan() { 0.0 } else { (v - mean) * inv };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_skip_padding_and_fit_the_population_statistics() {
        // 2x2 canvas: three content pixels and one padding pixel.
        let mut canvas = Canvas::empty(2);
        for (c, values) in [[0.0, 0.5, 1.0], [0.2, 0.2, 0.2], [0.1, 0.3, 0.5]]
            .iter()
            .enumerate()
        {
            canvas.data[c * 4..c * 4 + 3].copy_from_slice(&values.map(|v: f64| v as f32));
        }
        let sums = ChannelSums::of(&canvas);
        assert_eq!(sums.pixels, 3);
        let fit = Normalization::fit(&sums).unwrap();
        let expected_mean = [0.5, 0.2, 0.3];
        let expected_std = [(1.0f64 / 6.0).sqrt(), MIN_STD, (0.08f64 / 3.0).sqrt()];
        for c in 0..3 {
            assert!(
                (fit.mean[c] - expected_mean[c]).abs() < 1e-6,
                "mean {c}: {:?}",
                fit.mean
            );
            assert!(
                (fit.std[c] - expected_std[c]).abs() < 1e-6,
                "std {c}: {:?}",
                fit.std
            );
        }
        let mut out = vec![9.0f32; 12];
        fit.apply(&canvas, &mut out);
        assert_eq!(out[3], 0.0, "padding normalizes to 0");
        assert!((out[0] - (0.0 - 0.5) / expected_std[0] as f32).abs() < 1e-4);
        assert!(Normalization::fit(&ChannelSums::default()).is_none());
    }
}
