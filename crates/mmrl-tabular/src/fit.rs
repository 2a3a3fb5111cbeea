//! Fitting: learn every statistic of a [`Recipe`] from train rows, step by step, each step on the train values as
//! the previous steps leave them (like a scikit-learn `Pipeline`).
//!
//! 1. sentinels, NaN and infinities become missing (`clean_train`);
//! 2. outlier bounds (IQR, z-score or MAD) from the non-missing values (`Fitting::fit_outliers`);
//! 3. rows breaking a drop rule are removed, clip rules clip (`Fitting::drop_rows`);
//! 4. imputation values (mean, median, mode) from what is left (`Fitting::fit_imputation`);
//! 5. scaling statistics from the imputed values, and the categorical vocabularies (`Fitting::fit_scaling`).
//!
//! Every statistic is computed explicitly on the frame passed in (never with polars' fill strategies, which
//! compute on whatever frame they run on), with population std (ddof 0) and linear-interpolated quantiles.

use std::collections::{BTreeMap, BTreeSet};

use mmrl_artifact::sample::FeatureKind;
use polars::prelude::*;

use crate::error::pl;
use crate::exprs;
use crate::recipe::{ColumnPlan, Impute, OutlierRule, Recipe, Scale};
use crate::state::{
    CategoricalState, ColumnState, FittedOutliers, NumericState, STATE_VERSION, TabularState,
};
use crate::{Error, Result};

/// The MAD of normal data times this estimates its standard deviation.
pub const MAD_TO_STD: f64 = 1.4826;

/// Fits `recipe` on `train`, which must hold only train rows (filter it first). The result depends on nothing
/// but those rows, so val and test values can never leak into it.
///
/// Errors: a recipe that does not validate, a feature missing from the frame (the message lists the frame's
/// columns), a numeric feature holding text, or no train rows (none given, or all removed by drop rules).
pub fn fit(train: LazyFrame, recipe: &Recipe) -> Result<TabularState> {
    recipe.validate()?;
    let plans = recipe.resolve()?;
    let mut train = train;
    let schema = train
        .collect_schema()
        .map_err(pl("reading the train frame's schema"))?;
    let columns = initial_states(&plans, &schema)?;
    check_output_names(&columns, recipe.flags)?;
    if columns.is_empty() {
        return fit_without_features(train, recipe, columns);
    }
    let clean = clean_train(train, &columns)?;
    let train_rows = clean.height();
    let mut fitting = Fitting {
        plans,
        views: columns.iter().map(clean_view).collect(),
        columns,
    };
    fitting.fit_outliers(&clean)?;
    let kept = fitting.drop_rows(clean)?;
    let counts = fitting.fit_imputation(&kept)?;
    fitting.fit_scaling(&kept, counts)?;
    let train_rows_kept = kept.height();
    let state = TabularState {
        version: STATE_VERSION,
        train_rows: train_rows as u64,
        train_rows_kept: train_rows_kept as u64,
        flags: recipe.flags,
        columns: fitting.columns,
    };
    check_output_names(&state.columns, state.flags)?;
    tracing::info!(
        train_rows,
        train_rows_kept,
        columns = state.columns.len(),
        "tabular state fitted"
    );
    Ok(state)
}

/// A recipe without features: nothing to fit, but an empty train split is still an error.
fn fit_without_features(
    train: LazyFrame,
    recipe: &Recipe,
    columns: Vec<ColumnState>,
) -> Result<TabularState> {
    let n = train
        .select([len().alias("n")])
        .collect()
        .map_err(pl("counting train rows"))?;
    let rows = Stats(Some(n)).u64("n")?;
    if rows == 0 {
        return Err(Error::EmptyTrain(
            "no train rows to fit on: the train split is empty".into(),
        ));
    }
    Ok(TabularState {
        version: STATE_VERSION,
        train_rows: rows,
        train_rows_kept: rows,
        flags: recipe.flags,
        columns,
    })
}

