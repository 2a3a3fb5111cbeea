//! Loads the select artifact and the optional modality artifacts, joins them by sample id, and builds
//! host batches.
//!
//! Joining rules: a sample missing from a given modality table was dropped by that stage and is excluded
//! (unless [`Dataset::load_keeping`] keeps its split: then it stays with that modality absent);
//! `<m>_present = false` masks the modality for that sample. Val and test use `view = 0` rows only; train
//! keeps every view and [`Dataset::epoch_order`] picks one at random per sample and epoch.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, SchemaRef, UInt16Type, UInt32Type};
use mmrl_artifact::Artifact;
use mmrl_artifact::sample::{self, Split};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::{Batch, ModalityBatch, ModelConfig, TabularBatch};
use crate::vocab::Vocab;

/// Field metadata key with the number of codes of a categorical tabular column.
pub const CARDINALITY_KEY: &str = "mmrl.cardinality";

/// Paths of the stage inputs; modality inputs are optional.
#[derive(Debug, Clone, Default)]
pub struct InputPaths {
    /// The select artifact (table `samples`).
    pub samples: PathBuf,
    /// The image artifact (table `images`).
    pub image: Option<PathBuf>,
    /// The audio artifact (table `audio`).
    pub audio: Option<PathBuf>,
    /// The tabular artifact (table `tabular`).
    pub tabular: Option<PathBuf>,
}

impl InputPaths {
    /// The content hashes of the inputs joined by `|` (empty for an absent modality): what a resumable
    /// run keys its checkpoints on.
    pub fn content_key(&self) -> Result<String> {
        let hash = |p: &Option<PathBuf>| -> Result<String> {
            match p {
                None => Ok(String::new()),
                Some(p) => Ok(Artifact::open(p)?.manifest().content_hash.clone()),
            }
        };
        Ok([
            hash(&Some(self.samples.clone()))?,
            hash(&self.image)?,
            hash(&self.audio)?,
            hash(&self.tabular)?,
        ]
        .join("|"))
    }

    /// The paths of a stage's `--input NAME=PATH` pairs: `samples` is required, the modalities optional.
    pub fn from_args(args: &mmrl_artifact::cli::StageArgs) -> std::result::Result<Self, String> {
        let optional = |name: &str| {
            args.inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
        };
        Ok(Self {
            samples: args.input("samples")?.to_path_buf(),
            image: optional("image"),
            audio: optional("audio"),
            tabular: optional("tabular"),
        })
    }

    /// Records each modality input that was given (`image`, `audio`, `tabular`) in `writer`'s manifest.
    pub fn record_modalities(&self, writer: &mut mmrl_artifact::ArtifactWriter) -> Result<()> {
        for (name, path) in [
            ("image", &self.image),
            ("audio", &self.audio),
            ("tabular", &self.tabular),
        ] {
            if let Some(p) = path {
                writer.input_artifact(name, &Artifact::open(p)?);
            }
        }
        Ok(())
    }
}

/// A sample after the joins.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// Sample id.
    pub id: String,
    /// Its split.
    pub split: Split,
    /// Question type ("" when null).
    pub qtype: String,
    /// Question text.
    pub question: String,
    /// Reference answer.
    pub answer: String,
    /// Oversampling factor of train rows.
    pub repeat: u32,
    /// Rows of the image store, one per view (view 0 first); empty without an image input.
    pub image: Vec<usize>,
    /// Rows of the audio store, one per view (view 0 first).
    pub audio: Vec<usize>,
    /// Row of the tabular store.
    pub tabular: Option<usize>,
    /// Intermediate answer tokens select derived for this train row (`rationale` column), if any.
    pub rationale: Option<String>,
    /// The modalities the dataset declares this row's answer needs (`modalities` column); the others are masked.
    /// `None` when undeclared: every present modality is seen.
    pub needs: Option<Needs>,
    /// Whether the row keeps its demonstration (select's `labeled` column; true when absent). Supervised
    /// training ([`Dataset::epoch_order`], the vocabulary) uses labeled train rows only.
    pub labeled: bool,
    /// The row's non-empty checker cells (`accept`, `check_*`), by column name: for rl's rewards, never a model
    /// input.
    pub checks: BTreeMap<String, String>,
}

