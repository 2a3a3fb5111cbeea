//! Tiny artifacts built in code: a select-like samples table, an image table and a tabular table.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray, UInt16Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use mmrl_artifact::sample::{sample_schema, tensor_field};
use mmrl_artifact::{ArtifactWriter, Role, StageInfo};
use mmrl_model::data::InputPaths;

pub const SIDE: usize = 8;

pub fn info(stage: &str) -> StageInfo {
    StageInfo {
        stage: stage.into(),
        crate_name: "test".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: None,
    }
}

/// One synthetic sample: (id, split, qtype, question, answer, image colour 0/1 or None, numeric value, category).
#[derive(Clone, Debug)]
pub struct Row {
    pub id: String,
    pub split: &'static str,
    pub qtype: &'static str,
    pub question: String,
    pub answer: String,
    pub colour: Option<usize>,
    pub value: f32,
    pub category: u32,
}

/// `n` samples: "what color" (from the image), "is it high" (from the numeric feature), "which group" (from
/// the categorical feature). Splits: 70% train, 30% val.
pub fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let split = if i % 10 < 7 { "train" } else { "val" };
            let colour = (i / 3) % 2;
            let value = ((i * 7919) % 100) as f32 / 50.0 - 1.0;
            let category = ((i / 3) % 3) as u32;
            let (qtype, question, answer) = match i % 3 {
                0 => (
                    "colour",
                    "what color is it".to_owned(),
                    if colour == 0 { "red" } else { "blue" }.to_owned(),
                ),
                1 => (
                    "level",
                    "is it high".to_owned(),
                    if value > 0.0 { "yes" } else { "no" }.to_owned(),
                ),
                _ => ("group", "which group".to_owned(), format!("g {category}")),
            };
            Row {
                id: format!("s{i:04}"),
                split,
                qtype,
                question,
                answer,
                colour: Some(colour),
                value,
                category,
            }
        })
        .collect()
}

pub fn write_samples(dir: &Path, rows: &[Row]) -> PathBuf {
    write_samples_with(dir, rows, Vec::new())
}

/// [`write_samples`] with extra columns after `repeat` (select's `labeled`, checker columns).
pub fn write_samples_with(dir: &Path, rows: &[Row], extra: Vec<(Field, ArrayRef)>) -> PathBuf {
    let base = sample_schema(&[]);
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("repeat", DataType::UInt32, false));
    fields.extend(extra.iter().map(|(f, _)| f.clone()));
    let schema = Arc::new(Schema::new(fields));
    let n = rows.len();
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.id.clone()),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.split))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "t"))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.qtype))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.question.clone()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.answer.clone()),
        )),
        Arc::new(BinaryArray::from_opt_vec(vec![None; n])),
        Arc::new(BinaryArray::from_opt_vec(vec![None; n])),
        Arc::new(UInt64Array::from_iter_values((0..n as u64).map(|i| i + 2))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|_| 1))),
    ];
    cols.extend(extra.into_iter().map(|(_, c)| c));
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let path = dir.join("select");
    let mut w = ArtifactWriter::create(&path, info("select")).unwrap();
    w.write_table("samples", Role::Data, schema, &[batch])
        .unwrap();
    w.commit().unwrap();
    path
}

/// The image of a sample: a flat colour (channel 0 bright for colour 0, channel 2 for colour 1) plus noise.
pub fn image_values(row: &Row, view: u16) -> Vec<f32> {
    let mut v = vec![0f32; 3 * SIDE * SIDE];
    if let Some(c) = row.colour {
        let ch = if c == 0 { 0 } else { 2 };
        for (k, x) in v.iter_mut().enumerate() {
            let noise =
                (((k * 31 + row.id.len() * 7 + view as usize * 13) % 17) as f32 / 17.0 - 0.5) * 0.2;
            *x = if k / (SIDE * SIDE) == ch {
                1.0 + noise
            } else {
                noise
            };
        }
    }
    v
}

pub fn write_images(dir: &Path, rows: &[Row], train_views: u16) -> PathBuf {
    let field = tensor_field("image_tensor", &[3, SIDE, SIDE], true);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("view", DataType::UInt16, false),
        Field::new("image_present", DataType::Boolean, false),
        field.clone(),
    ]));
    let (mut ids, mut splits, mut views, mut present, mut values, mut valid) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in rows {
        let n_views = if r.split == "train" {
            1 + train_views
        } else {
            1
        };
        for view in 0..n_views {
            ids.push(r.id.clone());
            splits.push(r.split);
            views.push(view);
            present.push(r.colour.is_some());
            values.extend(image_values(r, view));
            valid.push(r.colour.is_some());
        }
    }
    let DataType::FixedSizeList(item, len) = field.data_type() else {
        unreachable!()
    };
    let list = FixedSizeListArray::new(
        item.clone(),
        *len,
        Arc::new(Float32Array::from(values)),
        Some(valid.into()),
    );
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(ids)),
        Arc::new(StringArray::from_iter_values(splits)),
        Arc::new(UInt16Array::from(views)),
        Arc::new(BooleanArray::from(present)),
        Arc::new(list),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let path = dir.join("image");
    let mut w = ArtifactWriter::create(&path, info("image")).unwrap();
    w.write_table("images", Role::Data, schema, &[batch])
        .unwrap();
    w.commit().unwrap();
    path
}

pub fn write_tabular(dir: &Path, rows: &[Row]) -> PathBuf {
    let cat = Field::new("group", DataType::UInt32, true).with_metadata(HashMap::from([(
        "mmrl.cardinality".to_owned(),
        "3".to_owned(),
    )]));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("value", DataType::Float32, true),
        cat,
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.id.clone()),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.split))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.value))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.category),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let path = dir.join("tabular");
    let mut w = ArtifactWriter::create(&path, info("tabular")).unwrap();
    w.write_table("tabular", Role::Data, schema, &[batch])
        .unwrap();
    w.commit().unwrap();
    path
}

/// All three artifacts for `rows`.
pub fn inputs(dir: &Path, rows: &[Row]) -> InputPaths {
    InputPaths {
        samples: write_samples(dir, rows),
        image: Some(write_images(dir, rows, 1)),
        audio: None,
        tabular: Some(write_tabular(dir, rows)),
    }
}
