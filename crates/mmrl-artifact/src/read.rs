//! Opening artifacts: manifest, files, row counts and schemas checked; hashes on request.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::error::{ArtifactError, Result, io};
use crate::hash::hash_file;
use crate::manifest::{FileRecord, MANIFEST_FILE, Manifest};
use crate::write::PARTIAL_MARKER;

/// A complete, validated artifact directory.
#[derive(Debug, Clone)]
pub struct Artifact {
    dir: PathBuf,
    manifest: Manifest,
}

impl Artifact {
    /// Opens `dir` and checks that it is complete and unchanged: the manifest parses, every listed file exists
    /// with the recorded size, every table has the recorded row count and schema, and every byte hashes to the
    /// manifest's blake3 ([`Artifact::verify_hashes`]). A stage never reads bytes that were not checked: a flipped
    /// byte is an error naming the file, not a different result.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.contains(PARTIAL_MARKER) {
            return Err(ArtifactError::MissingManifest { dir });
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            if !dir.is_dir() {
                return Err(ArtifactError::Io {
                    action: "opening artifact",
                    path: dir,
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            return Err(ArtifactError::MissingManifest { dir });
        }
        let manifest = Manifest::read(&manifest_path)?;
        let artifact = Self { dir, manifest };
        for record in &artifact.manifest.outputs {
            artifact.check_file(record)?;
        }
        let started = Instant::now();
        artifact.verify_hashes()?;
        tracing::debug!(
            dir = %artifact.dir.display(),
            bytes = artifact.manifest.outputs.iter().map(|o| o.bytes).sum::<u64>(),
            micros = started.elapsed().as_micros() as u64,
            "artifact verified"
        );
        Ok(artifact)
    }

    fn check_file(&self, record: &FileRecord) -> Result<()> {
        let path = self.dir.join(&record.file);
        let bytes = if record.dir {
            crate::hash::dir_bytes(&path)?
        } else {
            std::fs::metadata(&path)
                .map_err(io("reading metadata of", &path))?
                .len()
        };
        if bytes != record.bytes {
            return Err(ArtifactError::Corrupt {
                path,
                reason: format!("size is {bytes} bytes, the manifest says {}", record.bytes),
            });
        }
        let Some(expected) = &record.schema else {
            return Ok(());
        };
        let builder = parquet_builder(&path)?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        if Some(rows) != record.rows {
            return Err(ArtifactError::Corrupt {
                path,
                reason: format!("has {rows} rows, the manifest says {:?}", record.rows),
            });
        }
        if let Err(reason) = same_columns(expected, builder.schema()) {
            return Err(ArtifactError::Schema { path, reason });
        }
        Ok(())
    }

    /// Re-hashes every output and compares with the manifest ([`Artifact::open`] does this).
    pub fn verify_hashes(&self) -> Result<()> {
        for record in &self.manifest.outputs {
            let path = self.dir.join(&record.file);
            let hash = if record.dir {
                crate::hash::hash_dir(&path)?.0
            } else {
                hash_file(&path)?.0
            };
            if hash != record.blake3 {
                return Err(ArtifactError::Corrupt {
                    path,
                    reason: format!("blake3 is {hash}, the manifest says {}", record.blake3),
                });
            }
        }
        Ok(())
    }

    /// The artifact directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The path of an output file, which must be listed in the manifest.
    pub fn file(&self, file: &str) -> Result<PathBuf> {
        match self.manifest.output(file) {
            Some(_) => Ok(self.dir.join(file)),
            None => Err(ArtifactError::NoSuchOutput {
                dir: self.dir.clone(),
                name: file.to_owned(),
                available: self
                    .manifest
                    .outputs
                    .iter()
                    .map(|o| o.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The schema of table `name` (`NAME.parquet`) as recorded in the manifest.
    pub fn table_schema(&self, name: &str) -> Result<SchemaRef> {
        let file = format!("{name}.parquet");
        let path = self.file(&file)?;
        match self.manifest.output(&file).and_then(|o| o.schema.clone()) {
            Some(schema) => Ok(std::sync::Arc::new(schema)),
            None => Err(ArtifactError::Schema {
                path,
                reason: "not a table".into(),
            }),
        }
    }

    /// A streaming reader over table `name` in batches of `batch_size` rows.
    pub fn table_reader(&self, name: &str, batch_size: usize) -> Result<TableReader> {
        let path = self.file(&format!("{name}.parquet"))?;
        let inner = parquet_builder(&path)?
            .with_batch_size(batch_size)
            .build()
            .map_err(|source| ArtifactError::Parquet {
                path: path.clone(),
                source,
            })?;
        Ok(TableReader { path, inner })
    }

    /// Reads all of table `name` into memory.
    pub fn read_table(&self, name: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = self.table_schema(name)?;
        let batches = self.table_reader(name, 8192)?.collect::<Result<Vec<_>>>()?;
        Ok((schema, batches))
    }
}

/// Batches of one artifact table. Every error names the file, and a panic inside the Parquet or Arrow decoder
/// (which they raise on some malformed pages instead of returning an error) becomes an error too: a stage never
/// panics on a damaged table, even one whose manifest was rewritten to agree with it.
pub struct TableReader {
    path: PathBuf,
    inner: ParquetRecordBatchReader,
}

impl TableReader {
    /// The table's schema as stored in the file.
    pub fn schema(&self) -> SchemaRef {
        arrow::record_batch::RecordBatchReader::schema(&self.inner)
    }
}

impl Iterator for TableReader {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let inner = &mut self.inner;
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A decoded batch is also validated here: arrow's own checks panic on some inconsistent buffers
            // when the batch is used later, so they run while the panic can still be caught.
            inner.next().map(|batch| {
                let batch = batch?;
                for column in batch.columns() {
                    column.to_data().validate_full()?;
                }
                Ok(batch)
            })
        }));
        let path = &self.path;
        match next {
            Ok(item) => item.map(|r| {
                r.map_err(|source| ArtifactError::Arrow {
                    context: path.display().to_string(),
                    source,
                })
            }),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("malformed data");
                Some(Err(ArtifactError::Parquet {
                    path: path.clone(),
                    source: parquet::errors::ParquetError::General(format!(
                        "malformed table, the decoder failed: {why}"
                    )),
                }))
            }
        }
    }
}

fn parquet_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(io("opening", path))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| ArtifactError::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

/// Compares the columns (names, types, nullability) of two schemas; `Err` names the first difference.
pub fn same_columns(expected: &Schema, actual: &Schema) -> std::result::Result<(), String> {
    if expected.fields().len() != actual.fields().len() {
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        return Err(format!(
            "columns {:?}, expected {:?}",
            names(actual),
            names(expected)
        ));
    }
    for (e, a) in expected.fields().iter().zip(actual.fields()) {
        if e.name() != a.name()
            || e.data_type() != a.data_type()
            || e.is_nullable() != a.is_nullable()
        {
            return Err(format!(
                "column {:?} is {} {:?}, expected {:?} {} {:?}",
                a.name(),
                if a.is_nullable() {
                    "nullable"
                } else {
                    "non-null"
                },
                a.data_type(),
                e.name(),
                if e.is_nullable() {
                    "nullable"
                } else {
                    "non-null"
                },
                e.data_type()
            ));
        }
    }
    Ok(())
}
