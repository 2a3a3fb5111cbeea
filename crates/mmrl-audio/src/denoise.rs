//! Denoisers that work on the STFT of a clip: spectral gating (stationary and non-stationary), spectral
//! subtraction, Wiener filtering with a decision-directed a-priori SNR, and NMF separation (see [`crate::nmf`]).
//!
//! Every method computes a real gain per time-frequency bin and resynthesizes by overlap-add, so a gain of one
//! everywhere returns the clip unchanged. The noise statistics come either from the clip itself (its quietest
//! frames) or from a [`NoiseProfile`] fit on the train split and applied unchanged elsewhere.
//!
//! A [`Denoiser`] owns every buffer it needs; after the first clip of a given length, denoising allocates nothing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, config_error};
use crate::nmf::{NmfModel, NmfParams, NmfWorkspace};
use crate::stft::{Spectrogram, Stft};

/// Smallest noise power per bin, so that silence never divides by zero.
const POWER_FLOOR: f32 = 1e-12;

/// The denoising method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No denoising: the clip passes through unchanged.
    None,
    /// Stationary spectral gating, the algorithm of noisereduce with `stationary=True`.
    SpectralGate,
    /// Non-stationary spectral gating: a time-smoothed floor per bin and a sigmoid mask (noisereduce's default).
    NonstationaryGate,
    /// Power spectral subtraction with over-subtraction and a spectral floor (Berouti et al. 1979).
    SpectralSubtraction,
    /// Wiener gain with a decision-directed a-priori SNR (Ephraim and Malah 1984).
    Wiener,
    /// Separation by non-negative matrix factorization on speech and noise dictionaries learned on train clips.
    Nmf,
}

impl Method {
    /// Every method, in a stable order.
    pub const ALL: [Method; 6] = [
        Method::None,
        Method::SpectralGate,
        Method::NonstationaryGate,
        Method::SpectralSubtraction,
        Method::Wiener,
        Method::Nmf,
    ];

    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::SpectralGate => "spectral_gate",
            Method::NonstationaryGate => "nonstationary_gate",
            Method::SpectralSubtraction => "spectral_subtraction",
            Method::Wiener => "wiener",
            Method::Nmf => "nmf",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Where the noise statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseSource {
    /// From each clip's own quietest frames (`noise_quantile` of its frames).
    Clip,
    /// Fit once on the quietest frames of the train clips, saved in the stage state, applied unchanged to every
    /// split.
    Train,
}

/// Parameters of stationary spectral gating (noisereduce's names in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpectralGateParams {
    /// A bin passes when its level exceeds the noise mean plus `n_std` standard deviations, in dB
    /// (`n_std_thresh_stationary`).
    pub n_std: f32,
    /// How much of the gated energy is removed: 1 removes all, 0 leaves the clip unchanged (`prop_decrease`).
    pub prop_decrease: f32,
    /// Mask smoothing across frequency, in Hz (`freq_mask_smooth_hz`); 0 disables it.
    pub freq_smooth_hz: f32,
    /// Mask smoothing across time, in ms (`time_mask_smooth_ms`); 0 disables it.
    pub time_smooth_ms: f32,
}

impl Default for SpectralGateParams {
    fn default() -> Self {
        Self {
            n_std: 1.5,
            prop_decrease: 1.0,
            freq_smooth_hz: 500.0,
            time_smooth_ms: 50.0,
        }
    }
}

/// Parameters of non-stationary spectral gating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NonstationaryGateParams {
    /// Time constant of the per-bin noise floor, in seconds (`time_constant_s`).
    pub time_constant_s: f32,
    /// The mask is one half where the magnitude exceeds the floor by this factor (`thresh_n_mult_nonstationary`).
    pub thresh_n_mult: f32,
    /// Slope of the sigmoid mask (`sigmoid_slope_nonstationary`).
    pub sigmoid_slope: f32,
    /// How much of the gated energy is removed (`prop_decrease`).
    pub prop_decrease: f32,
    /// Mask smoothing across frequency, in Hz.
    pub freq_smooth_hz: f32,
    /// Mask smoothing across time, in ms.
    pub time_smooth_ms: f32,
}

impl Default for NonstationaryGateParams {
    fn default() -> Self {
        Self {
            time_constant_s: 2.0,
            thresh_n_mult: 2.0,
            sigmoid_slope: 10.0,
            prop_decrease: 1.0,
            freq_smooth_hz: 500.0,
            time_smooth_ms: 50.0,
        }
    }
}

/// Parameters of spectral subtraction: `|S|² = max(|Y|² - over_subtraction · N, floor · |Y|²)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpectralSubtractionParams {
    /// Over-subtraction factor α (≥ 0; 1 subtracts the noise estimate once).
    pub over_subtraction: f32,
    /// Spectral floor β in `[0, 1]`: the least fraction of the noisy power kept.
    pub floor: f32,
}

impl Default for SpectralSubtractionParams {
    fn default() -> Self {
        Self {
            over_subtraction: 3.0,
            floor: 0.01,
        }
    }
}

/// Parameters of the Wiener filter with a decision-directed a-priori SNR.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WienerParams {
    /// Weight of the previous frame's clean estimate in the a-priori SNR, in `[0, 1)`.
    pub alpha: f32,
    /// Lower bound of the a-priori SNR, in dB.
    pub xi_min_db: f32,
    /// Lower bound of the gain, in dB (amplitude).
    pub gain_floor_db: f32,
    /// Scale of the noise estimate (over-estimation, > 0).
    pub noise_scale: f32,
}

