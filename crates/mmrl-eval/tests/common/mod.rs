//! Tiny artifacts built in code (adapted from mmrl-model's test fixtures): a select-like samples table
//! with train/val/test splits, an image table, a tabular table, and a tiny trained model.
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
/// the categorical feature), and "red and high" (image and numeric feature: cross-modal). Splits: 60%
/// train, 20% val, 20% test.
pub fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let split = match i % 10 {
                0..6 => "train",
                6 | 7 => "val",
                _ => "test",
            };
            let colour = (i / 4) % 2;
            let value = ((i * 7919) % 100) as f32 / 50.0 - 1.0;
            let category = ((i / 4) % 3) as u32;
            let (qtype, question, answer) = match i % 4 {
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
                2 => ("group", "which group".to_owned(), format!("g {category}")),
                _ => (
                    "both",
                    "is it red and high".to_owned(),
                    if colour == 0 && value > 0.0 {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_owned(),
                ),
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
    let base = sample_schema(&[]);
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("repeat", DataType::UInt32, false));
    let schema = Arc::new(Schema::new(fields));
    let n = rows.len();
    let cols: Vec<ArrayRef> = vec![
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

/// A tiny sft run on `inputs` (a real model artifact with lineage `["train"]`).
pub fn train(dir: &Path, inputs: &InputPaths) -> PathBuf {
    use mmrl_model::schedule::{ScheduleConfig, ScheduleKind};
    use mmrl_model::sft::{self, Hooks, Outcome, SftConfig};
    let config = SftConfig {
        d_model: Some(32),
        encoder_layers: Some(1),
        decoder_layers: Some(1),
        heads: Some(2),
        image_patch: 4,
        epochs: 8,
        batch_size: 16,
        lr: 3e-3,
        early_stopping_patience: 0,
        checkpoint_every: 0,
        schedule: ScheduleConfig {
            kind: ScheduleKind::WarmupCosine,
            warmup_steps: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = dir.join("sft");
    match sft::run(&config, 3, inputs, &out, Hooks::default()).unwrap() {
        Outcome::Done(_) => out,
        Outcome::Interrupted { step } => panic!("interrupted at {step}"),
    }
}

/// A copy of the model artifact at `model` whose manifest records `fit_splits` (and no inputs).
pub fn relabel_model(model: &Path, dest: &Path, fit_splits: &[&str]) -> PathBuf {
    model_artifact(model, dest, "sft", fit_splits, &[])
}

/// A model artifact of `stage` with the weights of `model`, `fit_splits`, and extra tables (name, batch).
pub fn model_artifact(
    model: &Path,
    dest: &Path,
    stage: &str,
    fit_splits: &[&str],
    tables: &[(&str, RecordBatch)],
) -> PathBuf {
    let mut w = ArtifactWriter::create(dest, info(stage)).unwrap();
    for (name, batch) in tables {
        w.write_table(
            name,
            Role::Report,
            batch.schema(),
            std::slice::from_ref(batch),
        )
        .unwrap();
    }
    if !fit_splits.is_empty() {
        w.fit_splits(fit_splits);
    }
    for f in ["model.bpk", "config.json", "vocab.json"] {
        std::fs::copy(model.join(f), w.tmp_dir().join(f)).unwrap();
        w.add_file(f, Role::State).unwrap();
    }
    w.commit().unwrap();
    dest.to_path_buf()
}

/// A predictions artifact (table `predictions`: id, answer, logprob).
pub fn write_predictions(dest: &Path, preds: &[(&str, &str, f64)], fit_splits: &[&str]) -> PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("logprob", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(preds.iter().map(|p| p.0))),
            Arc::new(StringArray::from_iter_values(preds.iter().map(|p| p.1))),
            Arc::new(arrow::array::Float64Array::from_iter_values(
                preds.iter().map(|p| p.2),
            )),
        ],
    )
    .unwrap();
    let mut w = ArtifactWriter::create(dest, info("predict")).unwrap();
    w.fit_splits(fit_splits);
    w.write_table("predictions", Role::Data, schema, &[batch])
        .unwrap();
    w.commit().unwrap();
    dest.to_path_buf()
}

/// A model artifact of `stage` with the weights of `model`, lineage `["train"]`, recording `inputs`
/// (name, artifact directory) the way sft, rl and compress record theirs.
pub fn derived_model(model: &Path, dest: &Path, stage: &str, inputs: &[(&str, &Path)]) -> PathBuf {
    let mut w = ArtifactWriter::create(dest, info(stage)).unwrap();
    w.fit_splits(&["train"]);
    for (name, dir) in inputs {
        w.input_artifact(name, &mmrl_artifact::Artifact::open(dir).unwrap());
    }
    for f in ["model.bpk", "config.json", "vocab.json"] {
        std::fs::copy(model.join(f), w.tmp_dir().join(f)).unwrap();
        w.add_file(f, Role::State).unwrap();
    }
    w.commit().unwrap();
    dest.to_path_buf()
}

/// A predictions artifact holding `batch` as its `predictions` table, lineage `["train"]`.
pub fn predictions_table(dest: &Path, batch: RecordBatch) -> PathBuf {
    let mut w = ArtifactWriter::create(dest, info("predict")).unwrap();
    w.fit_splits(&["train"]);
    w.write_table("predictions", Role::Data, batch.schema(), &[batch])
        .unwrap();
    w.commit().unwrap();
    dest.to_path_buf()
}
