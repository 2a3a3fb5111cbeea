//! Atomic artifact writing: build under a temporary name, rename when complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{ArtifactError, Result, io};
use crate::hash::{combine, hash_file};
use crate::manifest::{FORMAT_VERSION, FileRecord, InputRecord, MANIFEST_FILE, Manifest, Role};
use crate::output::{OLD_MARKER, OutputLock, check_replaceable, clean_stale};
use crate::read::Artifact;

/// Who wrote an artifact and how it was configured; everything in the manifest that the writer cannot know.
#[derive(Debug, Clone)]
pub struct StageInfo {
    /// The stage name.
    pub stage: String,
    /// The implementing crate (use `env!("CARGO_PKG_NAME")`).
    pub crate_name: String,
    /// Its version (use `env!("CARGO_PKG_VERSION")`).
    pub crate_version: String,
    /// The resolved configuration.
    pub config: serde_json::Value,
    /// The seed, if the stage is random.
    pub seed: Option<u64>,
}

/// Marker in the name of a directory that is still being written. Never a valid artifact.
pub const PARTIAL_MARKER: &str = ".partial-";

/// Builds an artifact directory under a temporary sibling name and renames it into place on [`commit`].
///
/// Dropping the writer without committing removes the temporary directory; a killed process leaves only a
/// hidden `.NAME.partial-*` directory that has no manifest and is never read as an artifact, and that the next
/// writer of the same output removes once the process is gone. An existing artifact at the destination stays
/// intact until the new one is complete. The writer replaces only an artifact or an empty folder, and holds the
/// lock file `.NAME.lock` beside the destination from [`create`] until commit or drop, so that a second writer
/// of the same output fails at once.
///
/// [`create`]: ArtifactWriter::create
///
/// [`commit`]: ArtifactWriter::commit
#[derive(Debug)]
pub struct ArtifactWriter {
    dest: PathBuf,
    tmp: PathBuf,
    info: StageInfo,
    started_at: String,
    inputs: Vec<InputRecord>,
    outputs: Vec<FileRecord>,
    fit_splits: Vec<String>,
    committed: bool,
    /// Held until the writer is dropped, after the temporary directory is gone or renamed.
    _lock: OutputLock,
}

