//! Seeded augmentation of train images: random resized crop, horizontal flip, small rotation, color jitter,
//! Gaussian noise and cutout.
//!
//! Every view draws from its own generator, derived from `(seed, sample id, view)`, so a view is the same
//! whatever the thread count or the order samples are processed in. Each step draws its random numbers whether
//! or not it is enabled, so turning one step off leaves the others' draws unchanged.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::AugmentConfig;
use crate::resize::{Canvas, Region};

/// The generator of one view of one sample.
pub fn view_rng(seed: u64, id: &str, view: u16) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"mmrl-image/augment/v1");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&view.to_le_bytes());
    hasher.update(id.as_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// Samples the random resized crop: a region whose area is a `crop_scale` fraction of the image and whose
/// aspect ratio is the image's times a log-uniform `crop_ratio` factor; the whole image after 10 misses.
pub fn sample_region(rng: &mut ChaCha8Rng, config: &AugmentConfig) -> Region {
    let [s0, s1] = config.crop_scale;
    let [r0, r1] = config.crop_ratio.map(f64::ln);
    let mut found = None;
    for _ in 0..10 {
        let scale = uniform(rng, s0, s1);
        let ratio = uniform(rng, r0, r1).exp();
        let (w, h) = ((scale * ratio).sqrt(), (scale / ratio).sqrt());
        let (ux, uy) = (rng.random::<f64>(), rng.random::<f64>());
        if found.is_none() && w <= 1.0 && h <= 1.0 {
            found = Some(Region {
                x: ux * (1.0 - w),
                y: uy * (1.0 - h),
                w,
                h,
            });
        }
    }
    found.unwrap_or(Region::FULL)
}

fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Applies the photometric and geometric steps after the crop, in place: flip, rotation, brightness, contrast,
/// saturation, noise, cutout. Values stay in `[0, 1]`; removed pixels become NaN (normalized to 0).
pub fn apply(canvas: &mut Canvas, rng: &mut ChaCha8Rng, config: &AugmentConfig) {
    let flip = rng.random::<f64>() < config.hflip_prob;
    let angle = uniform(rng, -config.rotate_degrees, config.rotate_degrees);
    let jitter =
        |rng: &mut ChaCha8Rng, amount: f64| uniform(rng, 1.0 - amount, 1.0 + amount) as f32;
    let brightness = jitter(rng, config.brightness);
    let contrast = jitter(rng, config.contrast);
    let saturation = jitter(rng, config.saturation);
    let cutout = rng.random::<f64>() < config.cutout_prob;
    let (cx, cy) = (rng.random::<f64>(), rng.random::<f64>());

    if flip {
        hflip(canvas);
    }
    if angle != 0.0 {
        rotate(canvas, angle);
    }
    color_jitter(canvas, brightness, contrast, saturation);
    if let Ok(normal) = Normal::new(0.0f32, config.noise_std as f32)
        && config.noise_std > 0.0
    {
        for v in &mut canvas.data {
            *v = (*v + normal.sample(rng)).clamp(0.0, 1.0);
        }
    }
    if cutout {
        let size = canvas.size;
        let side = ((config.cutout_size * size as f64).round() as usize).clamp(1, size);
        // The centre may fall anywhere, so a square near an edge is clipped (DeVries & Taylor).
        let (x_mid, y_mid) = ((cx * size as f64) as usize, (cy * size as f64) as usize);
        let (x0, y0) = (
            x_mid.saturating_sub(side / 2),
            y_mid.saturating_sub(side / 2),
        );
        let (x1, y1) = ((x0 + side).min(size), (y0 + side).min(size));
        let plane = canvas.plane();
        for c in 0..3 {
            for y in y0..y1 {
                canvas.data[c * plane + y * size + x0..c * plane + y * size + x1].fill(f32::NAN);
            }
        }
    }
}

fn hflip(canvas: &mut Canvas) {
    let size = canvas.size;
    for row in canvas.data.chunks_exact_mut(size) {
        row.reverse();
    }
}

/// Rotates about the centre by `degrees` with bilinear sampling; a pixel whose source lies outside the image or
/// touches a NaN pixel becomes NaN.
fn rotate(canvas: &mut Canvas, degrees: f64) {
    let size = canvas.size;
    let plane = canvas.plane();
    let (sin, cos) = degrees.to_radians().sin_cos();
    let centre = size as f64 / 2.0;
    let src = canvas.data.clone();
    let sample = |c: usize, x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= size as isize || y >= size as isize {
            f32::NAN
        } else {
            src[c * plane + y as usize * size + x as usize]
        }
    };
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f64 + 0.5 - centre, y as f64 + 0.5 - centre);
            let sx = cos * px + sin * py + centre - 0.5;
            let sy = -sin * px + cos * py + centre - 0.5;
            let (fx, fy) = (sx.floor(), sy.floor());
            let (wx, wy) = ((sx - fx) as f32, (sy - fy) as f32);
            let (ix, iy) = (fx as isize, fy as isize);
            for c in 0..3 {
                let taps = [
                    (sample(c, ix, iy), (1.0 - wx) * (1.0 - wy)),
                    (sample(c, ix + 1, iy), wx * (1.0 - wy)),
                    (sample(c, ix, iy + 1), (1.0 - wx) * wy),
                    (sample(c, ix + 1, iy + 1), wx * wy),
                ];
                let mut value = 0.0f32;
                for (v, weight) in taps {
                    if weight > 1e-6 {
                        value += v * weight;
                    }
                }
                canvas.data[c * plane + y * size + x] = value;
            }
        }
    }
}

