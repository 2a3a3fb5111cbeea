//! Running a pipeline: build the stage binaries, validate every stage's params, then run the stages in DAG
//! order, skipping those whose inputs, params and code are unchanged (DVC-style, by content hash).
//!
//! One run at a time holds an artifacts folder (a lock file with its pid), and a skip is trusted only after the
//! artifact's files are checked against the lock: size and mtime first, blake3 where those differ (as xvc does).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::pipeline::{Pipeline, Source, StageSpec};

/// What `cargo xtask pipeline` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipeline file.
    pub config: PathBuf,
    /// Run this stage and everything downstream of it.
    pub from: Option<String>,
    /// Run this stage and everything upstream of it.
    pub to: Option<String>,
    /// Re-run every selected stage even when its lock matches.
    pub force: bool,
    /// Print the plan without running anything.
    pub dry_run: bool,
    /// A user's dataset folder that replaces the pipeline's `dataset_stage`.
    pub dataset: Option<PathBuf>,
    /// Where artifacts go; default `artifacts/<pipeline name>` under the workspace root.
    pub artifacts: Option<PathBuf>,
    /// Cargo profile the stage binaries are built with (`dev` shares the test build).
    pub profile: String,
    /// The workspace root (where `cargo` is run).
    pub workspace: PathBuf,
}

/// What happened to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It ran and committed an artifact.
    Ran,
    /// Its lock matched: inputs, params and code unchanged.
    Skipped,
    /// Dry run: it would run, for this reason.
    WouldRun(String),
    /// It failed; the run stopped here.
    Failed,
    /// Not part of the selected slice (`--from`/`--to`), or after a failure.
    NotRun,
}

/// One row of the closing table.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// What happened.
    pub status: Status,
    /// Wall time of the stage process.
    pub wall: Duration,
    /// Rows read (sum over inputs that report rows).
    pub rows_in: Option<u64>,
    /// Data rows written.
    pub rows_out: Option<u64>,
    /// The artifact directory.
    pub output: PathBuf,
}

/// The result of a pipeline run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One report per stage, in run order.
    pub stages: Vec<StageReport>,
    /// The artifact root.
    pub root: PathBuf,
    /// The error that stopped the run, if any.
    pub error: Option<String>,
}

/// `artifacts/<name>/pipeline.lock.json`: for each stage, the key it last ran with and what it produced.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Lock {
    stages: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockEntry {
    key: String,
    content_hash: String,
    /// Size and mtime of every file of the artifact when it was written or last verified, by relative path.
    #[serde(default)]
    files: BTreeMap<String, FileMeta>,
}

/// The cheap identity of a file: when it still matches, the file is trusted without being read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileMeta {
    bytes: u64,
    mtime_ns: u64,
}

const LOCK_FILE: &str = "pipeline.lock.json";

/// Runs (or, with `dry_run`, plans) a pipeline.
pub fn run(opts: &Options) -> Result<Outcome> {
    let mut pipeline = Pipeline::load(&opts.config)?;
    let overrides = dataset_override(&mut pipeline, opts)?;
    let root = artifact_root(&pipeline, opts);
    let order = pipeline.order()?;
    let selected = select(&pipeline, opts)?;
    check_inputs_apart(&pipeline, &overrides, &root)?;
    let _lock = lock_artifacts(&root)?;

    let bin_dir = build(opts, &pipeline)?;
    let runner_dir = root.join(".runner");
    std::fs::create_dir_all(&runner_dir)
        .with_context(|| format!("creating {}", runner_dir.display()))?;
    let resolved = check_params(opts, &pipeline, &order, &bin_dir, &runner_dir)?;

    let mut run = Run {
        opts,
        pipeline: &pipeline,
        overrides: &overrides,
        root: &root,
        bin_dir: &bin_dir,
        resolved,
        total: order.len(),
        progress: Progress::new(order.len() as u64),
        lock: read_lock(&root),
        content: BTreeMap::new(),
        changed_upstream: BTreeSet::new(),
        error: None,
    };
    let mut reports = Vec::new();
    for (i, stage) in order.iter().enumerate() {
        reports.push(run.stage(i, stage, selected.contains(stage))?);
    }
    run.progress.bar.finish_and_clear();
    let error = run.error;
    Ok(Outcome {
        stages: reports,
        root,
        error,
    })
}

/// The artifact root: `--artifacts`, or `artifacts/<pipeline name>` (with `-<dataset folder>` under
/// `--dataset`) under the workspace root.
fn artifact_root(pipeline: &Pipeline, opts: &Options) -> PathBuf {
    let name = match &opts.dataset {
        Some(dir) => format!(
            "{}-{}",
            pipeline.pipeline.name,
            dir.file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("dataset")
        ),
        None => pipeline.pipeline.name.clone(),
    };
    opts.artifacts
        .clone()
        .unwrap_or_else(|| opts.workspace.join("artifacts").join(&name))
}