impl ArtifactWriter {
    /// Starts an artifact that will live at `dest` once committed.
    ///
    /// Before anything is written: takes the lock of `dest` (an error naming the holder's pid when another
    /// writer has it), removes the partial directories of writers of `dest` that are gone, and checks that
    /// `dest` is absent, an empty folder or an artifact ([`check_replaceable`](crate::check_replaceable)).
    pub fn create(dest: impl Into<PathBuf>, info: StageInfo) -> Result<Self> {
        let dest = dest.into();
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                ArtifactError::Usage(format!(
                    "{}: artifact path needs a file name",
                    dest.display()
                ))
            })?
            .to_owned();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
        let lock = OutputLock::acquire(&dest)?;
        clean_stale(&dest);
        check_replaceable(&dest)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = parent.join(format!(
            ".{name}{PARTIAL_MARKER}{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
        tracing::debug!(dest = %dest.display(), tmp = %tmp.display(), "artifact started");
        Ok(Self {
            dest,
            tmp,
            info,
            started_at: now_rfc3339(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            fit_splits: Vec::new(),
            committed: false,
            _lock: lock,
        })
    }

    /// The temporary directory files are written into.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Records an input that is itself an artifact.
    pub fn input_artifact(&mut self, name: &str, artifact: &Artifact) {
        let m = artifact.manifest();
        self.inputs.push(InputRecord {
            name: name.to_owned(),
            path: artifact.dir().display().to_string(),
            kind: crate::manifest::InputKind::Artifact,
            content_hash: m.content_hash.clone(),
            bytes: m.outputs.iter().map(|o| o.bytes).sum(),
            rows: Some(m.data_rows()),
            stage: Some(m.stage.clone()),
            lineage_fit_splits: m.lineage_fit_splits(),
        });
    }

    /// Records any other input (a user's folder, a file).
    pub fn input(&mut self, record: InputRecord) {
        self.inputs.push(record);
    }

    /// Declares which splits this stage fit statistics on (`["train"]` for a leak-free stage).
    pub fn fit_splits(&mut self, splits: &[&str]) {
        self.fit_splits = splits.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Opens a Parquet table `NAME.parquet` for streaming writes of batches with `schema`.
    pub fn table(&mut self, name: &str, role: Role, schema: SchemaRef) -> Result<TableWriter<'_>> {
        let file = format!("{name}.parquet");
        self.check_new_file(&file)?;
        let path = self.tmp.join(&file);
        let handle = File::create(&path).map_err(io("creating", &path))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("mmrl-artifact {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer =
            ArrowWriter::try_new(handle, schema.clone(), Some(props)).map_err(|source| {
                ArtifactError::Parquet {
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(TableWriter {
            owner: self,
            file,
            path,
            role,
            schema,
            writer: Some(writer),
            rows: 0,
        })
    }

    /// Writes a whole table from batches that share one schema.
    pub fn write_table(
        &mut self,
        name: &str,
        role: Role,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<u64> {
        let mut table = self.table(name, role, schema)?;
        for batch in batches {
            table.write(batch)?;
        }
        table.finish()
    }

    /// Writes the stage's `rejects` table: every row it dropped, with the reason (see [`crate::sample::Rejects`]).
    pub fn write_rejects(&mut self, rejects: crate::sample::Rejects) -> Result<u64> {
        let batch = rejects.finish()?;
        self.write_table(
            "rejects",
            Role::Rejects,
            crate::sample::rejects_schema(),
            &[batch],
        )
    }

    /// Writes a JSON file (state, report) into the artifact.
    pub fn write_json(
        &mut self,
        file: &str,
        role: Role,
        value: &impl serde::Serialize,
    ) -> Result<()> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| ArtifactError::Usage(format!("serializing {file}: {e}")))?;
        self.write_bytes(file, role, &text)
    }

    /// Writes any file into the artifact.
    pub fn write_bytes(&mut self, file: &str, role: Role, bytes: &[u8]) -> Result<()> {
        self.check_new_file(file)?;
        let path = self.tmp.join(file);
        std::fs::write(&path, bytes).map_err(io("writing", &path))?;
        self.register(file.to_owned(), role, None, None)
    }

    /// Records a file that the caller wrote into [`tmp_dir`](Self::tmp_dir) by other means (another Parquet
    /// writer, a model checkpoint). A `.parquet` file is recorded as a table, with the row count and Arrow schema
    /// read from its footer.
    pub fn add_file(&mut self, file: &str, role: Role) -> Result<()> {
        self.check_new_file(file)?;
        let path = self.tmp.join(file);
        if !path.is_file() {
            return Err(ArtifactError::Usage(format!(
                "{}: not a file",
                path.display()
            )));
        }
        if !file.ends_with(".parquet") {
            return self.register(file.to_owned(), role, None, None);
        }
        let handle = File::open(&path).map_err(io("opening", &path))?;
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)
                .map_err(|source| ArtifactError::Parquet {
                    path: path.clone(),
                    source,
                })?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        let schema = builder.schema().clone();
        self.register(file.to_owned(), role, Some(rows), Some(schema))
    }

    /// Records a folder that the caller filled under [`tmp_dir`](Self::tmp_dir)`/NAME` as an output.
    pub fn add_dir(&mut self, name: &str, role: Role, rows: Option<u64>) -> Result<()> {
        self.check_new_file(name)?;
        let path = self.tmp.join(name);
        if !path.is_dir() {
            return Err(ArtifactError::Usage(format!(
                "{}: not a directory",
                path.display()
            )));
        }
        let (blake3, bytes, _) = crate::hash::hash_dir(&path)?;
        self.outputs.push(FileRecord {
            file: name.to_owned(),
            role,
            blake3,
            bytes,
            rows,
            schema: None,
            dir: true,
        });
        Ok(())
    }

    fn check_new_file(&self, file: &str) -> Result<()> {
        let safe = !file.is_empty()
            && file != MANIFEST_FILE
            && !file.starts_with('.')
            && !file.contains(['/', '\\'])
            && file != "..";
        if !safe {
            return Err(ArtifactError::Usage(format!(
                "{file:?} is not a valid output file name"
            )));
        }
        if self.outputs.iter().any(|o| o.file == file) {
            return Err(ArtifactError::Usage(format!(
                "output {file:?} written twice"
            )));
        }
        Ok(())
    }

    fn register(
        &mut self,
        file: String,
        role: Role,
        rows: Option<u64>,
        schema: Option<SchemaRef>,
    ) -> Result<()> {
        let path = self.tmp.join(&file);
        let (blake3, bytes) = hash_file(&path)?;
        self.outputs.push(FileRecord {
            file,
            role,
            blake3,
            bytes,
            rows,
            schema: schema.map(|s| (*s).clone()),
            dir: false,
        });
        Ok(())
    }

    /// Writes `manifest.json` and moves the directory into place. Returns the manifest.
    pub fn commit(mut self) -> Result<Manifest> {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            stage: self.info.stage.clone(),
            crate_name: self.info.crate_name.clone(),
            crate_version: self.info.crate_version.clone(),
            config: self.info.config.clone(),
            seed: self.info.seed,
            fit_splits: std::mem::take(&mut self.fit_splits),
            inputs: std::mem::take(&mut self.inputs),
            content_hash: combine(
                self.outputs
                    .iter()
                    .map(|o| (o.file.as_str(), o.blake3.as_str())),
            ),
            outputs: std::mem::take(&mut self.outputs),
            started_at: self.started_at.clone(),
            finished_at: now_rfc3339(),
            git_revision: git_revision(),
        };
        // Make every output durable before the manifest can claim the artifact is complete.
        for o in manifest.outputs.iter().filter(|o| !o.dir) {
            sync_file(&self.tmp.join(&o.file))?;
        }
        let manifest_path = self.tmp.join(MANIFEST_FILE);
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ArtifactError::Usage(format!("serializing manifest: {e}")))?;
        std::fs::write(&manifest_path, text).map_err(io("writing", &manifest_path))?;
        sync_file(&manifest_path)?;

        self.move_into_place()?;
        if let Some(parent) = self.dest.parent() {
            // Persist the rename itself; best effort, not every filesystem allows syncing a directory.
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        tracing::info!(dest = %self.dest.display(), content_hash = %manifest.content_hash, "artifact committed");
        Ok(manifest)
    }
}

impl ArtifactWriter {
    /// Renames the finished temporary directory to the destination, moving an older artifact aside first and
    /// deleting it only once the new one is in place. If the rename fails, the older artifact is put back.
    fn move_into_place(&mut self) -> Result<()> {
        // Checked again: something may have appeared at the destination while the stage worked.
        check_replaceable(&self.dest)?;
        let name = self
            .dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact");
        let old = self
            .dest
            .with_file_name(format!(".{name}{OLD_MARKER}{}", std::process::id()));
        let replaced = std::fs::symlink_metadata(&self.dest).is_ok();
        if replaced {
            std::fs::rename(&self.dest, &old).map_err(io("moving aside", &self.dest))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.dest) {
            let back = if replaced {
                std::fs::rename(&old, &self.dest)
            } else {
                Ok(())
            };
            if let Err(back) = back {
                tracing::error!(old = %old.display(), dest = %self.dest.display(), error = %back,
                    "could not move the older artifact back; it is intact under the old name");
            }
            return Err(io("renaming into place", &self.dest)(e));
        }
        self.committed = true;
        if replaced {
            // The new artifact is in place; a leftover older copy is removed by the next writer, so not an error.
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(old = %old.display(), error = %e, "could not remove the replaced artifact");
            }
        }
        Ok(())
    }
}

impl Drop for ArtifactWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Streams record batches into one Parquet table of an [`ArtifactWriter`].
pub struct TableWriter<'a> {
    owner: &'a mut ArtifactWriter,
    file: String,
    path: PathBuf,
    role: Role,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
}

