//! Signal separation by non-negative matrix factorization of magnitude spectrograms (KL divergence,
//! multiplicative updates, Lee and Seung 2001).
//!
//! Training learns a speech (signal) dictionary and a noise dictionary from train clips. A clip is then factored
//! on the fixed dictionaries plus one atom holding the clip's own noise floor and a few free noise atoms adapted to
//! the clip (semi-supervised NMF); the speech part is kept through the soft mask
//! `S^p / (S^p + N^p)` where `S` and `N` are the speech and noise reconstructions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, config_error};

const EPS: f32 = 1e-9;

/// NMF parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NmfParams {
    /// Atoms of the speech (signal) dictionary learned on train clips.
    pub speech_atoms: usize,
    /// Atoms of the noise dictionary learned on train clips (0: rely on the clip's own noise only).
    pub noise_atoms: usize,
    /// Free noise atoms adapted to each clip.
    pub online_noise_atoms: usize,
    /// Multiplicative-update iterations per clip.
    pub iterations: usize,
    /// Iterations when learning the dictionaries.
    pub fit_iterations: usize,
    /// Most frames (each of speech and noise) used to learn the dictionaries, sampled evenly.
    pub max_fit_frames: usize,
    /// Exponent of the soft mask (2 is Wiener-like, larger is harder).
    pub mask_power: f32,
    /// L1 weight on the speech activations (scale-free with KL): keeps the speech atoms from explaining noise.
    pub sparsity: f32,
    /// A train frame counts as speech when its energy exceeds the clip's noise floor by this many dB.
    pub speech_frame_snr_db: f32,
}

impl Default for NmfParams {
    fn default() -> Self {
        Self {
            speech_atoms: 32,
            noise_atoms: 8,
            online_noise_atoms: 0,
            iterations: 20,
            fit_iterations: 60,
            max_fit_frames: 2000,
            mask_power: 2.0,
            sparsity: 0.1,
            speech_frame_snr_db: 6.0,
        }
    }
}

impl NmfParams {
    /// Checks every field; `prefix` names the table in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let f = |name: &str| format!("{prefix}{name}");
        if !(1..=512).contains(&self.speech_atoms) {
            return Err(config_error(
                &f("speech_atoms"),
                format!("must be in 1..=512, got {}", self.speech_atoms),
            ));
        }
        if self.noise_atoms > 512 {
            return Err(config_error(
                &f("noise_atoms"),
                format!("must be in 0..=512, got {}", self.noise_atoms),
            ));
        }
        if self.online_noise_atoms > 64 {
            return Err(config_error(
                &f("online_noise_atoms"),
                format!("must be in 0..=64, got {}", self.online_noise_atoms),
            ));
        }
        if !(1..=10_000).contains(&self.iterations) {
            return Err(config_error(
                &f("iterations"),
                format!("must be in 1..=10000, got {}", self.iterations),
            ));
        }
        if !(1..=10_000).contains(&self.fit_iterations) {
            return Err(config_error(
                &f("fit_iterations"),
                format!("must be in 1..=10000, got {}", self.fit_iterations),
            ));
        }
        if self.max_fit_frames == 0 {
            return Err(config_error(&f("max_fit_frames"), "must be at least 1"));
        }
        if !(self.mask_power > 0.0 && self.mask_power <= 16.0) {
            return Err(config_error(
                &f("mask_power"),
                format!("must be in (0, 16], got {}", self.mask_power),
            ));
        }
        if !(self.sparsity >= 0.0 && self.sparsity <= 100.0) {
            return Err(config_error(
                &f("sparsity"),
                format!("must be in [0, 100], got {}", self.sparsity),
            ));
        }
        if !self.speech_frame_snr_db.is_finite() {
            return Err(config_error(&f("speech_frame_snr_db"), "must be finite"));
        }
        Ok(())
    }
}

/// Learned dictionaries: atoms stored atom-major (`speech[a * n_bins + f]`), each atom summing to one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NmfModel {
    /// Bins per atom.
    pub n_bins: usize,
    /// Speech atoms.
    pub speech: Vec<f32>,
    /// Noise atoms (may be empty).
    pub noise: Vec<f32>,
}

impl NmfModel {
    /// Speech atoms.
    pub fn speech_atoms(&self) -> usize {
        self.speech.len() / self.n_bins.max(1)
    }

