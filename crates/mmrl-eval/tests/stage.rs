//! The eval stage end to end on tiny artifacts built in code: outputs, determinism, hold-out lineage
//! refusals, prediction alignment errors, an empty test split, and train-only baselines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mmrl_artifact::Artifact;
use mmrl_eval::baselines::{Baselines, ClassicalSettings};
use mmrl_eval::stage::{TestRow, align, finite_logprob, read_predictions};
use mmrl_eval::{Error, EvalConfig, EvalInputs};
use mmrl_model::data::{Dataset, InputPaths};

struct Fixture {
    inputs: InputPaths,
    model: PathBuf,
}

/// Every directory the tests write lives here; it is cleared when the first test starts, so runs do not pile
/// up (statics are never dropped, so a `TempDir` could not clean it).
fn root() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let r = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mmrl-eval-stage-tests");
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).unwrap();
        r
    })
}

/// One tiny trained model shared by the tests (training is the slow part).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir_in(root()).unwrap().keep();
        let rows = common::rows(200);
        let inputs = common::inputs(&dir, &rows);
        let model = common::train(&dir, &inputs);
        Fixture { inputs, model }
    })
}

fn quick() -> EvalConfig {
    EvalConfig {
        bootstrap_samples: 200,
        cross_modal: Some(vec!["both".into()]),
        ..Default::default()
    }
}

fn eval_inputs(f: &Fixture, extra: &[(&str, &Path)]) -> EvalInputs {
    let mut named = vec![
        ("samples".to_owned(), f.inputs.samples.clone()),
        ("image".to_owned(), f.inputs.image.clone().unwrap()),
        ("tabular".to_owned(), f.inputs.tabular.clone().unwrap()),
        ("model".to_owned(), f.model.clone()),
    ];
    named.extend(
        extra
            .iter()
            .map(|(n, p)| ((*n).to_owned(), p.to_path_buf())),
    );
    EvalInputs::from_named(&named).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = tempfile::tempdir_in(root()).unwrap().keep();
    d.join(name)
}

#[test]
fn eval_scores_every_system_and_writes_a_deterministic_report() {
    let f = fixture();
    let other = common::relabel_model(&f.model, &scratch("other"), &["train"]);
    let inputs = eval_inputs(f, &[("sft", &f.model), ("model_b", &other)]);
    let out = scratch("eval");
    let summary = mmrl_eval::run(&quick(), &inputs, &out, 7).unwrap();
    let artifact = Artifact::open(&out).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(artifact.file("metrics.json").unwrap()).unwrap())
            .unwrap();
    let em = metrics["test"]["exact_match"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&em));
    let by_q = metrics["test"]["by_question"].as_object().unwrap();
    assert_eq!(
        by_q.keys().cloned().collect::<Vec<_>>(),
        ["both", "colour", "group", "level"]
    );
    let baselines = metrics["baselines"].as_object().unwrap();
    for name in [
        "majority",
        "majority_qtype",
        "logistic",
        "tree",
        "ablation_image_only",
        "ablation_tabular_only",
        "ablation_question_only",
        "model_b",
    ] {
        let b = &baselines[name];
        assert!(b["exact_match"].as_f64().is_some(), "{name}");
        assert_eq!(b["by_question"].as_object().unwrap().len(), 4, "{name}");
        assert!(
            metrics["comparisons"][name]["overall"]["p_value"]
                .as_f64()
                .is_some(),
            "{name}"
        );
    }
    // No audio input: no audio ablation. The sft input is the headline artifact: scored once.
    assert!(baselines.get("ablation_audio_only").is_none());
    assert!(baselines.get("sft").is_none());
    // The same weights under another artifact give the same answers.
    assert_eq!(baselines["model_b"]["exact_match"].as_f64().unwrap(), em);
    let test_rows = common::rows(200)
        .iter()
        .filter(|r| r.split == "test")
        .count();
    let systems = 1 + baselines.len();
    assert_eq!(
        artifact
            .manifest()
            .output("predictions.parquet")
            .unwrap()
            .rows,
        Some((systems * test_rows) as u64)
    );
    assert_eq!(
        metrics["test"]["samples"].as_u64().unwrap() as usize,
        test_rows
    );
    // summary.txt: the headline table (one line per system) and the report's path, for the runner to print.
    let text = std::fs::read_to_string(summary.report_html.with_file_name("summary.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "test rows: {test_rows} of the {test_rows} in select's test split scored; none lost a modality to curation"
        ),
        "{text}"
    );
    assert!(lines[1].starts_with("system"), "{text}");
    assert_eq!(
        lines.len(),
        1 + 1 + 1 + summary.metrics.baselines.len() + 2,
        "test rows, header, ours, every other system, verdict, report path: {text}"
    );
    assert!(lines[2].starts_with(&summary.metrics.headline), "{text}");
    assert!(
        lines.last().unwrap().starts_with("report: report.html"),
        "{text}"
    );
    let html = std::fs::read_to_string(&summary.report_html).unwrap();
    assert!(html.matches("<svg").count() >= 4, "plots are inline");
    assert!(!html.contains("src=\"http"), "self-contained");
    assert!(
        html.contains("id=\"sft-loss\""),
        "the sft loss curve is drawn"
    );
    let md = std::fs::read_to_string(artifact.file("report.md").unwrap()).unwrap();
    assert!(md.contains("| majority_qtype |"));
    assert!(
        metrics["sources"]["rl_curves"]
            .as_str()
            .unwrap()
            .starts_with("absent")
    );
    assert_eq!(artifact.manifest().fit_splits, ["train"]);

    // Same seed and inputs: the same artifact content.
    let again = scratch("eval2");
    mmrl_eval::run(&quick(), &inputs, &again, 7).unwrap();
    assert_eq!(
        Artifact::open(&again).unwrap().manifest().content_hash,
        artifact.manifest().content_hash
    );
}

