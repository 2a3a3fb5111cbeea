//! Dataset profiles, and the commented pipeline file `init` writes from one.
//!
//! `init` ingests a dataset folder into a scratch artifact (every row validated exactly as the pipeline's ingest
//! will), profiles what it holds (rows, splits, modalities, image sizes and modes, audio rates and lengths, column
//! types and missing values, question types with their answers, shared media), prints the profile, and writes a
//! pipeline file that extends the shared recipe with the values that depend on this data: image size and patch,
//! audio rate, clip length and windows, answer length. Nothing in it names a column, task or question type the
//! data does not have.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, Float64Array, RecordBatch, StringArray};
use image::ImageDecoder;
use mmrl_artifact::Artifact;
use mmrl_artifact::sample::{self, FeatureKind};
use serde::Serialize;

use crate::ingest::{self, IngestConfig};
use crate::{Error, Result};

/// What `init` learned about a dataset folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// The folder (or file) profiled.
    pub dataset: PathBuf,
    /// What ingest read, as its `report.json` says (format, qtype source, rejects).
    pub ingest: serde_json::Value,
    /// Rows ingest accepted.
    pub rows: usize,
    /// Rows per declared split (`unassigned` for rows without one).
    pub splits: BTreeMap<String, usize>,
    /// Rows per task (`(none)` for rows without one).
    pub tasks: BTreeMap<String, usize>,
    /// Rows with an image / audio / the `modalities` annotation.
    pub with_image: usize,
    /// Rows with audio.
    pub with_audio: usize,
    /// Rows declaring the modalities their answer needs, by declaration.
    pub modalities: BTreeMap<String, usize>,
    /// The images, when any row has one.
    pub images: Option<ImageProfile>,
    /// The audio clips, when any row has one.
    pub audio: Option<AudioProfile>,
    /// The tabular feature columns.
    pub columns: Vec<ColumnProfile>,
    /// Question types, most rows first.
    pub question_types: Vec<QuestionTypeProfile>,
}

/// Distinct images and their shapes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageProfile {
    /// Distinct images (by content).
    pub distinct: usize,
    /// Distinct images used by more than one row.
    pub shared: usize,
    /// Width in pixels.
    pub width: Stats,
    /// Height in pixels.
    pub height: Stats,
    /// Images per colour type (`L8`, `Rgb8`, `Rgba16`, ...).
    pub color_types: BTreeMap<String, usize>,
    /// Images per format (`Png`, `Jpeg`).
    pub formats: BTreeMap<String, usize>,
}

/// Distinct audio clips and their rates and lengths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioProfile {
    /// Distinct clips (by content).
    pub distinct: usize,
    /// Distinct clips used by more than one row.
    pub shared: usize,
    /// Clips per sample rate in Hz.
    pub sample_rates: BTreeMap<u32, usize>,
    /// Clips per channel count.
    pub channels: BTreeMap<u16, usize>,
    /// Length in seconds.
    pub seconds: Stats,
}

/// One tabular feature column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnProfile {
    /// Column name.
    pub name: String,
    /// `numeric` or `categorical`.
    pub kind: String,
    /// Empty cells.
    pub missing: usize,
    /// Distinct non-empty values.
    pub distinct: usize,
    /// Numeric columns: the values' spread.
    pub values: Option<Stats>,
    /// Categorical columns: the most frequent values with their counts.
    pub top: Vec<(String, usize)>,
}

/// One question type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionTypeProfile {
    /// The type (the `qtype` column, or the template ingest derived).
    pub name: String,
    /// Rows of this type.
    pub rows: usize,
    /// Distinct answers.
    pub distinct_answers: usize,
    /// The most frequent answers with their counts.
    pub top_answers: Vec<(String, usize)>,
    /// Share of the most frequent answer: exact match of always giving it.
    pub majority: f64,
    /// Longest answer in tokens.
    pub max_answer_tokens: usize,
    /// Rows with an image / with audio.
    pub with_image: usize,
    /// Rows with audio.
    pub with_audio: usize,
}