/// The modalities a row's answer depends on, as declared by the dataset's `modalities` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The image.
    pub image: bool,
    /// The audio.
    pub audio: bool,
    /// The tabular features.
    pub tabular: bool,
}

impl Needs {
    /// Parses a `modalities` cell: words among `image`, `audio`, `tabular`, separated by spaces, `|` or commas.
    pub fn parse(cell: &str) -> std::result::Result<Self, String> {
        let mut needs = Needs {
            image: false,
            audio: false,
            tabular: false,
        };
        for word in cell.split([' ', '|', ',']).filter(|w| !w.is_empty()) {
            match word {
                "image" => needs.image = true,
                "audio" => needs.audio = true,
                "tabular" => needs.tabular = true,
                other => {
                    return Err(format!(
                        "{other:?} is not a modality; expected image, audio or tabular"
                    ));
                }
            }
        }
        Ok(needs)
    }
}

/// One modality table in memory.
#[derive(Debug, Clone)]
pub struct TensorStore {
    /// Tensor shape of one row.
    pub shape: Vec<usize>,
    /// Values, `rows x product(shape)`; zeros where absent.
    pub values: Vec<f32>,
    /// Whether each row holds the modality.
    pub present: Vec<bool>,
}

impl TensorStore {
    fn per(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tabular table in memory.
#[derive(Debug, Clone)]
pub struct TabularStore {
    /// Numeric (Float32) column names.
    pub numeric_names: Vec<String>,
    /// Categorical (UInt32) column names.
    pub categorical_names: Vec<String>,
    /// Codes per categorical column.
    pub cardinalities: Vec<usize>,
    /// `rows x numeric`.
    pub numeric: Vec<f32>,
    /// `rows x categorical`.
    pub categorical: Vec<u32>,
    /// Whether each row holds tabular features.
    pub present: Vec<bool>,
}

/// Samples and modality stores joined by id.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Samples kept, in table order.
    pub samples: Vec<SampleRow>,
    /// Images, when an image input was given.
    pub image: Option<TensorStore>,
    /// Audio, when an audio input was given.
    pub audio: Option<TensorStore>,
    /// Tabular features, when a tabular input was given.
    pub tabular: Option<TabularStore>,
    /// Samples excluded because a modality stage dropped them, by modality.
    pub dropped: BTreeMap<String, usize>,
}

fn input_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| input_err(path, format!("missing column {name:?}")))
}

fn strings(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<String>>> {
    let col = column(batch, name, path)?;
    match col.data_type() {
        DataType::Utf8 => Ok(col
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_owned))
            .collect()),
        DataType::LargeUtf8 => Ok(col
            .as_string::<i64>()
            .iter()
            .map(|s| s.map(str::to_owned))
            .collect()),
        other => Err(input_err(
            path,
            format!("column {name:?} is {other:?}, expected Utf8"),
        )),
    }
}

fn views(batch: &RecordBatch, path: &Path) -> Result<Vec<u16>> {
    match batch.column_by_name(sample::VIEW) {
        None => Ok(vec![0; batch.num_rows()]),
        Some(col) => match col.data_type() {
            DataType::UInt16 => Ok(col
                .as_primitive::<UInt16Type>()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect()),
            other => Err(input_err(
                path,
                format!("column \"view\" is {other:?}, expected UInt16"),
            )),
        },
    }
}

