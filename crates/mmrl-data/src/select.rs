//! The select stage: task-specific subsets by declarative filters, deduplication, leak-free splits, balance.
//!
//! Order of work: filters (each reports the rows it removed), exact-duplicate removal, grouping (samples that
//! share an image or audio clip, or a `group_by` value, must land in one split), then a seeded split of the
//! groups stratified by answer (an existing `split` column is respected), then an optional label budget (the
//! `labeled` column: train rows beyond a question type's budget keep their answer but are not to be trained on),
//! optional oversampling of rare labeled answers in the train split, recorded as the `repeat` column rather than as
//! copied rows, and, where the data declares which modalities each question needs, the `rationale` column of
//! labeled train rows that need two, derived from labeled train rows only.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, RecordBatch, StringArray,
    StringBuilder, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mmrl_artifact::sample::{self, Rejects, Split};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The column select appends: how many times a row counts in training (1, or more when oversampled).
pub const REPEAT: &str = "repeat";

/// Parameters of the select stage (`[stages.select.params]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectConfig {
    /// Filters applied in order; a row is kept when it passes every one.
    pub filters: Vec<Filter>,
    /// Duplicate handling.
    pub dedup: Dedup,
    /// How rows are split.
    pub split: SplitConfig,
    /// Oversampling of rare answers in the train split.
    pub balance: Balance,
    /// Question type -> how many of its train rows keep their demonstration (`answer`): the others are marked
    /// unlabeled in the [`sample::LABELED`] column, so sft does not train on them while rl still draws them as
    /// prompts and scores them with checkers. Val and test rows keep their answers. Empty: every row labeled, and
    /// no `labeled` column.
    pub label_budget: BTreeMap<String, usize>,
}

/// One declarative filter. Give `column` with exactly one of `in`, `not_in`, `min`/`max`, `not_null`,
/// `contains`; or give `present` alone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A name for the report; defaults to a description of the predicate.
    pub name: Option<String>,
    /// The column the predicate reads (any string or numeric column of the samples table).
    pub column: Option<String>,
    /// Keep rows whose value is one of these (string columns). Nulls are removed.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// Remove rows whose value is one of these (string columns). Nulls are kept.
    pub not_in: Option<Vec<String>>,
    /// Keep rows whose value is at least this (numeric columns). Nulls are removed.
    pub min: Option<f64>,
    /// Keep rows whose value is at most this (numeric columns). Nulls are removed.
    pub max: Option<f64>,
    /// `true`: keep rows where the column is not null; `false`: keep rows where it is null.
    pub not_null: Option<bool>,
    /// Keep rows whose string value contains this text. Nulls are removed.
    pub contains: Option<String>,
    /// Keep rows that have every one of these modalities (`image`, `audio`).
    pub present: Option<Vec<Modality>>,
}

/// A media modality of the sample schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// The `image` column.
    Image,
    /// The `audio` column.
    Audio,
}

impl Modality {
    fn column(self) -> &'static str {
        match self {
            Modality::Image => sample::IMAGE,
            Modality::Audio => sample::AUDIO,
        }
    }
}

/// What to do with rows that share one modality's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedMedia {
    /// Keep them all, in one split (several questions about one image are normal).
    Group,
    /// Keep the first, reject the rest as duplicates.
    Drop,
    /// Ignore sharing.
    Off,
}

/// Duplicate handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dedup {
    /// Reject rows whose whole content (question, answer, task, media, features) equals an earlier row's.
    pub exact: bool,
    /// Rows with byte-identical images.
    pub same_image: SharedMedia,
    /// Rows with byte-identical audio.
    pub same_audio: SharedMedia,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            exact: true,
            same_image: SharedMedia::Group,
            same_audio: SharedMedia::Group,
        }
    }
}

/// How rows are assigned to train, val and test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Fraction of rows for train.
    pub train: f64,
    /// Fraction of rows for val.
    pub val: f64,
    /// Fraction of rows for test.
    pub test: f64,
    /// Stratify by answer: each answer is split in the same proportions, as far as its size allows.
    pub stratify: bool,
    /// A column whose value never appears in two splits (a speaker, a device).
    pub group_by: Option<String>,
    /// Keep the split of rows that already have one.
    pub respect_existing: bool,
    /// Answers with fewer rows than this get a warning: they cannot be stratified well.
    pub min_class_rows: usize,
    /// Rows whose declared split differs from that of rows they share an image, a clip or a group with.
    pub on_conflict: OnConflict,
}

/// What to do with a group of rows (shared media or `group_by` value) whose declared splits disagree. Either way
/// no content straddles two splits; the report says how many rows were concerned, and from which splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Reject the rows whose declared split is not the group's (reason `split_conflict`).
    Reject,
    /// Keep them all, moved into the group's split.
    Regroup,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            train: 0.7,
            val: 0.15,
            test: 0.15,
            stratify: true,
            group_by: None,
            respect_existing: true,
            min_class_rows: 10,
            on_conflict: OnConflict::Reject,
        }
    }
}

/// Oversampling of rare answers in train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Balance {
    /// Raise each answer's train weight towards the most frequent answer's.
    pub oversample: bool,
    /// No row is repeated more than this many times.
    pub max_repeat: u32,
}

