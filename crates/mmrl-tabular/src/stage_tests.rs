//! End-to-end tests of the stage on tiny select-like artifacts written in the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, Float64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, UInt32Type};
use mmrl_artifact::sample::{self, FeatureKind};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};

use crate::stage::{TabularConfig, run};
use crate::{Error, TabularState, UNSEEN_CODE};

/// One sample row: id, split, battery, temperature, device.
type Row = (
    &'static str,
    Option<&'static str>,
    Option<f64>,
    Option<f64>,
    Option<&'static str>,
);

fn rows() -> Vec<Row> {
    vec![
        ("s00", Some("train"), Some(50.0), Some(21.0), Some("dev_a")),
        (
            "s01",
            Some("train"),
            Some(-999.0),
            Some(22.0),
            Some("dev_b"),
        ),
        ("s02", Some("train"), Some(60.0), None, Some("dev_a")),
        ("s03", Some("train"), Some(10000.0), Some(23.0), None),
        ("s04", Some("train"), Some(40.0), Some(500.0), Some("dev_c")),
        ("s05", Some("train"), None, Some(20.0), Some("dev_b")),
        ("s06", Some("train"), Some(55.0), Some(24.0), Some("dev_a")),
        ("s07", Some("train"), Some(45.0), Some(19.0), Some("dev_c")),
        ("s08", Some("val"), Some(52.0), Some(22.5), Some("dev_f")),
        ("s09", Some("val"), Some(-999.0), None, None),
        ("s10", Some("test"), Some(1e4), Some(21.5), Some("dev_a")),
        ("s11", Some("test"), Some(30.0), Some(-40.0), Some("dev_b")),
    ]
}

fn features() -> Vec<(String, FeatureKind)> {
    vec![
        ("battery".into(), FeatureKind::Numeric),
        ("temperature".into(), FeatureKind::Numeric),
        ("device".into(), FeatureKind::Categorical),
    ]
}

