//! The artifact contract: round trips, atomic commits, and the errors a damaged artifact gets.

#![allow(clippy::unwrap_used)] // test helpers: a setup that fails should stop the test

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
    // Only the artifact and its lock file are left in the parent: no temporary directories.
    assert_eq!(entries(tmp.path()), [".a.lock", "a"]);
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
    assert_eq!(entries(tmp.path()), [".a.lock", "a"]);
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
    // A flipped byte keeps the size: only the hash finds it, and `open` checks it.
    check_damage(flip, false, &["report.json", "blake3 is"]);
    let flip_table = |d: &Path| {
        let p = d.join("samples.parquet");
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x5a;
        std::fs::write(&p, bytes).unwrap();
    };
    check_damage(flip_table, false, &["samples.parquet", "blake3 is"]);
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

/// What `ArtifactWriter::create` says about an output path prepared by `setup`: `Ok` or an error containing
/// every fragment; and whatever was there is untouched when it is refused.
fn check_replace(setup: impl FnOnce(&Path), expected: Result<(), &[&str]>) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    setup(&dest);
    let mut before = snapshot(tmp.path());
    before.remove(".out.lock");
    match (ArtifactWriter::create(&dest, info(1)), expected) {
        (Ok(w), Ok(())) => {
            w.commit().unwrap();
            Artifact::open(&dest).unwrap();
        }
        (Err(e), Err(fragments)) => {
            let err = e.to_string();
            assert!(matches!(e, ArtifactError::NotReplaceable { .. }), "{err}");
            for f in fragments {
                assert!(err.contains(f), "error {err:?} lacks {f:?}");
            }
            // Refused before any work: only the lock file was added beside the output.
            let mut after = snapshot(tmp.path());
            after.remove(".out.lock");
            assert_eq!(after, before);
        }
        (Ok(_), Err(_)) => panic!("replaced what is not an artifact"),
        (Err(e), Ok(())) => panic!("refused: {e}"),
    }
}

/// Every file under `dir` with the hash of its content, by relative path (folders and links as empty entries).
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                walk(root, &path, out);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(rel, mmrl_artifact::hash::hash_bytes(&bytes));
            } else {
                out.insert(format!("{rel}@"), String::new());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn writer_replaces_only_artifacts_and_empty_folders() {
    check_replace(|_| {}, Ok(()));
    check_replace(|d| std::fs::create_dir(d).unwrap(), Ok(()));
    check_replace(
        |d| {
            write(d, &[1.0]);
        },
        Ok(()),
    );
    // A damaged artifact is still ours to replace.
    check_replace(
        |d| {
            write(d, &[1.0]);
            std::fs::write(d.join("samples.parquet"), "x").unwrap();
        },
        Ok(()),
    );
    check_replace(
        |d| std::fs::write(d, "a user's file").unwrap(),
        Err(&["out", "a file"]),
    );
    check_replace(
        |d| {
            std::fs::create_dir_all(d.join("images")).unwrap();
            std::fs::write(d.join("manifest.csv"), "id\n").unwrap();
        },
        Err(&["out", "not an artifact", "no manifest.json"]),
    );
    check_replace(
        |d| {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join(MANIFEST_FILE), "{ \"name\": \"my package\" }").unwrap();
        },
        Err(&["not an artifact", "not an mmrl manifest"]),
    );
    check_replace(
        |d| {
            write(d, &[1.0]);
            let p = d.join(MANIFEST_FILE);
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("\"format_version\": 1", "\"format_version\": 7");
            std::fs::write(&p, text).unwrap();
        },
        Err(&["format_version 7"]),
    );
    check_replace(
        |d| {
            let target = d.with_file_name("elsewhere");
            write(&target, &[1.0]);
            std::os::unix::fs::symlink(&target, d).unwrap();
        },
        Err(&["a symbolic link"]),
    );
}