/// Minimum, median, 95th percentile and maximum of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// Smallest value.
    pub min: f64,
    /// Median (lower middle value).
    pub median: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Some(Self {
            min: values[0],
            median: at(0.5),
            p95: at(0.95),
            max: values[values.len() - 1],
        })
    }

    fn describe(&self, unit: &str) -> String {
        if self.min == self.max {
            return format!("{}{unit} (all)", trim(self.min));
        }
        format!(
            "{}-{}{unit} (median {}, p95 {})",
            trim(self.min),
            trim(self.max),
            trim(self.median),
            trim(self.p95)
        )
    }
}

/// Profiles `dataset` (ingesting it into a scratch folder under `scratch`, removed afterwards).
pub fn profile(dataset: &Path, scratch: &Path) -> Result<Profile> {
    let out = scratch.join(format!(".mmrl-init-{}", std::process::id()));
    // Every row is profiled, rejected or not; the pipeline's own ingest keeps its reject limit.
    let config = IngestConfig {
        max_reject_fraction: 1.0,
        ..IngestConfig::default()
    };
    let result = ingest::run(&config, dataset, &out).and_then(|_| profile_artifact(dataset, &out));
    // The scratch artifact is ours alone; failing to remove it loses nothing.
    let _ = std::fs::remove_dir_all(&out);
    result
}

/// Profiles an ingest artifact at `dir` that was read from `dataset`.
pub fn profile_artifact(dataset: &Path, dir: &Path) -> Result<Profile> {
    let artifact = Artifact::open(dir)?;
    let report_path = artifact.file("report.json")?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).map_err(|source| Error::Io {
            action: "reading",
            path: report_path.clone(),
            source,
        })?)
        .map_err(|e| Error::Other(format!("{}: {e}", report_path.display())))?;
    let (schema, batches) = artifact.read_table("samples")?;
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    let path = artifact.file("samples.parquet")?;
    let text = |name: &str| -> Result<Vec<Option<String>>> {
        Ok(match batch.column_by_name(name) {
            None => vec![None; batch.num_rows()],
            Some(c) => c
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::Dataset {
                    path: path.clone(),
                    message: format!("column {name:?} is not Utf8"),
                })?
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect(),
        })
    };
    let count = |values: &[Option<String>], none: &str| -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for v in values {
            *counts
                .entry(v.clone().unwrap_or_else(|| none.to_owned()))
                .or_default() += 1;
        }
        counts
    };
    let images = binary(&batch, sample::IMAGE, &path)?;
    let audio = binary(&batch, sample::AUDIO, &path)?;
    let declared = text(sample::MODALITIES)?;
    let mut modalities = count(&declared, "");
    modalities.remove("");
    Ok(Profile {
        dataset: dataset.to_path_buf(),
        ingest: report,
        rows: batch.num_rows(),
        splits: count(&text(sample::SPLIT)?, "unassigned"),
        tasks: count(&text(sample::TASK)?, "(none)"),
        with_image: images.iter().filter(|i| i.is_some()).count(),
        with_audio: audio.iter().filter(|a| a.is_some()).count(),
        modalities,
        images: image_profile(&images),
        audio: audio_profile(&audio),
        columns: column_profiles(&batch),
        question_types: question_types(
            &text(sample::QTYPE)?,
            &text(sample::ANSWER)?,
            &images,
            &audio,
        ),
    })
}

fn binary<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<&'a [u8]>>> {
    let col = batch.column_by_name(name).ok_or_else(|| Error::Dataset {
        path: path.to_path_buf(),
        message: format!("no column {name:?}"),
    })?;
    let bin = col
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or_else(|| Error::Dataset {
            path: path.to_path_buf(),
            message: format!("column {name:?} is not Binary"),
        })?;
    Ok(bin.iter().collect())
}