#[test]
fn a_model_fit_on_test_or_without_lineage_is_refused() {
    let f = fixture();
    let leaky = common::relabel_model(&f.model, &scratch("leaky"), &["train", "test"]);
    let inputs = eval_inputs(f, &[]);
    let mut bad = inputs.clone();
    bad.model = leaky.clone();
    let err = mmrl_eval::run(&quick(), &bad, &scratch("out"), 1).unwrap_err();
    assert!(matches!(err, Error::Lineage { .. }), "{err}");
    assert!(err.to_string().contains("test split"), "{err}");

    let mut extra = inputs.clone();
    extra.models.push(("rl".into(), leaky));
    let err = mmrl_eval::run(&quick(), &extra, &scratch("out"), 1).unwrap_err();
    assert!(err.to_string().contains("\"rl\""), "{err}");

    let anonymous = common::relabel_model(&f.model, &scratch("anon"), &[]);
    let mut none = inputs.clone();
    none.model = anonymous;
    let err = mmrl_eval::run(&quick(), &none, &scratch("out"), 1).unwrap_err();
    assert!(err.to_string().contains("no lineage"), "{err}");

    let preds = common::write_predictions(&scratch("preds"), &[("s0008", "red", -0.1)], &["test"]);
    let mut p = inputs.clone();
    p.predictions.push(("predictions_x".into(), preds));
    let err = mmrl_eval::run(&quick(), &p, &scratch("out"), 1).unwrap_err();
    assert!(matches!(err, Error::Lineage { .. }), "{err}");
}