impl Default for Balance {
    fn default() -> Self {
        Self {
            oversample: false,
            max_repeat: 4,
        }
    }
}

impl SelectConfig {
    /// Checks every field before any work is done (column names are checked against the data in [`run`]).
    pub fn validate(&self) -> Result<()> {
        let config = |field: String, message: String| Error::Config { field, message };
        for (i, f) in self.filters.iter().enumerate() {
            let field = format!("filters[{i}]");
            let predicates = [
                f.one_of.is_some(),
                f.not_in.is_some(),
                f.min.is_some() || f.max.is_some(),
                f.not_null.is_some(),
                f.contains.is_some(),
            ]
            .iter()
            .filter(|p| **p)
            .count();
            match (&f.column, &f.present) {
                (None, Some(p)) if predicates == 0 && !p.is_empty() => {}
                (None, Some(_)) if predicates == 0 => {
                    return Err(config(field, "present lists no modality".into()));
                }
                (Some(_), None) if predicates == 1 => {}
                _ => {
                    return Err(config(
                        field,
                        "give `column` with exactly one of in, not_in, min/max, not_null, contains; or `present` alone"
                            .into(),
                    ));
                }
            }
            for (name, v) in [("min", f.min), ("max", f.max)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    return Err(config(
                        format!("{field}.{name}"),
                        "must be a finite number".into(),
                    ));
                }
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max)
                && lo > hi
            {
                return Err(config(
                    format!("{field}.min"),
                    format!("{lo} is above max {hi}"),
                ));
            }
        }
        let s = &self.split;
        for (name, v) in [("train", s.train), ("val", s.val), ("test", s.test)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(config(
                    format!("split.{name}"),
                    format!("{v} is not in [0, 1]"),
                ));
            }
        }
        if s.train <= 0.0 {
            return Err(config(
                "split.train".into(),
                "must be above 0: statistics are fit on train".into(),
            ));
        }
        let total = s.train + s.val + s.test;
        if (total - 1.0).abs() > 1e-9 {
            return Err(config(
                "split".into(),
                format!("train + val + test is {total}, expected 1"),
            ));
        }
        if self.balance.max_repeat == 0 {
            return Err(config(
                "balance.max_repeat".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn fractions(&self) -> [f64; 3] {
        [self.split.train, self.split.val, self.split.test]
    }
}

impl Filter {
    fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let column = self.column.as_deref().unwrap_or("");
        if let Some(v) = &self.one_of {
            format!("{column} in {v:?}")
        } else if let Some(v) = &self.not_in {
            format!("{column} not in {v:?}")
        } else if let Some(v) = self.not_null {
            format!("{column} {}", if v { "not null" } else { "null" })
        } else if let Some(v) = &self.contains {
            format!("{column} contains {v:?}")
        } else if let Some(p) = &self.present {
            format!("has {p:?}")
        } else {
            format!("{column} in [{:?}, {:?}]", self.min, self.max)
        }
    }
}

/// What select did, also written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectReport {
    /// Rows read.
    pub rows_in: usize,
    /// Rows written.
    pub rows_out: usize,
    /// Rows removed by each filter, in order.
    pub filters: Vec<FilterCount>,
    /// Rows rejected as exact duplicates.
    pub exact_duplicates: usize,
    /// Rows rejected because their image or audio repeated an earlier row's (`drop` policy).
    pub shared_media_dropped: usize,
    /// Groups of more than one row that were kept together in one split.
    pub multi_row_groups: usize,
    /// Rows whose declared split disagreed with their group's, by `declared -> group split`; rejected or moved as
    /// `split.on_conflict` says.
    pub split_conflicts: BTreeMap<String, usize>,
    /// Train rows given intermediate answer tokens ([`RATIONALE`]), by question type.
    pub rationales: BTreeMap<String, usize>,
    /// Train rows of each question type of `label_budget`: how many keep their demonstration, and how many not.
    pub label_budget: BTreeMap<String, LabelCount>,
    /// Rows per split.
    pub splits: BTreeMap<String, usize>,
    /// Rows per answer and split.
    pub answers: BTreeMap<String, BTreeMap<String, usize>>,
    /// Train weight (sum of `repeat`) per answer after balancing.
    pub train_weight: BTreeMap<String, u64>,
    /// Things a person should know (small classes, empty splits).
    pub warnings: Vec<String>,
}

/// Labeled and unlabeled train rows of one question type under a label budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LabelCount {
    /// Train rows that keep their answer as a demonstration.
    pub labeled: usize,
    /// Train rows marked unlabeled.
    pub unlabeled: usize,
}

/// Rows one filter removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterCount {
    /// The filter's name.
    pub filter: String,
    /// Rows it removed (of those still present when it ran).
    pub removed: usize,
}

