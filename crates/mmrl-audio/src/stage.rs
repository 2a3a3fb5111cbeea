//! The `audio` stage: the `audio` column of select's `samples` table becomes a fixed-shape, normalized log-mel
//! tensor per sample (and per augmented view of train samples), after decoding, resampling, trimming, SNR
//! filtering, denoising and loudness normalization.
//!
//! Outputs: `audio.parquet` (Role::Data: `id`, `split`, `view`, `audio_present`, `audio_snr_db`, `audio_mel`),
//! `state.json` (what was fit on train view 0: the noise profile, the NMF dictionaries, the per-mel-bin
//! normalization), `report.json` (counts per flag and reason, mean estimated SNR before and after denoising) and
//! `rejects.parquet` (undecodable clips, and flagged clips when their action is `drop`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanBuilder, FixedSizeListBuilder, Float32Builder,
    RecordBatch, StringArray, StringBuilder, UInt16Builder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mmrl_artifact::sample::{self, Rejects, Split};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, augment_waveform, random_gain, spec_augment};
use crate::denoise::{DenoiseConfig, Denoiser, Fitted, GainStats, Method, NoiseSource};
use crate::error::{Error, Result, config_error};
use crate::fit::{ClipFit, FitProbe, finish_fit};
use crate::mel::{LogMel, MelConfig, MelNorm, MelNormAccumulator};
use crate::signal::{
    Loudness, Resampler, Trim, clipped_fraction, fix_length, normalize_loudness, rms,
};
use crate::snr::SnrEstimator;
use crate::wav::{AudioReject, DecodeLimits, decode};

/// The stage name.
pub const STAGE: &str = "audio";
/// The data table (`audio.parquet`).
pub const TABLE: &str = "audio";
/// Whether the model sees audio for this row.
pub const PRESENT: &str = "audio_present";
/// Estimated SNR of the clip before denoising, dB (null when absent).
pub const SNR: &str = "audio_snr_db";
/// The normalized log-mel tensor, shape `[n_mels, n_frames]`.
pub const MEL: &str = "audio_mel";

/// What happens to a clip that fails a quality check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagAction {
    /// Count it in the report, keep the audio.
    Keep,
    /// Keep the sample, mark its audio absent for the model (`audio_present = false`, null tensor).
    MarkAbsent,
    /// Drop the sample: it leaves the table and is listed in `rejects.parquet`.
    Drop,
}

/// Quality checks and masking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// A clip whose RMS is below this level (dBFS) is silent (`silent_audio`).
    pub silence_dbfs: f32,
    /// Samples at or above this magnitude count as clipped.
    pub clip_level: f32,
    /// A clip with more than this fraction of clipped samples is clipped (`clipped_audio`).
    pub max_clipped_fraction: f32,
    /// A clip whose estimated SNR (before denoising) is below this is flagged `low_snr`. The estimate reads -30 dB
    /// when no signal stands out of the noise at all.
    pub min_snr_db: f32,
    /// Fraction of a clip's frames, the quietest, that the SNR estimate takes as noise.
    pub snr_noise_quantile: f32,
    /// What happens to silent clips.
    pub on_silent: FlagAction,
    /// What happens to clipped clips.
    pub on_clipped: FlagAction,
    /// What happens to low-SNR clips.
    pub on_low_snr: FlagAction,
    /// Task names or question types whose answers do not depend on audio: their audio is masked (marked absent,
    /// `masked_task`) without being decoded. Empty (the default) masks nothing; every entry must name a task or a
    /// question type the input holds, or the stage fails before any work, listing what the input has.
    pub mask_tasks: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            silence_dbfs: -60.0,
            clip_level: 0.999,
            max_clipped_fraction: 0.01,
            min_snr_db: -20.0,
            snr_noise_quantile: 0.4,
            on_silent: FlagAction::MarkAbsent,
            on_clipped: FlagAction::MarkAbsent,
            on_low_snr: FlagAction::MarkAbsent,
            mask_tasks: Vec::new(),
        }
    }
}

/// Parameters of the audio stage (`[stages.audio.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Every clip is resampled to this rate (Hz).
    pub sample_rate: u32,
    /// Every clip is trimmed or zero-padded to this length (seconds).
    pub clip_seconds: f64,
    /// Which part of a longer clip is kept.
    pub trim: Trim,
    /// Loudness normalization after denoising.
    pub loudness: Loudness,
    /// Target level of the loudness normalization, dBFS.
    pub target_dbfs: f32,
    /// Limits checked while decoding.
    pub decode: DecodeLimits,
    /// Quality checks and masking.
    pub filter: FilterConfig,
    /// The denoiser.
    pub denoise: DenoiseConfig,
    /// Log-mel features.
    pub mel: MelConfig,
    /// Train-only augmentation.
    pub augment: AugmentConfig,
    /// Worker threads (0: one per core). Results do not depend on it.
    pub threads: usize,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            sample_rate: 8000,
            clip_seconds: 1.0,
            trim: Trim::Start,
            loudness: Loudness::Rms,
            target_dbfs: -20.0,
            decode: DecodeLimits::default(),
            filter: FilterConfig::default(),
            denoise: DenoiseConfig::default(),
            mel: MelConfig::default(),
            augment: AugmentConfig::default(),
            threads: 0,
        }
    }
}

