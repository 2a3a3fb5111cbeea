//! The select stage on sample tables built in code: filters, dedup, grouping, stratified splits, balance.
#![allow(clippy::unwrap_used)] // test setup that fails should stop the test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use mmrl_artifact::sample::{self, FeatureKind};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_data::select::{
    self, Balance, Dedup, Filter, Modality, SelectConfig, SharedMedia, SplitConfig,
};

/// One input row.
#[derive(Clone, Default)]
struct Row {
    id: String,
    task: Option<&'static str>,
    answer: String,
    split: Option<&'static str>,
    image: Option<Vec<u8>>,
    audio: Option<Vec<u8>>,
    battery: Option<f64>,
    device: Option<String>,
    modalities: Option<&'static str>,
}

fn row(i: usize, answer: &str) -> Row {
    Row {
        id: format!("s{i:04}"),
        task: Some("shapes"),
        answer: answer.to_owned(),
        image: Some(format!("img{i}").into_bytes()),
        audio: Some(format!("wav{i}").into_bytes()),
        battery: Some(i as f64),
        device: Some(format!("dev{}", i % 7)),
        ..Row::default()
    }
}

/// Writes an ingest-like artifact holding `rows` and returns its directory.
fn artifact(dir: &Path, rows: &[Row]) -> std::path::PathBuf {
    let schema = sample::sample_schema(&[
        ("battery".into(), FeatureKind::Numeric),
        ("device".into(), FeatureKind::Categorical),
    ]);
    let s = |f: &dyn Fn(&Row) -> Option<String>| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let b = |f: &dyn Fn(&Row) -> Option<Vec<u8>>| {
        let v: Vec<Option<Vec<u8>>> = rows.iter().map(f).collect();
        Arc::new(BinaryArray::from(
            v.iter().map(|x| x.as_deref()).collect::<Vec<_>>(),
        )) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        s(&|r| Some(r.id.clone())),
        s(&|r| r.split.map(str::to_owned)),
        s(&|r| r.task.map(str::to_owned)),
        s(&|r| Some(format!("q_{}", r.task.unwrap_or("none")))),
        s(&|r| Some(format!("question {}", r.task.unwrap_or("none")))),
        s(&|r| Some(r.answer.clone())),
        b(&|r| r.image.clone()),
        b(&|r| r.audio.clone()),
        Arc::new(UInt64Array::from(
            (0..rows.len() as u64).map(|i| i + 2).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.battery).collect::<Vec<_>>(),
        )),
        s(&|r| r.device.clone()),
    ];
    let mut columns = columns;
    let mut schema = schema;
    if rows.iter().any(|r| r.modalities.is_some()) {
        let mut fields: Vec<arrow::datatypes::Field> =
            schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(arrow::datatypes::Field::new(
            sample::MODALITIES,
            arrow::datatypes::DataType::Utf8,
            true,
        ));
        schema = Arc::new(arrow::datatypes::Schema::new(fields));
        columns.push(s(&|r| r.modalities.map(str::to_owned)));
    }
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let out = dir.join("ingest");
    let info = StageInfo {
        stage: "ingest".into(),
        crate_name: "t".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: None,
    };
    let mut w = ArtifactWriter::create(&out, info).unwrap();
    w.write_table("samples", Role::Data, schema, &[batch])
        .unwrap();
    w.commit().unwrap();
    out
}

/// The selected rows: id -> (split, repeat), their rationales, the unlabeled rows (`None`: no `labeled`
/// column), and the rejects as id -> reason.
struct Selected {
    rows: BTreeMap<String, (String, u32)>,
    rationales: BTreeMap<String, String>,
    unlabeled: Option<BTreeSet<String>>,
    rejects: BTreeMap<String, String>,
    report: select::SelectReport,
}

