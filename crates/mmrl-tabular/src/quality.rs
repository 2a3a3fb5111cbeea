//! The per-column data-quality report: what cleaning found and did, per split, computed with the same
//! expressions as [`transform`](crate::transform).

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use mmrl_artifact::sample::FeatureKind;
use polars::prelude::*;

use crate::Result;
use crate::error::pl;
use crate::exprs;
use crate::recipe::OutlierAction;
use crate::state::{CategoricalState, ColumnState, NumericState, TabularState};
use crate::transform::check_input;

/// A distribution summary of a numeric column (missing values ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Mean.
    pub mean: Option<f64>,
    /// Population standard deviation.
    pub std: Option<f64>,
    /// Minimum.
    pub min: Option<f64>,
    /// Median.
    pub median: Option<f64>,
    /// Maximum.
    pub max: Option<f64>,
}

/// What cleaning found and did in one column of one split.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualityRow {
    /// The feature.
    pub column: String,
    /// Numeric or categorical (as cleaned).
    pub kind: FeatureKind,
    /// The split (`all` when the frame has no split column).
    pub split: String,
    /// Rows of this split in the input.
    pub rows: u64,
    /// Null cells in the input.
    pub nulls_before: u64,
    /// Cells holding a sentinel (they became missing).
    pub sentinels: u64,
    /// NaN or infinite cells (they became missing).
    pub non_finite: u64,
    /// Values outside the fitted outlier bounds.
    pub outliers: u64,
    /// Outliers clipped to the bounds.
    pub clipped: u64,
    /// Rows dropped by this column's drop rule (a row can count under several columns).
    pub dropped: u64,
    /// Missing values filled, in rows that were kept.
    pub imputed: u64,
    /// Present categorical values not in the train vocabulary, in rows that were kept.
    pub unseen: u64,
    /// Values still missing in the output, in rows that were kept (categorical missing code; 0 for numeric).
    pub nulls_after: u64,
    /// NaN or infinite output values (always 0: anything else is a bug).
    pub non_finite_after: u64,
    /// Distinct present categorical values (categorical only).
    pub distinct: Option<u64>,
    /// Numeric values after sentinels became missing, before outliers and imputation.
    pub before: Option<Summary>,
    /// The model-ready numeric values of the kept rows.
    pub after: Option<Summary>,
    /// The fallbacks fit took for this column, `; `-separated.
    pub warnings: String,
}

/// The quality report: one row per feature and split, features in output order, splits train, val, test, then
/// any other in byte order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualityReport {
    /// The rows.
    pub rows: Vec<QualityRow>,
}

/// Computes the quality report of `frame` under `state`, per value of the column `split` when given (the whole
/// frame as split `all` otherwise).
pub fn quality(
    frame: LazyFrame,
    state: &TabularState,
    split: Option<&str>,
) -> Result<QualityReport> {
    let mut frame = frame;
    check_input(&mut frame, state)?;
    let aggs = quality_aggs(state);
    let df = aggregate_per_split(frame, aggs, split)?;
    let (splits, order) = split_order(&df)?;
    let stats = QualityStats { df: &df };
    let mut rows = Vec::new();
    for (i, column) in state.columns.iter().enumerate() {
        for &r in &order {
            rows.push(stats.row(column, i, &splits[r], r)?);
        }
    }
    Ok(QualityReport { rows })
}

/// The name of split column the quality statistics are grouped by.
const SPLIT: &str = "__split";

/// Counts `true` values.
fn count(e: Expr) -> Expr {
    e.cast(DataType::UInt64).sum()
}

/// Every statistic of the report as one aggregation each: `rows`, then `{i}|{stat}` per column `i`.
fn quality_aggs(state: &TabularState) -> Vec<Expr> {
    let numeric: Vec<&NumericState> = state
        .columns
        .iter()
        .filter_map(|c| match c {
            ColumnState::Numeric(n) => Some(n),
            ColumnState::Categorical(_) => None,
        })
        .collect();
    let keep = exprs::keep_mask(&numeric).unwrap_or(lit(true));
    let mut aggs = vec![len().cast(DataType::UInt64).alias("rows")];
    for (i, column) in state.columns.iter().enumerate() {
        match column {
            ColumnState::Numeric(s) => push_numeric_aggs(&mut aggs, i, s, &keep),
            ColumnState::Categorical(c) => push_categorical_aggs(&mut aggs, i, c, &keep),
        }
    }
    aggs
}

