//! Reading a dataset in the formats users already have, before any validation: a `manifest.csv` folder, a
//! Hugging Face ImageFolder/AudioFolder (`metadata.csv` or `metadata.jsonl`, optionally in split folders), or
//! Parquet files as the `datasets` library writes them (`{bytes, path}` image and audio structs).
//!
//! [`detect`] says which layout a path holds and which files make it up; [`read`] returns every row as typed
//! cells ([`Value`]), media not yet read or decoded, so that ingest can validate them and a profiler can
//! describe them. Every row knows its file and its `line`: the line of a CSV or JSONL file (the CSV header is
//! line 1; a record spanning several lines has the line it starts on) or the row index + 1 of a Parquet file.

mod parquet;
mod text;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mmrl_artifact::sample::Split;
use serde::Serialize;

use crate::{Error, Result};

/// The file that makes a folder a `manifest.csv` dataset.
pub const MANIFEST_CSV: &str = "manifest.csv";
/// The metadata file names of Hugging Face folder datasets that ingest reads.
pub const METADATA_FILES: [&str; 2] = ["metadata.csv", "metadata.jsonl"];
/// How deep below the dataset path metadata and Parquet files are looked for: the root, a split folder
/// (`train/metadata.csv`, `data/train-00000-of-00001.parquet`) and one more (`default/train/0000.parquet`, the
/// Hub's converted-Parquet layout).
pub const MAX_DEPTH: usize = 2;

/// Which layout a dataset was read from; recorded as `format` in ingest's `report.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `manifest.csv` at the folder's root (mmrl's own layout).
    ManifestCsv,
    /// A Hugging Face ImageFolder/AudioFolder with `metadata.csv` files.
    HfFolderCsv,
    /// A Hugging Face ImageFolder/AudioFolder with `metadata.jsonl` files.
    HfFolderJsonl,
    /// One or more Parquet files, as `Dataset.to_parquet` or the Hub lays them out.
    Parquet,
}

impl Format {
    /// The name written to `report.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::ManifestCsv => "manifest_csv",
            Format::HfFolderCsv => "hf_folder_csv",
            Format::HfFolderJsonl => "hf_folder_jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// What a row position is called in messages: `line` in CSV and JSONL files, `row` in Parquet files.
    pub fn unit(self) -> &'static str {
        match self {
            Format::Parquet => "row",
            _ => "line",
        }
    }
}

/// A media modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// PNG or JPEG.
    Image,
    /// WAV.
    Audio,
}

impl MediaKind {
    /// The reserved column name of this modality.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
        }
    }
}

/// One file of a dataset layout.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    /// Path relative to the dataset root, `/`-separated: the name used in messages and content hashes.
    pub rel: String,
    /// The file on disk.
    pub path: PathBuf,
    /// The split its folder or file name gives (`datasets`' keywords), if any.
    pub split: Option<Split>,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The format.
    pub format: Format,
    /// The dataset root: the folder given, or the folder holding a single Parquet file given.
    pub root: PathBuf,
    /// The files holding rows, sorted by `rel`.
    pub files: Vec<SourceFile>,
}

/// What a column holds, as far as the file format says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnKind {
    /// Text, numbers or booleans.
    Value,
    /// A `datasets` file-name column (`file_name` or `<name>_file_name`): media paths relative to the metadata
    /// file. `alias` is `<name>`, the name `datasets` gives the media feature (`None` for plain `file_name`).
    FileName {
        /// The `<name>` of `<name>_file_name`.
        alias: Option<String>,
    },
    /// A `{bytes, path}` struct column; `declared` is the `datasets` feature type (`Image`, `Audio`) from the
    /// Parquet schema's `huggingface` metadata, when present.
    MediaStruct {
        /// The feature type declared in the file's metadata.
        declared: Option<MediaKind>,
    },
    /// A plain binary column: media only when mapped to `image` or `audio`.
    Binary,
    /// Lists, maps and other structs: not one value per row; named with its type.
    Nested {
        /// The column's type, for messages.
        type_name: String,
    },
}

