//! Seeded generator of the default synthetic multimodal dataset (images of shapes, DTMF tones, sensor rows).
//!
//! [`generate`] writes a dataset folder: `manifest.csv` (header
//! `id,image,audio,question,answer,task,qtype,accept,battery,temperature,humidity,device`),
//! `images/<id>.png` and `audio/<id>.wav`. Each sample has:
//!
//! * an `image_size`² RGB picture with 1 to 5 shapes (circle, square, triangle) in four colors
//!   (red, green, blue, yellow) on a noisy grey background;
//! * a mono 16-bit WAV of `clip_seconds` at `sample_rate` carrying one DTMF digit (0.3-0.5 s at a
//!   random offset) mixed with white, pink, mains-hum or babble noise at an SNR uniform in
//!   [-5, 20] dB;
//! * sensor readings (battery %, temperature °C, humidity %, device id) with missing cells,
//!   sentinels (`-999`), gross outliers and a few non-finite (`NaN`, `inf`) cells;
//! * one templated question with its answer (see the `qtype` ids on [`generate`]), and for the questions a
//!   checker can verify, `accept`: the valid answers separated by `|` (several for the set-valued questions,
//!   whose `answer` is one of them drawn at random, as one annotator would pick).
//!
//! Curation work is injected on purpose: corrupt media (blank image, silent or clipped audio),
//! exact duplicates under new ids, and rows of an unrelated `caption` task.
//!
//! Everything is a pure function of the seed and the config: the same inputs give a
//! byte-identical folder.

use std::f64::consts::PI;
use std::fs::File;
use std::io::{BufWriter, Cursor};
use std::path::Path;

use image::ImageEncoder;
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::{Error, Result};

/// Probability that a sample whose question does not need the image (resp. audio) lacks it.
const MISSING_MEDIA_FRACTION: f64 = 0.03;
/// Probability that a numeric tabular cell is written as a non-finite value (`NaN`, `inf`, `-inf`).
const NONFINITE_FRACTION: f64 = 0.002;
/// Battery level (percent) below which the battery is "low".
const BATTERY_LOW_BELOW: f64 = 20.0;
/// Temperature (°C) above which the device is "overheating".
const OVERHEAT_ABOVE: f64 = 30.0;
/// Sentinel written for some outlier cells.
const SENTINEL: f64 = -999.0;
/// Manifest header, in column order.
const HEADER: [&str; 12] = [
    "id",
    "image",
    "audio",
    "question",
    "answer",
    "task",
    "qtype",
    "accept",
    "battery",
    "temperature",
    "humidity",
    "device",
];
/// Device ids of the categorical `device` column.
const DEVICES: [&str; 6] = ["dev_a", "dev_b", "dev_c", "dev_d", "dev_e", "dev_f"];
/// Free-text answers of the unrelated `caption` task.
const CAPTIONS: [&str; 8] = [
    "a picture of shapes",
    "some colored shapes",
    "colored shapes on a grey background",
    "a small noisy picture",
    "a few geometric shapes",
    "an image with some shapes in it",
    "shapes scattered on grey",
    "a grey picture with colored shapes",
];

/// Settings of the synthetic dataset; every field has a default (see [`GenerateConfig::default`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateConfig {
    /// Number of manifest rows, duplicates and unrelated rows included (default 4000).
    pub samples: usize,
    /// Width and height of every image in pixels (default 32).
    pub image_size: u32,
    /// Audio sample rate in Hz (default 8000).
    pub sample_rate: u32,
    /// Length of every audio clip in seconds (default 1.0).
    pub clip_seconds: f64,
    /// Probability that a tabular cell is missing (empty), per cell (default 0.10).
    pub missing_fraction: f64,
    /// Probability that a numeric tabular cell is a sentinel (-999) or a gross outlier, per cell
    /// (default 0.015; half sentinels, half gross values).
    pub outlier_fraction: f64,
    /// Fraction of samples whose media is corrupted: blank image, silent or clipped audio
    /// (default 0.03).
    pub corrupt_fraction: f64,
    /// Fraction of rows that are exact copies of an earlier sample under a new id (default 0.02).
    pub duplicate_fraction: f64,
    /// Fraction of rows of the unrelated `caption` task (default 0.03).
    pub unrelated_fraction: f64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            samples: 4000,
            image_size: 32,
            sample_rate: 8000,
            clip_seconds: 1.0,
            missing_fraction: 0.10,
            outlier_fraction: 0.015,
            corrupt_fraction: 0.03,
            duplicate_fraction: 0.02,
            unrelated_fraction: 0.03,
        }
    }
}

impl GenerateConfig {
    /// Checks ranges: `samples` in 1..=10_000_000, `image_size` in 8..=1024, `sample_rate` in
    /// 4000..=96000, `clip_seconds` in (0, 60], and every fraction finite and in [0, 0.5].
    ///
    /// Returns [`Error::Config`] naming the offending field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000_000).contains(&self.samples) {
            return Err(config_error(
                "samples",
                format!("must be in 1..=10000000, got {}", self.samples),
            ));
        }
        if !(8..=1024).contains(&self.image_size) {
            return Err(config_error(
                "image_size",
                format!("must be in 8..=1024, got {}", self.image_size),
            ));
        }
        if !(4000..=96_000).contains(&self.sample_rate) {
            return Err(config_error(
                "sample_rate",
                format!("must be in 4000..=96000, got {}", self.sample_rate),
            ));
        }
        if !(self.clip_seconds.is_finite() && self.clip_seconds > 0.0 && self.clip_seconds <= 60.0)
        {
            return Err(config_error(
                "clip_seconds",
                format!("must be in (0, 60], got {}", self.clip_seconds),
            ));
        }
        let fractions = [
            ("missing_fraction", self.missing_fraction),
            ("outlier_fraction", self.outlier_fraction),
            ("corrupt_fraction", self.corrupt_fraction),
            ("duplicate_fraction", self.duplicate_fraction),
            ("unrelated_fraction", self.unrelated_fraction),
        ];
        for (field, value) in fractions {
            if !(value.is_finite() && (0.0..=0.5).contains(&value)) {
                return Err(config_error(
                    field,
                    format!("must be a finite number in [0, 0.5], got {value}"),
                ));
            }
        }
        Ok(())
    }

    /// Number of audio samples in one clip (at least 1).
    fn clip_len(&self) -> usize {
        ((f64::from(self.sample_rate) * self.clip_seconds).round() as usize).max(1)
    }
}

fn config_error(field: &str, message: String) -> Error {
    Error::Config {
        field: field.to_string(),
        message,
    }
}

/// What was generated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerateSummary {
    /// Manifest rows written (equals `samples`).
    pub rows: usize,
    /// Rows whose media is corrupt (blank image, silent or clipped audio), copies included.
    pub corrupt: usize,
    /// Rows that are exact copies of an earlier row under a new id.
    pub duplicates: usize,
    /// Rows of the unrelated `caption` task, copies included.
    pub unrelated: usize,
    /// Empty tabular cells (all four tabular columns), over all rows.
    pub missing_cells: usize,
    /// Numeric tabular cells holding a sentinel, a gross outlier or a non-finite value, over all rows.
    pub outlier_cells: usize,
}

