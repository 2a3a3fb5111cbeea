//! Ingest of the formats users already have, on fixtures written by the real libraries (`datasets`, `pandas`,
//! `pyarrow`; `tests/fixtures/make_fixtures.py`): each layout gives the same samples as the same data in a
//! `manifest.csv` folder, the column mapping and its errors, derived question types, every reject path naming
//! its file and row, and determinism.
#![allow(clippy::unwrap_used)] // test setup that fails should stop the test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, UInt64Type};
use mmrl_artifact::Artifact;
use mmrl_artifact::sample::FeatureKind;
use mmrl_data::ingest::{self, IngestConfig};
use mmrl_data::source::{self, Format};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config(columns: &[(&str, &str)]) -> IngestConfig {
    IngestConfig {
        max_reject_fraction: 1.0,
        columns: columns
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..IngestConfig::default()
    }
}

/// A sample as the tests compare it; numeric features at 6 decimals (float32 storage in Parquet).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    split: Option<String>,
    qtype: Option<String>,
    question: String,
    answer: String,
    image: Option<Vec<u8>>,
    audio: Option<Vec<u8>>,
    line: u64,
    features: Vec<(String, Option<String>)>,
}

/// Ingests `dataset` into a fresh artifact; returns the artifact and its samples by id.
fn ingest(
    dataset: &Path,
    config: &IngestConfig,
) -> (tempfile::TempDir, Artifact, BTreeMap<String, Row>) {
    let tmp = tempfile::tempdir().unwrap();
    ingest::run(config, dataset, &tmp.path().join("out"))
        .unwrap_or_else(|e| panic!("ingest {}: {e}", dataset.display()));
    let art = Artifact::open(tmp.path().join("out")).unwrap();
    let (schema, batches) = art.read_table("samples").unwrap();
    let features = mmrl_artifact::sample::features(&schema);
    let mut out = BTreeMap::new();
    for b in &batches {
        let text = |name: &str, i: usize| {
            let c = b.column(schema.index_of(name).unwrap()).as_string::<i32>();
            c.is_valid(i).then(|| c.value(i).to_owned())
        };
        let bytes = |name: &str, i: usize| {
            let c = b.column(schema.index_of(name).unwrap()).as_binary::<i32>();
            c.is_valid(i).then(|| c.value(i).to_vec())
        };
        let lines = b
            .column(schema.index_of("source_line").unwrap())
            .as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            let feats = features
                .iter()
                .map(|(name, kind)| {
                    let col = b.column(schema.index_of(name).unwrap());
                    let value = match kind {
                        FeatureKind::Numeric => {
                            let c = col.as_primitive::<Float64Type>();
                            c.is_valid(i).then(|| format!("{:.6}", c.value(i)))
                        }
                        FeatureKind::Categorical => text(name, i),
                    };
                    (name.clone(), value)
                })
                .collect();
            let row = Row {
                split: text("split", i),
                qtype: text("qtype", i),
                question: text("question", i).unwrap(),
                answer: text("answer", i).unwrap(),
                image: bytes("image", i),
                audio: bytes("audio", i),
                line: lines.value(i),
                features: feats,
            };
            out.insert(text("id", i).unwrap(), row);
        }
    }
    (tmp, art, out)
}

fn report(art: &Artifact) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(art.dir().join("report.json")).unwrap()).unwrap()
}

/// Ingests a layout and its `.manifest` twin; ids, splits, question types, questions, answers, media bytes and
/// features must agree; the layout's format must be the one expected.
fn check_same_as_manifest(case: &str, columns: &[(&str, &str)], format: &str, rows: usize) {
    let (_t1, art, got) = ingest(&fixture(case), &config(columns));
    let (_t2, _, expected) = ingest(&fixture(&format!("{case}.manifest")), &config(&[]));
    assert_eq!(got.len(), rows, "{case}: {:?}", report(&art));
    let strip = |rows: &BTreeMap<String, Row>| -> BTreeMap<String, Row> {
        rows.iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    Row {
                        line: 0,
                        ..r.clone()
                    },
                )
            })
            .collect()
    };
    assert_eq!(strip(&got), strip(&expected), "{case}");
    assert_eq!(report(&art)["format"], format, "{case}");
    assert_eq!(report(&art)["rejected"], 0, "{case}");
}

#[test]
fn each_format_ingests_to_the_same_samples_as_its_manifest_folder() {
    check_same_as_manifest("imagefolder_csv", &[], "hf_folder_csv", 5);
    check_same_as_manifest("audiofolder_jsonl", &[], "hf_folder_jsonl", 5);
    check_same_as_manifest("mixed_folder", &[], "hf_folder_csv", 4);
    check_same_as_manifest("hf_parquet", &[], "parquet", 4);
    check_same_as_manifest(
        "plain_parquet",
        &[("id", "uid"), ("question", "prompt"), ("answer", "label")],
        "parquet",
        3,
    );
}

