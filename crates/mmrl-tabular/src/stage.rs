//! The tabular stage: select's `samples` artifact in; `tabular.parquet` (model-ready features keyed by id),
//! `state.json`, `quality.parquet`, `rejects.parquet` and `report.json` out.
//!
//! Features are the sample columns tagged `mmrl.feature`; only `id`, `split`, `source_line` and those columns are
//! read (never the media). Statistics are fit on the `train` rows only and applied unchanged to every split.

use std::collections::BTreeMap;
use std::path::Path;

use mmrl_artifact::sample::{self, FeatureKind, Rejects, Split};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::pl;
use crate::recipe::{CategoricalRules, ColumnOverride, NumericRules, Recipe, validate_rules};
use crate::state::{ColumnState, TabularState};
use crate::transform::{DROP_COLUMN, DROP_VALUE};
use crate::{Error, QualityReport, Result, dropped, fit, quality, transform};

/// The stage name, in manifests and rejects.
pub const STAGE: &str = "tabular";

/// Parameters of the tabular stage (`[stages.tabular.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TabularConfig {
    /// Defaults for numeric features (`[stages.tabular.params.numeric]`).
    pub numeric: NumericRules,
    /// Defaults for categorical features (`[stages.tabular.params.categorical]`).
    pub categorical: CategoricalRules,
    /// Per-column overrides (`[stages.tabular.params.columns.NAME]`); each name must be a feature.
    pub columns: BTreeMap<String, ColumnOverride>,
    /// The stage fails, writing nothing, when outlier drop rules remove more than this fraction of all rows.
    pub max_drop_fraction: f64,
}

impl Default for TabularConfig {
    fn default() -> Self {
        Self {
            numeric: NumericRules::default(),
            categorical: CategoricalRules::default(),
            columns: BTreeMap::new(),
            max_drop_fraction: 0.05,
        }
    }
}

impl TabularConfig {
    /// Checks every field that can be checked without data, before any work is done.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.max_drop_fraction) {
            return Err(Error::Config {
                field: "max_drop_fraction".into(),
                message: format!("{} is not in [0, 1]", self.max_drop_fraction),
            });
        }
        validate_rules(&self.numeric, &self.categorical, &self.columns)
    }

    /// The recipe for a table with these features; [`Recipe::validate`] reports override names that are not
    /// features.
    pub fn recipe(&self, features: Vec<(String, FeatureKind)>) -> Recipe {
        Recipe {
            features,
            numeric: self.numeric.clone(),
            categorical: self.categorical.clone(),
            columns: self.columns.clone(),
            // The model reads Float32 flags: the stage's layout is fixed.
            flags: crate::recipe::FlagType::Float32,
        }
    }
}

/// Rows of one split before and after the drop rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SplitRows {
    /// Rows in the input.
    pub input: u64,
    /// Rows written.
    pub output: u64,
}

/// What the stage did, also written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TabularSummary {
    /// Rows per split.
    pub splits: BTreeMap<String, SplitRows>,
    /// Rows dropped by outlier drop rules (listed in `rejects.parquet`).
    pub dropped: u64,
    /// The features and the kind they were cleaned as.
    pub features: Vec<(String, FeatureKind)>,
    /// The model-ready columns after `id` and `split`, with their Arrow type.
    pub output_columns: Vec<(String, String)>,
    /// Fallbacks taken and other things to look at.
    pub warnings: Vec<String>,
    /// The per-column quality report (also `quality.parquet`).
    pub quality: QualityReport,
}

/// Runs the stage: reads select's artifact at `samples`, writes the artifact at `output`.
pub fn run(config: &TabularConfig, samples: &Path, output: &Path) -> Result<TabularSummary> {
    config.validate()?;
    let input = read_samples(config, samples)?;
    let state = fit_train(&input)?;
    let (cleaned, drops, report) = apply_state(&input.df, &state)?;
    let total = input.df.height();
    let rejects = check_drops(config, &drops, &state, total)?;
    let mut warnings = state_warnings(&state);
    let splits = split_rows(&input.split_counts, &cleaned, &mut warnings)?;
    let table = cleaned
        .drop(sample::SOURCE_LINE)
        .map_err(pl("dropping source_line"))?;
    let batch = crate::io::to_record_batch(&table, &[])?;
    let summary = TabularSummary {
        splits,
        dropped: rejects.len() as u64,
        features: feature_kinds(&state),
        output_columns: batch
            .schema()
            .fields()
            .iter()
            .skip(2)
            .map(|f| (f.name().clone(), format!("{:?}", f.data_type())))
            .collect(),
        warnings,
        quality: report,
    };
    write_artifact(
        config,
        output,
        &input.artifact,
        &state,
        batch,
        &summary,
        rejects,
    )?;
    tracing::info!(
        rows = total,
        dropped = summary.dropped,
        columns = summary.output_columns.len(),
        "tabular done"
    );
    Ok(summary)
}

