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

/// Loads `model.bpk`, `config.json` and `vocab.json` of a model artifact (sft, rl) onto `device`.
pub fn load_trained(dir: &Path, device: DeviceKind) -> Result<Trained> {
    let artifact = Artifact::open(dir)?;
    load_trained_at(&artifact, "", device)
}

/// Loads the model whose `model.bpk`, `config.json` and `vocab.json` lie under `prefix` (`""` for the
/// artifact root, or `"NAME/"` for a folder of the artifact).
fn load_trained_at(artifact: &Artifact, prefix: &str, device: DeviceKind) -> Result<Trained> {
    let dir = artifact.dir().join(prefix);
    let file = |name: &str| -> Result<PathBuf> {
        if prefix.is_empty() {
            Ok(artifact.file(name)?)
        } else {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Checkpoint {
                    path: dir.clone(),
                    message: format!("{name} is missing"),
                })
            }
        }
    };
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = file(name)?;
        std::fs::read(&path).map_err(crate::error::io("reading", &path))
    };
    let config: ModelConfig = serde_json::from_slice(&read("config.json")?)?;
    let vocab: Vocab = serde_json::from_slice(&read("vocab.json")?)?;
    if vocab.question.len() != config.question_vocab || vocab.answer.len() != config.answer_vocab {
        return Err(Error::Checkpoint {
            path: dir.clone(),
            message:
                "vocab.json does not match config.json; the artifact was edited, re-run the stage"
                    .into(),
        });
    }
    let model = config.init(&device.device()?, 0)?;
    let model = load_model(model, &file("model.bpk")?)?;
    Ok(Trained { model, vocab })
}

/// File of an artifact that holds several models (e.g. compress): a JSON list of [`ModelEntry`].
pub const MODELS_FILE: &str = "models.json";

/// One model of a multi-model artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Its name, unique in the artifact.
    pub name: String,
    /// Folder of the artifact holding its `model.bpk`, `config.json` and `vocab.json`.
    pub dir: String,
}

/// Every model of a model artifact, named: a plain artifact (sft, rl) gives one model named after its stage;
/// an artifact with [`MODELS_FILE`] gives one per entry, named `STAGE/NAME`.
pub fn load_models(dir: &Path, device: DeviceKind) -> Result<Vec<(String, Trained)>> {
    let artifact = Artifact::open(dir)?;
    let stage = artifact.manifest().stage.clone();
    let Ok(list) = artifact.file(MODELS_FILE) else {
        return Ok(vec![(stage, load_trained_at(&artifact, "", device)?)]);
    };
    let bytes = std::fs::read(&list).map_err(crate::error::io("reading", &list))?;
    let entries: Vec<ModelEntry> = serde_json::from_slice(&bytes)?;
    entries
        .iter()
        .map(|e| {
            if e.dir.is_empty() || e.dir.contains("..") || Path::new(&e.dir).is_absolute() {
                return Err(Error::Checkpoint {
                    path: list.clone(),
                    message: format!(
                        "model {:?} has folder {:?}, expected a folder inside the artifact",
                        e.name, e.dir
                    ),
                });
            }
            let trained = load_trained_at(&artifact, &format!("{}/", e.dir), device)?;
            Ok((format!("{stage}/{}", e.name), trained))
        })
        .collect()
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
    inputs.record_modalities(&mut writer)?;
    writer.write_table("predictions", Role::Data, schema, &[batch])?;
    writer.commit()?;
    Ok(rows.len())
}