    /// Noise atoms.
    pub fn noise_atoms(&self) -> usize {
        self.noise.len() / self.n_bins.max(1)
    }

    /// Learns both dictionaries from frame-major magnitude frames (`speech_frames.len()` a multiple of `n_bins`).
    /// Frames beyond `max_fit_frames` are subsampled evenly, so the result depends only on the frames and `seed`.
    pub fn fit(
        speech_frames: &[f32],
        noise_frames: &[f32],
        n_bins: usize,
        params: &NmfParams,
        seed: u64,
    ) -> Result<Self> {
        if n_bins == 0
            || !speech_frames.len().is_multiple_of(n_bins)
            || !noise_frames.len().is_multiple_of(n_bins)
        {
            return Err(Error::Dsp(format!(
                "nmf training frames do not divide into {n_bins} bins"
            )));
        }
        if speech_frames.is_empty() {
            return Err(Error::State(
                "nmf: no speech frames to learn the speech dictionary from".into(),
            ));
        }
        if params.noise_atoms > 0 && noise_frames.is_empty() {
            return Err(Error::State(
                "nmf: no noise frames to learn the noise dictionary from".into(),
            ));
        }
        let speech = learn(
            &subsample(speech_frames, n_bins, params.max_fit_frames),
            n_bins,
            params.speech_atoms,
            params.fit_iterations,
            seed,
        );
        let noise = if params.noise_atoms == 0 {
            Vec::new()
        } else {
            learn(
                &subsample(noise_frames, n_bins, params.max_fit_frames),
                n_bins,
                params.noise_atoms,
                params.fit_iterations,
                seed ^ 0x9e37_79b9_7f4a_7c15,
            )
        };
        Ok(Self {
            n_bins,
            speech,
            noise,
        })
    }
}

/// Every `ceil(n / max)`-th frame, so at most `max` frames.
fn subsample(frames: &[f32], n_bins: usize, max: usize) -> Vec<f32> {
    let n = frames.len() / n_bins;
    if n <= max {
        return frames.to_vec();
    }
    let step = n.div_ceil(max);
    frames
        .chunks_exact(n_bins)
        .step_by(step)
        .flatten()
        .copied()
        .collect()
}

/// KL-NMF of frame-major `v` (n x n_bins) into `k` atoms; returns the atoms, atom-major, each summing to one.
fn learn(v: &[f32], n_bins: usize, k: usize, iterations: usize, seed: u64) -> Vec<f32> {
    let n = v.len() / n_bins;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mean = (v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len().max(1) as f64) as f32;
    let mut w: Vec<f32> = (0..k * n_bins)
        .map(|_| rng.random_range(0.5f32..1.5))
        .collect();
    normalize_atoms(&mut w, n_bins, None);
    let mut h: Vec<f32> = (0..n * k)
        .map(|_| rng.random_range(0.5f32..1.5) * mean * n_bins as f32 / k as f32)
        .collect();
    let mut wh = vec![0.0f32; n * n_bins];
    let mut ratio = vec![0.0f32; n * n_bins];
    let mut num = vec![0.0f32; k.max(n_bins)];
    let mut den = vec![0.0f32; k * n_bins];
    for _ in 0..iterations {
        // H update: H[t][a] *= (W[a] . R[t]) / sum(W[a]) with R = V / WH; atoms sum to one, so the denominator is 1.
        reconstruct(&w, &h, n_bins, k, n, &mut wh);
        for i in 0..v.len() {
            ratio[i] = v[i] / (wh[i] + EPS);
        }
        for t in 0..n {
            let r = &ratio[t * n_bins..(t + 1) * n_bins];
            for a in 0..k {
                let dot: f32 = w[a * n_bins..(a + 1) * n_bins]
                    .iter()
                    .zip(r)
                    .map(|(x, y)| x * y)
                    .sum();
                h[t * k + a] *= dot;
            }
        }
        // W update: W[a][f] *= sum_t H[t][a] R[t][f] / sum_t H[t][a].
        reconstruct(&w, &h, n_bins, k, n, &mut wh);
        for i in 0..v.len() {
            ratio[i] = v[i] / (wh[i] + EPS);
        }
        den.fill(0.0);
        num[..k].fill(0.0);
        for t in 0..n {
            let r = &ratio[t * n_bins..(t + 1) * n_bins];
            for a in 0..k {
                let hta = h[t * k + a];
                num[a] += hta;
                for (d, x) in den[a * n_bins..(a + 1) * n_bins].iter_mut().zip(r) {
                    *d += hta * x;
                }
            }
        }
        for a in 0..k {
            let inv = 1.0 / (num[a] + EPS);
            for (x, d) in w[a * n_bins..(a + 1) * n_bins]
                .iter_mut()
                .zip(&den[a * n_bins..(a + 1) * n_bins])
            {
                *x *= d * inv;
            }
        }
        normalize_atoms(&mut w, n_bins, Some((&mut h, k)));
    }
    w
}