impl AudioConfig {
    /// Checks every field before any work is done; errors name the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        if !(1000..=384_000).contains(&self.sample_rate) {
            return Err(config_error(
                "sample_rate",
                format!("must be in 1000..=384000 Hz, got {}", self.sample_rate),
            ));
        }
        if !(self.clip_seconds.is_finite() && self.clip_seconds > 0.0 && self.clip_seconds <= 600.0)
        {
            return Err(config_error(
                "clip_seconds",
                format!("must be in (0, 600], got {}", self.clip_seconds),
            ));
        }
        if !(-80.0..=0.0).contains(&self.target_dbfs) {
            return Err(config_error(
                "target_dbfs",
                format!("must be in [-80, 0], got {}", self.target_dbfs),
            ));
        }
        let d = &self.decode;
        if d.min_sample_rate == 0 || d.min_sample_rate > d.max_sample_rate {
            return Err(config_error(
                "decode.min_sample_rate",
                format!(
                    "must be in 1..=decode.max_sample_rate ({}), got {}",
                    d.max_sample_rate, d.min_sample_rate
                ),
            ));
        }
        if !(d.max_seconds.is_finite() && d.max_seconds > 0.0) {
            return Err(config_error(
                "decode.max_seconds",
                format!("must be finite and > 0, got {}", d.max_seconds),
            ));
        }
        let f = &self.filter;
        if !(-200.0..=0.0).contains(&f.silence_dbfs) {
            return Err(config_error(
                "filter.silence_dbfs",
                format!("must be in [-200, 0], got {}", f.silence_dbfs),
            ));
        }
        if !(f.clip_level > 0.0 && f.clip_level <= 1.0) {
            return Err(config_error(
                "filter.clip_level",
                format!("must be in (0, 1], got {}", f.clip_level),
            ));
        }
        if !(0.0..=1.0).contains(&f.max_clipped_fraction) {
            return Err(config_error(
                "filter.max_clipped_fraction",
                format!("must be in [0, 1], got {}", f.max_clipped_fraction),
            ));
        }
        if !(-100.0..=100.0).contains(&f.min_snr_db) {
            return Err(config_error(
                "filter.min_snr_db",
                format!("must be in [-100, 100], got {}", f.min_snr_db),
            ));
        }
        if !(f.snr_noise_quantile > 0.0 && f.snr_noise_quantile <= 1.0) {
            return Err(config_error(
                "filter.snr_noise_quantile",
                format!("must be in (0, 1], got {}", f.snr_noise_quantile),
            ));
        }
        if let Some(t) = f.mask_tasks.iter().find(|t| t.trim().is_empty()) {
            return Err(config_error(
                "filter.mask_tasks",
                format!("entries must be non-empty task or qtype names, got {t:?}"),
            ));
        }
        self.denoise.validate("denoise.")?;
        self.mel.validate(self.sample_rate, "mel.")?;
        self.augment.validate("augment.")?;
        if self.threads > 1024 {
            return Err(config_error(
                "threads",
                format!("must be in 0..=1024, got {}", self.threads),
            ));
        }
        if self.clip_samples() < self.denoise.n_fft.max(self.mel.n_fft) {
            return Err(config_error(
                "clip_seconds",
                format!(
                    "{} s is {} samples at {} Hz, shorter than one FFT frame ({})",
                    self.clip_seconds,
                    self.clip_samples(),
                    self.sample_rate,
                    self.denoise.n_fft.max(self.mel.n_fft)
                ),
            ));
        }
        Ok(())
    }

    /// Samples per clip after resampling and trimming.
    pub fn clip_samples(&self) -> usize {
        (f64::from(self.sample_rate) * self.clip_seconds).round() as usize
    }

    /// The tensor shape `[n_mels, n_frames]`.
    pub fn mel_shape(&self) -> [usize; 2] {
        [self.mel.n_mels, self.mel.n_frames(self.clip_samples())]
    }
}

/// What the stage fit on train view 0 and applies unchanged to every split (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioState {
    /// The clip sample rate.
    pub sample_rate: u32,
    /// Samples per clip.
    pub clip_samples: usize,
    /// The tensor shape `[n_mels, n_frames]`.
    pub mel_shape: [usize; 2],
    /// The denoising method.
    pub method: Method,
    /// Train clips the noise profile and dictionaries were fit on.
    pub fit_clips: usize,
    /// The train noise profile and NMF dictionaries (when the config uses them).
    pub fitted: Fitted,
    /// Per-mel-bin normalization.
    pub mel_norm: MelNorm,
}

impl AudioState {
    /// Reads a `state.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io("reading", path))?;
        serde_json::from_str(&text).map_err(|e| Error::State(format!("{}: {e}", path.display())))
    }
}