/// Runs the stage on the ingest artifact at `input`, writing the artifact at `output`.
pub fn run(config: &SelectConfig, seed: u64, input: &Path, output: &Path) -> Result<SelectReport> {
    config.validate()?;
    let artifact = Artifact::open(input)?;
    let (schema, batches) = artifact.read_table("samples")?;
    let table_path = artifact.file("samples.parquet")?;
    sample::check_sample_schema(&schema, &table_path)?;
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    let selection = select(config, seed, &batch, &table_path)?;

    let info = StageInfo {
        stage: "select".into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::Other(format!("serializing config: {e}")))?,
        seed: Some(seed),
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("samples", &artifact);
    let (out_schema, out) = output_batch(&batch, &selection)?;
    writer.write_table("samples", Role::Data, out_schema, &[out])?;
    writer.write_table(
        "rejects",
        Role::Rejects,
        sample::rejects_schema(),
        &[selection.rejects],
    )?;
    writer.write_json("report.json", Role::Report, &selection.report)?;
    writer.commit()?;
    for warning in &selection.report.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(rows_in = selection.report.rows_in, rows_out = selection.report.rows_out, splits = ?selection.report.splits, "select done");
    Ok(selection.report)
}

/// The outcome of selection on one batch: kept rows in input order with their split and repeat.
struct Selection {
    kept: Vec<usize>,
    split: Vec<Split>,
    repeat: Vec<u32>,
    /// Intermediate answer tokens per kept row, when the data declares `modalities`.
    rationale: Option<Vec<Option<String>>>,
    /// Whether each kept row keeps its demonstration, when a label budget is set.
    labeled: Option<Vec<bool>>,
    rejects: RecordBatch,
    report: SelectReport,
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::Dataset {
        path: path.to_path_buf(),
        message: format!("no column {name:?}"),
    })
}

fn strings<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a StringArray> {
    column(batch, name, path)?
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Dataset {
            path: path.to_path_buf(),
            message: format!("column {name:?} is not Utf8"),
        })
}

/// Selection in its steps: filters, duplicates, groups, splits, label budget, balance, rationales.
fn select(config: &SelectConfig, seed: u64, batch: &RecordBatch, path: &Path) -> Result<Selection> {
    let mut rows = Rows::new(batch, path)?;
    apply_filters(config, &mut rows)?;
    let media = MediaHashes::of(batch, path)?;
    drop_duplicates(config, &mut rows, &media)?;
    let groups = group_rows(config, &rows, &media)?;
    let split = assign_groups(config, seed, &mut rows, &groups)?;
    let labeled = apply_label_budget(config, seed, &mut rows, &split)?;
    // Training rows: train rows that keep their demonstration. Only these are balanced and feed rationales.
    let mut supervised: Vec<Option<Split>> = split.clone();
    if let Some(l) = &labeled {
        for (s, &keep) in supervised.iter_mut().zip(l) {
            if !keep && *s == Some(Split::Train) {
                *s = None;
            }
        }
    }
    let mut repeat = vec![1u32; rows.n()];
    if config.balance.oversample {
        oversample(
            config,
            seed,
            rows.answers,
            &rows.alive,
            &supervised,
            &mut repeat,
        );
    }
    let rationale = derive_rationales(&mut rows, &supervised, &media)?;
    finish(config, rows, &split, &repeat, rationale, labeled)
}

/// Step 5: the label budget. For each question type it names, `label_budget[qtype]` of its train rows (chosen with
/// the seed) keep their demonstration and the rest are marked unlabeled; every other row is labeled. `None` when
/// no budget is set. A named question type the data lacks is an error listing those it has.
fn apply_label_budget(
    config: &SelectConfig,
    seed: u64,
    rows: &mut Rows,
    split: &[Option<Split>],
) -> Result<Option<Vec<bool>>> {
    if config.label_budget.is_empty() {
        return Ok(None);
    }
    let qtypes = strings(rows.batch, sample::QTYPE, rows.path)?;
    let mut train_rows: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for row in (0..rows.n()).filter(|&r| rows.alive[r] && split[r] == Some(Split::Train)) {
        if qtypes.is_valid(row) {
            train_rows.entry(qtypes.value(row)).or_default().push(row);
        }
    }
    let mut labeled = vec![true; rows.n()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1abe_1b0d);
    for (qtype, &budget) in &config.label_budget {
        let Some(members) = train_rows.get(qtype.as_str()) else {
            let known: Vec<&str> = train_rows.keys().copied().collect();
            return Err(Error::Config {
                field: format!("label_budget.{qtype}"),
                message: format!(
                    "no train row of question type {qtype:?} in {}; its train rows have {}",
                    rows.path.display(),
                    known.join(", ")
                ),
            });
        };
        let mut order = members.clone();
        order.shuffle(&mut rng);
        for &row in order.iter().skip(budget) {
            labeled[row] = false;
        }
        let kept = budget.min(order.len());
        rows.report.label_budget.insert(
            qtype.clone(),
            LabelCount {
                labeled: kept,
                unlabeled: order.len() - kept,
            },
        );
    }
    Ok(Some(labeled))
}

/// What the steps of [`select`] share: the columns they read, which rows are still in, the rejects and the report.
struct Rows<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
    ids: &'a StringArray,
    answers: &'a StringArray,
    lines: &'a UInt64Array,
    alive: Vec<bool>,
    rejects: Rejects,
    report: SelectReport,
}