#[test]
fn source_lines_are_file_lines_and_parquet_rows() {
    // (case, id, expected source_line)
    let cases: &[(&str, &str, u64)] = &[
        ("imagefolder_csv", "img-1", 2),
        ("imagefolder_csv", "img-5", 6),
        ("audiofolder_jsonl", "test/metadata.jsonl:2", 2),
        ("hf_parquet", "p3", 3),
        ("hf_parquet", "p4", 1),
    ];
    for (case, id, line) in cases {
        let (_t, _, rows) = ingest(&fixture(case), &config(&[]));
        assert_eq!(rows[*id].line, *line, "{case} {id}");
    }
}

#[test]
fn a_single_parquet_file_is_a_dataset_with_the_split_its_name_gives() {
    let file = fixture("hf_parquet/data/train-00000-of-00001.parquet");
    let (_t, art, rows) = ingest(&file, &config(&[]));
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["p1", "p2", "p3"]);
    assert!(rows.values().all(|r| r.split.as_deref() == Some("train")));
    assert_eq!(
        (
            rows["p1"].answer.as_str(),
            rows["p2"].answer.as_str(),
            rows["p3"].answer.as_str()
        ),
        ("yes", "no", "maybe"),
        "ClassLabel indices become their names"
    );
    let r = report(&art);
    assert_eq!(r["format"], "parquet");
    assert_eq!(
        r["source_files"],
        serde_json::json!(["train-00000-of-00001.parquet"])
    );
    assert_eq!(
        art.manifest().inputs[0].kind,
        mmrl_artifact::InputKind::File
    );
}

#[test]
fn report_says_where_question_types_come_from() {
    let (_t, art, rows) = ingest(&fixture("imagefolder_csv"), &config(&[]));
    let r = report(&art);
    assert_eq!(r["qtype_source"], "derived");
    assert!(
        r["qtype_rule"].as_str().unwrap().starts_with("template:"),
        "{r}"
    );
    assert_eq!(
        r["qtype_templates"],
        serde_json::json!([
            {"qtype": "what digit is shown in image #", "rows": 3},
            {"qtype": "is the digit larger than #", "rows": 2},
        ])
    );
    assert_eq!(
        rows["img-4"].qtype.as_deref(),
        Some("is the digit larger than #")
    );

    let (_t, art, rows) = ingest(&fixture("audiofolder_jsonl"), &config(&[]));
    let r = report(&art);
    assert_eq!(r["qtype_source"], "column");
    assert!(r.get("qtype_rule").is_none(), "{r}");
    assert_eq!(r["qtype_templates"], serde_json::json!([]));
    assert_eq!(r["columns"]["id_source"], "derived");
    assert_eq!(
        rows["train/metadata.jsonl:2"].qtype.as_deref(),
        Some("pitch")
    );

    // A coarser rule when the templates are too many.
    let few = IngestConfig {
        max_derived_qtypes: 1,
        ..config(&[])
    };
    let (_t, art, _) = ingest(&fixture("imagefolder_csv"), &few);
    let r = report(&art);
    assert!(
        r["qtype_rule"]
            .as_str()
            .unwrap()
            .starts_with("first word, rest other"),
        "{r}"
    );
    assert_eq!(
        r["qtype_templates"],
        serde_json::json!([{"qtype": "other", "rows": 5}])
    );
    let two = IngestConfig {
        max_derived_qtypes: 2,
        ..config(&[])
    };
    let (_t, art, _) = ingest(&fixture("imagefolder_csv"), &two);
    let r = report(&art);
    assert!(
        r["qtype_rule"].as_str().unwrap().starts_with("template:"),
        "{r}"
    );
}

#[test]
fn report_records_the_column_roles() {
    let (_t, art, _) = ingest(
        &fixture("plain_parquet"),
        &config(&[("id", "uid"), ("question", "prompt"), ("answer", "label")]),
    );
    let r = report(&art);
    assert_eq!(
        r["columns"]["roles"],
        serde_json::json!({"answer": "label", "id": "uid", "question": "prompt"})
    );
    assert_eq!(
        r["columns"]["auto_media"],
        serde_json::json!(["img", "sound"])
    );
    assert_eq!(r["features"], serde_json::json!([["topic", "categorical"]]));

    let (_t, art, _) = ingest(&fixture("mixed_folder"), &config(&[]));
    let r = report(&art);
    assert_eq!(r["columns"]["roles"]["image"], "image_file_name");
    assert_eq!(r["columns"]["roles"]["audio"], "audio_file_name");
}