/// Writes the dataset folder (`manifest.csv`, `images/`, `audio/`) into `out_dir`, which must
/// not exist yet or be empty; it is created.
///
/// Tasks and question templates (`qtype`):
/// * `shapes` (image): `count_shapes` "how many shapes are there"; `count_color` "how many
///   {color} shapes are there"; `has_shape` "is there a {shape}"; `circle_color` "what color is
///   the circle" (only when exactly one circle is drawn).
/// * `tone` (audio): `tone_digit` "what digit is the tone".
/// * `sensor` (table): `battery_low` "is the battery low" (true battery < 20); `overheating` "is
///   the device overheating" (true temperature > 30). Answers use the values before any
///   missing/outlier corruption of the shown cells.
/// * `compare`: `digit_gt_count` "is the tone digit greater than the number of {color} shapes";
///   `digit_and_count` "what are the tone digit and the number of shapes" (answer "7 3");
///   `battery_or_triangle` "is the battery low or is there a triangle".
/// * Questions a checker verifies (built from skills the types above teach; `accept` holds the answer):
///   `tone_even` "is the tone digit even" (tone); `count_either` "how many {c1} or {c2} shapes are there"
///   (shapes); `battery_and_shape` "is the battery low and is there a {shape}" (compare).
/// * Set-valued questions (`accept` lists every valid answer, `answer` is one drawn at random): `name_color`
///   "name a color in the image" and `name_shape` "name a shape in the image" (shapes).
/// * `caption` (unrelated): `caption` "describe the image", free-text answer.
///
/// Row ids are `s` plus a zero-padded index in manifest order (at least five digits).
pub fn generate(config: &GenerateConfig, seed: u64, out_dir: &Path) -> Result<GenerateSummary> {
    config.validate()?;
    prepare_out_dir(out_dir)?;
    let images_dir = out_dir.join("images");
    let audio_dir = out_dir.join("audio");
    for dir in [&images_dir, &audio_dir] {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
    }

    let plan = make_plan(config, seed);
    let n = plan.order.len();
    let width = n.saturating_sub(1).to_string().len().max(5);

    let manifest_path = out_dir.join("manifest.csv");
    let file = File::create(&manifest_path).map_err(|source| Error::Io {
        action: "creating",
        path: manifest_path.clone(),
        source,
    })?;
    let mut writer = csv::Writer::from_writer(BufWriter::new(file));
    let csv_error =
        |e: csv::Error| Error::Other(format!("writing {}: {e}", manifest_path.display()));
    writer.write_record(HEADER).map_err(csv_error)?;

    let mut summary = GenerateSummary {
        rows: n,
        corrupt: 0,
        duplicates: plan.duplicates,
        unrelated: 0,
        missing_cells: 0,
        outlier_cells: 0,
    };
    let clip_len = config.clip_len();
    for (row, &base_index) in plan.order.iter().enumerate() {
        let slot = &plan.base[base_index];
        let spec = make_spec(slot.seed, slot.caption, config);
        let id = format!("s{row:0width$}");

        let image_cell = if spec.has_image {
            let blank = match slot.corruption {
                Some(Corruption::BlankImage(rgb)) => Some(rgb),
                _ => None,
            };
            let raw = render_image(&spec.image, config.image_size, blank);
            let png = encode_png(&raw, config.image_size)?;
            let rel = format!("images/{id}.png");
            write_file(&images_dir.join(format!("{id}.png")), &png)?;
            rel
        } else {
            String::new()
        };
        let audio_cell = if spec.has_audio {
            let pcm = render_audio(&spec.audio, config.sample_rate, clip_len, slot.corruption);
            let wav = encode_wav(&pcm, config.sample_rate)?;
            let rel = format!("audio/{id}.wav");
            write_file(&audio_dir.join(format!("{id}.wav")), &wav)?;
            rel
        } else {
            String::new()
        };

        if slot.corruption.is_some() {
            summary.corrupt += 1;
        }
        if slot.caption {
            summary.unrelated += 1;
        }
        for cell in &spec.table.cells {
            match cell.kind {
                CellKind::Missing => summary.missing_cells += 1,
                CellKind::Outlier | CellKind::NonFinite => summary.outlier_cells += 1,
                CellKind::Value => {}
            }
        }

        let record: [&str; 12] = [
            &id,
            &image_cell,
            &audio_cell,
            &spec.question.text(),
            &spec.answer,
            spec.question.task().name(),
            spec.question.qtype(),
            &spec.accept,
            &spec.table.cells[0].text,
            &spec.table.cells[1].text,
            &spec.table.cells[2].text,
            &spec.table.cells[3].text,
        ];
        writer.write_record(record).map_err(csv_error)?;
    }
    writer.flush().map_err(|source| Error::Io {
        action: "writing",
        path: manifest_path.clone(),
        source,
    })?;
    tracing::info!(
        rows = summary.rows,
        corrupt = summary.corrupt,
        duplicates = summary.duplicates,
        unrelated = summary.unrelated,
        out_dir = %out_dir.display(),
        "generated synthetic dataset"
    );
    Ok(summary)
}

/// Runs the `generate` stage: writes the dataset folder as output `dataset` of an artifact at `output`, with
/// the summary as `report.json`.
pub fn run(config: &GenerateConfig, seed: u64, output: &Path) -> Result<GenerateSummary> {
    config.validate()?;
    let info = mmrl_artifact::StageInfo {
        stage: "generate".into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::Other(format!("serializing config: {e}")))?,
        seed: Some(seed),
    };
    let mut writer = mmrl_artifact::ArtifactWriter::create(output, info)?;
    let summary = generate(config, seed, &writer.tmp_dir().join("dataset"))?;
    writer.add_dir(
        "dataset",
        mmrl_artifact::Role::Data,
        Some(summary.rows as u64),
    )?;
    writer.write_json("report.json", mmrl_artifact::Role::Report, &summary)?;
    writer.commit()?;
    Ok(summary)
}

/// Creates `out_dir`, refusing a non-directory or a non-empty directory.
fn prepare_out_dir(out_dir: &Path) -> Result<()> {
    if out_dir.exists() {
        if !out_dir.is_dir() {
            return Err(Error::Other(format!(
                "output path {} exists and is not a directory",
                out_dir.display()
            )));
        }
        let mut entries = std::fs::read_dir(out_dir).map_err(|source| Error::Io {
            action: "reading",
            path: out_dir.to_path_buf(),
            source,
        })?;
        if entries.next().is_some() {
            return Err(Error::Other(format!(
                "output directory {} is not empty",
                out_dir.display()
            )));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        action: "creating",
        path: out_dir.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Plan: which rows are captions, corrupt, duplicates, and the manifest order.
// ---------------------------------------------------------------------------------------------

/// One distinct sample: everything about it follows from `seed`, `caption` and `corruption`.
#[derive(Debug, Clone, Copy)]
struct BaseSlot {
    seed: u64,
    caption: bool,
    corruption: Option<Corruption>,
}

/// The rows to write: `order[row]` is the index of the base sample whose content that row has.
#[derive(Debug)]
struct Plan {
    base: Vec<BaseSlot>,
    order: Vec<usize>,
    duplicates: usize,
}

fn fraction_count(n: usize, fraction: f64) -> usize {
    ((n as f64) * fraction).round() as usize
}

fn make_plan(config: &GenerateConfig, seed: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = config.samples;
    let n_dup = fraction_count(n, config.duplicate_fraction).min(n - 1);
    let n_base = n - n_dup;
    let n_caption = fraction_count(n, config.unrelated_fraction).min(n_base);

    let mut caption = vec![false; n_base];
    for i in index::sample(&mut rng, n_base, n_caption) {
        caption[i] = true;
    }
    let mut base: Vec<BaseSlot> = caption
        .iter()
        .map(|&caption| BaseSlot {
            seed: rng.random(),
            caption,
            corruption: None,
        })
        .collect();

    // Corruption: among samples of our tasks that carry at least one medium.
    let mut eligible = Vec::new();
    let mut media = Vec::new();
    for (i, slot) in base.iter().enumerate() {
        if slot.caption {
            continue;
        }
        let spec = make_spec(slot.seed, false, config);
        if spec.has_image || spec.has_audio {
            eligible.push(i);
            media.push((spec.has_image, spec.has_audio));
        }
    }
    let n_corrupt = fraction_count(n, config.corrupt_fraction).min(eligible.len());
    let mut chosen = index::sample(&mut rng, eligible.len(), n_corrupt).into_vec();
    chosen.sort_unstable();
    for k in chosen {
        let (has_image, has_audio) = media[k];
        let mut kinds = Vec::with_capacity(3);
        if has_image {
            let rgb = if rng.random_bool(0.5) {
                let grey: u8 = rng.random();
                [grey; 3]
            } else {
                [rng.random(), rng.random(), rng.random()]
            };
            kinds.push(Corruption::BlankImage(rgb));
        }
        if has_audio {
            kinds.push(Corruption::SilentAudio);
            kinds.push(Corruption::ClippedAudio);
        }
        base[eligible[k]].corruption = Some(kinds[rng.random_range(0..kinds.len())]);
    }

    // Duplicates: copy a uniformly chosen base sample and place the copy right after a base row
    // chosen uniformly at or after the source, so every copy follows its source in the manifest.
    let mut dups: Vec<(usize, usize, usize)> = (0..n_dup)
        .map(|j| {
            let source = rng.random_range(0..n_base);
            let after = rng.random_range(source..n_base);
            (after, j, source)
        })
        .collect();
    dups.sort_unstable();
    let mut order = Vec::with_capacity(n);
    let mut next_dup = dups.iter().peekable();
    for i in 0..n_base {
        order.push(i);
        while let Some(&&(after, _, source)) = next_dup.peek() {
            if after != i {
                break;
            }
            order.push(source);
            next_dup.next();
        }
    }
    Plan {
        base,
        order,
        duplicates: n_dup,
    }
}

// ---------------------------------------------------------------------------------------------
// Sample specification: the "world" of one sample and its question.
// ---------------------------------------------------------------------------------------------

/// Media corruption of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corruption {
    /// The image is one constant color.
    BlankImage([u8; 3]),
    /// The audio is all zeros.
    SilentAudio,
    /// The audio is amplified 20x and hard-clipped at full scale.
    ClippedAudio,
}

/// Shape colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Color {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Color {
    const ALL: [Color; 4] = [Color::Red, Color::Green, Color::Blue, Color::Yellow];

    fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
        }
    }

    fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 170, 60],
            Color::Blue => [40, 70, 220],
            Color::Yellow => [225, 205, 40],
        }
    }
}

