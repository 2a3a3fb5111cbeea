//! Near-duplicate detection in two steps, because a 64-bit perceptual hash alone confuses distinct images
//! that share their coarse layout (a few small shapes on a plain noisy background, as in the default dataset:
//! at 4 bits it paired dozens of clearly different pictures there).
//!
//! 1. Candidates: a 64-bit perceptual hash per image (pHash: DCT of a 16x16 grey thumbnail, the low 8x8
//!    coefficients compared with their median, from `image_hasher`); pairs within `max_distance` bits are found
//!    by multi-index hashing: two hashes within `d` bits agree exactly on at least one of `d + 1` disjoint bit
//!    ranges (pigeonhole), so only images sharing a bucket are compared.
//! 2. Confirmation: the Pearson correlation of the pair's 16x16 RGB thumbnails, each channel centred on its
//!    own mean, must be at least `min_correlation`. That ignores brightness and contrast changes and
//!    re-encoding (a copy correlates above 0.98), but not a moved shape or a changed color; and two plain
//!    backgrounds whose noise differs do not correlate at all.
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

    /// The fingerprint of a canvas (padding counts as mid-grey).
    pub fn fingerprint(&self, canvas: &Canvas) -> Fingerprint {
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
        Fingerprint { hash, thumb }
    }
}

/// Side of the thumbnails compared to confirm a candidate pair.
pub const THUMB: usize = 16;

/// What near-duplicate detection keeps of an image: its perceptual hash and a small RGB thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The 64-bit perceptual hash.
    pub hash: u64,
    /// An RGB thumbnail, channel-major, at most `3 x THUMB x THUMB`.
    pub thumb: Vec<u8>,
}

impl Fingerprint {
    /// Pearson correlation of two thumbnails, each channel centred on its own mean: 1 for the same picture up to
    /// brightness and contrast. Two flat thumbnails count as 1 when their colors agree within 2 levels; 0 when
    /// the sizes differ.
    pub fn similarity(&self, other: &Fingerprint) -> f32 {
        let n = self.thumb.len();
        if n != other.thumb.len() || n == 0 || !n.is_multiple_of(3) {
            return 0.0;
        }
        let plane = n / 3;
        let (mut dot, mut va, mut vb, mut mean_gap) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for c in 0..3 {
            let (a, b) = (
                &self.thumb[c * plane..(c + 1) * plane],
                &other.thumb[c * plane..(c + 1) * plane],
            );
            let mean = |t: &[u8]| t.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
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
}

/// Groups of near-duplicates among `prints`: pairs whose hashes are within `max_distance` bits and whose
/// thumbnails correlate at least `min_correlation`, joined transitively. Each group lists indices into `prints`
/// in increasing order, and the groups are ordered by their first index. Singletons are left out.
pub fn groups(prints: &[Fingerprint], max_distance: u32, min_correlation: f32) -> Vec<Vec<usize>> {
    let hashes: Vec<u64> = prints.iter().map(|p| p.hash).collect();
    group_pairs(&hashes, max_distance, |i, j| {
        prints[i].similarity(&prints[j]) >= min_correlation
    })
}

/// Connected components of the pairs within `max_distance` bits that `confirm` accepts.
fn group_pairs(
    hashes: &[u64],
    max_distance: u32,
    confirm: impl Fn(usize, usize) -> bool,
) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..hashes.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let chunks = max_distance as usize + 1;
    for k in 0..chunks {
        let (lo, hi) = (k * 64 / chunks, (k + 1) * 64 / chunks);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, h) in hashes.iter().enumerate() {
            buckets.entry(h & mask).or_default().push(i);
        }
        for members in buckets.values() {
            for (a, &i) in members.iter().enumerate() {
                for &j in &members[a + 1..] {
                    if distance(hashes[i], hashes[j]) > max_distance {
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
    let mut by_root: Vec<Vec<usize>> = vec![Vec::new(); hashes.len()];
    for i in 0..hashes.len() {
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
            assert_eq!(
                group_pairs(&hashes, d, |_, _| true),
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
            let a = hasher.fingerprint(&picture(seed, 0.0));
            assert_eq!(a, hasher.fingerprint(&picture(seed, 0.0)));
            let shifted = hasher.fingerprint(&picture(seed, 0.04));
            let bits = distance(a.hash, shifted.hash);
            assert!(
                bits <= 4,
                "seed {seed}: brightness moved the hash {bits} bits"
            );
            assert!(
                a.similarity(&shifted) > 0.98,
                "seed {seed}: brightness is not a difference"
            );
            let other = hasher.fingerprint(&picture(seed + 100, 0.0));
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

    #[test]
    fn a_hash_collision_is_not_a_duplicate_unless_the_thumbnails_agree() {
        let ramp = |hash, offset: u8| Fingerprint {
            hash,
            thumb: (0..768).map(|v| (v % 256 / 2) as u8 + offset).collect(),
        };
        let noise = |hash, seed| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            Fingerprint {
                hash,
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
        assert_eq!(groups(&prints, 4, 0.95), vec![vec![0, 2]]);
        assert_eq!(groups(&prints, 0, 0.95), Vec::<Vec<usize>>::new());
        let flat = |v: u8| Fingerprint {
            hash: 0,
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