/// Step 1: sentinels, NaN and infinities become missing, once and materialized, so every later statistic reads
/// memory instead of re-running the input. Errors when no train row is left.
fn clean_train(train: LazyFrame, columns: &[ColumnState]) -> Result<DataFrame> {
    let clean_exprs: Vec<Expr> = columns
        .iter()
        .map(|c| match c {
            ColumnState::Numeric(n) => {
                exprs::numeric_clean(&n.name, &n.sentinels).alias(n.name.as_str())
            }
            ColumnState::Categorical(c) => exprs::categorical_clean(c).alias(c.name.as_str()),
        })
        .collect();
    let started = std::time::Instant::now();
    let mut clean = train
        .select(clean_exprs)
        .collect()
        .map_err(pl("cleaning the train rows"))?;
    // One chunk per numeric column: polars' quantiles take the quickselect path only on contiguous data (text
    // columns are only counted, which works on any chunking).
    rechunk_numeric(&mut clean)?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        rows = clean.height(),
        "fit: train rows cleaned"
    );
    if clean.height() == 0 {
        return Err(Error::EmptyTrain(
            "no train rows to fit on: the train split is empty (check the split assignment and filters)".into(),
        ));
    }
    Ok(clean)
}

/// What the fitting steps share: the resolved plans, the states being fitted, and their views on the clean frame.
struct Fitting {
    /// One plan per feature, in the order of `columns`.
    plans: Vec<ColumnPlan>,
    /// The states being fitted (the result).
    columns: Vec<ColumnState>,
    /// The same states as seen on the cleaned train frame: no sentinels, no cast (see [`clean_view`]).
    views: Vec<ColumnState>,
}

impl Fitting {
    /// Step 2: outlier bounds from the non-missing clean values.
    fn fit_outliers(&mut self, clean: &DataFrame) -> Result<()> {
        let stats = Stats::collect(clean, self.outlier_exprs(), "fitting outlier bounds")?;
        for (i, plan) in self.plans.iter().enumerate() {
            let ColumnPlan::Numeric(plan) = plan else {
                continue;
            };
            let Some(fitted) = fitted_outliers(plan, &stats, i)? else {
                continue;
            };
            let (ColumnState::Numeric(state), ColumnState::Numeric(view)) =
                (&mut self.columns[i], &mut self.views[i])
            else {
                continue;
            };
            match fitted {
                Ok(f) => {
                    state.outliers = Some(f.clone());
                    view.outliers = Some(f);
                }
                Err(w) => warn(state, w),
            }
        }
        Ok(())
    }

    /// The statistics each numeric column's outlier rule needs, one group per column.
    fn outlier_exprs(&self) -> Vec<Vec<Expr>> {
        let mut exprs_out = Vec::new();
        for (i, c) in self.views.iter().enumerate() {
            let (ColumnState::Numeric(n), Some(plan)) = (c, plan_numeric(&self.plans[i])) else {
                continue;
            };
            let x = || col(n.name.as_str());
            let mut g = vec![x().count().alias(key(i, "count"))];
            match plan.outliers.rule {
                OutlierRule::None => {}
                OutlierRule::Iqr => {
                    g.push(quantile(x(), 0.25).alias(key(i, "q1")));
                    g.push(quantile(x(), 0.75).alias(key(i, "q3")));
                }
                OutlierRule::Zscore => {
                    g.push(x().mean().alias(key(i, "mean")));
                    g.push(x().std(0).alias(key(i, "std")));
                }
                OutlierRule::Mad => {
                    g.push(x().drop_nulls().median().alias(key(i, "median")));
                    g.push(
                        (x() - x().median())
                            .abs()
                            .drop_nulls()
                            .median()
                            .alias(key(i, "mad")),
                    );
                }
            }
            exprs_out.push(g);
        }
        exprs_out
    }