impl Default for WienerParams {
    fn default() -> Self {
        Self {
            alpha: 0.98,
            xi_min_db: -25.0,
            gain_floor_db: -30.0,
            noise_scale: 1.0,
        }
    }
}

/// Configuration of a denoiser: the method, the STFT, the noise source and every method's parameters (only the
/// selected method's are used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenoiseConfig {
    /// Which method runs.
    pub method: Method,
    /// FFT size of the denoising STFT (even, ≥ 16).
    pub n_fft: usize,
    /// Hop of the denoising STFT, in `1..=n_fft/2`.
    pub hop: usize,
    /// Where the noise statistics come from.
    pub noise_source: NoiseSource,
    /// Fraction of a clip's frames, the quietest, that estimate its noise (`(0, 1]`; 1 uses the whole clip as
    /// noisereduce does).
    pub noise_quantile: f32,
    /// Stationary spectral gating.
    pub spectral_gate: SpectralGateParams,
    /// Non-stationary spectral gating.
    pub nonstationary_gate: NonstationaryGateParams,
    /// Spectral subtraction.
    pub spectral_subtraction: SpectralSubtractionParams,
    /// Wiener filtering.
    pub wiener: WienerParams,
    /// NMF separation.
    pub nmf: NmfParams,
}

impl Default for DenoiseConfig {
    fn default() -> Self {
        Self {
            method: Method::Wiener,
            n_fft: 256,
            hop: 64,
            noise_source: NoiseSource::Clip,
            noise_quantile: 0.3,
            spectral_gate: SpectralGateParams::default(),
            nonstationary_gate: NonstationaryGateParams::default(),
            spectral_subtraction: SpectralSubtractionParams::default(),
            wiener: WienerParams::default(),
            nmf: NmfParams::default(),
        }
    }
}

impl DenoiseConfig {
    /// A default config running `method`.
    pub fn with_method(method: Method) -> Self {
        Self {
            method,
            ..Self::default()
        }
    }

    /// Checks every field; `prefix` is prepended to field names in errors (`denoise.`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let f = |name: &str| format!("{prefix}{name}");
        if self.n_fft < 16 || !self.n_fft.is_multiple_of(2) || self.n_fft > 65536 {
            return Err(config_error(
                &f("n_fft"),
                format!("must be even and in 16..=65536, got {}", self.n_fft),
            ));
        }
        if self.hop == 0 || self.hop > self.n_fft / 2 {
            return Err(config_error(
                &f("hop"),
                format!("must be in 1..={}, got {}", self.n_fft / 2, self.hop),
            ));
        }
        if !(self.noise_quantile > 0.0 && self.noise_quantile <= 1.0) {
            return Err(config_error(
                &f("noise_quantile"),
                format!("must be in (0, 1], got {}", self.noise_quantile),
            ));
        }
        let unit = |name: &str, v: f32| -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(config_error(
                    &f(name),
                    format!("must be in [0, 1], got {v}"),
                ))
            }
        };
        let non_negative = |name: &str, v: f32| -> Result<()> {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(config_error(
                    &f(name),
                    format!("must be finite and >= 0, got {v}"),
                ))
            }
        };
        let g = &self.spectral_gate;
        non_negative("spectral_gate.n_std", g.n_std)?;
        unit("spectral_gate.prop_decrease", g.prop_decrease)?;
        non_negative("spectral_gate.freq_smooth_hz", g.freq_smooth_hz)?;
        non_negative("spectral_gate.time_smooth_ms", g.time_smooth_ms)?;
        let n = &self.nonstationary_gate;
        if !(n.time_constant_s > 0.0 && n.time_constant_s.is_finite()) {
            return Err(config_error(
                &f("nonstationary_gate.time_constant_s"),
                format!("must be finite and > 0, got {}", n.time_constant_s),
            ));
        }
        non_negative("nonstationary_gate.thresh_n_mult", n.thresh_n_mult)?;
        non_negative("nonstationary_gate.sigmoid_slope", n.sigmoid_slope)?;
        unit("nonstationary_gate.prop_decrease", n.prop_decrease)?;
        non_negative("nonstationary_gate.freq_smooth_hz", n.freq_smooth_hz)?;
        non_negative("nonstationary_gate.time_smooth_ms", n.time_smooth_ms)?;
        let s = &self.spectral_subtraction;
        non_negative("spectral_subtraction.over_subtraction", s.over_subtraction)?;
        unit("spectral_subtraction.floor", s.floor)?;
        let w = &self.wiener;
        if !(0.0..1.0).contains(&w.alpha) {
            return Err(config_error(
                &f("wiener.alpha"),
                format!("must be in [0, 1), got {}", w.alpha),
            ));
        }
        if !(-100.0..=0.0).contains(&w.xi_min_db) {
            return Err(config_error(
                &f("wiener.xi_min_db"),
                format!("must be in [-100, 0], got {}", w.xi_min_db),
            ));
        }
        if !(-100.0..=0.0).contains(&w.gain_floor_db) {
            return Err(config_error(
                &f("wiener.gain_floor_db"),
                format!("must be in [-100, 0], got {}", w.gain_floor_db),
            ));
        }
        if !(w.noise_scale > 0.0 && w.noise_scale.is_finite()) {
            return Err(config_error(
                &f("wiener.noise_scale"),
                format!("must be finite and > 0, got {}", w.noise_scale),
            ));
        }
        self.nmf.validate(&f("nmf."))?;
        Ok(())
    }
}

