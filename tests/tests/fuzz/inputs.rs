//! The fuzz targets' inputs: valid seeds built in code (or read from the repository's pipeline files) and the
//! strategies that malform them.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use mmrl_tests::workspace_root;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::driver::{mutate, mutations};

/// Valid inputs every target starts from, built once per test process.
pub struct Seeds {
    /// WAV files: every sample format ingest and the audio stage accept.
    pub wavs: Vec<Vec<u8>>,
    /// PNG and JPEG files with their names: every layout the image stage accepts.
    pub images: Vec<(String, Vec<u8>)>,
    /// The repository's pipeline files (`default.toml` first), by file name.
    pub pipelines: Vec<(String, Vec<u8>)>,
    /// `pipelines/recipe.toml`, which `default.toml` extends.
    pub recipe: Vec<u8>,
    /// Every stage's resolved params in the default and smoke pipelines: (`run`, params).
    pub params: Vec<(String, toml::Table)>,
    /// A committed artifact with a `samples` table.
    pub artifact: PathBuf,
    _dir: tempfile::TempDir,
}

impl Seeds {
    /// The seeds (built on first use).
    pub fn get() -> &'static Seeds {
        static SEEDS: OnceLock<Seeds> = OnceLock::new();
        SEEDS.get_or_init(Seeds::build)
    }

    fn build() -> Seeds {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("select");
        write_artifact(&artifact);
        let root = workspace_root().join("pipelines");
        let read = |name: &str| std::fs::read(root.join(name)).unwrap();
        let pipelines = ["default.toml", "smoke.toml", "hpo.toml", "digits.toml"]
            .iter()
            .map(|n| ((*n).to_owned(), read(n)))
            .collect();
        Seeds {
            wavs: wavs(),
            images: images(),
            pipelines,
            recipe: read("recipe.toml"),
            params: params(&root),
            artifact,
            _dir: dir,
        }
    }
}

fn wavs() -> Vec<Vec<u8>> {
    let specs = [
        (1, 8_000, 8, hound::SampleFormat::Int),
        (2, 16_000, 16, hound::SampleFormat::Int),
        (1, 22_050, 24, hound::SampleFormat::Int),
        (2, 44_100, 32, hound::SampleFormat::Int),
        (1, 16_000, 32, hound::SampleFormat::Float),
    ];
    specs
        .iter()
        .map(|&(channels, sample_rate, bits_per_sample, sample_format)| {
            let spec = hound::WavSpec {
                channels,
                sample_rate,
                bits_per_sample,
                sample_format,
            };
            let samples: Vec<f64> = (0..64 * usize::from(channels))
                .map(|i| (i as f64 * 0.3).sin() * 0.5)
                .collect();
            mmrl_audio::wav::encode_with_spec(&samples, spec).unwrap()
        })
        .collect()
}

fn images() -> Vec<(String, Vec<u8>)> {
    use image::{DynamicImage, ImageBuffer, ImageFormat};
    let (w, h) = (12u32, 9u32);
    let px = |x: u32, y: u32, c: u32| ((x * 37 + y * 11 + c * 71) % 256) as u8;
    let l8 = ImageBuffer::from_fn(w, h, |x, y| image::Luma([px(x, y, 0)]));
    let la8 = ImageBuffer::from_fn(w, h, |x, y| image::LumaA([px(x, y, 0), px(x, y, 1)]));
    let rgb8 = ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([px(x, y, 0), px(x, y, 1), px(x, y, 2)])
    });
    let rgba8 = ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgba([px(x, y, 0), px(x, y, 1), px(x, y, 2), px(x, y, 3)])
    });
    let l16 = ImageBuffer::from_fn(w, h, |x, y| image::Luma([u16::from(px(x, y, 0)) * 257]));
    let encode = |img: DynamicImage, format: ImageFormat| {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    vec![
        (
            "l8.png".into(),
            encode(DynamicImage::ImageLuma8(l8.clone()), ImageFormat::Png),
        ),
        (
            "la8.png".into(),
            encode(DynamicImage::ImageLumaA8(la8), ImageFormat::Png),
        ),
        (
            "rgb8.png".into(),
            encode(DynamicImage::ImageRgb8(rgb8.clone()), ImageFormat::Png),
        ),
        (
            "rgba8.png".into(),
            encode(DynamicImage::ImageRgba8(rgba8), ImageFormat::Png),
        ),
        (
            "l16.png".into(),
            encode(DynamicImage::ImageLuma16(l16), ImageFormat::Png),
        ),
        (
            "grey.jpg".into(),
            encode(DynamicImage::ImageLuma8(l8), ImageFormat::Jpeg),
        ),
        (
            "rgb.jpg".into(),
            encode(DynamicImage::ImageRgb8(rgb8), ImageFormat::Jpeg),
        ),
    ]
}

