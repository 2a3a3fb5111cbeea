//! Crash safety of the real stage binaries and the runner: outputs that are not ours are never replaced, inputs
//! are verified before they are read, stale partial directories are cleaned up, concurrent writers are refused,
//! and a write that fails (disk full, file too large, permission denied) leaves the previous artifact intact.
//!
//! Each test drives the binaries the runner builds (`cargo build --workspace --bins`), the way a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a setup that fails should stop the test

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use mmrl_artifact::{Artifact, ArtifactWriter, StageInfo};
use mmrl_tests::{current_profile, workspace_root};
use xtask::runner::{self, Options, Status};

/// The directory holding the workspace's binaries, built once per test process.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--workspace", "--bins", "--profile"])
            .arg(current_profile())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of the stage binaries failed");
        // target/<profile>/deps/<this test> -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        exe.parent().and_then(Path::parent).unwrap().to_path_buf()
    })
}

fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The stage arguments as strings, so a test reads like the command line it runs.
fn args(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// Runs `bin stage args...` and returns its output.
fn run(bin_name: &str, stage: &str, rest: &[OsString]) -> Output {
    Command::new(bin(bin_name))
        .arg(stage)
        .args(rest)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn params(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The generate, ingest and select artifacts of a small dataset under `dir`.
struct Fixture {
    generate: PathBuf,
    ingest: PathBuf,
    select: PathBuf,
    select_params: PathBuf,
}

fn fixture(dir: &Path) -> Fixture {
    let generate = dir.join("generate");
    let out = run(
        "mmrl-data",
        "generate",
        &args(&[
            &"--params",
            &params(dir, "generate", "samples = 40\n"),
            &"--seed",
            &"1",
            &"--output",
            &generate,
        ]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ingest = dir.join("ingest");
    let out = run(
        "mmrl-data",
        "ingest",
        &args(&[
            &"--params",
            &params(dir, "ingest", "max_reject_fraction = 0.3\n"),
            &"--input",
            &format!("dataset={}", generate.join("dataset").display()),
            &"--output",
            &ingest,
        ]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let select_params = params(
        dir,
        "select",
        "[split]\ntrain = 0.6\nval = 0.2\ntest = 0.2\n",
    );
    let select = dir.join("select");
    let out = select_into(&ingest, &select, &select_params, 1, None);
    assert!(out.status.success(), "{}", stderr(&out));
    Fixture {
        generate,
        ingest,
        select,
        select_params,
    }
}

/// Runs select from `input` into `output`, optionally through a wrapper command (`sh -c ...`, `setpriv ...`).
fn select_into(
    input: &Path,
    output: &Path,
    params: &Path,
    seed: u64,
    wrapper: Option<&[&str]>,
) -> Output {
    let mut command = match wrapper {
        Some([first, rest @ ..]) => {
            let mut c = Command::new(first);
            c.args(rest);
            c.arg(bin("mmrl-data"));
            c
        }
        _ => Command::new(bin("mmrl-data")),
    };
    command
        .arg("select")
        .arg("--params")
        .arg(params)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--input")
        .arg(format!("samples={}", input.display()))
        .arg("--output")
        .arg(output)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

/// Every file under `dir` (relative path to content): what "intact" is compared on.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn no_partials(dir: &Path) {
    let left: Vec<String> = entries(dir)
        .into_iter()
        .filter(|n| n.contains(".partial-") || n.contains(".old-"))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

/// A copy of the fixture's dataset folder as a user would have it: a plain folder, not an artifact.
fn user_dataset(fx: &Fixture, at: &Path) -> PathBuf {
    copy_dir(&fx.generate.join("dataset"), at);
    at.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// Flips one byte in the middle of `file`, keeping its size.
fn flip_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

fn ingest_into(dataset: &Path, output: &Path, dir: &Path) -> Output {
    run(
        "mmrl-data",
        "ingest",
        &args(&[
            &"--params",
            &params(dir, "ingest", "max_reject_fraction = 0.3\n"),
            &"--input",
            &format!("dataset={}", dataset.display()),
            &"--output",
            &output,
        ]),
    )
}

/// A refused run: non-zero exit, a message naming `path` and containing `why`, and `intact` unchanged.
fn check_refused(
    out: &Output,
    path: &Path,
    why: &str,
    intact: &Path,
    before: &BTreeMap<String, Vec<u8>>,
) {
    let err = stderr(out);
    assert!(!out.status.success(), "the stage accepted it: {err}");
    assert!(
        err.contains(&path.display().to_string()),
        "{err} does not name {}",
        path.display()
    );
    assert!(err.contains(why), "{err} does not say {why:?}");
    assert_eq!(
        &snapshot(intact),
        before,
        "{} was changed",
        intact.display()
    );
}

#[test]
fn ingest_refuses_its_own_dataset_folder_as_output() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let data = user_dataset(&fx, &tmp.path().join("mydata"));
    let before = snapshot(&data);
    let out = ingest_into(&data, &data, tmp.path());
    check_refused(&out, &data, "--input dataset", &data, &before);
}

#[test]
fn ingest_refuses_an_output_that_contains_its_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let parent = tmp.path().join("projects");
    let data = user_dataset(&fx, &parent.join("mydata"));
    let before = snapshot(&parent);
    let out = ingest_into(&data, &parent, tmp.path());
    check_refused(&out, &parent, "--input dataset", &parent, &before);
}

#[test]
fn a_stage_refuses_to_replace_a_folder_that_is_not_an_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let folder = tmp.path().join("notes");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("todo.txt"), "keep me").unwrap();
    std::fs::write(folder.join("sub/more.txt"), "and me").unwrap();
    let before = snapshot(&folder);
    let out = select_into(&fx.ingest, &folder, &fx.select_params, 1, None);
    check_refused(&out, &folder, "not an artifact", &folder, &before);
}

#[test]
fn select_refuses_its_own_input_artifact_as_output() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let before = snapshot(&fx.ingest);
    let out = select_into(&fx.ingest, &fx.ingest, &fx.select_params, 1, None);
    check_refused(&out, &fx.ingest, "--input samples", &fx.ingest, &before);
}

#[test]
fn relative_paths_are_checked_like_absolute_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let select = |input: &str, output: &str| {
        Command::new(bin("mmrl-data"))
            .current_dir(tmp.path())
            .args(["select", "--params", "select.toml", "--input"])
            .arg(format!("samples={input}"))
            .args(["--output", output])
            .output()
            .unwrap()
    };
    let out = select("ingest", "again");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join(".again.lock").is_file());
    Artifact::open(tmp.path().join("again")).unwrap();
    let before = snapshot(&fx.ingest);
    let out = select("./ingest", "ingest");
    check_refused(
        &out,
        Path::new("ingest"),
        "--input samples",
        &fx.ingest,
        &before,
    );
}

#[test]
fn a_stage_refuses_to_replace_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let file = tmp.path().join("results.csv");
    std::fs::write(&file, "a,b\n1,2\n").unwrap();
    let out = select_into(&fx.ingest, &file, &fx.select_params, 1, None);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("a file"),
        "{err}"
    );
    // The user's file is where it was, unchanged, and nothing else appeared beside it.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a,b\n1,2\n");
    no_partials(tmp.path());
}

