//! Tiny artifacts for eval's tests: mmrl-model's test fixture (samples, image and tabular tables) with
//! rows that add a test split and a cross-modal question, plus a tiny trained model and hand-made model
//! and prediction artifacts.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use mmrl_artifact::{ArtifactWriter, Role};
use mmrl_model::data::InputPaths;

#[path = "../../../mmrl-model/tests/common/mod.rs"]
mod base;
// `rows` below replaces the base fixture's.
pub use base::*;

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

/// An image artifact for `rows` without the samples of `dropped` (id, reason code), which its
/// `rejects` table lists, as the image stage writes a sample its checks dropped.
pub fn write_images_dropping(dir: &Path, rows: &[Row], dropped: &[(&str, &str)]) -> PathBuf {
    let kept: Vec<Row> = rows
        .iter()
        .filter(|r| !dropped.iter().any(|(id, _)| *id == r.id))
        .cloned()
        .collect();
    let staging = dir.join("image-staging");
    std::fs::create_dir_all(&staging).unwrap();
    let full = mmrl_artifact::Artifact::open(write_images(&staging, &kept, 1)).unwrap();
    let (schema, batches) = full.read_table("images").unwrap();
    let mut rejects = mmrl_artifact::sample::Rejects::new("image");
    for (k, (id, reason)) in dropped.iter().enumerate() {
        rejects.push(
            k as u64 + 2,
            Some(id),
            reason,
            format!("sample {id:?}: {reason}"),
        );
    }
    let path = dir.join("image");
    let mut w = ArtifactWriter::create(&path, info("image")).unwrap();
    w.fit_splits(&["train"]);
    w.write_table("images", Role::Data, schema, &batches)
        .unwrap();
    w.write_table(
        "rejects",
        Role::Rejects,
        mmrl_artifact::sample::rejects_schema(),
        &[rejects.finish().unwrap()],
    )
    .unwrap();
    w.commit().unwrap();
    path
}

/// One row of [`write_samples_without_qtype`]: id, split, question, answer.
pub type PlainRow<'a> = (String, &'a str, String, String);

/// A select-like samples table whose `qtype` is null on every row (a dataset without a qtype column):
/// (id, split, question, answer) per row, no media, no features.
pub fn write_samples_without_qtype(dir: &Path, rows: &[PlainRow]) -> PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, true),
        Field::new("task", DataType::Utf8, true),
        Field::new("qtype", DataType::Utf8, true),
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("repeat", DataType::UInt32, false),
    ]));
    let text = |f: &dyn Fn(&PlainRow) -> Option<String>| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
            as arrow::array::ArrayRef
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            text(&|r| Some(r.0.clone())),
            text(&|r| Some(r.1.to_owned())),
            text(&|_| None),
            text(&|_| None),
            text(&|r| Some(r.2.clone())),
            text(&|r| Some(r.3.clone())),
            Arc::new(arrow::array::UInt32Array::from(vec![1u32; rows.len()])),
        ],
    )
    .unwrap();
    let path = dir.join("select");
    let mut w = ArtifactWriter::create(&path, info("select")).unwrap();
    w.write_table("samples", Role::Data, schema, &[batch])
        .unwrap();
    w.commit().unwrap();
    path
}