fn run(rows: &[Row], config: &SelectConfig, seed: u64) -> Selected {
    let tmp = tempfile::tempdir().unwrap();
    let input = artifact(tmp.path(), rows);
    let report = select::run(config, seed, &input, &tmp.path().join("select")).unwrap();
    let art = Artifact::open(tmp.path().join("select")).unwrap();
    assert_eq!(art.manifest().inputs[0].stage.as_deref(), Some("ingest"));
    let (schema, batches) = art.read_table("samples").unwrap();
    let repeat_at = schema.index_of(select::REPEAT).unwrap();
    let appended: Vec<&str> = schema.fields()[repeat_at + 1..]
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert!(
        [sample::RATIONALE, sample::LABELED]
            .iter()
            .filter(|c| appended.contains(c))
            .eq(appended.iter()),
        "select appends repeat, then the rationale when it derives one, then labeled under a label budget: {schema:?}"
    );
    let mut out = BTreeMap::new();
    let mut rationales = BTreeMap::new();
    let mut unlabeled = schema
        .column_with_name(sample::LABELED)
        .map(|_| BTreeSet::new());
    for b in &batches {
        if let (Some(col), Some(set)) = (b.column_by_name(sample::LABELED), unlabeled.as_mut()) {
            let col = col
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .unwrap();
            let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            for i in (0..b.num_rows()).filter(|&i| !col.value(i)) {
                set.insert(ids.value(i).to_owned());
            }
        }
        if let Some(col) = b.column_by_name(sample::RATIONALE) {
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                if col.is_valid(i) {
                    rationales.insert(ids.value(i).to_owned(), col.value(i).to_owned());
                }
            }
        }
        let ids = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let splits = b
            .column_by_name("split")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let repeat = b
            .column_by_name("repeat")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.insert(
                ids.value(i).to_owned(),
                (splits.value(i).to_owned(), repeat.value(i)),
            );
        }
    }
    let (_, rej) = art.read_table("rejects").unwrap();
    let mut rejects = BTreeMap::new();
    for b in &rej {
        let ids = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let reasons = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            rejects.insert(ids.value(i).to_owned(), reasons.value(i).to_owned());
        }
    }
    assert_eq!(
        out.len() + rejects.len(),
        rows.len(),
        "a row was lost silently"
    );
    Selected {
        rows: out,
        rationales,
        unlabeled,
        rejects,
        report,
    }
}

fn many(n: usize) -> Vec<Row> {
    (0..n).map(|i| row(i, ["yes", "no", "3"][i % 3])).collect()
}

#[test]
fn filters_remove_rows_and_report_counts() {
    let mut rows = many(30);
    rows[0].task = Some("caption");
    rows[1].task = Some("caption");
    rows[2].audio = None;
    rows[3].battery = None;
    rows[4].battery = Some(500.0);
    let config = SelectConfig {
        filters: vec![
            Filter {
                column: Some("task".into()),
                one_of: Some(vec!["shapes".into()]),
                ..Filter::default()
            },
            Filter {
                name: Some("needs audio".into()),
                present: Some(vec![Modality::Audio]),
                ..Filter::default()
            },
            Filter {
                column: Some("battery".into()),
                max: Some(100.0),
                ..Filter::default()
            },
        ],
        ..SelectConfig::default()
    };
    let got = run(&rows, &config, 1);
    let removed: Vec<usize> = got.report.filters.iter().map(|f| f.removed).collect();
    assert_eq!(removed, [2, 1, 2]);
    assert_eq!(got.report.filters[1].filter, "needs audio");
    for id in ["s0000", "s0001", "s0002", "s0003", "s0004"] {
        assert_eq!(
            got.rejects.get(id).map(String::as_str),
            Some("filtered"),
            "{id}"
        );
    }
    assert_eq!(got.rows.len(), 25);
}

#[test]
fn exact_duplicates_are_dropped_and_shared_media_stay_together() {
    let mut rows = many(60);
    // s0050 is an exact copy of s0010 under another id.
    rows[50] = Row {
        id: "s0050".into(),
        ..rows[10].clone()
    };
    // s0051..s0053 share one audio clip (another question about the same recording).
    for i in 51..54 {
        rows[i].audio = Some(b"shared".to_vec());
    }
    let got = run(&rows, &SelectConfig::default(), 3);
    assert_eq!(
        got.rejects.get("s0050").map(String::as_str),
        Some("duplicate")
    );
    assert_eq!(got.report.exact_duplicates, 1);
    let splits: BTreeSet<&String> = (51..54).map(|i| &got.rows[&format!("s{i:04}")].0).collect();
    assert_eq!(
        splits.len(),
        1,
        "rows sharing audio straddle splits: {splits:?}"
    );

    let drop = SelectConfig {
        dedup: Dedup {
            same_audio: SharedMedia::Drop,
            ..Dedup::default()
        },
        ..SelectConfig::default()
    };
    let got = run(&rows, &drop, 3);
    assert_eq!(got.report.shared_media_dropped, 2);
    assert!(got.rows.contains_key("s0051") && !got.rows.contains_key("s0052"));
}