/// Scales every atom to sum to one, moving the scale into the activations when given.
fn normalize_atoms(w: &mut [f32], n_bins: usize, h: Option<(&mut [f32], usize)>) {
    let k = w.len() / n_bins;
    let mut scales = [0.0f32; 1024];
    for a in 0..k {
        let atom = &mut w[a * n_bins..(a + 1) * n_bins];
        let s: f32 = atom.iter().sum::<f32>().max(EPS);
        for x in atom.iter_mut() {
            *x /= s;
        }
        if let Some(slot) = scales.get_mut(a) {
            *slot = s;
        }
    }
    if let Some((h, k)) = h {
        // Only `learn` passes activations, with at most 512 atoms (checked by `NmfParams::validate`).
        let k_scaled = k.min(scales.len());
        for row in h.chunks_exact_mut(k) {
            for (x, s) in row.iter_mut().zip(&scales[..k_scaled]) {
                *x *= s;
            }
        }
    }
}

/// wh[t][f] = sum_a h[t][a] w[a][f].
fn reconstruct(w: &[f32], h: &[f32], n_bins: usize, k: usize, n: usize, wh: &mut [f32]) {
    for t in 0..n {
        let out = &mut wh[t * n_bins..(t + 1) * n_bins];
        out.fill(0.0);
        for a in 0..k {
            let hta = h[t * k + a];
            if hta == 0.0 {
                continue;
            }
            for (o, x) in out.iter_mut().zip(&w[a * n_bins..(a + 1) * n_bins]) {
                *o += hta * x;
            }
        }
    }
}

/// Buffers for separating one clip; reused across clips.
#[derive(Debug, Clone, Default)]
pub struct NmfWorkspace {
    w: Vec<f32>,
    h: Vec<f32>,
    v: Vec<f32>,
    wh: Vec<f32>,
    ratio: Vec<f32>,
    num: Vec<f32>,
    den: Vec<f32>,
}

impl NmfWorkspace {
    /// Factors the clip's magnitudes (`sqrt(power)`, frame-major, `n_frames x n_bins`) on the model's
    /// dictionaries plus a clip-noise atom (`sqrt(noise_power)`) and free noise atoms, and writes the speech soft
    /// mask into `gains`.
    pub fn speech_mask(
        &mut self,
        model: &NmfModel,
        params: &NmfParams,
        power: &[f32],
        n_frames: usize,
        noise_power: &[f32],
        gains: &mut [f32],
    ) {
        let ks = model.speech_atoms();
        let kn = model.noise_atoms();
        let ko = params.online_noise_atoms;
        let lay = Layout {
            n_bins: model.n_bins,
            n_frames,
            ks,
            kn,
            ko,
            k: ks + kn + 1 + ko,
            fixed: ks + kn + 1,
        };
        self.init_atoms(model, lay, noise_power);
        self.init_activations(lay, power, noise_power);
        self.resize_buffers(lay);
        for _ in 0..params.iterations {
            self.update_activations(lay, params.sparsity);
            if ko > 0 {
                self.update_free_atoms(lay);
            }
        }
        self.write_mask(lay, params.mask_power, gains);
    }

    /// The dictionary: speech | train noise | clip noise | free noise atoms, each normalized to sum to one.
    fn init_atoms(&mut self, model: &NmfModel, lay: Layout, noise_power: &[f32]) {
        let Layout { n_bins, ko, .. } = lay;
        self.w.clear();
        self.w.extend_from_slice(&model.speech);
        self.w.extend_from_slice(&model.noise);
        self.w.extend(noise_power.iter().map(|p| p.sqrt()));
        // Free atoms start from the clip noise floor tilted differently, so they can drift apart.
        for o in 0..ko {
            let tilt = (o + 1) as f32 / (ko + 1) as f32;
            self.w.extend(noise_power.iter().enumerate().map(|(f, p)| {
                let x = f as f32 / n_bins as f32;
                p.sqrt() * (1.0 + tilt * (2.0 * x - 1.0)).max(0.05)
            }));
        }
        normalize_atoms(&mut self.w, n_bins, None);
    }