/// A column of the dataset (the union over its files, in first-seen order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Column {
    /// The name in the data.
    pub name: String,
    /// What it holds.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// Missing: an empty CSV cell, a JSON `null` or absent key, a Parquet null.
    #[default]
    Null,
    /// Text (CSV cells are always text; numbers are inferred later).
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Media held in the data (a Parquet `{bytes, path}` struct or a binary cell).
    Media {
        /// The encoded file, when embedded.
        bytes: Option<Vec<u8>>,
        /// The file's path or name, as `datasets` stored it.
        path: Option<String>,
    },
    /// A list, object or other nested value.
    Nested,
    /// A value the format's own metadata declares invalid (a `ClassLabel` index out of range), with why.
    Invalid(String),
}

/// One row of a source file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index into [`Table::layout`]'s files.
    pub file: usize,
    /// The line (CSV, JSONL) or row index + 1 (Parquet) in that file.
    pub line: u64,
    /// One cell per [`Table::columns`] entry.
    pub cells: Vec<Value>,
    /// Why the row could not be read as a whole (bad JSON, wrong field count), if it could not.
    pub malformed: Option<String>,
}

/// A dataset read into rows, media not yet loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The layout it was read from.
    pub layout: Layout,
    /// Columns: the union over the files, in first-seen order.
    pub columns: Vec<Column>,
    /// `ClassLabel` names of integer columns (Parquet `huggingface` metadata); their cells already hold the names.
    pub class_labels: BTreeMap<String, Vec<String>>,
    /// Every data row, files in `rel` order, rows in file order.
    pub rows: Vec<Row>,
    /// (rel, blake3, bytes) of every source file read.
    pub file_hashes: Vec<(String, String, u64)>,
}

impl Table {
    /// The names of the data's columns, for messages.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Where a row is, for messages: `train/metadata.csv line 3`, `data.parquet row 7`.
    pub fn location(&self, row: &Row) -> String {
        let file = self
            .layout
            .files
            .get(row.file)
            .map_or("?", |f| f.rel.as_str());
        format!("{file} {} {}", self.layout.format.unit(), row.line)
    }

    /// The source file of a row.
    pub fn file(&self, row: &Row) -> Option<&SourceFile> {
        self.layout.files.get(row.file)
    }
}