/// Distinct media by content hash, with how many rows use each.
fn distinct<'a>(media: &[Option<&'a [u8]>]) -> Vec<(&'a [u8], usize)> {
    let mut seen: HashMap<blake3::Hash, usize> = HashMap::new();
    let mut out: Vec<(&[u8], usize)> = Vec::new();
    for bytes in media.iter().flatten() {
        match seen.get(&blake3::hash(bytes)) {
            Some(&i) => out[i].1 += 1,
            None => {
                seen.insert(blake3::hash(bytes), out.len());
                out.push((bytes, 1));
            }
        }
    }
    out
}

fn image_profile(images: &[Option<&[u8]>]) -> Option<ImageProfile> {
    let distinct = distinct(images);
    if distinct.is_empty() {
        return None;
    }
    let (mut widths, mut heights) = (Vec::new(), Vec::new());
    let (mut color_types, mut formats) = (BTreeMap::new(), BTreeMap::new());
    for (bytes, _) in &distinct {
        // Ingest decoded every accepted image, so these headers read; one that does not is skipped.
        let Ok(reader) = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format() else {
            continue;
        };
        if let Some(f) = reader.format() {
            *formats.entry(format!("{f:?}")).or_default() += 1;
        }
        let Ok(decoder) = reader.into_decoder() else {
            continue;
        };
        let (w, h) = decoder.dimensions();
        widths.push(f64::from(w));
        heights.push(f64::from(h));
        *color_types
            .entry(format!("{:?}", decoder.color_type()))
            .or_default() += 1;
    }
    Some(ImageProfile {
        distinct: distinct.len(),
        shared: distinct.iter().filter(|(_, n)| *n > 1).count(),
        width: Stats::of(widths)?,
        height: Stats::of(heights)?,
        color_types,
        formats,
    })
}

fn audio_profile(clips: &[Option<&[u8]>]) -> Option<AudioProfile> {
    let distinct = distinct(clips);
    if distinct.is_empty() {
        return None;
    }
    let (mut rates, mut channels, mut seconds) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for (bytes, _) in &distinct {
        let Ok(reader) = hound::WavReader::new(Cursor::new(bytes)) else {
            continue;
        };
        let spec = reader.spec();
        *rates.entry(spec.sample_rate).or_default() += 1;
        *channels.entry(spec.channels).or_default() += 1;
        seconds.push(f64::from(reader.duration()) / f64::from(spec.sample_rate.max(1)));
    }
    Some(AudioProfile {
        distinct: distinct.len(),
        shared: distinct.iter().filter(|(_, n)| *n > 1).count(),
        sample_rates: rates,
        channels,
        seconds: Stats::of(seconds)?,
    })
}

fn column_profiles(batch: &RecordBatch) -> Vec<ColumnProfile> {
    sample::features(&batch.schema())
        .into_iter()
        .filter_map(|(name, kind)| {
            let col = batch.column_by_name(&name)?;
            Some(match kind {
                FeatureKind::Numeric => {
                    let values = col.as_any().downcast_ref::<Float64Array>()?;
                    let present: Vec<f64> = values.iter().flatten().collect();
                    let mut bits: Vec<u64> = present.iter().map(|v| v.to_bits()).collect();
                    bits.sort_unstable();
                    bits.dedup();
                    ColumnProfile {
                        name,
                        kind: "numeric".into(),
                        missing: values.null_count(),
                        distinct: bits.len(),
                        values: Stats::of(present),
                        top: Vec::new(),
                    }
                }
                FeatureKind::Categorical => {
                    let values = col.as_any().downcast_ref::<StringArray>()?;
                    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                    for v in values.iter().flatten() {
                        *counts.entry(v.to_owned()).or_default() += 1;
                    }
                    ColumnProfile {
                        name,
                        kind: "categorical".into(),
                        missing: values.null_count(),
                        distinct: counts.len(),
                        values: None,
                        top: top(counts, 5),
                    }
                }
            })
        })
        .collect()
}

/// The `k` most frequent values, ties by value.
fn top(counts: BTreeMap<String, usize>, k: usize) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

