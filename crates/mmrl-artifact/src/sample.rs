//! The sample schema every stage reads and extends, and the rejects table every stage writes.
//!
//! A sample table has the fixed columns below, in this order, followed by one column per tabular feature
//! (`Float64` for numeric, `Utf8` for categorical) tagged with the field metadata key [`FEATURE_KEY`].
//! Later stages append their own columns (for example a tensor per modality); they never rename these.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{ArtifactError, Result};

/// Unique sample id.
pub const ID: &str = "id";
/// `train`, `val` or `test`; null until the select stage assigns it.
pub const SPLIT: &str = "split";
/// The task the sample belongs to; null when the dataset has none.
pub const TASK: &str = "task";
/// The question type (template), used for per-type metrics; null when unknown.
pub const QTYPE: &str = "qtype";
/// The question text.
pub const QUESTION: &str = "question";
/// The reference answer: one or more space-separated tokens.
pub const ANSWER: &str = "answer";
/// The encoded image (PNG or JPEG bytes); null when the sample has no image.
pub const IMAGE: &str = "image";
/// The encoded audio (WAV bytes); null when the sample has no audio.
pub const AUDIO: &str = "audio";
/// Where in its source file the sample came from: the line of a `manifest.csv`, `metadata.csv` or
/// `metadata.jsonl` (a CSV header is line 1), or the row index + 1 of a Parquet file.
pub const SOURCE_LINE: &str = "source_line";

/// Optional annotation (Utf8, not a feature): the modalities the answer depends on, e.g. `image` or
/// `image audio`, as the dataset declares them. Models mask the others; select derives [`RATIONALE`] from it.
pub const MODALITIES: &str = "modalities";
/// Optional column select writes (Utf8, train rows only): intermediate answer tokens a model writes before the
/// answer (the answers of the single-modality questions about the same media), derived from train labels.
pub const RATIONALE: &str = "rationale";
/// Optional checker column (Utf8, not a feature): the valid answers of a row separated by `|` (a question with
/// several right answers, or a verifiable one whose demonstration is withheld); rl's rewards read it.
pub const ACCEPT: &str = "accept";
/// Prefix of the other checker columns (Utf8, not features), e.g. `check_tolerance`: parameters of rl's checkers.
pub const CHECK_PREFIX: &str = "check_";
/// Optional column select writes (Boolean) when a label budget is set: whether a train row keeps its
/// demonstration. sft trains on labeled rows only; an absent column means every row is labeled.
pub const LABELED: &str = "labeled";

/// Whether a column is a checker column ([`ACCEPT`] or `check_*`): carried for rl's rewards, never a feature
/// and never a model input.
pub fn is_checker_column(name: &str) -> bool {
    name == ACCEPT || (name.starts_with(CHECK_PREFIX) && name.len() > CHECK_PREFIX.len())
}

/// Field metadata key that marks a tabular feature column; its value is a [`FeatureKind`] name.
pub const FEATURE_KEY: &str = "mmrl.feature";

/// Field metadata key of a tensor column: its shape as a JSON array, e.g. `[3,32,32]` (row-major).
pub const SHAPE_KEY: &str = "mmrl.shape";

/// In a modality table, which view of the sample a row holds: 0 is the un-augmented sample, 1.. are augmented
/// copies (train split only).
pub const VIEW: &str = "view";

/// The fixed columns of a sample table, in order.
pub const FIXED_COLUMNS: [&str; 9] = [
    ID,
    SPLIT,
    TASK,
    QTYPE,
    QUESTION,
    ANSWER,
    IMAGE,
    AUDIO,
    SOURCE_LINE,
];

/// A split of the dataset.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Rows statistics and weights are fit on.
    Train,
    /// Rows for model selection and early stopping.
    Val,
    /// Rows read only by eval.
    Test,
}

impl Split {
    /// All splits in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The name stored in the `split` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Split::ALL.into_iter().find(|split| split.as_str() == s)
    }
}

/// How a tabular feature is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A `Float64` column.
    Numeric,
    /// A `Utf8` column.
    Categorical,
}

impl FeatureKind {
    /// The metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Categorical => "categorical",
        }
    }
}

/// The fixed fields of a sample table.
pub fn fixed_fields() -> Vec<Field> {
    vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new(SPLIT, DataType::Utf8, true),
        Field::new(TASK, DataType::Utf8, true),
        Field::new(QTYPE, DataType::Utf8, true),
        Field::new(QUESTION, DataType::Utf8, false),
        Field::new(ANSWER, DataType::Utf8, false),
        Field::new(IMAGE, DataType::Binary, true),
        Field::new(AUDIO, DataType::Binary, true),
        Field::new(SOURCE_LINE, DataType::UInt64, false),
    ]
}

/// A tabular feature field.
pub fn feature_field(name: &str, kind: FeatureKind) -> Field {
    let data_type = match kind {
        FeatureKind::Numeric => DataType::Float64,
        FeatureKind::Categorical => DataType::Utf8,
    };
    Field::new(name, data_type, true).with_metadata(HashMap::from([(
        FEATURE_KEY.to_owned(),
        kind.as_str().to_owned(),
    )]))
}