/// Per-bin noise statistics of one STFT size: the mean and standard deviation of the level in dB (for gating) and
/// the mean power (for subtraction and Wiener filtering).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseProfile {
    /// FFT size the profile was measured with.
    pub n_fft: usize,
    /// Frames it was measured on.
    pub frames: u64,
    /// Mean level per bin, dB (`20 log10 |X|`).
    pub mean_db: Vec<f32>,
    /// Standard deviation of the level per bin, dB.
    pub std_db: Vec<f32>,
    /// Mean power per bin (`|X|²`).
    pub mean_power: Vec<f32>,
}

/// Accumulates a [`NoiseProfile`] over frames of many clips (train only), in a fixed order so the result is
/// deterministic.
#[derive(Debug, Clone)]
pub struct NoiseAccumulator {
    n_fft: usize,
    frames: u64,
    sum_db: Vec<f64>,
    sum_db2: Vec<f64>,
    sum_power: Vec<f64>,
}

impl NoiseAccumulator {
    /// An empty accumulator for `n_fft`.
    pub fn new(n_fft: usize) -> Self {
        let n_bins = n_fft / 2 + 1;
        Self {
            n_fft,
            frames: 0,
            sum_db: vec![0.0; n_bins],
            sum_db2: vec![0.0; n_bins],
            sum_power: vec![0.0; n_bins],
        }
    }

    /// Adds one frame's power spectrum.
    pub fn add_frame(&mut self, power: &[f32]) {
        for (k, p) in power.iter().enumerate().take(self.sum_db.len()) {
            let d = f64::from(power_to_db(*p));
            self.sum_db[k] += d;
            self.sum_db2[k] += d * d;
            self.sum_power[k] += f64::from(*p);
        }
        self.frames += 1;
    }

    /// Merges another accumulator (same `n_fft`).
    pub fn merge(&mut self, other: &NoiseAccumulator) {
        for k in 0..self.sum_db.len() {
            self.sum_db[k] += other.sum_db[k];
            self.sum_db2[k] += other.sum_db2[k];
            self.sum_power[k] += other.sum_power[k];
        }
        self.frames += other.frames;
    }

    /// Frames added so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The profile, or a flat one (every power at the floor) before any frame.
    pub fn finish_or_empty(&self) -> NoiseProfile {
        self.finish().unwrap_or_else(|| {
            let n_bins = self.sum_db.len();
            NoiseProfile {
                n_fft: self.n_fft,
                frames: 0,
                mean_db: vec![power_to_db(POWER_FLOOR); n_bins],
                std_db: vec![0.0; n_bins],
                mean_power: vec![POWER_FLOOR; n_bins],
            }
        })
    }

    /// The profile; `None` before any frame.
    pub fn finish(&self) -> Option<NoiseProfile> {
        if self.frames == 0 {
            return None;
        }
        let n = self.frames as f64;
        let mean_db: Vec<f32> = self.sum_db.iter().map(|s| (s / n) as f32).collect();
        let std_db = self
            .sum_db
            .iter()
            .zip(&self.sum_db2)
            .map(|(s, s2)| ((s2 / n - (s / n) * (s / n)).max(0.0)).sqrt() as f32)
            .collect();
        let mean_power = self
            .sum_power
            .iter()
            .map(|s| ((s / n) as f32).max(POWER_FLOOR))
            .collect();
        Some(NoiseProfile {
            n_fft: self.n_fft,
            frames: self.frames,
            mean_db,
            std_db,
            mean_power,
        })
    }
}

/// When looking for a clip's noise-only frames, frames are ranked by how far their bins stand above a low
/// percentile of their own frequency: the sum of `ln(P / (NOISE_RANK_MARGIN · p20))` over the bins above that
/// level. Ranking by total power would pick, for coloured noise, the frames whose loud low bins happen to be low
/// (and under-estimate exactly those bins); ranking by mean log power is blind to narrow-band signals such as
/// tones; a median reference fails when a signal fills half the frames of its bins. The 20th percentile stays
/// noise while a signal occupies up to about 80% of a bin's frames; for Gaussian noise it is `0.22` of the mean, so
/// the margin puts the bar at `2.7x` the mean, which noise alone passes in 7% of bins.
const NOISE_RANK_PERCENTILE: f32 = 0.2;
/// See [`NOISE_RANK_PERCENTILE`].
const NOISE_RANK_MARGIN: f32 = 12.0;

/// Level in dB of a power value, floored at -200 dB.
fn power_to_db(p: f32) -> f32 {
    10.0 * p.max(1e-20).log10()
}

/// What a denoiser learned on the train split; empty for methods and sources that fit nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fitted {
    /// The train noise profile (`noise_source = "train"`).
    pub noise: Option<NoiseProfile>,
    /// The NMF dictionaries (`method = "nmf"`).
    pub nmf: Option<NmfModel>,
}