#[test]
fn predictions_must_cover_exactly_the_test_ids() {
    let test: Vec<TestRow> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, id)| TestRow {
            index: i,
            id: (*id).into(),
            qtype: "q".into(),
            task: String::new(),
            reference: "yes".into(),
        })
        .collect();
    let p = |id: &str| (id.to_owned(), "yes".to_owned(), Some(-0.5));
    let ok = align("m", &test, &[p("c"), p("a"), p("b")]).unwrap();
    assert_eq!(ok.len(), 3);
    let check = |preds: Vec<(String, String, Option<f64>)>, needle: &str| {
        let err = align("m", &test, &preds).unwrap_err();
        assert!(matches!(err, Error::Predictions { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    };
    check(vec![p("a"), p("b"), p("c"), p("zz")], "zz");
    check(vec![p("a"), p("b")], "c");
    check(vec![p("a"), p("b"), p("c"), p("a")], "more than once");

    // Through the stage: a predictions artifact for a sample outside the test split.
    let f = fixture();
    let preds = common::write_predictions(&scratch("preds"), &[("s0001", "red", -0.1)], &["train"]);
    let mut inputs = eval_inputs(f, &[]);
    inputs.predictions.push(("predictions_val".into(), preds));
    let err = mmrl_eval::run(&quick(), &inputs, &scratch("out"), 1).unwrap_err();
    assert!(err.to_string().contains("s0001"), "{err}");
}

#[test]
fn an_empty_test_split_is_an_error() {
    let f = fixture();
    let dir = scratch("notest");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<common::Row> = common::rows(200)
        .into_iter()
        .map(|mut r| {
            if r.split == "test" {
                r.split = "val";
            }
            r
        })
        .collect();
    let samples = common::write_samples(&dir, &rows);
    let mut inputs = eval_inputs(f, &[]);
    // The fixture's model records the fixture's samples; a copy that records no inputs passes the
    // trained-on-the-same-data check, so the empty split is what fails.
    inputs.model = common::relabel_model(&f.model, &scratch("unrecorded"), &["train"]);
    inputs.data.samples = samples;
    inputs.data.image = Some(common::write_images(&dir, &rows, 1));
    inputs.data.tabular = Some(common::write_tabular(&dir, &rows));
    let err = mmrl_eval::run(&quick(), &inputs, &scratch("out"), 1).unwrap_err();
    assert!(err.to_string().contains("test split is empty"), "{err}");
}

#[test]
fn unknown_inputs_and_bad_params_are_named() {
    let err = EvalInputs::from_named(&[("weird".into(), PathBuf::from("x"))]).unwrap_err();
    assert!(err.to_string().contains("weird"));
    let err = EvalInputs::from_named(&[("samples".into(), PathBuf::from("x"))]).unwrap_err();
    assert!(err.to_string().contains("model"));
    for (cfg, field) in [
        (
            EvalConfig {
                confidence_level: 1.0,
                ..Default::default()
            },
            "confidence_level",
        ),
        (
            EvalConfig {
                ece_bins: 0,
                ..Default::default()
            },
            "ece_bins",
        ),
        (
            EvalConfig {
                abstain_answer: " ".into(),
                ..Default::default()
            },
            "abstain_answer",
        ),
        (
            EvalConfig {
                bootstrap_samples: 0,
                ..Default::default()
            },
            "bootstrap_samples",
        ),
    ] {
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn baselines_are_fit_on_train_rows_only() {
    let f = fixture();
    let settings = Some(ClassicalSettings {
        pool: 2,
        logistic_alpha: 1.0,
        logistic_max_iterations: 50,
        tree_max_depth: 6,
        question_words: 50,
    });
    let a = Dataset::load(&f.inputs).unwrap();
    // Same samples, but every test (and val) row gets another answer and other features.
    let dir = scratch("shifted");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<common::Row> = common::rows(200)
        .into_iter()
        .map(|mut r| {
            if r.split != "train" {
                r.answer = "zzz".into();
                r.value = 9.0;
                r.colour = Some(1 - r.colour.unwrap());
                r.category = 2;
            }
            r
        })
        .collect();
    let b = Dataset::load(&common::inputs(&dir, &rows)).unwrap();
    let fa = Baselines::fit(&a, settings).unwrap();
    let fb = Baselines::fit(&b, settings).unwrap();
    assert_eq!(fa.majority_qtype, fb.majority_qtype);
    assert_eq!(fa.features, fb.features);
    assert_eq!(fa.classes, fb.classes);
    assert!(!fa.classes.contains(&"zzz".to_owned()));
    let all: Vec<usize> = (0..a.samples.len()).collect();
    assert_eq!(fa.predict(&a, &all), fb.predict(&a, &all));
    // And the classical models learned something on train.
    let train = a.split(mmrl_artifact::sample::Split::Train);
    let preds = fa.predict(&a, &train);
    let (_, tree) = preds.iter().find(|(n, _)| n == "tree").unwrap();
    let hits = tree
        .iter()
        .zip(&train)
        .filter(|(p, i)| p.0 == a.samples[**i].answer)
        .count();
    assert!(
        hits as f64 / train.len() as f64 > 0.6,
        "{hits}/{}",
        train.len()
    );
}

#[test]
fn the_tree_learns_an_interaction_and_refits_identically() {
    use mmrl_eval::baselines::Cart;
    // Class = x0 XOR x1: the first split gains nothing, the second separates (as sklearn, zero-gain splits
    // are taken).
    let mut rows = Vec::new();
    let mut y = Vec::new();
    for i in 0..40 {
        let (a, b) = ((i % 2) as f64, ((i / 2) % 2) as f64);
        rows.extend([a, b]);
        y.push(usize::from((a > 0.5) != (b > 0.5)));
    }
    let x = ndarray::Array2::from_shape_vec((40, 2), rows).unwrap();
    let t = Cart::fit(&x, &y, 2, 2);
    for (i, &c) in y.iter().enumerate() {
        assert_eq!(t.predict(x.row(i).as_slice().unwrap()), (c, 1.0));
    }
    assert_eq!(t, Cart::fit(&x, &y, 2, 2));
    // Depth 0: a single leaf with the majority class (ties: smallest class).
    let stump = Cart::fit(&x, &y, 2, 0);
    assert_eq!(stump.len(), 1);
    assert_eq!(stump.predict(&[0.0, 0.0]), (0, 0.5));
}

#[test]
fn rl_curves_and_hpo_history_are_drawn_when_present() {
    use std::sync::Arc;

    use arrow::array::{Float64Array, RecordBatch, StringArray, UInt64Array};
    let f = fixture();
    let steps = RecordBatch::try_from_iter([
        ("step", Arc::new(UInt64Array::from(vec![1, 2, 3])) as _),
        (
            "reward",
            Arc::new(Float64Array::from(vec![0.1, 0.4, 0.6])) as _,
        ),
        (
            "kl",
            Arc::new(Float64Array::from(vec![0.0, 0.01, 0.02])) as _,
        ),
        (
            "entropy",
            Arc::new(Float64Array::from(vec![1.2, 1.0, 0.9])) as _,
        ),
    ])
    .unwrap();
    let rl = common::model_artifact(
        &f.model,
        &scratch("rl"),
        "rl",
        &["train"],
        &[("metrics_steps", steps)],
    );
    let trials = RecordBatch::try_from_iter([
        ("number", Arc::new(UInt64Array::from(vec![0, 1, 2, 3])) as _),
        (
            "state",
            Arc::new(StringArray::from(vec![
                "complete", "pruned", "complete", "complete",
            ])) as _,
        ),
        (
            "value",
            Arc::new(Float64Array::from(vec![
                Some(0.5),
                None,
                Some(0.7),
                Some(0.6),
            ])) as _,
        ),
    ])
    .unwrap();
    let hpo = scratch("hpo");
    let mut w = mmrl_artifact::ArtifactWriter::create(&hpo, common::info("hpo")).unwrap();
    w.fit_splits(&["train"]);
    w.write_table(
        "trials",
        mmrl_artifact::Role::Data,
        trials.schema(),
        &[trials],
    )
    .unwrap();
    w.commit().unwrap();
    let inputs = eval_inputs(f, &[("rl", &rl), ("hpo", &hpo)]);
    let out = scratch("eval");
    let summary = mmrl_eval::run(&quick(), &inputs, &out, 3).unwrap();
    let html = std::fs::read_to_string(&summary.report_html).unwrap();
    for id in [
        "rl-reward",
        "rl-kl",
        "rl-entropy",
        "hpo",
        "sft-loss",
        "confusion",
        "reliability",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "figure {id} missing"
        );
    }
    assert!(
        !html.contains("id=\"rl-val\""),
        "no rl val table, no rl val plot"
    );
    let m = &summary.metrics;
    assert_eq!(m.baselines["rl"].kind, mmrl_eval::stage::Kind::Checkpoint);
    assert!(
        m.sources["hpo_history"].contains("3 completed trials"),
        "{}",
        m.sources["hpo_history"]
    );
    assert!(
        m.sources["rl_curves"].contains("reward"),
        "{}",
        m.sources["rl_curves"]
    );
}

#[test]
fn every_model_of_a_multi_model_artifact_is_scored() {
    use mmrl_artifact::{ArtifactWriter, Role};
    let f = fixture();
    let dest = scratch("compress");
    let mut w = ArtifactWriter::create(&dest, common::info("compress")).unwrap();
    w.fit_splits(&["train"]);
    for name in ["fp32", "int8"] {
        let dir = w.tmp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["model.bpk", "config.json", "vocab.json"] {
            std::fs::copy(f.model.join(file), dir.join(file)).unwrap();
        }
        w.add_dir(name, Role::State, None).unwrap();
    }
    let list =
        serde_json::json!([{"name": "fp32", "dir": "fp32"}, {"name": "int8", "dir": "int8"}]);
    w.write_json(mmrl_model::predict::MODELS_FILE, Role::State, &list)
        .unwrap();
    w.commit().unwrap();
    let inputs = eval_inputs(f, &[("compress", &dest)]);
    let summary = mmrl_eval::run(&quick(), &inputs, &scratch("eval"), 3).unwrap();
    let m = &summary.metrics;
    for name in ["compress/fp32", "compress/int8"] {
        assert_eq!(
            m.baselines[name].kind,
            mmrl_eval::stage::Kind::Checkpoint,
            "{name}"
        );
        assert_eq!(
            m.baselines[name].exact_match, m.test.exact_match,
            "same weights"
        );
    }
}

#[test]
fn the_binary_checks_params_and_runs_the_stage() {
    let bin = env!("CARGO_BIN_EXE_mmrl-eval");
    let out = std::process::Command::new(bin)
        .args(["eval", "--check"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let resolved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resolved["ece_bins"], 15);
    let params = scratch("params.toml");
    std::fs::create_dir_all(params.parent().unwrap()).unwrap();
    std::fs::write(&params, "ece_bins = 0\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["eval", "--check", "--params"])
        .arg(&params)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ece_bins"));
    std::fs::write(&params, "bootstrap_samples = 50\n").unwrap();
    let f = fixture();
    let dest = scratch("eval");
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["eval", "--seed", "1", "--params"]).arg(&params);
    for (name, path) in [
        ("samples", &f.inputs.samples),
        ("image", f.inputs.image.as_ref().unwrap()),
        ("tabular", f.inputs.tabular.as_ref().unwrap()),
        ("model", &f.model),
    ] {
        cmd.arg("--input").arg(format!("{name}={}", path.display()));
    }
    let out = cmd.arg("--output").arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report.html"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("majority_qtype"));
    assert!(dest.join("report.html").is_file());
}

/// Data artifacts with other content than the fixture's: another split of the same samples, images with
/// another number of views, and shifted tabular values.
fn other_data() -> InputPaths {
    let dir = scratch("other-data");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<common::Row> = common::rows(200)
        .into_iter()
        .map(|mut r| {
            r.split = match r.split {
                "test" => "train",
                "train" if r.id.ends_with('0') || r.id.ends_with('1') => "test",
                s => s,
            };
            r
        })
        .collect();
    let shifted: Vec<common::Row> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            r.value += 0.25;
            r
        })
        .collect();
    InputPaths {
        samples: common::write_samples(&dir, &rows),
        image: Some(common::write_images(&dir, &rows, 2)),
        audio: None,
        tabular: Some(common::write_tabular(&dir, &shifted)),
    }
}

fn hash(dir: &Path) -> String {
    Artifact::open(dir).unwrap().manifest().content_hash.clone()
}

#[test]
fn a_model_trained_on_other_data_is_refused_directly_and_through_its_model_input() {
    let f = fixture();
    let other = other_data();
    let ours = [
        ("samples", f.inputs.samples.clone()),
        ("image", f.inputs.image.clone().unwrap()),
        ("tabular", f.inputs.tabular.clone().unwrap()),
    ];
    let theirs = [
        ("samples", other.samples.clone()),
        ("image", other.image.clone().unwrap()),
        ("tabular", other.tabular.clone().unwrap()),
    ];
    // The fixture's own sft records exactly eval's data, and an rl run on top of it with the same samples
    // passes too (followed through its model input).
    let good_rl = common::derived_model(
        &f.model,
        &scratch("good-rl"),
        "rl",
        &[("model", &f.model), ("samples", &f.inputs.samples)],
    );
    let data: std::collections::BTreeMap<String, String> = ours
        .iter()
        .map(|(n, p)| ((*n).to_owned(), hash(p)))
        .collect();
    for (name, dir) in [("model", &f.model), ("rl", &good_rl)] {
        mmrl_eval::stage::check_trained_on(name, &Artifact::open(dir).unwrap(), &data).unwrap();
    }
    for (k, (swapped, wrong)) in theirs.iter().enumerate() {
        let recorded: Vec<(&str, &Path)> = ours
            .iter()
            .enumerate()
            .map(|(j, (n, p))| (*n, if j == k { wrong.as_path() } else { p.as_path() }))
            .collect();
        let sft = common::derived_model(&f.model, &scratch("sft"), "sft", &recorded);
        // Directly: the headline model.
        let mut inputs = eval_inputs(f, &[]);
        inputs.model = sft.clone();
        let err = mmrl_eval::run(&quick(), &inputs, &scratch("out"), 1).unwrap_err();
        assert!(matches!(err, Error::Lineage { .. }), "{swapped}: {err}");
        let msg = err.to_string();
        for needle in [
            "trained on other data".to_owned(),
            format!("{swapped:?}"),
            hash(wrong),
            hash(&ours[k].1),
            "test rows".to_owned(),
        ] {
            assert!(msg.contains(&needle), "{swapped}: {msg} lacks {needle:?}");
        }
        // Transitively: an rl (or compress) artifact that records the right samples but started from
        // that sft.
        for stage in ["rl", "compress"] {
            let derived = common::derived_model(
                &f.model,
                &scratch(stage),
                stage,
                &[("model", &sft), ("samples", &f.inputs.samples)],
            );
            let inputs = eval_inputs(f, &[(stage, &derived)]);
            let err = mmrl_eval::run(&quick(), &inputs, &scratch("out"), 1).unwrap_err();
            assert!(
                matches!(err, Error::Lineage { .. }),
                "{stage}/{swapped}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("trained on other data"), "{msg}");
            assert!(msg.contains(&format!("{stage:?}")), "{msg}");
            assert!(msg.contains(&hash(wrong)), "{msg}");
        }
    }
}

#[test]
fn a_model_whose_input_was_fit_on_test_is_refused() {
    let f = fixture();
    let leaky = common::relabel_model(&f.model, &scratch("leaky"), &["train", "test"]);
    // The rl artifact itself fit on train only; its model input's lineage fit on test.
    let rl = common::derived_model(&f.model, &scratch("rl"), "rl", &[("model", &leaky)]);
    assert_eq!(
        Artifact::open(&rl).unwrap().manifest().fit_splits,
        ["train"]
    );
    for (as_headline, name) in [(true, "model"), (false, "rl")] {
        let mut inputs = eval_inputs(f, &[]);
        if as_headline {
            inputs.model = rl.clone();
        } else {
            inputs.models.push(("rl".into(), rl.clone()));
        }
        let err = mmrl_eval::run(&quick(), &inputs, &scratch("out"), 1).unwrap_err();
        assert!(matches!(err, Error::Lineage { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("test split"), "{msg}");
        assert!(msg.contains(&format!("input {name:?}")), "{msg}");
        assert!(msg.contains("via model"), "{msg}");
    }
}

#[test]
fn bad_prediction_tables_are_errors_naming_the_row() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray};
    let table = |answers: Vec<Option<&str>>, logprob: ArrayRef| {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from(vec!["s0008", "s0009"])) as ArrayRef,
            ),
            ("answer", Arc::new(StringArray::from(answers)) as ArrayRef),
            ("logprob", logprob),
        ])
        .unwrap()
    };
    let f64s = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
    let ok = vec![Some("red"), Some("no")];
    let cases: Vec<(&str, RecordBatch, Vec<&str>)> = vec![
        (
            "float32",
            table(
                ok.clone(),
                Arc::new(Float32Array::from(vec![-0.1f32, -0.2])),
            ),
            vec!["column \"logprob\" is Float32, expected Float64"],
        ),
        (
            "nan",
            table(ok.clone(), f64s(vec![Some(-0.1), Some(f64::NAN)])),
            vec!["row 1", "s0009", "NaN"],
        ),
        (
            "inf",
            table(ok.clone(), f64s(vec![Some(f64::NEG_INFINITY), Some(-0.2)])),
            vec!["row 0", "s0008", "-inf"],
        ),
        (
            "null-answer",
            table(vec![Some("red"), None], f64s(vec![Some(-0.1), Some(-0.2)])),
            vec!["row 1", "s0009", "null answer"],
        ),
    ];
    for (name, batch, needles) in cases {
        let dir = common::predictions_table(&scratch(name), batch);
        let err = read_predictions("predictions_x", &dir).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.display().to_string()),
            "{name}: {msg} names no artifact"
        );
        for needle in needles {
            assert!(msg.contains(needle), "{name}: {msg} lacks {needle:?}");
        }
    }
    // A null logprob is fine: no confidence for that row.
    let dir = common::predictions_table(&scratch("fine"), table(ok, f64s(vec![None, Some(-0.2)])));
    assert_eq!(
        read_predictions("predictions_x", &dir).unwrap(),
        vec![
            ("s0008".to_owned(), "red".to_owned(), None),
            ("s0009".to_owned(), "no".to_owned(), Some(-0.2)),
        ]
    );
}