/// A fixed-shape `Float32` tensor column: a `FixedSizeList<Float32>` of the shape's element count, with the
/// shape in the field metadata under [`SHAPE_KEY`].
pub fn tensor_field(name: &str, shape: &[usize], nullable: bool) -> Field {
    let len = shape.iter().product::<usize>();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let shape_json = format!(
        "[{}]",
        shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    Field::new(name, DataType::FixedSizeList(item, len as i32), nullable)
        .with_metadata(HashMap::from([(SHAPE_KEY.to_owned(), shape_json)]))
}

/// The shape of a tensor column made by [`tensor_field`]; `None` for any other field or an inconsistent shape.
pub fn tensor_shape(field: &Field) -> Option<Vec<usize>> {
    let text = field.metadata().get(SHAPE_KEY)?;
    let shape: Vec<usize> = serde_json::from_str(text).ok()?;
    match field.data_type() {
        DataType::FixedSizeList(_, len) if *len as usize == shape.iter().product::<usize>() => {
            Some(shape)
        }
        _ => None,
    }
}

/// The schema of a sample table with these features.
pub fn sample_schema(features: &[(String, FeatureKind)]) -> SchemaRef {
    let mut fields = fixed_fields();
    fields.extend(
        features
            .iter()
            .map(|(name, kind)| feature_field(name, *kind)),
    );
    Arc::new(Schema::new(fields))
}

/// The tabular features of a sample schema, in column order.
pub fn features(schema: &Schema) -> Vec<(String, FeatureKind)> {
    schema
        .fields()
        .iter()
        .filter_map(|f| {
            let kind = match f.metadata().get(FEATURE_KEY).map(String::as_str) {
                Some("numeric") => FeatureKind::Numeric,
                Some("categorical") => FeatureKind::Categorical,
                _ => return None,
            };
            Some((f.name().clone(), kind))
        })
        .collect()
}

/// Checks that a schema starts with the fixed sample columns; `what` names the table in the error.
pub fn check_sample_schema(schema: &Schema, what: &std::path::Path) -> Result<()> {
    for expected in fixed_fields() {
        match schema.field_with_name(expected.name()) {
            Ok(actual) if actual.data_type() == expected.data_type() => {}
            Ok(actual) => {
                return Err(ArtifactError::Schema {
                    path: what.to_path_buf(),
                    reason: format!(
                        "column {:?} is {:?}, expected {:?}",
                        expected.name(),
                        actual.data_type(),
                        expected.data_type()
                    ),
                });
            }
            Err(_) => {
                return Err(ArtifactError::Schema {
                    path: what.to_path_buf(),
                    reason: format!("missing column {:?}", expected.name()),
                });
            }
        }
    }
    Ok(())
}

/// The schema of a rejects table: which row, why, and the detail a person needs to fix it.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(SOURCE_LINE, DataType::UInt64, false),
        Field::new(ID, DataType::Utf8, true),
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ]))
}

/// Accumulates rejected rows for a stage's `rejects.parquet`.
#[derive(Debug)]
pub struct Rejects {
    stage: String,
    line: UInt64Builder,
    id: StringBuilder,
    stage_col: StringBuilder,
    reason: StringBuilder,
    detail: StringBuilder,
    len: usize,
}

impl Rejects {
    /// An empty rejects table for `stage`.
    pub fn new(stage: &str) -> Self {
        Self {
            stage: stage.to_owned(),
            line: UInt64Builder::new(),
            id: StringBuilder::new(),
            stage_col: StringBuilder::new(),
            reason: StringBuilder::new(),
            detail: StringBuilder::new(),
            len: 0,
        }
    }

    /// Records a rejected row. `reason` is a short stable code (`missing_media`), `detail` the human message.
    pub fn push(
        &mut self,
        source_line: u64,
        id: Option<&str>,
        reason: &str,
        detail: impl AsRef<str>,
    ) {
        self.line.append_value(source_line);
        self.id.append_option(id);
        self.stage_col.append_value(&self.stage);
        self.reason.append_value(reason);
        self.detail.append_value(detail);
        self.len += 1;
    }

    /// How many rows were rejected.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row was rejected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rejects as one batch.
    pub fn finish(mut self) -> Result<RecordBatch> {
        RecordBatch::try_new(
            rejects_schema(),
            vec![
                Arc::new(self.line.finish()),
                Arc::new(self.id.finish()),
                Arc::new(self.stage_col.finish()),
                Arc::new(self.reason.finish()),
                Arc::new(self.detail.finish()),
            ],
        )
        .map_err(|source| ArtifactError::Arrow {
            context: "building rejects".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_shape_round_trips_and_rejects_inconsistent_fields() {
        let field = tensor_field("image_tensor", &[3, 4, 5], true);
        assert_eq!(tensor_shape(&field), Some(vec![3, 4, 5]));
        let wrong = field
            .clone()
            .with_metadata(HashMap::from([(SHAPE_KEY.to_owned(), "[2,2]".to_owned())]));
        assert_eq!(tensor_shape(&wrong), None);
        assert_eq!(
            tensor_shape(&Field::new("x", DataType::Float32, false)),
            None
        );
    }

    #[test]
    fn features_are_found_by_metadata() {
        let schema = sample_schema(&[
            ("a".into(), FeatureKind::Numeric),
            ("b".into(), FeatureKind::Categorical),
        ]);
        assert_eq!(
            features(&schema),
            [
                ("a".to_owned(), FeatureKind::Numeric),
                ("b".to_owned(), FeatureKind::Categorical)
            ]
        );
        check_sample_schema(&schema, std::path::Path::new("t")).unwrap();
        let partial = Schema::new(fixed_fields()[1..].to_vec());
        assert!(
            check_sample_schema(&partial, std::path::Path::new("t"))
                .unwrap_err()
                .to_string()
                .contains("\"id\"")
        );
    }
}