/// The checked input of the stage: select's artifact, its samples table and the recipe for its features.
struct Input {
    /// Select's artifact.
    artifact: Artifact,
    /// Its `samples.parquet`.
    table_path: std::path::PathBuf,
    /// The recipe for the table's features.
    recipe: Recipe,
    /// `id`, `split`, `source_line` and the feature columns of every row.
    df: DataFrame,
    /// Rows per split.
    split_counts: BTreeMap<String, u64>,
}

/// Opens select's artifact, checks its schema and splits, and reads only the columns the stage needs.
fn read_samples(config: &TabularConfig, samples: &Path) -> Result<Input> {
    let artifact = Artifact::open(samples)?;
    let schema = artifact.table_schema("samples")?;
    let table_path = artifact.file("samples.parquet")?;
    sample::check_sample_schema(&schema, &table_path)?;
    let features = sample::features(&schema);
    let recipe = config.recipe(features.clone());
    recipe.validate()?;
    if features.is_empty() {
        tracing::warn!(input = %table_path.display(), "no tabular features: tabular.parquet will hold only id and split");
    }

    let mut names: Vec<&str> = vec![sample::ID, sample::SPLIT, sample::SOURCE_LINE];
    names.extend(features.iter().map(|(n, _)| n.as_str()));
    let df = crate::io::read_parquet(&table_path, Some(&names))?;
    let split_counts = check_splits(&df, &table_path)?;
    Ok(Input {
        artifact,
        table_path,
        recipe,
        df,
        split_counts,
    })
}

/// Fits the state on the train rows only; an empty train split names the input file.
fn fit_train(input: &Input) -> Result<TabularState> {
    let train = input
        .df
        .clone()
        .lazy()
        .filter(col(sample::SPLIT).eq(lit(Split::Train.as_str())));
    fit(train, &input.recipe).map_err(|e| match e {
        Error::EmptyTrain(m) => Error::EmptyTrain(format!("{}: {m}", input.table_path.display())),
        other => other,
    })
}

/// Applies the state to every split: the model-ready rows, the rows the drop rules remove, and the quality report.
fn apply_state(
    df: &DataFrame,
    state: &TabularState,
) -> Result<(DataFrame, DataFrame, QualityReport)> {
    let cleaned = transform(df.clone().lazy(), state)?
        .collect()
        .map_err(pl("transforming the samples"))?;
    let drops = dropped(df.clone().lazy(), state)?
        .collect()
        .map_err(pl("collecting dropped rows"))?;
    let report = quality(df.clone().lazy(), state, Some(sample::SPLIT))?;
    Ok((cleaned, drops, report))
}

/// The rejects of the dropped rows; fails, writing nothing, when they are more than `max_drop_fraction` of the
/// `total` rows.
fn check_drops(
    config: &TabularConfig,
    drops: &DataFrame,
    state: &TabularState,
    total: usize,
) -> Result<Rejects> {
    let rejects = rejects(drops, state)?;
    if rejects.len() as f64 > config.max_drop_fraction * total as f64 {
        return Err(Error::TooManyDropped {
            dropped: rejects.len(),
            total,
            max_fraction: config.max_drop_fraction,
            first: first_drops(drops, 3)?,
        });
    }
    Ok(rejects)
}

/// The fallbacks fit took, each prefixed with its column.
fn state_warnings(state: &TabularState) -> Vec<String> {
    state
        .columns
        .iter()
        .flat_map(|c| {
            c.warnings()
                .iter()
                .map(move |w| format!("{}: {w}", c.name()))
        })
        .collect()
}

/// Rows in and out of each split; warns (and adds to `warnings`) for a split left without rows.
fn split_rows(
    split_counts: &BTreeMap<String, u64>,
    cleaned: &DataFrame,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, SplitRows>> {
    let out_counts = count_by_split(cleaned)?;
    let mut splits = BTreeMap::new();
    for split in Split::ALL.map(Split::as_str) {
        let rows = SplitRows {
            input: split_counts.get(split).copied().unwrap_or(0),
            output: out_counts.get(split).copied().unwrap_or(0),
        };
        if rows.output == 0 {
            let why = if rows.input == 0 {
                "has no rows"
            } else {
                "lost all its rows to the outlier drop rules"
            };
            let message = format!("split {split} {why}: nothing to evaluate on it");
            tracing::warn!("{message}");
            warnings.push(message);
        }
        splits.insert(split.to_owned(), rows);
    }
    Ok(splits)
}

/// The features and the kind each was cleaned as.
fn feature_kinds(state: &TabularState) -> Vec<(String, FeatureKind)> {
    state
        .columns
        .iter()
        .map(|c| {
            let kind = match c {
                ColumnState::Numeric(_) => FeatureKind::Numeric,
                ColumnState::Categorical(_) => FeatureKind::Categorical,
            };
            (c.name().to_owned(), kind)
        })
        .collect()
}

/// Writes the artifact: `tabular.parquet`, `state.json`, `quality.parquet`, `rejects.parquet`, `report.json`.
fn write_artifact(
    config: &TabularConfig,
    output: &Path,
    samples: &Artifact,
    state: &TabularState,
    batch: arrow::array::RecordBatch,
    summary: &TabularSummary,
    rejects: Rejects,
) -> Result<()> {
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::State(format!("serializing config: {e}")))?,
        seed: None,
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("samples", samples);
    writer.fit_splits(&[Split::Train.as_str()]);
    writer.write_table("tabular", Role::Data, batch.schema(), &[batch])?;
    writer.write_bytes("state.json", Role::State, state.to_json()?.as_bytes())?;
    let quality_batch = summary.quality.to_record_batch()?;
    writer.write_table(
        "quality",
        Role::Report,
        QualityReport::schema(),
        &[quality_batch],
    )?;
    writer.write_rejects(rejects)?;
    writer.write_json("report.json", Role::Report, summary)?;
    writer.commit()?;
    Ok(())
}

