//! Ingest on small folders built in code: every kind of bad row is rejected with its reason, good rows keep
//! their content and types, and dataset-level problems fail with a message naming the file.
#![allow(clippy::unwrap_used)] // test setup that fails should stop the test

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, BinaryArray, Float64Array, StringArray};
use mmrl_artifact::Artifact;
use mmrl_artifact::sample::{self, FeatureKind};
use mmrl_data::Error;
use mmrl_data::ingest::{self, IngestConfig};

const HEADER: &str = "id,image,audio,question,answer,split,task,battery,device";

fn png(size: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(size, size, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn wav(samples: usize) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    for i in 0..samples {
        w.write_sample(((i as f32 * 0.3).sin() * 1000.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    out.into_inner()
}

/// A dataset folder with good media files and `rows` as the body of manifest.csv.
fn dataset(dir: &Path, rows: &[&str]) {
    std::fs::create_dir_all(dir.join("media")).unwrap();
    std::fs::write(dir.join("media/ok.png"), png(8)).unwrap();
    std::fs::write(dir.join("media/big.png"), png(64)).unwrap();
    std::fs::write(dir.join("media/ok.wav"), wav(800)).unwrap();
    let mut truncated_png = png(8);
    truncated_png.truncate(truncated_png.len() / 2);
    std::fs::write(dir.join("media/truncated.png"), truncated_png).unwrap();
    std::fs::write(dir.join("media/text.png"), b"this is not an image").unwrap();
    std::fs::write(
        dir.join("media/anim.png"),
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    )
    .unwrap();
    let mut truncated_wav = wav(800);
    truncated_wav.truncate(600);
    std::fs::write(dir.join("media/truncated.wav"), truncated_wav).unwrap();
    std::fs::write(dir.join("media/huge.wav"), wav(20_000)).unwrap();
    std::fs::write(dir.parent().unwrap().join("outside.png"), png(8)).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        dir.parent().unwrap().join("outside.png"),
        dir.join("media/link.png"),
    )
    .unwrap();
    let mut csv = String::from(HEADER);
    for row in rows {
        csv.push('\n');
        csv.push_str(row);
    }
    csv.push('\n');
    std::fs::write(dir.join("manifest.csv"), csv).unwrap();
}

fn config() -> IngestConfig {
    IngestConfig {
        max_reject_fraction: 1.0,
        max_file_bytes: 30_000,
        max_image_pixels: 1_000,
        ..IngestConfig::default()
    }
}

/// Ingests a folder of `rows` and returns (id or line, reason) for every reject.
fn rejects_of(rows: &[&str], config: &IngestConfig) -> Vec<(String, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, rows);
    ingest::run(config, &data, &tmp.path().join("out")).unwrap();
    let art = Artifact::open(tmp.path().join("out")).unwrap();
    let (_, batches) = art.read_table("rejects").unwrap();
    let mut out = Vec::new();
    for b in batches {
        let lines = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .unwrap();
        let reasons = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        let details = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            assert!(
                details
                    .value(i)
                    .contains(&format!("line {}", lines.value(i))),
                "detail lacks the line: {}",
                details.value(i)
            );
            out.push((
                format!("line {}", lines.value(i)),
                reasons.value(i).to_owned(),
            ));
        }
    }
    out
}

const GOOD: &str = "a,media/ok.png,media/ok.wav,what,yes,train,t,50,dev_a";

#[test]
fn each_bad_row_is_rejected_with_its_reason() {
    // (row, expected reason); the good first row makes line numbers start at 3 for the cases.
    let cases: &[(&str, &str)] = &[
        ("b,media/missing.png,,q,a,,,1,x", "missing_media"),
        ("c,../outside.png,,q,a,,,1,x", "path_escapes_folder"),
        ("d,/etc/hostname,,q,a,,,1,x", "path_escapes_folder"),
        ("e,media/link.png,,q,a,,,1,x", "path_escapes_folder"),
        ("f,media/truncated.png,,q,a,,,1,x", "undecodable_image"),
        ("g,media/text.png,,q,a,,,1,x", "unsupported_format"),
        ("h,media/anim.png,,q,a,,,1,x", "unsupported_format"),
        ("i,media/big.png,,q,a,,,1,x", "image_too_large"),
        ("j,,media/truncated.wav,q,a,,,1,x", "undecodable_audio"),
        ("k,,media/ok.png,q,a,,,1,x", "undecodable_audio"),
        ("l,,media/huge.wav,q,a,,,1,x", "file_too_large"),
        ("a,,,q,a,,,1,x", "duplicate_id"),
        (",,,q,a,,,1,x", "empty_id"),
        ("m,,,,a,,,1,x", "empty_question"),
        ("n,,,q,  ,,,1,x", "empty_answer"),
        ("o,,,q,a,training,,1,x", "invalid_split"),
        ("p,,,q,a,,,NaN,x", "non_finite_number"),
        ("q,,,q,a,,,-inf,x", "non_finite_number"),
        ("r,,,q,a,,,1", "malformed_row"),
        ("s,media,,q,a,,,1,x", "unreadable_media"),
    ];
    let mut rows = vec![GOOD];
    rows.extend(cases.iter().map(|(row, _)| *row));
    let got = rejects_of(&rows, &config());
    let expected: Vec<(String, String)> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, reason))| (format!("line {}", i + 3), (*reason).to_owned()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn declared_numeric_column_rejects_text() {
    let mut config = config();
    config.column_types = BTreeMap::from([("battery".to_owned(), FeatureKind::Numeric)]);
    let got = rejects_of(&[GOOD, "b,,,q,a,,,low,x"], &config);
    assert_eq!(got, [("line 3".to_owned(), "unparsable_number".to_owned())]);
    // Without the declaration the column is inferred categorical and nothing is rejected.
    assert!(rejects_of(&[GOOD, "b,,,q,a,,,low,x"], &self::config()).is_empty());
}

#[test]
fn accepted_rows_keep_content_and_types() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(
        &data,
        &[
            GOOD,
            "b,,media/ok.wav, how many ,2 3,val,t,,dev_b",
            "c,media/ok.png,,q,no,,,7.5,",
        ],
    );
    let summary = ingest::run(&config(), &data, &tmp.path().join("out")).unwrap();
    assert_eq!(
        (summary.rows, summary.accepted, summary.rejected),
        (3, 3, 0)
    );
    assert_eq!((summary.missing_image, summary.missing_audio), (1, 1));
    let art = Artifact::open(tmp.path().join("out")).unwrap();
    let m = art.manifest();
    assert_eq!(m.inputs[0].rows, Some(3));
    assert_eq!(m.inputs[0].content_hash.len(), 64);
    let (schema, batches) = art.read_table("samples").unwrap();
    assert_eq!(
        mmrl_artifact::sample::features(&schema),
        [
            ("battery".to_owned(), FeatureKind::Numeric),
            ("device".to_owned(), FeatureKind::Categorical)
        ]
    );
    let b = &batches[0];
    let col = |name: &str| b.column(schema.index_of(name).unwrap()).clone();
    let battery = col("battery");
    let battery = battery.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(
        (battery.value(0), battery.is_null(1), battery.value(2)),
        (50.0, true, 7.5)
    );
    let device = col("device");
    let device = device.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!((device.value(1), device.is_null(2)), ("dev_b", true));
    let question = col("question");
    assert_eq!(
        question
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(1),
        "how many"
    );
    let answer = col("answer");
    assert_eq!(
        answer
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(1),
        "2 3"
    );
    let split = col("split");
    let split = split.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(
        (split.value(0), split.value(1), split.is_null(2)),
        ("train", "val", true)
    );
    let image = col("image");
    let image = image.as_any().downcast_ref::<BinaryArray>().unwrap();
    assert_eq!(image.value(0), png(8).as_slice());
    assert!(image.is_null(1));
    let audio = col("audio");
    assert!(
        audio
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap()
            .is_null(2)
    );
}