/// Every stage's params as the runner hands them over (`extends` and `tune` resolved), deduplicated.
fn params(root: &Path) -> Vec<(String, toml::Table)> {
    let mut out: Vec<(String, toml::Table)> = Vec::new();
    for file in ["default.toml", "smoke.toml"] {
        let pipeline = xtask::pipeline::Pipeline::load(&root.join(file)).unwrap();
        for spec in pipeline.stages.values() {
            let entry = (spec.run.clone(), spec.params.clone());
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    out
}

/// A committed artifact with a `samples` table of text, binary and numeric columns in several row groups.
fn write_artifact(dir: &Path) {
    let info = mmrl_artifact::StageInfo {
        stage: "select".into(),
        crate_name: "mmrl-tests".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: Some(1),
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("question", DataType::Utf8, false),
        Field::new("image", DataType::Binary, true),
        Field::new("x", DataType::Float64, true),
    ]));
    let batch = |from: usize| {
        let n = 16;
        let ids: Vec<String> = (from..from + n).map(|i| format!("s{i}")).collect();
        let questions: Vec<String> = (from..from + n).map(|i| format!("what is {i}?")).collect();
        let images: Vec<Option<Vec<u8>>> = (from..from + n)
            .map(|i| (i % 3 != 0).then(|| vec![i as u8; i % 40]))
            .collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)) as ArrayRef,
                Arc::new(StringArray::from(questions)),
                Arc::new(BinaryArray::from_iter(images.iter().map(|v| v.as_deref()))),
                Arc::new(Float64Array::from_iter(
                    (from..from + n).map(|i| (i % 5 != 0).then_some(i as f64 / 3.0)),
                )),
            ],
        )
        .unwrap()
    };
    let mut writer = mmrl_artifact::ArtifactWriter::create(dir, info).unwrap();
    writer
        .write_table(
            "samples",
            mmrl_artifact::Role::Data,
            schema.clone(),
            &[batch(0), batch(16), batch(32)],
        )
        .unwrap();
    writer.commit().unwrap();
}