/// Shape kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShapeKind {
    Circle,
    Square,
    Triangle,
}

impl ShapeKind {
    const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }
}

/// One shape: `size` is the circle's diameter, the square's side or the (upright, equilateral)
/// triangle's side; (`cx`, `cy`) is the center (the centroid for the triangle), in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    kind: ShapeKind,
    color: Color,
    rgb: [u8; 3],
    cx: f64,
    cy: f64,
    size: f64,
}

impl Shape {
    /// Whether the point (x, y) (in pixel coordinates; pixel centers are at +0.5) is inside.
    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let half = self.size / 2.0;
        match self.kind {
            ShapeKind::Circle => dx * dx + dy * dy <= half * half,
            ShapeKind::Square => dx.abs() <= half && dy.abs() <= half,
            ShapeKind::Triangle => {
                let h = self.size * 3f64.sqrt() / 2.0;
                let a = (0.0, -2.0 * h / 3.0);
                let b = (-half, h / 3.0);
                let c = (half, h / 3.0);
                let edge = |p: (f64, f64), q: (f64, f64)| {
                    (q.0 - p.0) * (dy - p.1) - (q.1 - p.1) * (dx - p.0)
                };
                let (d1, d2, d3) = (edge(a, b), edge(b, c), edge(c, a));
                let has_neg = d1 < 0.0 || d2 < 0.0 || d3 < 0.0;
                let has_pos = d1 > 0.0 || d2 > 0.0 || d3 > 0.0;
                !(has_neg && has_pos)
            }
        }
    }
}

/// Everything needed to render a sample's image.
#[derive(Debug, Clone, PartialEq)]
struct ImageSpec {
    /// Shapes in drawing order (later ones on top). No shape covers another's center pixel.
    shapes: Vec<Shape>,
    /// Background grey level.
    background: f64,
    /// Standard deviation of the per-pixel background noise.
    noise_std: f64,
    /// Seed of the pixel noise.
    seed: u64,
}

/// Background noise mixed into the audio clip.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NoiseKind {
    White,
    Pink,
    /// Mains hum at the given fundamental (50 or 60 Hz) plus harmonics.
    Hum(f64),
    Babble,
}

/// Everything needed to render a sample's audio clip.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AudioSpec {
    /// DTMF digit 0-9.
    digit: u8,
    /// First sample of the tone.
    tone_start: usize,
    /// Length of the tone in samples.
    tone_len: usize,
    /// Amplitude of the row tone relative to the column tone.
    twist: f64,
    noise: NoiseKind,
    /// Signal-to-noise ratio over the tone's active segment, in dB.
    snr_db: f64,
    /// Peak amplitude after normalization, as a fraction of full scale (<= 0.9).
    peak: f64,
    /// Seed of the noise.
    seed: u64,
}

/// What a tabular cell holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellKind {
    Value,
    Missing,
    Outlier,
    NonFinite,
}

/// One shown tabular cell.
#[derive(Debug, Clone, PartialEq)]
struct Cell {
    text: String,
    kind: CellKind,
}

/// True sensor values the answers use, and the cells shown in the manifest (battery,
/// temperature, humidity, device).
#[derive(Debug, Clone, PartialEq)]
struct TableSpec {
    battery: f64,
    temperature: f64,
    cells: [Cell; 4],
}

/// Tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Shapes,
    Tone,
    Sensor,
    Compare,
    Caption,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Shapes => "shapes",
            Task::Tone => "tone",
            Task::Sensor => "sensor",
            Task::Compare => "compare",
            Task::Caption => "caption",
        }
    }
}

/// Question templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Question {
    CountShapes,
    CountColor(Color),
    HasShape(ShapeKind),
    CircleColor,
    ToneDigit,
    BatteryLow,
    Overheating,
    DigitGtCount(Color),
    DigitAndCount,
    BatteryOrTriangle,
    ToneEven,
    CountEither(Color, Color),
    BatteryAndShape(ShapeKind),
    /// The number picks the annotator's answer among the valid ones.
    NameColor(u32),
    NameShape(u32),
    Caption(usize),
}

impl Question {
    fn task(self) -> Task {
        match self {
            Question::CountShapes
            | Question::CountColor(_)
            | Question::HasShape(_)
            | Question::CircleColor
            | Question::CountEither(..)
            | Question::NameColor(_)
            | Question::NameShape(_) => Task::Shapes,
            Question::ToneDigit | Question::ToneEven => Task::Tone,
            Question::BatteryLow | Question::Overheating => Task::Sensor,
            Question::DigitGtCount(_)
            | Question::DigitAndCount
            | Question::BatteryOrTriangle
            | Question::BatteryAndShape(_) => Task::Compare,
            Question::Caption(_) => Task::Caption,
        }
    }