    /// Step 3: drop rules remove train rows (clip rules act through the expressions of the later steps). Errors
    /// when no row is left.
    fn drop_rows(&self, clean: DataFrame) -> Result<DataFrame> {
        let train_rows = clean.height();
        let numeric_views: Vec<&NumericState> = self
            .views
            .iter()
            .filter_map(|c| match c {
                ColumnState::Numeric(n) => Some(n),
                ColumnState::Categorical(_) => None,
            })
            .collect();
        let kept = match exprs::keep_mask(&numeric_views) {
            Some(keep) => {
                let mut kept = clean
                    .lazy()
                    .filter(keep)
                    .collect()
                    .map_err(pl("applying the drop rules to train"))?;
                rechunk_numeric(&mut kept)?;
                kept
            }
            None => clean,
        };
        if kept.height() == 0 {
            return Err(Error::EmptyTrain(format!(
                "the outlier drop rules removed all {train_rows} train rows: nothing left to fit on; loosen k or use action = \"clip\""
            )));
        }
        Ok(kept)
    }

    /// Step 4: imputation values from the kept (clipped) train values. Returns the count of each present value
    /// of every categorical column (empty for numeric ones), which step 5 turns into vocabularies.
    fn fit_imputation(&mut self, kept: &DataFrame) -> Result<Vec<BTreeMap<String, u64>>> {
        let train_rows_kept = kept.height();
        let stats = Stats::collect(kept, self.imputation_exprs(), "fitting imputation values")?;
        let counts = self.category_counts(kept)?;
        // `counts` has one entry per column.
        for (i, column_counts) in counts.iter().enumerate() {
            let count = match &self.columns[i] {
                ColumnState::Numeric(_) => stats.u64(&key(i, "count"))?,
                ColumnState::Categorical(_) => column_counts.values().sum(),
            };
            match (&mut self.columns[i], &mut self.views[i]) {
                (ColumnState::Numeric(state), ColumnState::Numeric(view)) => {
                    set_numeric_fill(state, count, train_rows_kept, &stats, i)?;
                    view.fill = state.fill;
                }
                (ColumnState::Categorical(state), ColumnState::Categorical(view)) => {
                    set_categorical_fill(state, count, train_rows_kept, column_counts);
                    view.fill = state.fill.clone();
                }
                _ => {}
            }
        }
        Ok(counts)
    }

    /// The non-missing count and imputation statistic of each numeric column, one group per column.
    fn imputation_exprs(&self) -> Vec<Vec<Expr>> {
        let mut exprs_imp = Vec::new();
        for (i, c) in self.views.iter().enumerate() {
            match c {
                ColumnState::Numeric(n) => {
                    let x = || exprs::numeric_clipped(n);
                    let mut g = vec![x().count().alias(key(i, "count"))];
                    match n.impute {
                        Impute::Mean => g.push(x().mean().alias(key(i, "fill"))),
                        Impute::Median => g.push(x().drop_nulls().median().alias(key(i, "fill"))),
                        Impute::Mode => {
                            g.push(x().drop_nulls().mode(false).min().alias(key(i, "fill")))
                        }
                        Impute::Constant | Impute::Missing => {}
                    }
                    exprs_imp.push(g);
                }
                ColumnState::Categorical(_) => {}
            }
        }
        exprs_imp
    }

