//! The predict stage: loads an sft artifact and writes greedy answers with their log-probabilities.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, InputPaths};
use crate::error::{Error, Result, config_err};
use crate::model::{ModelConfig, MultimodalModel};
use crate::sft::{DeviceKind, decode_split, load_model};
use crate::vocab::Vocab;

/// Stage name in manifests.
pub const STAGE: &str = "predict";

/// Parameters of predict (`[stages.predict.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictConfig {
    /// Split to predict: `train`, `val` or `test`.
    pub split: String,
    /// Samples per decoding batch.
    pub batch_size: usize,
    /// Where to run.
    pub device: DeviceKind,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            split: "val".into(),
            batch_size: 256,
            device: DeviceKind::Cpu,
        }
    }
}

impl PredictConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if Split::parse(&self.split).is_none() {
            return Err(config_err(
                "split",
                format!("must be train, val or test, got {:?}", self.split),
            ));
        }
        if self.batch_size == 0 {
            return Err(config_err("batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// A trained model with its vocabulary, as loaded from an sft artifact.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The model (plain device: no autodiff).
    pub model: MultimodalModel,
    /// Its vocabularies.
    pub vocab: Vocab,
}

/// Loads `model.bpk`, `config.json` and `vocab.json` of an sft artifact onto `device`.
pub fn load_trained(dir: &Path, device: DeviceKind) -> Result<Trained> {
    let artifact = Artifact::open(dir)?;
    let read = |file: &str| -> Result<Vec<u8>> {
        let path = artifact.file(file)?;
        std::fs::read(&path).map_err(crate::error::io("reading", &path))
    };
    let config: ModelConfig = serde_json::from_slice(&read("config.json")?)?;
    let vocab: Vocab = serde_json::from_slice(&read("vocab.json")?)?;
    if vocab.question.len() != config.question_vocab || vocab.answer.len() != config.answer_vocab {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "vocab.json does not match config.json; the artifact was edited, re-run sft"
                .into(),
        });
    }
    let model = config.init(&device.device()?, 0)?;
    let model = load_model(model, &artifact.file("model.bpk")?)?;
    Ok(Trained { model, vocab })
}

/// Runs predict: answers every sample of `config.split` and commits `predictions.parquet` at `output`.
pub fn run(
    config: &PredictConfig,
    model_dir: &Path,
    inputs: &InputPaths,
    output: &Path,
) -> Result<usize> {
    config.validate()?;
    let trained = load_trained(model_dir, config.device)?;
    let data = Dataset::load(inputs)?;
    data.check_compatible(trained.model.config(), &inputs.samples)?;
    let split = Split::parse(&config.split).unwrap_or(Split::Val);
    let indices = data.split(split);
    if indices.is_empty() {
        return Err(Error::Input {
            path: inputs.samples.clone(),
            message: format!("split {:?} has no samples", config.split),
        });
    }
    let generated = decode_split(
        &trained.model,
        &data,
        &trained.vocab,
        &indices,
        config.batch_size,
    );
    let rows: Vec<_> = indices.iter().map(|&i| &data.samples[i]).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("qtype", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("reference", DataType::Utf8, false),
        Field::new("logprob", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|s| s.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|s| s.split.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|s| s.qtype.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                generated
                    .iter()
                    .map(|g| trained.vocab.decode_answer(&g.tokens)),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|s| s.answer.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                generated.iter().map(|g| f64::from(g.logprob)),
            )),
        ],
    )?;
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        seed: None,
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("model", &Artifact::open(model_dir)?);
    writer.input_artifact("samples", &Artifact::open(&inputs.samples)?);
    let optional: [(&str, &Option<PathBuf>); 3] = [
        ("image", &inputs.image),
        ("audio", &inputs.audio),
        ("tabular", &inputs.tabular),
    ];
    for (name, path) in optional {
        if let Some(p) = path {
            writer.input_artifact(name, &Artifact::open(p)?);
        }
    }
    writer.write_table("predictions", Role::Data, schema, &[batch])?;
    writer.commit()?;
    Ok(rows.len())
}