/// The statistics of numeric column `i`; `keep` is true for the rows the drop rules keep.
fn push_numeric_aggs(aggs: &mut Vec<Expr>, i: usize, s: &NumericState, keep: &Expr) {
    let k = |stat: &str| format!("{i}|{stat}");
    let kept = |e: Expr| e.and(keep.clone());
    let x = || exprs::numeric_clean(&s.name, &s.sentinels);
    let out = || exprs::numeric_output(s).cast(DataType::Float64);
    aggs.push(count(exprs::numeric_raw(&s.name).is_null()).alias(k("nulls_before")));
    aggs.push(
        count(exprs::is_sentinel(&s.name, &s.sentinels).unwrap_or(lit(false)))
            .alias(k("sentinels")),
    );
    aggs.push(count(exprs::is_non_finite(&s.name)).alias(k("non_finite")));
    aggs.push(count(exprs::outlier_flag(s)).alias(k("outliers")));
    aggs.push(count(kept(x().is_null())).alias(k("imputed")));
    aggs.push(count(kept(out().is_null())).alias(k("nulls_after")));
    aggs.push(count(kept(out().is_finite().not())).alias(k("non_finite_after")));
    push_summary(aggs, x(), &k("before"));
    push_summary(aggs, out().filter(keep.clone()), &k("after"));
}

/// The statistics of categorical column `i`; `keep` is true for the rows the drop rules keep.
fn push_categorical_aggs(aggs: &mut Vec<Expr>, i: usize, c: &CategoricalState, keep: &Expr) {
    let k = |stat: &str| format!("{i}|{stat}");
    let kept = |e: Expr| e.and(keep.clone());
    aggs.push(count(exprs::categorical_raw(c).is_null()).alias(k("nulls_before")));
    aggs.push(count(exprs::categorical_is_sentinel(c).unwrap_or(lit(false))).alias(k("sentinels")));
    let missing = kept(exprs::categorical_clean(c).is_null());
    aggs.push(
        count(if c.fill.is_some() {
            missing
        } else {
            lit(false)
        })
        .alias(k("imputed")),
    );
    aggs.push(count(kept(exprs::categorical_is_unseen(c))).alias(k("unseen")));
    aggs.push(count(kept(exprs::categorical_imputed(c).is_null())).alias(k("nulls_after")));
    aggs.push(
        exprs::categorical_clean(c)
            .drop_nulls()
            .n_unique()
            .cast(DataType::UInt64)
            .alias(k("distinct")),
    );
}

/// Evaluates `aggs` per value of the column `split` (nulls as `null`), or over the whole frame as split `all`:
/// one row per split, its name in [`SPLIT`].
fn aggregate_per_split(
    frame: LazyFrame,
    aggs: Vec<Expr>,
    split: Option<&str>,
) -> Result<DataFrame> {
    let grouped = match split {
        Some(name) => frame
            .group_by([col(name)
                .cast(DataType::String)
                .fill_null(lit("null"))
                .alias(SPLIT)])
            .agg(aggs),
        None => frame.select(aggs).with_column(lit("all").alias(SPLIT)),
    };
    grouped
        .collect()
        .map_err(pl("computing the quality report"))
}

/// The split names of the aggregated rows, and the row indices in report order: train, val, test, then any other
/// in byte order.
fn split_order(df: &DataFrame) -> Result<(Vec<String>, Vec<usize>)> {
    let splits: Vec<String> = df
        .column(SPLIT)
        .and_then(|c| c.str().cloned())
        .map_err(pl("reading the quality report"))?
        .iter()
        .map(|s| s.unwrap_or("null").to_owned())
        .collect();
    let mut order: Vec<usize> = (0..splits.len()).collect();
    let rank = |s: &str| match s {
        "train" => 0,
        "val" => 1,
        "test" => 2,
        _ => 3,
    };
    order.sort_by(|&a, &b| (rank(&splits[a]), &splits[a]).cmp(&(rank(&splits[b]), &splits[b])));
    Ok((splits, order))
}

/// Reads the aggregated statistics back, one row per split.
struct QualityStats<'a> {
    df: &'a DataFrame,
}