    /// Categorical columns: one count per distinct value gives the mode, the vocabulary and the non-missing count.
    fn category_counts(&self, kept: &DataFrame) -> Result<Vec<BTreeMap<String, u64>>> {
        let started = std::time::Instant::now();
        let mut counts: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); self.columns.len()];
        for (i, c) in self.views.iter().enumerate() {
            if let ColumnState::Categorical(c) = c {
                counts[i] = value_counts(kept, &c.name)?;
            }
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "fit: category counts"
        );
        Ok(counts)
    }

    /// Step 5: scaling statistics on the imputed values, and the categorical vocabularies.
    fn fit_scaling(
        &mut self,
        kept: &DataFrame,
        mut counts: Vec<BTreeMap<String, u64>>,
    ) -> Result<()> {
        let stats = Stats::collect(kept, self.scaling_exprs(), "fitting scaling statistics")?;
        for (i, c) in self.columns.iter_mut().enumerate() {
            match c {
                ColumnState::Numeric(state) => set_scaling(state, &stats, i)?,
                ColumnState::Categorical(state) => {
                    set_vocabulary(state, std::mem::take(&mut counts[i]));
                }
            }
        }
        Ok(())
    }

    /// The center and spread each numeric column's scaling needs, one group per column.
    fn scaling_exprs(&self) -> Vec<Vec<Expr>> {
        let mut exprs_scale = Vec::new();
        for (i, c) in self.views.iter().enumerate() {
            let ColumnState::Numeric(n) = c else { continue };
            let x = || exprs::numeric_imputed(n);
            exprs_scale.push(match n.scale {
                Scale::None => Vec::new(),
                Scale::Zscore => vec![
                    x().mean().alias(key(i, "center")),
                    x().std(0).alias(key(i, "spread")),
                ],
                Scale::Minmax => vec![
                    x().min().cast(DataType::Float64).alias(key(i, "center")),
                    (x().max() - x().min())
                        .cast(DataType::Float64)
                        .alias(key(i, "spread")),
                ],
                Scale::Robust => vec![
                    x().median().alias(key(i, "center")),
                    (quantile(x(), 0.75) - quantile(x(), 0.25)).alias(key(i, "spread")),
                ],
            });
        }
        exprs_scale
    }
}

/// The fitted bounds of column `i`'s outlier rule from its statistics: `None` without a rule, `Err` with the
/// warning when the rule has to be skipped.
fn fitted_outliers(
    plan: &crate::recipe::NumericPlan,
    stats: &Stats,
    i: usize,
) -> Result<Option<std::result::Result<FittedOutliers, String>>> {
    let count = stats.u64(&key(i, "count"))?;
    let k = plan.outliers.effective_k();
    let (center_lo, center_hi, spread) = match plan.outliers.rule {
        OutlierRule::None => return Ok(None),
        OutlierRule::Iqr => {
            let (q1, q3) = (stats.f64(&key(i, "q1"))?, stats.f64(&key(i, "q3"))?);
            (q1, q3, q1.zip(q3).map(|(a, b)| b - a))
        }
        OutlierRule::Zscore => {
            let mean = stats.f64(&key(i, "mean"))?;
            (mean, mean, stats.f64(&key(i, "std"))?)
        }
        OutlierRule::Mad => {
            let median = stats.f64(&key(i, "median"))?;
            (
                median,
                median,
                stats.f64(&key(i, "mad"))?.map(|m| MAD_TO_STD * m),
            )
        }
    };
    Ok(Some(match (count, center_lo, center_hi, spread) {
        (0, ..) => Err("no non-missing train values: outlier rule skipped".to_owned()),
        (_, Some(lo), Some(hi), Some(spread)) if spread.is_finite() && spread > 0.0 => {
            let (lower, upper) = (lo - k * spread, hi + k * spread);
            if lower.is_finite() && upper.is_finite() {
                Ok(FittedOutliers {
                    rule: plan.outliers.rule,
                    k,
                    action: plan.outliers.action,
                    lower,
                    upper,
                })
            } else {
                Err("outlier bounds are not finite: outlier rule skipped".to_owned())
            }
        }
        _ => Err("zero spread in train: outlier rule skipped".to_owned()),
    }))
}

/// Sets a numeric column's non-missing train count and fill value (column `i` of `stats`), with the fallback to
/// the constant 0.
fn set_numeric_fill(
    state: &mut NumericState,
    count: u64,
    train_rows_kept: usize,
    stats: &Stats,
    i: usize,
) -> Result<()> {
    state.train_values = count;
    if count == 0 {
        warn(
            state,
            format!("all {train_rows_kept} train values are missing"),
        );
    }
    let fill = match state.impute {
        Impute::Constant | Impute::Missing => Some(state.fill),
        _ => stats.f64(&key(i, "fill"))?.filter(|v| v.is_finite()),
    };
    match fill {
        Some(v) => state.fill = v,
        None => {
            state.fill = 0.0;
            warn(
                state,
                format!(
                    "no {:?} to impute with: imputing the constant 0",
                    impute_name(state.impute)
                ),
            );
        }
    }
    Ok(())
}