/// Runs `bin stage` on a copy of `input` with one flipped byte in `table` and checks that it refuses it,
/// naming the damaged file.
fn check_flipped_input(bin_name: &str, stage: &str, input: &Path, table: &str, dir: &Path) {
    let damaged = dir.join(format!("damaged-for-{stage}"));
    copy_dir(input, &damaged);
    flip_byte(&damaged.join(table));
    let output = dir.join(format!("{stage}-out"));
    let out = run(
        bin_name,
        stage,
        &args(&[
            &"--input",
            &format!("samples={}", damaged.display()),
            &"--output",
            &output,
        ]),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{stage} read a damaged input: {err}");
    assert!(
        err.contains(&damaged.join(table).display().to_string()) && err.contains("blake3"),
        "{stage}: {err}"
    );
    assert!(
        !output.exists(),
        "{stage} wrote an output from a damaged input"
    );
}

#[test]
fn a_flipped_byte_in_an_input_table_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    check_flipped_input(
        "mmrl-audio",
        "audio",
        &fx.select,
        "samples.parquet",
        tmp.path(),
    );
    check_flipped_input(
        "mmrl-image",
        "image",
        &fx.select,
        "samples.parquet",
        tmp.path(),
    );
    check_flipped_input(
        "mmrl-tabular",
        "tabular",
        &fx.select,
        "samples.parquet",
        tmp.path(),
    );
    check_flipped_input(
        "mmrl-data",
        "select",
        &fx.ingest,
        "samples.parquet",
        tmp.path(),
    );
}