impl<'a> Rows<'a> {
    fn new(batch: &'a RecordBatch, path: &'a Path) -> Result<Self> {
        let lines = column(batch, sample::SOURCE_LINE, path)?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| Error::Dataset {
                path: path.to_path_buf(),
                message: "source_line is not UInt64".into(),
            })?;
        let n = batch.num_rows();
        Ok(Self {
            batch,
            path,
            ids: strings(batch, sample::ID, path)?,
            answers: strings(batch, sample::ANSWER, path)?,
            lines,
            alive: vec![true; n],
            rejects: Rejects::new("select"),
            report: SelectReport {
                rows_in: n,
                rows_out: 0,
                filters: Vec::new(),
                exact_duplicates: 0,
                shared_media_dropped: 0,
                multi_row_groups: 0,
                split_conflicts: BTreeMap::new(),
                rationales: BTreeMap::new(),
                label_budget: BTreeMap::new(),
                splits: BTreeMap::new(),
                answers: BTreeMap::new(),
                train_weight: BTreeMap::new(),
                warnings: Vec::new(),
            },
        })
    }

    fn n(&self) -> usize {
        self.alive.len()
    }

    /// Takes `row` out with a reason code and a message.
    fn reject(&mut self, row: usize, reason: &str, detail: String) {
        self.alive[row] = false;
        self.rejects.push(
            self.lines.value(row),
            Some(self.ids.value(row)),
            reason,
            detail,
        );
    }

    fn id(&self, row: usize) -> &'a str {
        self.ids.value(row)
    }
}

/// Step 1: the filters, in order, each counting the rows it removed. A filter naming a value its column never
/// holds is an error listing what the column holds.
fn apply_filters(config: &SelectConfig, rows: &mut Rows) -> Result<()> {
    for (i, filter) in config.filters.iter().enumerate() {
        check_filter_values(filter, i, rows.batch, rows.path)?;
        let label = filter.label();
        let keep = evaluate(filter, rows.batch, i, rows.path)?;
        let mut removed = 0;
        for (row, keep) in keep.into_iter().enumerate() {
            if rows.alive[row] && !keep {
                removed += 1;
                rows.reject(row, "filtered", format!("removed by filter {label:?}"));
            }
        }
        rows.report.filters.push(FilterCount {
            filter: label,
            removed,
        });
    }
    if !rows.alive.iter().any(|a| *a) {
        return Err(Error::Other(format!(
            "{}: the filters removed every row ({:?})",
            rows.path.display(),
            rows.report.filters
        )));
    }
    Ok(())
}

/// Refuses `in`/`not_in` values that the filter's string column never holds: a typo or another dataset's
/// vocabulary, which would silently keep nothing or remove nothing.
fn check_filter_values(
    filter: &Filter,
    index: usize,
    batch: &RecordBatch,
    path: &Path,
) -> Result<()> {
    let (Some(name), Some((key, wanted))) = (
        filter.column.as_deref(),
        filter
            .one_of
            .as_ref()
            .map(|v| ("in", v))
            .or_else(|| filter.not_in.as_ref().map(|v| ("not_in", v))),
    ) else {
        return Ok(());
    };
    let Some(values) = batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    else {
        return Ok(()); // a missing or non-string column is reported by `evaluate`
    };
    let present: std::collections::BTreeSet<&str> = values.iter().flatten().collect();
    if let Some(missing) = wanted.iter().find(|v| !present.contains(v.as_str())) {
        let shown: Vec<&str> = present.iter().take(20).copied().collect();
        return Err(Error::Config {
            field: format!("filters[{index}].{key}"),
            message: format!(
                "{missing:?} is not a value of column {name:?} in {}; the data has {} value(s): {}{}",
                path.display(),
                present.len(),
                shown.join(", "),
                if present.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        });
    }
    Ok(())
}

/// Content hashes of each row's image and audio (`None` where absent), computed once.
struct MediaHashes {
    image: Vec<Option<blake3::Hash>>,
    audio: Vec<Option<blake3::Hash>>,
}

impl MediaHashes {
    fn of(batch: &RecordBatch, path: &Path) -> Result<Self> {
        let hash = |name: &str| -> Result<Vec<Option<blake3::Hash>>> {
            let bin = column(batch, name, path)?
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| Error::Dataset {
                    path: path.to_path_buf(),
                    message: format!("column {name:?} is not Binary"),
                })?;
            Ok((0..batch.num_rows())
                .map(|r| bin.is_valid(r).then(|| blake3::hash(bin.value(r))))
                .collect())
        };
        Ok(Self {
            image: hash(sample::IMAGE)?,
            audio: hash(sample::AUDIO)?,
        })
    }
}

/// Step 2: exact duplicates (everything but id, split and line equal), then rows that repeat an earlier row's
/// image or clip where the policy is `drop`.
fn drop_duplicates(config: &SelectConfig, rows: &mut Rows, media: &MediaHashes) -> Result<()> {
    if config.dedup.exact {
        let content = content_hashes(
            rows.batch,
            &[(sample::IMAGE, &media.image), (sample::AUDIO, &media.audio)],
        )?;
        let mut first: HashMap<blake3::Hash, usize> = HashMap::new();
        for (row, content) in content.iter().enumerate() {
            if !rows.alive[row] {
                continue;
            }
            match first.get(content) {
                Some(&kept) => {
                    rows.report.exact_duplicates += 1;
                    let detail = format!("same content as {:?}", rows.id(kept));
                    rows.reject(row, "duplicate", detail);
                }
                None => {
                    first.insert(*content, row);
                }
            }
        }
    }
    for (policy, hashes, what) in [
        (config.dedup.same_image, &media.image, "image"),
        (config.dedup.same_audio, &media.audio, "audio"),
    ] {
        if policy != SharedMedia::Drop {
            continue;
        }
        let mut first: HashMap<blake3::Hash, usize> = HashMap::new();
        for (row, hash) in hashes.iter().enumerate() {
            let Some(h) = hash.filter(|_| rows.alive[row]) else {
                continue;
            };
            match first.get(&h) {
                Some(&kept) => {
                    rows.report.shared_media_dropped += 1;
                    let detail = format!("same {what} as {:?}", rows.id(kept));
                    rows.reject(row, "duplicate", detail);
                }
                None => {
                    first.insert(h, row);
                }
            }
        }
    }
    Ok(())
}