/// Sets a categorical column's mode fill value from its value counts (ties go to the smallest value, like
/// scikit-learn's most_frequent), or warns that missing values keep the missing code.
fn set_categorical_fill(
    state: &mut CategoricalState,
    count: u64,
    train_rows_kept: usize,
    counts: &BTreeMap<String, u64>,
) {
    if count == 0 {
        warn_cat(
            state,
            format!("all {train_rows_kept} train values are missing"),
        );
    }
    if state.impute == Impute::Mode {
        let best = counts.values().copied().max().unwrap_or(0);
        match counts
            .iter()
            .find(|(_, n)| **n == best && best > 0)
            .map(|(v, _)| v.clone())
        {
            Some(mode) => state.fill = Some(mode),
            None => {
                state.fill = None;
                warn_cat(
                    state,
                    "no mode to impute with: missing values keep the missing code".into(),
                );
            }
        }
    }
}

/// Sets a numeric column's center and scale from column `i` of `stats`, with the fallbacks 0 and 1.
fn set_scaling(state: &mut NumericState, stats: &Stats, i: usize) -> Result<()> {
    if state.scale == Scale::None {
        return Ok(());
    }
    match stats.f64(&key(i, "center"))?.filter(|v| v.is_finite()) {
        Some(center) => state.center = center,
        None => warn(state, "no finite center: center set to 0".into()),
    }
    match stats.f64(&key(i, "spread"))?.filter(|v| v.is_finite()) {
        Some(spread) if spread > 0.0 => state.scale_by = spread,
        _ => warn(
            state,
            "zero spread in train after imputation: scale set to 1".into(),
        ),
    }
    Ok(())
}

/// Sets a categorical column's vocabulary: the present train values plus the fill value.
fn set_vocabulary(state: &mut CategoricalState, counts: BTreeMap<String, u64>) {
    let mut vocabulary: BTreeSet<String> = counts.into_keys().collect();
    if let Some(fill) = &state.fill {
        // A constant fill must encode as itself even when train had no missing value.
        vocabulary.insert(fill.clone());
    }
    state.categories = vocabulary.into_iter().collect();
    if state.categories.is_empty() {
        warn_cat(
            state,
            "no train categories: every present value encodes as unseen".into(),
        );
    }
}

/// Makes every numeric column a single chunk.
fn rechunk_numeric(frame: &mut DataFrame) -> Result<()> {
    let names: Vec<PlSmallStr> = frame
        .columns()
        .iter()
        .filter(|c| c.dtype().is_primitive_numeric() && c.n_chunks() > 1)
        .map(|c| c.name().clone())
        .collect();
    for name in names {
        let column = frame.column(&name).map_err(pl("rechunking"))?.rechunk();
        frame.replace(&name, column).map_err(pl("rechunking"))?;
    }
    Ok(())
}

/// How often each present value of a text column occurs.
fn value_counts(frame: &DataFrame, name: &str) -> Result<BTreeMap<String, u64>> {
    let context = || format!("counting the values of {name:?}");
    let counted = frame
        .clone()
        .lazy()
        .select([col(name)])
        .drop_nulls(None)
        .group_by([col(name)])
        .agg([len().alias("__n")])
        .collect()
        .map_err(pl(context()))?;
    let values = counted
        .column(name)
        .and_then(|c| c.str().cloned())
        .map_err(pl(context()))?;
    let counts = counted
        .column("__n")
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(pl(context()))?;
    let counts = counts.u64().map_err(pl(context()))?;
    Ok(values
        .iter()
        .zip(counts.iter())
        .filter_map(|(v, n)| Some((v?.to_owned(), n?)))
        .collect())
}