impl QualityStats<'_> {
    /// A count (0 when null).
    fn u64(&self, name: &str, row: usize) -> Result<u64> {
        let v = self
            .df
            .column(name)
            .and_then(|c| c.get(row))
            .map_err(pl(format!("quality statistic {name}")))?;
        Ok(v.extract::<u64>().unwrap_or(0))
    }

    /// A value that may be missing.
    fn f64(&self, name: &str, row: usize) -> Result<Option<f64>> {
        let v = self
            .df
            .column(name)
            .and_then(|c| c.get(row))
            .map_err(pl(format!("quality statistic {name}")))?;
        Ok(if v.is_null() {
            None
        } else {
            v.extract::<f64>()
        })
    }

    /// The summary [`push_summary`] wrote under `prefix`.
    fn summary(&self, prefix: &str, row: usize) -> Result<Summary> {
        Ok(Summary {
            mean: self.f64(&format!("{prefix}_mean"), row)?,
            std: self.f64(&format!("{prefix}_std"), row)?,
            min: self.f64(&format!("{prefix}_min"), row)?,
            median: self.f64(&format!("{prefix}_median"), row)?,
            max: self.f64(&format!("{prefix}_max"), row)?,
        })
    }

    /// The report row of column `i` (`column`) in aggregated row `r` (split `split`).
    fn row(&self, column: &ColumnState, i: usize, split: &str, r: usize) -> Result<QualityRow> {
        let k = |stat: &str| format!("{i}|{stat}");
        let base = QualityRow {
            column: column.name().to_owned(),
            kind: FeatureKind::Numeric,
            split: split.to_owned(),
            rows: self.u64("rows", r)?,
            nulls_before: self.u64(&k("nulls_before"), r)?,
            sentinels: self.u64(&k("sentinels"), r)?,
            non_finite: 0,
            outliers: 0,
            clipped: 0,
            dropped: 0,
            imputed: self.u64(&k("imputed"), r)?,
            unseen: 0,
            nulls_after: self.u64(&k("nulls_after"), r)?,
            non_finite_after: 0,
            distinct: None,
            before: None,
            after: None,
            warnings: column.warnings().join("; "),
        };
        Ok(match column {
            ColumnState::Numeric(s) => {
                let outliers = self.u64(&k("outliers"), r)?;
                let action = s.outliers.as_ref().map(|o| o.action);
                QualityRow {
                    non_finite: self.u64(&k("non_finite"), r)?,
                    outliers,
                    clipped: if action == Some(OutlierAction::Clip) {
                        outliers
                    } else {
                        0
                    },
                    dropped: if action == Some(OutlierAction::Drop) {
                        outliers
                    } else {
                        0
                    },
                    non_finite_after: self.u64(&k("non_finite_after"), r)?,
                    before: Some(self.summary(&k("before"), r)?),
                    after: Some(self.summary(&k("after"), r)?),
                    ..base
                }
            }
            ColumnState::Categorical(_) => QualityRow {
                kind: FeatureKind::Categorical,
                unseen: self.u64(&k("unseen"), r)?,
                distinct: Some(self.u64(&k("distinct"), r)?),
                ..base
            },
        })
    }
}

/// Pushes the mean, population std, min, median and max of `x`, named `{prefix}_{stat}`.
fn push_summary(aggs: &mut Vec<Expr>, x: Expr, prefix: &str) {
    aggs.push(x.clone().mean().alias(format!("{prefix}_mean")));
    aggs.push(x.clone().std(0).alias(format!("{prefix}_std")));
    aggs.push(x.clone().min().alias(format!("{prefix}_min")));
    aggs.push(
        x.clone()
            .drop_nulls()
            .median()
            .alias(format!("{prefix}_median")),
    );
    aggs.push(x.max().alias(format!("{prefix}_max")));
}

impl QualityReport {
    /// The Arrow schema of [`QualityReport::to_record_batch`].
    pub fn schema() -> SchemaRef {
        let mut fields = vec![
            Field::new("column", ArrowType::Utf8, false),
            Field::new("kind", ArrowType::Utf8, false),
            Field::new("split", ArrowType::Utf8, false),
        ];
        for name in COUNTS {
            fields.push(Field::new(name, ArrowType::UInt64, false));
        }
        fields.push(Field::new("distinct", ArrowType::UInt64, true));
        for side in ["before", "after"] {
            for stat in STATS {
                fields.push(Field::new(
                    format!("{stat}_{side}"),
                    ArrowType::Float64,
                    true,
                ));
            }
        }
        fields.push(Field::new("warnings", ArrowType::Utf8, false));
        Arc::new(Schema::new(fields))
    }