/// Estimated SNRs of the present view-0 clips (of one split, or all), before and after denoising.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnrSummary {
    /// Clips measured.
    pub clips: usize,
    /// Mean blind SNR estimate of the noisy clips, dB (the `audio_snr_db` column).
    pub mean_before_db: f64,
    /// Mean blind SNR estimate of the denoised clips, dB. It over-states the gain: the estimate takes the
    /// denoised clip's quietest frames, now strongly suppressed, as its noise reference.
    pub mean_after_db: f64,
    /// Mean noise power removed by the denoiser's gains, dB, against the noise spectrum of the noisy clip.
    pub mean_noise_attenuation_db: f64,
    /// Mean signal power removed by the gains, dB, against the same reference.
    pub mean_signal_attenuation_db: f64,
    /// `mean_noise_attenuation_db - mean_signal_attenuation_db`: the SNR improvement measured at a fixed noise
    /// reference, the figure to quote.
    pub mean_snr_gain_db: f64,
}

/// What the stage did (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioSummary {
    /// Samples read.
    pub rows: usize,
    /// Samples in the table (kept).
    pub kept: usize,
    /// Samples dropped (in `rejects.parquet`).
    pub dropped: usize,
    /// Kept samples whose audio the model sees.
    pub present: usize,
    /// Kept samples whose audio is absent or masked, per reason (`missing_audio`, `masked_task`, `silent_audio`,
    /// `clipped_audio`, `low_snr`).
    pub absent_by_reason: BTreeMap<String, usize>,
    /// Dropped samples per reason.
    pub rejects_by_reason: BTreeMap<String, usize>,
    /// Clips that failed a check, per check, whatever its action.
    pub flagged: BTreeMap<String, usize>,
    /// Rows written per view.
    pub rows_per_view: BTreeMap<u16, usize>,
    /// The denoising method and where its noise statistics came from.
    pub method: Method,
    /// The noise source.
    pub noise_source: NoiseSource,
    /// Mean estimated SNR before and after denoising over all present view-0 clips: the stage's measure of how
    /// much the denoiser helped.
    pub snr: SnrSummary,
    /// The same per split.
    pub snr_by_split: BTreeMap<String, SnrSummary>,
    /// The tensor shape `[n_mels, n_frames]`.
    pub mel_shape: [usize; 2],
    /// Train view-0 clips the denoiser's state (noise profile, dictionaries) was fit on; 0 when it fits nothing.
    pub denoiser_fit_clips: usize,
    /// Train view-0 clips the mel normalization was fit on.
    pub mel_fit_clips: usize,
}

/// One sample read from the input table.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    split: Split,
    masked: bool,
    audio: Option<Vec<u8>>,
    line: u64,
}

/// A flag raised by a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Silent,
    Clipped,
    LowSnr,
}

impl Flag {
    fn code(self) -> &'static str {
        match self {
            Flag::Silent => "silent_audio",
            Flag::Clipped => "clipped_audio",
            Flag::LowSnr => "low_snr",
        }
    }

    fn action(self, f: &FilterConfig) -> FlagAction {
        match self {
            Flag::Silent => f.on_silent,
            Flag::Clipped => f.on_clipped,
            Flag::LowSnr => f.on_low_snr,
        }
    }
}

/// What became of one sample.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Present,
    Absent(&'static str),
    Dropped(&'static str, String),
}

/// One row of the output table.
#[derive(Debug, Clone, Default)]
struct ViewOut {
    snr_before: Option<f32>,
    snr_after: Option<f32>,
    gains: Option<GainStats>,
    mel: Option<Vec<f32>>,
}

#[derive(Debug, Clone)]
struct RowOut {
    fate: Fate,
    flags: Vec<Flag>,
    views: Vec<ViewOut>,
}

/// A clip decoded, resampled to the stage rate and fixed in length, with its quality flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The samples (`clip_samples` of them).
    pub samples: Vec<f32>,
    /// RMS below `filter.silence_dbfs` (before trimming).
    pub silent: bool,
    /// More than `filter.max_clipped_fraction` clipped samples (before resampling).
    pub clipped: bool,
}

/// The part of a decoded clip to resample: what trimming to `clip_seconds` keeps, plus a margin for the
/// resampler's filter. Resampling only that makes a ten-minute file cost what a short one does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Source samples to resample.
    source: std::ops::Range<usize>,
    /// `Some(k)`: the window was cut out of a longer clip (`trim = "center"`); the clip is the `k`-th resampled
    /// sample onwards. `None`: fix the length with the configured trim as usual.
    skip: Option<usize>,
}

/// Margin of source samples kept beyond a cut for the resampler's filter.
const RESAMPLE_MARGIN: usize = 64;