/// Runs ingest and checks that the error mentions every fragment and nothing was written.
fn check_error(dataset: &Path, config: &IngestConfig, fragments: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let msg = match ingest::run(config, dataset, &tmp.path().join("out")) {
        Ok(_) => panic!(
            "{} ingested; expected an error with {fragments:?}",
            dataset.display()
        ),
        Err(e) => e.to_string(),
    };
    for fragment in fragments {
        assert!(msg.contains(fragment), "error {msg:?} lacks {fragment:?}");
    }
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn mapping_errors_name_the_column_and_list_the_data() {
    let plain = fixture("plain_parquet");
    let data_columns = "uid, img, sound, prompt, label, topic";
    check_error(
        &plain,
        &config(&[("question", "promt"), ("answer", "label")]),
        &["columns.question", "no column \"promt\"", data_columns],
    );
    check_error(
        &plain,
        &config(&[("answer", "label")]),
        &[
            "missing required column \"question\"",
            data_columns,
            "columns = { question = ",
        ],
    );
    check_error(
        &plain,
        &config(&[("question", "img"), ("answer", "label")]),
        &["columns.question", "\"img\" holds media; expected text"],
    );
    check_error(
        &plain,
        &config(&[("questoin", "prompt")]),
        &["columns.questoin", "not a role", "\"question\""],
    );
    check_error(
        &plain,
        &config(&[("question", "prompt"), ("answer", "prompt")]),
        &["already mapped"],
    );
    check_error(
        &plain,
        &IngestConfig {
            column_types: BTreeMap::from([("label".to_owned(), FeatureKind::Numeric)]),
            ..config(&[("question", "prompt"), ("answer", "label")])
        },
        &["column_types.label", "mapped to columns.answer"],
    );
    check_error(
        &plain,
        &IngestConfig {
            column_types: BTreeMap::from([("topc".to_owned(), FeatureKind::Numeric)]),
            ..config(&[("question", "prompt"), ("answer", "label")])
        },
        &[
            "column_types.topc",
            "no such column",
            "features are: uid, topic",
        ],
    );
}

#[test]
fn mapping_picks_one_of_two_media_columns() {
    // mixed_folder read with the image column mapped by its datasets name ("image" of image_file_name).
    let (_t, art, rows) = ingest(&fixture("mixed_folder"), &config(&[("image", "image")]));
    assert_eq!(report(&art)["columns"]["roles"]["image"], "image_file_name");
    assert!(rows["m1"].image.is_some() && rows["m1"].audio.is_some());
    // Mapping the audio role to the image files rejects them by extension.
    let (_t, art, _) = ingest(
        &fixture("mixed_folder"),
        &config(&[("audio", "image_file_name"), ("image", "audio_file_name")]),
    );
    assert_eq!(report(&art)["rejects_by_reason"]["unsupported_format"], 4);
}

/// Rejects of a dataset: (file, line, reason, detail) in source order.
fn rejects(dataset: &Path) -> Vec<(String, u64, String, String)> {
    let tmp = tempfile::tempdir().unwrap();
    ingest::run(&config(&[]), dataset, &tmp.path().join("out")).unwrap();
    let art = Artifact::open(tmp.path().join("out")).unwrap();
    let (_, batches) = art.read_table("rejects").unwrap();
    let mut out = Vec::new();
    for b in batches {
        let lines = b.column(0).as_primitive::<UInt64Type>();
        let reasons = b.column(3).as_string::<i32>();
        let details = b.column(4).as_string::<i32>();
        for i in 0..b.num_rows() {
            let detail = details.value(i).to_owned();
            let file = detail.split(' ').next().unwrap_or_default().to_owned();
            out.push((file, lines.value(i), reasons.value(i).to_owned(), detail));
        }
    }
    out
}

/// Checks every reject of `dataset`: its file, row and reason, that the detail says where (`FILE line N` or
/// `FILE row N`), and that it contains the expected words.
fn check_rejects(dataset: &Path, unit: &str, expected: &[(&str, u64, &str, &str)]) {
    let got = rejects(dataset);
    let summary: Vec<(String, u64, String)> = got
        .iter()
        .map(|(f, l, r, _)| (f.clone(), *l, r.clone()))
        .collect();
    let wanted: Vec<(String, u64, String)> = expected
        .iter()
        .map(|(f, l, r, _)| ((*f).to_owned(), *l, (*r).to_owned()))
        .collect();
    assert_eq!(summary, wanted, "{}", dataset.display());
    for ((file, line, _, detail), (_, _, _, words)) in got.iter().zip(expected) {
        assert!(
            detail.starts_with(&format!("{file} {unit} {line}: ")),
            "detail does not say where: {detail}"
        );
        assert!(detail.contains(words), "{detail:?} lacks {words:?}");
    }
}

#[test]
fn every_reject_names_its_file_and_row() {
    let m = "metadata.csv";
    check_rejects(
        &fixture("bad_folder"),
        "line",
        &[
            (
                m,
                3,
                "unsupported_format",
                "\"pic.webp\" is neither an image nor WAV audio; supported: png, jpg, jpeg (image); wav (audio)",
            ),
            (
                m,
                4,
                "unsupported_format",
                "\"song.flac\" is FLAC audio; only WAV audio is decoded",
            ),
            (m, 5, "missing_media", "\"missing.png\" does not exist"),
            (m, 6, "path_escapes_folder", "\"../ok.png\""),
            (m, 7, "undecodable_image", "\"truncated.png\""),
            (
                m,
                8,
                "ambiguous_media",
                "columns \"file_name\" and \"extra_file_name\" both hold an image",
            ),
            (m, 9, "empty_question", "empty question"),
            (
                m,
                10,
                "duplicate_id",
                "id \"b1\" already used at metadata.csv line 2",
            ),
        ],
    );
    let j = "metadata.jsonl";
    check_rejects(
        &fixture("bad_jsonl"),
        "line",
        &[
            (j, 3, "malformed_row", "not a JSON object"),
            (j, 4, "malformed_row", "not a JSON object"),
            (
                j,
                5,
                "malformed_row",
                "column \"question\" holds media or a list",
            ),
            (j, 6, "malformed_row", "column \"file_name\" holds a number"),
            (j, 7, "invalid_split", "split \"holdout\""),
        ],
    );
    check_rejects(
        &fixture("bad_parquet"),
        "row",
        &[
            (
                "labels.parquet",
                1,
                "invalid_label",
                "class label 7 is not an index of the column's 3 ClassLabel names",
            ),
            (
                "train.parquet",
                2,
                "unsupported_format",
                "\"x.flac\" is FLAC; only WAV audio is decoded",
            ),
            (
                "train.parquet",
                3,
                "unsupported_format",
                "\"x.mp3\" is MP3; only WAV audio is decoded",
            ),
            (
                "train.parquet",
                4,
                "unsupported_format",
                "\"x.png\" is not a PNG or JPEG file",
            ),
            (
                "train.parquet",
                5,
                "non_finite_number",
                "column \"volume\" holds \"NaN\"",
            ),
        ],
    );
}

#[test]
fn ingest_of_each_format_is_deterministic() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("imagefolder_csv", &[]),
        ("audiofolder_jsonl", &[]),
        ("mixed_folder", &[]),
        ("hf_parquet", &[]),
        (
            "plain_parquet",
            &[("question", "prompt"), ("answer", "label")],
        ),
        ("bad_parquet", &[]),
    ];
    for (case, columns) in cases {
        let (_a, a, _) = ingest(&fixture(case), &config(columns));
        let (_b, b, _) = ingest(&fixture(case), &config(columns));
        assert_eq!(
            a.manifest().content_hash,
            b.manifest().content_hash,
            "{case}"
        );
        assert_eq!(a.manifest().inputs, b.manifest().inputs, "{case}");
    }
}

