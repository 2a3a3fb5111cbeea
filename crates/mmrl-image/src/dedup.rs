//! Near-duplicate detection in two steps, because a 64-bit perceptual hash alone confuses distinct images
//! that share their coarse layout (a few small shapes on a plain noisy background, as in the default dataset:
//! at 4 bits it paired dozens of clearly different pictures there).
//!
//! 1. Candidates: a 64-bit perceptual hash per image (pHash: DCT of a 16x16 grey thumbnail, the low 8x8
//!    coefficients compared with their median, from `image_hasher`); pairs within `max_distance` bits are found
//!    by multi-index hashing: two hashes within `d` bits agree exactly on at least one of `d + 1` disjoint bit
//!    ranges (pigeonhole), so only images sharing a bucket are compared.
//! 2. Confirmation, on the RGB thumbnails, at the resolution the images really have:
//!    * Sources with at least [`THUMB`] pixels across: the Pearson correlation of the 16x16 thumbnails, each
//!      channel centred on its own mean, must be at least `min_correlation`. That ignores brightness and contrast
//!      changes and re-encoding (a copy correlates above 0.98), but not a moved shape or a changed color; and two
//!      plain backgrounds whose noise differs do not correlate at all.
//!    * Smaller sources (an 8x8 scan upscaled to the canvas): a 16x16 thumbnail only interpolates between the
//!      source's pixels, and the smoothing makes two distinct scans of one character correlate like copies (on
//!      real 8x8 handwritten digits the correlation rule paired distinct scans of one digit by the hundred). The
//!      pair is compared at the smaller source's own resolution instead, and confirmed only when it is a copy
//!      pixel by pixel: with each luma thumbnail standardized (mean 0, std 1, which removes brightness and
//!      contrast), no pixel may differ by more than `small_max_diff`, and the correlation rule must hold too. A
//!      re-encoded or brightened copy stays within a few tenths of a standard deviation everywhere; a distinct
//!      scan has a stroke pixel that is dark in one and bright in the other.
//!
//! Groups are the connected components of the confirmed pairs.

use std::collections::HashMap;

use image::{GrayImage, Luma};
use image_hasher::{HashAlg, Hasher, HasherConfig};

use crate::resize::Canvas;

/// Computes perceptual hashes of canvases.
pub struct PerceptualHasher {
    hasher: Hasher<[u8; 8]>,
}

impl std::fmt::Debug for PerceptualHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerceptualHasher(pHash 8x8)")
    }
}

impl Default for PerceptualHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl PerceptualHasher {
    /// The pHash configuration: median of DCT coefficients, 8x8 bits.
    pub fn new() -> Self {
        let hasher = HasherConfig::with_bytes_type::<[u8; 8]>()
            .hash_alg(HashAlg::Median)
            .preproc_dct()
            .hash_size(8, 8)
            .to_hasher();
        Self { hasher }
    }

    /// The fingerprint of a canvas (padding counts as mid-grey) whose side is backed by `detail` source
    /// pixels ([`Placement::source_pixels_across`](crate::resize::Placement::source_pixels_across)).
    pub fn fingerprint(&self, canvas: &Canvas, detail: u32) -> Fingerprint {
        let size = canvas.size;
        let plane = canvas.plane();
        let value = |c: usize, i: usize| {
            let v = canvas.data[c * plane + i];
            if v.is_nan() { 0.5 } else { v }
        };
        let to_u8 = |l: f32| (l * 255.0).round().clamp(0.0, 255.0) as u8;
        let grey = GrayImage::from_fn(size as u32, size as u32, |x, y| {
            let i = y as usize * size + x as usize;
            Luma([to_u8(
                0.299 * value(0, i) + 0.587 * value(1, i) + 0.114 * value(2, i),
            )])
        });
        let hash = u64::from_le_bytes(
            *self
                .hasher
                .hash_image(&grey)
                .as_bytes()
                .first_chunk::<8>()
                .unwrap_or(&[0; 8]),
        );
        // Box-average RGB thumbnail, THUMB x THUMB per channel (or the canvas's own size when smaller).
        let side = THUMB.min(size);
        let mut thumb = Vec::with_capacity(3 * side * side);
        for c in 0..3 {
            let mut sums = vec![0.0f32; side * side];
            let mut counts = vec![0u32; side * side];
            for i in 0..plane {
                let cell = (i / size * side / size) * side + i % size * side / size;
                sums[cell] += value(c, i);
                counts[cell] += 1;
            }
            thumb.extend(
                sums.iter()
                    .zip(&counts)
                    .map(|(s, &n)| to_u8(s / n.max(1) as f32)),
            );
        }
        let small_hash = (side > 0 && (detail as usize) < side)
            .then(|| mean_hash(&shrink(&thumb, side, (detail as usize).clamp(1, 8))));
        Fingerprint {
            hash,
            thumb,
            detail,
            small_hash,
        }
    }
}