fn question_types(
    qtypes: &[Option<String>],
    answers: &[Option<String>],
    images: &[Option<&[u8]>],
    audio: &[Option<&[u8]>],
) -> Vec<QuestionTypeProfile> {
    let mut rows: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, q) in qtypes.iter().enumerate() {
        rows.entry(q.clone().unwrap_or_else(|| "(none)".into()))
            .or_default()
            .push(i);
    }
    let mut out: Vec<QuestionTypeProfile> = rows
        .into_iter()
        .map(|(name, rows)| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for &r in &rows {
                *counts
                    .entry(answers[r].clone().unwrap_or_default())
                    .or_default() += 1;
            }
            let distinct_answers = counts.len();
            let max_answer_tokens = counts
                .keys()
                .map(|a| a.split_whitespace().count())
                .max()
                .unwrap_or(0);
            let top = top(counts, 5);
            QuestionTypeProfile {
                majority: top
                    .first()
                    .map_or(0.0, |(_, n)| *n as f64 / rows.len() as f64),
                name,
                distinct_answers,
                top_answers: top,
                max_answer_tokens,
                with_image: rows.iter().filter(|&&r| images[r].is_some()).count(),
                with_audio: rows.iter().filter(|&&r| audio[r].is_some()).count(),
                rows: rows.len(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.name.cmp(&b.name)));
    out
}

/// The values of the pipeline file that depend on the data, chosen from a profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choices {
    /// Image side after resizing: the median source side rounded up to a power of two, within 16..=64.
    pub image_size: usize,
    /// Image patch side: a quarter of the size (16 image tokens).
    pub image_patch: usize,
    /// Audio rate: the most common source rate, at most 16 kHz (nothing is upsampled).
    pub sample_rate: u32,
    /// Clip length: the 95th-percentile source length rounded up to 0.25 s, within 0.5..=10 s.
    pub clip_seconds: f64,
    /// Mel window: about 32 ms, a power of two; the hop is half of it.
    pub n_fft: usize,
    /// Longest answer in tokens.
    pub max_answer_len: usize,
}

impl Choices {
    /// Picks every data-dependent value from `profile`.
    pub fn from_profile(profile: &Profile) -> Self {
        let image_size = profile.images.as_ref().map_or(32, |i| {
            let side = i.width.median.max(i.height.median).max(1.0) as usize;
            side.next_power_of_two().clamp(16, 64)
        });
        let sample_rate = profile.audio.as_ref().map_or(16_000, |a| {
            a.sample_rates
                .iter()
                .max_by_key(|(rate, n)| (**n, **rate))
                .map_or(16_000, |(rate, _)| (*rate).min(16_000))
        });
        let clip_seconds = profile.audio.as_ref().map_or(1.0, |a| {
            ((a.seconds.p95 * 4.0).ceil() / 4.0).clamp(0.5, 10.0)
        });
        let n_fft = ((f64::from(sample_rate) * 0.032).round() as usize)
            .next_power_of_two()
            .max(64);
        Self {
            image_size,
            image_patch: image_size / 4,
            sample_rate,
            clip_seconds,
            n_fft,
            max_answer_len: profile
                .question_types
                .iter()
                .map(|q| q.max_answer_tokens)
                .max()
                .unwrap_or(1)
                .max(1),
        }
    }
}