fn presence(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<bool>>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(col) => match col.data_type() {
            DataType::Boolean => Ok(Some(
                col.as_boolean()
                    .iter()
                    .map(|v| v.unwrap_or(false))
                    .collect(),
            )),
            other => Err(input_err(
                path,
                format!("column {name:?} is {other:?}, expected Boolean"),
            )),
        },
    }
}

/// Rows of a modality table: id -> [(view, row)], view-0 row first.
type IdRows = HashMap<String, Vec<(u16, usize)>>;

fn load_tensor_table(
    dir: &Path,
    table: &str,
    tensor: &str,
    present_col: &str,
) -> Result<(TensorStore, IdRows)> {
    let artifact = Artifact::open(dir)?;
    let schema: SchemaRef = artifact.table_schema(table)?;
    let field = schema.field_with_name(tensor).map_err(|_| {
        input_err(
            dir,
            format!("table {table:?} has no tensor column {tensor:?}"),
        )
    })?;
    let shape = sample::tensor_shape(field).ok_or_else(|| {
        input_err(
            dir,
            format!(
                "column {tensor:?} is not a fixed-shape Float32 tensor with {} metadata",
                sample::SHAPE_KEY
            ),
        )
    })?;
    let per: usize = shape.iter().product();
    let (_, batches) = artifact.read_table(table)?;
    let mut store = TensorStore {
        shape,
        values: Vec::new(),
        present: Vec::new(),
    };
    let mut rows: IdRows = HashMap::new();
    for batch in &batches {
        let ids = strings(batch, sample::ID, dir)?;
        let views = views(batch, dir)?;
        let present = presence(batch, present_col, dir)?;
        let col = column(batch, tensor, dir)?;
        let list = col
            .as_fixed_size_list_opt()
            .ok_or_else(|| input_err(dir, format!("{tensor:?} is not a FixedSizeList")))?;
        let values = list
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| input_err(dir, format!("{tensor:?} items are not Float32")))?;
        for r in 0..batch.num_rows() {
            let Some(id) = ids[r].clone() else {
                return Err(input_err(dir, format!("table {table:?} row {r}: null id")));
            };
            let is_present = present.as_ref().is_none_or(|p| p[r]) && !list.is_null(r);
            let row = store.present.len();
            if is_present {
                let start = list.value_offset_at(r) as usize;
                store
                    .values
                    .extend_from_slice(&values.values()[start..start + per]);
            } else {
                // Never attended to (masked); zeros only keep NaN out of the arithmetic.
                store.values.extend(std::iter::repeat_n(0.0, per));
            }
            store.present.push(is_present);
            rows.entry(id).or_default().push((views[r], row));
        }
    }
    for v in rows.values_mut() {
        v.sort_unstable();
    }
    Ok((store, rows))
}