/// A stage's params file, seed and the resolved config its `--check` printed.
type Resolved = (PathBuf, u64, serde_json::Value);

/// Validates every stage's params before the first stage runs: writes each stage's params file under
/// `runner_dir` and asks the stage binary to `--check` it.
fn check_params(
    opts: &Options,
    pipeline: &Pipeline,
    order: &[String],
    bin_dir: &Path,
    runner_dir: &Path,
) -> Result<BTreeMap<String, Resolved>> {
    let mut resolved = BTreeMap::new();
    for stage in order {
        let spec = &pipeline.stages[stage];
        let (bin, cmd) = spec.command()?;
        let params_path = runner_dir.join(format!("{stage}.params.toml"));
        let text =
            toml::to_string(&spec.params).with_context(|| format!("[stages.{stage}.params]"))?;
        write_atomic(&params_path, text.as_bytes())?;
        let seed = spec.seed.unwrap_or(pipeline.pipeline.seed);
        let out = Command::new(bin_dir.join(bin))
            .args([cmd, "--check", "--seed", &seed.to_string(), "--params"])
            .arg(&params_path)
            .output()
            .with_context(|| {
                format!("starting {} for stage {stage}", bin_dir.join(bin).display())
            })?;
        if !out.status.success() {
            bail!(
                "[stages.{stage}.params] in {}: {}",
                opts.config.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let config: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("stage {stage}: --check printed no JSON config"))?;
        resolved.insert(stage.clone(), (params_path, seed, config));
    }
    Ok(resolved)
}

/// What the stages of one run share: the plan, where things are, and what the stages before left behind
/// (content hashes, the lock, which stages ran, the error that stopped the run).
struct Run<'a> {
    opts: &'a Options,
    pipeline: &'a Pipeline,
    overrides: &'a BTreeMap<String, Source>,
    root: &'a Path,
    bin_dir: &'a Path,
    resolved: BTreeMap<String, Resolved>,
    total: usize,
    progress: Progress,
    lock: Lock,
    content: BTreeMap<String, String>,
    changed_upstream: BTreeSet<String>,
    error: Option<String>,
}

/// A stage's inputs: name and path, as `--input NAME=PATH` passes them.
type StageInputs = Vec<(String, PathBuf)>;

/// One selected stage on its way through the run.
struct StageRun<'a> {
    /// Position in the run order.
    index: usize,
    name: &'a str,
    spec: &'a StageSpec,
    bin: &'a str,
    cmd: &'a str,
    report: StageReport,
}

impl<'a> Run<'a> {
    /// One stage: outside the slice or after a failure it is only reported; otherwise its inputs are
    /// resolved, its key computed, and it is skipped (lock matches), planned (dry run) or run.
    fn stage(&mut self, index: usize, stage: &'a str, selected: bool) -> Result<StageReport> {
        let spec = &self.pipeline.stages[stage];
        let (bin, cmd) = spec.command()?;
        let output = self.root.join(stage);
        let mut report = StageReport {
            stage: stage.to_owned(),
            status: Status::NotRun,
            wall: Duration::ZERO,
            rows_in: None,
            rows_out: None,
            output: output.clone(),
        };
        if self.error.is_some() || !selected {
            if let Some(m) = read_manifest(&output) {
                self.content
                    .insert(stage.to_owned(), m.content_hash.clone());
                report.rows_in = m.rows_in();
                report.rows_out = Some(m.data_rows());
            }
            return Ok(report);
        }
        let mut s = StageRun {
            index,
            name: stage,
            spec,
            bin,
            cmd,
            report,
        };
        let (inputs, identities) = self.resolve_inputs(stage, spec)?;
        let key = self.key(&s, &identities)?;
        let current = read_manifest(&output);
        let disk = match (self.lock.stages.get(stage), &current) {
            (Some(entry), Some(m)) if !self.opts.force => on_disk(entry, &output, m)?,
            _ => Disk::Unchanged,
        };
        match self.rerun_reason(stage, &key, current.as_ref(), &disk) {
            None => self.skip(&mut s, current, disk)?,
            Some(why) if self.opts.dry_run => {
                self.changed_upstream.insert(stage.to_owned());
                self.progress.log(format!(
                    "[{}/{}] {stage}: would run ({why})",
                    index + 1,
                    self.total
                ));
                s.report.status = Status::WouldRun(why);
            }
            Some(why) => self.execute(&mut s, &inputs, key, &why)?,
        }
        self.progress.bar.inc(1);
        Ok(s.report)
    }

