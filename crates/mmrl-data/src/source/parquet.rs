//! Reading a Parquet file as the `datasets` library writes it: image and audio columns are `{bytes, path}`
//! structs, and the schema's `huggingface` metadata declares each column's feature (`Image`, `Audio`,
//! `ClassLabel` with its names).

use std::collections::BTreeMap;
use std::fs::File;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Field, Int64Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Column, ColumnKind, FilePart, FileRow, MediaKind, SourceFile, Value};
use crate::{Error, Result};

/// Rows per decoded batch: small enough that a batch of embedded images stays a few MiB.
const BATCH_ROWS: usize = 256;

/// Reads every row of a Parquet file; a row's line is its index + 1.
///
/// The parquet crate panics on some malformed files (metadata offsets out of range, found by the fuzz targets
/// in tests/tests/fuzz); a user's file must get an error naming it, so a panic while reading becomes one.
pub(super) fn read_parquet(file: &SourceFile) -> Result<FilePart> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_parquet_file(file)))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("malformed data");
            Err(Error::Dataset {
                path: file.path.clone(),
                message: format!("not a readable Parquet file: the Parquet reader failed: {why}"),
            })
        })
}

fn read_parquet_file(file: &SourceFile) -> Result<FilePart> {
    let parquet_error = |e: &dyn std::fmt::Display| Error::Dataset {
        path: file.path.clone(),
        message: format!("not a readable Parquet file: {e}"),
    };
    let (hash, bytes) = mmrl_artifact::hash::hash_file(&file.path)?;
    let handle = File::open(&file.path).map_err(|source| Error::Io {
        action: "opening the dataset file",
        path: file.path.clone(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(handle).map_err(|e| parquet_error(&e))?;
    let schema = builder.schema().clone();
    let features = hf_features(schema.metadata().get("huggingface").map(String::as_str));
    let columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            kind: column_kind(f, features.get(f.name())),
        })
        .collect();
    let class_labels: BTreeMap<String, Vec<String>> = columns
        .iter()
        .filter_map(|c| {
            let names = features.get(&c.name)?.class_names.clone()?;
            Some((c.name.clone(), names))
        })
        .collect();
    let reader = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| parquet_error(&e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(&e))?;
        let mut cells: Vec<Vec<Value>> = vec![Vec::new(); batch.num_rows()];
        for (column, array) in columns.iter().zip(batch.columns()) {
            let values = column_values(column, array, class_labels.get(&column.name))
                .map_err(|e| parquet_error(&format!("column {:?}: {e}", column.name)))?;
            for (row, value) in cells.iter_mut().zip(values) {
                row.push(value);
            }
        }
        for row in cells {
            rows.push(FileRow {
                line: rows.len() as u64 + 1,
                cells: row,
                malformed: None,
            });
        }
    }
    Ok(FilePart {
        rel: file.rel.clone(),
        hash,
        bytes,
        columns,
        class_labels,
        rows,
    })
}

/// What the `huggingface` schema metadata says about one column.
#[derive(Debug, Default, Clone)]
struct HfFeature {
    media: Option<MediaKind>,
    class_names: Option<Vec<String>>,
}

/// Parses `{"info": {"features": {name: {"_type": ..., "names": [...]}}}}`; anything unreadable is ignored, as
/// the columns' own types still say what they hold.
fn hf_features(metadata: Option<&str>) -> BTreeMap<String, HfFeature> {
    let Some(value) = metadata.and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
    else {
        return BTreeMap::new();
    };
    let Some(features) = value.pointer("/info/features").and_then(|f| f.as_object()) else {
        return BTreeMap::new();
    };
    features
        .iter()
        .map(|(name, feature)| {
            let kind = feature.get("_type").and_then(|t| t.as_str());
            let media = match kind {
                Some("Image") => Some(MediaKind::Image),
                Some("Audio") => Some(MediaKind::Audio),
                _ => None,
            };
            let class_names = (kind == Some("ClassLabel"))
                .then(|| feature.get("names").and_then(|n| n.as_array()))
                .flatten()
                .map(|names| {
                    names
                        .iter()
                        .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_owned))
                        .collect()
                });
            (name.clone(), HfFeature { media, class_names })
        })
        .collect()
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// A column's kind from its Arrow type and declared feature: a struct of `bytes` (binary) and/or `path` (text, or
/// null when pandas saw no path at all) and nothing else is media, the `datasets` Image/Audio storage.
fn column_kind(field: &Field, feature: Option<&HfFeature>) -> ColumnKind {
    let declared = feature.and_then(|f| f.media);
    match field.data_type() {
        DataType::Struct(children) => {
            let media_shape = !children.is_empty()
                && children.iter().all(|c| {
                    (c.name() == "bytes" && is_binary(c.data_type()))
                        || (c.name() == "path"
                            && (is_string(c.data_type()) || *c.data_type() == DataType::Null))
                });
            if media_shape {
                ColumnKind::MediaStruct { declared }
            } else {
                nested(field)
            }
        }
        t if is_binary(t) => ColumnKind::Binary,
        DataType::Null | DataType::Boolean => ColumnKind::Value,
        t if t.is_integer() || t.is_floating() || is_string(t) => ColumnKind::Value,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => ColumnKind::Value,
        DataType::Dictionary(_, _) if can_cast_types(field.data_type(), &DataType::Utf8) => {
            ColumnKind::Value
        }
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::Map(..)
        | DataType::Union(..)
        | DataType::RunEndEncoded(..)
        | DataType::Dictionary(..) => nested(field),
        // Dates, times, durations: kept as their text.
        t if can_cast_types(t, &DataType::Utf8) => ColumnKind::Value,
        _ => nested(field),
    }
}