fn load_tabular(dir: &Path) -> Result<(TabularStore, HashMap<String, usize>)> {
    let artifact = Artifact::open(dir)?;
    let schema = artifact.table_schema("tabular")?;
    let mut numeric_names = Vec::new();
    let mut categorical_names = Vec::new();
    let mut declared: Vec<Option<usize>> = Vec::new();
    for f in schema.fields() {
        match f.data_type() {
            DataType::Float32 => numeric_names.push(f.name().clone()),
            DataType::UInt32 => {
                categorical_names.push(f.name().clone());
                declared.push(
                    f.metadata()
                        .get(CARDINALITY_KEY)
                        .and_then(|v| v.parse().ok()),
                );
            }
            _ => {}
        }
    }
    let (_, batches) = artifact.read_table("tabular")?;
    let mut store = TabularStore {
        numeric_names,
        categorical_names,
        cardinalities: Vec::new(),
        numeric: Vec::new(),
        categorical: Vec::new(),
        present: Vec::new(),
    };
    let mut max_code = vec![0u32; store.categorical_names.len()];
    let mut rows = HashMap::new();
    for batch in &batches {
        let ids = strings(batch, sample::ID, dir)?;
        let views = views(batch, dir)?;
        let present = presence(batch, "tabular_present", dir)?;
        let nums: Vec<_> = store
            .numeric_names
            .iter()
            .map(|n| column(batch, n, dir).map(|c| c.as_primitive::<Float32Type>().clone()))
            .collect::<Result<_>>()?;
        let cats: Vec<_> = store
            .categorical_names
            .iter()
            .map(|n| column(batch, n, dir).map(|c| c.as_primitive::<UInt32Type>().clone()))
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            if views[r] != 0 {
                continue;
            }
            let Some(id) = ids[r].clone() else {
                return Err(input_err(
                    dir,
                    format!("table \"tabular\" row {r}: null id"),
                ));
            };
            let is_present = present.as_ref().is_none_or(|p| p[r]);
            // A null numeric cell is treated as 0 (the tabular stage writes missing indicators).
            store.numeric.extend(nums.iter().map(|c| {
                if is_present && c.is_valid(r) {
                    c.value(r)
                } else {
                    0.0
                }
            }));
            for (j, c) in cats.iter().enumerate() {
                let code = if c.is_valid(r) { c.value(r) } else { 0 };
                max_code[j] = max_code[j].max(code);
                store.categorical.push(code);
            }
            rows.insert(id, store.present.len());
            store.present.push(is_present);
        }
    }
    store.cardinalities = declared
        .iter()
        .zip(&max_code)
        .map(|(d, m)| d.unwrap_or(*m as usize + 1).max(1))
        .collect();
    Ok((store, rows))
}

/// The columns of one batch of select's samples table (an absent optional column reads as nulls).
struct SampleColumns {
    ids: Vec<Option<String>>,
    splits: Vec<Option<String>>,
    qtypes: Vec<Option<String>>,
    questions: Vec<Option<String>>,
    answers: Vec<Option<String>>,
    rationales: Vec<Option<String>>,
    modalities: Vec<Option<String>>,
    labeled: Option<Vec<bool>>,
    /// The answer-checker columns, by name.
    checkers: Vec<(String, Vec<Option<String>>)>,
    repeats: Option<Vec<u32>>,
}

impl SampleColumns {
    /// Reads the sample columns of `batch` (of the samples table at `path`).
    fn read(batch: &RecordBatch, path: &Path) -> Result<Self> {
        let ids = strings(batch, sample::ID, path)?;
        let splits = strings(batch, sample::SPLIT, path)?;
        let qtypes = strings(batch, sample::QTYPE, path)?;
        let questions = strings(batch, sample::QUESTION, path)?;
        let answers = strings(batch, sample::ANSWER, path)?;
        let optional = |name: &str| -> Result<Vec<Option<String>>> {
            match batch.column_by_name(name) {
                Some(_) => strings(batch, name, path),
                None => Ok(vec![None; batch.num_rows()]),
            }
        };
        let rationales = optional(sample::RATIONALE)?;
        let modalities = optional(sample::MODALITIES)?;
        let labeled = presence(batch, sample::LABELED, path)?;
        let checkers: Vec<(String, Vec<Option<String>>)> = batch
            .schema()
            .fields()
            .iter()
            .filter(|f| sample::is_checker_column(f.name()))
            .map(|f| Ok((f.name().clone(), strings(batch, f.name(), path)?)))
            .collect::<Result<_>>()?;
        let repeats: Option<Vec<u32>> = batch.column_by_name("repeat").and_then(|c| {
            c.as_primitive_opt::<UInt32Type>()
                .map(|a| a.iter().map(|v| v.unwrap_or(1)).collect())
        });
        Ok(Self {
            ids,
            splits,
            qtypes,
            questions,
            answers,
            rationales,
            modalities,
            labeled,
            checkers,
            repeats,
        })
    }
}

/// The modality inputs joined to the samples: each store with its rows by sample id.
struct Joins {
    image: Option<(TensorStore, IdRows)>,
    audio: Option<(TensorStore, IdRows)>,
    tabular: Option<(TabularStore, HashMap<String, usize>)>,
}

