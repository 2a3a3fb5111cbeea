//! The fitted state: every statistic [`fit`](crate::fit) learned from the train rows, serialized as
//! `state.json`. [`transform`](crate::transform) applies it unchanged to any frame.

use serde::{Deserialize, Serialize};

use crate::recipe::{Encode, FlagType, Impute, OutlierAction, OutlierRule, Scale, Unknown};
use crate::{Error, Result};

/// The version of the state format; [`TabularState::from_json`] refuses others.
pub const STATE_VERSION: u32 = 1;

/// Ordinal code of a missing value (also of an unseen one under `unknown = "ignore"`).
pub const MISSING_CODE: u32 = 0;
/// Ordinal code of a category that never occurred in train (`unknown = "bucket"`).
pub const UNSEEN_CODE: u32 = 1;
/// Ordinal code of the first train category; category `i` of [`CategoricalState::categories`] is `2 + i`.
pub const FIRST_CATEGORY_CODE: u32 = 2;

/// Suffix of a missing-indicator column: `COL__missing`.
pub const MISSING_SUFFIX: &str = "__missing";
/// One-hot column value for missing values: `COL=__missing__`.
pub const ONE_HOT_MISSING: &str = "__missing__";
/// One-hot column value for categories unseen in train: `COL=__unseen__`.
pub const ONE_HOT_UNSEEN: &str = "__unseen__";

/// Everything learned from train: apply it with [`transform`](crate::transform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabularState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Train rows given to `fit`.
    pub train_rows: u64,
    /// Train rows left after the outlier drop rules; the imputation, scaling and vocabulary statistics come from
    /// these.
    pub train_rows_kept: u64,
    /// The type of indicator and one-hot columns.
    pub flags: FlagType,
    /// One entry per feature, in output order.
    pub columns: Vec<ColumnState>,
}

/// The fitted state of one feature column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnState {
    /// A numeric column.
    Numeric(NumericState),
    /// A categorical column.
    Categorical(CategoricalState),
}

impl ColumnState {
    /// The input column name.
    pub fn name(&self) -> &str {
        match self {
            ColumnState::Numeric(n) => &n.name,
            ColumnState::Categorical(c) => &c.name,
        }
    }

    /// Fallbacks taken while fitting (all-null or constant column, empty vocabulary).
    pub fn warnings(&self) -> &[String] {
        match self {
            ColumnState::Numeric(n) => &n.warnings,
            ColumnState::Categorical(c) => &c.warnings,
        }
    }
}

/// Fitted outlier bounds; values outside `[lower, upper]` are outliers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedOutliers {
    /// The rule the bounds came from.
    pub rule: OutlierRule,
    /// Its multiplier.
    pub k: f64,
    /// Clip or drop.
    pub action: OutlierAction,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

/// The fitted state of a numeric column. Output: `(clip(x) filled - center) / scale` as `Float32`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericState {
    /// The column.
    pub name: String,
    /// Values that become missing.
    pub sentinels: Vec<f64>,
    /// Outlier bounds; `None` when there is no rule or it fell back (see `warnings`).
    pub outliers: Option<FittedOutliers>,
    /// The imputation rule.
    pub impute: Impute,
    /// The value missing entries are filled with.
    pub fill: f64,
    /// Whether a `COL__missing` column is written.
    pub missing_indicator: bool,
    /// The normalization rule.
    pub scale: Scale,
    /// Subtracted before scaling.
    pub center: f64,
    /// Divided by after centering; never 0.
    pub scale_by: f64,
    /// Non-missing train values (after sentinels) the statistics saw.
    pub train_values: u64,
    /// Fallbacks taken while fitting.
    pub warnings: Vec<String>,
}

/// The fitted state of a categorical column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalState {
    /// The column.
    pub name: String,
    /// Whether the input column is numeric and its values are compared as text.
    pub cast_from_numeric: bool,
    /// Values that become missing.
    pub sentinels: Vec<String>,
    /// The imputation rule.
    pub impute: Impute,
    /// The category missing entries are filled with; `None` keeps them missing.
    pub fill: Option<String>,
    /// Whether a `COL__missing` column is written.
    pub missing_indicator: bool,
    /// Ordinal or one-hot.
    pub encode: Encode,
    /// Unseen-category handling.
    pub unknown: Unknown,
    /// The train vocabulary in byte order: category `i` has ordinal code `2 + i`.
    pub categories: Vec<String>,
    /// Fallbacks taken while fitting.
    pub warnings: Vec<String>,
}

impl CategoricalState {
    /// The number of distinct ordinal codes (missing, unseen, then the categories): an embedding table size.
    pub fn cardinality(&self) -> u32 {
        FIRST_CATEGORY_CODE + self.categories.len() as u32
    }

    /// The code an unseen category gets.
    pub fn unseen_code(&self) -> u32 {
        match self.unknown {
            Unknown::Bucket => UNSEEN_CODE,
            Unknown::Ignore => MISSING_CODE,
        }
    }
}

/// The type of an output column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// A normalized value, a missing indicator or a one-hot column.
    Float32,
    /// An ordinal category code.
    UInt32,
    /// An indicator or one-hot column under [`FlagType::Boolean`].
    Boolean,
}

impl TabularState {
    /// The feature columns `transform` writes after the passthrough columns, in order.
    pub fn output_columns(&self) -> Vec<(String, OutputType)> {
        let flag = match self.flags {
            FlagType::Float32 => OutputType::Float32,
            FlagType::Boolean => OutputType::Boolean,
        };
        let mut out = Vec::new();
        for column in &self.columns {
            match column {
                ColumnState::Numeric(n) => {
                    out.push((n.name.clone(), OutputType::Float32));
                    if n.missing_indicator {
                        out.push((format!("{}{MISSING_SUFFIX}", n.name), flag));
                    }
                }
                ColumnState::Categorical(c) => {
                    match c.encode {
                        Encode::Ordinal => out.push((c.name.clone(), OutputType::UInt32)),
                        Encode::OneHot => {
                            for value in one_hot_values(c) {
                                out.push((format!("{}={value}", c.name), flag));
                            }
                        }
                    }
                    if c.missing_indicator {
                        out.push((format!("{}{MISSING_SUFFIX}", c.name), flag));
                    }
                }
            }
        }
        out
    }

    /// The embedding table size of each ordinal column, by output column name.
    pub fn cardinalities(&self) -> Vec<(String, u32)> {
        self.columns
            .iter()
            .filter_map(|c| match c {
                ColumnState::Categorical(c) if c.encode == Encode::Ordinal => {
                    Some((c.name.clone(), c.cardinality()))
                }
                _ => None,
            })
            .collect()
    }

    /// The state as pretty JSON, byte-identical for equal states.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::State(format!("serializing: {e}")))
    }

    /// Parses `state.json`, refusing another format version.
    pub fn from_json(text: &str) -> Result<Self> {
        let state: Self =
            serde_json::from_str(text).map_err(|e| Error::State(format!("parsing: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(Error::State(format!(
                "version {} is not the supported {STATE_VERSION}",
                state.version
            )));
        }
        Ok(state)
    }
}

/// The category values that get a one-hot column, in column order (the `COL=` part is added by the caller).
pub(crate) fn one_hot_values(c: &CategoricalState) -> Vec<String> {
    let mut values = c.categories.clone();
    if c.fill.is_none() {
        values.push(ONE_HOT_MISSING.to_owned());
    }
    if c.unknown == Unknown::Bucket {
        values.push(ONE_HOT_UNSEEN.to_owned());
    }
    values
}