/// The pipeline file for a profiled dataset: `extends` the shared recipe (`recipe`, written relative to the
/// file's folder `at`) and sets what depends on the data, with the profile's facts as comments.
pub fn pipeline_file(profile: &Profile, name: &str, at: &Path, recipe: &Path) -> String {
    let c = Choices::from_profile(profile);
    let rel = |p: &Path| relative(p, at).display().to_string().replace('\\', "/");
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Pipeline for {}, written by `cargo xtask init` from the profile below; edit it freely.\n\
         # Run it with `cargo xtask pipeline --config {}` (artifacts in artifacts/{name}/).\n#",
        relative(&profile.dataset, Path::new(".")).display(),
        relative(&at.join(format!("{name}.toml")), Path::new(".")).display(),
    );
    let shown = Profile {
        dataset: relative(&profile.dataset, Path::new(".")),
        ..profile.clone()
    };
    for line in render(&shown).lines() {
        let _ = writeln!(t, "# {line}");
    }
    let _ = writeln!(
        t,
        "\nextends = \"{}\"\n\n[pipeline]\nname = \"{name}\"\nseed = 42\ndataset = \"{}\"  # `--dataset DIR` overrides it",
        rel(recipe),
        rel(&profile.dataset),
    );
    let declared_all = !profile.splits.contains_key("unassigned");
    let _ = writeln!(
        t,
        "\n[stages.select.params.split]\n\
         respect_existing = true  # {}\n\
         on_conflict = \"reject\"   # rows sharing an image or clip with rows of another declared split: \"regroup\" keeps them",
        if declared_all {
            "every row declares its split: kept as declared"
        } else {
            "rows without a split get one by seed, stratified by answer"
        }
    );
    if let Some(i) = &profile.images {
        let _ = writeln!(
            t,
            "\n[stages.image.params]\nsize = {}  # median source {}x{}, rounded up to a power of two within 16..64",
            c.image_size, i.width.median, i.height.median
        );
    }
    if let Some(a) = &profile.audio {
        let _ = writeln!(
            t,
            "\n[stages.audio.params]\n\
             sample_rate = {}    # most common source rate, at most 16 kHz\n\
             clip_seconds = {}   # 95% of clips are at most {:.2} s\n\
             [stages.audio.params.denoise]\nn_fft = {}\nhop = {}\n\
             [stages.audio.params.mel]\nn_fft = {}  # ~32 ms windows\nhop = {}",
            c.sample_rate,
            c.clip_seconds,
            a.seconds.p95,
            c.n_fft,
            c.n_fft / 4,
            c.n_fft,
            c.n_fft / 2,
        );
    }
    let _ = writeln!(t, "\n{}", search_space(profile, &c));
    let _ = writeln!(
        t,
        "\n[stages.sft.params]\n\
         max_answer_len = {}  # answer tokens: the longest answer's{}",
        c.max_answer_len,
        if profile.images.is_some() {
            format!(
                "\nimage_patch = {}     # {} image tokens",
                c.image_patch,
                (c.image_size / c.image_patch).pow(2)
            )
        } else {
            String::new()
        },
    );
    t
}

