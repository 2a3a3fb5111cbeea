//! Which data column plays which role: the `columns` mapping, the media columns, and the tabular features.
//!
//! A role (`id`, `question`, `answer`, `image`, `audio`, `split`, `task`, `qtype`) is read from the column the
//! `columns` param maps it to; else from the column of that name (for `image`/`audio` also a `datasets`
//! `image_file_name`/`audio_file_name` column); else, for `image`/`audio`, from the one Parquet column whose
//! `huggingface` metadata declares that feature. Remaining `file_name`-style and `{bytes, path}` columns are
//! "auto" media columns: each cell's kind comes from its file extension or its bytes' signature. Every other
//! scalar column is a tabular feature.

use std::collections::{BTreeMap, HashSet};

use mmrl_artifact::sample::FeatureKind;
use serde::Serialize;

use super::{IngestConfig, REQUIRED_COLUMNS, RESERVED_COLUMNS};
use crate::source::{Column, ColumnKind, Format, MediaKind, Table, Value};
use crate::{Error, Result};

/// Names a feature column cannot take because the sample schema or a later stage uses them.
const SCHEMA_NAMES: [&str; 4] = [
    mmrl_artifact::sample::SOURCE_LINE,
    "repeat",
    mmrl_artifact::sample::RATIONALE,
    mmrl_artifact::sample::LABELED,
];

/// The roles, the media columns and the features of a table.
#[derive(Debug)]
pub(super) struct Plan {
    /// The column of each role present (`id` absent: ids are derived).
    pub roles: BTreeMap<&'static str, usize>,
    /// Media columns whose cells' kinds are decided per row.
    pub auto_media: Vec<usize>,
    /// Feature columns in data order: name, kind, column index.
    pub features: Vec<(String, FeatureKind, usize)>,
    /// Checker columns (`accept`, `check_*`) in data order: name, column index. Carried as text for rl's
    /// rewards, never features.
    pub checkers: Vec<(String, usize)>,
    /// What goes into `report.json`.
    pub report: ColumnReport,
}

impl Plan {
    /// The column of a role, if any.
    pub fn role(&self, role: &str) -> Option<usize> {
        self.roles.get(role).copied()
    }
}

/// How the data's columns were read, recorded in `report.json` as `columns`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnReport {
    /// Each role present and the data column it was read from.
    pub roles: BTreeMap<String, String>,
    /// `column` when ids come from the data, `derived` when they are `<file>:<line>`.
    pub id_source: &'static str,
    /// Media columns whose cells are images or audio by file extension or byte signature.
    pub auto_media: Vec<String>,
    /// Columns not read, each with why.
    pub ignored: Vec<IgnoredColumn>,
}

/// A column ingest did not read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IgnoredColumn {
    /// Its name in the data.
    pub column: String,
    /// Why it was not read.
    pub reason: String,
}

fn is_media_role(role: &str) -> bool {
    role == "image" || role == "audio"
}

fn media_role(kind: MediaKind) -> &'static str {
    kind.as_str()
}

/// Whether a column can hold a role: text roles need scalars, media roles paths or media.
fn fits(role: &str, column: &Column) -> std::result::Result<(), String> {
    match (&column.kind, is_media_role(role)) {
        (ColumnKind::Value, _) => Ok(()),
        (
            ColumnKind::FileName { .. } | ColumnKind::MediaStruct { .. } | ColumnKind::Binary,
            true,
        ) => Ok(()),
        (ColumnKind::Nested { type_name }, _) => Err(format!(
            "column {:?} holds {type_name}; expected {}",
            column.name,
            if is_media_role(role) {
                "file paths or {bytes, path} media"
            } else {
                "text"
            }
        )),
        (_, false) => Err(format!(
            "column {:?} holds media; expected text",
            column.name
        )),
    }
}