/// The window of a `len`-sample clip at `rate` Hz that the trim keeps (see [`Window`]).
///
/// With `trim = "center"` the window starts on a source sample that falls exactly on an output sample (a
/// multiple of `rate / gcd(rate, sample_rate)`), so the resampled window lies on the same output grid as the
/// whole resampled clip, and the kept middle is the one trimming the whole clip would keep, sample for sample.
fn kept_window(len: usize, rate: u32, config: &AudioConfig) -> Window {
    let target = config.clip_samples();
    let (from, to) = (rate as usize, config.sample_rate as usize);
    let whole = Window {
        source: 0..len,
        skip: None,
    };
    match config.trim {
        Trim::Start => {
            let kept = (target * from).div_ceil(to) + RESAMPLE_MARGIN;
            Window {
                source: 0..kept.min(len),
                skip: None,
            }
        }
        Trim::Center => {
            let resampled = (len as f64 * to as f64 / from as f64).round() as usize;
            if resampled <= target {
                return whole;
            }
            let first = (resampled - target) / 2;
            let g = gcd(from, to);
            let (step_in, step_out) = (from / g, to / g);
            let steps = (first * from / to).saturating_sub(RESAMPLE_MARGIN) / step_in;
            let start = steps * step_in;
            let end = ((first + target) * from).div_ceil(to) + RESAMPLE_MARGIN;
            if start == 0 && end >= len {
                return whole;
            }
            Window {
                source: start..end.min(len),
                skip: Some(first - steps * step_out),
            }
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// The per-clip pipeline with its buffers: decode, resample, fix length, estimate SNR, denoise, normalize
/// loudness, log-mel. One per thread.
#[derive(Debug)]
pub struct ClipProcessor {
    config: AudioConfig,
    denoiser: Denoiser,
    snr: SnrEstimator,
    mel: LogMel,
    resampler: Resampler,
    denoised: Vec<f32>,
}

impl ClipProcessor {
    /// A processor for `config` using the fitted denoiser state.
    pub fn new(config: &AudioConfig, fitted: Arc<Fitted>) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            denoiser: Denoiser::new(&config.denoise, config.sample_rate, fitted)?,
            snr: SnrEstimator::new(
                config.denoise.n_fft,
                config.denoise.hop,
                config.filter.snr_noise_quantile,
            )?,
            mel: LogMel::new(&config.mel, config.sample_rate)?,
            resampler: Resampler::new(),
            denoised: Vec::new(),
        })
    }

    /// Decodes and conditions a WAV: mono, resampled, trimmed or padded, with its silence and clipping flags.
    pub fn prepare(&mut self, wav: &[u8]) -> std::result::Result<Prepared, AudioReject> {
        let decoded = decode(wav, &self.config.decode)?;
        let f = &self.config.filter;
        let silent = rms(&decoded.samples) < 10f32.powf(f.silence_dbfs / 20.0);
        let clipped = clipped_fraction(&decoded.samples, f.clip_level) > f.max_clipped_fraction;
        let target = self.config.clip_samples();
        let window = kept_window(decoded.samples.len(), decoded.sample_rate, &self.config);
        let mut samples = self
            .resampler
            .resample(
                &decoded.samples[window.source],
                decoded.sample_rate,
                self.config.sample_rate,
            )
            .map_err(|e| AudioReject::Undecodable(e.to_string()))?;
        match window.skip {
            Some(skip) => {
                samples.drain(..skip.min(samples.len()));
                fix_length(&mut samples, target, Trim::Start);
            }
            None => fix_length(&mut samples, target, self.config.trim),
        }
        Ok(Prepared {
            samples,
            silent,
            clipped,
        })
    }

    /// The blind SNR estimate of a clip, dB.
    pub fn estimate_snr(&mut self, x: &[f32]) -> Result<f32> {
        self.snr.estimate(x)
    }

    /// Denoises a clip in place.
    pub fn denoise(&mut self, x: &mut Vec<f32>) -> Result<()> {
        self.denoiser.process(x, &mut self.denoised)?;
        std::mem::swap(x, &mut self.denoised);
        Ok(())
    }

    /// Normalizes loudness in place.
    pub fn normalize(&self, x: &mut [f32]) {
        let min_level = 10f32.powf(self.config.filter.silence_dbfs / 20.0);
        normalize_loudness(x, self.config.loudness, self.config.target_dbfs, min_level);
    }

    /// The (un-normalized) log-mel of a clip, `[n_mels, n_frames]` row-major.
    pub fn log_mel(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.mel.compute(x, &mut out)?;
        Ok(out)
    }

    /// The denoiser (for fitting).
    pub fn denoiser(&mut self) -> &mut Denoiser {
        &mut self.denoiser
    }
}

/// The normalized log-mel of one WAV, as the stage computes view 0, using a fitted [`AudioState`]: for applying a
/// trained pipeline to new audio. Returns the tensor (`[n_mels, n_frames]`) and the estimated SNR before
/// denoising, or why the clip was refused.
pub fn featurize(
    processor: &mut ClipProcessor,
    state: &AudioState,
    wav: &[u8],
) -> Result<std::result::Result<(Vec<f32>, f32), AudioReject>> {
    let prepared = match processor.prepare(wav) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let mut x = prepared.samples;
    let snr = processor.estimate_snr(&x)?;
    processor.denoise(&mut x)?;
    processor.normalize(&mut x);
    let mut mel = processor.log_mel(&x)?;
    state.mel_norm.apply(&mut mel, state.mel_shape[1])?;
    Ok(Ok((mel, snr)))
}