    /// The report as one Arrow batch (`quality.parquet`).
    pub fn to_record_batch(&self) -> Result<RecordBatch> {
        let rows = &self.rows;
        let text = |f: &dyn Fn(&QualityRow) -> &str| -> ArrayRef {
            Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
        };
        let mut columns: Vec<ArrayRef> = vec![
            text(&|r| r.column.as_str()),
            text(&|r| r.kind.as_str()),
            text(&|r| r.split.as_str()),
        ];
        for name in COUNTS {
            columns.push(Arc::new(
                rows.iter()
                    .map(|r| count_of(r, name))
                    .collect::<UInt64Array>(),
            ));
        }
        columns.push(Arc::new(
            rows.iter().map(|r| r.distinct).collect::<UInt64Array>(),
        ));
        for side in [|r: &QualityRow| r.before, |r: &QualityRow| r.after] {
            for stat in STATS {
                columns.push(Arc::new(
                    rows.iter()
                        .map(|r| side(r).and_then(|s| stat_of(&s, stat)))
                        .collect::<Float64Array>(),
                ));
            }
        }
        columns.push(text(&|r| r.warnings.as_str()));
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }

    /// Rows summed over splits, one per column, in column order.
    fn per_column(&self) -> Vec<QualityRow> {
        let mut out: Vec<QualityRow> = Vec::new();
        for r in &self.rows {
            match out.last_mut() {
                Some(last) if last.column == r.column => {
                    last.rows += r.rows;
                    last.nulls_before += r.nulls_before;
                    last.sentinels += r.sentinels;
                    last.non_finite += r.non_finite;
                    last.outliers += r.outliers;
                    last.clipped += r.clipped;
                    last.dropped += r.dropped;
                    last.imputed += r.imputed;
                    last.unseen += r.unseen;
                    last.nulls_after += r.nulls_after;
                    last.non_finite_after += r.non_finite_after;
                }
                _ => out.push(QualityRow {
                    split: "all".into(),
                    ..r.clone()
                }),
            }
        }
        out
    }
}

const COUNTS: [&str; 12] = [
    "rows",
    "nulls_before",
    "sentinels",
    "non_finite",
    "outliers",
    "clipped",
    "dropped",
    "imputed",
    "unseen",
    "nulls_after",
    "non_finite_after",
    "warning_count",
];
const STATS: [&str; 5] = ["mean", "std", "min", "median", "max"];

fn count_of(r: &QualityRow, name: &str) -> u64 {
    match name {
        "rows" => r.rows,
        "nulls_before" => r.nulls_before,
        "sentinels" => r.sentinels,
        "non_finite" => r.non_finite,
        "outliers" => r.outliers,
        "clipped" => r.clipped,
        "dropped" => r.dropped,
        "imputed" => r.imputed,
        "unseen" => r.unseen,
        "nulls_after" => r.nulls_after,
        "non_finite_after" => r.non_finite_after,
        _ => r.warnings.split("; ").filter(|w| !w.is_empty()).count() as u64,
    }
}

fn stat_of(s: &Summary, stat: &str) -> Option<f64> {
    match stat {
        "mean" => s.mean,
        "std" => s.std,
        "min" => s.min,
        "median" => s.median,
        _ => s.max,
    }
}

/// A short table, one line per column summed over splits, for people.
impl fmt::Display for QualityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self.per_column();
        let width = rows
            .iter()
            .map(|r| r.column.len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            f,
            "{:<width$}  {:<11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  warnings",
            "column",
            "kind",
            "rows",
            "nulls",
            "sentinel",
            "outliers",
            "clipped",
            "dropped",
            "imputed",
            "unseen",
            "after"
        )?;
        for r in rows {
            writeln!(
                f,
                "{:<width$}  {:<11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
                r.column,
                r.kind.as_str(),
                r.rows,
                r.nulls_before,
                r.sentinels,
                r.outliers,
                r.clipped,
                r.dropped,
                r.imputed,
                r.unseen,
                r.nulls_after,
                if r.warnings.is_empty() {
                    "-"
                } else {
                    r.warnings.as_str()
                }
            )?;
        }
        Ok(())
    }
}
