//! The hpo stage end to end through the binary, tuning the built-in toy stage as trial processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use mmrl_artifact::Artifact;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mmrl-hpo");

fn params(extra: &str, space: &str, metric: &str) -> String {
    format!(
        r#"sampler = "gp"
n_trials = 6
workers = 2
overrides = {{ steps = 2 }}
{extra}
[trial]
run = "mmrl-hpo toy"
params = {{ x = 0.5, y = 0.5, kind = "a", steps = 5, sleep_ms = 0, fail = false }}
[objective]
metric = "{metric}"
direction = "maximize"
[pruner]
kind = "none"
[space]
{space}
"#
    )
}

const SPACE: &str = r#"x = { type = "float", low = 0.0, high = 1.0 }
y = { type = "float", low = 0.0, high = 1.0 }
kind = { type = "categorical", choices = ["a", "b"] }"#;

fn hpo(dir: &Path, text: &str, output: &str, check: bool) -> std::process::Output {
    let file = dir.join(format!("{output}.params.toml"));
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("hpo")
        .arg("--params")
        .arg(&file)
        .arg("--output")
        .arg(dir.join(output))
        .arg("--seed")
        .arg("3");
    if check {
        cmd.arg("--check");
    }
    cmd.output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tunes_the_toy_stage_and_writes_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = hpo(dir.path(), &params("", SPACE, "nested.score"), "hpo", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let artifact = Artifact::open(dir.path().join("hpo")).unwrap();
    let (_, batches) = artifact.read_table("trials").unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
    let report = json(&artifact.file("report.json").unwrap());
    assert_eq!(report["counts"]["complete"], 6);
    let best = json(&artifact.file("best_params.json").unwrap());
    let keys: Vec<&str> = best
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["kind", "x", "y"]);
    // The best value is the toy objective at the best parameters.
    let (x, y) = (best["x"].as_f64().unwrap(), best["y"].as_f64().unwrap());
    let bonus = if best["kind"] == "b" { 0.1 } else { 0.0 };
    let expected = 1.0 - (x - 0.3).powi(2) - (y - 0.7).powi(2) + bonus;
    assert!((report["best_value"].as_f64().unwrap() - expected).abs() < 1e-12);
    let overlay: toml::Table =
        toml::from_str(&std::fs::read_to_string(artifact.file("best.toml").unwrap()).unwrap())
            .unwrap();
    assert_eq!(overlay.len(), 3);
    for plot in ["history.svg", "parallel_coordinates.svg", "importances.svg"] {
        let svg = std::fs::read_to_string(artifact.file(plot).unwrap()).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{plot}");
    }
    // Each trial got the overrides and the suggested values; intermediate values reached the journal.
    let study = dir.path().join(".hpo.hpo-study");
    let trial0: toml::Table =
        toml::from_str(&std::fs::read_to_string(study.join("trials/0.params.toml")).unwrap())
            .unwrap();
    assert_eq!(trial0["steps"].as_integer(), Some(2));
    assert_eq!(trial0["sleep_ms"].as_integer(), Some(0));
    let journal = std::fs::read_to_string(study.join("journal.jsonl")).unwrap();
    assert_eq!(journal.matches(r#""event":"intermediate""#).count(), 12);

    // Running again with the same config resumes the finished study: no new trial.
    let again = hpo(dir.path(), &params("", SPACE, "nested.score"), "hpo", false);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(study.join("journal.jsonl")).unwrap(),
        journal
    );
    // A changed config starts a fresh study.
    let changed = hpo(
        dir.path(),
        &params("", SPACE, "score").replace("n_trials = 6", "n_trials = 2"),
        "hpo",
        false,
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    let fresh = std::fs::read_to_string(study.join("journal.jsonl")).unwrap();
    assert_eq!(fresh.matches(r#""event":"start""#).count(), 2);
}

#[test]
fn failing_trials_are_recorded_and_the_study_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let space = format!("{SPACE}\nfail = {{ type = \"categorical\", choices = [false, true] }}");
    let text = params("", &space, "score")
        .replace("sampler = \"gp\"", "sampler = \"grid\"")
        .replace("n_trials = 6", "n_trials = 100");
    // A 2-point grid on x, y would still be large: use a coarse grid of the categoricals only.
    let text = text
        .replace(
            r#"x = { type = "float", low = 0.0, high = 1.0 }"#,
            r#"x = { type = "float", low = 0.3, high = 0.3 }"#,
        )
        .replace(
            r#"y = { type = "float", low = 0.0, high = 1.0 }"#,
            r#"y = { type = "float", low = 0.7, high = 0.7 }"#,
        );
    let out = hpo(dir.path(), &text, "hpo", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&dir.path().join("hpo/report.json"));
    assert_eq!(report["counts"]["complete"], 2, "{report}");
    assert_eq!(report["counts"]["failed"], 2, "{report}");
    assert_eq!(report["best_params"]["kind"], "b");
    let journal = std::fs::read_to_string(dir.path().join(".hpo.hpo-study/journal.jsonl")).unwrap();
    assert!(journal.contains("toy stage asked to fail"), "{journal}");
}

#[test]
fn a_metric_no_trial_writes_fails_the_stage_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = params("", SPACE, "val_exact_match").replace("n_trials = 6", "n_trials = 2");
    let out = hpo(dir.path(), &text, "hpo", false);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("no trial completed")
            && e.contains("objective metric \"val_exact_match\" is not in"),
        "{e}"
    );
}

#[test]
fn bad_configs_fail_the_check_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            params(
                "",
                r#"lr = { type = "float", low = 1e-4, high = 1e-2, log = true }"#,
                "score",
            ),
            "space parameter \"lr\" is not a parameter of the tuned stage",
        ),
        (
            params(
                "",
                r#"x = { type = "float", low = 2.0, high = 1.0 }"#,
                "score",
            ),
            "space parameter \"x\": low 2 > high 1",
        ),
        (params("", "", "score"), "the search space is empty"),
        (
            params("workers = 0", SPACE, "score").replace("workers = 2\n", ""),
            "workers must be at least 1",
        ),
        (params("", SPACE, ""), "objective.metric is empty"),
        (
            params("n_trail = 3", SPACE, "score"),
            "unknown field `n_trail`",
        ),
        (
            params("", SPACE, "score")
                .replace("kind = \"none\"", "kind = \"asha\"\nreduction_factor = 1"),
            "reduction_factor must be at least 2",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let out = hpo(dir.path(), text, &format!("c{i}"), true);
        assert!(!out.status.success(), "{expected}");
        assert!(
            stderr(&out).contains(expected),
            "{expected}: {}",
            stderr(&out)
        );
    }
    // A path the stage does not accept is caught by the tuned stage's own --check before any trial runs.
    let text = params("", SPACE, "score")
        .replace("kind = \"a\", steps", "kind = \"a\", bogus = 1, steps")
        .replace(
            "kind = { type = \"categorical\", choices = [\"a\", \"b\"] }",
            "bogus = { type = \"int\", low = 0, high = 3 }",
        );
    let out = hpo(dir.path(), &text, "bogus", false);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refuses the trial params") && stderr(&out).contains("bogus"),
        "{}",
        stderr(&out)
    );
    let ok = hpo(dir.path(), &params("", SPACE, "score"), "ok", true);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let resolved: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(resolved["sampler"], "gp");
}