#[test]
fn every_stage_binary_checks_its_output_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("mine");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("keep.txt"), "mine").unwrap();
    let before = snapshot(&folder);
    let f = folder.display().to_string();
    // hpo's params are invalid without the stage it tunes (the runner fills it in from `tune`).
    let params_dir = tempfile::tempdir().unwrap();
    let hpo_params = params(
        params_dir.path(),
        "hpo",
        "objective = { metric = \"val_exact_match\", direction = \"maximize\" }\n\
         [trial]\nrun = \"mmrl-model sft\"\nparams = { lr = 0.001 }\n\
         [space]\nlr = { type = \"float\", low = 1e-4, high = 1e-2 }\n",
    );
    // Each stage of the default pipeline, with the inputs it requires all pointing at the output.
    let stages: &[(&str, &str, &[&str])] = &[
        ("mmrl-data", "generate", &[]),
        ("mmrl-data", "ingest", &["dataset"]),
        ("mmrl-data", "select", &["samples"]),
        ("mmrl-tabular", "tabular", &["samples"]),
        ("mmrl-image", "image", &["samples"]),
        ("mmrl-audio", "audio", &["samples"]),
        ("mmrl-model", "sft", &["samples"]),
        ("mmrl-model", "predict", &["model", "samples"]),
        ("mmrl-rl", "rl", &["model", "samples"]),
        ("mmrl-compress", "compress", &["model", "samples"]),
        ("mmrl-eval", "eval", &["model", "samples"]),
        ("mmrl-hpo", "hpo", &["samples"]),
    ];
    for (bin_name, stage, inputs) in stages {
        let mut rest: Vec<OsString> = Vec::new();
        if *stage == "hpo" {
            rest.extend(args(&[&"--params", &hpo_params]));
        }
        for input in *inputs {
            rest.extend(args(&[&"--input", &format!("{input}={f}")]));
        }
        rest.extend(args(&[&"--output", &folder]));
        let out = run(bin_name, stage, &rest);
        let why = if inputs.is_empty() {
            "not an artifact"
        } else {
            "--input"
        };
        check_refused(&out, &folder, why, &folder, &before);
    }
    assert_eq!(
        entries(tmp.path()),
        ["mine"],
        "a refused stage left files beside its output"
    );
}

const PIPELINE: &str = r#"
[pipeline]
name = "safety"
seed = 5
dataset_stage = "generate"

[stages.generate]
run = "mmrl-data generate"
[stages.generate.params]
samples = 60

[stages.ingest]
run = "mmrl-data ingest"
inputs = { dataset = "generate/dataset" }
[stages.ingest.params]
max_reject_fraction = 0.3

[stages.select]
run = "mmrl-data select"
inputs = { samples = "ingest" }
[stages.select.params.split]
train = 0.6
val = 0.2
test = 0.2
"#;

fn options(dir: &Path, artifacts: &Path) -> Options {
    let config = dir.join("pipeline.toml");
    std::fs::write(&config, PIPELINE).unwrap();
    Options {
        config,
        from: None,
        to: None,
        force: false,
        dry_run: false,
        dataset: None,
        artifacts: Some(artifacts.to_path_buf()),
        profile: current_profile(),
        workspace: workspace_root(),
    }
}

fn statuses(outcome: &runner::Outcome) -> Vec<(String, Status)> {
    outcome
        .stages
        .iter()
        .map(|r| (r.stage.clone(), r.status.clone()))
        .collect()
}

fn expect(outcome: &runner::Outcome, expected: &[(&str, Status)]) {
    let expected: Vec<(String, Status)> = expected
        .iter()
        .map(|(s, st)| ((*s).to_owned(), st.clone()))
        .collect();
    assert_eq!(statuses(outcome), expected, "{}", runner::table(outcome));
}