/// Makes the manifest agree with `file`'s bytes as they are now (its hash, size and the content hash).
pub fn rehash(dir: &Path, file: &str) {
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let outputs = m["outputs"].as_array_mut().unwrap();
    for o in outputs.iter_mut().filter(|o| o["file"] == file) {
        o["blake3"] = mmrl_artifact::hash::hash_bytes(&bytes).into();
        o["bytes"] = (bytes.len() as u64).into();
    }
    let listed: Vec<(String, String)> = outputs
        .iter()
        .map(|o| {
            (
                o["file"].as_str().unwrap().to_owned(),
                o["blake3"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    m["content_hash"] =
        mmrl_artifact::hash::combine(listed.iter().map(|(f, h)| (f.as_str(), h.as_str()))).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

// --- datasets -----------------------------------------------------------------------------------------------

/// A dataset folder: files by relative path.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// (relative path, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Dataset {
    /// Writes the files under `dir`.
    pub fn write(&self, dir: &Path) {
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

/// The layouts ingest reads.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// `manifest.csv` and media.
    ManifestCsv,
    /// A Hugging Face folder with `metadata.jsonl`.
    MetadataJsonl,
    /// `datasets` Parquet with `{bytes, path}` image structs.
    Parquet,
}

/// Cells users write, good and bad.
const CELLS: &[&str] = &[
    "",
    " ",
    "x",
    "What color is the shape?",
    "red",
    "2",
    "-0",
    "1e309",
    "NaN",
    "inf",
    "-inf",
    "0x10",
    "3.5",
    "train",
    "val",
    "test",
    "validation",
    "Train",
    "bogus",
    "image",
    "audio",
    "image audio",
    "tabular video",
    "a.png",
    "b.wav",
    "c.png",
    "d.wav",
    "e.jpg",
    "missing.png",
    "../a.png",
    "/etc/passwd",
    "a.png;b.wav",
    "sub/../a.png",
    "file:///a.png",
    "\"quoted, comma\"",
    "line\nbreak",
    "é中文🙂",
    "\u{0}",
    "null",
    "[1,2]",
    "{\"a\":1}",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

/// Columns of a manifest or metadata file: the roles, mapped names and features.
const COLUMNS: &[&str] = &[
    "id",
    "question",
    "answer",
    "image",
    "audio",
    "split",
    "task",
    "qtype",
    "modalities",
    "file_name",
    "image_file_name",
    "audio_file_name",
    "label",
    "f1",
    "color",
    "accept",
    "check_range",
    "id",
];

/// Media files beside the manifest: valid ones, and mutated copies under the names the cells use.
fn media() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let seeds = Seeds::get();
    (
        0..seeds.images.len(),
        0..seeds.wavs.len(),
        mutations(3),
        mutations(3),
    )
        .prop_map(|(i, w, mi, mw)| {
            let seeds = Seeds::get();
            vec![
                ("a.png".into(), seeds.images[2].1.clone()),
                ("b.wav".into(), seeds.wavs[1].clone()),
                ("c.png".into(), mutate(&seeds.images[i].1, &mi)),
                ("d.wav".into(), mutate(&seeds.wavs[w], &mw)),
                ("e.jpg".into(), seeds.images[6].1.clone()),
            ]
        })
}

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(CELLS).prop_map(str::to_owned),
        1 => "[ -~]{0,12}",
    ]
}

/// A header (required roles usually present, others drawn) and rows of drawn cells.
fn table() -> impl Strategy<Value = (Vec<String>, Vec<Vec<String>>)> {
    let header = proptest::collection::vec(any::<bool>(), COLUMNS.len()).prop_map(|keep| {
        COLUMNS
            .iter()
            .zip(keep)
            .enumerate()
            // id, question and answer are kept most of the time, so rows get past the header checks.
            .filter(|(i, (_, k))| *k || (*i < 3 && *k == (*i % 2 == 0)) || *i < 3)
            .map(|(_, (c, _))| (*c).to_owned())
            .collect::<Vec<_>>()
    });
    header.prop_flat_map(|header| {
        let width = header.len();
        let row = proptest::collection::vec(cell(), width.saturating_sub(1)..=width + 1);
        (Just(header), proptest::collection::vec(row, 0..7))
    })
}

/// A dataset in `layout`, malformed.
pub fn dataset(layout: Layout) -> BoxedStrategy<Dataset> {
    match layout {
        Layout::ManifestCsv => (
            table(),
            media(),
            proptest::option::weighted(0.3, mutations(2)),
        )
            .prop_map(|((header, rows), mut files, m)| {
                let mut w = csv::WriterBuilder::new()
                    .flexible(true)
                    .from_writer(Vec::new());
                w.write_record(&header).unwrap();
                for row in &rows {
                    w.write_record(row).unwrap();
                }
                let text = w.into_inner().unwrap();
                let text = m.map_or(text.clone(), |m| mutate(&text, &m));
                files.push(("manifest.csv".into(), text));
                Dataset { files }
            })
            .boxed(),
        Layout::MetadataJsonl => (
            table(),
            media(),
            any::<bool>(),
            proptest::option::weighted(0.3, mutations(2)),
        )
            .prop_map(|((header, rows), files, in_split, m)| {
                let folder = if in_split { "train/" } else { "" };
                let mut text = Vec::new();
                for row in &rows {
                    let object: serde_json::Map<String, serde_json::Value> = header
                        .iter()
                        .zip(row)
                        .map(|(k, v)| (k.clone(), json_cell(v)))
                        .collect();
                    text.extend(serde_json::to_vec(&object).unwrap());
                    text.push(b'\n');
                }
                let text = m.map_or(text.clone(), |m| mutate(&text, &m));
                let mut files: Vec<(String, Vec<u8>)> = files
                    .into_iter()
                    .map(|(n, b)| (format!("{folder}{n}"), b))
                    .collect();
                files.push((format!("{folder}metadata.jsonl"), text));
                Dataset { files }
            })
            .boxed(),
        Layout::Parquet => (
            parquet_rows(),
            proptest::option::weighted(0.5, mutations(3)),
        )
            .prop_map(|(bytes, m)| {
                let bytes = m.map_or(bytes.clone(), |m| mutate(&bytes, &m));
                Dataset {
                    files: vec![("data/train-00000-of-00001.parquet".into(), bytes)],
                }
            })
            .boxed(),
    }
}

/// A cell as JSON: numbers, booleans, nulls, lists and objects where the text reads as one, else the text.
fn json_cell(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// A `datasets`-style Parquet file: text columns, a `ClassLabel`-like integer label and an image struct column.
fn parquet_rows() -> impl Strategy<Value = Vec<u8>> {
    let row = (
        cell(),
        cell(),
        -2i64..4,
        proptest::option::of(0..Seeds::get().images.len()),
        proptest::option::of(any::<f64>()),
    );
    (proptest::collection::vec(row, 1..6), any::<bool>()).prop_map(|(rows, hf_meta)| {
        let seeds = Seeds::get();
        let image_fields = Fields::from(vec![
            Field::new("bytes", DataType::Binary, true),
            Field::new("path", DataType::Utf8, true),
        ]);
        let mut metadata = std::collections::HashMap::new();
        if hf_meta {
            metadata.insert(
                "huggingface".to_owned(),
                r#"{"info":{"features":{"image":{"_type":"Image"},"label":{"names":["cat","dog","red"],"_type":"ClassLabel"}}}}"#.to_owned(),
            );
        }
        let schema = Arc::new(
            Schema::new(vec![
                Field::new("question", DataType::Utf8, true),
                Field::new("answer", DataType::Utf8, true),
                Field::new("label", DataType::Int64, true),
                Field::new("image", DataType::Struct(image_fields.clone()), true),
                Field::new("f1", DataType::Float64, true),
            ])
            .with_metadata(metadata),
        );
        let bytes: Vec<Option<&[u8]>> =
            rows.iter().map(|r| r.3.map(|i| seeds.images[i].1.as_slice())).collect();
        let paths: Vec<Option<String>> =
            rows.iter().map(|r| r.3.map(|i| seeds.images[i].0.clone())).collect();
        let image = StructArray::new(
            image_fields,
            vec![
                Arc::new(BinaryArray::from_iter(bytes)) as ArrayRef,
                Arc::new(StringArray::from(paths)),
            ],
            None,
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.clone()))) as ArrayRef,
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.clone()))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(image),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.4))),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        out
    })
}