fn plan_numeric(plan: &ColumnPlan) -> Option<&crate::recipe::NumericPlan> {
    match plan {
        ColumnPlan::Numeric(n) => Some(n),
        ColumnPlan::Categorical(_) => None,
    }
}

fn impute_name(impute: Impute) -> &'static str {
    match impute {
        Impute::Mean => "mean",
        Impute::Median => "median",
        Impute::Mode => "mode",
        Impute::Constant => "constant",
        Impute::Missing => "missing",
    }
}

fn quantile(x: Expr, q: f64) -> Expr {
    // Nulls dropped first: polars takes its quickselect path only for null-free data.
    x.drop_nulls().quantile(lit(q), QuantileMethod::Linear)
}

fn key(i: usize, stat: &str) -> String {
    format!("{i}|{stat}")
}

fn warn(state: &mut NumericState, message: String) {
    tracing::warn!(column = %state.name, "{message}");
    state.warnings.push(message);
}

fn warn_cat(state: &mut CategoricalState, message: String) {
    tracing::warn!(column = %state.name, "{message}");
    state.warnings.push(message);
}

/// The state of a column as seen on the already-cleaned train frame: no sentinels, no cast.
fn clean_view(c: &ColumnState) -> ColumnState {
    match c {
        ColumnState::Numeric(n) => ColumnState::Numeric(NumericState {
            sentinels: Vec::new(),
            ..n.clone()
        }),
        ColumnState::Categorical(c) => ColumnState::Categorical(CategoricalState {
            sentinels: Vec::new(),
            cast_from_numeric: false,
            ..c.clone()
        }),
    }
}

/// Checks every feature against the frame's schema and builds the states before any statistic.
fn initial_states(plans: &[ColumnPlan], schema: &Schema) -> Result<Vec<ColumnState>> {
    plans
        .iter()
        .map(|plan| {
            let name = match plan {
                ColumnPlan::Numeric(n) => &n.name,
                ColumnPlan::Categorical(c) => &c.name,
            };
            let dtype = column_dtype(schema, name, "recipe.features")?;
            Ok(match plan {
                ColumnPlan::Numeric(p) => {
                    check_kind(name, dtype, FeatureKind::Numeric)?;
                    ColumnState::Numeric(NumericState {
                        name: p.name.clone(),
                        sentinels: p.sentinels.clone(),
                        outliers: None,
                        impute: p.impute,
                        fill: p.fill_value,
                        missing_indicator: p.missing_indicator,
                        scale: p.scale,
                        center: 0.0,
                        scale_by: 1.0,
                        train_values: 0,
                        warnings: Vec::new(),
                    })
                }
                ColumnPlan::Categorical(p) => {
                    let cast_from_numeric = check_kind(name, dtype, FeatureKind::Categorical)?;
                    ColumnState::Categorical(CategoricalState {
                        name: p.name.clone(),
                        cast_from_numeric,
                        sentinels: p.sentinels.clone(),
                        impute: p.impute,
                        fill: (p.impute == Impute::Constant).then(|| p.fill_value.clone()),
                        missing_indicator: p.missing_indicator,
                        encode: p.encode,
                        unknown: p.unknown,
                        categories: Vec::new(),
                        warnings: Vec::new(),
                    })
                }
            })
        })
        .collect()
}