#[test]
fn runner_refuses_a_dataset_that_overlaps_a_stage_output() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    // (dataset folder, artifacts folder, the stage output it overlaps)
    let check = |dataset: &Path, artifacts: &Path, output: &Path| {
        user_dataset(&fx, dataset);
        let before = snapshot(dataset);
        let mut opts = options(tmp.path(), artifacts);
        opts.dataset = Some(dataset.to_path_buf());
        let err = match runner::run(&opts) {
            Ok(outcome) => panic!("ran: {}", runner::table(&outcome)),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&dataset.display().to_string())
                && err.contains(&output.display().to_string()),
            "{err}"
        );
        assert_eq!(
            snapshot(dataset),
            before,
            "{} was changed",
            dataset.display()
        );
        assert!(!output.join("manifest.json").exists(), "a stage ran");
    };
    let a = tmp.path().join("a");
    // The dataset at a stage's output, inside one, and around the whole artifacts folder.
    check(&a.join("ingest"), &a, &a.join("ingest"));
    let b = tmp.path().join("b");
    check(&b.join("select/data"), &b, &b.join("select"));
    let c = tmp.path().join("c");
    check(&c, &c.join("artifacts"), &c.join("artifacts/ingest"));
}

#[test]
fn runner_reruns_a_stage_whose_files_changed_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("art");
    let opts = options(tmp.path(), &root);
    let all = |status: Status| ["generate", "ingest", "select"].map(|s| (s, status.clone()));
    expect(&runner::run(&opts).unwrap(), &all(Status::Ran));
    let select_hash = Artifact::open(root.join("select"))
        .unwrap()
        .manifest()
        .content_hash
        .clone();

    // One flipped byte in ingest's table: ingest runs again and restores it; select reads the same content.
    flip_byte(&root.join("ingest/samples.parquet"));
    expect(
        &runner::run(&opts).unwrap(),
        &[
            ("generate", Status::Skipped),
            ("ingest", Status::Ran),
            ("select", Status::Skipped),
        ],
    );
    Artifact::open(root.join("ingest")).unwrap();

    // A file only touched (new mtime, same bytes) is re-hashed, found unchanged, and skipped.
    let table = root.join("select/samples.parquet");
    let later =
        std::fs::metadata(&table).unwrap().modified().unwrap() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&table)
        .unwrap()
        .set_modified(later)
        .unwrap();
    expect(&runner::run(&opts).unwrap(), &all(Status::Skipped));

    // An edit inside a folder output (an image of the generated dataset) re-runs the stage that wrote it.
    let images = root.join("generate/dataset/images");
    let image = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    flip_byte(&image);
    let rerun = runner::run(&opts).unwrap();
    assert_eq!(
        rerun.stages[0].status,
        Status::Ran,
        "{}",
        runner::table(&rerun)
    );
    assert_eq!(
        Artifact::open(root.join("select"))
            .unwrap()
            .manifest()
            .content_hash,
        select_hash
    );
}

#[test]
fn stale_partial_directories_of_dead_writers_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    // A writer that is gone (a process that has exited) and one that is alive (this test).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let stale = tmp.path().join(format!(".select.partial-{dead}-{nanos}"));
    let live = tmp
        .path()
        .join(format!(".select.partial-{}-{nanos}", std::process::id()));
    for dir in [&stale, &live] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("samples.parquet"), vec![0u8; 4096]).unwrap();
    }
    let out = select_into(&fx.ingest, &fx.select, &fx.select_params, 2, None);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        !stale.exists(),
        "the stale partial directory is still there"
    );
    assert!(
        live.exists(),
        "a live writer's partial directory was removed"
    );
    assert!(
        err.contains("stale") && err.contains(&stale.display().to_string()),
        "no log line names the removed directory: {err}"
    );
}

#[test]
fn a_second_writer_into_one_output_fails_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let before = snapshot(&fx.select);
    let info = StageInfo {
        stage: "holder".into(),
        crate_name: "mmrl-tests".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: None,
    };
    // This test process writes the output; the stage binary, started meanwhile, must stop at once.
    let holder = ArtifactWriter::create(&fx.select, info).unwrap();
    let started = std::time::Instant::now();
    let out = select_into(&fx.ingest, &fx.select, &fx.select_params, 2, None);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id()))
            && err.contains(&fx.select.display().to_string()),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 30, "the second writer waited");
    drop(holder);
    assert_eq!(snapshot(&fx.select), before);
    // Once the holder is gone, the stage runs.
    let out = select_into(&fx.ingest, &fx.select, &fx.select_params, 2, None);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_second_pipeline_on_one_artifacts_folder_stops_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("art");
    let opts = options(tmp.path(), &root);
    // This test process holds the artifacts folder as a running pipeline would; a second `cargo xtask
    // pipeline` (the real binary) must stop before it writes anything.
    let held = runner::lock_artifacts(&root).unwrap();
    let out = Command::new(bin("xtask"))
        .args(["pipeline", "--config"])
        .arg(&opts.config)
        .arg("--artifacts")
        .arg(&root)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id()))
            && err.contains(&root.display().to_string()),
        "{err}"
    );
    assert!(
        !root.join("generate").exists(),
        "the second run wrote an artifact"
    );
    // In-process too: the runner refuses while the lock is held and runs once it is released.
    let err = format!("{:#}", runner::run(&opts).unwrap_err());
    assert!(err.contains("another pipeline run"), "{err}");
    drop(held);
    let outcome = runner::run(&opts).unwrap();
    assert!(outcome.error.is_none(), "{}", runner::table(&outcome));
}