/// Resolves every role, the auto media columns and the features; errors name the param or file at fault and
/// list the data's columns.
pub(super) fn plan(config: &IngestConfig, table: &Table) -> Result<Plan> {
    let roles = bind_roles(config, table)?;
    let where_ = data_path(table);
    for required in REQUIRED_COLUMNS {
        if roles.contains_key(required) {
            continue;
        }
        if required == "id" && table.layout.format != Format::ManifestCsv {
            continue;
        }
        return Err(Error::Dataset {
            path: where_.clone(),
            message: format!(
                "missing required column {required:?}; expected at least {:?} and optionally image, audio, split, task, qtype, modalities; the data has: {}; to read another column as {required}, set columns = {{ {required} = \"...\" }} in the ingest params",
                required_for(table.layout.format),
                table.column_names().join(", ")
            ),
        });
    }
    // A Value column named like a role that reads another column is not a feature: it would clash.
    let used: HashSet<usize> = roles.values().copied().collect();
    let mut ignored = Vec::new();
    let mut auto_media = Vec::new();
    let mut feature_cols = Vec::new();
    let mut checkers = Vec::new();
    let both_media = roles.contains_key("image") && roles.contains_key("audio");
    for (index, column) in table.columns.iter().enumerate() {
        if used.contains(&index) {
            continue;
        }
        let ignore = |reason: String| IgnoredColumn {
            column: column.name.clone(),
            reason,
        };
        match &column.kind {
            ColumnKind::FileName { .. } | ColumnKind::MediaStruct { .. } if both_media => {
                ignored.push(ignore(format!(
                    "a media column, and image and audio are read from {:?} and {:?}",
                    table.columns[roles["image"]].name, table.columns[roles["audio"]].name
                )));
            }
            ColumnKind::FileName { .. } | ColumnKind::MediaStruct { .. } => auto_media.push(index),
            ColumnKind::Binary => ignored.push(ignore(
                "a binary column; map it with columns.image or columns.audio to read it as media"
                    .into(),
            )),
            ColumnKind::Nested { type_name } => ignored.push(ignore(format!(
                "holds {type_name}; ingest reads text, numbers, booleans and media"
            ))),
            ColumnKind::Value if RESERVED_COLUMNS.contains(&column.name.as_str()) => {
                let role = column.name.as_str();
                ignored.push(ignore(match roles.get(role) {
                    Some(&other) => format!(
                        "its name is a role, and columns.{role} reads {:?}",
                        table.columns[other].name
                    ),
                    None => {
                        format!("its name is the role {role}, but it does not hold {role} values")
                    }
                }));
            }
            ColumnKind::Value if mmrl_artifact::sample::is_checker_column(&column.name) => {
                checkers.push((column.name.clone(), index));
            }
            ColumnKind::Value if SCHEMA_NAMES.contains(&column.name.as_str()) => {
                ignored.push(ignore(
                    "the name is taken by the sample schema; rename the column to use it as a feature"
                        .into(),
                ));
            }
            ColumnKind::Value => feature_cols.push(index),
        }
    }
    let features = type_features(config, table, &feature_cols)?;
    let report = ColumnReport {
        roles: roles
            .iter()
            .map(|(role, &i)| ((*role).to_owned(), table.columns[i].name.clone()))
            .collect(),
        id_source: if roles.contains_key("id") {
            "column"
        } else {
            "derived"
        },
        auto_media: auto_media
            .iter()
            .map(|&i| table.columns[i].name.clone())
            .collect(),
        ignored,
    };
    Ok(Plan {
        roles,
        auto_media,
        features,
        checkers,
        report,
    })
}

fn required_for(format: Format) -> Vec<&'static str> {
    REQUIRED_COLUMNS
        .into_iter()
        .filter(|c| *c != "id" || format == Format::ManifestCsv)
        .collect()
}

/// The path named in dataset-level errors: the one source file, or the dataset root.
fn data_path(table: &Table) -> std::path::PathBuf {
    match table.layout.files.as_slice() {
        [one] => one.path.clone(),
        _ => table.layout.root.clone(),
    }
}