    /// The paths and content identities of the stage's inputs; an upstream stage without an artifact is an
    /// error unless this is a dry run.
    fn resolve_inputs(
        &self,
        stage: &str,
        spec: &StageSpec,
    ) -> Result<(StageInputs, BTreeMap<String, String>)> {
        let mut inputs = Vec::new();
        let mut identities = BTreeMap::new();
        let mut missing = None;
        for (input, reference) in &spec.inputs {
            let source = self
                .overrides
                .get(reference)
                .cloned()
                .unwrap_or_else(|| self.pipeline.source(reference));
            let (path, identity) = match source {
                Source::External(path) => {
                    let id = fingerprint(&path)?;
                    (path, id)
                }
                Source::Dataset => bail!("stage {stage}: `$dataset` was not resolved to a folder"),
                Source::Stage {
                    stage: up,
                    output: sub,
                } => {
                    let dir = self.root.join(&up);
                    let id = match self.content.get(&up) {
                        Some(id) => id.clone(),
                        None => {
                            missing = Some(up.clone());
                            String::new()
                        }
                    };
                    (sub.map_or(dir.clone(), |s| dir.join(s)), id)
                }
            };
            identities.insert(input.clone(), identity);
            inputs.push((input.clone(), path));
        }
        if let Some(up) = missing
            && !self.opts.dry_run
        {
            bail!(
                "stage {stage} reads stage {up}, which has no artifact under {}; run without --from first",
                self.root.display()
            );
        }
        Ok((inputs, identities))
    }

    /// The stage's cache key: blake3 of its `run`, resolved config, seed, input identities and binary hash.
    fn key(&self, s: &StageRun, identities: &BTreeMap<String, String>) -> Result<String> {
        let (_, seed, config) = &self.resolved[s.name];
        let mut binary_hash = hash_file(&self.bin_dir.join(s.bin))?;
        // A tuner runs the tuned stage's binary for its trials: a change there re-runs the search too.
        if let Some(tuned) = s
            .spec
            .tune
            .as_ref()
            .and_then(|t| self.pipeline.stages.get(t))
        {
            let (tuned_bin, _) = tuned.command()?;
            binary_hash = format!(
                "{binary_hash}+{}",
                hash_file(&self.bin_dir.join(tuned_bin))?
            );
        }
        Ok(blake3::hash(
            serde_json::to_string(&serde_json::json!({
                "run": s.spec.run, "config": config, "seed": seed, "inputs": identities, "binary": binary_hash,
            }))?
            .as_bytes(),
        )
        .to_hex()
        .to_string())
    }

    /// Why the stage must run; `None` when its lock matches and it is skipped.
    fn rerun_reason(
        &self,
        stage: &str,
        key: &str,
        current: Option<&ManifestView>,
        disk: &Disk,
    ) -> Option<String> {
        // In a real run the key already holds the upstream content hashes; a dry run cannot know them yet for
        // upstream stages that would run, so it says so.
        let upstream_runs = self
            .pipeline
            .upstream(stage)
            .into_iter()
            .find(|u| self.changed_upstream.contains(u));
        match (self.lock.stages.get(stage), current) {
            _ if self.opts.force => Some("--force".to_owned()),
            _ if self.opts.dry_run && upstream_runs.is_some() => {
                upstream_runs.map(|u| format!("upstream {u} would run"))
            }
            (None, _) => Some("never ran".to_owned()),
            (_, None) => Some("artifact missing or incomplete".to_owned()),
            (Some(entry), Some(m)) if entry.content_hash != m.content_hash => {
                Some("artifact changed on disk".to_owned())
            }
            _ if matches!(disk, Disk::Changed(_)) => Some(disk.describe()),
            (Some(entry), _) if entry.key != key => {
                Some("params, inputs or code changed".to_owned())
            }
            _ => None,
        }
    }

    /// Skips a stage whose lock matches; when only file metadata changed, the lock records the new metadata.
    fn skip(&mut self, s: &mut StageRun, current: Option<ManifestView>, disk: Disk) -> Result<()> {
        let stage = s.name;
        let m = current.ok_or_else(|| anyhow!("stage {stage}: artifact vanished"))?;
        if let (Disk::Touched(files), Some(entry), false) =
            (disk, self.lock.stages.get_mut(stage), self.opts.dry_run)
        {
            // Same bytes under new metadata: remember it, so the next run need not hash again.
            entry.files = files;
            write_lock(self.root, &self.lock)?;
        }
        self.content
            .insert(stage.to_owned(), m.content_hash.clone());
        s.report.status = Status::Skipped;
        s.report.rows_in = m.rows_in();
        s.report.rows_out = Some(m.data_rows());
        self.progress.log(format!(
            "[{}/{}] {stage}: up to date, skipped",
            s.index + 1,
            self.total
        ));
        Ok(())
    }