#[test]
fn splits_are_seeded_stratified_and_respect_existing() {
    let rows = many(300);
    let a = run(&rows, &SelectConfig::default(), 7);
    let b = run(&rows, &SelectConfig::default(), 7);
    let c = run(&rows, &SelectConfig::default(), 8);
    assert_eq!(a.rows, b.rows);
    assert_ne!(a.rows, c.rows);
    // Each answer (100 rows) is split 70/15/15 exactly.
    for (answer, per) in &a.report.answers {
        assert_eq!(per.get("train"), Some(&70), "{answer}: {per:?}");
        assert_eq!(per.get("val"), Some(&15), "{answer}: {per:?}");
        assert_eq!(per.get("test"), Some(&15), "{answer}: {per:?}");
    }
    let mut declared = many(40);
    declared[5].split = Some("test");
    declared[6].split = Some("train");
    let got = run(&declared, &SelectConfig::default(), 1);
    assert_eq!(got.rows["s0005"].0, "test");
    assert_eq!(got.rows["s0006"].0, "train");
}

#[test]
fn split_conflicts_are_counted_and_rejected_or_regrouped() {
    let mut rows = many(30);
    // Rows 0-2 share an image: two declare test, one train, so the group is test and row 0 conflicts.
    for (i, split) in [(0, "train"), (1, "test"), (2, "test")] {
        rows[i].image = Some(b"shared".to_vec());
        rows[i].split = Some(split);
    }
    // Rows 3-4 share a clip, one train and one val: a tie goes to val.
    for (i, split) in [(3, "train"), (4, "val")] {
        rows[i].audio = Some(b"clip".to_vec());
        rows[i].split = Some(split);
    }
    let rejected = run(&rows, &SelectConfig::default(), 1);
    assert_eq!(
        rejected.rejects.get("s0000").map(String::as_str),
        Some("split_conflict")
    );
    assert_eq!(
        rejected.rejects.get("s0003").map(String::as_str),
        Some("split_conflict")
    );
    assert_eq!(rejected.rows["s0004"].0, "val");
    assert_eq!(
        rejected.report.split_conflicts,
        BTreeMap::from([
            ("train -> test".to_owned(), 1),
            ("train -> val".to_owned(), 1)
        ])
    );
    assert!(
        rejected
            .report
            .warnings
            .iter()
            .any(|w| w.contains("2 rows") && w.contains("regroup")),
        "{:?}",
        rejected.report.warnings
    );
    let regroup = SelectConfig {
        split: SplitConfig {
            on_conflict: select::OnConflict::Regroup,
            ..SplitConfig::default()
        },
        ..SelectConfig::default()
    };
    let regrouped = run(&rows, &regroup, 1);
    assert!(regrouped.rejects.is_empty(), "{:?}", regrouped.rejects);
    assert_eq!(regrouped.rows["s0000"].0, "test");
    assert_eq!(regrouped.rows["s0003"].0, "val");
    assert_eq!(
        regrouped.report.split_conflicts,
        rejected.report.split_conflicts
    );
}

#[test]
fn rationales_are_the_single_modality_train_answers_about_the_same_media() {
    // Pairs of one image and one clip, three questions each: the image alone, the audio alone, both.
    let mut rows = Vec::new();
    for p in 0..12 {
        let split = if p < 10 { "train" } else { "val" };
        for (task, modalities, answer) in [
            ("written", "image", format!("a{p}")),
            ("spoken", "audio tabular", format!("b{p}")),
            ("sum", "image audio tabular", format!("s{p}")),
        ] {
            if p == 9 && task == "spoken" {
                continue; // this pair's clip has no audio-only question: its rationale is the image's alone
            }
            rows.push(Row {
                id: format!("p{p:02}{task}"),
                task: Some(task),
                answer,
                split: Some(split),
                image: Some(format!("img{p}").into_bytes()),
                audio: Some(format!("wav{p}").into_bytes()),
                modalities: Some(modalities),
                ..Row::default()
            });
        }
    }
    let got = run(&rows, &SelectConfig::default(), 1);
    let expected: BTreeMap<String, String> = (0..10)
        .map(|p| {
            let r = if p == 9 {
                "a9".to_owned()
            } else {
                format!("a{p} b{p}")
            };
            (format!("p{p:02}sum"), r)
        })
        .collect();
    // Val rows get none (only train labels are used), nor do the single-modality rows.
    assert_eq!(got.rationales, expected);
    assert_eq!(
        got.report.rationales,
        BTreeMap::from([("q_sum".to_owned(), 10)])
    );
    // Without the `modalities` column, no rationale column at all.
    let plain: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            modalities: None,
            ..r.clone()
        })
        .collect();
    let got = run(&plain, &SelectConfig::default(), 1);
    assert!(got.rationales.is_empty() && got.report.rationales.is_empty());
}