/// A reproducible RNG for one sample, view and purpose.
fn rng_for(seed: u64, id: &str, view: u16, purpose: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(id.len() as u64).to_le_bytes());
    h.update(id.as_bytes());
    h.update(&view.to_le_bytes());
    h.update(purpose.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// The schema of `audio.parquet`.
pub fn output_schema(config: &AudioConfig) -> SchemaRef {
    let shape = config.mel_shape();
    Arc::new(Schema::new(vec![
        Field::new(sample::ID, DataType::Utf8, false),
        Field::new(sample::SPLIT, DataType::Utf8, false),
        Field::new(sample::VIEW, DataType::UInt16, false),
        Field::new(PRESENT, DataType::Boolean, false),
        Field::new(SNR, DataType::Float32, true),
        sample::tensor_field(MEL, &shape, true),
    ]))
}

/// The tasks and question types the input holds, to check the params that name them.
#[derive(Debug, Default)]
struct Names {
    tasks: BTreeSet<String>,
    qtypes: BTreeSet<String>,
}

/// Every `filter.mask_tasks` entry must name a task or a question type of the data: a typo, or a name copied
/// from another dataset's pipeline, would otherwise mask nothing without a word.
fn check_mask_entries(config: &AudioConfig, names: &Names, path: &Path) -> Result<()> {
    let unknown: Vec<&String> = config
        .filter
        .mask_tasks
        .iter()
        .filter(|m| !names.tasks.contains(*m) && !names.qtypes.contains(*m))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let list = |set: &BTreeSet<String>| {
        if set.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", set.iter().collect::<Vec<_>>())
        }
    };
    Err(config_error(
        "filter.mask_tasks",
        format!(
            "{} {unknown:?} {} neither a task nor a question type of {}; its tasks: {}; its question types: {} \
             (an empty list masks nothing)",
            if unknown.len() == 1 {
                "entry"
            } else {
                "entries"
            },
            if unknown.len() == 1 { "is" } else { "are" },
            path.display(),
            list(&names.tasks),
            list(&names.qtypes)
        ),
    ))
}

fn read_rows(artifact: &Artifact, config: &AudioConfig) -> Result<(Vec<Row>, Names)> {
    let path = artifact.dir().join("samples.parquet");
    let schema = artifact.table_schema("samples")?;
    sample::check_sample_schema(&schema, &path)?;
    let masks: HashSet<&str> = config
        .filter
        .mask_tasks
        .iter()
        .map(String::as_str)
        .collect();
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut names = Names::default();
    for batch in artifact.table_reader("samples", 1024)? {
        let batch = batch?;
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| Error::Input {
                path: path.clone(),
                message: format!("missing column {name:?}"),
            })
        };
        let as_str = |name: &str| -> Result<StringArray> {
            column(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| Error::Input {
                    path: path.clone(),
                    message: format!("column {name:?} is not Utf8"),
                })
        };
        let ids = as_str(sample::ID)?;
        let splits = as_str(sample::SPLIT)?;
        let tasks = as_str(sample::TASK)?;
        let qtypes = as_str(sample::QTYPE)?;
        let audio = column(sample::AUDIO)?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .cloned()
            .ok_or_else(|| Error::Input {
                path: path.clone(),
                message: "column \"audio\" is not Binary".into(),
            })?;
        let lines = column(sample::SOURCE_LINE)?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| Error::Input {
                path: path.clone(),
                message: "column \"source_line\" is not UInt64".into(),
            })?;
        for i in 0..batch.num_rows() {
            let id = ids.value(i).to_owned();
            let split = if splits.is_null(i) { None } else { Split::parse(splits.value(i)) }.ok_or_else(|| {
                Error::Input {
                    path: path.clone(),
                    message: format!(
                        "sample {id:?} (line {}) has split {:?}; the audio stage needs train, val or test (run select first)",
                        lines.value(i),
                        (!splits.is_null(i)).then(|| splits.value(i))
                    ),
                }
            })?;
            if !seen.insert(id.clone()) {
                return Err(Error::Input {
                    path: path.clone(),
                    message: format!("duplicate sample id {id:?}"),
                });
            }
            for (array, set) in [(&tasks, &mut names.tasks), (&qtypes, &mut names.qtypes)] {
                if !array.is_null(i) && !set.contains(array.value(i)) {
                    set.insert(array.value(i).to_owned());
                }
            }
            let named = |a: &StringArray| !a.is_null(i) && masks.contains(a.value(i));
            let masked = named(&tasks) || named(&qtypes);
            let audio = (!audio.is_null(i)).then(|| audio.value(i).to_vec());
            rows.push(Row {
                id,
                split,
                masked,
                audio,
                line: lines.value(i),
            });
        }
    }
    Ok((rows, names))
}

/// The train view-0 clips statistics may be fit on: present, not masked, decodable, neither silent nor clipped.
fn fit_candidates(rows: &[Row]) -> Vec<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.split == Split::Train && !r.masked && r.audio.is_some())
        .map(|(i, _)| i)
        .collect()
}