/// Every row must have a split named train, val or test (select assigns them). Returns rows per split.
fn check_splits(df: &DataFrame, path: &Path) -> Result<BTreeMap<String, u64>> {
    let split = df
        .column(sample::SPLIT)
        .and_then(|c| c.str().cloned())
        .map_err(pl("reading split"))?;
    let ids = df
        .column(sample::ID)
        .and_then(|c| c.str().cloned())
        .map_err(pl("reading id"))?;
    let mut counts = BTreeMap::new();
    for (s, id) in split.iter().zip(ids.iter()) {
        match s.and_then(Split::parse) {
            Some(s) => *counts.entry(s.as_str().to_owned()).or_insert(0) += 1,
            None => {
                return Err(Error::Data(format!(
                    "{}: sample {:?} has split {s:?}; tabular needs train, val or test on every row (run select first)",
                    path.display(),
                    id.unwrap_or_default()
                )));
            }
        }
    }
    Ok(counts)
}

fn count_by_split(df: &DataFrame) -> Result<BTreeMap<String, u64>> {
    let split = df
        .column(sample::SPLIT)
        .and_then(|c| c.str().cloned())
        .map_err(pl("reading split"))?;
    let mut counts = BTreeMap::new();
    for s in split.iter().flatten() {
        *counts.entry(s.to_owned()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// The rejects table of the dropped rows: reason `outlier`, the column, value and bounds in the detail.
fn rejects(drops: &DataFrame, state: &TabularState) -> Result<Rejects> {
    let mut rejects = Rejects::new(STAGE);
    let lines = drops
        .column(sample::SOURCE_LINE)
        .and_then(|c| c.u64().cloned())
        .map_err(pl("reading source_line"))?;
    let (ids, columns, values) = drop_columns(drops)?;
    for (((line, id), column), value) in lines
        .iter()
        .zip(ids.iter())
        .zip(columns.iter())
        .zip(values.iter())
    {
        let column = column.unwrap_or_default();
        let bounds = state.columns.iter().find_map(|c| match c {
            ColumnState::Numeric(n) if n.name == column => n.outliers.clone(),
            _ => None,
        });
        let detail = match (bounds, value) {
            (Some(b), Some(v)) => format!(
                "column {column:?} = {v} is outside [{}, {}] ({:?} rule, k = {}, fit on train)",
                b.lower, b.upper, b.rule, b.k
            ),
            _ => format!("column {column:?} broke its outlier drop rule"),
        };
        rejects.push(line.unwrap_or(0), id, "outlier", detail);
    }
    Ok(rejects)
}

/// The id, column and value of each dropped row.
fn drop_columns(drops: &DataFrame) -> Result<(StringChunked, StringChunked, Float64Chunked)> {
    let ids = drops
        .column(sample::ID)
        .and_then(|c| c.str().cloned())
        .map_err(pl("reading id"))?;
    let columns = drops
        .column(DROP_COLUMN)
        .and_then(|c| c.str().cloned())
        .map_err(pl("reading drop column"))?;
    let values = drops
        .column(DROP_VALUE)
        .and_then(|c| c.f64().cloned())
        .map_err(pl("reading drop value"))?;
    Ok((ids, columns, values))
}

fn first_drops(drops: &DataFrame, n: usize) -> Result<String> {
    let (ids, columns, values) = drop_columns(drops)?;
    Ok(ids
        .iter()
        .zip(columns.iter())
        .zip(values.iter())
        .take(n)
        .map(|((id, c), v)| {
            format!(
                "{} {} = {}",
                id.unwrap_or_default(),
                c.unwrap_or_default(),
                v.unwrap_or(f64::NAN)
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}