#[test]
fn too_many_rejects_fail_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(
        &data,
        &[GOOD, "b,media/missing.png,,q,a,,,1,x", "c,,,,a,,,1,x"],
    );
    let config = IngestConfig {
        max_reject_fraction: 0.5,
        ..config()
    };
    let err = ingest::run(&config, &data, &tmp.path().join("out")).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::TooManyRejects {
                rejected: 2,
                total: 3,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("manifest.csv") && msg.contains("missing_media") && msg.contains("line 3"),
        "{msg}"
    );
    assert!(!tmp.path().join("out").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}"); // data/ and outside.png only
}

/// Runs ingest on a folder prepared by `prepare` and checks the error mentions every fragment.
fn check_dataset_error(prepare: impl FnOnce(&Path), config: &IngestConfig, expected: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    prepare(&data);
    let msg = ingest::run(config, &data, &tmp.path().join("out"))
        .unwrap_err()
        .to_string();
    for fragment in expected {
        assert!(msg.contains(fragment), "error {msg:?} lacks {fragment:?}");
    }
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn dataset_level_problems_name_the_file() {
    check_dataset_error(|_| {}, &config(), &["manifest.csv", "No such file"]);
    check_dataset_error(
        |d| std::fs::write(d.join("manifest.csv"), "id,question\n1,q\n").unwrap(),
        &config(),
        &["manifest.csv", "missing required column \"answer\""],
    );
    check_dataset_error(
        |d| std::fs::write(d.join("manifest.csv"), "id,question,answer\n").unwrap(),
        &config(),
        &["no rows"],
    );
    check_dataset_error(
        |d| {
            std::fs::write(
                d.join("manifest.csv"),
                "id,question,answer,x,x\n1,q,a,1,2\n",
            )
            .unwrap()
        },
        &config(),
        &["\"x\" appears twice"],
    );
    let typo = IngestConfig {
        column_types: BTreeMap::from([("batery".to_owned(), FeatureKind::Numeric)]),
        ..config()
    };
    check_dataset_error(
        |d| dataset(d, &[GOOD]),
        &typo,
        &["column_types.batery", "no such column"],
    );
    let reserved = IngestConfig {
        column_types: BTreeMap::from([("answer".to_owned(), FeatureKind::Numeric)]),
        ..config()
    };
    check_dataset_error(
        |d| dataset(d, &[GOOD]),
        &reserved,
        &["column_types.answer", "reserved"],
    );
    let bad_fraction = IngestConfig {
        max_reject_fraction: 1.5,
        ..config()
    };
    check_dataset_error(
        |d| dataset(d, &[GOOD]),
        &bad_fraction,
        &["max_reject_fraction", "[0, 1]"],
    );
}

#[test]
fn ingest_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(
        &data,
        &[
            GOOD,
            "b,media/missing.png,,q,a,,,1,x",
            "c,,media/ok.wav,q,a,,,2,y",
        ],
    );
    let a = ingest::run(&config(), &data, &tmp.path().join("a"))
        .and_then(|_| Ok(Artifact::open(tmp.path().join("a"))?))
        .unwrap();
    let b = ingest::run(&config(), &data, &tmp.path().join("b"))
        .and_then(|_| Ok(Artifact::open(tmp.path().join("b"))?))
        .unwrap();
    assert_eq!(a.manifest().content_hash, b.manifest().content_hash);
    assert_eq!(a.manifest().inputs, b.manifest().inputs);
}