    fn qtype(self) -> &'static str {
        match self {
            Question::CountShapes => "count_shapes",
            Question::CountColor(_) => "count_color",
            Question::HasShape(_) => "has_shape",
            Question::CircleColor => "circle_color",
            Question::ToneDigit => "tone_digit",
            Question::BatteryLow => "battery_low",
            Question::Overheating => "overheating",
            Question::DigitGtCount(_) => "digit_gt_count",
            Question::DigitAndCount => "digit_and_count",
            Question::BatteryOrTriangle => "battery_or_triangle",
            Question::ToneEven => "tone_even",
            Question::CountEither(..) => "count_either",
            Question::BatteryAndShape(_) => "battery_and_shape",
            Question::NameColor(_) => "name_color",
            Question::NameShape(_) => "name_shape",
            Question::Caption(_) => "caption",
        }
    }

    fn text(self) -> String {
        match self {
            Question::CountShapes => "how many shapes are there".to_string(),
            Question::CountColor(c) => format!("how many {} shapes are there", c.name()),
            Question::HasShape(k) => format!("is there a {}", k.name()),
            Question::CircleColor => "what color is the circle".to_string(),
            Question::ToneDigit => "what digit is the tone".to_string(),
            Question::BatteryLow => "is the battery low".to_string(),
            Question::Overheating => "is the device overheating".to_string(),
            Question::DigitGtCount(c) => format!(
                "is the tone digit greater than the number of {} shapes",
                c.name()
            ),
            Question::DigitAndCount => {
                "what are the tone digit and the number of shapes".to_string()
            }
            Question::BatteryOrTriangle => "is the battery low or is there a triangle".to_string(),
            Question::ToneEven => "is the tone digit even".to_string(),
            Question::CountEither(a, b) => {
                format!("how many {} or {} shapes are there", a.name(), b.name())
            }
            Question::BatteryAndShape(k) => {
                format!("is the battery low and is there a {}", k.name())
            }
            Question::NameColor(_) => "name a color in the image".to_string(),
            Question::NameShape(_) => "name a shape in the image".to_string(),
            Question::Caption(_) => "describe the image".to_string(),
        }
    }

    fn needs_image(self) -> bool {
        matches!(self.task(), Task::Shapes | Task::Compare | Task::Caption)
    }

    fn needs_audio(self) -> bool {
        matches!(
            self,
            Question::ToneDigit
                | Question::ToneEven
                | Question::DigitGtCount(_)
                | Question::DigitAndCount
        )
    }

    /// The `accept` cell: every valid answer, `|`-separated, for the questions a checker verifies (the true
    /// answer) and the set-valued ones (each distinct colour or shape drawn); empty for the others.
    fn accept(self, shapes: &[Shape], answer: &str) -> String {
        match self {
            Question::ToneEven | Question::CountEither(..) | Question::BatteryAndShape(_) => {
                answer.to_string()
            }
            Question::NameColor(_) => distinct(shapes.iter().map(|s| s.color.name())).join("|"),
            Question::NameShape(_) => distinct(shapes.iter().map(|s| s.kind.name())).join("|"),
            _ => String::new(),
        }
    }

    /// The true answer, from the sample's content before any corruption.
    fn answer(self, shapes: &[Shape], digit: u8, table: &TableSpec) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
        let count_color = |c: Color| shapes.iter().filter(|s| s.color == c).count();
        let has_kind = |k: ShapeKind| shapes.iter().any(|s| s.kind == k);
        let battery_low = table.battery < BATTERY_LOW_BELOW;
        match self {
            Question::CountShapes => shapes.len().to_string(),
            Question::CountColor(c) => count_color(c).to_string(),
            Question::HasShape(k) => yes_no(has_kind(k)),
            Question::CircleColor => shapes
                .iter()
                .find(|s| s.kind == ShapeKind::Circle)
                .map_or_else(String::new, |s| s.color.name().to_string()),
            Question::ToneDigit => digit.to_string(),
            Question::BatteryLow => yes_no(battery_low),
            Question::Overheating => yes_no(table.temperature > OVERHEAT_ABOVE),
            Question::DigitGtCount(c) => yes_no(usize::from(digit) > count_color(c)),
            Question::DigitAndCount => format!("{} {}", digit, shapes.len()),
            Question::BatteryOrTriangle => yes_no(battery_low || has_kind(ShapeKind::Triangle)),
            Question::ToneEven => yes_no(digit % 2 == 0),
            Question::CountEither(a, b) => (count_color(a) + count_color(b)).to_string(),
            Question::BatteryAndShape(k) => yes_no(battery_low && has_kind(k)),
            Question::NameColor(pick) => {
                pick_one(&distinct(shapes.iter().map(|s| s.color.name())), pick)
            }
            Question::NameShape(pick) => {
                pick_one(&distinct(shapes.iter().map(|s| s.kind.name())), pick)
            }
            Question::Caption(i) => CAPTIONS[i % CAPTIONS.len()].to_string(),
        }
    }
}

/// The distinct values in first-seen order.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The annotator's pick among the valid answers (an image always has a shape, so there is one).
fn pick_one(valid: &[&str], pick: u32) -> String {
    valid
        .get(pick as usize % valid.len().max(1))
        .map_or_else(String::new, |v| (*v).to_string())
}

/// One sample before rendering.
#[derive(Debug, Clone, PartialEq)]
struct SampleSpec {
    question: Question,
    answer: String,
    /// Valid answers for a checker (`accept` column), `|`-separated; empty when the question has none.
    accept: String,
    image: ImageSpec,
    audio: AudioSpec,
    table: TableSpec,
    has_image: bool,
    has_audio: bool,
}

/// Draws one sample (content, question, answer, which media are present) from its seed.
fn make_spec(seed: u64, caption: bool, config: &GenerateConfig) -> SampleSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let image = gen_image_spec(&mut rng, config.image_size);
    let audio = gen_audio_spec(&mut rng, config.sample_rate, config.clip_len());
    let table = gen_table(&mut rng, config);
    let question = if caption {
        Question::Caption(rng.random_range(0..CAPTIONS.len()))
    } else {
        choose_question(&mut rng, &image.shapes)
    };
    let answer = question.answer(&image.shapes, audio.digit, &table);
    let accept = question.accept(&image.shapes, &answer);
    let drop_image = rng.random_bool(MISSING_MEDIA_FRACTION);
    let drop_audio = rng.random_bool(MISSING_MEDIA_FRACTION);
    SampleSpec {
        question,
        answer,
        accept,
        image,
        audio,
        table,
        has_image: question.needs_image() || !drop_image,
        has_audio: question.needs_audio() || !drop_audio,
    }
}

fn choose_question(rng: &mut ChaCha8Rng, shapes: &[Shape]) -> Question {
    let color = Color::ALL[rng.random_range(0..Color::ALL.len())];
    let kind = ShapeKind::ALL[rng.random_range(0..ShapeKind::ALL.len())];
    let u: f64 = rng.random();
    // 22% of the questions are the checker-verified and set-valued kinds, built on the skills the rest teach.
    if u >= 0.78 {
        let other = Color::ALL[(Color::ALL.iter().position(|c| *c == color).unwrap_or(0)
            + rng.random_range(1..Color::ALL.len()))
            % Color::ALL.len()];
        let pick: u32 = rng.random();
        let options = [
            Question::ToneEven,
            Question::CountEither(color, other),
            Question::BatteryAndShape(kind),
            Question::NameColor(pick),
            Question::NameShape(pick),
        ];
        return options[rng.random_range(0..options.len())];
    }
    let u = u / 0.78;
    let options: Vec<Question> = if u < 0.35 {
        let mut v = vec![
            Question::CountShapes,
            Question::CountColor(color),
            Question::HasShape(kind),
        ];
        if shapes
            .iter()
            .filter(|s| s.kind == ShapeKind::Circle)
            .count()
            == 1
        {
            v.push(Question::CircleColor);
        }
        v
    } else if u < 0.55 {
        vec![Question::ToneDigit]
    } else if u < 0.75 {
        vec![Question::BatteryLow, Question::Overheating]
    } else {
        vec![
            Question::DigitGtCount(color),
            Question::DigitAndCount,
            Question::BatteryOrTriangle,
        ]
    };
    options[rng.random_range(0..options.len())]
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

fn gen_image_spec(rng: &mut ChaCha8Rng, image_size: u32) -> ImageSpec {
    let side = f64::from(image_size);
    let scale = side / 32.0;
    let count = rng.random_range(1..=5usize);
    let mut shapes: Vec<Shape> = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = ShapeKind::ALL[rng.random_range(0..ShapeKind::ALL.len())];
        let color = Color::ALL[rng.random_range(0..Color::ALL.len())];
        let size = rng.random_range(5.0..=10.0) * scale;
        let mut rgb = color.rgb();
        for c in &mut rgb {
            *c = (i32::from(*c) + rng.random_range(-20..=20)).clamp(0, 255) as u8;
        }
        // Centers sit on pixel centers, with the whole shape inside the image when possible.
        let half = size / 2.0;
        let lo = (half - 0.5).ceil().max(0.0) as i64;
        let hi = ((side - half - 0.5).floor() as i64).max(lo);
        for attempt in 0..80 {
            let cand = Shape {
                kind,
                color,
                rgb,
                cx: rng.random_range(lo..=hi) as f64 + 0.5,
                cy: rng.random_range(lo..=hi) as f64 + 0.5,
                size,
            };
            let centers_free = shapes
                .iter()
                .all(|o| !o.contains(cand.cx, cand.cy) && !cand.contains(o.cx, o.cy));
            // Prefer little overlap; later attempts only keep every center visible.
            let spaced = attempt >= 50
                || shapes.iter().all(|o| {
                    let d = ((o.cx - cand.cx).powi(2) + (o.cy - cand.cy).powi(2)).sqrt();
                    d >= 0.8 * (o.size + cand.size) / 2.0
                });
            if centers_free && spaced {
                shapes.push(cand);
                break;
            }
        }
    }
    ImageSpec {
        shapes,
        background: rng.random_range(90.0..=170.0),
        noise_std: rng.random_range(6.0..=16.0),
        seed: rng.random(),
    }
}