/// Says which layout `path` holds: a `.parquet` file; or a folder with `manifest.csv` at its root (first
/// choice), else `metadata.csv`/`metadata.jsonl` files, else `.parquet` files, looked for up to [`MAX_DEPTH`]
/// folders down (hidden entries skipped).
pub fn detect(path: &Path) -> Result<Layout> {
    let dataset_error = |message: String| Error::Dataset {
        path: path.to_path_buf(),
        message,
    };
    if path.is_file() {
        if !has_extension(path, "parquet") {
            return Err(dataset_error(format!(
                "a dataset is a folder or a .parquet file; {}",
                EXPECTED_LAYOUTS
            )));
        }
        let root = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let rel = file_name(path);
        let split = split_of(&rel).map_err(dataset_error)?;
        return Ok(Layout {
            format: Format::Parquet,
            root,
            files: vec![SourceFile {
                rel,
                path: path.to_path_buf(),
                split,
            }],
        });
    }
    if !path.is_dir() {
        return Err(dataset_error(format!(
            "not a directory; a dataset folder holds manifest.csv and its media (or see ingest's formats): {EXPECTED_LAYOUTS}"
        )));
    }
    if path.join(MANIFEST_CSV).is_file() {
        return Ok(Layout {
            format: Format::ManifestCsv,
            root: path.to_path_buf(),
            files: vec![SourceFile {
                rel: MANIFEST_CSV.into(),
                path: path.join(MANIFEST_CSV),
                split: None,
            }],
        });
    }
    let mut found = Vec::new();
    walk(path, "", 0, &mut found)?;
    found.sort();
    let pick = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        found.iter().filter(|r| keep(r)).cloned().collect()
    };
    let csv = pick(&|r| file_name(Path::new(r)) == METADATA_FILES[0]);
    let jsonl = pick(&|r| file_name(Path::new(r)) == METADATA_FILES[1]);
    let parquet = pick(&|r| has_extension(Path::new(r), "parquet"));
    let (format, rels) = match (csv.is_empty(), jsonl.is_empty()) {
        (false, false) => {
            return Err(dataset_error(format!(
                "holds both metadata.csv ({}) and metadata.jsonl ({}) files; use one format, as `datasets` requires",
                csv.join(", "),
                jsonl.join(", ")
            )));
        }
        (false, true) => (Format::HfFolderCsv, csv),
        (true, false) => (Format::HfFolderJsonl, jsonl),
        (true, true) if !parquet.is_empty() => (Format::Parquet, parquet),
        (true, true) => {
            return Err(Error::Dataset {
                path: path.join(MANIFEST_CSV),
                message: format!(
                    "No such file, and no metadata.csv, metadata.jsonl or .parquet file within {MAX_DEPTH} folders of {} either; {EXPECTED_LAYOUTS}",
                    path.display()
                ),
            });
        }
    };
    let files = rels
        .into_iter()
        .map(|rel| {
            let split = split_of(&rel).map_err(dataset_error)?;
            Ok(SourceFile {
                path: path.join(&rel),
                rel,
                split,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Layout {
        format,
        root: path.to_path_buf(),
        files,
    })
}

const EXPECTED_LAYOUTS: &str = "expected manifest.csv with its media, a Hugging Face ImageFolder/AudioFolder \
    (metadata.csv or metadata.jsonl with a file_name column, optionally in train/, validation/, test/ folders), \
    or Parquet files as `datasets` writes them";

/// Collects the `/`-separated paths of metadata and Parquet files under `dir`, sorted by the caller.
fn walk(dir: &Path, prefix: &str, depth: usize, found: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        action: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            action: "listing",
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, &rel, depth + 1, found)?;
            }
        } else if METADATA_FILES.contains(&name.as_str()) || has_extension(&path, "parquet") {
            found.push(rel);
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

/// `datasets`' split keywords (`data_files.py`), mapped to mmrl's splits.
const SPLIT_KEYWORDS: [(&str, Split); 10] = [
    ("train", Split::Train),
    ("training", Split::Train),
    ("validation", Split::Val),
    ("valid", Split::Val),
    ("dev", Split::Val),
    ("val", Split::Val),
    ("test", Split::Test),
    ("testing", Split::Test),
    ("eval", Split::Test),
    ("evaluation", Split::Test),
];

/// The split a file's path names, as `datasets` reads it: a split keyword as a word of the file name or of a
/// folder name, words separated by `-`, `.`, `_`, space or digits (`train-00000-of-00001.parquet`,
/// `validation/metadata.csv`). The file name is read first, then its folders from the innermost. A name whose
/// words name two different splits is an error; a path naming none has no split (select assigns one, where
/// `datasets` would call it `train`).
pub fn split_of(rel: &str) -> std::result::Result<Option<Split>, String> {
    for part in rel.rsplit('/') {
        let mut splits = part
            .split(|c: char| "-._ ".contains(c) || c.is_ascii_digit())
            .filter_map(|word| {
                let word = word.to_ascii_lowercase();
                SPLIT_KEYWORDS
                    .iter()
                    .find(|(k, _)| *k == word)
                    .map(|(_, s)| *s)
            })
            .collect::<Vec<_>>();
        splits.sort_unstable();
        splits.dedup();
        match splits.as_slice() {
            [] => {}
            [one] => return Ok(Some(*one)),
            _ => {
                return Err(format!(
                    "{rel:?}: {part:?} names more than one split ({}); rename it so one of train, validation, test remains",
                    splits
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(None)
}

/// Reads the dataset at `path` (a folder or a Parquet file) into a [`Table`].
pub fn read(path: &Path) -> Result<Table> {
    read_layout(detect(path)?)
}

/// Reads the files of a detected layout into a [`Table`].
pub fn read_layout(layout: Layout) -> Result<Table> {
    let mut columns = Columns::default();
    let mut rows = Vec::new();
    let mut file_hashes = Vec::new();
    let mut class_labels = BTreeMap::new();
    for (index, file) in layout.files.iter().enumerate() {
        let part = match layout.format {
            Format::ManifestCsv | Format::HfFolderCsv => text::read_csv(file, layout.format)?,
            Format::HfFolderJsonl => text::read_jsonl(file)?,
            Format::Parquet => parquet::read_parquet(file)?,
        };
        file_hashes.push((part.rel, part.hash, part.bytes));
        for (name, names) in part.class_labels {
            class_labels.entry(name).or_insert(names);
        }
        let slots = columns.merge(&part.columns, &file.path)?;
        for row in part.rows {
            let mut cells = vec![Value::Null; columns.list.len()];
            for (cell, slot) in row.cells.into_iter().zip(&slots) {
                cells[*slot] = cell;
            }
            rows.push(Row {
                file: index,
                line: row.line,
                cells,
                malformed: row.malformed,
            });
        }
    }
    // Rows of earlier files were sized before later files added columns.
    let width = columns.list.len();
    for row in &mut rows {
        row.cells.resize(width, Value::Null);
    }
    Ok(Table {
        layout,
        columns: columns.list,
        class_labels,
        rows,
        file_hashes,
    })
}

/// The union of the files' columns.
#[derive(Default)]
struct Columns {
    list: Vec<Column>,
    index: HashMap<String, usize>,
}

impl Columns {
    /// Adds a file's columns, returning where each lands; a column whose kind differs between files is an error.
    fn merge(&mut self, columns: &[Column], file: &Path) -> Result<Vec<usize>> {
        let mut slots = Vec::with_capacity(columns.len());
        for column in columns {
            match self.index.get(&column.name) {
                Some(&slot) => {
                    let known = &self.list[slot];
                    if !same_kind(&known.kind, &column.kind) {
                        return Err(Error::Dataset {
                            path: file.to_path_buf(),
                            message: format!(
                                "column {:?} is {:?} here but {:?} in an earlier file; every file of a dataset needs the same columns",
                                column.name, column.kind, known.kind
                            ),
                        });
                    }
                    slots.push(slot);
                }
                None => {
                    self.index.insert(column.name.clone(), self.list.len());
                    slots.push(self.list.len());
                    self.list.push(column.clone());
                }
            }
        }
        Ok(slots)
    }
}

/// Kinds agree when both are the same variant (a struct declared in one file and not in another still agrees).
fn same_kind(a: &ColumnKind, b: &ColumnKind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// One file's contents, before its columns join the table's.
struct FilePart {
    rel: String,
    hash: String,
    bytes: u64,
    columns: Vec<Column>,
    class_labels: BTreeMap<String, Vec<String>>,
    rows: Vec<FileRow>,
}

struct FileRow {
    line: u64,
    cells: Vec<Value>,
    malformed: Option<String>,
}

/// Reads a whole source file, naming it on failure.
fn read_bytes(file: &SourceFile) -> Result<Vec<u8>> {
    std::fs::read(&file.path).map_err(|source| Error::Io {
        action: "reading the dataset file",
        path: file.path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rel: &str, expected: std::result::Result<Option<Split>, &str>) {
        let got = split_of(rel);
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{rel}"),
            (Err(g), Err(e)) => assert!(g.contains(e), "{rel}: {g}"),
            (g, e) => panic!("{rel}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn splits_follow_datasets_keywords() {
        check("train/metadata.csv", Ok(Some(Split::Train)));
        check("validation/metadata.jsonl", Ok(Some(Split::Val)));
        check("valid/metadata.csv", Ok(Some(Split::Val)));
        check("val/metadata.csv", Ok(Some(Split::Val)));
        check("dev/metadata.csv", Ok(Some(Split::Val)));
        check("test/metadata.csv", Ok(Some(Split::Test)));
        check("metadata.csv", Ok(None));
        check("data/train-00000-of-00001.parquet", Ok(Some(Split::Train)));
        check(
            "data/validation-00000-of-00002.parquet",
            Ok(Some(Split::Val)),
        );
        check("default/test/0000.parquet", Ok(Some(Split::Test)));
        check("my_eval_set.parquet", Ok(Some(Split::Test)));
        check("data.parquet", Ok(None));
        // A keyword inside a longer word is not a split.
        check("trainer/contest.parquet", Ok(None));
        check("Train/metadata.csv", Ok(Some(Split::Train)));
        check("train_test.parquet", Err("names more than one split"));
    }
}
