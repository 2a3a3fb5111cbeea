//! `cargo xtask chaos`: the crash test of the real binaries. Every stage of a pipeline is killed with SIGKILL at
//! seeded moments spread over its run time, and the runner itself is killed while a stage runs. After each kill
//! the artifacts folder is checked (no directory reads as a complete artifact unless it is one; no process of the
//! killed run lives on), the pipeline is run again, and that run must complete and give the content hashes of an
//! uninterrupted run.
//!
//! It drives `cargo xtask pipeline` as a child process on a copy of a reference run's artifacts (an uninterrupted
//! run of the same pipeline, e.g. the CI smoke run), so a kill costs the killed stage's run and nothing upstream.
//! Linux only: it finds and kills processes through `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::pipeline::Pipeline;
use crate::runner::{combine, hash_dir, hash_file};

/// How long a process of a killed run may live on before it counts as outliving its parent.
const GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the runner to reach the stage to be killed (it may build first).
const START_TIMEOUT: Duration = Duration::from_secs(900);
/// How often `/proc` is read while waiting for a stage process or a kill moment.
const POLL: Duration = Duration::from_millis(3);
/// Tries per kill point: a point the stage finished before is drawn again at half the time, and the last try
/// starts the stage afresh at half the drawn moment.
const TRIES: usize = 4;

/// What `cargo xtask chaos` was asked to do.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The pipeline file.
    pub config: PathBuf,
    /// Artifacts of an uninterrupted run of the same pipeline by one `cargo xtask pipeline` (every stage run in
    /// order); `None` runs one into `work/clean` first.
    pub reference: Option<PathBuf>,
    /// Scratch folder: `run/` (the artifacts under test), `logs/` (one log per pipeline run), `clean/`.
    pub work: PathBuf,
    /// Kill points per stage.
    pub kills: usize,
    /// Times the runner itself is killed while a stage runs (tuning stages first, whose trials are grandchildren).
    pub runner_kills: usize,
    /// Seed of the kill moments.
    pub seed: u64,
    /// Only these stages (default: every stage).
    pub stages: Vec<String>,
    /// Stages whose artifacts record measurements (timings), so even two clean runs differ: their hashes are
    /// reported, not required to match. `STAGE:FILE` allows only that output of the stage to differ.
    pub measured: Vec<String>,
    /// Run the pipeline with `--release`.
    pub release: bool,
}

/// What the crash test found.
#[derive(Debug, Default)]
pub struct Tally {
    /// Stage processes killed while they ran, by stage.
    pub kills: BTreeMap<String, usize>,
    /// Kill points the stage finished before (each drawn again earlier).
    pub missed: usize,
    /// Runner processes killed while a stage ran, by that stage.
    pub runner_kills: Vec<String>,
    /// Directories that read as a complete artifact but are not one.
    pub read_as_complete: Vec<String>,
    /// Runs after a kill that did not complete.
    pub reruns_failed: Vec<String>,
    /// Deterministic stages whose content hash differs from the clean run's.
    pub mismatches: BTreeSet<String>,
    /// Measured stages whose content differs from the clean run's, and in which outputs.
    pub measured_differences: BTreeMap<String, BTreeSet<String>>,
    /// Processes of a killed run still alive [`GRACE`] after their parent was killed.
    pub survivors: Vec<String>,
    /// Partial or moved-aside directories left after a run completed.
    pub leftovers: BTreeSet<String>,
    /// Pipeline runs started.
    pub runs: usize,
    /// Wall time of the whole test.
    pub wall: Duration,
}

impl Tally {
    /// Whether every count that must be zero is, and every stage got its kills.
    pub fn passed(&self, stages: &[String], kills: usize) -> bool {
        self.read_as_complete.is_empty()
            && self.reruns_failed.is_empty()
            && self.mismatches.is_empty()
            && self.survivors.is_empty()
            && self.leftovers.is_empty()
            && stages
                .iter()
                .all(|s| self.kills.get(s).copied().unwrap_or(0) >= kills)
    }