    /// The magnitudes, and the activations' start from the noise estimate: the clip-noise atom explains the
    /// expected noise magnitude of every frame, the speech atoms share what exceeds it. From a uniform start
    /// multiplicative updates move mass between atoms too slowly, and the many speech atoms end up explaining the
    /// noise too.
    fn init_activations(&mut self, lay: Layout, power: &[f32], noise_power: &[f32]) {
        let Layout {
            n_bins,
            n_frames,
            ks,
            kn,
            ko,
            ..
        } = lay;
        self.v.clear();
        self.v.extend(power.iter().map(|p| p.sqrt()));
        let noise_sum: f32 = noise_power.iter().map(|p| p.sqrt()).sum();
        self.h.clear();
        for t in 0..n_frames {
            let total = self.v[t * n_bins..(t + 1) * n_bins]
                .iter()
                .sum::<f32>()
                .max(EPS);
            let noise = noise_sum.min(total);
            let speech = (total - noise).max(0.1 * total) / ks.max(1) as f32;
            let other = 0.05 * total / (kn + ko).max(1) as f32;
            self.h.extend(std::iter::repeat_n(speech, ks));
            self.h.extend(std::iter::repeat_n(other, kn));
            self.h.push(noise.max(EPS));
            self.h.extend(std::iter::repeat_n(other, ko));
        }
    }

    /// Sizes the scratch buffers for this clip (all zero).
    fn resize_buffers(&mut self, lay: Layout) {
        let Layout {
            n_bins,
            n_frames,
            ko,
            k,
            ..
        } = lay;
        self.wh.clear();
        self.wh.resize(n_frames * n_bins, 0.0);
        self.ratio.clear();
        self.ratio.resize(n_frames * n_bins, 0.0);
        self.num.clear();
        self.num.resize(k, 0.0);
        self.den.clear();
        self.den.resize(ko * n_bins, 0.0);
    }

    /// ratio = v / (W H + eps), with the reconstruction in `wh`.
    fn update_ratio(&mut self, lay: Layout) {
        let Layout {
            n_bins,
            n_frames,
            k,
            ..
        } = lay;
        reconstruct(&self.w, &self.h, n_bins, k, n_frames, &mut self.wh);
        for ((r, v), wh) in self.ratio.iter_mut().zip(&self.v).zip(&self.wh) {
            *r = v / (wh + EPS);
        }
    }

    /// One multiplicative KL update of every activation, with the L1 weight `sparsity` on the speech atoms.
    fn update_activations(&mut self, lay: Layout, sparsity: f32) {
        let Layout {
            n_bins,
            n_frames,
            ks,
            k,
            ..
        } = lay;
        self.update_ratio(lay);
        let shrink = 1.0 / (1.0 + sparsity);
        for t in 0..n_frames {
            let r = &self.ratio[t * n_bins..(t + 1) * n_bins];
            for a in 0..k {
                let dot: f32 = self.w[a * n_bins..(a + 1) * n_bins]
                    .iter()
                    .zip(r)
                    .map(|(x, y)| x * y)
                    .sum();
                // Atoms sum to one, so the KL update's denominator is 1 (+ the L1 weight for speech atoms).
                self.h[t * k + a] *= if a < ks { dot * shrink } else { dot };
            }
        }
    }

