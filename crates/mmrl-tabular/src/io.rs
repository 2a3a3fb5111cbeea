//! Parquet in and out through arrow-rs, with safe copies between arrow-rs arrays and polars columns.
//!
//! Polars does the column work; reading and writing stay on arrow-rs (the workspace's Parquet stack), so the
//! tables this crate writes have exactly the Arrow types `mmrl_artifact` readers expect (`Utf8`, not views) and
//! polars builds without its I/O and streaming crates. The copies are plain iterations: no FFI, no `unsafe`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, StringArray, UInt32Array,
};
use arrow::datatypes::{
    DataType as ArrowType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use polars::prelude::*;
use polars_arrow::bitmap::Bitmap;

use crate::error::pl;
use crate::{Error, Result};

/// Reads the Parquet file at `path` into one polars frame with single-chunk columns. `columns` selects and
/// orders the columns (all of them when `None`), so wide binary columns are never decoded.
///
/// Unsigned integers become `UInt64`, signed ones `Int64`, floats `Float64`, text columns (`Utf8`, `LargeUtf8`,
/// views, dictionaries) `String`, and `Boolean` stays `Boolean`; any other type is an error naming the column.
pub fn read_parquet(path: &Path, columns: Option<&[&str]>) -> Result<DataFrame> {
    let mut frames = read_parquet_batches(path, columns, None)?;
    match frames.len() {
        0 => Err(Error::Data(format!("{}: no batches read", path.display()))),
        1 => Ok(frames.remove(0)),
        _ => {
            let mut frame = frames.remove(0);
            for f in &frames {
                frame
                    .vstack_mut(f)
                    .map_err(pl(format!("assembling {}", path.display())))?;
            }
            frame.rechunk_mut();
            Ok(frame)
        }
    }
}

/// Like [`read_parquet`], in frames of at most `batch_rows` rows (one frame for the whole file when `None`), so a
/// caller can process and free the input piece by piece. Always at least one frame, empty for an empty file.
pub fn read_parquet_batches(
    path: &Path,
    columns: Option<&[&str]>,
    batch_rows: Option<usize>,
) -> Result<Vec<DataFrame>> {
    let parquet_err =
        |e: parquet::errors::ParquetError| Error::Data(format!("{}: parquet: {e}", path.display()));
    let open =
        || File::open(path).map_err(|e| Error::Data(format!("opening {}: {e}", path.display())));
    let plain = ParquetRecordBatchReaderBuilder::try_new(open()?).map_err(parquet_err)?;
    let schema = plain.schema().clone();
    let rows = usize::try_from(plain.metadata().file_metadata().num_rows()).unwrap_or(0);
    let wanted: Vec<String> = match columns {
        Some(names) => names.iter().map(|n| (*n).to_owned()).collect(),
        None => schema.fields().iter().map(|f| f.name().clone()).collect(),
    };
    let mut indices = Vec::with_capacity(wanted.len());
    for name in &wanted {
        match schema.index_of(name) {
            Ok(i) => indices.push(i),
            Err(_) => {
                return Err(Error::UnknownColumn {
                    field: path.display().to_string(),
                    column: name.clone(),
                    available: column_list(&schema),
                });
            }
        }
    }
    for &i in &indices {
        polars_type(schema.field(i))?;
    }
    // Text is decoded as dictionaries (how Parquet usually stores it): far fewer string copies, and polars
    // gathers the few distinct values by code.
    let hinted = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                ArrowType::Utf8 | ArrowType::LargeUtf8 => Field::new(
                    f.name(),
                    ArrowType::Dictionary(Box::new(ArrowType::Int32), Box::new(ArrowType::Utf8)),
                    f.is_nullable(),
                ),
                _ => (**f).clone(),
            })
            .collect::<Vec<_>>(),
    ));
    let builder = match ParquetRecordBatchReaderBuilder::try_new_with_options(
        open()?,
        ArrowReaderOptions::new().with_schema(hinted),
    ) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "dictionary decoding refused, reading text plainly");
            plain
        }
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let batch_rows = batch_rows.unwrap_or(rows).clamp(1, rows.max(1));
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_err)?;
    let mut frames = Vec::new();
    let (mut decode, mut convert) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut reader = reader;
    loop {
        let started = std::time::Instant::now();
        let Some(batch) = reader.next() else { break };
        decode += started.elapsed();
        let started = std::time::Instant::now();
        let batch = batch.map_err(|e| Error::Data(format!("{}: reading: {e}", path.display())))?;
        let mut out = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let i = batch.schema().index_of(name)?;
            let t = std::time::Instant::now();
            out.push(to_polars(batch.schema().field(i), batch.column(i))?);
            tracing::trace!(column = %name, us = t.elapsed().as_micros() as u64, "converted");
        }
        frames.push(
            DataFrame::new(batch.num_rows(), out)
                .map_err(pl(format!("assembling {}", path.display())))?,
        );
        convert += started.elapsed();
    }
    tracing::debug!(
        decode_ms = decode.as_millis() as u64,
        convert_ms = convert.as_millis() as u64,
        "read {}",
        path.display()
    );
    if frames.is_empty() {
        let columns = wanted
            .iter()
            .map(|name| {
                let field = schema.field_with_name(name).map_err(Error::Arrow)?;
                Ok(Column::full_null(
                    name.as_str().into(),
                    0,
                    &polars_type(field)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        frames.push(DataFrame::new(0, columns).map_err(pl("building an empty frame"))?);
    }
    Ok(frames)
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn polars_type(field: &Field) -> Result<DataType> {
    Ok(match field.data_type() {
        t if t.is_unsigned_integer() => DataType::UInt64,
        t if t.is_integer() => DataType::Int64,
        t if t.is_numeric() => DataType::Float64,
        ArrowType::Boolean => DataType::Boolean,
        ArrowType::Utf8
        | ArrowType::LargeUtf8
        | ArrowType::Utf8View
        | ArrowType::Dictionary(_, _) => DataType::String,
        other => {
            return Err(Error::UnsupportedType {
                column: field.name().clone(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// Copies an arrow-rs array into a single-chunk polars column: values by memcpy, validity as a bitmap.
fn to_polars(field: &Field, array: &ArrayRef) -> Result<Column> {
    let name: PlSmallStr = field.name().as_str().into();
    let cast = |to: &ArrowType| arrow::compute::cast(array, to).map_err(Error::Arrow);
    let series = match polars_type(field)? {
        DataType::Float64 => {
            let a = cast(&ArrowType::Float64)?;
            let a = a.as_primitive::<Float64Type>();
            Float64Chunked::from_vec_validity(name, a.values().to_vec(), validity(a.nulls()))
                .into_series()
        }
        DataType::UInt64 => {
            let a = cast(&ArrowType::UInt64)?;
            let a = a.as_primitive::<UInt64Type>();
            UInt64Chunked::from_vec_validity(name, a.values().to_vec(), validity(a.nulls()))
                .into_series()
        }
        DataType::Int64 => {
            let a = cast(&ArrowType::Int64)?;
            let a = a.as_primitive::<Int64Type>();
            Int64Chunked::from_vec_validity(name, a.values().to_vec(), validity(a.nulls()))
                .into_series()
        }
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .collect::<BooleanChunked>()
            .with_name(name)
            .into_series(),
        _ => match array.data_type() {
            ArrowType::Dictionary(_, _) => {
                // The distinct values once, then a gather by code: no per-row string copies.
                let dict = cast(&ArrowType::Dictionary(
                    Box::new(ArrowType::Int32),
                    Box::new(ArrowType::Utf8),
                ))?;
                let dict = dict.as_dictionary::<Int32Type>();
                let values = dict
                    .values()
                    .as_string::<i32>()
                    .iter()
                    .collect::<StringChunked>()
                    .with_name(name);
                let keys = dict.keys();
                let codes: Vec<IdxSize> =
                    keys.values().iter().map(|&k| k.max(0) as IdxSize).collect();
                let codes = IdxCa::from_vec_validity("codes".into(), codes, validity(keys.nulls()));
                values
                    .take(&codes)
                    .map_err(pl(format!("decoding the dictionary of {:?}", field.name())))?
                    .into_series()
            }
            _ => cast(&ArrowType::Utf8)?
                .as_string::<i32>()
                .iter()
                .collect::<StringChunked>()
                .with_name(name)
                .into_series(),
        },
    };
    Ok(series.into_column())
}

/// An arrow-rs null buffer as a polars validity bitmap (`None` when nothing is null).
fn validity(nulls: Option<&arrow::buffer::NullBuffer>) -> Option<Bitmap> {
    let nulls = nulls.filter(|n| n.null_count() > 0)?;
    let bits = nulls.inner();
    let start = bits.offset() / 8;
    let aligned = bits
        .values()
        .get(start..start + bits.len().div_ceil(8))
        .filter(|_| bits.offset() % 8 == 0);
    Some(match aligned {
        Some(bytes) => Bitmap::from_u8_vec(bytes.to_vec(), bits.len()),
        None => bits.iter().collect(),
    })
}

/// The Arrow type a polars output column is written as.
fn arrow_type(dtype: &DataType, column: &str) -> Result<ArrowType> {
    Ok(match dtype {
        DataType::String => ArrowType::Utf8,
        DataType::Float32 => ArrowType::Float32,
        DataType::UInt32 => ArrowType::UInt32,
        DataType::Boolean => ArrowType::Boolean,
        other => {
            return Err(Error::UnsupportedType {
                column: column.to_owned(),
                dtype: other.to_string(),
            });
        }
    })
}

/// Copies a polars frame of `String`, `Float32`, `UInt32` and `Boolean` columns into one arrow-rs batch. Every
/// column is declared non-null except those named in `nullable`; a null in a non-null column is an error.
pub fn to_record_batch(df: &DataFrame, nullable: &[&str]) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(df.width());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(df.width());
    for column in df.columns() {
        let name = column.name().as_str();
        let dtype = arrow_type(column.dtype(), name)?;
        let array: ArrayRef = match column.dtype() {
            DataType::String => Arc::new(
                column
                    .str()
                    .map_err(pl(name))?
                    .iter()
                    .collect::<StringArray>(),
            ),
            DataType::Float32 => Arc::new(
                column
                    .f32()
                    .map_err(pl(name))?
                    .iter()
                    .collect::<Float32Array>(),
            ),
            DataType::UInt32 => Arc::new(
                column
                    .u32()
                    .map_err(pl(name))?
                    .iter()
                    .collect::<UInt32Array>(),
            ),
            _ => Arc::new(
                column
                    .bool()
                    .map_err(pl(name))?
                    .iter()
                    .collect::<BooleanArray>(),
            ),
        };
        fields.push(Field::new(name, dtype, nullable.contains(&name)));
        arrays.push(array);
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new(schema, arrays)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_round_trip_keeps_values_nulls_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", ArrowType::Utf8, true),
            Field::new("i", ArrowType::Int64, true),
            Field::new("f", ArrowType::Float64, true),
            Field::new("blob", ArrowType::Binary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(arrow::array::Int64Array::from(vec![Some(1), Some(2), None])),
                Arc::new(arrow::array::Float64Array::from(vec![1.5, 2.5, 3.5])),
                Arc::new(arrow::array::BinaryArray::from(vec![
                    Some(&b"x"[..]),
                    None,
                    None,
                ])),
            ],
        )
        .unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), schema, None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let df = read_parquet(&path, Some(&["f", "s", "i"])).unwrap();
        assert_eq!(
            df.get_column_names()
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>(),
            ["f", "s", "i"]
        );
        assert_eq!(
            df.column("s")
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [Some("a"), None, Some("c")]
        );
        assert_eq!(
            df.column("i")
                .unwrap()
                .i64()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [Some(1), Some(2), None]
        );
        assert_eq!(
            df.column("f")
                .unwrap()
                .f64()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [Some(1.5), Some(2.5), Some(3.5)]
        );

        let batches = read_parquet_batches(&path, Some(&["s", "f"]), Some(2)).unwrap();
        assert_eq!(
            batches.iter().map(DataFrame::height).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(
            batches[1].column("s").unwrap().str().unwrap().get(0),
            Some("c")
        );

        let err = read_parquet(&path, Some(&["nope"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("s, i, f, blob"),
            "{err}"
        );
        let err = read_parquet(&path, Some(&["blob"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"blob\"") && err.contains("Binary"), "{err}");
    }

    #[test]
    fn record_batch_rejects_nulls_in_non_null_columns() {
        let df = DataFrame::new(
            2,
            vec![
                Column::new("id".into(), &["a", "b"]),
                Column::new("x".into(), &[Some(1.0f32), None]),
            ],
        )
        .unwrap();
        let batch = to_record_batch(&df, &["x"]).unwrap();
        assert_eq!(batch.schema().field(0).data_type(), &ArrowType::Utf8);
        assert_eq!(batch.schema().field(1).data_type(), &ArrowType::Float32);
        assert!(to_record_batch(&df, &[]).is_err());
    }
}