    /// The closing lines `.ci/run` prints.
    pub fn report(&self, stages: &[String]) -> String {
        let total: usize = self.kills.values().sum();
        let covered = stages
            .iter()
            .filter(|s| self.kills.get(*s).copied().unwrap_or(0) > 0)
            .count();
        let per_stage: Vec<String> = stages
            .iter()
            .map(|s| format!("{s} {}", self.kills.get(s).copied().unwrap_or(0)))
            .collect();
        let list = |items: &mut dyn Iterator<Item = String>| {
            let items: Vec<String> = items.collect();
            if items.is_empty() {
                String::new()
            } else {
                format!(": {}", items.join("; "))
            }
        };
        let measured: Vec<String> = self
            .measured_differences
            .iter()
            .map(|(s, files)| {
                format!(
                    "{s} ({})",
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        let mut out = String::new();
        out += &format!(
            "chaos: kills made: {total} (stage processes killed mid-run; {} kill points came after the stage had finished and were drawn again earlier)\n",
            self.missed
        );
        out += &format!(
            "chaos: stages covered: {covered}/{} ({})\n",
            stages.len(),
            per_stage.join(", ")
        );
        out += &format!(
            "chaos: runner kills: {} ({}); processes alive {} s after their parent was killed: {}{}\n",
            self.runner_kills.len(),
            self.runner_kills.join(", "),
            GRACE.as_secs(),
            self.survivors.len(),
            list(&mut self.survivors.iter().cloned())
        );
        out += &format!(
            "chaos: incomplete artifacts read as complete: {}{}\n",
            self.read_as_complete.len(),
            list(&mut self.read_as_complete.iter().cloned())
        );
        out += &format!(
            "chaos: re-runs failed: {}{}\n",
            self.reruns_failed.len(),
            list(&mut self.reruns_failed.iter().cloned())
        );
        out += &format!(
            "chaos: hash mismatches against the clean run: {} (deterministic stages){}; outputs that --measured allows to differ (timings, hpo trial numbers) and did: {}\n",
            self.mismatches.len(),
            list(&mut self.mismatches.iter().cloned()),
            if measured.is_empty() {
                "none".to_owned()
            } else {
                measured.join(", ")
            }
        );
        out += &format!(
            "chaos: partial directories left after a completed run: {}{}\n",
            self.leftovers.len(),
            list(&mut self.leftovers.iter().cloned())
        );
        out += &format!(
            "chaos: {} pipeline runs in {:.0} s\n",
            self.runs,
            self.wall.as_secs_f64()
        );
        out
    }
}

/// Runs the crash test; returns what it found (an `Err` only when the test itself could not run).
pub fn run(opts: &ChaosOptions) -> Result<Tally> {
    if !Path::new("/proc/self/stat").exists() {
        bail!(
            "xtask chaos finds and kills processes through /proc, which this system does not have"
        );
    }
    let started = Instant::now();
    let pipeline = Pipeline::load(&opts.config)?;
    let order = pipeline.order()?;
    let stages = selected(opts, &order)?;
    std::fs::create_dir_all(&opts.work)
        .with_context(|| format!("creating {}", opts.work.display()))?;
    let work = std::path::absolute(&opts.work)?;
    let mut chaos = Chaos {
        opts,
        pipeline,
        order,
        dir: work.join("run"),
        logs: work.join("logs"),
        exe: std::env::current_exe().context("finding the xtask binary")?,
        runs: 0,
        tally: Tally::default(),
        reference: Reference::default(),
    };
    std::fs::create_dir_all(&chaos.logs)?;
    let reference_dir = match &opts.reference {
        Some(dir) => dir.clone(),
        None => {
            let clean = work.join("clean");
            remove_dir(&clean)?;
            chaos.complete_run(&clean, "the clean run")?;
            clean
        }
    };
    chaos.reference = Reference::read(&reference_dir, &chaos.order)?;
    remove_dir(&chaos.dir)?;
    copy_tree(&reference_dir, &chaos.dir)?;
    let mut rng = Rng::new(opts.seed);
    for stage in &stages {
        chaos.kill_stage(stage, &mut Rng::new(opts.seed ^ Rng::of(stage)))?;
    }
    for stage in runner_victims(&chaos.pipeline, &stages, opts.runner_kills, &mut rng) {
        chaos.kill_runner(&stage, &mut rng)?;
    }
    chaos.tally.runs = chaos.runs;
    chaos.tally.wall = started.elapsed();
    Ok(chaos.tally)
}

/// The stages to kill, in run order.
fn selected(opts: &ChaosOptions, order: &[String]) -> Result<Vec<String>> {
    for s in &opts.stages {
        if !order.contains(s) {
            bail!(
                "--stage {s}: no such stage; stages are {}",
                order.join(", ")
            );
        }
    }
    Ok(order
        .iter()
        .filter(|s| opts.stages.is_empty() || opts.stages.contains(s))
        .cloned()
        .collect())
}

/// The stages during which the runner is killed: tuning stages first (their trials are the runner's
/// grandchildren), then seeded picks among the others.
fn runner_victims(pipeline: &Pipeline, stages: &[String], n: usize, rng: &mut Rng) -> Vec<String> {
    let mut tuners: Vec<String> = stages
        .iter()
        .filter(|s| pipeline.stages[*s].tune.is_some())
        .cloned()
        .collect();
    let mut others: Vec<String> = stages
        .iter()
        .filter(|s| !tuners.contains(s))
        .cloned()
        .collect();
    while !others.is_empty() && tuners.len() < n {
        let i = rng.below(others.len());
        tuners.push(others.remove(i));
    }
    tuners.truncate(n);
    tuners
}

/// The state of one crash test.
struct Chaos<'a> {
    opts: &'a ChaosOptions,
    pipeline: Pipeline,
    order: Vec<String>,
    /// The artifacts folder under test.
    dir: PathBuf,
    logs: PathBuf,
    /// This xtask binary, resolved before the first pipeline run: that run's build may replace the file at the
    /// path (`cargo xtask` builds xtask with its own feature set, the runner with the workspace's), after which
    /// the running process's `current_exe` no longer resolves.
    exe: PathBuf,
    runs: usize,
    tally: Tally,
    reference: Reference,
}

impl Chaos<'_> {
    /// Kills `stage` at each of its seeded kill points (a run per point), then runs the pipeline to the end.
    fn kill_stage(&mut self, stage: &str, rng: &mut Rng) -> Result<()> {
        let duration = self.reference.duration(stage);
        let points = kill_points(rng, self.opts.kills, duration);
        eprintln!(
            "chaos: {stage}: {} kill points over its {:.1} s ({})",
            points.len(),
            duration.as_secs_f64(),
            points
                .iter()
                .map(|p| format!("{:.2} s", p.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.fresh_start(stage)?;
        for point in points {
            let mut at = point;
            for attempt in 0..TRIES {
                if attempt + 1 == TRIES {
                    // Resumed work can end before any earlier moment (hpo's journal holds the trials the previous
                    // kills let finish): the last try starts the stage from nothing, at half the drawn moment
                    // (a run can be faster than the reference's).
                    self.fresh_start(stage)?;
                    at = point / 2;
                }
                self.forget(stage)?;
                if self.kill_stage_at(stage, at)? {
                    break;
                }
                self.tally.missed += 1;
                at /= 2;
            }
        }
        self.rerun(&format!("after killing {stage}"))?;
        self.check_leftovers(stage);
        Ok(())
    }

    /// One run killed `at` after `stage`'s process started; whether the kill landed while it ran.
    fn kill_stage_at(&mut self, stage: &str, at: Duration) -> Result<bool> {
        let mut runner = self.start_run(&self.dir.clone())?;
        let output = self.dir.join(stage);
        let Some(victim) = wait_for_stage(&mut runner, &output)? else {
            let why = format!("{stage}: the run never started it ({})", self.last_log());
            self.tally.reruns_failed.push(why);
            return Ok(true);
        };
        sleep_until(victim.seen + at);
        let family = descendants(victim.pid);
        let killed = victim.kill();
        let status = runner.wait()?;
        if !killed || status.success() {
            return Ok(false);
        }
        *self.tally.kills.entry(stage.to_owned()).or_default() += 1;
        self.check_survivors(&family, &format!("{stage} killed at {at:.2?}"));
        self.check_artifacts(&format!("{stage} killed at {at:.2?}"));
        Ok(true)
    }

    /// Kills the runner while `stage` runs (once a tuning stage has a trial running), then runs the pipeline again.
    fn kill_runner(&mut self, stage: &str, rng: &mut Rng) -> Result<()> {
        self.fresh_start(stage)?;
        self.forget(stage)?;
        let mut runner = self.start_run(&self.dir.clone())?;
        let output = self.dir.join(stage);
        let Some(victim) = wait_for_stage(&mut runner, &output)? else {
            let why = format!("{stage}: the run never started it ({})", self.last_log());
            self.tally.reruns_failed.push(why);
            return Ok(());
        };
        let duration = self.reference.duration(stage);
        if self.pipeline.stages[stage].tune.is_some() {
            // Its trials are what outlived a killed runner before: wait until one runs.
            let deadline = victim.seen + duration.max(Duration::from_secs(60));
            while descendants(victim.pid).is_empty() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            sleep_until(Instant::now() + duration.mul_f64(0.1 * rng.unit()));
        } else {
            sleep_until(victim.seen + duration.mul_f64(0.8 * rng.unit()));
        }
        let mut family = descendants(runner.id() as i32);
        family.retain(|p| p.alive());
        runner.kill().context("killing the runner")?;
        runner.wait()?;
        eprintln!(
            "chaos: killed the runner while {stage} ran ({} processes under it)",
            family.len()
        );
        self.tally.runner_kills.push(stage.to_owned());
        self.check_survivors(&family, &format!("runner killed during {stage}"));
        self.check_artifacts(&format!("runner killed during {stage}"));
        self.rerun(&format!("after killing the runner during {stage}"))?;
        self.check_leftovers(stage);
        Ok(())
    }

    /// Removes what a completed reference run leaves for `stage` to resume from (a finished hpo study would let
    /// hpo finish without running a trial), so its killed runs start from scratch as the clean run did.
    fn fresh_start(&self, stage: &str) -> Result<()> {
        let prefix = format!(".{stage}.");
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let work = name.ends_with("-study") || name.ends_with("-work");
            if name.starts_with(&prefix) && work && path.is_dir() {
                remove_dir(&path)?;
            }
        }
        Ok(())
    }

    /// Drops `stage`'s entry from the runner's lock, so the next run runs it (over its current artifact).
    fn forget(&self, stage: &str) -> Result<()> {
        let path = self.dir.join("pipeline.lock.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut lock: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(stages) = lock.get_mut("stages").and_then(|s| s.as_object_mut()) {
            stages.remove(stage);
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&lock)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Starts `cargo xtask pipeline` on `dir` (this executable), its output in a log of its own.
    fn start_run(&mut self, dir: &Path) -> Result<Child> {
        self.runs += 1;
        let log = self.logs.join(format!("run-{:03}.log", self.runs));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("pipeline")
            .arg("--config")
            .arg(&self.opts.config)
            .arg("--artifacts")
            .arg(dir)
            .env("CI", "true")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if self.opts.release {
            command.arg("--release");
        }
        command.spawn().context("starting xtask pipeline")
    }

    fn last_log(&self) -> String {
        self.logs
            .join(format!("run-{:03}.log", self.runs))
            .display()
            .to_string()
    }

    /// Runs the pipeline on `dir` to its end; an error when it fails.
    fn complete_run(&mut self, dir: &Path, what: &str) -> Result<()> {
        let status = self.start_run(dir)?.wait()?;
        if !status.success() {
            bail!("{what} failed ({status}); see {}", self.last_log());
        }
        Ok(())
    }

    /// The run after a kill: it must complete, leave only complete artifacts, and reproduce the clean run.
    fn rerun(&mut self, what: &str) -> Result<()> {
        let dir = self.dir.clone();
        if let Err(e) = self.complete_run(&dir, &format!("the run {what}")) {
            self.tally.reruns_failed.push(e.to_string());
            return Ok(());
        }
        self.check_artifacts(&format!("the run {what}"));
        self.compare();
        Ok(())
    }

    /// Records every directory under the artifacts folder that reads as complete but is not.
    fn check_artifacts(&mut self, when: &str) {
        for problem in incomplete_artifacts(&self.dir) {
            self.tally
                .read_as_complete
                .push(format!("{when}: {problem}"));
        }
    }

    /// Records processes of `family` that are still alive [`GRACE`] after their parent was killed, and kills them
    /// so that the next run starts clean.
    fn check_survivors(&mut self, family: &[Proc], when: &str) {
        let deadline = Instant::now() + GRACE;
        while family.iter().any(Proc::alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in family.iter().filter(|p| p.alive()) {
            self.tally
                .survivors
                .push(format!("{when}: pid {} ({})", p.pid, p.command()));
            p.kill();
        }
    }

    /// Compares every stage's content hash with the clean run's.
    fn compare(&mut self) {
        for stage in &self.order {
            let Some(expected) = self.reference.stages.get(stage) else {
                continue;
            };
            let Some(now) = StageManifest::read(&self.dir.join(stage)) else {
                self.tally
                    .mismatches
                    .insert(format!("{stage} (no artifact)"));
                continue;
            };
            if now.content_hash == expected.content_hash {
                continue;
            }
            let differ: BTreeSet<String> = now
                .outputs
                .iter()
                .filter(|o| {
                    expected
                        .outputs
                        .iter()
                        .all(|e| e.file != o.file || e.blake3 != o.blake3)
                })
                .map(|o| o.file.clone())
                .collect();
            if differ
                .iter()
                .all(|file| measured(&self.opts.measured, stage, file))
            {
                self.tally
                    .measured_differences
                    .entry(stage.clone())
                    .or_default()
                    .extend(differ);
            } else {
                self.tally.mismatches.insert(stage.clone());
            }
        }
    }

    /// Records partial or moved-aside directories of `stage` still there after a completed run.
    fn check_leftovers(&mut self, stage: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let left = [".partial-", ".old-"]
                .iter()
                .any(|m| name.starts_with(&format!(".{stage}{m}")));
            if left {
                self.tally.leftovers.insert(name);
            }
        }
    }
}

/// Whether output `file` of `stage` may differ between clean runs: the stage is in `measured`, or `STAGE:FILE`
/// is.
fn measured(measured: &[String], stage: &str, file: &str) -> bool {
    measured
        .iter()
        .any(|m| m == stage || m.split_once(':') == Some((stage, file)))
}

/// `n` kill moments spread over `duration`: one uniform draw in each of `n` equal slices, in order.
pub fn kill_points(rng: &mut Rng, n: usize, duration: Duration) -> Vec<Duration> {
    (0..n)
        .map(|i| duration.mul_f64((i as f64 + rng.unit()) / n as f64))
        .collect()
}

/// A small seeded generator (splitmix64): the kill moments must not depend on anything but the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A seed derived from a name, so one stage's points do not move when stages are added or skipped.
    pub fn of(name: &str) -> u64 {
        let hash = blake3::hash(name.as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(bytes)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// What the crash test needs of an uninterrupted run: each stage's content and how long it ran.
#[derive(Debug, Default)]
struct Reference {
    stages: BTreeMap<String, StageManifest>,
    durations: BTreeMap<String, Duration>,
}

impl Reference {
    /// Reads the reference artifacts. A stage's run time is estimated from the artifacts alone: the runner runs
    /// stages one after another right after writing their params files, so a stage ran from the end of the one
    /// before it (the params files, for the first) to its own `finished_at`.
    fn read(dir: &Path, order: &[String]) -> Result<Self> {
        let mut stages = BTreeMap::new();
        for stage in order {
            let m = StageManifest::read(&dir.join(stage)).with_context(|| {
                format!(
                    "the reference {} has no complete artifact for stage {stage}; give the artifacts of an \
                     uninterrupted run of this pipeline (or no --reference)",
                    dir.display()
                )
            })?;
            stages.insert(stage.clone(), m);
        }
        let mut previous = params_written(dir);
        let mut durations = BTreeMap::new();
        for stage in order {
            let end = parse_rfc3339_ms(&stages[stage].finished_at);
            let d = match (previous, end) {
                (Some(p), Some(e)) if e >= p => Duration::from_millis((e - p) as u64),
                _ => Duration::ZERO,
            };
            durations.insert(stage.clone(), d);
            previous = end.or(previous);
        }
        Ok(Reference { stages, durations })
    }

    /// The estimated run time of `stage` (at least 50 ms, so kill points of a short stage still spread).
    fn duration(&self, stage: &str) -> Duration {
        self.durations
            .get(stage)
            .copied()
            .unwrap_or_default()
            .max(Duration::from_millis(50))
    }
}

/// When the runner last wrote a stage's params file (ms since the epoch): just before the first stage ran.
fn params_written(dir: &Path) -> Option<i64> {
    let entries = std::fs::read_dir(dir.join(".runner")).ok()?;
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".params.toml"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .max()
}

/// The parts of a `manifest.json` the crash test reads.
#[derive(Debug, Clone, Deserialize)]
struct StageManifest {
    content_hash: String,
    #[serde(default)]
    finished_at: String,
    outputs: Vec<OutputEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct OutputEntry {
    file: String,
    blake3: String,
    bytes: u64,
    #[serde(default)]
    dir: bool,
}

impl StageManifest {
    /// The manifest of `dir` when it reads as complete: it parses and every output has its recorded size (what the
    /// runner checks before it trusts an artifact).
    fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
        let m: StageManifest = serde_json::from_str(&text).ok()?;
        let sized = m.outputs.iter().all(|o| {
            let path = dir.join(&o.file);
            if o.dir {
                path.is_dir()
            } else {
                std::fs::metadata(&path).is_ok_and(|md| md.len() == o.bytes)
            }
        });
        sized.then_some(m)
    }

    /// Why this artifact is not what its manifest says (an output's bytes, the content hash), if it is not.
    fn verify(&self, dir: &Path) -> Option<String> {
        let mut listed = Vec::new();
        for o in &self.outputs {
            let path = dir.join(&o.file);
            let hash = if o.dir {
                hash_dir(&path)
            } else {
                hash_file(&path)
            };
            match hash {
                Ok(h) if h == o.blake3 => listed.push((o.file.clone(), h)),
                Ok(_) => return Some(format!("{} differs from its manifest", o.file)),
                Err(e) => return Some(format!("{}: {e}", o.file)),
            }
        }
        (combine(listed) != self.content_hash)
            .then(|| "the content hash is not the outputs' hash".to_owned())
    }
}

/// Every directory under `root` that reads as a complete artifact but is not one (hidden ones included: partial
/// directories, studies and their trial artifacts).
pub fn incomplete_artifacts(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Some(m) = StageManifest::read(&dir)
            && let Some(why) = m.verify(&dir)
        {
            problems.push(format!("{}: {why}", dir.display()));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    problems.sort();
    problems
}

/// A process seen in `/proc`, identified by pid and start time (a pid can be reused).
#[derive(Debug, Clone)]
pub struct Proc {
    pid: i32,
    ppid: i32,
    start: u64,
    /// When the crash test first saw it.
    seen: Instant,
}

impl Proc {
    /// Reads `/proc/PID/stat`: the parent and start time, or `None` when the process is gone or a zombie.
    fn read(pid: i32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if matches!(fields.first(), Some(&"Z" | &"X" | &"x")) {
            return None;
        }
        Some(Proc {
            pid,
            ppid: fields.get(1)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
            seen: Instant::now(),
        })
    }

    /// Whether this very process still runs.
    fn alive(&self) -> bool {
        Proc::read(self.pid).is_some_and(|p| p.start == self.start)
    }

    fn command(&self) -> String {
        args(self.pid).join(" ")
    }

    /// SIGKILL, if this very process still runs; whether it did.
    fn kill(&self) -> bool {
        if !self.alive() {
            return false;
        }
        kill_pid(self.pid)
    }
}

#[cfg(target_os = "linux")]
fn kill_pid(pid: i32) -> bool {
    use rustix::process::{Pid, Signal, kill_process};
    Pid::from_raw(pid).is_some_and(|p| kill_process(p, Signal::KILL).is_ok())
}

#[cfg(not(target_os = "linux"))]
fn kill_pid(_pid: i32) -> bool {
    false
}

/// Every live process.
fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Proc::read)
        .collect()
}

/// The live descendants of `pid` (children, their children, ...).
pub fn descendants(pid: i32) -> Vec<Proc> {
    let all = processes();
    let mut out: Vec<Proc> = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            parents.push(p.pid);
            out.push(p.clone());
        }
    }
    out
}

/// A process's command line.
fn args(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the runner has started the stage writing `output` (its process has `--output OUTPUT`); `None`
/// when the runner exits first.
fn wait_for_stage(runner: &mut Child, output: &Path) -> Result<Option<Proc>> {
    let runner_pid = runner.id() as i32;
    let output = output.to_string_lossy();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        let all = processes();
        let stage = all.into_iter().find(|p| {
            p.ppid == runner_pid && {
                let a = args(p.pid);
                a.windows(2).any(|w| w[0] == "--output" && w[1] == output)
            }
        });
        if stage.is_some() {
            return Ok(stage);
        }
        if runner.try_wait()?.is_some() {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
    runner.kill()?;
    runner.wait()?;
    bail!(
        "the runner did not start the stage writing {output} within {} s",
        START_TIMEOUT.as_secs()
    )
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the artifact crate writes it
/// (`2026-01-02T03:04:05.678Z`); `None` for anything else.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + s * 1000 + ms)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Copies the reference artifacts (not the runner's own folder) keeping modification times, so that the
/// runner trusts the copies' lock entries without hashing them again.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            if entry.file_name() != ".runner" {
                copy_tree(&path, &dest)?;
            }
        } else if meta.is_file() {
            std::fs::copy(&path, &dest)
                .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
            let file = std::fs::File::options().write(true).open(&dest)?;
            file.set_modified(meta.modified()?)
                .with_context(|| format!("setting the time of {}", dest.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kill_points_fall_one_in_each_slice_and_follow_the_seed() {
        let d = Duration::from_secs(10);
        let points = kill_points(&mut Rng::new(7), 5, d);
        assert_eq!(points.len(), 5);
        for (i, p) in points.iter().enumerate() {
            let slice = Duration::from_secs(2);
            assert!(
                *p >= slice * i as u32 && *p < slice * (i as u32 + 1),
                "{points:?}"
            );
        }
        assert_eq!(points, kill_points(&mut Rng::new(7), 5, d));
        assert_ne!(points, kill_points(&mut Rng::new(8), 5, d));
    }

    #[test]
    fn rfc3339_times_parse_to_epoch_milliseconds() {
        fn check(text: &str, expected: Option<i64>) {
            assert_eq!(parse_rfc3339_ms(text), expected, "{text}");
        }
        check("1970-01-01T00:00:00.000Z", Some(0));
        check("1970-01-02T00:00:01.5Z", Some(86_401_500));
        check("2000-03-01T00:00:00Z", Some(951_868_800_000));
        check("2026-12-04T18:18:48.123Z", Some(1_796_408_328_123));
        check("2026-13-04T18:18:48.123Z", None);
        check("2026-12-04 18:18:48Z", None);
        check("", None);
    }

    /// A committed artifact: `a.txt` and a folder output, hashed as mmrl-artifact hashes them.
    fn artifact(dir: &Path) {
        std::fs::create_dir_all(dir.join("models/m")).unwrap();
        std::fs::write(dir.join("a.txt"), b"hello").unwrap();
        std::fs::write(dir.join("models/m/w.bin"), b"weights").unwrap();
        let a = hash_file(&dir.join("a.txt")).unwrap();
        let m = hash_dir(&dir.join("models")).unwrap();
        let content = combine(vec![
            ("a.txt".into(), a.clone()),
            ("models".into(), m.clone()),
        ]);
        let manifest = serde_json::json!({
            "content_hash": content,
            "finished_at": "2026-01-01T00:00:00.000Z",
            "outputs": [
                { "file": "a.txt", "blake3": a, "bytes": 5 },
                { "file": "models", "blake3": m, "bytes": 7, "dir": true },
            ],
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }

    #[test]
    fn only_what_reads_as_complete_and_is_not_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        artifact(&root.join("good"));
        // A partial directory without a manifest does not read as complete.
        std::fs::create_dir_all(root.join(".x.partial-1-2")).unwrap();
        std::fs::write(root.join(".x.partial-1-2/a.txt"), b"hel").unwrap();
        assert_eq!(incomplete_artifacts(root), Vec::<String>::new());

        // Same sizes, other bytes: reads as complete, is not.
        artifact(&root.join("flipped"));
        std::fs::write(root.join("flipped/a.txt"), b"jello").unwrap();
        artifact(&root.join("hidden/.t.hpo-study/trials/0"));
        std::fs::write(
            root.join("hidden/.t.hpo-study/trials/0/models/m/w.bin"),
            b"WEIGHTS",
        )
        .unwrap();
        // A wrong size does not read as complete (the runner re-runs it), so it is not reported.
        artifact(&root.join("short"));
        std::fs::write(root.join("short/a.txt"), b"hell").unwrap();
        let found = incomplete_artifacts(root);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("flipped") && found[0].contains("a.txt differs"));
        assert!(found[1].contains("trials/0") && found[1].contains("models differs"));
    }

    #[test]
    fn a_measured_entry_allows_its_whole_stage_or_one_output() {
        let m = ["hpo".to_owned(), "eval:report.html".to_owned()];
        for (stage, file, expected) in [
            ("hpo", "trials.parquet", true),
            ("eval", "report.html", true),
            ("eval", "metrics.json", false),
            ("sft", "model.bpk", false),
            ("hp", "trials.parquet", false),
        ] {
            assert_eq!(measured(&m, stage, file), expected, "{stage}/{file}");
        }
    }

    #[test]
    fn descendants_are_found_through_proc_and_killed() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until the forked child has exec'd `sleep` it still reads as `sh`.
        let sleeping = |found: &[Proc]| found.iter().any(|p| p.command().starts_with("sleep 30"));
        let mut found = descendants(pid);
        while !sleeping(&found) && Instant::now() < deadline {
            std::thread::sleep(POLL);
            found = descendants(pid);
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].command().starts_with("sleep 30"), "{found:?}");
        assert!(found[0].kill());
        child.wait().unwrap();
        assert!(!found[0].alive());
    }
}