/// Copies a fixture folder into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn input_hash_covers_metadata_and_media() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture("audiofolder_jsonl"), &data);
    let hash = |dir: &Path| ingest::read(&config(&[]), dir).unwrap().content_hash;
    let before = hash(&data);
    let wav = data.join("validation/three.wav");
    let mut bytes = std::fs::read(&wav).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&wav, bytes).unwrap();
    let after_media = hash(&data);
    assert_ne!(before, after_media, "a media byte changed");
    let meta = data.join("test/metadata.jsonl");
    let text = std::fs::read_to_string(&meta)
        .unwrap()
        .replace("Is it high?", "Is it low?");
    std::fs::write(&meta, text).unwrap();
    assert_ne!(after_media, hash(&data), "a metadata file changed");
}

#[test]
fn split_column_must_agree_with_the_split_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture("audiofolder_jsonl"), &data);
    std::fs::write(
        data.join("train/metadata.jsonl"),
        "{\"file_name\":\"one.wav\",\"question\":\"q\",\"answer\":\"a\",\"split\":\"train\"}\n\
         {\"file_name\":\"two.wav\",\"question\":\"q\",\"answer\":\"a\",\"split\":\"test\"}\n",
    )
    .unwrap();
    let ingested = ingest::read(&config(&[]), &data).unwrap();
    let outcome: Vec<(u64, Result<Option<String>, String>)> = ingested
        .rows
        .iter()
        .filter(|r| r.id.as_deref().is_some_and(|id| id.starts_with("train/")))
        .map(|r| {
            (
                r.line,
                r.outcome
                    .as_ref()
                    .map(|s| s.split.clone())
                    .map_err(|e| e.detail.clone()),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            (1, Ok(Some("train".to_owned()))),
            (
                2,
                Err("train/metadata.jsonl line 2: split column says \"test\" but the file's folder or name says \"train\"".to_owned())
            ),
        ]
    );
}