/// The hpo search over the model's shape, beside the recipe's optimizer knobs, written commented out: the preset
/// (width and depth) and the patching of each medium the data has. A trial of the larger shape costs about four
/// of the recipe's (measured on examples/digits, 2 cores), so the user opts in. Audio features (mels, windows)
/// are the audio stage's, which runs before hpo, so they are not searched.
fn search_space(profile: &Profile, c: &Choices) -> String {
    let mut t = String::from(
        "# To search the model's shape too (a trial of \"small\" or of the finer patches costs about four of\n\
         # \"tiny\"'s), uncomment these lines:\n\
         [stages.hpo.params]\n\
         n_trials = 8  # the recipe's six optimizer knobs and the model's shape below\n\
         [stages.hpo.params.space]\n\
         preset = { type = \"categorical\", choices = [\"tiny\", \"small\"] }  # d 64, 2+1 layers / d 128, 3+2 layers",
    );
    if profile.images.is_some() && c.image_patch >= 2 {
        let _ = write!(
            t,
            "\nimage_patch = {{ type = \"categorical\", choices = [{}, {}] }}  # {} or {} image tokens",
            c.image_patch,
            c.image_patch / 2,
            (c.image_size / c.image_patch).pow(2),
            (c.image_size / (c.image_patch / 2)).pow(2),
        );
    }
    if profile.audio.is_some() {
        t.push_str(
            "\naudio_patch = { type = \"categorical\", choices = [2, 4] }  # mel frames per audio token",
        );
    }
    t.lines()
        .enumerate()
        .map(|(i, l)| {
            if i < 2 {
                l.to_owned()
            } else {
                format!("# {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `path` relative to the folder `base` (both made absolute), with `..` where needed.
fn relative(path: &Path, base: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, base) = (abs(path), abs(base));
    let common = path
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in base.components().skip(common) {
        out.push("..");
    }
    for c in path.components().skip(common) {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The profile as text for people.
pub fn render(p: &Profile) -> String {
    let mut t = String::new();
    let get = |k: &str| p.ingest.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let _ = writeln!(
        t,
        "dataset: {} ({} rows accepted, {} rejected{})",
        p.dataset.display(),
        p.rows,
        get("rejected"),
        match get("format") {
            serde_json::Value::String(f) => format!(", read as {f}"),
            _ => String::new(),
        }
    );
    if let Some(by) = get("rejects_by_reason")
        .as_object()
        .filter(|m| !m.is_empty())
    {
        let _ = writeln!(
            t,
            "rejects by reason: {}",
            serde_json::Value::Object(by.clone())
        );
    }
    let _ = writeln!(t, "splits: {}", join(&p.splits));
    if p.tasks.len() > 1 || !p.tasks.contains_key("(none)") {
        let _ = writeln!(t, "tasks: {}", join(&p.tasks));
    }
    let _ = writeln!(
        t,
        "modalities: image in {} rows, audio in {} rows, {} tabular column(s){}",
        p.with_image,
        p.with_audio,
        p.columns.len(),
        if p.modalities.is_empty() {
            String::new()
        } else {
            format!("; declared needs: {}", join(&p.modalities))
        }
    );
    if let Some(i) = &p.images {
        let _ = writeln!(
            t,
            "images: {} distinct ({} used by several rows), width {}, height {}, colour {}, format {}",
            i.distinct,
            i.shared,
            i.width.describe(""),
            i.height.describe(""),
            join(&i.color_types),
            join(&i.formats)
        );
    }
    if let Some(a) = &p.audio {
        let _ = writeln!(
            t,
            "audio: {} distinct clips ({} used by several rows), rate in Hz {}, channels {}, length {}",
            a.distinct,
            a.shared,
            join(&a.sample_rates),
            join(&a.channels),
            a.seconds.describe(" s")
        );
    }
    for c in &p.columns {
        let spread = match (&c.values, c.top.is_empty()) {
            (Some(v), _) => v.describe(""),
            (None, false) => format!(
                "top {}",
                c.top
                    .iter()
                    .map(|(v, n)| format!("{v} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "column {:?}: {}, {} missing, {} distinct, {spread}",
            c.name, c.kind, c.missing, c.distinct
        );
    }
    let source = match get("qtype_source") {
        serde_json::Value::String(s) => format!(" ({s})"),
        _ => String::new(),
    };
    let _ = writeln!(t, "question types{source}: {}", p.question_types.len());
    for q in &p.question_types {
        let _ = writeln!(
            t,
            "  {:?}: {} rows, {} answers (majority {:.2}: {}), image {}, audio {}",
            q.name,
            q.rows,
            q.distinct_answers,
            q.majority,
            q.top_answers
                .iter()
                .map(|(a, n)| format!("{a} ({n})"))
                .collect::<Vec<_>>()
                .join(", "),
            q.with_image,
            q.with_audio
        );
    }
    t
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn join<K: std::fmt::Display>(m: &BTreeMap<K, usize>) -> String {
    m.iter()
        .map(|(k, n)| format!("{k} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `init`: profiles `dataset` and writes the pipeline file `output` (refusing to overwrite one unless `force`).
pub fn init(
    dataset: &Path,
    output: &Path,
    name: &str,
    recipe: &Path,
    force: bool,
) -> Result<Profile> {
    if output.exists() && !force {
        return Err(Error::Other(format!(
            "{} exists; pass --force to overwrite it",
            output.display()
        )));
    }
    let at = output.parent().unwrap_or(Path::new("."));
    let profile = profile(dataset, &std::env::temp_dir())?;
    let text = pipeline_file(&profile, name, at, recipe);
    std::fs::create_dir_all(at).map_err(|source| Error::Io {
        action: "creating",
        path: at.to_path_buf(),
        source,
    })?;
    std::fs::write(output, text).map_err(|source| Error::Io {
        action: "writing",
        path: output.to_path_buf(),
        source,
    })?;
    Ok(profile)
}