    /// Runs the stage process (it dies with this runner) with its params, seed, inputs and output, then
    /// records what it wrote.
    fn execute(
        &mut self,
        s: &mut StageRun,
        inputs: &[(String, PathBuf)],
        key: String,
        why: &str,
    ) -> Result<()> {
        let stage = s.name;
        let output = s.report.output.clone();
        self.progress.log(format!(
            "[{}/{}] {stage}: running {} ({why})",
            s.index + 1,
            self.total,
            s.spec.run
        ));
        let (params_path, seed, _) = &self.resolved[stage];
        let mut command = Command::new(self.bin_dir.join(s.bin));
        // mmrl_artifact::cli::PARENT_PID_ENV: the stage dies with this runner, even under kill -9.
        command.env("MMRL_PARENT_PID", std::process::id().to_string());
        command
            .args([s.cmd, "--seed", &seed.to_string(), "--params"])
            .arg(params_path)
            .arg("--output")
            .arg(&output);
        for (input, path) in inputs {
            command
                .arg("--input")
                .arg(format!("{input}={}", path.display()));
        }
        let started = Instant::now();
        let status = self
            .progress
            .run_stage(stage, &mut command)
            .with_context(|| format!("starting stage {stage}"))?;
        s.report.wall = started.elapsed();
        let manifest = if status.success() {
            read_manifest(&output)
        } else {
            None
        };
        match manifest {
            Some(m) => self.record(s, key, &m)?,
            None => {
                s.report.status = Status::Failed;
                self.error = Some(if status.success() {
                    format!(
                        "stage {stage} exited successfully but wrote no valid artifact at {}",
                        output.display()
                    )
                } else {
                    format!("stage {stage} failed ({status}); earlier artifacts are intact")
                });
            }
        }
        Ok(())
    }

    /// Records a stage that ran: its content hash for the stages downstream, and its key, content hash and
    /// file metadata in the lock.
    fn record(&mut self, s: &mut StageRun, key: String, m: &ManifestView) -> Result<()> {
        let stage = s.name;
        self.content
            .insert(stage.to_owned(), m.content_hash.clone());
        self.changed_upstream.insert(stage.to_owned());
        self.lock.stages.insert(
            stage.to_owned(),
            LockEntry {
                key,
                content_hash: m.content_hash.clone(),
                files: file_metas(&s.report.output)?,
            },
        );
        write_lock(self.root, &self.lock)?;
        s.report.status = Status::Ran;
        s.report.rows_in = m.rows_in();
        s.report.rows_out = Some(m.data_rows());
        Ok(())
    }
}

/// The runner's progress bar, on stderr when it is a terminal and `CI` is unset. A stage's stderr is piped
/// through it: each line is printed above the bar and the latest one shown beside it, so a stage's progress
/// log lines (loss, ETA) stay visible while the bar tracks the pipeline.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(stages: u64) -> Self {
        use std::io::IsTerminal;
        let visible = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = if visible {
            indicatif::ProgressBar::new(stages)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{pos}/{len}] {elapsed_precise} {wide_msg}",
        ) {
            bar.set_style(style);
        }
        if visible {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Self { bar }
    }

    fn log(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Runs a stage process with its stderr relayed through the bar; returns its exit status.
    fn run_stage(
        &self,
        stage: &str,
        command: &mut Command,
    ) -> std::io::Result<std::process::ExitStatus> {
        use std::io::BufRead;
        self.bar.set_message(stage.to_owned());
        let mut child = command.stderr(std::process::Stdio::piped()).spawn()?;
        if let Some(stderr) = child.stderr.take() {
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line?;
                self.bar.set_message(format!("{stage}: {}", line.trim()));
                self.log(line);
            }
        }
        child.wait()
    }
}

/// Resolves the dataset folder: inputs named `$dataset` read `--dataset DIR` or the pipeline's `dataset`
/// setting; with `--dataset DIR`, a pipeline's `dataset_stage` (the generated data's stage) is dropped and its
/// readers point at DIR instead.
fn dataset_override(pipeline: &mut Pipeline, opts: &Options) -> Result<BTreeMap<String, Source>> {
    let declared = pipeline
        .pipeline
        .dataset
        .as_ref()
        .map(|d| opts.config.parent().unwrap_or(Path::new(".")).join(d));
    let reads_dataset = pipeline.reads_dataset();
    let (dir, origin) = match (&opts.dataset, declared) {
        (Some(dir), _) => (dir.clone(), "--dataset".to_owned()),
        (None, Some(dir)) if reads_dataset => (
            dir,
            format!("[pipeline] dataset in {}", opts.config.display()),
        ),
        (None, _) if reads_dataset => bail!(
            "{}: its stages read `$dataset`, but no dataset folder is given; pass --dataset DIR or set `dataset` in [pipeline]",
            opts.config.display()
        ),
        (None, _) => return Ok(BTreeMap::new()),
    };
    let dataset_stage = pipeline.pipeline.dataset_stage.clone();
    if dataset_stage.is_none() && !reads_dataset {
        bail!(
            "{}: --dataset needs a stage that reads `$dataset` (or `dataset_stage` in [pipeline]) to know where the folder goes",
            opts.config.display()
        );
    }
    check_dataset_layout(&dir, &origin)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{origin} {}", dir.display()))?;
    let mut overrides = BTreeMap::new();
    for spec in pipeline.stages.values() {
        for reference in spec.inputs.values() {
            match pipeline.source(reference) {
                Source::Dataset => {
                    overrides.insert(reference.clone(), Source::External(dir.clone()));
                }
                Source::Stage { stage, .. } if Some(&stage) == dataset_stage.as_ref() => {
                    overrides.insert(reference.clone(), Source::External(dir.clone()));
                }
                _ => {}
            }
        }
    }
    if let Some(ds) = dataset_stage {
        pipeline.stages.remove(&ds);
    }
    Ok(overrides)
}

