//! mmrl's tabular stage: missing values, outliers, normalization and categorical encoding, fit on train only,
//! on polars lazy frames.
//!
//! The core works on any polars frame with declared numeric and categorical columns:
//! [`fit`] learns a [`TabularState`] from train rows (serializable as `state.json`), [`transform`] applies it
//! unchanged to any frame (val, test, or new data at inference time), [`quality`] reports per column what was
//! found and done. [`stage`] wraps the core as the pipeline stage that reads select's artifact and writes
//! `tabular.parquet`, `state.json`, `quality.parquet` and `rejects.parquet`.
//!
//! ```no_run
//! use mmrl_artifact::sample::FeatureKind;
//! use mmrl_tabular::{Recipe, fit, transform};
//! use polars::prelude::*;
//!
//! # fn main() -> mmrl_tabular::Result<()> {
//! let df = df!("split" => ["train", "train", "val"], "x" => [1.0, -999.0, 3.0], "c" => ["a", "b", "z"]).unwrap();
//! let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric), ("c".into(), FeatureKind::Categorical)]);
//! recipe.numeric.sentinels = vec![-999.0];
//! let state = fit(df.clone().lazy().filter(col("split").eq(lit("train"))), &recipe)?;
//! let clean = transform(df.lazy(), &state)?.collect().unwrap();
//! let saved = state.to_json()?; // later: TabularState::from_json(&saved)?
//! # Ok(()) }
//! ```

mod error;
mod exprs;
mod fit;
pub mod io;
mod quality;
pub mod recipe;
pub mod stage;
#[cfg(test)]
mod stage_tests;
mod state;
#[cfg(test)]
mod tests;
mod transform;

pub use error::{Error, Result};
pub use fit::{MAD_TO_STD, fit};
pub use quality::{QualityReport, QualityRow, Summary, quality};
pub use recipe::{
    CategoricalRules, ColumnOverride, Encode, FlagType, Impute, NumericRules, OutlierAction,
    OutlierRule, Outliers, Recipe, Scale, Unknown, Value,
};
pub use state::{
    CategoricalState, ColumnState, FIRST_CATEGORY_CODE, FittedOutliers, MISSING_CODE,
    MISSING_SUFFIX, NumericState, ONE_HOT_MISSING, ONE_HOT_UNSEEN, OutputType, STATE_VERSION,
    TabularState, UNSEEN_CODE,
};
pub use transform::{DROP_COLUMN, DROP_VALUE, dropped, transform};

// Re-exported so that library users build frames against the exact polars this crate uses.
pub use polars;