/// Checks what `detect` says about a path: its format and files, or an error with these words.
fn check_detect(path: &Path, expected: Result<(Format, &[&str]), &[&str]>) {
    match (source::detect(path), expected) {
        (Ok(layout), Ok((format, files))) => {
            assert_eq!(layout.format, format, "{}", path.display());
            let rels: Vec<&str> = layout.files.iter().map(|f| f.rel.as_str()).collect();
            assert_eq!(rels, files, "{}", path.display());
        }
        (Err(e), Err(words)) => {
            for w in words {
                assert!(e.to_string().contains(w), "{e} lacks {w:?}");
            }
        }
        (got, _) => panic!("{}: unexpected {got:?}", path.display()),
    }
}

#[test]
fn detect_tells_the_layouts_apart() {
    check_detect(
        &fixture("imagefolder_csv.manifest"),
        Ok((Format::ManifestCsv, &["manifest.csv"])),
    );
    check_detect(
        &fixture("imagefolder_csv"),
        Ok((Format::HfFolderCsv, &["metadata.csv"])),
    );
    check_detect(
        &fixture("audiofolder_jsonl"),
        Ok((
            Format::HfFolderJsonl,
            &[
                "test/metadata.jsonl",
                "train/metadata.jsonl",
                "validation/metadata.jsonl",
            ],
        )),
    );
    check_detect(
        &fixture("hf_parquet"),
        Ok((
            Format::Parquet,
            &[
                "data/test-00000-of-00001.parquet",
                "data/train-00000-of-00001.parquet",
            ],
        )),
    );
    check_detect(
        &fixture("hf_parquet/data/test-00000-of-00001.parquet"),
        Ok((Format::Parquet, &["test-00000-of-00001.parquet"])),
    );
    check_detect(
        &fixture("make_fixtures.py"),
        Err(&["make_fixtures.py", "a folder or a .parquet file"]),
    );
    check_detect(
        &fixture("no_such_folder"),
        Err(&["no_such_folder", "not a directory"]),
    );

    let tmp = tempfile::tempdir().unwrap();
    check_detect(
        tmp.path(),
        Err(&["manifest.csv", "No such file", "metadata.jsonl", ".parquet"]),
    );
    std::fs::create_dir_all(tmp.path().join("train")).unwrap();
    std::fs::write(tmp.path().join("train/metadata.csv"), "file_name\n").unwrap();
    std::fs::write(tmp.path().join("metadata.jsonl"), "{}\n").unwrap();
    check_detect(
        tmp.path(),
        Err(&["both metadata.csv", "train/metadata.csv", "metadata.jsonl"]),
    );
    // Three folders down is beyond MAX_DEPTH: not found.
    let deep = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(deep.path().join("a/b/c")).unwrap();
    std::fs::write(deep.path().join("a/b/c/metadata.csv"), "file_name\n").unwrap();
    check_detect(deep.path(), Err(&["No such file"]));
}

#[test]
fn column_types_of_parquet_columns() {
    let ingested = ingest::read(&config(&[]), &fixture("hf_parquet")).unwrap();
    assert_eq!(
        ingested.features,
        [("volume".to_owned(), FeatureKind::Numeric)]
    );
    let table = source::read(&fixture("hf_parquet")).unwrap();
    let kinds: Vec<(&str, String)> = table
        .columns
        .iter()
        .map(|c| (c.name.as_str(), format!("{:?}", c.kind)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("id", "Value".to_owned()),
            ("image", "MediaStruct { declared: Some(Image) }".to_owned()),
            ("audio", "MediaStruct { declared: Some(Audio) }".to_owned()),
            ("question", "Value".to_owned()),
            ("answer", "Value".to_owned()),
            ("volume", "Value".to_owned()),
        ]
    );
    assert_eq!(
        table.class_labels["answer"],
        ["no".to_owned(), "yes".to_owned(), "maybe".to_owned()]
    );
}