/// An average hash of a small channel-major RGB thumbnail (at most 8x8): bit `i` says whether pixel `i`'s luma is
/// above the mean. Copies of a small source keep it within a few bits (re-encoding moves only pixels near the
/// mean), where the pHash of the upscaled canvas, which reads every frequency the source has, can move by 20.
fn mean_hash(rgb: &[f32]) -> u64 {
    let plane = rgb.len() / 3;
    let luma: Vec<f32> = (0..plane)
        .map(|i| 0.299 * rgb[i] + 0.587 * rgb[plane + i] + 0.114 * rgb[2 * plane + i])
        .collect();
    let mean = luma.iter().sum::<f32>() / plane.max(1) as f32;
    luma.iter()
        .take(64)
        .enumerate()
        .filter(|(_, v)| **v > mean)
        .fold(0u64, |h, (i, _)| h | (1 << i))
}

/// Side of the thumbnails compared to confirm a candidate pair.
pub const THUMB: usize = 16;

/// What near-duplicate detection keeps of an image: its perceptual hash, a small RGB thumbnail and how many
/// source pixels back it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The 64-bit perceptual hash.
    pub hash: u64,
    /// An RGB thumbnail, channel-major, at most `3 x THUMB x THUMB`.
    pub thumb: Vec<u8>,
    /// Source pixels across the canvas (the fewer of the two axes): below the thumbnail's side, the thumbnail
    /// holds no more information than a `detail x detail` one.
    pub detail: u32,
    /// For sources smaller than the thumbnail: an average hash at the source's resolution (at most 8x8), a
    /// second way to find candidates, since their pHash is unstable under re-encoding.
    pub small_hash: Option<u64>,
}

/// What confirms a candidate pair (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// The least thumbnail correlation of a duplicate.
    pub min_correlation: f32,
    /// For sources smaller than the thumbnail: the largest difference of standardized luma pixels.
    pub small_max_diff: f32,
}

