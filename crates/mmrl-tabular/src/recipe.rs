//! The recipe: which columns are numeric or categorical, the default rules for each kind, and per-column
//! overrides. It is plain data (serde), checked by [`Recipe::validate`] before anything is computed.

use std::collections::BTreeMap;

use mmrl_artifact::sample::FeatureKind;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How missing values are filled.
///
/// Numeric columns accept `mean`, `median`, `mode` and `constant`; categorical columns accept `mode`, `constant`
/// and `missing` (keep them missing: the reserved missing code, or the `=__missing__` one-hot column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impute {
    /// The train mean (numeric only).
    Mean,
    /// The train median (numeric only).
    Median,
    /// The most frequent train value; ties go to the smallest value.
    Mode,
    /// `fill_value`.
    Constant,
    /// Leave missing and encode it explicitly (categorical only).
    Missing,
}

impl Impute {
    fn name(self) -> &'static str {
        match self {
            Impute::Mean => "mean",
            Impute::Median => "median",
            Impute::Mode => "mode",
            Impute::Constant => "constant",
            Impute::Missing => "missing",
        }
    }
}

/// Which statistic decides that a numeric value is an outlier. Bounds are fit on train values after sentinels
/// and non-finite values became missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutlierRule {
    /// No outlier handling.
    None,
    /// Outside `[Q1 - k IQR, Q3 + k IQR]` (Tukey; quantiles with linear interpolation). Default k 1.5.
    Iqr,
    /// Outside `mean ± k std` (population std, ddof 0). Default k 3.
    Zscore,
    /// Outside `median ± k 1.4826 MAD` (the MAD scaled to estimate the std of normal data). Default k 3.5.
    Mad,
}

impl OutlierRule {
    /// The `k` used when the config gives none.
    pub fn default_k(self) -> f64 {
        match self {
            OutlierRule::None => 0.0,
            OutlierRule::Iqr => 1.5,
            OutlierRule::Zscore => 3.0,
            OutlierRule::Mad => 3.5,
        }
    }
}

/// What happens to an outlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutlierAction {
    /// Replace it by the nearest bound.
    Clip,
    /// Drop the whole row (it goes to `rejects.parquet` in the stage), in every split.
    Drop,
}

/// An outlier rule with its multiplier and action: `outliers = { rule = "iqr", k = 1.5, action = "clip" }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outliers {
    /// The rule; `none` disables outlier handling.
    pub rule: OutlierRule,
    /// The multiplier; absent means the rule's default ([`OutlierRule::default_k`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<f64>,
    /// Clip or drop.
    pub action: OutlierAction,
}

impl Default for Outliers {
    fn default() -> Self {
        Self {
            rule: OutlierRule::Iqr,
            k: None,
            action: OutlierAction::Clip,
        }
    }
}

impl Outliers {
    /// No outlier handling.
    pub fn none() -> Self {
        Self {
            rule: OutlierRule::None,
            k: None,
            action: OutlierAction::Clip,
        }
    }

    /// The multiplier in effect.
    pub fn effective_k(&self) -> f64 {
        self.k.unwrap_or(self.rule.default_k())
    }
}

/// How numeric values are normalized; statistics come from train values after outlier handling and imputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// Leave values as they are.
    None,
    /// `(x - mean) / std` (population std, ddof 0).
    Zscore,
    /// `(x - min) / (max - min)`: train values land in [0, 1].
    Minmax,
    /// `(x - median) / (Q3 - Q1)`, like scikit-learn's `RobustScaler`.
    Robust,
}

/// How a categorical column becomes model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encode {
    /// One `UInt32` code column: 0 missing, 1 unseen in train, 2.. the train categories in byte order.
    Ordinal,
    /// One `Float32` 0/1 column per train category (`COL=VALUE`), plus `COL=__missing__` (impute = missing) and
    /// `COL=__unseen__` (unknown = bucket).
    OneHot,
}

/// What a category that never occurred in train becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// Its own bucket: the unseen code 1 (ordinal) or the `COL=__unseen__` column (one-hot).
    Bucket,
    /// No bucket: the missing code 0 (ordinal) or all-zero columns (one-hot), like scikit-learn's
    /// `handle_unknown="ignore"`.
    Ignore,
}