impl Joins {
    /// Row `r` joined to its modality rows (every view for train, view 0 otherwise); `None` when a modality
    /// stage dropped it and its split is not in `keep` (counted in `dropped` by modality).
    fn sample(
        &self,
        c: &SampleColumns,
        r: usize,
        path: &Path,
        keep: &[Split],
        dropped: &mut BTreeMap<String, usize>,
    ) -> Result<Option<SampleRow>> {
        let id = c.ids[r]
            .clone()
            .ok_or_else(|| input_err(path, format!("row {r}: null id")))?;
        let split_name = c.splits[r].clone().unwrap_or_default();
        let split = Split::parse(&split_name).ok_or_else(|| {
            input_err(
                path,
                format!(
                    "sample {id:?}: split {split_name:?} is not train/val/test; run select first"
                ),
            )
        })?;
        let view_rows = |rows: &IdRows| -> Vec<usize> {
            let v = rows.get(&id).map(Vec::as_slice).unwrap_or_default();
            match split {
                Split::Train => v.iter().map(|&(_, r)| r).collect(),
                _ => v
                    .iter()
                    .filter(|(view, _)| *view == 0)
                    .map(|&(_, r)| r)
                    .collect(),
            }
        };
        let image_rows = self.image.as_ref().map(|(_, rows)| view_rows(rows));
        let audio_rows = self.audio.as_ref().map(|(_, rows)| view_rows(rows));
        let tab_row = self
            .tabular
            .as_ref()
            .map(|(_, rows)| rows.get(&id).copied());
        let mut drop_reason = None;
        if image_rows.as_ref().is_some_and(Vec::is_empty) {
            drop_reason = Some("image");
        } else if audio_rows.as_ref().is_some_and(Vec::is_empty) {
            drop_reason = Some("audio");
        } else if matches!(tab_row, Some(None)) {
            drop_reason = Some("tabular");
        }
        if let Some(m) = drop_reason.filter(|_| !keep.contains(&split)) {
            *dropped.entry(m.to_owned()).or_default() += 1;
            return Ok(None);
        }
        let needs = c.modalities[r]
            .as_deref()
            .map(Needs::parse)
            .transpose()
            .map_err(|e| input_err(path, format!("sample {id:?}: column \"modalities\": {e}")))?;
        Ok(Some(SampleRow {
            id,
            split,
            qtype: c.qtypes[r].clone().unwrap_or_default(),
            question: c.questions[r].clone().unwrap_or_default(),
            answer: c.answers[r].clone().unwrap_or_default(),
            repeat: c.repeats.as_ref().map_or(1, |v| v[r]).max(1),
            image: image_rows.unwrap_or_default(),
            audio: audio_rows.unwrap_or_default(),
            tabular: tab_row.flatten(),
            rationale: c.rationales[r].clone(),
            needs,
            labeled: c.labeled.as_ref().is_none_or(|l| l[r]),
            checks: c
                .checkers
                .iter()
                .filter_map(|(name, cells)| {
                    let cell = cells[r].as_deref().filter(|c| !c.trim().is_empty())?;
                    Some((name.clone(), cell.to_owned()))
                })
                .collect(),
        }))
    }
}

impl Dataset {
    /// Reads the samples and joins every modality input given.
    pub fn load(inputs: &InputPaths) -> Result<Self> {
        Self::load_keeping(inputs, &[])
    }

