//! The runner end to end on the real stage binaries: caching, invalidation, --force, --dataset, failures,
//! determinism and config validation before any stage runs.

use std::path::{Path, PathBuf};

use mmrl_artifact::Artifact;
use mmrl_tests::{current_profile, workspace_root};
use xtask::runner::{self, Options, Outcome, Status};

const PIPELINE: &str = r#"
[pipeline]
name = "e2e"
seed = 5
dataset_stage = "generate"

[stages.generate]
run = "mmrl-data generate"
[stages.generate.params]
samples = 80

[stages.ingest]
run = "mmrl-data ingest"
inputs = { dataset = "generate/dataset" }
[stages.ingest.params]
max_reject_fraction = 0.2

[stages.select]
run = "mmrl-data select"
inputs = { samples = "ingest" }
[stages.select.params.split]
train = 0.6
val = 0.2
test = 0.2
"#;

fn options(dir: &Path, pipeline: &str, artifacts: &str) -> Options {
    let config = dir.join("pipeline.toml");
    std::fs::write(&config, pipeline).unwrap();
    Options {
        config,
        from: None,
        to: None,
        force: false,
        dry_run: false,
        dataset: None,
        artifacts: Some(dir.join(artifacts)),
        profile: current_profile(),
        workspace: workspace_root(),
    }
}

fn statuses(outcome: &Outcome) -> Vec<(String, Status)> {
    outcome
        .stages
        .iter()
        .map(|r| (r.stage.clone(), r.status.clone()))
        .collect()
}

fn expect(outcome: &Outcome, expected: &[(&str, Status)]) {
    let expected: Vec<(String, Status)> = expected
        .iter()
        .map(|(s, st)| ((*s).to_owned(), st.clone()))
        .collect();
    assert_eq!(statuses(outcome), expected, "{}", runner::table(outcome));
}

fn content_hash(dir: PathBuf) -> String {
    Artifact::open(dir).unwrap().manifest().content_hash.clone()
}