/// Checks a select run over an existing artifact that failed while writing: non-zero exit, `os_error` and a
/// path in `dir` reported, the previous artifact unchanged and no partial directory left.
fn check_failed_write(
    out: &Output,
    dir: &Path,
    artifact: &Path,
    before: &BTreeMap<String, Vec<u8>>,
    os_error: &str,
) {
    let err = stderr(out);
    assert!(!out.status.success(), "the write did not fail: {err}");
    assert!(err.contains(os_error), "{err} does not report {os_error:?}");
    assert!(
        err.contains(&dir.display().to_string()),
        "{err} names no path in {}",
        dir.display()
    );
    assert_eq!(
        &snapshot(artifact),
        before,
        "the previous artifact was changed"
    );
    Artifact::open(artifact).unwrap();
    no_partials(dir);
}

#[test]
fn a_stage_that_hits_the_file_size_limit_keeps_the_previous_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let before = snapshot(&fx.select);
    // RLIMIT_FSIZE of 32 KiB: the table write fails with EFBIG (SIGXFSZ ignored, so write returns the error).
    let wrapper = ["sh", "-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\""];
    let out = select_into(&fx.ingest, &fx.select, &fx.select_params, 2, Some(&wrapper));
    check_failed_write(&out, tmp.path(), &fx.select, &before, "File too large");
}

#[test]
fn a_stage_that_hits_a_full_disk_keeps_the_previous_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let before = snapshot(&fx.select);
    let bytes: usize = before.values().map(Vec::len).sum();
    // A tmpfs in a private mount namespace with room for the old artifact and half of a new one.
    let disk = tmp.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let size_kib = (bytes + bytes / 2) / 1024 + 64;
    let script = r#"
        mount -t tmpfs -o size="$1"k tmpfs "$2" || { echo "cannot mount a tmpfs" >&2; exit 90; }
        cp -a "$3" "$2/select"
        "$4" select --params "$5" --seed 2 --input samples="$6" --output "$2/select" 2>"$7"
        echo "rc=$?"
        ls -A "$2" | LC_ALL=C sort
        diff -r "$3" "$2/select" >/dev/null && echo intact
    "#;
    let log = tmp.path().join("stage.log");
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(size_kib.to_string())
        .arg(&disk)
        .arg(&fx.select)
        .arg(bin("mmrl-data"))
        .arg(&fx.select_params)
        .arg(&fx.ingest)
        .arg(&log)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}{}", stderr(&out));
    let err = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert!(
        lines.first().is_some_and(|l| *l != "rc=0"),
        "the write did not fail: {report}{err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&disk.display().to_string()), "{err}");
    // What is on the full disk: the previous artifact (unchanged), its lock file, no partial directory.
    assert_eq!(
        &lines[1..],
        [".select.lock", "select", "intact"],
        "{report}{err}"
    );
}

/// Whether this process runs as root, where permission bits do not stop writes.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_stage_in_a_read_only_folder_keeps_the_previous_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture(tmp.path());
    let before = snapshot(&fx.select);
    let dir = tmp.path();
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    set_mode(0o555);
    // Root ignores permission bits; without CAP_DAC_OVERRIDE (dropped from the bounding set) it does not.
    let wrapper = [
        "setpriv",
        "--bounding-set",
        "-dac_override,-dac_read_search",
    ];
    let out = select_into(
        &fx.ingest,
        &fx.select,
        &fx.select_params,
        2,
        is_root().then_some(&wrapper[..]),
    );
    set_mode(0o755);
    check_failed_write(&out, dir, &fx.select, &before, "Permission denied");
}