fn nested(field: &Field) -> ColumnKind {
    ColumnKind::Nested {
        type_name: field.data_type().to_string(),
    }
}

/// One batch column as cells.
fn column_values(
    column: &Column,
    array: &ArrayRef,
    class_names: Option<&Vec<String>>,
) -> std::result::Result<Vec<Value>, arrow::error::ArrowError> {
    let len = array.len();
    let out = match &column.kind {
        ColumnKind::MediaStruct { .. } => {
            let structs = array.as_struct();
            let child = |name: &str, to: &DataType| -> std::result::Result<Option<ArrayRef>, _> {
                structs
                    .column_by_name(name)
                    .map(|c| cast(c, to))
                    .transpose()
            };
            let bytes = child("bytes", &DataType::LargeBinary)?;
            let paths = child("path", &DataType::LargeUtf8)?;
            (0..len)
                .map(|i| {
                    let bytes = bytes
                        .as_ref()
                        .map(|b| b.as_binary::<i64>())
                        .filter(|b| b.is_valid(i) && structs.is_valid(i))
                        .map(|b| b.value(i).to_vec());
                    let path = paths
                        .as_ref()
                        .map(|p| p.as_string::<i64>())
                        .filter(|p| p.is_valid(i) && structs.is_valid(i))
                        .map(|p| p.value(i).to_owned());
                    if bytes.is_none() && path.is_none() {
                        Value::Null
                    } else {
                        Value::Media { bytes, path }
                    }
                })
                .collect()
        }
        ColumnKind::Binary => {
            let cast = cast(array, &DataType::LargeBinary)?;
            let binary = cast.as_binary::<i64>();
            (0..len)
                .map(|i| match binary.is_valid(i) {
                    true => Value::Media {
                        bytes: Some(binary.value(i).to_vec()),
                        path: None,
                    },
                    false => Value::Null,
                })
                .collect()
        }
        ColumnKind::Nested { .. } => (0..len)
            .map(|i| match array.is_valid(i) {
                true => Value::Nested,
                false => Value::Null,
            })
            .collect(),
        ColumnKind::Value | ColumnKind::FileName { .. } => scalar_values(array, class_names)?,
    };
    Ok(out)
}

/// Scalars: booleans, integers (class labels become their names), floats, and everything else as text.
fn scalar_values(
    array: &ArrayRef,
    class_names: Option<&Vec<String>>,
) -> std::result::Result<Vec<Value>, arrow::error::ArrowError> {
    let len = array.len();
    let t = array.data_type();
    let values: Vec<Value> = if *t == DataType::Null {
        vec![Value::Null; len]
    } else if *t == DataType::Boolean {
        let b = array.as_boolean();
        (0..len)
            .map(|i| valid_or_null(b.is_valid(i), || Value::Bool(b.value(i))))
            .collect()
    } else if *t == DataType::UInt64 {
        let a = array.as_primitive::<UInt64Type>();
        (0..len)
            .map(|i| {
                valid_or_null(a.is_valid(i), || {
                    let v = a.value(i);
                    i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
                })
            })
            .collect()
    } else if t.is_integer() {
        let cast = cast(array, &DataType::Int64)?;
        let a = cast.as_primitive::<Int64Type>();
        (0..len)
            .map(|i| valid_or_null(a.is_valid(i), || Value::Int(a.value(i))))
            .collect()
    } else if t.is_floating()
        || matches!(
            t,
            DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
        )
    {
        let cast = cast(array, &DataType::Float64)?;
        let a = cast.as_primitive::<arrow::datatypes::Float64Type>();
        (0..len)
            .map(|i| valid_or_null(a.is_valid(i), || Value::Float(a.value(i))))
            .collect()
    } else {
        let cast = cast(array, &DataType::LargeUtf8)?;
        let a = cast.as_string::<i64>();
        (0..len)
            .map(|i| valid_or_null(a.is_valid(i), || Value::Text(a.value(i).to_owned())))
            .collect()
    };
    Ok(match class_names {
        Some(names) => values.into_iter().map(|v| class_label(v, names)).collect(),
        None => values,
    })
}

/// The cell's value when Arrow says it is valid, missing otherwise.
fn valid_or_null(valid: bool, value: impl FnOnce() -> Value) -> Value {
    if valid { value() } else { Value::Null }
}

/// A `ClassLabel` index as its name; `-1` is `datasets`' "no label" and becomes missing.
fn class_label(value: Value, names: &[String]) -> Value {
    match value {
        Value::Int(-1) => Value::Null,
        Value::Int(i) => match usize::try_from(i).ok().and_then(|i| names.get(i)) {
            Some(name) => Value::Text(name.clone()),
            None => Value::Invalid(format!(
                "class label {i} is not an index of the column's {} ClassLabel names",
                names.len()
            )),
        },
        other => other,
    }
}