/// A denoiser with its buffers. Not `Sync`: give each thread its own (they are cheap to clone).
#[derive(Debug, Clone)]
pub struct Denoiser {
    config: DenoiseConfig,
    sample_rate: u32,
    fitted: Arc<Fitted>,
    stft: Stft,
    spec: Spectrogram,
    power: Vec<f32>,
    gains: Vec<f32>,
    scratch: Vec<f32>,
    order: Vec<(f32, u32)>,
    noise_power: Vec<f32>,
    noise_thresh: Vec<f32>,
    prev: Vec<f32>,
    nmf: NmfWorkspace,
    stats: Option<GainStats>,
}

/// How much a denoiser's gains reduced the noise and the signal of a clip, both measured against the noise power
/// spectrum estimated on the noisy clip (the quietest frames, or the train profile): noise attenuation is
/// `Σ N / Σ G²N`, signal attenuation `Σ (P-N)+ / Σ G²(P-N)+` over all bins. Their difference estimates the SNR
/// improvement without the bias of measuring the denoised clip's own (suppressed) noise floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GainStats {
    /// Noise power removed, dB.
    pub noise_attenuation_db: f32,
    /// Signal power removed, dB.
    pub signal_attenuation_db: f32,
}

impl GainStats {
    /// The estimated SNR improvement, dB.
    pub fn snr_gain_db(&self) -> f32 {
        self.noise_attenuation_db - self.signal_attenuation_db
    }
}

