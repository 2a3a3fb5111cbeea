//! Training-history sources for the report: the sft and rl artifacts' `metrics_steps` / `metrics_val` tables
//! and the hpo artifact's `trials` table, read leniently (any numeric column type; missing tables or columns
//! are reported as absent, never an error).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, UInt16Type, UInt32Type, UInt64Type,
};
use mmrl_artifact::Artifact;

/// A table as columns: numeric ones as `f64`, text ones as strings (nulls as `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Columns {
    /// Rows.
    pub rows: usize,
    /// Numeric and boolean columns.
    pub numeric: BTreeMap<String, Vec<Option<f64>>>,
    /// Utf8 columns.
    pub text: BTreeMap<String, Vec<Option<String>>>,
}

impl Columns {
    /// Reads table `name` of `artifact`; `None` when the artifact has no such table or it cannot be read.
    pub fn read(artifact: &Artifact, name: &str) -> Option<Self> {
        let (schema, batches) = artifact.read_table(name).ok()?;
        let mut out = Columns::default();
        for (k, field) in schema.fields().iter().enumerate() {
            let mut num: Vec<Option<f64>> = Vec::new();
            let mut text: Vec<Option<String>> = Vec::new();
            let is_text = matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8);
            for b in &batches {
                let col = b.column(k);
                macro_rules! prim {
                    ($t:ty) => {
                        num.extend(col.as_primitive::<$t>().iter().map(|v| v.map(|x| x as f64)))
                    };
                }
                match col.data_type() {
                    DataType::Float64 => prim!(Float64Type),
                    DataType::Float32 => num.extend(
                        col.as_primitive::<Float32Type>()
                            .iter()
                            .map(|v| v.map(f64::from)),
                    ),
                    DataType::UInt64 => prim!(UInt64Type),
                    DataType::UInt32 => prim!(UInt32Type),
                    DataType::UInt16 => prim!(UInt16Type),
                    DataType::Int64 => prim!(Int64Type),
                    DataType::Int32 => prim!(Int32Type),
                    DataType::Boolean => num.extend(
                        col.as_boolean()
                            .iter()
                            .map(|v| v.map(|x| f64::from(u8::from(x)))),
                    ),
                    DataType::Utf8 => {
                        text.extend(col.as_string::<i32>().iter().map(|v| v.map(str::to_owned)))
                    }
                    DataType::LargeUtf8 => {
                        text.extend(col.as_string::<i64>().iter().map(|v| v.map(str::to_owned)))
                    }
                    _ => {}
                }
            }
            if is_text {
                out.text.insert(field.name().clone(), text);
            } else if num.len() == batches.iter().map(|b| b.num_rows()).sum::<usize>() {
                out.numeric.insert(field.name().clone(), num);
            }
        }
        out.rows = batches.iter().map(|b| b.num_rows()).sum();
        Some(out)
    }

    /// Points `(x, y)` of two numeric columns where both are present and finite, optionally only rows whose
    /// text column `filter.0` equals `filter.1`.
    pub fn points(&self, x: &str, y: &str, filter: Option<(&str, &str)>) -> Vec<(f64, f64)> {
        let (Some(xs), Some(ys)) = (self.numeric.get(x), self.numeric.get(y)) else {
            return Vec::new();
        };
        let keep = |i: usize| match filter {
            None => true,
            Some((col, value)) => self
                .text
                .get(col)
                .is_none_or(|c| c[i].as_deref() == Some(value)),
        };
        (0..self.rows.min(xs.len()).min(ys.len()))
            .filter(|&i| keep(i))
            .filter_map(|i| match (xs[i], ys[i]) {
                (Some(a), Some(b)) if a.is_finite() && b.is_finite() => Some((a, b)),
                _ => None,
            })
            .collect()
    }
}

/// Averages consecutive points in windows so a long curve stays readable (`max` points at most).
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let w = points.len().div_ceil(max);
    points
        .chunks(w)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}