    /// As [`Dataset::load`], but a sample of a split in `keep` that a modality stage dropped stays, with that
    /// modality absent (no rows in its store, so batches mask it): eval scores every test row select wrote.
    pub fn load_keeping(inputs: &InputPaths, keep: &[Split]) -> Result<Self> {
        let path = &inputs.samples;
        let artifact = Artifact::open(path)?;
        let (schema, batches) = artifact.read_table("samples")?;
        for col in [sample::ID, sample::SPLIT, sample::QUESTION, sample::ANSWER] {
            if schema.field_with_name(col).is_err() {
                return Err(input_err(
                    path,
                    format!("table \"samples\" has no column {col:?}; pass the select artifact"),
                ));
            }
        }
        let joins = Joins {
            image: inputs
                .image
                .as_deref()
                .map(|d| load_tensor_table(d, "images", "image_tensor", "image_present"))
                .transpose()?,
            audio: inputs
                .audio
                .as_deref()
                .map(|d| load_tensor_table(d, "audio", "audio_mel", "audio_present"))
                .transpose()?,
            tabular: inputs.tabular.as_deref().map(load_tabular).transpose()?,
        };
        let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
        let mut samples = Vec::new();
        for batch in &batches {
            let columns = SampleColumns::read(batch, path)?;
            for r in 0..batch.num_rows() {
                if let Some(row) = joins.sample(&columns, r, path, keep, &mut dropped)? {
                    samples.push(row);
                }
            }
        }
        Ok(Self {
            samples,
            image: joins.image.map(|(s, _)| s),
            audio: joins.audio.map(|(s, _)| s),
            tabular: joins.tabular.map(|(s, _)| s),
            dropped,
        })
    }

    /// Indices of the samples of `split`.
    pub fn split(&self, split: Split) -> Vec<usize> {
        (0..self.samples.len())
            .filter(|&i| self.samples[i].split == split)
            .collect()
    }

    /// Decoder steps a target needs beyond its answer: the longest labeled train rationale plus its separator (0
    /// when no labeled train row has one, or the vocabulary has no separator).
    pub fn rationale_len(&self, vocab: &Vocab) -> usize {
        if vocab.separator().is_none() {
            return 0;
        }
        self.labeled_train()
            .iter()
            .filter_map(|&i| self.samples[i].rationale.as_deref())
            .map(|r| vocab.encode_answer(r, usize::MAX).len() + 1)
            .max()
            .unwrap_or(0)
    }

    /// Fills the data-derived sizes of a model config from this dataset and the vocabulary.
    pub fn shape_config(&self, mut config: ModelConfig, vocab: &Vocab) -> ModelConfig {
        config.question_vocab = vocab.question.len();
        config.answer_vocab = vocab.answer.len();
        config.image_shape = self
            .image
            .as_ref()
            .and_then(|s| <[usize; 3]>::try_from(s.shape.as_slice()).ok());
        config.audio_shape = self
            .audio
            .as_ref()
            .and_then(|s| <[usize; 2]>::try_from(s.shape.as_slice()).ok());
        config.numeric_features = self.tabular.as_ref().map_or(0, |t| t.numeric_names.len());
        config.categorical_cardinalities = self
            .tabular
            .as_ref()
            .map_or_else(Vec::new, |t| t.cardinalities.clone());
        config
    }