/// The type of the 0/1 output columns (missing indicators and one-hot columns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagType {
    /// `Float32` 0.0 / 1.0: ready to feed a model (the stage's layout).
    #[default]
    Float32,
    /// `Boolean`: one bit per value in memory, for large tables a model reads in batches and casts itself.
    Boolean,
}

/// A number or a string, where a per-column override can hold either (`fill_value`, `sentinels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A number, for numeric columns.
    Number(f64),
    /// A string, for categorical columns.
    Text(String),
}

/// Default rules for numeric columns (`[stages.tabular.params.numeric]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumericRules {
    /// How missing values are filled: mean, median, mode or constant.
    pub impute: Impute,
    /// The value used by `impute = "constant"`.
    pub fill_value: f64,
    /// Add a `COL__missing` 0/1 column, set where the value was missing (null, NaN, inf or a sentinel).
    pub missing_indicators: bool,
    /// Values that mean "missing" (e.g. -999); they become missing before anything is fit.
    pub sentinels: Vec<f64>,
    /// The outlier rule.
    pub outliers: Outliers,
    /// The normalization.
    pub scale: Scale,
}

impl Default for NumericRules {
    fn default() -> Self {
        Self {
            impute: Impute::Median,
            fill_value: 0.0,
            missing_indicators: true,
            sentinels: Vec::new(),
            outliers: Outliers::default(),
            scale: Scale::Robust,
        }
    }
}

/// Default rules for categorical columns (`[stages.tabular.params.categorical]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoricalRules {
    /// How missing values are filled: mode, constant or missing (an explicit missing code).
    pub impute: Impute,
    /// The category used by `impute = "constant"`.
    pub fill_value: String,
    /// Add a `COL__missing` 0/1 column, set where the value was missing (null or a sentinel).
    pub missing_indicators: bool,
    /// Values that mean "missing" (e.g. "?", "N/A").
    pub sentinels: Vec<String>,
    /// Ordinal codes or one-hot columns.
    pub encode: Encode,
    /// What a category unseen in train becomes.
    pub unknown: Unknown,
}

impl Default for CategoricalRules {
    fn default() -> Self {
        Self {
            impute: Impute::Missing,
            fill_value: "unknown".into(),
            missing_indicators: false,
            sentinels: Vec::new(),
            encode: Encode::Ordinal,
            unknown: Unknown::Bucket,
        }
    }
}

/// Per-column settings (`[stages.tabular.params.columns.NAME]`); every absent field takes the default of the
/// column's kind. Numeric-only fields (`outliers`, `scale`) on a categorical column, and categorical-only fields
/// (`encode`, `unknown`) on a numeric one, are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnOverride {
    /// Treat the column as this kind instead of its declared one. A numeric column may become categorical (its
    /// values are then compared as text); a text column can never become numeric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FeatureKind>,
    /// See [`NumericRules::impute`] / [`CategoricalRules::impute`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impute: Option<Impute>,
    /// A number for numeric columns, a string for categorical ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_value: Option<Value>,
    /// See [`NumericRules::missing_indicators`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_indicators: Option<bool>,
    /// Numbers for numeric columns, strings for categorical ones; replaces the kind's default list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinels: Option<Vec<Value>>,
    /// Numeric only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outliers: Option<Outliers>,
    /// Numeric only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    /// Categorical only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode: Option<Encode>,
    /// Categorical only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<Unknown>,
}

/// The cleaning recipe for a table: its feature columns with their declared kinds, the default rules per kind,
/// and per-column overrides. Build one with [`Recipe::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The feature columns in output order, with their declared kind.
    pub features: Vec<(String, FeatureKind)>,
    /// Defaults for numeric columns.
    pub numeric: NumericRules,
    /// Defaults for categorical columns.
    pub categorical: CategoricalRules,
    /// Per-column overrides, keyed by column name.
    pub columns: BTreeMap<String, ColumnOverride>,
    /// The type of indicator and one-hot columns.
    #[serde(default)]
    pub flags: FlagType,
}

impl Recipe {
    /// A recipe with the default rules for these features.
    pub fn new(features: Vec<(String, FeatureKind)>) -> Self {
        Self {
            features,
            numeric: NumericRules::default(),
            categorical: CategoricalRules::default(),
            columns: BTreeMap::new(),
            flags: FlagType::Float32,
        }
    }

