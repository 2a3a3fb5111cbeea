//! The artifact contract: round trips, atomic commits, and the errors a damaged artifact gets.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mmrl_artifact::{Artifact, ArtifactError, ArtifactWriter, MANIFEST_FILE, Role, StageInfo};

fn info(seed: u64) -> StageInfo {
    StageInfo {
        stage: "test".into(),
        crate_name: "mmrl-artifact".into(),
        crate_version: "0.0.0".into(),
        config: serde_json::json!({ "k": 1 }),
        seed: Some(seed),
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("x", DataType::Float64, true),
    ]))
}

fn batch(values: &[f64]) -> RecordBatch {
    let ids: Vec<String> = (0..values.len()).map(|i| format!("s{i}")).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Float64Array::from(values.to_vec())),
        ],
    )
    .unwrap()
}

fn write(dest: &Path, values: &[f64]) -> mmrl_artifact::Manifest {
    let mut w = ArtifactWriter::create(dest, info(7)).unwrap();
    w.write_table(
        "samples",
        Role::Data,
        schema(),
        &[batch(values), batch(&[9.0])],
    )
    .unwrap();
    w.write_json(
        "report.json",
        Role::Report,
        &serde_json::json!({ "ok": true }),
    )
    .unwrap();
    w.fit_splits(&["train"]);
    w.commit().unwrap()
}

/// Names of the entries in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn round_trip_records_hashes_rows_and_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    let written = write(&dest, &[1.0, 2.0, 3.0]);
    let art = Artifact::open(&dest).unwrap();
    assert_eq!(art.manifest(), &written);
    let m = art.manifest();
    assert_eq!(m.seed, Some(7));
    assert_eq!(m.fit_splits, ["train"]);
    assert_eq!(m.config, serde_json::json!({ "k": 1 }));
    let table = m.output("samples.parquet").unwrap();
    assert_eq!(table.rows, Some(4));
    assert_eq!(table.schema.as_ref().unwrap(), schema().as_ref());
    assert_eq!(table.blake3.len(), 64);
    assert_eq!(m.data_rows(), 4);
    art.verify_hashes().unwrap();
    let (read_schema, batches) = art.read_table("samples").unwrap();
    assert_eq!(read_schema, schema());
    let xs: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(xs, [1.0, 2.0, 3.0, 9.0]);
    // Only the artifact is left in the parent: no temporary directories.
    assert_eq!(entries(tmp.path()), ["a"]);
}

#[test]
fn same_content_gives_same_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(&tmp.path().join("a"), &[1.0, 2.0]);
    let b = write(&tmp.path().join("b"), &[1.0, 2.0]);
    let c = write(&tmp.path().join("c"), &[1.0, 2.5]);
    assert_eq!(a.content_hash, b.content_hash);
    assert_ne!(a.content_hash, c.content_hash);
}

#[test]
fn abandoned_write_leaves_nothing_and_keeps_the_old_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    let old = write(&dest, &[1.0]);
    {
        let mut w = ArtifactWriter::create(&dest, info(1)).unwrap();
        let mut t = w.table("samples", Role::Data, schema()).unwrap();
        t.write(&batch(&[5.0, 6.0])).unwrap();
        // Dropped mid-table, as on an error return.
    }
    assert_eq!(entries(tmp.path()), ["a"]);
    assert_eq!(
        Artifact::open(&dest).unwrap().manifest().content_hash,
        old.content_hash
    );
}

#[test]
fn killed_write_never_reads_as_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    let mut w = ArtifactWriter::create(&dest, info(1)).unwrap();
    w.write_table("samples", Role::Data, schema(), &[batch(&[1.0])])
        .unwrap();
    let partial = w.tmp_dir().to_path_buf();
    // A process killed here runs no destructor.
    std::mem::forget(w);
    assert!(partial.is_dir());
    assert!(matches!(
        Artifact::open(&dest),
        Err(ArtifactError::Io { .. })
    ));
    assert!(matches!(
        Artifact::open(&partial),
        Err(ArtifactError::MissingManifest { .. })
    ));
    // Even a partial directory that somehow got a manifest copied in is refused by its name.
    std::fs::write(partial.join(MANIFEST_FILE), "{}").unwrap();
    assert!(matches!(
        Artifact::open(&partial),
        Err(ArtifactError::MissingManifest { .. })
    ));
}