impl Denoiser {
    /// A denoiser for clips at `sample_rate`. `fitted` must hold what the config needs: a train profile for
    /// `noise_source = "train"` and a model for `method = "nmf"`.
    pub fn new(config: &DenoiseConfig, sample_rate: u32, fitted: Arc<Fitted>) -> Result<Self> {
        config.validate("")?;
        let n_bins = config.n_fft / 2 + 1;
        if config.method != Method::None && config.noise_source == NoiseSource::Train {
            match &fitted.noise {
                None => {
                    return Err(Error::State(
                        "noise_source is \"train\" but no train noise profile was fit".into(),
                    ));
                }
                Some(p) if p.n_fft != config.n_fft || p.mean_power.len() != n_bins => {
                    return Err(Error::State(format!(
                        "the noise profile was measured with n_fft {}, the denoiser uses {}",
                        p.n_fft, config.n_fft
                    )));
                }
                Some(_) => {}
            }
        }
        if config.method == Method::Nmf {
            match &fitted.nmf {
                None => {
                    return Err(Error::State(
                        "method \"nmf\" needs dictionaries fit on train clips".into(),
                    ));
                }
                Some(m) if m.n_bins != n_bins => {
                    return Err(Error::State(format!(
                        "the nmf dictionaries have {} bins, the denoiser's stft {}",
                        m.n_bins, n_bins
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            config: config.clone(),
            sample_rate,
            fitted,
            stft: Stft::new(config.n_fft, config.hop)?,
            spec: Spectrogram::default(),
            power: Vec::new(),
            gains: Vec::new(),
            scratch: Vec::new(),
            order: Vec::new(),
            noise_power: vec![0.0; n_bins],
            noise_thresh: vec![0.0; n_bins],
            prev: vec![0.0; n_bins],
            nmf: NmfWorkspace::default(),
            stats: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DenoiseConfig {
        &self.config
    }

    /// Denoises `input` into `output` (same length).
    pub fn process(&mut self, input: &[f32], output: &mut Vec<f32>) -> Result<()> {
        if self.config.method == Method::None || input.is_empty() {
            self.stats = None;
            output.clear();
            output.extend_from_slice(input);
            return Ok(());
        }
        self.stft.analyze(input, &mut self.spec)?;
        self.spec.power_into(&mut self.power);
        self.compute_gains(input.len())?;
        self.measure_gains(input.len());
        self.spec.apply_gains(&self.gains);
        self.stft.synthesize(&self.spec, input.len(), output)
    }

    /// What the last [`process`](Self::process) did to the estimated noise and signal; `None` after
    /// [`Method::None`], an empty clip, or a clip without noise or signal (silence).
    pub fn last_stats(&self) -> Option<GainStats> {
        self.stats
    }

    /// Noise and signal attenuation of the gains, against the noise power spectrum estimated on the noisy clip.
    fn measure_gains(&mut self, len: usize) {
        self.stats = None;
        if self.config.method == Method::NonstationaryGate {
            // Its gains use no noise estimate; measure against the clip's quietest frames like the others.
            self.estimate_noise(len);
        }
        let n_bins = self.spec.n_bins;
        let (mut noise_in, mut noise_out, mut signal_in, mut signal_out) =
            (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (frame_p, frame_g) in self
            .power
            .chunks_exact(n_bins)
            .zip(self.gains.chunks_exact(n_bins))
        {
            for ((p, g), n) in frame_p.iter().zip(frame_g).zip(&self.noise_power) {
                let g2 = f64::from(g * g);
                let s = f64::from((p - n).max(0.0));
                noise_in += f64::from(*n);
                noise_out += g2 * f64::from(*n);
                signal_in += s;
                signal_out += g2 * s;
            }
        }
        if noise_out > 0.0 && signal_out > 0.0 && noise_in > 0.0 && signal_in > 0.0 {
            self.stats = Some(GainStats {
                noise_attenuation_db: (10.0 * (noise_in / noise_out).log10()) as f32,
                signal_attenuation_db: (10.0 * (signal_in / signal_out).log10()) as f32,
            });
        }
    }

    /// Measures this clip's noise profile from its quietest frames (used by the stage to fit the train profile).
    pub fn clip_noise(&mut self, input: &[f32], acc: &mut NoiseAccumulator) -> Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        self.stft.analyze(input, &mut self.spec)?;
        self.spec.power_into(&mut self.power);
        self.select_quiet_frames(input.len());
        let n_bins = self.spec.n_bins;
        for &(_, t) in &self.order {
            let t = t as usize;
            acc.add_frame(&self.power[t * n_bins..(t + 1) * n_bins]);
        }
        Ok(())
    }

    /// Writes the STFT power of `input` (frame-major) into `out` and returns `(n_frames, n_bins)`; used to gather
    /// NMF training frames.
    pub fn power_spectrogram(
        &mut self,
        input: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<(usize, usize)> {
        self.stft.analyze(input, &mut self.spec)?;
        self.spec.power_into(out);
        Ok((self.spec.n_frames, self.spec.n_bins))
    }

    /// Indices of the quietest frames (fully inside the clip when possible) into `self.order`, sorted by index.
    fn select_quiet_frames(&mut self, len: usize) {
        let n_bins = self.spec.n_bins;
        let n_frames = self.spec.n_frames;
        let half = self.config.n_fft / 2;
        let hop = self.config.hop;
        // Frames fully inside the clip, unless the clip is shorter than one frame.
        let (first, last) = (
            (half.div_ceil(hop)).min(n_frames),
            (len.saturating_sub(half) / hop + 1).min(n_frames),
        );
        let (first, last) = if first < last {
            (first, last)
        } else {
            (0, n_frames)
        };
        // Per-bin low percentile over those frames (into `noise_thresh`, reused as scratch).
        self.scratch.clear();
        self.scratch.resize(last - first, 0.0);
        for k in 0..n_bins {
            for (v, t) in self.scratch.iter_mut().zip(first..last) {
                *v = self.power[t * n_bins + k];
            }
            let nth = ((self.scratch.len() as f32 * NOISE_RANK_PERCENTILE) as usize)
                .min(self.scratch.len() - 1);
            let (_, low, _) = self.scratch.select_nth_unstable_by(nth, f32::total_cmp);
            self.noise_thresh[k] = NOISE_RANK_MARGIN * low.max(POWER_FLOOR);
        }
        self.order.clear();
        for t in first..last {
            let frame = &self.power[t * n_bins..(t + 1) * n_bins];
            let mut excess = 0.0f32;
            for (p, m) in frame.iter().zip(&self.noise_thresh) {
                if p > m {
                    excess += (p / m).ln();
                }
            }
            self.order.push((excess, t as u32));
        }
        self.order
            .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let keep = ((self.order.len() as f32 * self.config.noise_quantile).ceil() as usize)
            .clamp(1, self.order.len());
        self.order.truncate(keep);
    }

    /// Fills `noise_power` (mean power per bin) and, for the stationary gate, `noise_thresh` (power threshold).
    fn estimate_noise(&mut self, len: usize) {
        let n_bins = self.spec.n_bins;
        if let Some(p) = self
            .fitted
            .noise
            .as_ref()
            .filter(|_| self.config.noise_source == NoiseSource::Train)
        {
            self.noise_power.copy_from_slice(&p.mean_power);
            let n_std = self.config.spectral_gate.n_std;
            for (th, (m, s)) in self
                .noise_thresh
                .iter_mut()
                .zip(p.mean_db.iter().zip(&p.std_db))
            {
                *th = 10f32.powf((m + n_std * s) / 10.0);
            }
            return;
        }
        self.select_quiet_frames(len);
        let n = self.order.len() as f32;
        let need_db = self.config.method == Method::SpectralGate;
        self.noise_power.fill(0.0);
        // noise_thresh holds the sum of dB, prev the sum of squared dB while accumulating.
        self.noise_thresh.fill(0.0);
        self.prev.fill(0.0);
        for &(_, t) in &self.order {
            let frame = &self.power[t as usize * n_bins..(t as usize + 1) * n_bins];
            for (k, &p) in frame.iter().enumerate() {
                self.noise_power[k] += p;
                if need_db {
                    let d = power_to_db(p);
                    self.noise_thresh[k] += d;
                    self.prev[k] += d * d;
                }
            }
        }
        for k in 0..n_bins {
            self.noise_power[k] = (self.noise_power[k] / n).max(POWER_FLOOR);
        }
        if need_db {
            let n_std = self.config.spectral_gate.n_std;
            for k in 0..n_bins {
                let mean = self.noise_thresh[k] / n;
                let std = (self.prev[k] / n - mean * mean).max(0.0).sqrt();
                self.noise_thresh[k] = 10f32.powf((mean + n_std * std) / 10.0);
            }
        }
    }

    fn compute_gains(&mut self, len: usize) -> Result<()> {
        let n_bins = self.spec.n_bins;
        let n_frames = self.spec.n_frames;
        self.gains.clear();
        self.gains.resize(n_frames * n_bins, 1.0);
        match self.config.method {
            Method::None => {}
            Method::SpectralGate => {
                self.estimate_noise(len);
                let p = self.config.spectral_gate;
                for t in 0..n_frames {
                    let row = t * n_bins;
                    for k in 0..n_bins {
                        self.gains[row + k] = if self.power[row + k] > self.noise_thresh[k] {
                            1.0
                        } else {
                            0.0
                        };
                    }
                }
                self.smooth_mask(p.freq_smooth_hz, p.time_smooth_ms);
                for g in &mut self.gains {
                    *g = *g * p.prop_decrease + (1.0 - p.prop_decrease);
                }
            }
            Method::NonstationaryGate => {
                let p = self.config.nonstationary_gate;
                // Magnitudes into `scratch`, their time-smoothed floor into `gains`.
                self.scratch.clear();
                self.scratch.extend(self.power.iter().map(|v| v.sqrt()));
                let frames_per_tau =
                    p.time_constant_s * self.sample_rate as f32 / self.config.hop as f32;
                let b = ((1.0 + 4.0 * frames_per_tau * frames_per_tau).sqrt() - 1.0)
                    / (2.0 * frames_per_tau * frames_per_tau);
                self.gains.copy_from_slice(&self.scratch);
                filtfilt_one_pole(&mut self.gains, n_frames, n_bins, b);
                for (g, m) in self.gains.iter_mut().zip(&self.scratch) {
                    let floor = g.max(1e-10);
                    let above = (m - floor) / floor;
                    *g = 1.0 / (1.0 + (-(above - p.thresh_n_mult) * p.sigmoid_slope).exp());
                }
                self.smooth_mask(p.freq_smooth_hz, p.time_smooth_ms);
                for g in &mut self.gains {
                    *g = *g * p.prop_decrease + (1.0 - p.prop_decrease);
                }
            }
            Method::SpectralSubtraction => {
                self.estimate_noise(len);
                let p = self.config.spectral_subtraction;
                for t in 0..n_frames {
                    let row = t * n_bins;
                    for k in 0..n_bins {
                        let py = self.power[row + k].max(POWER_FLOOR);
                        let g2 = (1.0 - p.over_subtraction * self.noise_power[k] / py).max(p.floor);
                        self.gains[row + k] = g2.sqrt();
                    }
                }
            }
            Method::Wiener => {
                self.estimate_noise(len);
                let p = self.config.wiener;
                let xi_min = 10f32.powf(p.xi_min_db / 10.0);
                let g_min = 10f32.powf(p.gain_floor_db / 20.0);
                for n in &mut self.noise_power {
                    *n *= p.noise_scale;
                }
                // prev = |Ŝ(t-1)|² / N: the previous frame's clean estimate over the noise.
                self.prev.fill(0.0);
                for t in 0..n_frames {
                    let row = t * n_bins;
                    for k in 0..n_bins {
                        let gamma = self.power[row + k] / self.noise_power[k];
                        let ml = (gamma - 1.0).max(0.0);
                        let xi = if t == 0 {
                            ml
                        } else {
                            p.alpha * self.prev[k] + (1.0 - p.alpha) * ml
                        }
                        .max(xi_min);
                        let g = (xi / (1.0 + xi)).max(g_min);
                        self.gains[row + k] = g;
                        self.prev[k] = g * g * gamma;
                    }
                }
            }
            Method::Nmf => {
                self.estimate_noise(len);
                let Some(model) = self.fitted.nmf.as_ref() else {
                    return Err(Error::State(
                        "method \"nmf\" needs dictionaries fit on train clips".into(),
                    ));
                };
                self.nmf.speech_mask(
                    model,
                    &self.config.nmf,
                    &self.power,
                    n_frames,
                    &self.noise_power,
                    &mut self.gains,
                );
            }
        }
        Ok(())
    }

    /// Smooths `gains` with noisereduce's triangular filter, separably in frequency and time.
    fn smooth_mask(&mut self, freq_hz: f32, time_ms: f32) {
        let n_bins = self.spec.n_bins;
        let n_frames = self.spec.n_frames;
        let bin_hz = self.sample_rate as f32 / (self.config.n_fft as f32 / 2.0);
        let n_freq = (freq_hz / bin_hz) as usize;
        let n_time =
            (time_ms / (self.config.hop as f32 / self.sample_rate as f32 * 1000.0)) as usize;
        if n_freq > 0 {
            for t in 0..n_frames {
                triangle_smooth(
                    &mut self.gains,
                    t * n_bins,
                    1,
                    n_bins,
                    n_freq,
                    &mut self.scratch,
                );
            }
        }
        if n_time > 0 {
            for k in 0..n_bins {
                triangle_smooth(
                    &mut self.gains,
                    k,
                    n_bins,
                    n_frames,
                    n_time,
                    &mut self.scratch,
                );
            }
        }
    }
}

/// Convolves `len` values of `data` at `offset + i * stride` with the normalized triangle of half-width `n`
/// (weights `1, 2, .., n+1, .., 2, 1`), zero outside, output centered ("same"), as two running box sums.
fn triangle_smooth(
    data: &mut [f32],
    offset: usize,
    stride: usize,
    len: usize,
    n: usize,
    scratch: &mut Vec<f32>,
) {
    // c[j] = sum of x[j-n ..= j] for j in 0..len+n; out[i] = sum of c[i ..= i+n].
    if len == 0 {
        return;
    }
    scratch.clear();
    scratch.resize(len + n, 0.0);
    let x = |i: usize| data[offset + i * stride];
    let mut run = 0.0f32;
    for (j, c) in scratch.iter_mut().enumerate() {
        if j < len {
            run += x(j);
        }
        if j > n && j - n - 1 < len {
            run -= x(j - n - 1);
        }
        *c = run;
    }
    let norm = 1.0 / ((n + 1) * (n + 1)) as f32;
    let mut run: f32 = scratch[..=n.min(len + n - 1)].iter().sum();
    for i in 0..len {
        data[offset + i * stride] = run * norm;
        run -= scratch[i];
        if i + n + 1 < len + n {
            run += scratch[i + n + 1];
        }
    }
}

/// Zero-phase one-pole low-pass along time for every bin (scipy's `filtfilt([b], [1, b-1])` started at steady
/// state), in place on a frame-major `n_frames x n_bins` matrix.
fn filtfilt_one_pole(data: &mut [f32], n_frames: usize, n_bins: usize, b: f32) {
    if n_frames == 0 {
        return;
    }
    let a = 1.0 - b;
    for t in 1..n_frames {
        for k in 0..n_bins {
            data[t * n_bins + k] = b * data[t * n_bins + k] + a * data[(t - 1) * n_bins + k];
        }
    }
    for t in (0..n_frames - 1).rev() {
        for k in 0..n_bins {
            data[t * n_bins + k] = b * data[t * n_bins + k] + a * data[(t + 1) * n_bins + k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mix, noise, si_snr, tone_burst};

    fn tone_model() -> NmfModel {
        // Speech dictionary from clean tone frames, noise dictionary from white-noise frames (different seeds
        // than the test clips).
        let (clean, _, _) = tone_burst(8000, 0.5);
        let mut d = Denoiser::new(&DenoiseConfig::default(), 8000, Arc::default()).unwrap();
        let mut speech = Vec::new();
        let (n_frames, n_bins) = d.power_spectrogram(&clean, &mut speech).unwrap();
        let speech: Vec<f32> = speech
            .chunks_exact(n_bins)
            .filter(|f| f.iter().sum::<f32>() > 1e-3)
            .flatten()
            .map(|p| p.sqrt())
            .collect();
        assert!(speech.len() / n_bins > n_frames / 3);
        let mut noise_frames = Vec::new();
        d.power_spectrogram(
            &noise(8000, 99).iter().map(|v| v * 0.1).collect::<Vec<_>>(),
            &mut noise_frames,
        )
        .unwrap();
        let noise_frames: Vec<f32> = noise_frames.iter().map(|p| p.sqrt()).collect();
        let params = NmfParams {
            speech_atoms: 4,
            noise_atoms: 4,
            ..NmfParams::default()
        };
        NmfModel::fit(&speech, &noise_frames, n_bins, &params, 5).unwrap()
    }

    fn denoiser(method: Method) -> Denoiser {
        let mut config = DenoiseConfig::with_method(method);
        config.nmf.speech_atoms = 4;
        config.nmf.noise_atoms = 4;
        let fitted = Fitted {
            noise: None,
            nmf: Some(tone_model()),
        };
        Denoiser::new(&config, 8000, Arc::new(fitted)).unwrap()
    }

    /// A tone burst in white noise at `snr_db`: the method must raise the scale-invariant SNR against the clean
    /// tone by at least `min_gain_db` (scale-invariant because a gate's smoothed mask also attenuates a narrow tone).
    fn check_tone_gains_snr(method: Method, snr_db: f32, min_gain_db: f32) {
        let (clean, start, end) = tone_burst(8000, 0.5);
        let noisy = mix(&clean, &noise(8000, 11), start, end, snr_db);
        let mut out = Vec::new();
        denoiser(method).process(&noisy, &mut out).unwrap();
        assert_eq!(out.len(), noisy.len());
        let before = si_snr(&clean, &noisy);
        let after = si_snr(&clean, &out);
        assert!(
            after - before >= min_gain_db,
            "{method:?} at {snr_db} dB: SNR {before:.2} -> {after:.2} dB, expected a gain of at least {min_gain_db} dB"
        );
    }

    #[test]
    fn every_method_gains_snr_on_a_tone_in_white_noise() {
        for snr in [0.0, 10.0] {
            check_tone_gains_snr(Method::SpectralGate, snr, 6.0);
            check_tone_gains_snr(Method::NonstationaryGate, snr, 3.0);
            check_tone_gains_snr(Method::SpectralSubtraction, snr, 6.0);
            check_tone_gains_snr(Method::Wiener, snr, 6.0);
            check_tone_gains_snr(Method::Nmf, snr, 6.0);
        }
    }

    #[test]
    fn silence_stays_silence() {
        for method in Method::ALL {
            let mut out = Vec::new();
            denoiser(method)
                .process(&vec![0.0; 4000], &mut out)
                .unwrap();
            assert_eq!(out.len(), 4000);
            assert!(
                out.iter().all(|v| v.is_finite() && v.abs() < 1e-6),
                "{method:?} made sound from silence"
            );
        }
    }

    /// With the method's identity setting the clip must come back unchanged within `1e-4`.
    fn check_identity(config: DenoiseConfig) {
        let (clean, start, end) = tone_burst(8000, 0.5);
        let noisy = mix(&clean, &noise(8000, 5), start, end, 5.0);
        let mut out = Vec::new();
        Denoiser::new(&config, 8000, Arc::default())
            .unwrap()
            .process(&noisy, &mut out)
            .unwrap();
        let err = noisy
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{:?}: max deviation {err}", config.method);
    }

    #[test]
    fn identity_settings_leave_the_clip_unchanged() {
        let base = DenoiseConfig::default();
        check_identity(DenoiseConfig {
            method: Method::None,
            ..base.clone()
        });
        let mut c = DenoiseConfig::with_method(Method::SpectralGate);
        c.spectral_gate.prop_decrease = 0.0;
        check_identity(c);
        let mut c = DenoiseConfig::with_method(Method::NonstationaryGate);
        c.nonstationary_gate.prop_decrease = 0.0;
        check_identity(c);
        let mut c = DenoiseConfig::with_method(Method::SpectralSubtraction);
        c.spectral_subtraction.over_subtraction = 0.0;
        check_identity(c);
        let mut c = DenoiseConfig::with_method(Method::Wiener);
        c.wiener.gain_floor_db = 0.0;
        check_identity(c);
    }

    #[test]
    fn a_train_profile_is_applied_unchanged_and_required() {
        let config = DenoiseConfig {
            noise_source: NoiseSource::Train,
            ..DenoiseConfig::default()
        };
        assert!(matches!(
            Denoiser::new(&config, 8000, Arc::default()),
            Err(Error::State(_))
        ));
        // Fit on noise-only clips, apply to a tone in the same noise.
        let mut d = Denoiser::new(&DenoiseConfig::default(), 8000, Arc::default()).unwrap();
        let mut acc = NoiseAccumulator::new(256);
        for seed in 0..4 {
            let n: Vec<f32> = noise(8000, 100 + seed).iter().map(|v| v * 0.05).collect();
            d.clip_noise(&n, &mut acc).unwrap();
        }
        let profile = acc.finish().unwrap();
        assert_eq!(profile.mean_power.len(), 129);
        let fitted = Arc::new(Fitted {
            noise: Some(profile),
            nmf: None,
        });
        let (clean, start, end) = tone_burst(8000, 0.9);
        let n: Vec<f32> = noise(8000, 7).iter().map(|v| v * 0.05).collect();
        let p_s = clean[start..end].iter().map(|v| v * v).sum::<f32>() / (end - start) as f32;
        let noisy: Vec<f32> = clean.iter().zip(&n).map(|(a, b)| a + b).collect();
        let snr_in = 10.0 * (p_s / 0.0025f32).log10();
        for method in [
            Method::SpectralGate,
            Method::SpectralSubtraction,
            Method::Wiener,
        ] {
            let config = DenoiseConfig {
                method,
                noise_source: NoiseSource::Train,
                ..DenoiseConfig::default()
            };
            let mut out = Vec::new();
            Denoiser::new(&config, 8000, Arc::clone(&fitted))
                .unwrap()
                .process(&noisy, &mut out)
                .unwrap();
            let gain = si_snr(&clean, &out) - si_snr(&clean, &noisy);
            assert!(
                gain > 5.0,
                "{method:?} with a train profile at {snr_in:.1} dB input gained only {gain:.2} dB"
            );
        }
        let wrong = Fitted {
            noise: Some(NoiseAccumulator::new(512).finish_or_empty()),
            nmf: None,
        };
        assert!(matches!(
            Denoiser::new(&config, 8000, Arc::new(wrong)),
            Err(Error::State(_))
        ));
    }

    #[test]
    fn buffers_carry_nothing_from_one_clip_to_the_next() {
        let (clean, start, end) = tone_burst(8000, 0.5);
        let a = mix(&clean, &noise(8000, 1), start, end, 0.0);
        let b: Vec<f32> = mix(&clean, &noise(8000, 2), start, end, 5.0)[..5000].to_vec();
        for method in Method::ALL {
            let mut fresh = Vec::new();
            denoiser(method).process(&b, &mut fresh).unwrap();
            let mut reused = denoiser(method);
            let mut out = Vec::new();
            reused.process(&a, &mut out).unwrap();
            reused.process(&b, &mut out).unwrap();
            assert_eq!(out, fresh, "{method:?}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let check = |c: DenoiseConfig, field: &str| {
            let e = c.validate("denoise.").unwrap_err().to_string();
            assert!(e.contains(field), "expected {field} in {e}");
        };
        check(
            DenoiseConfig {
                n_fft: 255,
                hop: 64,
                ..DenoiseConfig::default()
            },
            "denoise.n_fft",
        );
        check(
            DenoiseConfig {
                hop: 129,
                ..DenoiseConfig::default()
            },
            "denoise.hop",
        );
        check(
            DenoiseConfig {
                noise_quantile: 0.0,
                ..DenoiseConfig::default()
            },
            "denoise.noise_quantile",
        );
        let mut c = DenoiseConfig::default();
        c.wiener.alpha = 1.0;
        check(c, "denoise.wiener.alpha");
        let mut c = DenoiseConfig::default();
        c.spectral_gate.prop_decrease = 1.5;
        check(c, "denoise.spectral_gate.prop_decrease");
        let mut c = DenoiseConfig::default();
        c.nmf.speech_atoms = 0;
        check(c, "denoise.nmf.speech_atoms");
    }
}