#[test]
fn commit_refuses_what_appeared_at_the_destination_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let mut w = ArtifactWriter::create(&dest, info(1)).unwrap();
    w.write_table("samples", Role::Data, schema(), &[batch(&[1.0])])
        .unwrap();
    std::fs::write(&dest, "written by someone else").unwrap();
    let err = w.commit().unwrap_err().to_string();
    assert!(err.contains("a file"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "written by someone else"
    );
    assert_eq!(entries(tmp.path()), [".out.lock", "out"]);
}

#[test]
fn a_second_writer_of_one_output_fails_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let first = ArtifactWriter::create(&dest, info(1)).unwrap();
    // Another spelling of the same path shares the lock.
    let other = tmp.path().join(".").join("out");
    let err = ArtifactWriter::create(&other, info(2)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ArtifactError::Locked { holder: Some(pid), .. } if pid == std::process::id()),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {}", std::process::id())) && text.contains(".out.lock"),
        "{text}"
    );
    first.commit().unwrap();
    // Released at commit: the next writer proceeds and replaces the artifact.
    ArtifactWriter::create(&dest, info(2))
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(Artifact::open(&dest).unwrap().manifest().seed, Some(2));
}

#[test]
fn a_claimed_output_is_written_by_one_writer_of_this_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    mmrl_artifact::claim_output(&dest).unwrap();
    mmrl_artifact::claim_output(&dest).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(".out.lock")).unwrap(),
        std::process::id().to_string()
    );
    let w = ArtifactWriter::create(&dest, info(1)).unwrap();
    assert!(matches!(
        ArtifactWriter::create(&dest, info(1)),
        Err(ArtifactError::Locked { .. })
    ));
    w.commit().unwrap();
    ArtifactWriter::create(&dest, info(1))
        .unwrap()
        .commit()
        .unwrap();
}

/// An artifact at `aside`, as a commit moves the older artifact aside (no lock file of its own beside it).
fn moved_aside(aside: &Path, values: &[f64]) -> mmrl_artifact::Manifest {
    let dir = tempfile::tempdir().unwrap();
    let built = dir.path().join("built");
    let m = write(&built, values);
    std::fs::rename(&built, aside).unwrap();
    m
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn leftovers_of_writers_that_are_gone_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    write(&dest, &[1.0]);
    let dead = dead_pid();
    let stale = tmp
        .path()
        .join(format!(".out.partial-{dead}-{}", now_nanos()));
    let live = tmp.path().join(format!(
        ".out.partial-{}-{}",
        std::process::id(),
        now_nanos()
    ));
    let other_output = tmp
        .path()
        .join(format!(".outer.partial-{dead}-{}", now_nanos()));
    for dir in [&stale, &live, &other_output] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("samples.parquet"), b"half").unwrap();
    }
    // An older artifact moved aside by a writer killed after its commit's first rename, and a user's file
    // that an earlier version hid under the same kind of name.
    let aside = tmp.path().join(format!(".out.old-{dead}"));
    moved_aside(&aside, &[2.0]);
    let hidden = tmp.path().join(format!(".out.old-{}", dead_pid()));
    std::fs::write(&hidden, "a user's file").unwrap();

    ArtifactWriter::create(&dest, info(3))
        .unwrap()
        .commit()
        .unwrap();
    assert!(!stale.exists() && !aside.exists());
    assert!(live.exists(), "a live writer's directory was removed");
    assert!(
        other_output.exists(),
        "another output's directory was removed"
    );
    assert!(
        hidden.is_file(),
        "a file that is not an artifact was removed"
    );
}

#[test]
fn an_artifact_moved_aside_by_a_killed_commit_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let aside = tmp.path().join(format!(".out.old-{}", dead_pid()));
    let old = moved_aside(&aside, &[2.0]);
    // The next writer finds the destination missing and the older artifact beside it: it puts it back, and
    // that artifact stays if the new write fails.
    drop(ArtifactWriter::create(&dest, info(3)).unwrap());
    assert_eq!(
        Artifact::open(&dest).unwrap().manifest().content_hash,
        old.content_hash
    );
    assert_eq!(entries(tmp.path()), [".out.lock", "out"]);
}