/// Step 3: the groups of rows that must share a split (shared image or clip under `group`, equal `group_by`
/// values), each listed by its rows in order, keyed by its first row.
fn group_rows(
    config: &SelectConfig,
    rows: &Rows,
    media: &MediaHashes,
) -> Result<BTreeMap<usize, Vec<usize>>> {
    let mut groups = UnionFind::new(rows.n());
    for (policy, hashes) in [
        (config.dedup.same_image, &media.image),
        (config.dedup.same_audio, &media.audio),
    ] {
        if policy == SharedMedia::Group {
            link_equal(
                &mut groups,
                &rows.alive,
                hashes.iter().map(|h| h.map(|h| *h.as_bytes())),
            );
        }
    }
    if let Some(name) = &config.split.group_by {
        let values = group_keys(rows.batch, name, rows.path)?;
        link_equal(&mut groups, &rows.alive, values.into_iter());
    }
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for row in (0..rows.n()).filter(|r| rows.alive[*r]) {
        members.entry(groups.find(row)).or_default().push(row);
    }
    Ok(members)
}

/// Step 4: splits. A group with declared splits takes the one most of its rows declare (ties go to test, then
/// val: the user's evaluation rows stay where they were put); rows that declared another are rejected or moved
/// (`split.on_conflict`). Groups without a declared split are split by seed, stratified by answer.
fn assign_groups(
    config: &SelectConfig,
    seed: u64,
    rows: &mut Rows,
    groups: &BTreeMap<usize, Vec<usize>>,
) -> Result<Vec<Option<Split>>> {
    let existing = strings(rows.batch, sample::SPLIT, rows.path)?;
    let declared = |row: usize| {
        (config.split.respect_existing && existing.is_valid(row))
            .then(|| Split::parse(existing.value(row)))
            .flatten()
    };
    let mut split: Vec<Option<Split>> = vec![None; rows.n()];
    rows.report.multi_row_groups = groups.values().filter(|m| m.len() > 1).count();
    let mut free_groups = Vec::new();
    for members in groups.values() {
        let Some(chosen) = group_split(members.iter().filter_map(|&r| declared(r))) else {
            free_groups.push(members.clone());
            continue;
        };
        for &row in members {
            match declared(row) {
                Some(own) if own != chosen => {
                    *rows
                        .report
                        .split_conflicts
                        .entry(format!("{} -> {}", own.as_str(), chosen.as_str()))
                        .or_default() += 1;
                    if config.split.on_conflict == OnConflict::Reject {
                        rows.reject(
                            row,
                            "split_conflict",
                            format!(
                                "declared split {} but shares an image, a clip or a group with rows declared {}; \
                                 split.on_conflict = \"regroup\" keeps it in {}",
                                own.as_str(),
                                chosen.as_str(),
                                chosen.as_str()
                            ),
                        );
                    } else {
                        split[row] = Some(chosen);
                    }
                }
                _ => split[row] = Some(chosen),
            }
        }
    }
    if !rows.report.split_conflicts.is_empty() {
        let n: usize = rows.report.split_conflicts.values().sum();
        rows.report.warnings.push(format!(
            "{n} rows declared a split other than rows they share an image, a clip or a group with ({:?}); {}",
            rows.report.split_conflicts,
            match config.split.on_conflict {
                OnConflict::Reject => "they were rejected as split_conflict; split.on_conflict = \"regroup\" keeps them, moved into their group's split",
                OnConflict::Regroup => "they were moved into their group's split",
            }
        ));
    }
    assign_splits(config, seed, rows.answers, &free_groups, &mut split);
    Ok(split)
}

/// The split a group of declared splits takes: the most declared, ties broken towards test, then val.
fn group_split(declared: impl Iterator<Item = Split>) -> Option<Split> {
    let mut counts = [0usize; 3];
    for s in declared {
        counts[Split::ALL.iter().position(|x| *x == s).unwrap_or(0)] += 1;
    }
    (0..3)
        .filter(|&i| counts[i] > 0)
        .max_by_key(|&i| (counts[i], i))
        .map(|i| Split::ALL[i])
}

