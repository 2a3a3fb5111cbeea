//! Per-row checks: a source row's cells become a sample whose media are still to be read, or a reject naming
//! the file, row and column at fault.

use std::collections::HashMap;
use std::path::PathBuf;

use mmrl_artifact::sample::{FeatureKind, Split};

use super::columns::Plan;
use super::media::{Sniffed, kind_by_extension, kind_by_signature, resolve_media, supported};
use super::{FeatureValue, MODALITY_WORDS, Reject, Sample, reject};
use crate::source::{Format, MediaKind, Row, Table, Value};
use crate::{Error, Result};

/// Where a sample's media comes from.
#[derive(Debug)]
pub(super) enum MediaSource {
    /// A file under the dataset folder; `rel` is relative to the dataset root.
    File {
        /// Path relative to the dataset root (hashed and shown in messages).
        rel: String,
        /// The resolved file.
        path: PathBuf,
    },
    /// Bytes embedded in the data (Parquet).
    Bytes {
        /// The stored path or the column name, for messages.
        name: String,
        /// The encoded file.
        bytes: Vec<u8>,
    },
}

/// A row that passed the cheap checks; its media still need reading and decoding.
#[derive(Debug)]
pub(super) struct Pending {
    pub sample: Sample,
    pub image: Option<MediaSource>,
    pub audio: Option<MediaSource>,
    /// Where the row is, for messages.
    pub loc: String,
}

/// A checked row: its line, its id if it has one, and the pending sample or the reject.
pub(super) type Checked = (u64, Option<String>, std::result::Result<Pending, Reject>);

/// Checks rows in order (duplicate ids need the order).
pub(super) struct Checker<'a> {
    table: &'a Table,
    plan: &'a Plan,
    /// Canonical folder of each source file: media paths are relative to it and may not leave it.
    bases: Vec<PathBuf>,
    /// Root-relative folder of each source file (`""` at the root), prefixed to media paths.
    dir_rels: Vec<String>,
    /// Ids seen so far and where.
    seen: HashMap<String, String>,
}