/// Brightness (scale), contrast (towards the mean grey of the image) and saturation (towards each pixel's grey),
/// as torchvision's `ColorJitter` without hue, clamped to `[0, 1]` after each step.
fn color_jitter(canvas: &mut Canvas, brightness: f32, contrast: f32, saturation: f32) {
    let plane = canvas.plane();
    let (r, rest) = canvas.data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let grey = |r: f32, g: f32, b: f32| 0.299 * r + 0.587 * g + 0.114 * b;
    for v in r.iter_mut().chain(g.iter_mut()).chain(b.iter_mut()) {
        *v = (*v * brightness).clamp(0.0, 1.0);
    }
    let (mut sum, mut n) = (0.0f64, 0u32);
    for i in 0..plane {
        let l = grey(r[i], g[i], b[i]);
        if !l.is_nan() {
            sum += f64::from(l);
            n += 1;
        }
    }
    let mean = if n > 0 {
        (sum / f64::from(n)) as f32
    } else {
        0.0
    };
    for v in r.iter_mut().chain(g.iter_mut()).chain(b.iter_mut()) {
        *v = ((*v - mean) * contrast + mean).clamp(0.0, 1.0);
    }
    for i in 0..plane {
        let l = grey(r[i], g[i], b[i]);
        for v in [&mut r[i], &mut g[i], &mut b[i]] {
            *v = ((*v - l) * saturation + l).clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(size: usize) -> Canvas {
        let mut canvas = Canvas::empty(size);
        let plane = canvas.plane();
        for (i, v) in canvas.data.iter_mut().enumerate() {
            *v = ((i % plane) as f32 / plane as f32) * 0.8 + 0.1;
        }
        canvas
    }

    #[test]
    fn the_generator_depends_on_seed_id_and_view_only() {
        let draw = |seed, id, view| view_rng(seed, id, view).random::<u64>();
        assert_eq!(draw(1, "a", 1), draw(1, "a", 1));
        assert_ne!(draw(1, "a", 1), draw(2, "a", 1));
        assert_ne!(draw(1, "a", 1), draw(1, "b", 1));
        assert_ne!(draw(1, "a", 1), draw(1, "a", 2));
    }

    #[test]
    fn crops_stay_inside_the_image_with_the_configured_area() {
        let config = AugmentConfig {
            crop_scale: [0.5, 0.9],
            crop_ratio: [0.8, 1.25],
            ..AugmentConfig::default()
        };
        for view in 1..200 {
            let region = sample_region(&mut view_rng(7, "x", view), &config);
            let area = region.w * region.h;
            assert!(region.x >= 0.0 && region.y >= 0.0, "{region:?}");
            assert!(
                region.x + region.w <= 1.0 + 1e-12 && region.y + region.h <= 1.0 + 1e-12,
                "{region:?}"
            );
            assert!((0.5 - 1e-9..=0.9 + 1e-9).contains(&area), "{region:?}");
        }
    }

    #[test]
    fn flip_mirrors_rows_and_identity_settings_change_nothing() {
        let mut canvas = gradient(4);
        let original = canvas.clone();
        hflip(&mut canvas);
        assert_eq!(canvas.data[0], original.data[3]);
        hflip(&mut canvas);
        assert_eq!(canvas, original);
        let off = AugmentConfig {
            rotate_degrees: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            noise_std: 0.0,
            ..AugmentConfig::default()
        };
        apply(&mut canvas, &mut view_rng(1, "a", 1), &off);
        for (a, b) in canvas.data.iter().zip(&original.data) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn rotation_moves_corners_out_and_keeps_the_centre() {
        let mut canvas = gradient(16);
        let original = canvas.clone();
        rotate(&mut canvas, 30.0);
        assert!(canvas.data[0].is_nan(), "the corner leaves the image");
        let centre = 8 * 16 + 8;
        assert!((canvas.data[centre] - original.data[centre]).abs() < 0.1);
    }

    #[test]
    fn cutout_removes_a_square_and_noise_stays_in_range() {
        let config = AugmentConfig {
            cutout_prob: 1.0,
            cutout_size: 0.5,
            rotate_degrees: 0.0,
            noise_std: 0.5,
            ..AugmentConfig::default()
        };
        let mut canvas = gradient(8);
        apply(&mut canvas, &mut view_rng(3, "c", 1), &config);
        let nan = canvas.data.iter().filter(|v| v.is_nan()).count();
        assert!(nan > 0 && nan <= 3 * 16, "{nan} pixels cut");
        assert!(
            canvas
                .data
                .iter()
                .filter(|v| !v.is_nan())
                .all(|v| (0.0..=1.0).contains(v))
        );
    }
}