/// Step 6: intermediate answer tokens for labeled train rows whose `modalities` declare two media (`split` here has
/// unlabeled train rows as `None`: their answers are hidden from training, so they neither give nor get one): the
/// answers of the
/// train rows about the same image that need the image alone, then of those about the same clip that need the
/// audio alone. sft trains on "rationale, separator, answer", so the model learns to read each modality before
/// it composes; only train labels are used, so nothing leaks. `None` when the data declares no `modalities`.
fn derive_rationales(
    rows: &mut Rows,
    split: &[Option<Split>],
    media: &MediaHashes,
) -> Result<Option<Vec<Option<String>>>> {
    let Some(declared) = rows.batch.column_by_name(sample::MODALITIES) else {
        return Ok(None);
    };
    let declared = declared
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Dataset {
            path: rows.path.to_path_buf(),
            message: format!("column {:?} is not Utf8", sample::MODALITIES),
        })?;
    let qtypes = strings(rows.batch, sample::QTYPE, rows.path)?;
    // The media a row declares it needs (tabular features do not count: they are no media to read).
    let needs = |row: usize| -> Vec<&str> {
        let mut m: Vec<&str> = if declared.is_valid(row) {
            declared
                .value(row)
                .split([' ', '|', ','])
                .filter(|w| matches!(*w, "image" | "audio"))
                .collect()
        } else {
            Vec::new()
        };
        m.sort_unstable();
        m.dedup();
        m
    };
    let train = |row: usize| rows.alive[row] && split[row] == Some(Split::Train);
    // Single-modality train answers per media hash, ordered by question type.
    let mut known: [HashMap<blake3::Hash, BTreeMap<String, String>>; 2] = Default::default();
    for row in (0..rows.n()).filter(|&r| train(r)) {
        for (slot, (name, hashes)) in [("image", &media.image), ("audio", &media.audio)]
            .iter()
            .enumerate()
        {
            if let (Some(h), [only]) = (hashes[row], needs(row).as_slice())
                && only == name
            {
                known[slot]
                    .entry(h)
                    .or_default()
                    .entry(qtypes.value(row).to_owned())
                    .or_insert_with(|| rows.answers.value(row).to_owned());
            }
        }
    }
    let mut out = vec![None; rows.n()];
    for row in (0..rows.n()).filter(|&r| train(r)) {
        if !(needs(row).contains(&"image") && needs(row).contains(&"audio")) {
            continue;
        }
        let parts: Vec<&str> = [&media.image, &media.audio]
            .iter()
            .zip(&known)
            .filter_map(|(hashes, table)| hashes[row].and_then(|h| table.get(&h)))
            .flat_map(|answers| answers.values().map(String::as_str))
            .collect();
        if !parts.is_empty() {
            *rows
                .report
                .rationales
                .entry(qtypes.value(row).to_owned())
                .or_default() += 1;
            out[row] = Some(parts.join(" "));
        }
    }
    Ok(Some(out))
}

/// Step 7: the kept rows with their split, the per-split and per-answer counts, and the warnings.
fn finish(
    config: &SelectConfig,
    mut rows: Rows,
    split: &[Option<Split>],
    repeat: &[u32],
    rationale: Option<Vec<Option<String>>>,
    labeled: Option<Vec<bool>>,
) -> Result<Selection> {
    let kept: Vec<usize> = (0..rows.n()).filter(|r| rows.alive[*r]).collect();
    let mut out_split = Vec::with_capacity(kept.len());
    let report = &mut rows.report;
    for &row in &kept {
        let s = split[row].ok_or_else(|| {
            Error::Other(format!("row {} was given no split", rows.ids.value(row)))
        })?;
        out_split.push(s);
        let answer = rows.answers.value(row);
        *report.splits.entry(s.as_str().to_owned()).or_default() += 1;
        *report
            .answers
            .entry(answer.to_owned())
            .or_default()
            .entry(s.as_str().to_owned())
            .or_default() += 1;
        if s == Split::Train {
            *report.train_weight.entry(answer.to_owned()).or_default() += u64::from(repeat[row]);
        }
    }
    report.rows_out = kept.len();
    if report.splits.get("train").copied().unwrap_or(0) == 0 {
        return Err(Error::Other(format!(
            "{}: the train split is empty after selection ({} rows kept); statistics need train rows",
            rows.path.display(),
            kept.len()
        )));
    }
    warn_small_splits_and_classes(config, report, kept.len());
    let repeat_out = kept.iter().map(|r| repeat[*r]).collect();
    let rationale = rationale.map(|r| kept.iter().map(|&row| r[row].clone()).collect());
    let labeled = labeled.map(|l| kept.iter().map(|&row| l[row]).collect());
    Ok(Selection {
        kept,
        split: out_split,
        repeat: repeat_out,
        rationale,
        labeled,
        rejects: rows.rejects.finish()?,
        report: rows.report,
    })
}

/// Warnings for empty val/test splits and answers too rare to stratify.
fn warn_small_splits_and_classes(config: &SelectConfig, report: &mut SelectReport, kept: usize) {
    for (s, fraction) in [
        (Split::Val, config.split.val),
        (Split::Test, config.split.test),
    ] {
        if fraction > 0.0 && report.splits.get(s.as_str()).copied().unwrap_or(0) == 0 {
            report.warnings.push(format!(
                "the {} split is empty: too few rows ({kept}) for the fractions",
                s.as_str(),
            ));
        }
    }
    let small: Vec<String> = report
        .answers
        .iter()
        .filter(|(_, per)| per.values().sum::<usize>() < config.split.min_class_rows)
        .map(|(a, per)| format!("{a:?} ({})", per.values().sum::<usize>()))
        .collect();
    if !small.is_empty() {
        let shown: Vec<_> = small.iter().take(10).cloned().collect();
        report.warnings.push(format!(
            "{} answers have fewer than {} rows, so their split proportions are approximate: {}{}",
            small.len(),
            config.split.min_class_rows,
            shown.join(", "),
            if small.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        ));
    }
}