impl TableWriter<'_> {
    /// Appends a batch; its schema must be the table's.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(ArtifactError::Schema {
                path: self.path.clone(),
                reason: format!(
                    "batch schema {:?} differs from the table's {:?}",
                    batch.schema(),
                    self.schema
                ),
            });
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(ArtifactError::Usage(format!(
                "{}: write after finish",
                self.file
            )));
        };
        writer
            .write(batch)
            .map_err(|source| ArtifactError::Parquet {
                path: self.path.clone(),
                source,
            })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the table and records it in the manifest. Returns the row count.
    pub fn finish(mut self) -> Result<u64> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| ArtifactError::Usage(format!("{}: finished twice", self.file)))?;
        writer.close().map_err(|source| ArtifactError::Parquet {
            path: self.path.clone(),
            source,
        })?;
        let file = std::mem::take(&mut self.file);
        self.owner.register(
            file,
            self.role,
            Some(self.rows),
            Some(Arc::clone(&self.schema)),
        )?;
        Ok(self.rows)
    }
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", path))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The hidden folder beside `output` where a stage keeps what must survive a kill (checkpoints, a study):
/// `<parent>/.<name>.<kind>`, so it is never mistaken for an artifact and a re-run of the same output finds it.
pub fn work_dir(output: &Path, kind: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    output
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.{kind}"))
}

/// The current git revision (`-dirty` when the tree has changes), or `None` outside a git checkout.
pub fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let clean = std::process::Command::new("git")
        .args(["diff", "--quiet", "HEAD"])
        .status()
        .map(|s| s.success())
        .unwrap_or(true);
    Some(if clean { rev } else { format!("{rev}-dirty") })
}