#[test]
fn modalities_column_is_an_annotation_not_a_feature() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("manifest.csv"),
        "id,question,answer,modalities,battery\n\
         a,q,x,image,1\n\
         b,q,y,image audio|tabular,2\n\
         c,q,z,,3\n\
         d,q,w,image smell,4\n",
    )
    .unwrap();
    let summary = ingest::run(&config(), &data, &tmp.path().join("out")).unwrap();
    assert_eq!(
        summary.rejects_by_reason,
        BTreeMap::from([("invalid_modalities".to_owned(), 1)])
    );
    assert_eq!(
        summary.features,
        [("battery".to_owned(), FeatureKind::Numeric)]
    );
    let art = Artifact::open(tmp.path().join("out")).unwrap();
    let (schema, batches) = art.read_table("samples").unwrap();
    let last = schema.fields().last().unwrap();
    assert_eq!(
        (last.name().as_str(), last.metadata().is_empty()),
        ("modalities", true),
        "modalities comes after the features and is not one"
    );
    let column = batches[0].column(schema.fields().len() - 1);
    let got: Vec<Option<&str>> = column
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(got, [Some("image"), Some("image audio|tabular"), None]);
    let (_, rejects) = art.read_table("rejects").unwrap();
    let detail = rejects[0]
        .column(4)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(
        detail.value(0).contains("\"smell\" is not a modality"),
        "{}",
        detail.value(0)
    );

    // Without the column, the samples table has none.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("manifest.csv"), "id,question,answer\na,q,x\n").unwrap();
    ingest::run(&config(), &plain, &tmp.path().join("out2")).unwrap();
    let schema = Artifact::open(tmp.path().join("out2"))
        .unwrap()
        .table_schema("samples")
        .unwrap();
    assert!(schema.column_with_name("modalities").is_none());
}

/// `accept` and `check_*` columns are carried as text after the features (and `modalities`), untagged, so the
/// tabular stage never treats them as features; a column merely starting with `check` is a feature.
#[test]
fn checker_columns_are_annotations_not_features() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("manifest.csv"),
        "id,question,answer,accept,check_tolerance,checked,modalities\n\
         a,q,red,red|blue,,1,image\n\
         b,q,3,,0.5,2,image\n\
         c,q,yes,yes,,3,audio\n",
    )
    .unwrap();
    let summary = ingest::run(&config(), &data, &tmp.path().join("out")).unwrap();
    assert_eq!(
        summary.features,
        [("checked".to_owned(), FeatureKind::Numeric)]
    );
    let art = Artifact::open(tmp.path().join("out")).unwrap();
    let (schema, batches) = art.read_table("samples").unwrap();
    let names: Vec<&str> = schema
        .fields()
        .iter()
        .skip(sample::FIXED_COLUMNS.len())
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        ["checked", "modalities", "accept", "check_tolerance"]
    );
    for name in ["accept", "check_tolerance"] {
        let field = schema.field_with_name(name).unwrap();
        assert!(field.metadata().is_empty(), "{name} is tagged a feature");
        assert_eq!(field.data_type(), &arrow::datatypes::DataType::Utf8);
    }
    let text = |name: &str| -> Vec<Option<String>> {
        batches[0]
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    };
    assert_eq!(
        text("accept"),
        [Some("red|blue".to_owned()), None, Some("yes".to_owned())]
    );
    assert_eq!(
        text("check_tolerance"),
        [None, Some("0.5".to_owned()), None]
    );
}
