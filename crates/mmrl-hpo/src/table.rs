//! The trials table (`trials.parquet` of the hpo artifact): one row per trial. The study's live record
//! is its journal (`journal.jsonl` in the study directory).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
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