/// DTMF (row, column) frequencies of a digit.
fn dtmf_freqs(digit: u8) -> (f64, f64) {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 3] = [1209.0, 1336.0, 1477.0];
    match digit {
        1..=9 => {
            let k = usize::from(digit - 1);
            (ROWS[k / 3], COLS[k % 3])
        }
        _ => (ROWS[3], COLS[1]),
    }
}

fn gen_audio_spec(rng: &mut ChaCha8Rng, sample_rate: u32, clip_len: usize) -> AudioSpec {
    let digit = rng.random_range(0..=9u8);
    let seconds = rng.random_range(0.3..=0.5);
    let wanted = (seconds * f64::from(sample_rate)).round() as usize;
    let cap = ((clip_len as f64) * 0.8).floor() as usize;
    let tone_len = wanted.min(cap).max(1).min(clip_len);
    let tone_start = rng.random_range(0..=clip_len - tone_len);
    let noise = match rng.random_range(0..4u8) {
        0 => NoiseKind::White,
        1 => NoiseKind::Pink,
        2 => NoiseKind::Hum(if rng.random_bool(0.5) { 50.0 } else { 60.0 }),
        _ => NoiseKind::Babble,
    };
    AudioSpec {
        digit,
        tone_start,
        tone_len,
        twist: rng.random_range(0.7..=1.0),
        noise,
        snr_db: rng.random_range(-5.0..=20.0),
        peak: rng.random_range(0.3..=0.9),
        seed: rng.random(),
    }
}

/// Rounds to one decimal and turns -0 into 0.
fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0 + 0.0
}

fn numeric_cell(
    rng: &mut ChaCha8Rng,
    config: &GenerateConfig,
    value: f64,
    gross: [f64; 2],
) -> Cell {
    let u: f64 = rng.random();
    let miss = config.missing_fraction;
    let outlier = miss + config.outlier_fraction;
    let nonfinite = outlier + NONFINITE_FRACTION;
    if u < miss {
        Cell {
            text: String::new(),
            kind: CellKind::Missing,
        }
    } else if u < outlier {
        let v = if rng.random_bool(0.5) {
            SENTINEL
        } else {
            gross[rng.random_range(0..2)]
        };
        Cell {
            text: v.to_string(),
            kind: CellKind::Outlier,
        }
    } else if u < nonfinite {
        let text = ["NaN", "inf", "-inf"][rng.random_range(0..3)];
        Cell {
            text: text.to_string(),
            kind: CellKind::NonFinite,
        }
    } else {
        Cell {
            text: value.to_string(),
            kind: CellKind::Value,
        }
    }
}