#[test]
fn group_by_keeps_each_value_in_one_split() {
    let rows = many(210);
    let config = SelectConfig {
        split: SplitConfig {
            group_by: Some("device".into()),
            ..SplitConfig::default()
        },
        ..SelectConfig::default()
    };
    let got = run(&rows, &config, 4);
    let mut split_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        split_of
            .entry(r.device.clone().unwrap())
            .or_default()
            .insert(got.rows[&format!("s{i:04}")].0.clone());
    }
    assert!(split_of.values().all(|s| s.len() == 1), "{split_of:?}");
    assert!(got.report.multi_row_groups >= 7);
}

#[test]
fn oversampling_balances_train_only() {
    // 60 "yes", 12 "no": balance gives "no" train rows repeats.
    let rows: Vec<Row> = (0..72)
        .map(|i| row(i, if i < 60 { "yes" } else { "no" }))
        .collect();
    let config = SelectConfig {
        balance: Balance {
            oversample: true,
            max_repeat: 10,
        },
        ..SelectConfig::default()
    };
    let got = run(&rows, &config, 2);
    let w = &got.report.train_weight;
    assert_eq!(w["yes"], w["no"], "{w:?}");
    for (split, repeat) in got.rows.values() {
        if split != "train" {
            assert_eq!(*repeat, 1);
        }
    }
    assert!(got.rows.values().any(|(s, r)| s == "train" && *r > 1));
    let capped = SelectConfig {
        balance: Balance {
            oversample: true,
            max_repeat: 2,
        },
        ..SelectConfig::default()
    };
    let got = run(&rows, &capped, 2);
    assert_eq!(
        got.report.train_weight["no"],
        2 * got.report.answers["no"]["train"] as u64
    );
}

#[test]
fn small_classes_warn_and_tiny_inputs_leave_empty_splits_with_a_warning() {
    let mut rows = many(40);
    rows[0].answer = "rare".into();
    let got = run(&rows, &SelectConfig::default(), 1);
    assert!(
        got.report.warnings.iter().any(|w| w.contains("\"rare\"")),
        "{:?}",
        got.report.warnings
    );
    let got = run(&many(2), &SelectConfig::default(), 1);
    assert!(
        got.report
            .warnings
            .iter()
            .any(|w| w.contains("split is empty")),
        "{:?}",
        got.report.warnings
    );
}

/// Runs select expecting an error that mentions every fragment.
fn check_error(rows: &[Row], config: &SelectConfig, expected: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let input = artifact(tmp.path(), rows);
    let msg = select::run(config, 1, &input, &tmp.path().join("select"))
        .unwrap_err()
        .to_string();
    for fragment in expected {
        assert!(msg.contains(fragment), "error {msg:?} lacks {fragment:?}");
    }
    assert!(!tmp.path().join("select").exists());
}

#[test]
fn bad_configs_and_empty_results_get_clear_errors() {
    let rows = many(30);
    let filter = |f: Filter| SelectConfig {
        filters: vec![f],
        ..SelectConfig::default()
    };
    check_error(
        &rows,
        &filter(Filter {
            column: Some("tsk".into()),
            one_of: Some(vec![]),
            ..Filter::default()
        }),
        &["filters[0].column", "no column \"tsk\"", "task"],
    );
    check_error(
        &rows,
        &filter(Filter {
            column: Some("task".into()),
            ..Filter::default()
        }),
        &["filters[0]", "exactly one"],
    );
    check_error(
        &rows,
        &filter(Filter {
            column: Some("task".into()),
            min: Some(1.0),
            ..Filter::default()
        }),
        &["filters[0]", "numeric"],
    );
    // A value the column never holds is a typo or another dataset's vocabulary: named, with what the data has.
    check_error(
        &rows,
        &filter(Filter {
            column: Some("task".into()),
            one_of: Some(vec!["x".into()]),
            ..Filter::default()
        }),
        &[
            "filters[0].in",
            "\"x\" is not a value of column \"task\"",
            "1 value(s): shapes",
        ],
    );
    check_error(
        &rows,
        &filter(Filter {
            column: Some("task".into()),
            not_in: Some(vec!["shapes".into(), "shapez".into()]),
            ..Filter::default()
        }),
        &["filters[0].not_in", "\"shapez\""],
    );
    check_error(
        &rows,
        &filter(Filter {
            column: Some("task".into()),
            not_in: Some(vec!["shapes".into()]),
            ..Filter::default()
        }),
        &["removed every row"],
    );
    let bad_split = SelectConfig {
        split: SplitConfig {
            train: 0.5,
            val: 0.1,
            test: 0.1,
            ..SplitConfig::default()
        },
        ..SelectConfig::default()
    };
    check_error(&rows, &bad_split, &["split", "expected 1"]);
    let all_test: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            split: Some("test"),
            ..r.clone()
        })
        .collect();
    check_error(
        &all_test,
        &SelectConfig::default(),
        &["train split is empty"],
    );
    let group = SelectConfig {
        split: SplitConfig {
            group_by: Some("speaker".into()),
            ..SplitConfig::default()
        },
        ..SelectConfig::default()
    };
    check_error(&rows, &group, &["split.group_by", "speaker"]);
}