// --- texts: pipeline files and journals ---------------------------------------------------------------------

/// A line-level edit of a text file: what a hand edit or a torn write does.
#[derive(Debug, Clone)]
pub enum TextEdit {
    /// Remove a line.
    Delete(Index),
    /// Repeat a line.
    Duplicate(Index),
    /// Swap two lines.
    Swap(Index, Index),
    /// Cut a line short (a torn write).
    Cut(Index, Index),
    /// Replace one word of a line.
    Word(Index, Index, String),
    /// Insert a line.
    Insert(Index, String),
    /// Flip a byte (invalid UTF-8 included).
    Byte(Index, u8),
}

const WORDS: &[&str] = &[
    "",
    "0",
    "-1",
    "1e999",
    "nan",
    "inf",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "true",
    "=",
    "[",
    "]",
    "\"",
    "{",
    "}",
    "extends = \"default.toml\"",
    "extends = \"fuzz.toml\"",
    "extends = \"/nonexistent.toml\"",
    "[stages.x]",
    "run = \"mmrl-data\"",
    "run = \"a b c\"",
    "inputs = { samples = \"nope\" }",
    "inputs = { a = \"ingest/../x\" }",
    "tune = \"hpo\"",
    "tune = \"sft\"",
    "seed = -1",
    "18446744073709551616",
    "dataset = \"\"",
    "\"trial\": 1",
    "\"event\": \"finish\"",
    "\"state\": \"running\"",
    "\"trial\": 99",
    "null",
    "1.5",
    "\u{feff}",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![9 => proptest::sample::select(WORDS).prop_map(str::to_owned), 1 => "[ -~]{0,10}"]
}