    /// Checks the rules and that every override names a feature; no data is read.
    pub fn validate(&self) -> Result<()> {
        validate_rules(&self.numeric, &self.categorical, &self.columns)?;
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &self.features {
            if !seen.insert(name.as_str()) {
                return Err(config(
                    "features",
                    format!("column {name:?} is listed twice"),
                ));
            }
        }
        self.resolve().map(|_| ())
    }

    /// Every feature with its rules resolved (defaults merged with its override).
    pub(crate) fn resolve(&self) -> Result<Vec<ColumnPlan>> {
        for name in self.columns.keys() {
            if !self.features.iter().any(|(f, _)| f == name) {
                return Err(Error::UnknownColumn {
                    field: format!("columns.{name}"),
                    column: name.clone(),
                    available: self
                        .features
                        .iter()
                        .map(|(f, _)| f.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        self.features
            .iter()
            .map(|(name, declared)| {
                let o = self.columns.get(name).cloned().unwrap_or_default();
                match o.kind.unwrap_or(*declared) {
                    FeatureKind::Numeric => {
                        resolve_numeric(name, &self.numeric, &o).map(ColumnPlan::Numeric)
                    }
                    FeatureKind::Categorical => resolve_categorical(name, &self.categorical, &o)
                        .map(ColumnPlan::Categorical),
                }
            })
            .collect()
    }
}

/// A numeric column's rules after merging defaults and override.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NumericPlan {
    pub name: String,
    pub impute: Impute,
    pub fill_value: f64,
    pub missing_indicator: bool,
    pub sentinels: Vec<f64>,
    pub outliers: Outliers,
    pub scale: Scale,
}

/// A categorical column's rules after merging defaults and override.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CategoricalPlan {
    pub name: String,
    pub impute: Impute,
    pub fill_value: String,
    pub missing_indicator: bool,
    pub sentinels: Vec<String>,
    pub encode: Encode,
    pub unknown: Unknown,
}

/// One resolved column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ColumnPlan {
    Numeric(NumericPlan),
    Categorical(CategoricalPlan),
}

fn config(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Checks what can be checked without knowing the data: ranges, and kind-specific values in the defaults.
pub(crate) fn validate_rules(
    numeric: &NumericRules,
    categorical: &CategoricalRules,
    columns: &BTreeMap<String, ColumnOverride>,
) -> Result<()> {
    check_numeric_impute("numeric.impute", numeric.impute)?;
    check_finite("numeric.fill_value", numeric.fill_value)?;
    for s in &numeric.sentinels {
        check_finite("numeric.sentinels", *s)?;
    }
    check_outliers("numeric.outliers", &numeric.outliers)?;
    check_categorical_impute("categorical.impute", categorical.impute)?;
    for (name, o) in columns {
        // Keys that only fit one kind must agree with each other (and with `kind` when given), whatever the data.
        let numeric_key = [
            ("outliers", o.outliers.is_some()),
            ("scale", o.scale.is_some()),
        ]
        .into_iter()
        .find_map(|(k, set)| set.then_some(k));
        let categorical_key = [
            ("encode", o.encode.is_some()),
            ("unknown", o.unknown.is_some()),
        ]
        .into_iter()
        .find_map(|(k, set)| set.then_some(k));
        match (o.kind, numeric_key, categorical_key) {
            (_, Some(n), Some(c)) => {
                return Err(config(
                    &format!("columns.{name}"),
                    format!(
                        "{n} applies to numeric columns and {c} to categorical ones; a column is one kind"
                    ),
                ));
            }
            (Some(FeatureKind::Categorical), Some(n), _) => {
                return Err(config(
                    &format!("columns.{name}.{n}"),
                    "applies to numeric columns only; kind is categorical",
                ));
            }
            (Some(FeatureKind::Numeric), _, Some(c)) => {
                return Err(config(
                    &format!("columns.{name}.{c}"),
                    "applies to categorical columns only; kind is numeric",
                ));
            }
            _ => {}
        }
        if let Some(outliers) = &o.outliers {
            check_outliers(&format!("columns.{name}.outliers"), outliers)?;
        }
        if let Some(Value::Number(v)) = &o.fill_value {
            check_finite(&format!("columns.{name}.fill_value"), *v)?;
        }
        for s in o.sentinels.iter().flatten() {
            if let Value::Number(v) = s {
                check_finite(&format!("columns.{name}.sentinels"), *v)?;
            }
        }
    }
    Ok(())
}

fn check_finite(field: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(config(field, format!("{v} is not a finite number")))
    }
}

fn check_outliers(field: &str, o: &Outliers) -> Result<()> {
    if let Some(k) = o.k
        && !(k.is_finite() && k > 0.0)
    {
        return Err(config(
            &format!("{field}.k"),
            format!("{k} is not a finite number > 0"),
        ));
    }
    Ok(())
}

fn check_numeric_impute(field: &str, impute: Impute) -> Result<()> {
    match impute {
        Impute::Missing => Err(config(
            field,
            "\"missing\" applies to categorical columns only; numeric columns take mean, median, mode or constant",
        )),
        _ => Ok(()),
    }
}

fn check_categorical_impute(field: &str, impute: Impute) -> Result<()> {
    match impute {
        Impute::Mean | Impute::Median => Err(config(
            field,
            format!(
                "{:?} applies to numeric columns only; categorical columns take mode, constant or missing",
                impute.name()
            ),
        )),
        _ => Ok(()),
    }
}

fn resolve_numeric(name: &str, d: &NumericRules, o: &ColumnOverride) -> Result<NumericPlan> {
    let field = |f: &str| format!("columns.{name}.{f}");
    if o.encode.is_some() {
        return Err(config(
            &field("encode"),
            "applies to categorical columns only; this column is numeric",
        ));
    }
    if o.unknown.is_some() {
        return Err(config(
            &field("unknown"),
            "applies to categorical columns only; this column is numeric",
        ));
    }
    let impute = o.impute.unwrap_or(d.impute);
    check_numeric_impute(&field("impute"), impute)?;
    let fill_value = match &o.fill_value {
        None => d.fill_value,
        Some(Value::Number(v)) => *v,
        Some(Value::Text(t)) => {
            return Err(config(
                &field("fill_value"),
                format!("{t:?} is text; this column is numeric, give a number"),
            ));
        }
    };
    let sentinels = match &o.sentinels {
        None => d.sentinels.clone(),
        Some(list) => list
            .iter()
            .map(|v| match v {
                Value::Number(n) => Ok(*n),
                Value::Text(t) => Err(config(
                    &field("sentinels"),
                    format!("{t:?} is text; this column is numeric, give numbers"),
                )),
            })
            .collect::<Result<_>>()?,
    };
    Ok(NumericPlan {
        name: name.to_owned(),
        impute,
        fill_value,
        missing_indicator: o.missing_indicators.unwrap_or(d.missing_indicators),
        sentinels,
        outliers: o.outliers.unwrap_or(d.outliers),
        scale: o.scale.unwrap_or(d.scale),
    })
}

fn resolve_categorical(
    name: &str,
    d: &CategoricalRules,
    o: &ColumnOverride,
) -> Result<CategoricalPlan> {
    let field = |f: &str| format!("columns.{name}.{f}");
    if o.outliers.is_some() {
        return Err(config(
            &field("outliers"),
            "applies to numeric columns only; this column is categorical",
        ));
    }
    if o.scale.is_some() {
        return Err(config(
            &field("scale"),
            "applies to numeric columns only; this column is categorical",
        ));
    }
    let impute = o.impute.unwrap_or(d.impute);
    check_categorical_impute(&field("impute"), impute)?;
    let fill_value = match &o.fill_value {
        None => d.fill_value.clone(),
        Some(Value::Text(t)) => t.clone(),
        Some(Value::Number(v)) => {
            return Err(config(
                &field("fill_value"),
                format!("{v} is a number; this column is categorical, give a string"),
            ));
        }
    };
    let sentinels = match &o.sentinels {
        None => d.sentinels.clone(),
        Some(list) => list
            .iter()
            .map(|v| match v {
                Value::Text(t) => Ok(t.clone()),
                Value::Number(n) => Err(config(
                    &field("sentinels"),
                    format!("{n} is a number; this column is categorical, give strings"),
                )),
            })
            .collect::<Result<_>>()?,
    };
    Ok(CategoricalPlan {
        name: name.to_owned(),
        impute,
        fill_value,
        missing_indicator: o.missing_indicators.unwrap_or(d.missing_indicators),
        sentinels,
        encode: o.encode.unwrap_or(d.encode),
        unknown: o.unknown.unwrap_or(d.unknown),
    })
}