/// How two fingerprints compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The side of the grid they were compared at (the thumbnail's, or the smaller source's).
    pub grid: usize,
    /// Pearson correlation of the RGB thumbnails at that grid, channels centred.
    pub correlation: f32,
    /// For small sources, the largest difference between the standardized luma thumbnails (`None`: compared
    /// by correlation only, or a thumbnail is flat).
    pub max_diff: Option<f32>,
    /// Whether the pair is a near-duplicate under the rule.
    pub duplicate: bool,
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{g}x{g} thumbnail correlation {:.3}",
            self.correlation,
            g = self.grid
        )?;
        if let Some(d) = self.max_diff {
            write!(f, ", largest standardized luma difference {d:.2}")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// The thumbnail's side.
    fn side(&self) -> usize {
        (self.thumb.len() / 3).isqrt()
    }

    /// Pearson correlation of two thumbnails, each channel centred on its own mean: 1 for the same picture up to
    /// brightness and contrast. Two flat thumbnails count as 1 when their colors agree within 2 levels; 0 when
    /// the sizes differ.
    pub fn similarity(&self, other: &Fingerprint) -> f32 {
        if self.thumb.len() != other.thumb.len() {
            return 0.0;
        }
        let plane = |t: &[u8]| t.iter().map(|&v| f32::from(v)).collect::<Vec<f32>>();
        correlation(&plane(&self.thumb), &plane(&other.thumb))
    }

    /// Compares two fingerprints under `rule`, at the resolution the smaller source really has.
    pub fn compare(&self, other: &Fingerprint, rule: &Rule) -> Comparison {
        let side = self.side();
        if side == 0 || side != other.side() || self.thumb.len() != other.thumb.len() {
            return Comparison {
                grid: 0,
                correlation: 0.0,
                max_diff: None,
                duplicate: false,
            };
        }
        let grid = (self.detail.min(other.detail) as usize).clamp(1, side);
        if grid >= side {
            let correlation = self.similarity(other);
            return Comparison {
                grid,
                correlation,
                max_diff: None,
                duplicate: correlation >= rule.min_correlation,
            };
        }
        let (a, b) = (
            shrink(&self.thumb, side, grid),
            shrink(&other.thumb, side, grid),
        );
        let correlation = correlation(&a, &b);
        let max_diff = max_standardized_luma_diff(&a, &b);
        Comparison {
            grid,
            correlation,
            max_diff,
            duplicate: correlation >= rule.min_correlation
                && max_diff.is_none_or(|d| d <= rule.small_max_diff),
        }
    }
}

/// Box-averages a channel-major RGB thumbnail of side `side` down to `grid` (0-255 scale, unrounded).
fn shrink(thumb: &[u8], side: usize, grid: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; 3 * grid * grid];
    let mut counts = vec![0u32; grid * grid];
    for y in 0..side {
        for x in 0..side {
            let cell = (y * grid / side) * grid + x * grid / side;
            counts[cell] += 1;
            for c in 0..3 {
                sums[c * grid * grid + cell] += f32::from(thumb[c * side * side + y * side + x]);
            }
        }
    }
    for c in 0..3 {
        for (cell, &n) in counts.iter().enumerate() {
            sums[c * grid * grid + cell] /= n.max(1) as f32;
        }
    }
    sums
}

/// Pearson correlation of two channel-major RGB thumbnails (0-255 scale), each channel centred on its own mean.
/// Two flat thumbnails count as 1 when their colors agree within 2 levels; one flat thumbnail correlates 0.
fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    if n != b.len() || n == 0 || !n.is_multiple_of(3) {
        return 0.0;
    }
    let plane = n / 3;
    let (mut dot, mut va, mut vb, mut mean_gap) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for c in 0..3 {
        let (a, b) = (
            &a[c * plane..(c + 1) * plane],
            &b[c * plane..(c + 1) * plane],
        );
        let mean = |t: &[f32]| t.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
        let (ma, mb) = (mean(a), mean(b));
        mean_gap = mean_gap.max((ma - mb).abs());
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
            dot += x * y;
            va += x * x;
            vb += y * y;
        }
    }
    // Below one grey level of spread per value a thumbnail is flat, and its correlation is noise.
    let flat = |v: f64| v < n as f64;
    match (flat(va), flat(vb)) {
        (true, true) => f32::from(u8::from(mean_gap <= 2.0)),
        (true, false) | (false, true) => 0.0,
        (false, false) => (dot / (va * vb).sqrt()) as f32,
    }
}