/// One to four text edits.
pub fn text_edits() -> impl Strategy<Value = Vec<TextEdit>> {
    let one = prop_oneof![
        1 => any::<Index>().prop_map(TextEdit::Delete),
        1 => any::<Index>().prop_map(TextEdit::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TextEdit::Swap(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TextEdit::Cut(a, b)),
        3 => (any::<Index>(), any::<Index>(), word()).prop_map(|(a, b, w)| TextEdit::Word(a, b, w)),
        1 => (any::<Index>(), word()).prop_map(|(a, w)| TextEdit::Insert(a, w)),
        1 => (any::<Index>(), 1u8..=255).prop_map(|(a, x)| TextEdit::Byte(a, x)),
    ];
    proptest::collection::vec(one, 1..=4)
}

/// `text` with `edits` applied.
pub fn edit_text(text: &[u8], edits: &[TextEdit]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = text.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    for edit in edits {
        let n = lines.len();
        let at = |i: &Index| if n == 0 { 0 } else { i.index(n) };
        match edit {
            TextEdit::Delete(i) if n > 0 => {
                lines.remove(at(i));
            }
            TextEdit::Duplicate(i) if n > 0 => {
                let line = lines[at(i)].clone();
                lines.insert(at(i), line);
            }
            TextEdit::Swap(a, b) if n > 0 => lines.swap(at(a), at(b)),
            TextEdit::Cut(i, c) if n > 0 => {
                let line = &mut lines[at(i)];
                let len = line.len();
                line.truncate(if len == 0 { 0 } else { c.index(len) });
            }
            TextEdit::Word(i, w, word) if n > 0 => {
                let line = String::from_utf8_lossy(&lines[at(i)]).into_owned();
                let mut words: Vec<&str> = line.split(' ').collect();
                let k = w.index(words.len());
                words[k] = word;
                lines[at(i)] = words.join(" ").into_bytes();
            }
            TextEdit::Insert(i, word) => {
                let p = if n == 0 { 0 } else { i.index(n + 1) };
                lines.insert(p, word.clone().into_bytes());
            }
            TextEdit::Byte(i, x) if n > 0 => {
                let line = &mut lines[at(i)];
                if !line.is_empty() {
                    let len = line.len();
                    line[i.index(len)] ^= x;
                }
            }
            _ => {}
        }
    }
    lines.join(&b'\n')
}

/// A valid journal of a few trials (as `JournalStorage` writes it), then edited.
pub fn journal() -> impl Strategy<Value = Vec<u8>> {
    let trial = (
        any::<bool>(),
        0u8..4,
        proptest::sample::select(vec!["complete", "pruned", "failed", "interrupted"]),
    );
    (proptest::collection::vec(trial, 1..5), text_edits(), proptest::option::weighted(0.2, mutations(2))).prop_map(
        |(trials, edits, m)| {
            let mut lines = Vec::new();
            for (n, (finished, steps, state)) in trials.iter().enumerate() {
                lines.push(serde_json::json!({"event": "start", "trial": n, "params": {"x": n as f64 / 7.0, "kind": "a"}, "time": 1.7e9 + n as f64}));
                for step in 0..*steps {
                    lines.push(serde_json::json!({"event": "intermediate", "trial": n, "step": step, "value": 0.1 * f64::from(step)}));
                }
                if *finished {
                    let mut end = serde_json::json!({"event": "finish", "trial": n, "state": state, "duration_s": 1.5, "time": 1.7e9 + 9.0});
                    if *state != "failed" && *state != "interrupted" {
                        end["value"] = 0.5.into();
                    } else {
                        end["error"] = "trial exited with signal 9".into();
                    }
                    lines.push(end);
                }
            }
            let mut text: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            text = edit_text(&text, &edits);
            m.map_or(text.clone(), |m| mutate(&text, &m))
        },
    )
}

// --- params ---------------------------------------------------------------------------------------------------

/// One edit of a params table: a value replaced, a key removed, or an unknown key added.
#[derive(Debug, Clone)]
pub enum ParamEdit {
    /// Replace the value at a key (any depth).
    Replace(Index, toml::Value),
    /// Remove a key.
    Remove(Index),
    /// Add a key no stage knows to a table.
    Unknown(Index),
}

fn value() -> impl Strategy<Value = toml::Value> {
    use toml::Value as V;
    prop_oneof![
        proptest::sample::select(vec![0i64, -1, 1, 2, 3, 7, 1 << 40, i64::MAX, i64::MIN])
            .prop_map(V::Integer),
        proptest::sample::select(vec![
            0.0,
            -0.5,
            0.5,
            1.0,
            1.5,
            1e-12,
            1e308,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY
        ])
        .prop_map(V::Float),
        proptest::sample::select(vec![
            "",
            "x",
            "none",
            "random",
            "median",
            "train",
            "test",
            "log",
            "mmrl-model sft",
            "é"
        ])
        .prop_map(|s| V::String(s.to_owned())),
        any::<bool>().prop_map(V::Boolean),
        Just(V::Array(vec![])),
        Just(V::Array(vec![V::Integer(1), V::String("a".into())])),
        Just(V::Array(vec![V::Float(f64::NAN), V::Float(0.5)])),
        Just(V::Table(toml::Table::new())),
    ]
}

/// A strategy for one params edit.
pub fn param_edit() -> impl Strategy<Value = ParamEdit> {
    prop_oneof![
        6 => (any::<Index>(), value()).prop_map(|(i, v)| ParamEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(ParamEdit::Remove),
        1 => any::<Index>().prop_map(ParamEdit::Unknown),
    ]
}

/// Every key path of a table, depth first (arrays of tables by index).
fn paths(table: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in table {
        prefix.push(k.clone());
        out.push(prefix.clone());
        if let toml::Value::Table(t) = v {
            paths(t, prefix, out);
        }
        prefix.pop();
    }
}

fn table_at<'a>(table: &'a mut toml::Table, path: &[String]) -> &'a mut toml::Table {
    let mut at = table;
    for k in path {
        at = match at.get_mut(k) {
            Some(toml::Value::Table(t)) => t,
            _ => unreachable!("paths lead through tables"),
        };
    }
    at
}