fn gen_table(rng: &mut ChaCha8Rng, config: &GenerateConfig) -> TableSpec {
    let battery = if rng.random_bool(0.3) {
        rng.random_range(0.0..30.0)
    } else {
        rng.random_range(0.0..=100.0)
    };
    let battery = round1(battery);
    let temperature = round1(22.0 + 5.0 * normal(rng));
    let humidity = round1((50.0 + 15.0 * normal(rng)).clamp(0.0, 100.0));
    let device = rng.random_range(0..DEVICES.len());
    let battery_cell = numeric_cell(rng, config, battery, [1.0e4, -500.0]);
    let temperature_cell = numeric_cell(rng, config, temperature, [500.0, -300.0]);
    let humidity_cell = numeric_cell(rng, config, humidity, [1.0e4, -500.0]);
    let device_cell = if rng.random::<f64>() < config.missing_fraction {
        Cell {
            text: String::new(),
            kind: CellKind::Missing,
        }
    } else {
        Cell {
            text: DEVICES[device].to_string(),
            kind: CellKind::Value,
        }
    };
    TableSpec {
        battery,
        temperature,
        cells: [battery_cell, temperature_cell, humidity_cell, device_cell],
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering and encoding.
// ---------------------------------------------------------------------------------------------

/// Renders the raw RGB8 pixels (row-major) of an image; `blank` gives a constant image instead.
fn render_image(spec: &ImageSpec, image_size: u32, blank: Option<[u8; 3]>) -> Vec<u8> {
    let n = image_size as usize;
    if let Some(rgb) = blank {
        return rgb.repeat(n * n);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut raw = Vec::with_capacity(n * n * 3);
    for y in 0..n {
        for x in 0..n {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let top = spec.shapes.iter().rev().find(|s| s.contains(px, py));
            for c in 0..3 {
                let z = normal(&mut rng);
                let v = match top {
                    Some(shape) => f64::from(shape.rgb[c]) + 4.0 * z,
                    None => spec.background + spec.noise_std * z,
                };
                raw.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    raw
}

fn encode_png(raw: &[u8], image_size: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(raw, image_size, image_size, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Other(format!("encoding png: {e}")))?;
    Ok(out)
}

/// A sinusoid generated by complex rotation, cheaper than calling `sin` for every sample.
struct Oscillator {
    re: f64,
    im: f64,
    step_re: f64,
    step_im: f64,
    count: u32,
}

impl Oscillator {
    /// A sinusoid of `freq` Hz at `sample_rate`, starting at `phase` radians.
    fn new(freq: f64, sample_rate: f64, phase: f64) -> Self {
        let step = 2.0 * PI * freq / sample_rate;
        Self {
            re: phase.cos(),
            im: phase.sin(),
            step_re: step.cos(),
            step_im: step.sin(),
            count: 0,
        }
    }

    /// Returns the sine of the current phase and advances by one sample.
    fn advance(&mut self) -> f64 {
        let value = self.im;
        let re = self.re * self.step_re - self.im * self.step_im;
        let im = self.im * self.step_re + self.re * self.step_im;
        (self.re, self.im) = (re, im);
        self.count += 1;
        if self.count.is_multiple_of(1024) {
            // Keep the magnitude at 1 despite rounding.
            let norm = (re * re + im * im).sqrt();
            self.re /= norm;
            self.im /= norm;
        }
        value
    }
}

/// Unit-RMS noise of the given kind.
fn gen_noise(kind: NoiseKind, rng: &mut ChaCha8Rng, sample_rate: u32, len: usize) -> Vec<f64> {
    let sr = f64::from(sample_rate);
    let mut out = match kind {
        NoiseKind::White => (0..len).map(|_| normal(rng)).collect::<Vec<_>>(),
        NoiseKind::Pink => {
            // Paul Kellet's refined pink filter over white noise, after a warm-up.
            let mut b = [0.0f64; 7];
            let warmup = 2048;
            let mut out = Vec::with_capacity(len);
            for i in 0..warmup + len {
                let w = normal(rng);
                b[0] = 0.99886 * b[0] + w * 0.055_517_9;
                b[1] = 0.99332 * b[1] + w * 0.075_075_9;
                b[2] = 0.96900 * b[2] + w * 0.153_852;
                b[3] = 0.86650 * b[3] + w * 0.310_485_6;
                b[4] = 0.55000 * b[4] + w * 0.532_952_2;
                b[5] = -0.7616 * b[5] - w * 0.016_898;
                let p = b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + w * 0.5362;
                b[6] = w * 0.115_926;
                if i >= warmup {
                    out.push(p);
                }
            }
            out
        }
        NoiseKind::Hum(mains) => {
            let harmonics: Vec<(f64, f64, f64)> = (1..=5)
                .filter(|&k| f64::from(k) * mains < 0.45 * sr)
                .map(|k| {
                    let amp = rng.random_range(0.2..=1.0) / f64::from(k);
                    let phase = rng.random_range(0.0..2.0 * PI);
                    (f64::from(k) * mains, amp, phase)
                })
                .collect();
            let mut oscillators: Vec<(Oscillator, f64)> = harmonics
                .iter()
                .map(|&(f, a, p)| (Oscillator::new(f, sr, p), a))
                .collect();
            (0..len)
                .map(|_| {
                    let hum: f64 = oscillators.iter_mut().map(|(o, a)| *a * o.advance()).sum();
                    hum + 0.03 * normal(rng)
                })
                .collect()
        }
        NoiseKind::Babble => {
            const TABLE: usize = 512;
            let voices = rng.random_range(3..=6usize);
            let mut out = vec![0.0; len];
            for _ in 0..voices {
                let f0 = rng.random_range(100.0..=250.0);
                let max_k = ((0.45 * sr / (f0 * 1.05)).floor() as usize).clamp(1, 12);
                let mut table = vec![0.0; TABLE + 1];
                for k in 1..=max_k {
                    let amp = rng.random_range(0.3..=1.0) / k as f64;
                    let phase = rng.random_range(0.0..2.0 * PI);
                    for (i, v) in table.iter_mut().enumerate() {
                        *v += amp * (2.0 * PI * k as f64 * i as f64 / TABLE as f64 + phase).sin();
                    }
                }
                let mut syllable = Oscillator::new(
                    rng.random_range(2.0..=6.0),
                    sr,
                    rng.random_range(0.0..2.0 * PI),
                );
                let mut vibrato = Oscillator::new(rng.random_range(3.0..=7.0), sr, 0.0);
                let vibrato_depth = rng.random_range(0.0..=0.04);
                let gain = rng.random_range(0.4..=1.0);
                let mut phase = rng.random_range(0.0..1.0);
                for o in out.iter_mut() {
                    let pos = phase * TABLE as f64;
                    let idx = (pos.floor() as usize).min(TABLE - 1);
                    let frac = pos - idx as f64;
                    let wave = table[idx] * (1.0 - frac) + table[idx + 1] * frac;
                    let env = 0.5 * (1.0 + syllable.advance());
                    *o += gain * env * env * wave;
                    let f = f0 * (1.0 + vibrato_depth * vibrato.advance());
                    phase = (phase + f / sr).fract();
                }
            }
            out
        }
    };
    let rms = (out.iter().map(|v| v * v).sum::<f64>() / len.max(1) as f64).sqrt();
    if rms > 0.0 {
        for v in &mut out {
            *v /= rms;
        }
    }
    out
}

/// Renders a clip as 16-bit PCM samples.
fn render_audio(
    spec: &AudioSpec,
    sample_rate: u32,
    clip_len: usize,
    corruption: Option<Corruption>,
) -> Vec<i16> {
    if corruption == Some(Corruption::SilentAudio) {
        return vec![0; clip_len];
    }
    let sr = f64::from(sample_rate);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (f_row, f_col) = dtmf_freqs(spec.digit);
    let row_phase = rng.random_range(0.0..2.0 * PI);
    let col_phase = rng.random_range(0.0..2.0 * PI);
    let end = (spec.tone_start + spec.tone_len).min(clip_len);
    let start = spec.tone_start.min(end);
    let active = end - start;
    let fade = ((0.005 * sr) as usize).min(active / 4).max(1);

    let mut row = Oscillator::new(f_row, sr, row_phase);
    let mut col = Oscillator::new(f_col, sr, col_phase);
    let mut tone = vec![0.0; clip_len];
    for (j, v) in tone[start..end].iter_mut().enumerate() {
        let ramp_in = ((j + 1) as f64 / fade as f64).min(1.0);
        let ramp_out = ((active - j) as f64 / fade as f64).min(1.0);
        let ramp = ramp_in.min(ramp_out);
        let env = if ramp < 1.0 {
            (0.5 - 0.5 * (PI * ramp).cos()).max(0.0)
        } else {
            1.0
        };
        *v = env * (spec.twist * row.advance() + col.advance());
    }
    let noise = gen_noise(spec.noise, &mut rng, sample_rate, clip_len);

    let power = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64;
    let tone_power = power(&tone[start..end]);
    let noise_power = power(&noise[start..end]);
    let gain = if noise_power > 0.0 {
        (tone_power / (noise_power * 10f64.powf(spec.snr_db / 10.0))).sqrt()
    } else {
        0.0
    };
    let mut mix: Vec<f64> = tone.iter().zip(&noise).map(|(t, n)| t + gain * n).collect();
    let peak = mix.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if peak > 0.0 {
        let scale = spec.peak.min(0.9) / peak;
        for v in &mut mix {
            *v *= scale;
        }
    }
    if corruption == Some(Corruption::ClippedAudio) {
        for v in &mut mix {
            *v = (*v * 20.0).clamp(-1.0, 1.0);
        }
    }
    mix.iter()
        .map(|v| (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

fn encode_wav(pcm: &[i16], sample_rate: u32) -> Result<Vec<u8>> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let wav_error = |e: hound::Error| Error::Other(format!("encoding wav: {e}"));
    let mut cursor = Cursor::new(Vec::with_capacity(44 + 2 * pcm.len()));
    {
        let mut writer = hound::WavWriter::new(&mut cursor, spec).map_err(wav_error)?;
        let mut samples = writer.get_i16_writer(pcm.len() as u32);
        for &s in pcm {
            samples.write_sample(s);
        }
        samples.flush().map_err(wav_error)?;
        writer.finalize().map_err(wav_error)?;
    }
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn small(samples: usize) -> GenerateConfig {
        GenerateConfig {
            samples,
            clip_seconds: 0.5,
            ..GenerateConfig::default()
        }
    }

    /// All files under `root` (recursively), by relative path.
    fn files(root: &Path) -> std::result::Result<BTreeMap<String, Vec<u8>>, std::io::Error> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .map_err(std::io::Error::other)?
                        .to_string_lossy()
                        .into_owned();
                    out.insert(rel, std::fs::read(&path)?);
                }
            }
        }
        Ok(out)
    }

    /// Manifest rows as column -> cell maps, after checking the header.
    fn manifest(
        dir: &Path,
    ) -> std::result::Result<Vec<BTreeMap<String, String>>, Box<dyn std::error::Error>> {
        let mut reader = csv::Reader::from_path(dir.join("manifest.csv"))?;
        let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
        assert_eq!(header, HEADER);
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record?;
            rows.push(
                header
                    .iter()
                    .cloned()
                    .zip(record.iter().map(str::to_string))
                    .collect(),
            );
        }
        Ok(rows)
    }

    fn cell<'a>(row: &'a BTreeMap<String, String>, column: &str) -> &'a str {
        row.get(column).map_or("", String::as_str)
    }

    #[test]
    fn same_seed_gives_identical_folder_and_other_seed_differs() -> TestResult {
        let config = small(40);
        let tmp = tempfile::tempdir()?;
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        let summary_a = generate(&config, 7, &a)?;
        let summary_b = generate(&config, 7, &b)?;
        generate(&config, 8, &c)?;
        assert_eq!(summary_a, summary_b);
        let (files_a, files_b, files_c) = (files(&a)?, files(&b)?, files(&c)?);
        assert!(
            files_a.len() > 40,
            "expected media files, got {}",
            files_a.len()
        );
        assert_eq!(files_a, files_b);
        assert_ne!(files_a.get("manifest.csv"), files_c.get("manifest.csv"));
        // A non-empty output folder is refused; an existing empty one is fine.
        assert!(generate(&config, 7, &a).is_err());
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty)?;
        generate(&small(3), 1, &empty)?;
        Ok(())
    }

    #[test]
    fn media_decode_at_configured_size_rate_and_length() -> TestResult {
        let config = GenerateConfig {
            samples: 40,
            image_size: 24,
            sample_rate: 8000,
            clip_seconds: 0.4,
            ..GenerateConfig::default()
        };
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("d");
        let summary = generate(&config, 3, &dir)?;
        let rows = manifest(&dir)?;
        assert_eq!(rows.len(), summary.rows);
        assert_eq!(rows.len(), 40);
        let (mut images, mut clips) = (0, 0);
        for row in &rows {
            let id = cell(row, "id");
            let image = cell(row, "image");
            if !image.is_empty() {
                assert_eq!(image, format!("images/{id}.png"));
                let decoded = image::load_from_memory_with_format(
                    &std::fs::read(dir.join(image))?,
                    image::ImageFormat::Png,
                )?;
                assert_eq!((decoded.width(), decoded.height()), (24, 24));
                assert_eq!(decoded.color(), image::ColorType::Rgb8);
                images += 1;
            }
            let audio = cell(row, "audio");
            if !audio.is_empty() {
                assert_eq!(audio, format!("audio/{id}.wav"));
                let reader = hound::WavReader::open(dir.join(audio))?;
                let spec = reader.spec();
                assert_eq!(spec.sample_rate, 8000);
                assert_eq!(spec.channels, 1);
                assert_eq!(spec.bits_per_sample, 16);
                assert_eq!(spec.sample_format, hound::SampleFormat::Int);
                assert_eq!(reader.len(), 3200);
                clips += 1;
            }
        }
        assert!(
            images >= 35 && clips >= 35,
            "images {images}, clips {clips}"
        );
        let ids: BTreeSet<&str> = rows.iter().map(|r| cell(r, "id")).collect();
        assert_eq!(ids.len(), rows.len(), "ids are unique");
        Ok(())
    }

    #[test]
    fn answers_agree_with_the_sample_content() {
        let config = GenerateConfig::default();
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
        let mut seen = BTreeSet::new();
        for seed in 0..400u64 {
            let spec = make_spec(seed, false, &config);
            let shapes = &spec.image.shapes;
            assert!((1..=5).contains(&shapes.len()));
            let count = |color: &str| shapes.iter().filter(|s| s.color.name() == color).count();
            let has = |kind: &str| shapes.iter().any(|s| s.kind.name() == kind);
            let question = spec.question.text();
            let words: Vec<&str> = question.split(' ').collect();
            let digit = spec.audio.digit;
            let battery_low = spec.table.battery < 20.0;
            let qtype = spec.question.qtype();
            let expected = match qtype {
                "count_shapes" => shapes.len().to_string(),
                "count_color" => count(words[2]).to_string(),
                "has_shape" => yes_no(has(words[3])),
                "circle_color" => {
                    let circles: Vec<&Shape> = shapes
                        .iter()
                        .filter(|s| s.kind == ShapeKind::Circle)
                        .collect();
                    assert_eq!(circles.len(), 1, "circle_color needs exactly one circle");
                    circles[0].color.name().to_string()
                }
                "tone_digit" => digit.to_string(),
                "battery_low" => yes_no(battery_low),
                "overheating" => yes_no(spec.table.temperature > 30.0),
                "digit_gt_count" => yes_no(usize::from(digit) > count(words[9])),
                "digit_and_count" => format!("{digit} {}", shapes.len()),
                "battery_or_triangle" => yes_no(battery_low || has("triangle")),
                "tone_even" => yes_no(digit % 2 == 0),
                "count_either" => (count(words[2]) + count(words[4])).to_string(),
                "battery_and_shape" => yes_no(battery_low && has(words[8])),
                "name_color" | "name_shape" => {
                    let valid: BTreeSet<&str> = spec.accept.split('|').collect();
                    let truth: BTreeSet<&str> = shapes
                        .iter()
                        .map(|s| {
                            if qtype == "name_color" {
                                s.color.name()
                            } else {
                                s.kind.name()
                            }
                        })
                        .collect();
                    assert_eq!(valid, truth, "seed {seed}: accept lists every valid answer");
                    assert!(valid.contains(spec.answer.as_str()));
                    spec.answer.clone()
                }
                other => panic!("unexpected qtype {other}"),
            };
            assert_eq!(spec.answer, expected, "seed {seed}: {question}");
            match qtype {
                "tone_even" | "count_either" | "battery_and_shape" => {
                    assert_eq!(
                        spec.accept, spec.answer,
                        "seed {seed}: the checker's answer"
                    )
                }
                "name_color" | "name_shape" => {}
                _ => assert_eq!(spec.accept, "", "seed {seed}: no checker for {qtype}"),
            }
            if qtype == "count_either" {
                assert_ne!(words[2], words[4], "two different colours");
            }
            seen.insert(qtype);
            // Media the question needs are always present.
            let task = spec.question.task();
            if matches!(task, Task::Shapes | Task::Compare) {
                assert!(spec.has_image);
            }
            if matches!(
                qtype,
                "tone_digit" | "tone_even" | "digit_gt_count" | "digit_and_count"
            ) {
                assert!(spec.has_audio);
            }
            // A shown battery value is the true one.
            if spec.table.cells[0].kind == CellKind::Value {
                assert_eq!(
                    spec.table.cells[0].text.parse::<f64>().ok(),
                    Some(spec.table.battery)
                );
            }

            // Every shape's center pixel shows that shape's color.
            let size = config.image_size as usize;
            let raw = render_image(&spec.image, config.image_size, None);
            for shape in shapes {
                let (x, y) = (shape.cx.floor() as usize, shape.cy.floor() as usize);
                let px = &raw[(y * size + x) * 3..(y * size + x) * 3 + 3];
                let nominal = shape.color.rgb();
                let diff = (0..3)
                    .map(|c| (i32::from(px[c]) - i32::from(nominal[c])).abs())
                    .max()
                    .unwrap_or(0);
                assert!(
                    diff <= 45,
                    "seed {seed}: pixel {px:?} vs {nominal:?} for {shape:?}"
                );
            }
        }
        assert_eq!(seen.len(), 15, "all question types appear: {seen:?}");
    }

    /// Goertzel power of `freq` in `x`.
    fn goertzel(x: &[f64], freq: f64, sample_rate: f64) -> f64 {
        let coeff = 2.0 * (2.0 * PI * freq / sample_rate).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = v + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - coeff * s1 * s2
    }

    #[test]
    fn rendered_tone_carries_the_digit_under_every_noise_kind() {
        const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
        const COLS: [f64; 3] = [1209.0, 1336.0, 1477.0];
        let (sample_rate, clip_len) = (8000u32, 8000usize);
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(
                    (0, f64::MIN),
                    |best, (i, &p)| if p > best.1 { (i, p) } else { best },
                )
                .0
        };
        let kinds = [
            NoiseKind::White,
            NoiseKind::Pink,
            NoiseKind::Hum(50.0),
            NoiseKind::Babble,
        ];
        for digit in 0..=9u8 {
            for (k, &noise) in kinds.iter().enumerate() {
                let spec = AudioSpec {
                    digit,
                    tone_start: 1000 + 300 * usize::from(digit),
                    tone_len: 3200,
                    twist: 0.8,
                    noise,
                    snr_db: 10.0,
                    peak: 0.9,
                    seed: u64::from(digit) * 10 + k as u64,
                };
                let pcm = render_audio(&spec, sample_rate, clip_len, None);
                assert_eq!(pcm.len(), clip_len);
                let peak = pcm.iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0);
                assert!(peak <= 29_500 && peak > 20_000, "peak {peak}");
                let x: Vec<f64> = pcm[spec.tone_start..spec.tone_start + spec.tone_len]
                    .iter()
                    .map(|&s| f64::from(s))
                    .collect();
                let rows: Vec<f64> = ROWS.iter().map(|&f| goertzel(&x, f, 8000.0)).collect();
                let cols: Vec<f64> = COLS.iter().map(|&f| goertzel(&x, f, 8000.0)).collect();
                let (row, col) = (argmax(&rows), argmax(&cols));
                let decoded = match (row, col) {
                    (3, 1) => 0,
                    (r, c) if r < 3 => (r * 3 + c + 1) as u8,
                    other => panic!("no digit at {other:?}"),
                };
                assert_eq!(decoded, digit, "noise {noise:?}");
            }
        }
        // Corruptions.
        let spec = AudioSpec {
            digit: 5,
            tone_start: 100,
            tone_len: 3000,
            twist: 1.0,
            noise: NoiseKind::White,
            snr_db: 0.0,
            peak: 0.5,
            seed: 1,
        };
        let silent = render_audio(&spec, sample_rate, clip_len, Some(Corruption::SilentAudio));
        assert!(silent.iter().all(|&s| s == 0));
        let clipped = render_audio(&spec, sample_rate, clip_len, Some(Corruption::ClippedAudio));
        let at_rail = clipped
            .iter()
            .filter(|&&s| s == 32767 || s == -32767)
            .count();
        assert!(at_rail > clip_len / 4, "clipped samples {at_rail}");
    }

    #[test]
    fn fractions_duplicates_and_corruptions_match_the_config() -> TestResult {
        let config = GenerateConfig {
            samples: 2000,
            image_size: 16,
            sample_rate: 4000,
            clip_seconds: 0.25,
            ..GenerateConfig::default()
        };
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("d");
        let summary = generate(&config, 11, &dir)?;
        let rows = manifest(&dir)?;
        assert_eq!(rows.len(), 2000);
        assert_eq!(summary.rows, 2000);
        assert_eq!(summary.duplicates, 40);

        let captions = rows.iter().filter(|r| cell(r, "task") == "caption").count();
        assert_eq!(captions, summary.unrelated);
        assert!((55..=75).contains(&captions), "caption rows {captions}");
        for row in rows.iter().filter(|r| cell(r, "task") == "caption") {
            assert_eq!(cell(row, "qtype"), "caption");
            assert_eq!(cell(row, "question"), "describe the image");
            assert!(CAPTIONS.contains(&cell(row, "answer")));
        }

        // Duplicates: rows whose whole content (cells and media bytes) equals an earlier row's.
        let mut first_seen: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        let mut duplicates = 0;
        let mut corrupt = 0;
        let (mut missing, mut outliers) = (0, 0);
        for (i, row) in rows.iter().enumerate() {
            let mut key: Vec<String> = HEADER[3..]
                .iter()
                .map(|c| cell(row, c).to_string())
                .collect();
            let image = cell(row, "image");
            let audio = cell(row, "audio");
            let mut is_corrupt = false;
            if image.is_empty() {
                key.push(String::new());
            } else {
                let bytes = std::fs::read(dir.join(image))?;
                key.push(blake3::hash(&bytes).to_hex().to_string());
                let rgb = image::load_from_memory(&bytes)?.to_rgb8();
                let first = rgb.get_pixel(0, 0);
                is_corrupt |= rgb.pixels().all(|p| p == first);
            }
            if audio.is_empty() {
                key.push(String::new());
            } else {
                let bytes = std::fs::read(dir.join(audio))?;
                key.push(blake3::hash(&bytes).to_hex().to_string());
                let pcm: Vec<i16> = hound::WavReader::new(Cursor::new(bytes))?
                    .into_samples::<i16>()
                    .collect::<std::result::Result<_, _>>()?;
                let silent = pcm.iter().all(|&s| s == 0);
                let at_rail = pcm.iter().filter(|&&s| s.unsigned_abs() >= 32767).count();
                is_corrupt |= silent || at_rail * 20 > pcm.len();
            }
            if is_corrupt {
                corrupt += 1;
            }
            if let Some(&source) = first_seen.get(&key) {
                duplicates += 1;
                assert_ne!(cell(&rows[source], "id"), cell(row, "id"));
                // The copy has its own files with identical bytes.
                for column in ["image", "audio"] {
                    let (a, b) = (cell(&rows[source], column), cell(row, column));
                    assert_eq!(a.is_empty(), b.is_empty());
                    if !a.is_empty() {
                        assert_ne!(a, b);
                        assert_eq!(std::fs::read(dir.join(a))?, std::fs::read(dir.join(b))?);
                    }
                }
            } else {
                first_seen.insert(key, i);
            }
            for column in ["battery", "temperature", "humidity", "device"] {
                let text = cell(row, column);
                if text.is_empty() {
                    missing += 1;
                } else if column != "device" {
                    let v: f64 = text.parse()?;
                    if !v.is_finite() || v == -999.0 || v.abs() >= 300.0 {
                        outliers += 1;
                    }
                } else {
                    assert!(DEVICES.contains(&text));
                }
            }
        }
        assert_eq!(duplicates, summary.duplicates);
        assert_eq!(corrupt, summary.corrupt);
        assert!((55..=75).contains(&corrupt), "corrupt rows {corrupt}");
        assert_eq!(missing, summary.missing_cells);
        assert_eq!(outliers, summary.outlier_cells);
        let cells = 4.0 * 2000.0;
        let missing_rate = missing as f64 / cells;
        assert!(
            (0.08..=0.12).contains(&missing_rate),
            "missing rate {missing_rate}"
        );
        let outlier_rate = outliers as f64 / (3.0 * 2000.0);
        assert!(
            (0.008..=0.03).contains(&outlier_rate),
            "outlier rate {outlier_rate}"
        );
        // A few rows lack a medium their question does not need.
        let no_image = rows.iter().filter(|r| cell(r, "image").is_empty()).count();
        let no_audio = rows.iter().filter(|r| cell(r, "audio").is_empty()).count();
        assert!(
            (3..=60).contains(&no_image),
            "rows without image {no_image}"
        );
        assert!(
            (10..=100).contains(&no_audio),
            "rows without audio {no_audio}"
        );
        Ok(())
    }

    #[test]
    fn validate_rejects_out_of_range_fields() {
        assert!(GenerateConfig::default().validate().is_ok());
        let cases = [
            (
                GenerateConfig {
                    samples: 0,
                    ..GenerateConfig::default()
                },
                "samples",
            ),
            (
                GenerateConfig {
                    duplicate_fraction: 0.9,
                    ..GenerateConfig::default()
                },
                "duplicate_fraction",
            ),
            (
                GenerateConfig {
                    missing_fraction: f64::NAN,
                    ..GenerateConfig::default()
                },
                "missing_fraction",
            ),
            (
                GenerateConfig {
                    image_size: 4,
                    ..GenerateConfig::default()
                },
                "image_size",
            ),
            (
                GenerateConfig {
                    clip_seconds: 0.0,
                    ..GenerateConfig::default()
                },
                "clip_seconds",
            ),
        ];
        for (config, name) in cases {
            match config.validate() {
                Err(Error::Config { field, message }) => {
                    assert_eq!(field, name);
                    assert!(message.contains("must be"), "{message}");
                }
                other => panic!("{name}: expected a config error, got {other:?}"),
            }
        }
        // generate() validates before touching the disk.
        let missing = std::env::temp_dir().join("mmrl-generate-never-created");
        let bad = GenerateConfig {
            samples: 0,
            ..GenerateConfig::default()
        };
        assert!(generate(&bad, 0, &missing).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn config_deserializes_with_defaults_and_rejects_unknown_fields() -> TestResult {
        let config: GenerateConfig = serde_json::from_str(r#"{"samples": 10, "image_size": 16}"#)?;
        assert_eq!(config.samples, 10);
        assert_eq!(config.image_size, 16);
        assert_eq!(config.sample_rate, 8000);
        assert!(serde_json::from_str::<GenerateConfig>(r#"{"sampels": 10}"#).is_err());
        Ok(())
    }
}