#[test]
fn runner_caches_invalidates_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(tmp.path(), PIPELINE, "a");
    let root = tmp.path().join("a");

    let first = runner::run(&opts).unwrap();
    expect(
        &first,
        &[
            ("generate", Status::Ran),
            ("ingest", Status::Ran),
            ("select", Status::Ran),
        ],
    );
    assert!(first.error.is_none());
    let ingest = Artifact::open(root.join("ingest")).unwrap();
    ingest.verify_hashes().unwrap();
    assert_eq!(first.stages[1].rows_in, Some(80));
    assert_eq!(
        first.stages[1].rows_out,
        Some(ingest.manifest().data_rows())
    );
    assert!(runner::table(&first).contains("ingest"));

    // Unchanged: everything skipped.
    let all_skipped = [
        ("generate", Status::Skipped),
        ("ingest", Status::Skipped),
        ("select", Status::Skipped),
    ];
    expect(&runner::run(&opts).unwrap(), &all_skipped);

    // A param change re-runs that stage; its output is unchanged here, so what reads it is still skipped.
    std::fs::write(
        &opts.config,
        PIPELINE.replace("max_reject_fraction = 0.2", "max_reject_fraction = 0.25"),
    )
    .unwrap();
    let mut dry = opts.clone();
    dry.dry_run = true;
    let plan = runner::run(&dry).unwrap();
    assert_eq!(plan.stages[0].status, Status::Skipped);
    assert!(matches!(&plan.stages[1].status, Status::WouldRun(why) if why.contains("params")));
    expect(
        &runner::run(&opts).unwrap(),
        &[
            ("generate", Status::Skipped),
            ("ingest", Status::Ran),
            ("select", Status::Skipped),
        ],
    );

    // An upstream change re-runs it and everything that depends on it.
    std::fs::write(
        &opts.config,
        PIPELINE.replace("samples = 80", "samples = 90"),
    )
    .unwrap();
    let plan = runner::run(&dry).unwrap();
    assert!(
        matches!(&plan.stages[1].status, Status::WouldRun(why) if why.contains("upstream generate"))
    );
    expect(
        &runner::run(&opts).unwrap(),
        &[
            ("generate", Status::Ran),
            ("ingest", Status::Ran),
            ("select", Status::Ran),
        ],
    );

    // --force re-runs all; --from/--to slice the DAG.
    opts.force = true;
    expect(
        &runner::run(&opts).unwrap(),
        &[
            ("generate", Status::Ran),
            ("ingest", Status::Ran),
            ("select", Status::Ran),
        ],
    );
    opts.from = Some("ingest".into());
    expect(
        &runner::run(&opts).unwrap(),
        &[
            ("generate", Status::NotRun),
            ("ingest", Status::Ran),
            ("select", Status::Ran),
        ],
    );
    opts.from = None;
    opts.to = Some("generate".into());
    expect(
        &runner::run(&opts).unwrap(),
        &[
            ("generate", Status::Ran),
            ("ingest", Status::NotRun),
            ("select", Status::NotRun),
        ],
    );
    opts.to = None;
    opts.force = false;

    // A stage that fails stops the run and leaves the earlier artifacts intact.
    let before = content_hash(root.join("ingest"));
    std::fs::write(
        &opts.config,
        PIPELINE.replace("samples = 80", "samples = 90").replace(
            "max_reject_fraction = 0.2",
            "max_reject_fraction = 0.2\ncolumn_types = { no_such_column = \"numeric\" }",
        ),
    )
    .unwrap();
    let failed = runner::run(&opts).unwrap();
    expect(
        &failed,
        &[
            ("generate", Status::Skipped),
            ("ingest", Status::Failed),
            ("select", Status::NotRun),
        ],
    );
    assert!(failed.error.as_deref().unwrap().contains("ingest"));
    assert_eq!(content_hash(root.join("ingest")), before);

    // A user's folder replaces the generate stage.
    let mut user = options(tmp.path(), PIPELINE, "user");
    user.dataset = Some(root.join("generate/dataset"));
    let own = runner::run(&user).unwrap();
    expect(&own, &[("ingest", Status::Ran), ("select", Status::Ran)]);
    assert_eq!(content_hash(tmp.path().join("user/ingest")), before);
}

#[test]
fn same_seed_gives_identical_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    runner::run(&options(tmp.path(), PIPELINE, "one")).unwrap();
    runner::run(&options(tmp.path(), PIPELINE, "two")).unwrap();
    runner::run(&options(
        tmp.path(),
        &PIPELINE.replace("seed = 5", "seed = 6"),
        "three",
    ))
    .unwrap();
    for stage in ["generate", "ingest", "select"] {
        let one = content_hash(tmp.path().join("one").join(stage));
        assert_eq!(
            one,
            content_hash(tmp.path().join("two").join(stage)),
            "{stage} differs between runs"
        );
        assert_ne!(
            one,
            content_hash(tmp.path().join("three").join(stage)),
            "{stage} ignores the seed"
        );
    }
}

#[test]
fn bad_params_fail_before_any_stage_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = PIPELINE.replace("max_reject_fraction = 0.2", "max_reject_fracton = 0.2");
    let err = format!(
        "{:#}",
        runner::run(&options(tmp.path(), &typo, "a")).unwrap_err()
    );
    assert!(
        err.contains("stages.ingest.params") && err.contains("max_reject_fracton"),
        "{err}"
    );
    assert!(
        !tmp.path().join("a/generate").exists(),
        "generate ran before the typo was reported"
    );

    let out_of_range = PIPELINE.replace("samples = 80", "samples = 0");
    let err = format!(
        "{:#}",
        runner::run(&options(tmp.path(), &out_of_range, "b")).unwrap_err()
    );
    assert!(
        err.contains("stages.generate.params") && err.contains("samples"),
        "{err}"
    );

    let unknown_stage = PIPELINE.replace("generate/dataset", "genrate/dataset");
    let err = format!(
        "{:#}",
        runner::run(&options(tmp.path(), &unknown_stage, "c")).unwrap_err()
    );
    assert!(err.contains("unknown stage \"genrate\""), "{err}");
}
