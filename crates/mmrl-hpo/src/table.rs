//! The trials table (`trials.parquet`): one row per trial, written into the study directory after every
//! trial and into the hpo artifact at the end.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Result, io};
use crate::storage::TrialRecord;

/// The table's schema.
pub fn trials_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("number", DataType::UInt64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("params_json", DataType::Utf8, false),
        Field::new("duration_s", DataType::Float64, true),
        Field::new("intermediate_json", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("retry_of", DataType::UInt64, true),
    ]))
}

/// The trials as one batch.
pub fn trials_batch(trials: &[TrialRecord]) -> Result<RecordBatch> {
    let json = |v: &dyn erased::Json| v.to_json();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            trials.iter().map(|t| t.number),
        )),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|t| t.state.as_str()),
        )),
        Arc::new(Float64Array::from_iter(trials.iter().map(|t| t.value))),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|t| json(&t.params)),
        )),
        Arc::new(Float64Array::from_iter(trials.iter().map(|t| t.duration_s))),
        Arc::new(StringArray::from_iter_values(trials.iter().map(|t| {
            let m: std::collections::BTreeMap<String, f64> = t
                .intermediate
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            json(&m)
        }))),
        Arc::new(StringArray::from_iter(
            trials.iter().map(|t| t.error.clone()),
        )),
        Arc::new(UInt64Array::from_iter(trials.iter().map(|t| t.retry_of))),
    ];
    Ok(RecordBatch::try_new(trials_schema(), columns)?)
}

mod erased {
    /// Serializes anything to a JSON string ("null" on failure, which cannot happen for these types).
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}

/// Writes `trials.parquet` at `path` atomically (temporary file, then rename).
pub fn write_trials_parquet(path: &Path, trials: &[TrialRecord]) -> Result<()> {
    let batch = trials_batch(trials)?;
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, trials_schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    Ok(())
}