/// Binds roles: the `columns` mapping first, then columns by name, then declared media features.
fn bind_roles(config: &IngestConfig, table: &Table) -> Result<BTreeMap<&'static str, usize>> {
    let mut roles: BTreeMap<&'static str, usize> = BTreeMap::new();
    let data_columns = || table.column_names().join(", ");
    for (role, data) in &config.columns {
        let Some(role) = RESERVED_COLUMNS.iter().copied().find(|r| r == role) else {
            continue; // validate() refused unknown roles already
        };
        let index = table
            .columns
            .iter()
            .position(|c| c.name == *data)
            .or_else(|| {
                is_media_role(role)
                    .then(|| {
                        table.columns.iter().position(|c| {
                            matches!(&c.kind, ColumnKind::FileName { alias: Some(a) } if a == data)
                        })
                    })
                    .flatten()
            })
            .ok_or_else(|| Error::Config {
                field: format!("columns.{role}"),
                message: format!(
                    "no column {data:?} in {}; the data has: {}",
                    data_path(table).display(),
                    data_columns()
                ),
            })?;
        fits(role, &table.columns[index]).map_err(|message| Error::Config {
            field: format!("columns.{role}"),
            message,
        })?;
        roles.insert(role, index);
    }
    let taken = |roles: &BTreeMap<&str, usize>, i: usize| roles.values().any(|&j| j == i);
    for role in RESERVED_COLUMNS {
        if roles.contains_key(role) {
            continue;
        }
        let candidates: Vec<usize> = table
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| !taken(&roles, *i) && fits(role, c).is_ok())
            .filter(|(_, c)| {
                let named =
                    c.name == role && (is_media_role(role) || matches!(c.kind, ColumnKind::Value));
                let aliased = is_media_role(role)
                    && matches!(&c.kind, ColumnKind::FileName { alias: Some(a) } if a == role);
                named || aliased
            })
            .map(|(i, _)| i)
            .collect();
        match candidates.as_slice() {
            [] => {}
            [one] => {
                roles.insert(role, *one);
            }
            several => return Err(ambiguous(table, role, several)),
        }
    }
    for kind in [MediaKind::Image, MediaKind::Audio] {
        let role = media_role(kind);
        if roles.contains_key(role) {
            continue;
        }
        let declared: Vec<usize> = table
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                !taken(&roles, *i)
                    && matches!(c.kind, ColumnKind::MediaStruct { declared: Some(k) } if k == kind)
            })
            .map(|(i, _)| i)
            .collect();
        match declared.as_slice() {
            [] => {}
            [one] => {
                roles.insert(role, *one);
            }
            several => return Err(ambiguous(table, role, several)),
        }
    }
    Ok(roles)
}

fn ambiguous(table: &Table, role: &str, columns: &[usize]) -> Error {
    let names: Vec<String> = columns
        .iter()
        .map(|&i| format!("{:?}", table.columns[i].name))
        .collect();
    Error::Dataset {
        path: data_path(table),
        message: format!(
            "columns {} could each be the {role} column; choose one with columns = {{ {role} = \"...\" }} in the ingest params",
            names.join(" and ")
        ),
    }
}

/// Types each feature column: `column_types` first, `ClassLabel` columns categorical, otherwise numeric when
/// every non-missing cell is a number (or text that parses as one).
fn type_features(
    config: &IngestConfig,
    table: &Table,
    feature_cols: &[usize],
) -> Result<Vec<(String, FeatureKind, usize)>> {
    for name in config.column_types.keys() {
        if !feature_cols.iter().any(|&i| table.columns[i].name == *name) {
            let features: Vec<&str> = feature_cols
                .iter()
                .map(|&i| table.columns[i].name.as_str())
                .collect();
            return Err(Error::Config {
                field: format!("column_types.{name}"),
                message: format!(
                    "no such column among the features of {}; the features are: {}",
                    data_path(table).display(),
                    features.join(", ")
                ),
            });
        }
    }
    Ok(feature_cols
        .iter()
        .map(|&i| {
            let name = table.columns[i].name.clone();
            let kind = config.column_types.get(&name).copied().unwrap_or_else(|| {
                let numeric = !table.class_labels.contains_key(&name)
                    && table.rows.iter().all(|row| match &row.cells[i] {
                        Value::Null | Value::Int(_) | Value::Float(_) => true,
                        Value::Text(t) => t.trim().is_empty() || t.trim().parse::<f64>().is_ok(),
                        _ => false,
                    });
                if numeric {
                    FeatureKind::Numeric
                } else {
                    FeatureKind::Categorical
                }
            });
            (name, kind, i)
        })
        .collect())
}
