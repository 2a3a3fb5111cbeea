//! Reading CSV (`manifest.csv`, `metadata.csv`) and JSON-lines (`metadata.jsonl`) files into rows of cells.

use std::collections::{BTreeMap, HashMap};

use serde::de::{Deserializer, MapAccess, Visitor};

use super::{Column, ColumnKind, FilePart, FileRow, Format, SourceFile, Value, read_bytes};
use crate::{Error, Result};

/// The kind of a metadata column by its name, as `datasets`' folder builder decides it: `file_name` and
/// `<name>_file_name` hold media paths.
fn kind_by_name(name: &str, format: Format) -> ColumnKind {
    if !matches!(format, Format::HfFolderCsv | Format::HfFolderJsonl) {
        return ColumnKind::Value;
    }
    if name == "file_name" {
        ColumnKind::FileName { alias: None }
    } else if let Some(alias) = name.strip_suffix("_file_name").filter(|a| !a.is_empty()) {
        ColumnKind::FileName {
            alias: Some(alias.to_owned()),
        }
    } else {
        ColumnKind::Value
    }
}

/// Reads a CSV file with a header row; cells are trimmed text, an empty cell is [`Value::Null`].
pub(super) fn read_csv(file: &SourceFile, format: Format) -> Result<FilePart> {
    let bytes = read_bytes(file)?;
    let dataset_error = |message: String| Error::Dataset {
        path: file.path.clone(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .map_err(|e| dataset_error(format!("unreadable header: {e}")))?
        .clone();
    let mut seen = HashMap::new();
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            return Err(dataset_error(format!("column {} has an empty name", i + 1)));
        }
        if seen.insert(name.to_owned(), i).is_some() {
            return Err(dataset_error(format!(
                "column {name:?} appears twice in the header"
            )));
        }
        columns.push(Column {
            name: name.to_owned(),
            kind: kind_by_name(name, format),
        });
    }
    let width = columns.len();
    let mut rows = Vec::new();
    let mut last_line = 1;
    for record in reader.records() {
        let row = match record {
            Ok(record) => {
                let line = record.position().map_or(last_line + 1, |p| p.line());
                let cells = (0..width)
                    .map(|i| match record.get(i).map(str::trim) {
                        None | Some("") => Value::Null,
                        Some(cell) => Value::Text(cell.to_owned()),
                    })
                    .collect();
                let malformed = (record.len() != width)
                    .then(|| format!("{} fields, the header has {width}", record.len()));
                FileRow {
                    line,
                    cells,
                    malformed,
                }
            }
            Err(e) => FileRow {
                line: e
                    .position()
                    .map_or(last_line + 1, |p| p.line())
                    .max(last_line + 1),
                cells: vec![Value::Null; width],
                malformed: Some(e.to_string()),
            },
        };
        last_line = row.line;
        rows.push(row);
    }
    Ok(FilePart {
        rel: file.rel.clone(),
        hash: mmrl_artifact::hash::hash_bytes(&bytes),
        bytes: bytes.len() as u64,
        columns,
        class_labels: BTreeMap::new(),
        rows,
    })
}

/// Reads a JSON-lines file: one object a line, keys are columns in first-seen order, blank lines skipped.
pub(super) fn read_jsonl(file: &SourceFile) -> Result<FilePart> {
    let bytes = read_bytes(file)?;
    let mut columns: Vec<Column> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut parsed: Vec<(u64, ParsedLine)> = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let text = match std::str::from_utf8(line) {
            Ok(t) => t.trim(),
            Err(e) => {
                parsed.push((line_no, Err(format!("not UTF-8: {e}"))));
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let object = match parse_object(text) {
            Ok(o) => o,
            Err(e) => {
                parsed.push((line_no, Err(e)));
                continue;
            }
        };
        let mut cells = Vec::with_capacity(object.len());
        for (key, value) in object {
            let slot = *index.entry(key.clone()).or_insert_with(|| {
                columns.push(Column {
                    kind: kind_by_name(&key, Format::HfFolderJsonl),
                    name: key,
                });
                columns.len() - 1
            });
            cells.push((slot, json_value(value)));
        }
        parsed.push((line_no, Ok(cells)));
    }
    let width = columns.len();
    // A column is nested when every value it has is a list or object; a stray list in a text column is that
    // row's problem, not the column's.
    let mut nested = vec![0usize; width];
    let mut present = vec![0usize; width];
    let rows = parsed
        .into_iter()
        .map(|(line, cells)| {
            let mut row = vec![Value::Null; width];
            let malformed = match cells {
                Ok(cells) => {
                    for (slot, value) in cells {
                        nested[slot] += usize::from(value == Value::Nested);
                        present[slot] += usize::from(value != Value::Null);
                        row[slot] = value;
                    }
                    None
                }
                Err(e) => Some(e),
            };
            FileRow {
                line,
                cells: row,
                malformed,
            }
        })
        .collect();
    for ((column, nested), present) in columns.iter_mut().zip(nested).zip(present) {
        if nested > 0 && nested == present {
            column.kind = ColumnKind::Nested {
                type_name: "JSON lists or objects".into(),
            };
        }
    }
    Ok(FilePart {
        rel: file.rel.clone(),
        hash: mmrl_artifact::hash::hash_bytes(&bytes),
        bytes: bytes.len() as u64,
        columns,
        class_labels: BTreeMap::new(),
        rows,
    })
}

/// A line's cells by column slot, or why the line is unreadable.
type ParsedLine = std::result::Result<Vec<(usize, Value)>, String>;

fn json_value(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => n.as_f64().map_or(Value::Null, Value::Float),
        },
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Value::Nested,
    }
}

/// Parses one JSON object keeping its keys in file order (serde_json's own map sorts them).
fn parse_object(text: &str) -> std::result::Result<Vec<(String, serde_json::Value)>, String> {
    struct Ordered;
    impl<'de> Visitor<'de> for Ordered {
        type Value = std::result::Result<Vec<(String, serde_json::Value)>, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out: Vec<(String, serde_json::Value)> = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                if out.iter().any(|(k, _)| *k == key) {
                    return Ok(Err(format!("key {key:?} appears twice")));
                }
                out.push((key, value));
            }
            Ok(Ok(out))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let object = de
        .deserialize_map(Ordered)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    de.end()
        .map_err(|e| format!("text after the JSON object: {e}"))?;
    object
}