#[test]
fn same_seed_same_study_with_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let text = params("", SPACE, "score")
        .replace("workers = 2", "workers = 1")
        .replace("sampler = \"gp\"", "sampler = \"tpe\"");
    for out in ["a", "b"] {
        let o = hpo(dir.path(), &text, out, false);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let params_of = |name: &str| -> Vec<String> {
        let a = Artifact::open(dir.path().join(name)).unwrap();
        let (_, batches) = a.read_table("trials").unwrap();
        batches[0]
            .column_by_name("params_json")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .iter()
            .map(|s| s.unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(params_of("a"), params_of("b"));
}

#[test]
fn a_killed_hpo_process_resumes_with_no_trial_lost_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let text = params("", SPACE, "score")
        .replace("workers = 2", "workers = 1")
        .replace("n_trials = 6", "n_trials = 3")
        .replace("sleep_ms = 0", "sleep_ms = 400");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, &text).unwrap();
    let mut child = Command::new(BIN)
        .args(["hpo", "--seed", "3", "--params"])
        .arg(&file)
        .arg("--output")
        .arg(dir.path().join("hpo"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.path().join(".hpo.hpo-study/journal.jsonl");
    // Kill it as soon as the second trial has started (the first is complete, the second running).
    loop {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        if text.contains(r#""event":"start","trial":1"#) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("hpo ended before it could be killed: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = hpo(dir.path(), &text, "hpo", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&dir.path().join("hpo/report.json"));
    assert_eq!(report["counts"]["complete"], 3, "{report}");
    assert_eq!(report["counts"]["interrupted"], 1, "{report}");
    let text = std::fs::read_to_string(&journal).unwrap();
    // Trial 0 ran once; trial 1 was interrupted and re-run as trial 2 with the same parameters.
    assert_eq!(text.matches(r#""event":"finish","trial":0"#).count(), 1);
    assert!(text.contains(r#""retry_of":1"#), "{text}");
    assert_eq!(text.matches(r#""event":"start""#).count(), 4);
}

/// A one-table artifact at `dir` whose content is `value` (replacing whatever was there).
fn data_artifact(dir: &Path, value: &str) {
    let _ = std::fs::remove_dir_all(dir);
    let info = mmrl_artifact::StageInfo {
        stage: "select".into(),
        crate_name: "test".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: None,
    };
    let mut w = mmrl_artifact::ArtifactWriter::create(dir, info).unwrap();
    w.write_json(
        "data.json",
        mmrl_artifact::Role::Data,
        &serde_json::json!({ "v": value }),
    )
    .unwrap();
    w.commit().unwrap();
}

#[test]
fn the_study_key_follows_input_content_and_the_trial_binary_not_paths() {
    use mmrl_hpo::stage::config_key;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("select");
    let cfg = mmrl_hpo::HpoConfig::default();
    let bin = Path::new(BIN);
    let inputs = vec![("samples".to_owned(), data.clone())];
    data_artifact(&data, "a");
    let a = config_key(&cfg, 3, &inputs, bin).unwrap();
    assert_eq!(
        a,
        config_key(&cfg, 3, &inputs, bin).unwrap(),
        "deterministic"
    );
    // The same content at another path: the same study.
    let moved = dir.path().join("moved");
    data_artifact(&moved, "a");
    let same = vec![("samples".to_owned(), moved)];
    assert_eq!(a, config_key(&cfg, 3, &same, bin).unwrap());
    // Other content at the same path: another study.
    data_artifact(&data, "b");
    assert_ne!(a, config_key(&cfg, 3, &inputs, bin).unwrap());
    // Another trial binary (same path semantics: its bytes are hashed).
    let fake = dir.path().join("fake-bin");
    for (content, expect_same) in [(b"one".as_slice(), true), (b"two".as_slice(), false)] {
        std::fs::write(&fake, b"one").unwrap();
        let k1 = config_key(&cfg, 3, &inputs, &fake).unwrap();
        std::fs::write(&fake, content).unwrap();
        let k2 = config_key(&cfg, 3, &inputs, &fake).unwrap();
        assert_eq!(k1 == k2, expect_same, "{content:?}");
    }
    // An input that is not an artifact is keyed by its path.
    let plain = |p: &str| vec![("samples".to_owned(), dir.path().join(p))];
    assert_eq!(
        config_key(&cfg, 3, &plain("x"), bin).unwrap(),
        config_key(&cfg, 3, &plain("x"), bin).unwrap()
    );
    assert_ne!(
        config_key(&cfg, 3, &plain("x"), bin).unwrap(),
        config_key(&cfg, 3, &plain("y"), bin).unwrap()
    );
}

#[test]
fn an_input_rewritten_at_the_same_path_starts_a_fresh_study() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("select");
    data_artifact(&data, "first");
    let text = params("", SPACE, "score")
        .replace("workers = 2", "workers = 1")
        .replace("n_trials = 6", "n_trials = 2")
        .replace("sampler = \"gp\"", "sampler = \"random\"");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, &text).unwrap();
    let run = || {
        let out = Command::new(BIN)
            .args(["hpo", "--seed", "3", "--params"])
            .arg(&file)
            .arg("--input")
            .arg(format!("samples={}", data.display()))
            .arg("--output")
            .arg(dir.path().join("hpo"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let study = dir.path().join(".hpo.hpo-study");
    let sentinel = study.join("sentinel");
    let key = || json(&study.join("study.json"))["config_hash"].clone();
    let starts = || {
        std::fs::read_to_string(study.join("journal.jsonl"))
            .unwrap()
            .matches(r#""event":"start""#)
            .count()
    };
    run();
    assert_eq!(starts(), 2);
    let first_key = key();
    std::fs::write(&sentinel, "kept while the study is reused").unwrap();
    // Unchanged inputs: the finished study is reused, no trial runs again.
    run();
    assert!(sentinel.is_file(), "the study was reused");
    assert_eq!(starts(), 2);
    assert_eq!(key(), first_key);
    // The input artifact is rebuilt at the same path with other content: a fresh study runs every trial.
    data_artifact(&data, "second");
    run();
    assert!(!sentinel.exists(), "the old study was discarded");
    assert_ne!(key(), first_key);
    assert_eq!(starts(), 2);
    let report = json(&dir.path().join("hpo/report.json"));
    assert_eq!(report["counts"]["complete"], 2, "{report}");
    // The artifact records the input it tuned on.
    let m = Artifact::open(dir.path().join("hpo")).unwrap();
    assert_eq!(
        m.manifest().inputs[0].content_hash,
        Artifact::open(&data).unwrap().manifest().content_hash
    );
}

#[test]
fn a_trial_timeout_that_is_not_a_duration_is_refused_naming_the_field() {
    for (value, ok) in [
        (0.0, true),
        (3600.0, true),
        (f64::INFINITY, false),
        (1e20, false),
        (f64::NAN, false),
        (-1.0, false),
    ] {
        let mut cfg = mmrl_hpo::HpoConfig::default();
        cfg.trial.run = "mmrl-hpo toy".into();
        cfg.trial.params.insert("x".into(), serde_json::json!(0.5));
        cfg.space.insert(
            "x".into(),
            toml::from_str(
                r#"type = "float"
low = 0.0
high = 1.0"#,
            )
            .unwrap(),
        );
        cfg.objective.metric = "score".into();
        cfg.trial_timeout_s = value;
        match cfg.validate() {
            Ok(()) => assert!(ok, "{value} accepted"),
            Err(e) => {
                assert!(!ok, "{value}: {e}");
                assert!(e.to_string().contains("trial_timeout_s"), "{value}: {e}");
            }
        }
    }
    // Through the binary's --check: a timeout of 1e20 s is refused before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let out = hpo(
        dir.path(),
        &params("trial_timeout_s = 1e20", SPACE, "score"),
        "t",
        true,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("trial_timeout_s"), "{}", stderr(&out));
}