/// Pairs of one image and one clip with three questions each (image alone, audio alone, both), as in the
/// rationale test: pairs 0..10 train, 10..12 val.
fn paired_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for p in 0..12 {
        let split = if p < 10 { "train" } else { "val" };
        for (task, modalities, answer) in [
            ("written", "image", format!("a{p}")),
            ("spoken", "audio", format!("b{p}")),
            ("sum", "image audio", format!("s{p}")),
        ] {
            rows.push(Row {
                id: format!("p{p:02}{task}"),
                task: Some(task),
                answer,
                split: Some(split),
                image: Some(format!("img{p}").into_bytes()),
                audio: Some(format!("wav{p}").into_bytes()),
                modalities: Some(modalities),
                ..Row::default()
            });
        }
    }
    rows
}

/// A label budget keeps the demonstration of N train rows per named question type; the others are marked
/// unlabeled (their answers stay in the table), val rows stay labeled, and a rationale is built from labeled
/// answers only and given to labeled rows only: an unlabeled answer never leaks into a training target.
#[test]
fn label_budget_marks_unlabeled_train_rows_and_rationales_use_labeled_answers_only() {
    let rows = paired_rows();
    let config = SelectConfig {
        label_budget: BTreeMap::from([("q_written".to_owned(), 3), ("q_sum".to_owned(), 6)]),
        ..SelectConfig::default()
    };
    let got = run(&rows, &config, 1);
    let unlabeled = got.unlabeled.clone().expect("a labeled column");
    let count = |task: &str| unlabeled.iter().filter(|id| id.ends_with(task)).count();
    assert_eq!((count("written"), count("spoken"), count("sum")), (7, 0, 4));
    assert!(
        unlabeled.iter().all(|id| got.rows[id].0 == "train"),
        "{unlabeled:?}"
    );
    assert_eq!(
        got.report.label_budget["q_written"],
        select::LabelCount {
            labeled: 3,
            unlabeled: 7
        }
    );
    assert_eq!(
        got.report.label_budget["q_sum"],
        select::LabelCount {
            labeled: 6,
            unlabeled: 4
        }
    );
    for p in 0..10 {
        let sum = format!("p{p:02}sum");
        let written_known = !unlabeled.contains(&format!("p{p:02}written"));
        let expected = (!unlabeled.contains(&sum)).then(|| {
            if written_known {
                format!("a{p} b{p}")
            } else {
                format!("b{p}")
            }
        });
        assert_eq!(got.rationales.get(&sum), expected.as_ref(), "{sum}");
    }
    // Same seed, same choice; another seed, another.
    assert_eq!(run(&rows, &config, 1).unlabeled, got.unlabeled);
    assert_ne!(run(&rows, &config, 2).unlabeled, got.unlabeled);
    // No budget: no column.
    assert_eq!(run(&rows, &SelectConfig::default(), 1).unlabeled, None);
    // A budget for a question type the data lacks names the ones it has.
    let tmp = tempfile::tempdir().unwrap();
    let input = artifact(tmp.path(), &rows);
    let bad = SelectConfig {
        label_budget: BTreeMap::from([("q_color".to_owned(), 3)]),
        ..SelectConfig::default()
    };
    let e = select::run(&bad, 1, &input, &tmp.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label_budget.q_color") && e.contains("q_spoken, q_sum, q_written"),
        "{e}"
    );
}