/// Damages a fresh artifact with `damage` and checks the error of `open` (or of `verify_hashes` when `deep`).
fn check_damage(damage: impl FnOnce(&Path), deep: bool, expected: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    write(&dest, &[1.0, 2.0, 3.0]);
    damage(&dest);
    let err = match Artifact::open(&dest) {
        Ok(art) if deep => art.verify_hashes().unwrap_err(),
        Ok(_) => panic!("damage went unnoticed"),
        Err(e) => e,
    }
    .to_string();
    for fragment in expected {
        assert!(err.contains(fragment), "error {err:?} lacks {fragment:?}");
    }
}

#[test]
fn damaged_artifacts_get_errors_naming_the_file() {
    let truncate = |d: &Path| {
        let p = d.join("samples.parquet");
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
    };
    check_damage(truncate, false, &["samples.parquet", "size is"]);
    let flip = |d: &Path| {
        let p = d.join("report.json");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&p, bytes).unwrap();
    };
    check_damage(flip, true, &["report.json", "blake3 is"]);
    check_damage(
        |d| std::fs::remove_file(d.join("samples.parquet")).unwrap(),
        false,
        &["samples.parquet"],
    );
    check_damage(
        |d| std::fs::remove_file(d.join(MANIFEST_FILE)).unwrap(),
        false,
        &["no manifest.json"],
    );
    check_damage(
        |d| std::fs::write(d.join(MANIFEST_FILE), "{ not json").unwrap(),
        false,
        &["manifest.json", "invalid manifest"],
    );
    let bump_version = |d: &Path| {
        let p = d.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 99");
        std::fs::write(&p, text).unwrap();
    };
    check_damage(bump_version, false, &["format_version 99"]);
    let edit_hash = |d: &Path| {
        let p = d.join(MANIFEST_FILE);
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        m["outputs"][0]["blake3"] = serde_json::json!("0".repeat(64));
        std::fs::write(&p, serde_json::to_string(&m).unwrap()).unwrap();
    };
    check_damage(edit_hash, false, &["content_hash does not match"]);
    let swap_table = |d: &Path| {
        // A table with other columns under the recorded name and size-consistent manifest: the schema check catches it.
        let other = Arc::new(Schema::new(vec![Field::new("y", DataType::Float64, true)]));
        let b = RecordBatch::try_new(
            other.clone(),
            vec![Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0]))],
        )
        .unwrap();
        let p = d.join("samples.parquet");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), other, None)
                .unwrap();
        writer.write(&b).unwrap();
        writer.close().unwrap();
        let m_path = d.join(MANIFEST_FILE);
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&m_path).unwrap()).unwrap();
        m["outputs"][0]["bytes"] = serde_json::json!(std::fs::metadata(&p).unwrap().len());
        std::fs::write(&m_path, serde_json::to_string(&m).unwrap()).unwrap();
    };
    check_damage(
        swap_table,
        false,
        &["samples.parquet", "schema mismatch", "\"y\""],
    );
}

#[test]
fn writer_refuses_unsafe_or_repeated_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = ArtifactWriter::create(tmp.path().join("a"), info(1)).unwrap();
    for bad in ["../x", "manifest.json", ".hidden", ""] {
        assert!(
            matches!(
                w.write_bytes(bad, Role::Report, b"x"),
                Err(ArtifactError::Usage(_))
            ),
            "{bad:?} accepted"
        );
    }
    w.write_bytes("r.txt", Role::Report, b"x").unwrap();
    assert!(matches!(
        w.write_bytes("r.txt", Role::Report, b"y"),
        Err(ArtifactError::Usage(_))
    ));
    let wrong = Arc::new(Schema::new(vec![Field::new("z", DataType::Utf8, false)]));
    let mut t = w.table("t", Role::Data, wrong).unwrap();
    assert!(matches!(
        t.write(&batch(&[1.0])),
        Err(ArtifactError::Schema { .. })
    ));
}

#[test]
fn folder_outputs_are_hashed_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    let mut w = ArtifactWriter::create(&dest, info(1)).unwrap();
    let folder = w.tmp_dir().join("dataset");
    std::fs::create_dir_all(folder.join("images")).unwrap();
    std::fs::write(folder.join("manifest.csv"), "id\n1\n").unwrap();
    std::fs::write(folder.join("images/1.png"), [1u8, 2, 3]).unwrap();
    w.add_dir("dataset", Role::Data, Some(1)).unwrap();
    let m = w.commit().unwrap();
    assert_eq!(m.outputs[0].bytes, 8);
    let art = Artifact::open(&dest).unwrap();
    art.verify_hashes().unwrap();
    std::fs::write(dest.join("dataset/images/1.png"), [1u8, 2, 4]).unwrap();
    let err = art.verify_hashes().unwrap_err().to_string();
    assert!(
        err.contains("dataset") && err.contains("blake3 is"),
        "{err}"
    );
}