/// Refuses a dataset path that holds none of the layouts ingest reads (README "Your own dataset"; the same rule
/// as `mmrl_data::source::detect`, which xtask does not link): a `.parquet` file, or a folder with `manifest.csv`
/// at its root, or `metadata.csv`, `metadata.jsonl` or `*.parquet` files at most two folders down.
fn check_dataset_layout(dir: &Path, origin: &str) -> Result<()> {
    let is_parquet = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    };
    if dir.is_file() && is_parquet(dir) {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("{origin} {}: no such folder", dir.display());
    }
    if dir.join("manifest.csv").is_file() {
        return Ok(());
    }
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("{origin} {}", d.display()))? {
            let path = entry
                .with_context(|| format!("{origin} {}", d.display()))?
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                if depth < 2 {
                    todo.push((path, depth + 1));
                }
            } else if name == "metadata.csv" || name == "metadata.jsonl" || is_parquet(&path) {
                return Ok(());
            }
        }
    }
    bail!(
        "{origin} {}: no manifest.csv, and no metadata.csv, metadata.jsonl or Parquet file within two folders; see README 'Your own dataset'",
        dir.display()
    )
}

fn select(pipeline: &Pipeline, opts: &Options) -> Result<BTreeSet<String>> {
    let check = |flag: &str, s: &str| -> Result<()> {
        if pipeline.stages.contains_key(s) {
            Ok(())
        } else {
            bail!(
                "{flag} {s}: no such stage; stages are {}",
                pipeline
                    .stages
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let mut selected: BTreeSet<String> = pipeline.stages.keys().cloned().collect();
    if let Some(from) = &opts.from {
        check("--from", from)?;
        selected = &selected & &pipeline.descendants(from);
    }
    if let Some(to) = &opts.to {
        check("--to", to)?;
        selected = &selected & &pipeline.ancestors(to);
    }
    if selected.is_empty() {
        bail!("--from and --to select no stage");
    }
    Ok(selected)
}

/// Builds the workspace's binaries with one cargo invocation and returns the directory holding them.
fn build(opts: &Options, pipeline: &Pipeline) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let meta = Command::new(&cargo)
        .current_dir(&opts.workspace)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !meta.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&meta.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&meta.stdout).context("parsing cargo metadata")?;
    let target = meta["target_directory"]
        .as_str()
        .ok_or_else(|| anyhow!("cargo metadata has no target_directory"))?;
    let packages: BTreeSet<&str> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for (stage, spec) in &pipeline.stages {
        let (bin, _) = spec.command()?;
        if !packages.contains(bin) {
            bail!(
                "[stages.{stage}] run = {:?}: no workspace package {bin:?}",
                spec.run
            );
        }
    }
    // Build the whole workspace's binaries, as the tests do: the same feature set, so nothing is compiled twice.
    let status = Command::new(&cargo)
        .current_dir(&opts.workspace)
        .args(["build", "--workspace", "--bins", "--profile", &opts.profile])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the stage binaries failed");
    }
    let dir = match opts.profile.as_str() {
        "dev" | "test" => "debug",
        "release" | "bench" => "release",
        other => other,
    };
    Ok(Path::new(target).join(dir))
}

/// The parts of a stage's `manifest.json` the runner needs; it reads JSON, not the artifact crate, to stay light.
#[derive(Debug, Deserialize)]
struct ManifestView {
    content_hash: String,
    inputs: Vec<InputView>,
    outputs: Vec<OutputView>,
}

#[derive(Debug, Deserialize)]
struct InputView {
    rows: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OutputView {
    file: String,
    role: String,
    blake3: String,
    bytes: u64,
    rows: Option<u64>,
    #[serde(default)]
    dir: bool,
}

impl ManifestView {
    fn data_rows(&self) -> u64 {
        self.outputs
            .iter()
            .filter(|o| o.role == "data")
            .filter_map(|o| o.rows)
            .sum()
    }

    fn rows_in(&self) -> Option<u64> {
        let rows: Vec<u64> = self.inputs.iter().filter_map(|i| i.rows).collect();
        (!rows.is_empty()).then(|| rows.iter().sum())
    }
}

/// The manifest of a complete artifact whose files still have their recorded sizes; `None` otherwise.
fn read_manifest(dir: &Path) -> Option<ManifestView> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let m: ManifestView = serde_json::from_str(&text).ok()?;
    let intact = m.outputs.iter().all(|o| {
        let path = dir.join(&o.file);
        if o.dir {
            path.is_dir()
        } else {
            std::fs::metadata(&path)
                .map(|md| md.len() == o.bytes)
                .unwrap_or(false)
        }
    });
    intact.then_some(m)
}