/// Writes a select-like artifact (sample schema + `repeat`) at `dir`.
fn write_select(dir: &Path, rows: &[Row]) -> PathBuf {
    let mut fields: Vec<Field> = sample::sample_schema(&features())
        .fields()
        .iter()
        .map(|f| (**f).clone())
        .collect();
    fields.push(Field::new("repeat", DataType::UInt32, false));
    let schema = Arc::new(Schema::new(fields));
    let n = rows.len();
    let text = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let columns: Vec<ArrayRef> = vec![
        text(rows.iter().map(|r| Some(r.0)).collect()),
        text(rows.iter().map(|r| r.1).collect()),
        text(vec![None; n]),
        text(vec![None; n]),
        text(vec![Some("what is it?"); n]),
        text(vec![Some("yes"); n]),
        Arc::new(BinaryArray::from(vec![
            Some(
                &b"\x89PNG not decoded here"[..]
            );
            n
        ])),
        Arc::new(BinaryArray::from(vec![None::<&[u8]>; n])),
        Arc::new(UInt64Array::from(
            (0..n as u64).map(|i| i + 2).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        )),
        text(rows.iter().map(|r| r.4).collect()),
        Arc::new(UInt32Array::from(vec![1u32; n])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = dir.join("select");
    let info = StageInfo {
        stage: "select".into(),
        crate_name: "test".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: Some(1),
    };
    let mut writer = ArtifactWriter::create(&path, info).unwrap();
    writer.fit_splits(&[]);
    writer
        .write_table("samples", Role::Data, schema, &[batch])
        .unwrap();
    writer.commit().unwrap();
    path
}

fn config(toml_text: &str) -> TabularConfig {
    let config: TabularConfig = toml::from_str(toml_text).unwrap();
    config.validate().unwrap();
    config
}

/// The `[stages.tabular.params]` of pipelines/default.toml.
const DEFAULT_PARAMS: &str = r#"
max_drop_fraction = 0.05
[numeric]
impute = "median"
missing_indicators = true
sentinels = [-999.0]
outliers = { rule = "iqr", k = 3.0, action = "clip" }
scale = "robust"
[categorical]
impute = "missing"
encode = "ordinal"
unknown = "bucket"
"#;

#[test]
fn stage_writes_model_ready_features_state_quality_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_select(dir.path(), &rows());
    let out = dir.path().join("tabular");
    let summary = run(&config(DEFAULT_PARAMS), &input, &out).unwrap();
    assert_eq!(summary.dropped, 0);

    let artifact = Artifact::open(&out).unwrap();
    artifact.verify_hashes().unwrap();
    let m = artifact.manifest();
    assert_eq!(m.fit_splits, ["train"]);
    assert_eq!(m.inputs[0].name, "samples");
    let (schema, batches) = artifact.read_table("tabular").unwrap();
    let layout: Vec<(String, DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    let expect = |n: &str, t: DataType| (n.to_owned(), t, false);
    assert_eq!(
        layout,
        [
            expect("id", DataType::Utf8),
            expect("split", DataType::Utf8),
            expect("battery", DataType::Float32),
            expect("battery__missing", DataType::Float32),
            expect("temperature", DataType::Float32),
            expect("temperature__missing", DataType::Float32),
            expect("device", DataType::UInt32),
        ]
    );
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    assert_eq!(batch.num_rows(), 12);
    let col = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
    let battery = col("battery");
    let battery = battery.as_primitive::<Float32Type>();
    assert!(battery.values().iter().all(|v| v.is_finite()));
    let device = col("device");
    let device = device.as_primitive::<UInt32Type>();
    // Train vocabulary dev_a, dev_b, dev_c = codes 2, 3, 4; dev_f (val) is unseen; a null is the missing code.
    assert_eq!(
        device.values().to_vec(),
        [2, 3, 2, 0, 4, 3, 2, 4, UNSEEN_CODE, 0, 2, 3]
    );
    let missing = col("battery__missing");
    assert_eq!(
        missing.as_primitive::<Float32Type>().values().to_vec()[..3],
        [0.0, 1.0, 0.0]
    );

    // Battery: train values after sentinel removal [50, 60, 10000, 40, 55, 45]; Q1 = 46.25, Q3 = 58.75, IQR 12.5,
    // k 3: the clip bound is 96.25. Median of the clipped values [40, 45, 50, 55, 60, 96.25] = 52.5.
    let state =
        TabularState::from_json(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    let crate::ColumnState::Numeric(b) = &state.columns[0] else {
        panic!()
    };
    let bounds = b.outliers.clone().unwrap();
    assert!(
        (bounds.upper - 96.25).abs() < 1e-9 && (bounds.lower - 8.75).abs() < 1e-9,
        "{bounds:?}"
    );
    assert!((b.fill - 52.5).abs() < 1e-9, "{b:?}");

    let (qschema, qbatches) = artifact.read_table("quality").unwrap();
    assert_eq!(qbatches.iter().map(|b| b.num_rows()).sum::<usize>(), 3 * 3);
    assert_eq!(qschema.field(0).name(), "column");
    let (_, rejects) = artifact.read_table("rejects").unwrap();
    assert_eq!(rejects.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["splits"]["val"]["output"], 2);
    let battery_val = summary
        .quality
        .rows
        .iter()
        .find(|r| r.column == "battery" && r.split == "test")
        .unwrap();
    assert_eq!((battery_val.outliers, battery_val.clipped), (1, 1));
}

#[test]
fn stage_drop_rule_writes_rejects_and_respects_max_drop_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_select(dir.path(), &rows());
    let params = format!(
        "{DEFAULT_PARAMS}\n[columns.temperature]\noutliers = {{ rule = \"iqr\", k = 3.0, action = \"drop\" }}\n"
    );
    let err = run(&config(&params), &input, &dir.path().join("t1")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyDropped {
                dropped: 2,
                total: 12,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.path().join("t1").exists());

    let params = params.replace("max_drop_fraction = 0.05", "max_drop_fraction = 0.5");
    let out = dir.path().join("t2");
    let summary = run(&config(&params), &input, &out).unwrap();
    assert_eq!(summary.dropped, 2);
    let artifact = Artifact::open(&out).unwrap();
    let (_, rejects) = artifact.read_table("rejects").unwrap();
    let rejects = arrow::compute::concat_batches(&rejects[0].schema(), &rejects).unwrap();
    let ids = rejects.column(1).as_string::<i32>();
    let reasons = rejects.column(3).as_string::<i32>();
    let details = rejects.column(4).as_string::<i32>();
    assert_eq!((ids.value(0), ids.value(1)), ("s04", "s11"));
    assert_eq!(reasons.value(0), "outlier");
    assert!(
        details.value(0).contains("\"temperature\" = 500"),
        "{}",
        details.value(0)
    );
    assert_eq!(
        rejects
            .column(0)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(0),
        6
    );
    let (_, data) = artifact.read_table("tabular").unwrap();
    assert_eq!(data.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
}

#[test]
fn stage_state_ignores_val_and_test_and_outputs_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_select(&dir.path().join("a"), &rows());
    let mut changed = rows();
    for row in changed.iter_mut().filter(|r| r.1 != Some("train")) {
        row.2 = Some(1e9);
        row.3 = None;
        row.4 = Some("dev_z");
    }
    let b = write_select(&dir.path().join("b"), &changed);
    let cfg = config(DEFAULT_PARAMS);
    run(&cfg, &a, &dir.path().join("oa")).unwrap();
    run(&cfg, &a, &dir.path().join("oa2")).unwrap();
    run(&cfg, &b, &dir.path().join("ob")).unwrap();
    let state = |p: &str| std::fs::read(dir.path().join(p).join("state.json")).unwrap();
    assert_eq!(state("oa"), state("ob"));
    let hash = |p: &str| {
        Artifact::open(dir.path().join(p))
            .unwrap()
            .manifest()
            .content_hash
            .clone()
    };
    assert_eq!(hash("oa"), hash("oa2"));
    assert_ne!(hash("oa"), hash("ob"));
}

#[test]
fn stage_bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_select(dir.path(), &rows());
    let out = dir.path().join("out");

    let err = run(
        &config("[columns.batery]\nimpute = \"mean\"\n"),
        &input,
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("columns.batery") && err.contains("battery, temperature, device"),
        "{err}"
    );

    let err = run(
        &config("[columns.device]\nkind = \"numeric\"\n"),
        &input,
        &out,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::NotNumeric { .. }) && err.to_string().contains("\"device\""),
        "{err}"
    );

    let mut no_train = rows();
    for row in &mut no_train {
        if row.1 == Some("train") {
            row.1 = Some("val");
        }
    }
    let empty = write_select(&dir.path().join("empty"), &no_train);
    let err = run(&config(DEFAULT_PARAMS), &empty, &out).unwrap_err();
    assert!(
        matches!(err, Error::EmptyTrain(_)) && err.to_string().contains("samples.parquet"),
        "{err}"
    );

    let mut unsplit = rows();
    unsplit[3].1 = None;
    let unsplit = write_select(&dir.path().join("unsplit"), &unsplit);
    let err = run(&config(DEFAULT_PARAMS), &unsplit, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"s03\"") && err.contains("run select first"),
        "{err}"
    );
    assert!(!out.exists());

    // Unknown keys and out-of-range values are refused before any work.
    assert!(
        toml::from_str::<TabularConfig>("[numeric]\nimpute = \"median\"\nbogus = 1\n").is_err()
    );
    assert!(toml::from_str::<TabularConfig>("[columns.x]\nscale = \"log\"\n").is_err());
    let bad: TabularConfig = toml::from_str("max_drop_fraction = 1.5").unwrap();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("max_drop_fraction")
    );
    // Keys of both kinds on one column, or against its declared kind, fail before the data is read.
    let bad: TabularConfig =
        toml::from_str("[columns.x]\nscale = \"robust\"\nencode = \"one_hot\"\n").unwrap();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("columns.x: scale applies to numeric")
    );
    let bad: TabularConfig =
        toml::from_str("[columns.x]\nkind = \"categorical\"\nscale = \"robust\"\n").unwrap();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("columns.x.scale")
    );
}

#[test]
fn stage_warns_about_a_split_left_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut no_test = rows();
    for row in &mut no_test {
        if row.1 == Some("test") {
            row.1 = Some("val");
        }
    }
    let input = write_select(dir.path(), &no_test);
    let summary = run(&config(DEFAULT_PARAMS), &input, &dir.path().join("out")).unwrap();
    assert_eq!(
        summary.splits["test"],
        crate::stage::SplitRows {
            input: 0,
            output: 0
        }
    );
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("split test has no rows")),
        "{:?}",
        summary.warnings
    );

    // A split that only the drop rules empty gets its own message.
    let params = format!("{DEFAULT_PARAMS}\n[columns.temperature]\noutliers = {{ rule = \"iqr\", k = 3.0, action = \"drop\" }}\n")
        .replace("max_drop_fraction = 0.05", "max_drop_fraction = 0.5");
    let mut one_test = rows();
    one_test[10].1 = Some("val");
    let input = write_select(&dir.path().join("b"), &one_test);
    let summary = run(&config(&params), &input, &dir.path().join("out2")).unwrap();
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("split test lost all its rows to the outlier drop rules")),
        "{:?}",
        summary.warnings
    );
}