/// Fits the denoiser's train state (noise profile and/or NMF dictionaries) on train view 0. Returns it and the
/// clips used.
fn fit_denoiser(config: &AudioConfig, rows: &[Row], seed: u64) -> Result<(Fitted, usize)> {
    let d = &config.denoise;
    if !FitProbe::needed(d) {
        return Ok((Fitted::default(), 0));
    }
    let probe_config = AudioConfig {
        denoise: DenoiseConfig {
            method: Method::None,
            noise_source: NoiseSource::Clip,
            ..d.clone()
        },
        ..config.clone()
    };
    let candidates = fit_candidates(rows);
    let per_clip_frames = d
        .nmf
        .max_fit_frames
        .div_ceil(candidates.len().max(1))
        .max(1);
    let measured: Vec<Result<Option<ClipFit>>> = candidates
        .par_iter()
        .map_init(
            || {
                Ok::<_, Error>((
                    ClipProcessor::new(&probe_config, Arc::default())?,
                    FitProbe::new(d, config.sample_rate)?,
                ))
            },
            |state, &i| {
                let (processor, probe) = state.as_mut().map_err(|e| Error::State(e.to_string()))?;
                let Some(bytes) = rows[i].audio.as_deref() else {
                    return Ok(None);
                };
                let Ok(prepared) = processor.prepare(bytes) else {
                    return Ok(None);
                };
                if prepared.silent || prepared.clipped {
                    return Ok(None);
                }
                probe.measure(&prepared.samples, per_clip_frames)
            },
        )
        .collect();
    let clips = measured
        .into_iter()
        .filter_map(|m| m.transpose())
        .collect::<Result<Vec<_>>>()?;
    finish_fit(d, clips, seed)
}

/// Processes one sample: its fate, flags and the views' SNRs and un-normalized log-mels.
fn process_row(
    processor: &mut ClipProcessor,
    config: &AudioConfig,
    row: &Row,
    seed: u64,
) -> Result<RowOut> {
    let n_views = if row.split == Split::Train {
        config.augment.views
    } else {
        0
    };
    let absent = |reason: &'static str, flags: Vec<Flag>| RowOut {
        fate: Fate::Absent(reason),
        flags,
        views: vec![ViewOut::default(); usize::from(n_views) + 1],
    };
    let Some(bytes) = row.audio.as_deref() else {
        return Ok(absent("missing_audio", Vec::new()));
    };
    if row.masked {
        return Ok(absent("masked_task", Vec::new()));
    }
    let prepared = match processor.prepare(bytes) {
        Ok(p) => p,
        Err(r) => {
            return Ok(RowOut {
                fate: Fate::Dropped(
                    r.code(),
                    format!("line {}: audio of {:?}: {}", row.line, row.id, r.detail()),
                ),
                flags: Vec::new(),
                views: Vec::new(),
            });
        }
    };
    let mut flags = Vec::new();
    if prepared.silent {
        flags.push(Flag::Silent);
    }
    if prepared.clipped {
        flags.push(Flag::Clipped);
    }
    let snr_before = if prepared.silent {
        None
    } else {
        Some(processor.estimate_snr(&prepared.samples)?)
    };
    if snr_before.is_some_and(|s| s < config.filter.min_snr_db) {
        flags.push(Flag::LowSnr);
    }
    for flag in &flags {
        match flag.action(&config.filter) {
            FlagAction::Keep => {}
            FlagAction::MarkAbsent => return Ok(absent(flag.code(), flags.clone())),
            FlagAction::Drop => {
                let detail = match flag {
                    Flag::Silent => format!("RMS below {} dBFS", config.filter.silence_dbfs),
                    Flag::Clipped => format!(
                        "more than {} of the samples at or above {}",
                        config.filter.max_clipped_fraction, config.filter.clip_level
                    ),
                    Flag::LowSnr => format!(
                        "estimated SNR {:.1} dB below min_snr_db {}",
                        snr_before.unwrap_or(f32::NAN),
                        config.filter.min_snr_db
                    ),
                };
                return Ok(RowOut {
                    fate: Fate::Dropped(
                        flag.code(),
                        format!("line {}: audio of {:?}: {detail}", row.line, row.id),
                    ),
                    flags: flags.clone(),
                    views: Vec::new(),
                });
            }
        }
    }
    let mut views = Vec::with_capacity(usize::from(n_views) + 1);
    for view in 0..=n_views {
        let mut x = prepared.samples.clone();
        let mut rng = rng_for(seed, &row.id, view, "waveform");
        let before = if view == 0 {
            snr_before
        } else {
            augment_waveform(
                &mut x,
                config.sample_rate,
                &config.augment,
                &mut rng,
                &mut processor.resampler,
            )?;
            Some(processor.estimate_snr(&x)?)
        };
        processor.denoise(&mut x)?;
        let gains = processor.denoiser.last_stats();
        let after = if prepared.silent {
            None
        } else {
            Some(processor.estimate_snr(&x)?)
        };
        processor.normalize(&mut x);
        if view > 0 {
            random_gain(&mut x, &config.augment, &mut rng);
        }
        let mel = processor.log_mel(&x)?;
        views.push(ViewOut {
            snr_before: before,
            snr_after: after,
            gains,
            mel: Some(mel),
        });
    }
    Ok(RowOut {
        fate: Fate::Present,
        flags,
        views,
    })
}