/// `base` with `edit` applied, and the name of the key it touched (what an error should name).
pub fn edit_params(base: &toml::Table, edit: &ParamEdit) -> (toml::Table, String) {
    let mut table = base.clone();
    let mut all = Vec::new();
    paths(&table, &mut Vec::new(), &mut all);
    if all.is_empty() {
        table.insert("fuzz_unknown".into(), toml::Value::Integer(1));
        return (table, "fuzz_unknown".into());
    }
    match edit {
        ParamEdit::Replace(i, v) => {
            let path = &all[i.index(all.len())];
            let (last, parents) = path.split_last().unwrap_or_else(|| unreachable!());
            table_at(&mut table, parents).insert(last.clone(), v.clone());
            (table, last.clone())
        }
        ParamEdit::Remove(i) => {
            let path = &all[i.index(all.len())];
            let (last, parents) = path.split_last().unwrap_or_else(|| unreachable!());
            table_at(&mut table, parents).remove(last);
            (table, last.clone())
        }
        ParamEdit::Unknown(i) => {
            let tables: Vec<&Vec<String>> = all
                .iter()
                .filter(|p| matches!(table_value(&table, p), Some(toml::Value::Table(_))))
                .collect();
            let path: Vec<String> = match tables.len() {
                0 => Vec::new(),
                n => tables[i.index(n)].clone(),
            };
            table_at(&mut table, &path).insert("fuzz_unknown".into(), toml::Value::Integer(1));
            (table, "fuzz_unknown".into())
        }
    }
}

fn table_value<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut at = table.get(first)?;
    for k in rest {
        at = at.as_table()?.get(k)?;
    }
    Some(at)
}

/// Reads and validates a params file the way the stage `run` does (its binary's `--check`).
pub fn check_params(run: &str, file: &Path) -> Result<(), String> {
    use mmrl_artifact::cli::{StageArgs, config};
    let args = StageArgs {
        params: Some(file.to_path_buf()),
        inputs: Vec::new(),
        output: None,
        seed: 0,
        check: false,
    };
    let done = |r: Result<Option<()>, String>| r.map(|_| ());
    match run {
        "mmrl-data generate" => {
            config(&args, mmrl_data::generate::GenerateConfig::validate).map(|_| ())
        }
        "mmrl-data ingest" => config(&args, mmrl_data::ingest::IngestConfig::validate).map(|_| ()),
        "mmrl-data select" => config(&args, mmrl_data::select::SelectConfig::validate).map(|_| ()),
        "mmrl-tabular tabular" => {
            config(&args, mmrl_tabular::stage::TabularConfig::validate).map(|_| ())
        }
        "mmrl-image image" => config(&args, mmrl_image::ImageConfig::validate).map(|_| ()),
        "mmrl-audio audio" => config(&args, mmrl_audio::stage::AudioConfig::validate).map(|_| ()),
        "mmrl-hpo hpo" => config(&args, mmrl_hpo::stage::HpoConfig::validate).map(|_| ()),
        "mmrl-model sft" => config(&args, mmrl_model::sft::SftConfig::validate).map(|_| ()),
        "mmrl-model predict" => {
            config(&args, mmrl_model::predict::PredictConfig::validate).map(|_| ())
        }
        "mmrl-rl rl" => config(&args, mmrl_rl::config::RlConfig::validate).map(|_| ()),
        "mmrl-compress compress" => {
            config(&args, mmrl_compress::stage::CompressConfig::validate).map(|_| ())
        }
        "mmrl-eval eval" => config(&args, mmrl_eval::EvalConfig::validate).map(|_| ()),
        other => done(Err(format!("no params check for stage {other:?}"))),
    }
}