    /// One multiplicative KL update of the free noise atoms (the others stay fixed), each renormalized to sum to
    /// one with its scale moved into its activations.
    fn update_free_atoms(&mut self, lay: Layout) {
        let Layout {
            n_bins,
            n_frames,
            ko,
            k,
            fixed,
            ..
        } = lay;
        self.update_ratio(lay);
        self.den.fill(0.0);
        self.num[..ko].fill(0.0);
        for t in 0..n_frames {
            let r = &self.ratio[t * n_bins..(t + 1) * n_bins];
            for o in 0..ko {
                let hto = self.h[t * k + fixed + o];
                self.num[o] += hto;
                for (d, x) in self.den[o * n_bins..(o + 1) * n_bins].iter_mut().zip(r) {
                    *d += hto * x;
                }
            }
        }
        for o in 0..ko {
            let inv = 1.0 / (self.num[o] + EPS);
            let atom = &mut self.w[(fixed + o) * n_bins..(fixed + o + 1) * n_bins];
            for (x, d) in atom.iter_mut().zip(&self.den[o * n_bins..(o + 1) * n_bins]) {
                *x *= d * inv;
            }
            let s: f32 = atom.iter().sum::<f32>().max(EPS);
            for x in atom.iter_mut() {
                *x /= s;
            }
            for t in 0..n_frames {
                self.h[t * k + fixed + o] *= s;
            }
        }
    }

    /// Speech part S into wh, noise part N into ratio; mask = S^p / (S^p + N^p) into `gains`.
    fn write_mask(&mut self, lay: Layout, p: f32, gains: &mut [f32]) {
        let Layout {
            n_bins,
            n_frames,
            ks,
            k,
            ..
        } = lay;
        reconstruct(
            &self.w[..ks * n_bins],
            speech_rows(&self.h, k, ks, &mut self.num),
            n_bins,
            ks,
            n_frames,
            &mut self.wh,
        );
        for t in 0..n_frames {
            let out = &mut self.ratio[t * n_bins..(t + 1) * n_bins];
            out.fill(0.0);
            for a in ks..k {
                let hta = self.h[t * k + a];
                for (o, x) in out.iter_mut().zip(&self.w[a * n_bins..(a + 1) * n_bins]) {
                    *o += hta * x;
                }
            }
        }
        for ((g, s), n) in gains.iter_mut().zip(&self.wh).zip(&self.ratio) {
            let (sp, np) = if p == 2.0 {
                (s * s, n * n)
            } else {
                (s.powf(p), n.powf(p))
            };
            *g = sp / (sp + np + EPS * EPS);
        }
    }
}

/// The sizes of one clip's factorization: the atoms are speech (`ks`) | train noise (`kn`) | clip noise (1) |
/// free noise (`ko`), `k` in all, the first `fixed` of them fixed.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n_bins: usize,
    n_frames: usize,
    ks: usize,
    kn: usize,
    ko: usize,
    k: usize,
    fixed: usize,
}

/// Copies the speech activations (first `ks` of every row of `k`) into `buf` and returns it.
fn speech_rows<'a>(h: &[f32], k: usize, ks: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    buf.clear();
    for row in h.chunks_exact(k) {
        buf.extend_from_slice(&row[..ks]);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_recovers_separable_atoms() {
        // Two disjoint spectral shapes; frames are random mixtures of them.
        let n_bins = 8;
        let a = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let b = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let frames: Vec<f32> = (0..200)
            .flat_map(|_| {
                let (x, y): (f32, f32) = (rng.random(), rng.random());
                (0..n_bins)
                    .map(move |f| x * a[f] + y * b[f])
                    .collect::<Vec<_>>()
            })
            .collect();
        let w = learn(&frames, n_bins, 2, 200, 7);
        // Each learned atom should put (almost) all its mass on one of the two supports.
        for atom in w.chunks_exact(n_bins) {
            let on_a: f32 = atom[..4].iter().sum();
            let on_b: f32 = atom[4..6].iter().sum();
            assert!(on_a > 0.95 || on_b > 0.95, "atom {atom:?}");
        }
        let first_a = w[..4].iter().sum::<f32>() > 0.95;
        let second_a = w[n_bins..n_bins + 4].iter().sum::<f32>() > 0.95;
        assert_ne!(
            first_a, second_a,
            "both atoms learned the same shape: {w:?}"
        );
    }

    #[test]
    fn bad_training_data_is_an_error() {
        let p = NmfParams::default();
        assert!(NmfModel::fit(&[], &[1.0; 4], 4, &p, 0).is_err());
        assert!(NmfModel::fit(&[1.0; 5], &[1.0; 4], 4, &p, 0).is_err());
        assert!(NmfModel::fit(&[1.0; 4], &[], 4, &p, 0).is_err());
        assert!(
            NmfModel::fit(
                &[1.0; 4],
                &[],
                4,
                &NmfParams {
                    noise_atoms: 0,
                    ..p
                },
                0
            )
            .is_ok()
        );
    }
}