#[test]
fn a_non_finite_decoded_logprob_becomes_no_confidence() {
    for (lp, want) in [
        (-0.5f32, Some(-0.5f64)),
        (0.0, Some(0.0)),
        (f32::NAN, None),
        (f32::NEG_INFINITY, None),
        (f32::INFINITY, None),
    ] {
        assert_eq!(finite_logprob(lp), want, "{lp}");
    }
}

#[test]
fn every_test_row_is_scored_when_the_image_stage_dropped_test_rows() {
    let f = fixture();
    let rows = common::rows(200);
    let test_ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.split == "test")
        .map(|r| r.id.as_str())
        .collect();
    // Three test rows and a train row leave the image table, as the image stage drops near-duplicates.
    let dropped = [
        (test_ids[0], "near_duplicate"),
        (test_ids[1], "near_duplicate"),
        (test_ids[2], "blank"),
        ("s0000", "blank"),
    ];
    let dir = scratch("dropped");
    std::fs::create_dir_all(&dir).unwrap();
    let mut inputs = eval_inputs(f, &[]);
    inputs.data.image = Some(common::write_images_dropping(&dir, &rows, &dropped));
    // The fixture's model records the fixture's image artifact; a copy that records no inputs may score
    // this one.
    inputs.model = common::relabel_model(&f.model, &scratch("unrecorded"), &["train"]);
    // Training leaves the dropped rows out; eval does not.
    let training_view = Dataset::load(&inputs.data).unwrap();
    assert_eq!(
        training_view
            .split(mmrl_artifact::sample::Split::Test)
            .len(),
        test_ids.len() - 3
    );

    let out = scratch("eval");
    let summary = mmrl_eval::run(&quick(), &inputs, &out, 5).unwrap();
    let m = &summary.metrics;
    assert_eq!(m.test.samples, test_ids.len());
    assert_eq!(m.test_rows.select_test_rows, test_ids.len());
    assert_eq!(m.test_rows.scored_rows, test_ids.len());
    for (name, r) in &m.baselines {
        assert_eq!(r.samples, test_ids.len(), "{name}");
    }
    let lost = &m.test_rows.lost;
    assert_eq!(lost.keys().collect::<Vec<_>>(), ["image"]);
    assert_eq!(lost["image"].rows, 3);
    assert_eq!(
        lost["image"].by_reason,
        [("blank".to_owned(), 1), ("near_duplicate".to_owned(), 2)].into()
    );

    // The headline says it, in summary.txt, report.md, report.html and metrics.json.
    let line = format!(
        "test rows: {0} of the {0} in select's test split scored; 3 answered without image \
         (dropped by the image stage: blank 1, near_duplicate 2)",
        test_ids.len()
    );
    let artifact = Artifact::open(&out).unwrap();
    let read = |f: &str| std::fs::read_to_string(artifact.file(f).unwrap()).unwrap();
    assert_eq!(read("summary.txt").lines().next().unwrap(), line);
    assert!(read("report.md").contains(&line[1..]), "report.md");
    assert!(read("report.html").contains(&line[1..]), "report.html");
    let json: serde_json::Value = serde_json::from_str(&read("metrics.json")).unwrap();
    assert_eq!(
        json["test_rows"]["lost"]["image"]["by_reason"]["near_duplicate"],
        2
    );

    // A dropped row is answered with its image absent: as the ablation that masks every image answers it.
    let (_, batches) = artifact.read_table("predictions").unwrap();
    let mut answers: std::collections::BTreeMap<(String, String), String> = Default::default();
    for b in &batches {
        use arrow::array::AsArray;
        let col = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (model, id, answer) = (col("model"), col("id"), col("answer"));
        for i in 0..b.num_rows() {
            answers.insert(
                (model.value(i).to_owned(), id.value(i).to_owned()),
                answer.value(i).to_owned(),
            );
        }
    }
    for (id, _) in &dropped[..3] {
        let ours = &answers[&(m.headline.clone(), (*id).to_owned())];
        let masked = &answers[&("ablation_tabular_only".to_owned(), (*id).to_owned())];
        assert_eq!(ours, masked, "{id}");
    }
}