/// The type of `name` in `schema`, or an error listing the columns that exist.
pub(crate) fn column_dtype<'a>(
    schema: &'a Schema,
    name: &str,
    field: &str,
) -> Result<&'a DataType> {
    schema.get(name).ok_or_else(|| Error::UnknownColumn {
        field: field.to_owned(),
        column: name.to_owned(),
        available: schema
            .iter_names()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Checks that a column's type fits its kind. Returns whether a categorical column must be cast from numbers.
pub(crate) fn check_kind(name: &str, dtype: &DataType, kind: FeatureKind) -> Result<bool> {
    // An all-null column of type Null can be either kind: it casts to numbers and to text.
    let numeric = dtype.is_primitive_numeric() || dtype.is_bool() || dtype == &DataType::Null;
    match (kind, numeric, dtype.is_string()) {
        (FeatureKind::Numeric, true, _) => Ok(false),
        (FeatureKind::Numeric, false, _) => Err(Error::NotNumeric {
            column: name.to_owned(),
            dtype: dtype.to_string(),
        }),
        (FeatureKind::Categorical, _, true) => Ok(false),
        (FeatureKind::Categorical, true, _) => Ok(true),
        (FeatureKind::Categorical, false, false) => Err(Error::UnsupportedType {
            column: name.to_owned(),
            dtype: dtype.to_string(),
        }),
    }
}

/// Every output column name must be unique (a feature named `a__missing` next to `a`'s indicator is not).
fn check_output_names(columns: &[ColumnState], flags: crate::recipe::FlagType) -> Result<()> {
    let state = TabularState {
        version: STATE_VERSION,
        train_rows: 0,
        train_rows_kept: 0,
        flags,
        columns: columns.to_vec(),
    };
    let mut seen = BTreeSet::new();
    for (name, _) in state.output_columns() {
        if !seen.insert(name.clone()) {
            return Err(Error::Data(format!(
                "two output columns would be named {name:?}; rename the feature or the category that collides"
            )));
        }
    }
    Ok(())
}

/// A statistics query is one projection of an in-memory frame: type coercion and shared subexpressions are the
/// optimizations that matter, the plan-level ones only cost planning time.
const STATS_OPTIMIZATIONS: OptFlags = OptFlags::TYPE_COERCION
    .union(OptFlags::TYPE_CHECK)
    .union(OptFlags::SIMPLIFY_EXPR)
    .union(OptFlags::COMM_SUBEXPR_ELIM);

/// At most this many values of temporaries per statistics query (4M `f64`: 32 MiB).
const QUERY_VALUES: usize = 1 << 22;

/// A one-row frame of named statistics.
struct Stats(Option<DataFrame>);

impl Stats {
    /// Evaluates groups of expressions (one group per column), several groups per query as long as their
    /// temporaries (a clipped and imputed copy per column, shared by its statistics) stay under
    /// [`QUERY_VALUES`] values: one query for small frames, one column at a time for large ones.
    fn collect(frame: &DataFrame, groups: Vec<Vec<Expr>>, context: &str) -> Result<Self> {
        let started = std::time::Instant::now();
        let per_query = (QUERY_VALUES / frame.height().max(1)).max(1);
        let groups: Vec<Vec<Expr>> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        let mut columns = Vec::new();
        for chunk in groups.chunks(per_query) {
            let exprs: Vec<Expr> = chunk.iter().flatten().cloned().collect();
            let row = frame
                .clone()
                .lazy()
                .with_optimizations(STATS_OPTIMIZATIONS)
                .select(exprs)
                .collect()
                .map_err(pl(context))?;
            columns.extend(row.into_columns());
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "fit: {context}");
        if columns.is_empty() {
            return Ok(Self(None));
        }
        DataFrame::new(1, columns)
            .map(|df| Self(Some(df)))
            .map_err(pl(context))
    }

    fn value(&self, key: &str) -> Result<Option<AnyValue<'_>>> {
        let Some(df) = &self.0 else { return Ok(None) };
        let column = df.column(key).map_err(pl(format!("statistic {key}")))?;
        let value = column.get(0).map_err(pl(format!("statistic {key}")))?;
        Ok(if value.is_null() { None } else { Some(value) })
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        Ok(self.value(key)?.and_then(|v| v.extract::<f64>()))
    }

    fn u64(&self, key: &str) -> Result<u64> {
        Ok(self
            .value(key)?
            .and_then(|v| v.extract::<u64>())
            .unwrap_or(0))
    }
}