impl<'a> Checker<'a> {
    /// Prepares the checks for a table read under `plan`.
    pub fn new(table: &'a Table, plan: &'a Plan) -> Result<Self> {
        let mut bases = Vec::new();
        let mut dir_rels = Vec::new();
        for file in &table.layout.files {
            let folder = file
                .path
                .parent()
                .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf());
            let folder = if folder.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                folder
            };
            bases.push(folder.canonicalize().map_err(|source| Error::Io {
                action: "resolving",
                path: folder.clone(),
                source,
            })?);
            dir_rels.push(
                file.rel
                    .rsplit_once('/')
                    .map_or(String::new(), |(dir, _)| dir.to_owned()),
            );
        }
        Ok(Self {
            table,
            plan,
            bases,
            dir_rels,
            seen: HashMap::new(),
        })
    }

    /// Checks one row, taking its cells (media bytes move into the sample).
    pub fn check(&mut self, mut row: Row) -> Checked {
        let loc = self.table.location(&row);
        let id = match self.plan.role("id") {
            Some(i) => text_of(&row.cells[i]),
            None => self
                .table
                .file(&row)
                .map(|f| format!("{}:{}", f.rel, row.line)),
        };
        let outcome = match &row.malformed {
            Some(why) => Err(reject("malformed_row", format!("{loc}: {why}"))),
            None => self.check_cells(&mut row, &loc),
        };
        (row.line, id.filter(|s| !s.is_empty()), outcome)
    }

    fn check_cells(&mut self, row: &mut Row, loc: &str) -> std::result::Result<Pending, Reject> {
        let id = match self.plan.role("id") {
            Some(i) => self.text(row, i, loc)?.unwrap_or_default(),
            None => self
                .table
                .file(row)
                .map(|f| format!("{}:{}", f.rel, row.line))
                .unwrap_or_default(),
        };
        if id.is_empty() {
            return Err(reject("empty_id", format!("{loc}: empty id")));
        }
        if let Some(first) = self.seen.get(&id) {
            return Err(reject(
                "duplicate_id",
                format!("{loc}: id {id:?} already used at {first}"),
            ));
        }
        self.seen.insert(id.clone(), loc.to_owned());
        let question = self
            .role_text(row, "question", loc)?
            .ok_or_else(|| reject("empty_question", format!("{loc}: empty question")))?;
        let answer = self
            .role_text(row, "answer", loc)?
            .ok_or_else(|| reject("empty_answer", format!("{loc}: empty answer")))?;
        let split = self.split(row, loc)?;
        let task = self.role_text(row, "task", loc)?;
        let qtype = self.role_text(row, "qtype", loc)?;
        let modalities = self.modalities(row, loc)?;
        let features = self.features(row, loc)?;
        let checks = self
            .plan
            .checkers
            .iter()
            .map(|(_, i)| self.text(row, *i, loc))
            .collect::<std::result::Result<_, _>>()?;
        let (image, audio) = self.media(row, loc)?;
        Ok(Pending {
            sample: Sample {
                id,
                split,
                task,
                qtype,
                question,
                answer,
                image: None,
                audio: None,
                features,
                modalities,
                checks,
            },
            image,
            audio,
            loc: loc.to_owned(),
        })
    }

    fn column(&self, index: usize) -> &str {
        &self.table.columns[index].name
    }

    fn role_text(
        &self,
        row: &Row,
        role: &str,
        loc: &str,
    ) -> std::result::Result<Option<String>, Reject> {
        match self.plan.role(role) {
            Some(i) => self.text(row, i, loc),
            None => Ok(None),
        }
    }

    /// A cell as trimmed text; empty text is missing.
    fn text(
        &self,
        row: &Row,
        index: usize,
        loc: &str,
    ) -> std::result::Result<Option<String>, Reject> {
        let column = self.column(index);
        match &row.cells[index] {
            Value::Invalid(why) => Err(reject(
                "invalid_label",
                format!("{loc}: column {column:?}: {why}"),
            )),
            Value::Media { .. } | Value::Nested => Err(reject(
                "malformed_row",
                format!("{loc}: column {column:?} holds media or a list; expected text"),
            )),
            other => Ok(text_of(other).filter(|s| !s.is_empty())),
        }
    }

    /// The row's split: the `split` column (`train`, `val`, `test`, or `validation`) or its file's split folder
    /// or name; the two must agree when both are given.
    fn split(&self, row: &Row, loc: &str) -> std::result::Result<Option<String>, Reject> {
        let from_column = match self.role_text(row, "split", loc)? {
            None => None,
            Some(s) => Some(
                Split::parse(&s)
                    .or((s == "validation").then_some(Split::Val))
                    .ok_or_else(|| {
                        reject(
                            "invalid_split",
                            format!("{loc}: split {s:?} is not one of train, val, test"),
                        )
                    })?,
            ),
        };
        let from_file = self.table.file(row).and_then(|f| f.split);
        match (from_column, from_file) {
            (Some(c), Some(f)) if c != f => Err(reject(
                "invalid_split",
                format!(
                    "{loc}: split column says {:?} but the file's folder or name says {:?}",
                    c.as_str(),
                    f.as_str()
                ),
            )),
            (c, f) => Ok(c.or(f).map(|s| s.as_str().to_owned())),
        }
    }

    /// The `modalities` annotation: words among [`MODALITY_WORDS`], as sft reads them.
    fn modalities(&self, row: &Row, loc: &str) -> std::result::Result<Option<String>, Reject> {
        let Some(cell) = self.role_text(row, "modalities", loc)? else {
            return Ok(None);
        };
        let unknown = cell
            .split([' ', '|', ','])
            .find(|w| !w.is_empty() && !MODALITY_WORDS.contains(w));
        if let Some(word) = unknown {
            return Err(reject(
                "invalid_modalities",
                format!(
                    "{loc}: modalities {cell:?}: {word:?} is not a modality; expected words among {}",
                    MODALITY_WORDS.join(", ")
                ),
            ));
        }
        Ok(Some(cell))
    }

    fn features(&self, row: &Row, loc: &str) -> std::result::Result<Vec<FeatureValue>, Reject> {
        let mut cells = Vec::with_capacity(self.plan.features.len());
        for (name, kind, i) in &self.plan.features {
            let cell = &row.cells[*i];
            if let Value::Invalid(why) = cell {
                return Err(reject(
                    "invalid_label",
                    format!("{loc}: column {name:?}: {why}"),
                ));
            }
            cells.push(match kind {
                FeatureKind::Categorical => FeatureValue::Cat(self.text(row, *i, loc)?),
                FeatureKind::Numeric => FeatureValue::Num(number(cell, name, loc)?),
            });
        }
        Ok(cells)
    }

    /// The row's image and audio: bound columns first, then auto media columns by extension or signature.
    fn media(
        &self,
        row: &mut Row,
        loc: &str,
    ) -> std::result::Result<(Option<MediaSource>, Option<MediaSource>), Reject> {
        let mut found: [Option<(usize, MediaSource)>; 2] = [None, None];
        for (slot, kind) in [MediaKind::Image, MediaKind::Audio].into_iter().enumerate() {
            if let Some(i) = self.plan.role(kind.as_str()) {
                let cell = std::mem::take(&mut row.cells[i]);
                if let Some(source) = self.bound_media(row, i, cell, kind, loc)? {
                    found[slot] = Some((i, source));
                }
            }
        }
        for &i in &self.plan.auto_media {
            let cell = std::mem::take(&mut row.cells[i]);
            let Some((kind, source)) = self.auto_media(row, i, cell, loc)? else {
                continue;
            };
            let slot = usize::from(kind == MediaKind::Audio);
            if let Some((other, _)) = &found[slot] {
                return Err(reject(
                    "ambiguous_media",
                    format!(
                        "{loc}: columns {:?} and {:?} both hold {} for this row; choose one with columns = {{ {} = \"...\" }} in the ingest params",
                        self.column(*other),
                        self.column(i),
                        if kind == MediaKind::Image {
                            "an image"
                        } else {
                            "audio"
                        },
                        kind.as_str()
                    ),
                ));
            }
            found[slot] = Some((i, source));
        }
        let [image, audio] = found;
        Ok((image.map(|(_, s)| s), audio.map(|(_, s)| s)))
    }

    /// A cell of a column bound to `kind`. `manifest.csv` paths are not checked by extension (the decoders
    /// decide); other formats' file names must have one of the kind's extensions.
    fn bound_media(
        &self,
        row: &Row,
        index: usize,
        cell: Value,
        kind: MediaKind,
        loc: &str,
    ) -> std::result::Result<Option<MediaSource>, Reject> {
        let column = self.column(index).to_owned();
        let Some(source) = self.media_source(row, index, cell, loc)? else {
            return Ok(None);
        };
        let rel = match &source {
            MediaSource::File { rel, .. } if self.table.layout.format != Format::ManifestCsv => rel,
            _ => return Ok(Some(source)),
        };
        match kind_by_extension(rel) {
            Sniffed::Media(k) if k == kind => {}
            Sniffed::Media(other) => {
                return Err(reject(
                    "unsupported_format",
                    format!(
                        "{loc}: {} column {column:?} names {rel:?}, an {} file; {}",
                        kind.as_str(),
                        other.as_str(),
                        supported(Some(kind))
                    ),
                ));
            }
            Sniffed::OtherAudio(format) => return Err(other_audio(loc, &column, rel, format)),
            Sniffed::Unknown => {
                return Err(reject(
                    "unsupported_format",
                    format!(
                        "{loc}: {column} file {rel:?} has an unsupported extension; {}",
                        supported(Some(kind))
                    ),
                ));
            }
        }
        Ok(Some(source))
    }

    /// A cell of an auto media column and its kind: a file by extension, embedded bytes by signature (then by
    /// their stored path's extension).
    fn auto_media(
        &self,
        row: &Row,
        index: usize,
        cell: Value,
        loc: &str,
    ) -> std::result::Result<Option<(MediaKind, MediaSource)>, Reject> {
        let column = self.column(index).to_owned();
        let Some(source) = self.media_source(row, index, cell, loc)? else {
            return Ok(None);
        };
        let (sniffed, name) = match &source {
            MediaSource::File { rel, .. } => (kind_by_extension(rel), rel.clone()),
            MediaSource::Bytes { name, bytes } => match kind_by_signature(bytes) {
                Sniffed::Unknown => (kind_by_extension(name), name.clone()),
                known => (known, name.clone()),
            },
        };
        match sniffed {
            Sniffed::Media(kind) => Ok(Some((kind, source))),
            Sniffed::OtherAudio(format) => Err(other_audio(loc, &column, &name, format)),
            Sniffed::Unknown => Err(reject(
                "unsupported_format",
                format!(
                    "{loc}: {column} {name:?} is neither an image nor WAV audio; {}",
                    supported(None)
                ),
            )),
        }
    }

    /// Where a media cell's content is: a path (relative to the row's file) or embedded bytes.
    fn media_source(
        &self,
        row: &Row,
        index: usize,
        cell: Value,
        loc: &str,
    ) -> std::result::Result<Option<MediaSource>, Reject> {
        let column = self.column(index);
        let path = match cell {
            Value::Null => return Ok(None),
            Value::Text(t) if t.trim().is_empty() => return Ok(None),
            Value::Text(t) => t.trim().to_owned(),
            Value::Media {
                bytes: Some(bytes),
                path,
            } => {
                return Ok(Some(MediaSource::Bytes {
                    name: path
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| format!("column {column}")),
                    bytes,
                }));
            }
            Value::Media {
                bytes: None,
                path: Some(p),
            } if !p.trim().is_empty() => p.trim().to_owned(),
            Value::Media { .. } => return Ok(None),
            Value::Invalid(why) => {
                return Err(reject(
                    "invalid_label",
                    format!("{loc}: column {column:?}: {why}"),
                ));
            }
            Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Nested => {
                return Err(reject(
                    "malformed_row",
                    format!(
                        "{loc}: column {column:?} holds a number or a list; expected a file path"
                    ),
                ));
            }
        };
        let base = &self.bases[row.file];
        let resolved = resolve_media(base, &path, loc, column)?;
        let dir = &self.dir_rels[row.file];
        let rel = if dir.is_empty() {
            path
        } else {
            format!("{dir}/{path}")
        };
        Ok(Some(MediaSource::File {
            rel,
            path: resolved,
        }))
    }
}