#[test]
fn without_cross_modal_params_eval_derives_which_types_need_which_modality() {
    let f = fixture();
    let config = EvalConfig {
        bootstrap_samples: 200,
        ..Default::default()
    };
    assert_eq!(config.cross_modal, None);
    let out = scratch("eval");
    let summary = mmrl_eval::run(&config, &eval_inputs(f, &[]), &out, 7).unwrap();
    let m = &summary.metrics;
    assert_eq!(
        m.modality_needs.keys().collect::<Vec<_>>(),
        ["both", "colour", "group", "level"]
    );
    for (q, needs) in &m.modality_needs {
        assert_eq!(
            needs.costs.keys().collect::<Vec<_>>(),
            ["image", "tabular"],
            "{q}"
        );
        for (modality, cost) in &needs.costs {
            let masked = &m.baselines[&format!("ablation_without_{modality}")];
            let drop = m.test.by_question[q] - masked.by_question[q];
            assert!((cost.drop - drop).abs() < 1e-12, "{q}/{modality}");
            assert_eq!(
                cost.needed,
                cost.drop > config.needs_threshold && cost.ci.lo > 0.0,
                "{q}/{modality}: {cost:?}"
            );
            assert_eq!(needs.needs.contains(modality), cost.needed, "{q}");
        }
    }
    let derived: Vec<String> = m
        .modality_needs
        .iter()
        .filter(|(_, n)| n.needs.len() >= 2)
        .map(|(q, _)| q.clone())
        .collect();
    assert_eq!(m.cross_modal.qtypes, derived);
    assert!(
        m.cross_modal.source.starts_with("the mask-one ablations"),
        "{}",
        m.cross_modal.source
    );
    // The verdict weighs ablations that keep one modality, not those that mask one.
    assert!(
        m.cross_modal
            .not_beaten
            .iter()
            .all(|x| !x.starts_with("ablation_without_")),
        "{:?}",
        m.cross_modal.not_beaten
    );
    let md =
        std::fs::read_to_string(Artifact::open(&out).unwrap().file("report.md").unwrap()).unwrap();
    assert!(
        md.contains("## Which modality each question type needs"),
        "{md}"
    );
    for (q, n) in &m.modality_needs {
        assert!(
            md.contains(&format!("| {q} | {} | {} |", n.samples, n.label())),
            "{q}"
        );
    }

    // A listed type the data lacks: an error naming it and listing the data's types, before any output.
    let bad = EvalConfig {
        cross_modal: Some(vec!["both".into(), "digit_and_count".into()]),
        ..config
    };
    let out = scratch("refused");
    let err = mmrl_eval::run(&bad, &eval_inputs(f, &[]), &out, 7).unwrap_err();
    let msg = err.to_string();
    for needle in [
        "cross_modal",
        "\"digit_and_count\"",
        "\"both\", \"colour\", \"group\", \"level\"",
    ] {
        assert!(msg.contains(needle), "{msg} lacks {needle:?}");
    }
    assert!(!out.exists());
}