/// Whether each row passes filter number `index`.
fn evaluate(filter: &Filter, batch: &RecordBatch, index: usize, path: &Path) -> Result<Vec<bool>> {
    let n = batch.num_rows();
    if let Some(modalities) = &filter.present {
        let mut keep = vec![true; n];
        for m in modalities {
            let col = column(batch, m.column(), path)?;
            for (row, k) in keep.iter_mut().enumerate() {
                *k &= col.is_valid(row);
            }
        }
        return Ok(keep);
    }
    let name = filter.column.as_deref().unwrap_or_default();
    let col = batch.column_by_name(name).ok_or_else(|| Error::Config {
        field: format!("filters[{index}].column"),
        message: format!(
            "no column {name:?} in {}; columns are {}",
            path.display(),
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    if let Some(want) = filter.not_null {
        return Ok((0..n).map(|r| col.is_valid(r) == want).collect());
    }
    let wrong_type = |expected: &str| Error::Config {
        field: format!("filters[{index}]"),
        message: format!(
            "column {name:?} is {:?}; this predicate needs a {expected} column",
            col.data_type()
        ),
    };
    if filter.min.is_some() || filter.max.is_some() {
        let values = col
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| wrong_type("numeric"))?;
        let (lo, hi) = (
            filter.min.unwrap_or(f64::NEG_INFINITY),
            filter.max.unwrap_or(f64::INFINITY),
        );
        return Ok((0..n)
            .map(|r| values.is_valid(r) && (lo..=hi).contains(&values.value(r)))
            .collect());
    }
    let values = col
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| wrong_type("string"))?;
    let keep = (0..n).map(|r| {
        let v = values.is_valid(r).then(|| values.value(r));
        if let Some(set) = &filter.one_of {
            v.is_some_and(|v| set.iter().any(|s| s == v))
        } else if let Some(set) = &filter.not_in {
            v.is_none_or(|v| !set.iter().any(|s| s == v))
        } else if let Some(text) = &filter.contains {
            v.is_some_and(|v| v.contains(text.as_str()))
        } else {
            true
        }
    });
    Ok(keep.collect())
}

/// A hash of everything in a row except its id, split and source line. Columns listed in `media` contribute
/// their precomputed content hashes instead of their bytes, so media are read and hashed once.
fn content_hashes(
    batch: &RecordBatch,
    media: &[(&str, &[Option<blake3::Hash>])],
) -> Result<Vec<blake3::Hash>> {
    let mut hashers: Vec<blake3::Hasher> = (0..batch.num_rows())
        .map(|_| blake3::Hasher::new())
        .collect();
    let schema = batch.schema();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let name = field.name().as_str();
        if [sample::ID, sample::SPLIT, sample::SOURCE_LINE].contains(&name) {
            continue;
        }
        let precomputed = media.iter().find(|(m, _)| *m == name).map(|(_, h)| *h);
        let any = col.as_any();
        for (row, h) in hashers.iter_mut().enumerate() {
            h.update(name.as_bytes());
            if col.is_null(row) {
                h.update(&[0]);
                continue;
            }
            h.update(&[1]);
            let mut feed = |bytes: &[u8]| {
                h.update(&(bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            };
            if let Some(hashes) = precomputed {
                feed(hashes[row].as_ref().map_or(&[][..], |x| x.as_bytes()));
                continue;
            }
            if let Some(a) = any.downcast_ref::<StringArray>() {
                feed(a.value(row).as_bytes());
            } else if let Some(a) = any.downcast_ref::<BinaryArray>() {
                feed(a.value(row));
            } else if let Some(a) = any.downcast_ref::<Float64Array>() {
                feed(&a.value(row).to_bits().to_le_bytes());
            } else if let Some(a) = any.downcast_ref::<UInt64Array>() {
                feed(&a.value(row).to_le_bytes());
            } else if let Some(a) = any.downcast_ref::<UInt32Array>() {
                feed(&a.value(row).to_le_bytes());
            } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
                feed(&[u8::from(a.value(row))]);
            } else {
                return Err(Error::Other(format!(
                    "column {name:?}: cannot hash type {:?}",
                    col.data_type()
                )));
            }
        }
    }
    Ok(hashers.iter().map(blake3::Hasher::finalize).collect())
}

/// Group keys of a `group_by` column (string or numeric; nulls form no group).
fn group_keys(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<[u8; 32]>>> {
    let col = batch.column_by_name(name).ok_or_else(|| Error::Config {
        field: "split.group_by".into(),
        message: format!("no column {name:?} in {}", path.display()),
    })?;
    let key = |bytes: &[u8]| Some(*blake3::hash(bytes).as_bytes());
    if let Some(s) = col.as_any().downcast_ref::<StringArray>() {
        return Ok((0..s.len())
            .map(|r| {
                if s.is_valid(r) {
                    key(s.value(r).as_bytes())
                } else {
                    None
                }
            })
            .collect());
    }
    if let Some(f) = col.as_any().downcast_ref::<Float64Array>() {
        return Ok((0..f.len())
            .map(|r| {
                if f.is_valid(r) {
                    key(&f.value(r).to_bits().to_le_bytes())
                } else {
                    None
                }
            })
            .collect());
    }
    Err(Error::Config {
        field: "split.group_by".into(),
        message: format!(
            "column {name:?} is {:?}, not a string or number",
            col.data_type()
        ),
    })
}

fn link_equal<K: std::hash::Hash + Eq>(
    groups: &mut UnionFind,
    alive: &[bool],
    keys: impl Iterator<Item = Option<K>>,
) {
    let mut first: HashMap<K, usize> = HashMap::new();
    for (row, key) in keys.enumerate() {
        let Some(key) = key else { continue };
        if !alive[row] {
            continue;
        }
        match first.get(&key) {
            Some(&other) => groups.union(other, row),
            None => {
                first.insert(key, row);
            }
        }
    }
}

/// Assigns each free group to a split: groups are stratified by their majority answer and shuffled with the
/// seed; within a stratum each group goes to the split furthest below its target share.
fn assign_splits(
    config: &SelectConfig,
    seed: u64,
    answers: &StringArray,
    free_groups: &[Vec<usize>],
    split: &mut [Option<Split>],
) {
    let fractions = config.fractions();
    let mut strata: BTreeMap<String, Vec<&Vec<usize>>> = BTreeMap::new();
    for rows in free_groups {
        let key = if config.split.stratify {
            majority_answer(answers, rows)
        } else {
            String::new()
        };
        strata.entry(key).or_default().push(rows);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for groups in strata.values_mut() {
        // Groups arrive in first-row order (a group's root is its smallest row), so the shuffle depends on the
        // seed and the data only.
        groups.shuffle(&mut rng);
        let mut assigned = [0usize; 3];
        for rows in groups.iter() {
            let total = assigned.iter().sum::<usize>() + rows.len();
            let deficit = |i: usize| fractions[i] * total as f64 - assigned[i] as f64;
            let best = (0..3).filter(|i| fractions[*i] > 0.0).fold(0, |best, i| {
                if deficit(i) > deficit(best) + 1e-12 {
                    i
                } else {
                    best
                }
            });
            assigned[best] += rows.len();
            for &row in rows.iter() {
                split[row] = Some(Split::ALL[best]);
            }
        }
    }
}

fn majority_answer(answers: &StringArray, rows: &[usize]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &r in rows {
        *counts.entry(answers.value(r)).or_default() += 1;
    }
    counts
        .iter()
        .max_by_key(|(a, c)| (**c, std::cmp::Reverse(**a)))
        .map(|(a, _)| (*a).to_owned())
        .unwrap_or_default()
}

/// Gives train rows of rare answers a `repeat` above 1 so each answer's train weight approaches the largest
/// answer's, at most `max_repeat` per row; the rows that get one extra repeat are chosen with the seed.
fn oversample(
    config: &SelectConfig,
    seed: u64,
    answers: &StringArray,
    alive: &[bool],
    split: &[Option<Split>],
    repeat: &mut [u32],
) {
    let mut by_answer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for row in (0..alive.len()).filter(|r| alive[*r] && split[*r] == Some(Split::Train)) {
        by_answer.entry(answers.value(row)).or_default().push(row);
    }
    let largest = by_answer.values().map(Vec::len).max().unwrap_or(0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0ba1_a7ce);
    for rows in by_answer.values() {
        let n = rows.len();
        let target = largest.min(n * config.balance.max_repeat as usize);
        let base = (target / n) as u32;
        let extra = target % n;
        let mut order = rows.clone();
        order.shuffle(&mut rng);
        for (i, &row) in order.iter().enumerate() {
            repeat[row] = base + u32::from(i < extra);
        }
    }
}

fn output_batch(batch: &RecordBatch, selection: &Selection) -> Result<(SchemaRef, RecordBatch)> {
    let indices = UInt32Array::from(selection.kept.iter().map(|&r| r as u32).collect::<Vec<_>>());
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = Vec::with_capacity(fields.len() + 1);
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        if field.name() == sample::SPLIT {
            let mut b = StringBuilder::new();
            for s in &selection.split {
                b.append_value(s.as_str());
            }
            columns.push(Arc::new(b.finish()) as ArrayRef);
        } else {
            columns.push(arrow::compute::take(col.as_ref(), &indices, None)?);
        }
    }
    fields.push(Field::new(REPEAT, DataType::UInt32, false));
    columns.push(Arc::new(UInt32Array::from(selection.repeat.clone())));
    if let Some(rationale) = &selection.rationale {
        fields.push(Field::new(sample::RATIONALE, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(rationale.clone())));
    }
    if let Some(labeled) = &selection.labeled {
        fields.push(Field::new(sample::LABELED, DataType::Boolean, false));
        columns.push(Arc::new(BooleanArray::from(labeled.clone())));
    }
    let out_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    Ok((
        out_schema.clone(),
        RecordBatch::try_new(out_schema, columns)?,
    ))
}

/// Disjoint sets over row indices, for rows that must share a split.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        // The smaller index is the root, so roots are stable whatever the union order.
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi] = lo;
        }
    }
}