fn other_audio(loc: &str, column: &str, name: &str, format: &str) -> Reject {
    reject(
        "unsupported_format",
        format!(
            "{loc}: {column} {name:?} is {format} audio; only WAV audio is decoded (convert it to .wav)"
        ),
    )
}

/// A scalar as text: numbers in Rust's shortest form, booleans as `true`/`false`.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t.trim().to_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Media { .. } | Value::Nested | Value::Invalid(_) => None,
    }
}

/// A numeric feature cell: a finite number or missing.
fn number(cell: &Value, name: &str, loc: &str) -> std::result::Result<Option<f64>, Reject> {
    let shown = match cell {
        Value::Null => return Ok(None),
        Value::Int(i) => return Ok(Some(*i as f64)),
        Value::Text(t) if t.trim().is_empty() => return Ok(None),
        Value::Float(f) => {
            if f.is_finite() {
                return Ok(Some(*f));
            }
            return Err(non_finite(name, &f.to_string(), loc));
        }
        Value::Text(t) => match t.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => return Ok(Some(v)),
            Ok(_) => return Err(non_finite(name, t.trim(), loc)),
            Err(_) => t.trim().to_owned(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Media { .. } | Value::Nested | Value::Invalid(_) => "media or a list".to_owned(),
    };
    Err(reject(
        "unparsable_number",
        format!("{loc}: column {name:?} holds {shown:?}; expected a number or an empty cell"),
    ))
}

fn non_finite(name: &str, cell: &str, loc: &str) -> Reject {
    reject(
        "non_finite_number",
        format!("{loc}: column {name:?} holds {cell:?}; expected a finite number or an empty cell"),
    )
}