/// The largest absolute difference between the two thumbnails' luma planes, each standardized to mean 0 and
/// std 1; `None` when either is flat (less than one grey level of spread), where standardizing amplifies noise.
fn max_standardized_luma_diff(a: &[f32], b: &[f32]) -> Option<f32> {
    let standardized = |t: &[f32]| {
        let plane = t.len() / 3;
        let luma: Vec<f64> = (0..plane)
            .map(|i| {
                0.299 * f64::from(t[i])
                    + 0.587 * f64::from(t[plane + i])
                    + 0.114 * f64::from(t[2 * plane + i])
            })
            .collect();
        let mean = luma.iter().sum::<f64>() / plane as f64;
        let std = (luma.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / plane as f64).sqrt();
        (std >= 1.0).then(|| {
            luma.into_iter()
                .map(|v| (v - mean) / std)
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (standardized(a)?, standardized(b)?);
    Some(
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f64, f64::max) as f32,
    )
}

/// Groups of near-duplicates among `prints`: pairs whose perceptual hashes (or, between small sources, whose
/// average hashes) are within `max_distance` bits and that `rule` confirms ([`Fingerprint::compare`]), joined
/// transitively. Each group lists indices into `prints` in increasing order, and the groups are ordered by
/// their first index. Singletons are left out.
pub fn groups(prints: &[Fingerprint], max_distance: u32, rule: &Rule) -> Vec<Vec<usize>> {
    let hashes: Vec<Option<u64>> = prints.iter().map(|p| Some(p.hash)).collect();
    let small: Vec<Option<u64>> = prints.iter().map(|p| p.small_hash).collect();
    group_pairs(&[&hashes, &small], max_distance, |i, j| {
        prints[i].compare(&prints[j], rule).duplicate
    })
}

/// Connected components of the pairs that `confirm` accepts among those within `max_distance` bits in any one
/// of the hash lists (`None`: the item has no hash of that kind). Every list has one entry per item.
fn group_pairs(
    lists: &[&[Option<u64>]],
    max_distance: u32,
    confirm: impl Fn(usize, usize) -> bool,
) -> Vec<Vec<usize>> {
    let n = lists.first().map_or(0, |l| l.len());
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let chunks = max_distance as usize + 1;
    for hashes in lists {
        for k in 0..chunks {
            let (lo, hi) = (k * 64 / chunks, (k + 1) * 64 / chunks);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
            for (i, h) in hashes.iter().enumerate() {
                if let Some(h) = h {
                    buckets.entry(h & mask).or_default().push(i);
                }
            }
            for members in buckets.values() {
                for (a, &i) in members.iter().enumerate() {
                    for &j in &members[a + 1..] {
                        let (Some(hi), Some(hj)) = (hashes[i], hashes[j]) else {
                            continue;
                        };
                        if distance(hi, hj) > max_distance {
                            continue;
                        }
                        let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                        if ri != rj && confirm(i, j) {
                            // The smaller index becomes the root, so roots are each group's first member.
                            parent[ri.max(rj)] = ri.min(rj);
                        }
                    }
                }
            }
        }
    }
    let mut by_root: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        let root = find(&mut parent, i);
        by_root[root].push(i);
    }
    by_root.into_iter().filter(|g| g.len() > 1).collect()
}

/// Hamming distance between two hashes.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(hashes: &[u64], d: u32) -> Vec<Vec<usize>> {
        let mut label: Vec<usize> = (0..hashes.len()).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..hashes.len() {
                for j in 0..hashes.len() {
                    if distance(hashes[i], hashes[j]) <= d && label[j] < label[i] {
                        label[i] = label[j];
                        changed = true;
                    }
                }
            }
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); hashes.len()];
        for (i, l) in label.into_iter().enumerate() {
            groups[l].push(i);
        }
        groups.into_iter().filter(|g| g.len() > 1).collect()
    }

    #[test]
    fn grouping_matches_brute_force() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut hashes: Vec<u64> = (0..300).map(|_| rng.random()).collect();
        // Plant chains and copies: flip a few random bits of earlier hashes.
        for i in 0..100 {
            let base = hashes[rng.random_range(0..hashes.len())];
            let flips = rng.random_range(0..6);
            let mut h = base;
            for _ in 0..flips {
                h ^= 1 << rng.random_range(0..64);
            }
            hashes.insert(rng.random_range(0..=hashes.len()), h ^ (i % 2));
        }
        for d in [0, 1, 4, 7] {
            let listed: Vec<Option<u64>> = hashes.iter().copied().map(Some).collect();
            assert_eq!(
                group_pairs(&[&listed], d, |_, _| true),
                brute_force(&hashes, d),
                "d = {d}"
            );
        }
    }

    /// A 32x32 canvas of a few seeded rectangles on a gradient, shifted in brightness by `shift`.
    fn picture(seed: u64, shift: f32) -> Canvas {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let rects: Vec<(usize, usize, usize, [f32; 3])> = (0..4)
            .map(|_| {
                (
                    rng.random_range(0..24),
                    rng.random_range(0..24),
                    rng.random_range(4..14),
                    rng.random(),
                )
            })
            .collect();
        let mut canvas = Canvas::empty(32);
        for c in 0..3 {
            for i in 0..1024 {
                let (x, y) = (i % 32, i / 32);
                let rect = rects
                    .iter()
                    .rev()
                    .find(|r| x >= r.0 && x < r.0 + r.2 && y >= r.1 && y < r.1 + r.2);
                let v = rect.map_or((x + y) as f32 / 80.0 + 0.05, |r| r.3[c] * 0.8 + 0.1);
                canvas.data[c * 1024 + i] = (v + shift).clamp(0.0, 1.0);
            }
        }
        canvas
    }

    #[test]
    fn similar_images_hash_close_and_different_ones_far() {
        let hasher = PerceptualHasher::new();
        for seed in 0..20 {
            let a = hasher.fingerprint(&picture(seed, 0.0), 32);
            assert_eq!(a, hasher.fingerprint(&picture(seed, 0.0), 32));
            let shifted = hasher.fingerprint(&picture(seed, 0.04), 32);
            let bits = distance(a.hash, shifted.hash);
            assert!(
                bits <= 4,
                "seed {seed}: brightness moved the hash {bits} bits"
            );
            assert!(
                a.similarity(&shifted) > 0.98,
                "seed {seed}: brightness is not a difference"
            );
            let other = hasher.fingerprint(&picture(seed + 100, 0.0), 32);
            let bits = distance(a.hash, other.hash);
            assert!(
                bits > 8,
                "seed {seed}: another picture is only {bits} bits away"
            );
            assert!(
                a.similarity(&other) < 0.9,
                "seed {seed}: another picture correlates {}",
                a.similarity(&other)
            );
        }
    }

    const RULE: Rule = Rule {
        min_correlation: 0.95,
        small_max_diff: crate::config::SMALL_MAX_DIFF as f32,
    };

    #[test]
    fn a_hash_collision_is_not_a_duplicate_unless_the_thumbnails_agree() {
        let ramp = |hash, offset: u8| Fingerprint {
            hash,
            detail: 32,
            small_hash: None,
            thumb: (0..768).map(|v| (v % 256 / 2) as u8 + offset).collect(),
        };
        let noise = |hash, seed| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            Fingerprint {
                hash,
                detail: 32,
                small_hash: None,
                thumb: (0..768).map(|_| rng.random_range(90..110)).collect(),
            }
        };
        // 0 and 2 are one picture, 10 levels apart; 1 collides on the hash but is another picture; 3 and 4 are
        // two plain noisy backgrounds; 5 is far in hash.
        let prints = [
            ramp(1, 0),
            noise(1, 1),
            ramp(3, 10),
            noise(7, 2),
            noise(7, 3),
            ramp(u64::MAX, 0),
        ];
        assert_eq!(groups(&prints, 4, &RULE), vec![vec![0, 2]]);
        assert_eq!(groups(&prints, 0, &RULE), Vec::<Vec<usize>>::new());
        let flat = |v: u8| Fingerprint {
            hash: 0,
            detail: 32,
            small_hash: None,
            thumb: vec![v; 768],
        };
        assert_eq!(
            (
                flat(10).similarity(&flat(11)),
                flat(10).similarity(&flat(40))
            ),
            (1.0, 0.0)
        );
    }
}
