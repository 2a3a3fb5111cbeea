//! The shared recipe (pipelines/recipe.toml) end to end on dataset folders of every shape it must take with no
//! edited file: the generated data written as a folder, folders with no `qtype`, no tabular columns or only one
//! modality, the real example (examples/digits), and the Hugging Face layouts. Each run must finish, and eval must
//! score every test row select wrote. The recipe is shrunk to one-epoch training so a run takes seconds.

use std::path::{Path, PathBuf};

use mmrl_artifact::Artifact;
use mmrl_data::generate::{self, GenerateConfig};
use mmrl_tests::{current_profile, workspace_root};
use xtask::runner::{self, Options, Status};

/// The recipe with every expensive knob at its smallest; nothing in it names the data.
fn tiny_recipe(dir: &Path) -> PathBuf {
    let recipe = workspace_root().join("pipelines/recipe.toml");
    let text = format!(
        r#"
extends = "{}"
[pipeline]
name = "tiny"
seed = 3
[stages.image.params]
size = 16
[stages.image.params.augment]
n_views = 1
[stages.audio.params]
sample_rate = 8000
clip_seconds = 0.5
[stages.audio.params.denoise]
n_fft = 256
hop = 64
[stages.audio.params.mel]
n_fft = 256
hop = 128
[stages.hpo.params]
n_trials = 1
overrides = {{ epochs = 1, early_stopping_patience = 0, checkpoint_every = 0 }}
pruner = {{ kind = "median", n_startup_trials = 5, n_warmup_steps = 1 }}
[stages.sft.params]
epochs = 1
image_patch = 4
[stages.rl.params]
steps = 2
batch_size = 8
group_size = 2
eval_every = 1
checkpoint_every = 1
[stages.compress.params]
throughput_rounds = 1
[stages.compress.params.sparse.recovery]
steps = 2
[stages.compress.params.structured]
taylor_batches = 1
[stages.compress.params.structured.recovery]
steps = 2
[stages.eval.params]
bootstrap_samples = 50
"#,
        recipe.display()
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the tiny recipe on `dataset` and checks that it ran whole and that eval scored select's test split.
fn check_runs(name: &str, dataset: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        config: tiny_recipe(tmp.path()),
        from: None,
        to: None,
        force: false,
        dry_run: false,
        dataset: Some(dataset.to_path_buf()),
        artifacts: Some(tmp.path().join("artifacts")),
        profile: current_profile(),
        workspace: workspace_root(),
    };
    let outcome = runner::run(&opts).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(
        outcome.error.is_none() && outcome.stages.iter().all(|s| s.status == Status::Ran),
        "{name}: {:?}\n{}",
        outcome.error,
        runner::table(&outcome)
    );
    let root = tmp.path().join("artifacts");
    let select_test = test_rows(&root.join("select"));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("eval/metrics.json")).unwrap()).unwrap();
    assert!(select_test > 0, "{name}: select wrote no test rows");
    assert_eq!(
        metrics["test"]["samples"].as_u64(),
        Some(select_test),
        "{name}: eval must score every test row select wrote"
    );
}

/// Rows of the test split in an artifact's `samples` table.
fn test_rows(dir: &Path) -> u64 {
    let (_, batches) = Artifact::open(dir).unwrap().read_table("samples").unwrap();
    batches
        .iter()
        .map(|b| {
            let split = b
                .column_by_name("split")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            split.iter().filter(|s| *s == Some("test")).count() as u64
        })
        .sum()
}

/// A generated dataset folder of `samples` rows, keeping only the columns `keep` allows.
fn generated(dir: &Path, samples: usize, keep: impl Fn(&str) -> bool) -> PathBuf {
    let out = dir.join("gen");
    let config = GenerateConfig {
        samples,
        ..GenerateConfig::default()
    };
    generate::run(&config, 11, &out).unwrap();
    let folder = out.join("dataset");
    let manifest = folder.join("manifest.csv");
    let mut reader = csv::Reader::from_path(&manifest).unwrap();
    let header = reader.headers().unwrap().clone();
    let columns: Vec<usize> = (0..header.len()).filter(|&i| keep(&header[i])).collect();
    let mut rows = vec![
        columns
            .iter()
            .map(|&i| header[i].to_owned())
            .collect::<Vec<_>>(),
    ];
    for record in reader.records() {
        let record = record.unwrap();
        rows.push(columns.iter().map(|&i| record[i].to_owned()).collect());
    }
    let mut writer = csv::Writer::from_path(&manifest).unwrap();
    for row in rows {
        writer.write_record(row).unwrap();
    }
    writer.flush().unwrap();
    folder
}

const FIXED: [&str; 8] = [
    "id", "image", "audio", "question", "answer", "split", "task", "qtype",
];

#[test]
fn the_recipe_runs_on_the_generated_data_as_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    check_runs("generated", &generated(tmp.path(), 160, |_| true));
}

#[test]
fn the_recipe_runs_without_qtype_and_without_tabular_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = generated(tmp.path(), 160, |c| FIXED.contains(&c) && c != "qtype");
    check_runs("no qtype, no tabular", &folder);
}

#[test]
fn the_recipe_runs_on_one_modality() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = generated(tmp.path(), 160, |c| c != "audio");
    check_runs("image only", &folder);
}

#[test]
fn the_recipe_runs_on_the_real_example() {
    check_runs("digits", &workspace_root().join("examples/digits"));
}

#[test]
fn init_writes_a_pipeline_that_every_stage_accepts_and_names_only_what_the_data_has() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = generated(tmp.path(), 120, |c| c != "qtype");
    let output = tmp.path().join("pipelines/mine.toml");
    let recipe = workspace_root().join("pipelines/recipe.toml");
    let profile = mmrl_data::profile::init(&folder, &output, "mine", &recipe, false).unwrap();
    assert_eq!(
        profile.rows,
        120 - profile.ingest["rejected"].as_u64().unwrap() as usize
    );
    let text = std::fs::read_to_string(&output).unwrap();
    for fragment in [
        "extends = ",
        "dataset = ",
        "[stages.image.params]",
        "size = 32",
        "sample_rate = 8000",
    ] {
        assert!(text.contains(fragment), "{fragment:?} missing from\n{text}");
    }
    // No question type, task or column of any dataset is named outside the comments.
    let settings: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for name in ["shapes", "temperature", "battery", "count_shapes"] {
        assert!(!settings.contains(name), "{name} in the settings:\n{text}");
    }
    // A second init does not overwrite the user's edits unless asked.
    let err = mmrl_data::profile::init(&folder, &output, "mine", &recipe, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    // Every stage validates the file as written (the runner's dry run asks each stage binary to --check it).
    let opts = Options {
        config: output,
        from: None,
        to: None,
        force: false,
        dry_run: true,
        dataset: None,
        artifacts: Some(tmp.path().join("artifacts")),
        profile: current_profile(),
        workspace: workspace_root(),
    };
    let outcome = runner::run(&opts).unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(
        outcome
            .stages
            .iter()
            .all(|s| matches!(s.status, Status::WouldRun(_))),
        "{}",
        runner::table(&outcome)
    );
}

#[test]
fn the_recipe_runs_on_a_hugging_face_image_and_audio_folder() {
    check_runs(
        "hf folder",
        &workspace_root().join("tests/fixtures/digits_folder"),
    );
}

#[test]
fn the_recipe_runs_on_datasets_parquet() {
    check_runs(
        "datasets parquet",
        &workspace_root().join("tests/fixtures/digits_parquet"),
    );
}