fn read_lock(root: &Path) -> Lock {
    std::fs::read_to_string(root.join(LOCK_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_lock(root: &Path, lock: &Lock) -> Result<()> {
    write_atomic(&root.join(LOCK_FILE), &serde_json::to_vec_pretty(lock)?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))
}

/// A file's blake3 (hex), as artifacts record it.
pub(crate) fn hash_file(path: &Path) -> Result<String> {
    Ok(mmrl_artifact::hash::hash_file(path)?.0)
}

/// The lock of an artifacts folder, held by one pipeline run from its start to its end (released on drop).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// The lock file of an artifacts folder, beside the runner's params files.
const RUN_LOCK: &str = ".runner/run.lock";

/// Takes the lock of the artifacts folder `root` for one run, or stops at once with a message naming the pid
/// of the run that holds it: two runs on one folder would interleave their writes (params files, stage outputs,
/// the lock file). A second run stops rather than waits, so that nobody waits on a run they cannot see.
pub fn lock_artifacts(root: &Path) -> Result<RunLock> {
    use std::io::{Read, Write};
    let path = root.join(RUN_LOCK);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The holder may not have written its pid yet.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            };
            bail!(
                "another pipeline run ({holder}) is using {} (lock {}); wait for it to finish or stop it",
                root.display(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(RunLock { _file: file })
}

/// Refuses a folder given as an input (`--dataset DIR`, the pipeline's `dataset`, a path) that is, holds or sits
/// inside the output of a stage of this run: that stage would replace the user's data. Checked before anything
/// is built or written.
fn check_inputs_apart(
    pipeline: &Pipeline,
    overrides: &BTreeMap<String, Source>,
    root: &Path,
) -> Result<()> {
    let mut folders = BTreeSet::new();
    for spec in pipeline.stages.values() {
        for reference in spec.inputs.values() {
            let source = overrides
                .get(reference)
                .cloned()
                .unwrap_or_else(|| pipeline.source(reference));
            if let Source::External(path) = source {
                folders.insert(path);
            }
        }
    }
    for folder in &folders {
        for stage in pipeline.stages.keys() {
            let output = root.join(stage);
            let Some(relation) = mmrl_artifact::overlap(folder, &output) else {
                continue;
            };
            bail!(
                "input folder {} {relation} {}, the output of stage {stage} under --artifacts {}; a stage \
                 replaces its output, so keep the dataset (--dataset) outside the artifacts folder",
                folder.display(),
                output.display(),
                root.display()
            );
        }
    }
    Ok(())
}

/// An artifact on disk against what its lock entry recorded.
#[derive(Debug)]
enum Disk {
    /// Every file has the recorded size and mtime.
    Unchanged,
    /// Some metadata differs, but every output still hashes to its manifest's blake3: these are its files now.
    Touched(BTreeMap<String, FileMeta>),
    /// This output's bytes differ from the manifest.
    Changed(String),
}

impl Disk {
    fn describe(&self) -> String {
        match self {
            Disk::Changed(file) => {
                format!("artifact changed on disk: {file} differs from its manifest")
            }
            _ => "artifact unchanged".to_owned(),
        }
    }
}

/// Checks an artifact against its lock entry before a skip is trusted: size and mtime of every file (cheap);
/// where they differ, the outputs they belong to are re-hashed against the manifest's blake3.
fn on_disk(entry: &LockEntry, dir: &Path, m: &ManifestView) -> Result<Disk> {
    let now = file_metas(dir)?;
    if now == entry.files {
        return Ok(Disk::Unchanged);
    }
    let differs = |rel: &String| now.get(rel) != entry.files.get(rel);
    let changed: BTreeSet<&String> = now
        .keys()
        .chain(entry.files.keys())
        .filter(|r| differs(r))
        .collect();
    let touches = |file: &str, is_dir: bool| {
        changed
            .iter()
            .any(|r| r.as_str() == file || (is_dir && r.starts_with(&format!("{file}/"))))
    };
    for o in m.outputs.iter().filter(|o| touches(&o.file, o.dir)) {
        let path = dir.join(&o.file);
        let hash = if o.dir {
            hash_dir(&path)?
        } else {
            hash_file(&path)?
        };
        if hash != o.blake3 {
            return Ok(Disk::Changed(o.file.clone()));
        }
    }
    let listed = combine(
        m.outputs
            .iter()
            .map(|o| (o.file.clone(), o.blake3.clone()))
            .collect(),
    );
    if touches("manifest.json", false) && listed != m.content_hash {
        return Ok(Disk::Changed("manifest.json".to_owned()));
    }
    Ok(Disk::Touched(now))
}

/// Size and mtime of every regular file under `dir`, by relative path with `/` (links are not followed, as
/// mmrl-artifact's folder hashing does not follow them).
fn file_metas(dir: &Path) -> Result<BTreeMap<String, FileMeta>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let entry = entry.with_context(|| format!("listing {}", d.display()))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading metadata of {}", path.display()))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                out.insert(
                    rel,
                    FileMeta {
                        bytes: meta.len(),
                        mtime_ns,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// The blake3 of a folder output, as artifacts record it.
pub(crate) fn hash_dir(dir: &Path) -> Result<String> {
    Ok(mmrl_artifact::hash::hash_dir(dir)?.0)
}

/// Named hashes combined as an artifact's `content_hash` is.
pub(crate) fn combine(items: Vec<(String, String)>) -> String {
    mmrl_artifact::hash::combine(items.iter().map(|(n, h)| (n.as_str(), h.as_str())))
}

/// A cheap identity of an external folder: every file's relative path, size and modification time (as DVC and
/// xvc check metadata before content). The stage itself records the real content hash in its manifest.
fn fingerprint(dir: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut entries = Vec::new();
    // A dataset may be one Parquet file rather than a folder.
    let mut stack = if dir.is_file() {
        entries.push(file_entry(dir)?);
        Vec::new()
    } else {
        vec![dir.to_path_buf()]
    };
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let entry = entry.with_context(|| format!("listing {}", d.display()))?;
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                entries.push(file_entry(&entry.path())?);
            }
        }
    }
    entries.sort();
    for (path, len, mtime) in entries {
        hasher.update(
            path.strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(&len.to_le_bytes());
        hasher.update(&mtime.to_le_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A file's path, size and modification time (nanoseconds since the epoch; 0 when unknown).
fn file_entry(path: &Path) -> Result<(PathBuf, u64, u128)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok((
        path.to_path_buf(),
        meta.len(),
        mtime.map_or(0, |d| d.as_nanos()),
    ))
}

/// File a stage may leave in its artifact: a few lines (a headline table, a report's path) the runner prints
/// after its closing table.
pub const SUMMARY_FILE: &str = "summary.txt";

/// The summaries of the stages that ran or were skipped, in pipeline order, each under its stage's name and
/// artifact directory.
pub fn summaries(outcome: &Outcome) -> String {
    let mut out = String::new();
    for r in &outcome.stages {
        if !matches!(r.status, Status::Ran | Status::Skipped) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(r.output.join(SUMMARY_FILE)) {
            out.push_str(&format!(
                "\n{} ({}):\n{}",
                r.stage,
                r.output.display(),
                text.trim_end()
            ));
            out.push('\n');
        }
    }
    out
}

/// The closing table: where the time went and what each stage produced.
pub fn table(outcome: &Outcome) -> String {
    let mut rows = vec![[
        "stage".to_owned(),
        "status".into(),
        "wall".into(),
        "rows in".into(),
        "rows out".into(),
        "output".into(),
    ]];
    let fmt_rows = |r: Option<u64>| r.map_or("-".to_owned(), |n| n.to_string());
    let mut total = Duration::ZERO;
    for r in &outcome.stages {
        total += r.wall;
        let status = match &r.status {
            Status::Ran => "ran".to_owned(),
            Status::Skipped => "skipped".to_owned(),
            Status::WouldRun(why) => format!("would run: {why}"),
            Status::Failed => "FAILED".to_owned(),
            Status::NotRun => "not run".to_owned(),
        };
        let wall = if r.status == Status::Ran || r.status == Status::Failed {
            format!("{:.1}s", r.wall.as_secs_f64())
        } else {
            "-".into()
        };
        rows.push([
            r.stage.clone(),
            status,
            wall,
            fmt_rows(r.rows_in),
            fmt_rows(r.rows_out),
            r.output.display().to_string(),
        ]);
    }
    rows.push([
        "total".into(),
        String::new(),
        format!("{:.1}s", total.as_secs_f64()),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if (2..5).contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An artifact folder with a file output and a folder output, its manifest view and a lock entry taken now.
    fn artifact(dir: &Path) -> (ManifestView, LockEntry) {
        std::fs::create_dir_all(dir.join("data/images")).unwrap();
        std::fs::write(dir.join("table.bin"), vec![7u8; 1000]).unwrap();
        std::fs::write(dir.join("data/images/1.png"), [1u8, 2, 3]).unwrap();
        let outputs = vec![
            (
                "table.bin".to_owned(),
                hash_file(&dir.join("table.bin")).unwrap(),
            ),
            ("data".to_owned(), hash_dir(&dir.join("data")).unwrap()),
        ];
        let content_hash = combine(outputs.clone());
        let manifest = serde_json::json!({
            "content_hash": content_hash,
            "inputs": [],
            "outputs": outputs.iter().map(|(file, blake3)| serde_json::json!({
                "file": file, "role": "data", "blake3": blake3, "bytes": 0, "rows": null, "dir": file == "data",
            })).collect::<Vec<_>>(),
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        let view: ManifestView = serde_json::from_value(manifest).unwrap();
        let entry = LockEntry {
            key: "k".into(),
            content_hash,
            files: file_metas(dir).unwrap(),
        };
        (view, entry)
    }

    fn touch(path: &Path) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let later = file.metadata().unwrap().modified().unwrap() + Duration::from_secs(30);
        file.set_modified(later).unwrap();
    }

    fn flip(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[1] ^= 1;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_skip_is_trusted_on_metadata_and_rehashed_where_it_differs() {
        // (what is done to the artifact, the expected verdict)
        let check = |damage: &dyn Fn(&Path), expected: &str| {
            let tmp = tempfile::tempdir().unwrap();
            let (view, entry) = artifact(tmp.path());
            damage(tmp.path());
            let verdict = match on_disk(&entry, tmp.path(), &view).unwrap() {
                Disk::Unchanged => "unchanged".to_owned(),
                Disk::Touched(files) => {
                    assert_eq!(files, file_metas(tmp.path()).unwrap());
                    "touched".to_owned()
                }
                Disk::Changed(file) => format!("changed {file}"),
            };
            assert_eq!(verdict, expected);
        };
        check(&|_| {}, "unchanged");
        check(&|d| touch(&d.join("table.bin")), "touched");
        check(&|d| touch(&d.join("data/images/1.png")), "touched");
        check(
            &|d| std::fs::write(d.join("notes.txt"), "x").unwrap(),
            "touched",
        );
        check(&|d| flip(&d.join("table.bin")), "changed table.bin");
        check(&|d| flip(&d.join("data/images/1.png")), "changed data");
        check(
            &|d| std::fs::write(d.join("data/images/2.png"), "new").unwrap(),
            "changed data",
        );
    }

    #[test]
    fn an_input_folder_overlapping_a_stage_output_is_refused_before_any_work() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("p.toml");
        std::fs::write(
            &config,
            "[pipeline]\nname = \"t\"\n[stages.generate]\nrun = \"mmrl-data generate\"\n\
             [stages.ingest]\nrun = \"mmrl-data ingest\"\ninputs = { dataset = \"generate/dataset\" }\n",
        )
        .unwrap();
        // As `--dataset` leaves it: the generating stage dropped, its readers pointed at the folder.
        let mut pipeline = Pipeline::load(&config).unwrap();
        pipeline.stages.remove("generate");
        let root = tmp.path().join("art");
        let check = |dataset: &str, expected: Option<&str>| {
            let folder = tmp.path().join(dataset);
            let overrides = BTreeMap::from([(
                "generate/dataset".to_owned(),
                Source::External(folder.clone()),
            )]);
            match (check_inputs_apart(&pipeline, &overrides, &root), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(relation)) => {
                    let e = e.to_string();
                    let expected = format!(
                        "{} {relation} {}",
                        folder.display(),
                        root.join("ingest").display()
                    );
                    assert!(e.contains(&expected), "{e}");
                }
                (got, _) => panic!("{dataset}: {got:?}"),
            }
        };
        check("art/ingest", Some("is the same folder as"));
        check("art/ingest/data", Some("is inside"));
        check("art/./ingest", Some("is the same folder as"));
        check(".", Some("contains"));
        check("art/mydata", None);
        check("elsewhere", None);
    }

    #[test]
    fn a_second_run_on_one_artifacts_folder_is_refused_naming_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock_artifacts(tmp.path()).unwrap();
        let err = lock_artifacts(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id()))
                && err.contains(&tmp.path().display().to_string()),
            "{err}"
        );
        drop(first);
        lock_artifacts(tmp.path()).unwrap();
    }

    #[test]
    fn summaries_follow_pipeline_order_and_skip_failed_stages() {
        let dir = tempfile::tempdir().unwrap();
        let report = |stage: &str, status: Status, summary: Option<&str>| {
            let output = dir.path().join(stage);
            std::fs::create_dir_all(&output).unwrap();
            if let Some(text) = summary {
                std::fs::write(output.join(SUMMARY_FILE), text).unwrap();
            }
            StageReport {
                stage: stage.into(),
                status,
                wall: Duration::ZERO,
                rows_in: None,
                rows_out: None,
                output,
            }
        };
        let outcome = Outcome {
            stages: vec![
                report("a", Status::Ran, Some("first\n")),
                report("b", Status::Ran, None),
                report("c", Status::Failed, Some("stale")),
                report("d", Status::Skipped, Some("last")),
            ],
            root: dir.path().to_path_buf(),
            error: None,
        };
        let d = |s: &str| dir.path().join(s).display().to_string();
        assert_eq!(
            summaries(&outcome),
            format!("\na ({}):\nfirst\n\nd ({}):\nlast\n", d("a"), d("d"))
        );
    }
}