fn snr_summary<'a>(items: impl Iterator<Item = &'a ViewOut>) -> SnrSummary {
    let (mut n, mut b, mut a) = (0usize, 0.0f64, 0.0f64);
    let (mut m, mut noise, mut signal) = (0usize, 0.0f64, 0.0f64);
    for v in items {
        if let (Some(before), Some(after)) = (v.snr_before, v.snr_after) {
            n += 1;
            b += f64::from(before);
            a += f64::from(after);
        }
        if let Some(g) = v.gains {
            m += 1;
            noise += f64::from(g.noise_attenuation_db);
            signal += f64::from(g.signal_attenuation_db);
        }
    }
    let mean = |x: f64, k: usize| if k == 0 { 0.0 } else { x / k as f64 };
    SnrSummary {
        clips: n,
        mean_before_db: mean(b, n),
        mean_after_db: mean(a, n),
        mean_noise_attenuation_db: mean(noise, m),
        mean_signal_attenuation_db: mean(signal, m),
        mean_snr_gain_db: mean(noise - signal, m),
    }
}

fn build_batch(
    schema: &SchemaRef,
    config: &AudioConfig,
    rows: &[(&Row, u16, &ViewOut)],
) -> Result<RecordBatch> {
    let [n_mels, n_frames] = config.mel_shape();
    let len = n_mels * n_frames;
    let mut ids = StringBuilder::new();
    let mut splits = StringBuilder::new();
    let mut views = UInt16Builder::new();
    let mut present = BooleanBuilder::new();
    let mut snr = Float32Builder::new();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let mut mel = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows.len() * len),
        len as i32,
        rows.len(),
    )
    .with_field(item);
    for (row, view, out) in rows {
        ids.append_value(&row.id);
        splits.append_value(row.split.as_str());
        views.append_value(*view);
        present.append_value(out.mel.is_some());
        snr.append_option(out.snr_before);
        match &out.mel {
            Some(m) if m.len() == len => {
                mel.values().append_slice(m);
                mel.append(true);
            }
            Some(m) => {
                return Err(Error::State(format!(
                    "log-mel of {:?} has {} values, expected {len}",
                    row.id,
                    m.len()
                )));
            }
            None => {
                mel.values().append_slice(&vec![0.0; len]);
                mel.append(false);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(splits.finish()),
        Arc::new(views.finish()),
        Arc::new(present.finish()),
        Arc::new(snr.finish()),
        Arc::new(mel.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// Runs the stage on select's artifact at `samples`, writing the artifact at `output`.
pub fn run(config: &AudioConfig, samples: &Path, output: &Path, seed: u64) -> Result<AudioSummary> {
    config.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| Error::State(format!("starting {} worker threads: {e}", config.threads)))?;
    pool.install(|| run_in_pool(config, samples, output, seed))
}

/// The stage inside its thread pool: the steps in the order of the README.
fn run_in_pool(
    config: &AudioConfig,
    samples: &Path,
    output: &Path,
    seed: u64,
) -> Result<AudioSummary> {
    let input = Artifact::open(samples)?;
    let (rows, names) = read_rows(&input, config)?;
    check_mask_entries(config, &names, &input.dir().join("samples.parquet"))?;
    tracing::info!(rows = rows.len(), input = %samples.display(), "read samples");

    let (fitted, fit_clips) = fit_denoiser(config, &rows, seed)?;
    let fitted = Arc::new(fitted);
    let mut outs = process_rows(config, &rows, &fitted, seed)?;
    let (mel_norm, mel_clips) = fit_mel_norm(config, &rows, &outs);
    normalize_and_augment(config, &rows, &mut outs, &mel_norm, seed)?;

    let mut writer = create_writer(config, &input, output, seed)?;
    let mut summary = new_summary(config, &rows, &outs, fit_clips, mel_clips);
    let rejects = write_rows(&mut writer, config, &rows, &outs, &mut summary)?;
    writer.write_rejects(rejects)?;
    let state = AudioState {
        sample_rate: config.sample_rate,
        clip_samples: config.clip_samples(),
        mel_shape: config.mel_shape(),
        method: config.denoise.method,
        fit_clips,
        fitted: (*fitted).clone(),
        mel_norm,
    };
    writer.write_json("state.json", Role::State, &state)?;
    writer.write_json("report.json", Role::Report, &summary)?;
    writer.commit()?;
    tracing::info!(
        rows = summary.rows,
        kept = summary.kept,
        present = summary.present,
        dropped = summary.dropped,
        snr_before_db = summary.snr.mean_before_db,
        snr_after_db = summary.snr.mean_after_db,
        snr_gain_db = summary.snr.mean_snr_gain_db,
        "audio stage done"
    );
    Ok(summary)
}

/// Decodes, filters, denoises and featurizes every row in parallel (one [`ClipProcessor`] per worker); the
/// first error in row order fails the stage.
fn process_rows(
    config: &AudioConfig,
    rows: &[Row],
    fitted: &Arc<Fitted>,
    seed: u64,
) -> Result<Vec<RowOut>> {
    let outs: Vec<Result<RowOut>> = rows
        .par_iter()
        .map_init(
            || ClipProcessor::new(config, Arc::clone(fitted)),
            |processor, row| {
                let processor = processor
                    .as_mut()
                    .map_err(|e| Error::State(e.to_string()))?;
                process_row(processor, config, row, seed)
            },
        )
        .collect();
    outs.into_iter().collect::<Result<Vec<_>>>()
}

/// Per-mel-bin normalization, fit on train view 0 only, in row order. Returns it and the number of clips it saw.
fn fit_mel_norm(config: &AudioConfig, rows: &[Row], outs: &[RowOut]) -> (MelNorm, usize) {
    let [n_mels, n_frames] = config.mel_shape();
    let mut acc = MelNormAccumulator::new(n_mels);
    let mut mel_clips = 0;
    for (row, out) in rows.iter().zip(outs) {
        if let Some(mel) = out
            .views
            .first()
            .and_then(|v| v.mel.as_ref())
            .filter(|_| row.split == Split::Train)
        {
            acc.add(mel, n_frames);
            mel_clips += 1;
        }
    }
    (acc.finish(), mel_clips)
}

/// Applies the mel normalization to every view, then SpecAugment to the augmented views (each from its own
/// seeded generator, so the result does not depend on the thread count).
fn normalize_and_augment(
    config: &AudioConfig,
    rows: &[Row],
    outs: &mut [RowOut],
    mel_norm: &MelNorm,
    seed: u64,
) -> Result<()> {
    let [n_mels, n_frames] = config.mel_shape();
    outs.par_iter_mut()
        .zip(rows.par_iter())
        .try_for_each(|(out, row)| -> Result<()> {
            for (view, v) in out.views.iter_mut().enumerate() {
                if let Some(mel) = v.mel.as_mut() {
                    mel_norm.apply(mel, n_frames)?;
                    if view > 0 {
                        let mut rng = rng_for(seed, &row.id, view as u16, "specaugment");
                        spec_augment(mel, n_mels, n_frames, &config.augment, &mut rng);
                    }
                }
            }
            Ok(())
        })
}

/// Opens the output artifact and records the input and that fitting read only train.
fn create_writer(
    config: &AudioConfig,
    input: &Artifact,
    output: &Path,
    seed: u64,
) -> Result<ArtifactWriter> {
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::State(format!("serializing the config: {e}")))?,
        seed: Some(seed),
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("samples", input);
    writer.fit_splits(&["train"]);
    Ok(writer)
}

/// The summary before the rows are counted: row count, fit sizes and the SNR summaries (overall and per split,
/// over view 0 of the rows with a mel).
fn new_summary(
    config: &AudioConfig,
    rows: &[Row],
    outs: &[RowOut],
    fit_clips: usize,
    mel_clips: usize,
) -> AudioSummary {
    let mut summary = AudioSummary {
        rows: rows.len(),
        kept: 0,
        dropped: 0,
        present: 0,
        absent_by_reason: BTreeMap::new(),
        rejects_by_reason: BTreeMap::new(),
        flagged: BTreeMap::new(),
        rows_per_view: BTreeMap::new(),
        method: config.denoise.method,
        noise_source: config.denoise.noise_source,
        snr: snr_summary(
            outs.iter()
                .filter_map(|o| o.views.first().filter(|v| v.mel.is_some())),
        ),
        snr_by_split: BTreeMap::new(),
        mel_shape: config.mel_shape(),
        denoiser_fit_clips: fit_clips,
        mel_fit_clips: mel_clips,
    };
    for split in Split::ALL {
        let s = snr_summary(
            rows.iter()
                .zip(outs)
                .filter(|(r, _)| r.split == split)
                .filter_map(|(_, o)| o.views.first().filter(|v| v.mel.is_some())),
        );
        summary.snr_by_split.insert(split.as_str().to_owned(), s);
    }
    summary
}

/// Writes `audio.parquet` (one row per kept row and view, in batches of 1,024) and counts flags, fates and views
/// into `summary`. Returns the rejects of the dropped rows.
fn write_rows(
    writer: &mut ArtifactWriter,
    config: &AudioConfig,
    rows: &[Row],
    outs: &[RowOut],
    summary: &mut AudioSummary,
) -> Result<Rejects> {
    let schema = output_schema(config);
    let mut rejects = Rejects::new(STAGE);
    let mut table = writer.table(TABLE, Role::Data, Arc::clone(&schema))?;
    let mut pending: Vec<(&Row, u16, &ViewOut)> = Vec::new();
    for (row, out) in rows.iter().zip(outs) {
        for flag in &out.flags {
            *summary.flagged.entry(flag.code().to_owned()).or_insert(0) += 1;
        }
        match &out.fate {
            Fate::Dropped(reason, detail) => {
                summary.dropped += 1;
                *summary
                    .rejects_by_reason
                    .entry((*reason).to_owned())
                    .or_insert(0) += 1;
                rejects.push(row.line, Some(&row.id), reason, detail);
                continue;
            }
            Fate::Absent(reason) => {
                *summary
                    .absent_by_reason
                    .entry((*reason).to_owned())
                    .or_insert(0) += 1;
            }
            Fate::Present => summary.present += 1,
        }
        summary.kept += 1;
        for (view, v) in out.views.iter().enumerate() {
            *summary.rows_per_view.entry(view as u16).or_insert(0) += 1;
            pending.push((row, view as u16, v));
        }
        if pending.len() >= 1024 {
            table.write(&build_batch(&schema, config, &pending)?)?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        table.write(&build_batch(&schema, config, &pending)?)?;
    }
    table.finish()?;
    Ok(rejects)
}