    /// Checks that this dataset provides every modality `config` was built for, in the same shape.
    pub fn check_compatible(&self, config: &ModelConfig, path: &Path) -> Result<()> {
        let shape_of = |s: &Option<TensorStore>| s.as_ref().map(|s| s.shape.clone());
        let checks = [
            (
                "image",
                config.image_shape.map(|s| s.to_vec()),
                shape_of(&self.image),
                "--input image=ARTIFACT",
            ),
            (
                "audio",
                config.audio_shape.map(|s| s.to_vec()),
                shape_of(&self.audio),
                "--input audio=ARTIFACT",
            ),
        ];
        for (name, want, have, flag) in checks {
            match (want, have) {
                (Some(w), None) => {
                    return Err(input_err(
                        path,
                        format!("the model needs the {name} modality {w:?}; pass {flag}"),
                    ));
                }
                (Some(w), Some(h)) if w != h => {
                    return Err(input_err(
                        path,
                        format!(
                            "the model expects {name} tensors of shape {w:?}, the input has {h:?}"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let tab = self
            .tabular
            .as_ref()
            .map(|t| (t.numeric_names.len(), t.cardinalities.len()));
        let want = (
            config.numeric_features,
            config.categorical_cardinalities.len(),
        );
        if want != (0, 0) && tab != Some(want) {
            return Err(input_err(
                path,
                format!(
                    "the model needs {} numeric and {} categorical tabular features, the input has {:?}; pass the matching --input tabular=ARTIFACT",
                    want.0, want.1, tab
                ),
            ));
        }
        Ok(())
    }

    /// Indices of the train samples that keep their demonstration: what supervised training may learn from.
    pub fn labeled_train(&self) -> Vec<usize> {
        (0..self.samples.len())
            .filter(|&i| self.samples[i].split == Split::Train && self.samples[i].labeled)
            .collect()
    }

    /// The supervised train order of one epoch: each labeled train sample `repeat` times with a random view,
    /// shuffled; a pure function of `(seed, epoch)`, so a resumed run replays it exactly. Unlabeled rows (select's
    /// label budget) are left out: their answers are hidden from training.
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<(usize, usize)> {
        self.order_of(&self.labeled_train(), seed, epoch)
    }

    /// As [`Dataset::epoch_order`] over every train sample, labeled or not: the prompts of rl, whose checkers score
    /// answers without a demonstration.
    pub fn prompt_order(&self, seed: u64, epoch: u64) -> Vec<(usize, usize)> {
        self.order_of(&self.split(Split::Train), seed, epoch)
    }

    fn order_of(&self, rows: &[usize], seed: u64, epoch: u64) -> Vec<(usize, usize)> {
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ 0x5eed_0000_0000 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order = Vec::new();
        for &i in rows {
            let s = &self.samples[i];
            let n_views = s.image.len().max(s.audio.len()).max(1);
            for _ in 0..s.repeat {
                order.push((i, rng.random_range(0..n_views)));
            }
        }
        order.shuffle(&mut rng);
        order
    }

    /// The host batch and answer ids of `items` (sample index, view). With `modality_dropout` and an RNG,
    /// each present modality of each sample is masked with that probability.
    pub fn batch(
        &self,
        items: &[(usize, usize)],
        vocab: &Vocab,
        config: &ModelConfig,
        mut modality_dropout: Option<(&mut ChaCha8Rng, f64)>,
    ) -> (Batch, Vec<Vec<u32>>) {
        let questions = items
            .iter()
            .map(|&(i, _)| {
                vocab.encode_question(&self.samples[i].question, config.max_question_len)
            })
            .collect();
        let answers = items
            .iter()
            .map(|&(i, _)| {
                let s = &self.samples[i];
                vocab.encode_target(s.rationale.as_deref(), &s.answer, config.max_answer_len)
            })
            .collect();
        let mut batch = Batch::new(questions);
        let mut keep = |present: bool, needed: bool| -> bool {
            let present = present && needed;
            match modality_dropout.as_mut() {
                Some((rng, p)) if present && *p > 0.0 => !rng.random_bool(*p),
                _ => present,
            }
        };
        let mut gather = |store: &Option<TensorStore>,
                          wanted: bool,
                          rows_of: &dyn Fn(&SampleRow) -> &Vec<usize>,
                          needed: &dyn Fn(&SampleRow) -> bool| {
            let store = store.as_ref().filter(|_| wanted)?;
            let per = store.per();
            let mut m = ModalityBatch {
                values: Vec::with_capacity(items.len() * per),
                present: Vec::with_capacity(items.len()),
            };
            for &(i, view) in items {
                let rows = rows_of(&self.samples[i]);
                match rows.get(view.min(rows.len().saturating_sub(1))) {
                    Some(&r) => {
                        m.values
                            .extend_from_slice(&store.values[r * per..(r + 1) * per]);
                        m.present
                            .push(keep(store.present[r], needed(&self.samples[i])));
                    }
                    None => {
                        m.values.extend(std::iter::repeat_n(0.0, per));
                        m.present.push(false);
                    }
                }
            }
            Some(m)
        };
        batch.image = gather(
            &self.image,
            config.image_shape.is_some(),
            &|s| &s.image,
            &|s| s.needs.is_none_or(|n| n.image),
        );
        batch.audio = gather(
            &self.audio,
            config.audio_shape.is_some(),
            &|s| &s.audio,
            &|s| s.needs.is_none_or(|n| n.audio),
        );
        if let Some(t) = self
            .tabular
            .as_ref()
            .filter(|_| config.numeric_features + config.categorical_cardinalities.len() > 0)
        {
            let (nf, nc) = (t.numeric_names.len(), t.categorical_names.len());
            let mut tb = TabularBatch {
                numeric: Vec::new(),
                categorical: Vec::new(),
                present: Vec::new(),
            };
            for &(i, _) in items {
                match self.samples[i].tabular {
                    Some(r) => {
                        tb.numeric
                            .extend_from_slice(&t.numeric[r * nf..(r + 1) * nf]);
                        tb.categorical
                            .extend_from_slice(&t.categorical[r * nc..(r + 1) * nc]);
                        let needed = self.samples[i].needs.is_none_or(|n| n.tabular);
                        tb.present.push(keep(t.present[r], needed));
                    }
                    None => {
                        tb.numeric.extend(std::iter::repeat_n(0.0, nf));
                        tb.categorical.extend(std::iter::repeat_n(0, nc));
                        tb.present.push(false);
                    }
                }
            }
            batch.tabular = Some(tb);
        }
        (batch, answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    fn row(id: &str, needs: Option<&str>, rationale: Option<&str>) -> SampleRow {
        SampleRow {
            id: id.into(),
            split: Split::Train,
            qtype: String::new(),
            question: "which".into(),
            answer: "8".into(),
            repeat: 1,
            image: vec![0],
            audio: vec![0],
            tabular: None,
            rationale: rationale.map(str::to_owned),
            needs: needs.map(|n| Needs::parse(n).unwrap()),
            labeled: true,
            checks: BTreeMap::new(),
        }
    }

    fn store(shape: Vec<usize>) -> TensorStore {
        let per: usize = shape.iter().product();
        TensorStore {
            shape,
            values: vec![0.5; per],
            present: vec![true],
        }
    }

    #[test]
    fn declared_needs_mask_the_other_modalities_and_rationales_lead_the_target() {
        let data = Dataset {
            samples: vec![
                row("image only", Some("image"), None),
                row("undeclared", None, None),
                row("both", Some("image audio"), Some("3 5")),
            ],
            image: Some(store(vec![3, 8, 8])),
            audio: Some(store(vec![8, 8])),
            tabular: None,
            dropped: BTreeMap::new(),
        };
        let vocab = Vocab::fit([("which", "8"), ("", "3 5")]).with_separator();
        let config = data.shape_config(ModelConfig::preset(Preset::Tiny), &vocab);
        let (batch, targets) = data.batch(&[(0, 0), (1, 0), (2, 0)], &vocab, &config, None);
        assert_eq!(batch.image.unwrap().present, [true, true, true]);
        assert_eq!(batch.audio.unwrap().present, [false, true, true]);
        let sep = vocab.separator().unwrap();
        assert_eq!(targets[1], vocab.encode_answer("8", 4));
        assert_eq!(targets[2][2], sep);
        assert_eq!(vocab.decode_answer(&targets[2]), "8");
        assert_eq!(
            data.rationale_len(&vocab),
            3,
            "two tokens and the separator"
        );
        assert!(
            Needs::parse("image, sound")
                .unwrap_err()
                .contains("\"sound\"")
        );
    }
}
