//! Studies shared through a real PostgreSQL server (not a mock): workers as processes, a killed worker, the
//! same choices as the journal, and bad storage input. Each test works in its own schema (`?schema=...`) and
//! drops it afterwards.
//!
//! The server is `postgresql://postgres@127.0.0.1:5432/test` unless `MMRL_TEST_POSTGRES` names another. When
//! none answers, each test says why and returns (skipped); with `MMRL_REQUIRE_POSTGRES=1` (CI) it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mmrl-hpo");
const DEFAULT_SERVER: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// A schema of one test on the server, dropped (with its tables) when the test ends.
struct Schema {
    base: String,
    name: String,
    client: Client,
}

impl Schema {
    /// The storage URL of this schema.
    fn url(&self) -> String {
        format!("{}?schema={}", self.base, self.name)
    }

    /// Runs a query whose rows are read as JSON (one `json` column).
    fn rows(&mut self, sql: &str) -> Vec<Value> {
        let sql = sql.replace("{s}", &self.name);
        self.client
            .query(&format!("SELECT to_json(q)::text FROM ({sql}) q"), &[])
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
            .collect()
    }

    /// Whether the study exists yet.
    fn has_study(&mut self, name: &str) -> bool {
        let sql = format!("SELECT to_regclass('{}.studies') IS NOT NULL", self.name);
        let tables: bool = self.client.query_one(&sql, &[]).unwrap().get(0);
        tables
            && !self
                .rows(&format!(
                    "SELECT 1 AS one FROM {{s}}.studies WHERE name = '{name}'"
                ))
                .is_empty()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        if let Err(e) = self.client.batch_execute(&sql) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// A fresh schema on the test server, or `None` (test skipped) when no server answers and CI does not
/// require one.
fn schema(test: &str) -> Option<Schema> {
    let base = std::env::var("MMRL_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let mut config: postgres::Config = base.parse().unwrap();
    config.connect_timeout(Duration::from_secs(5));
    match config.connect(NoTls) {
        Ok(client) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let name = format!("t_{test}_{}_{nanos}", std::process::id());
            Some(Schema { base, name, client })
        }
        Err(e) => {
            let why = format!("no PostgreSQL server at {base} ({e})");
            if std::env::var("MMRL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("{why}, and MMRL_REQUIRE_POSTGRES=1 requires one");
            }
            eprintln!("skipped: {why}; set MMRL_TEST_POSTGRES to a server's URL to run this test");
            None
        }
    }
}

/// The hpo params of a toy study.
fn params(sampler: &str, n_trials: u64, toy: &str, extra: &str) -> String {
    format!(
        r#"sampler = "{sampler}"
n_trials = {n_trials}
workers = 1
{extra}
[trial]
run = "mmrl-hpo toy"
params = {{ x = 0.5, y = 0.5, kind = "a", fail = false, {toy} }}
[objective]
metric = "score"
direction = "maximize"
[pruner]
kind = "none"
[space]
x = {{ type = "float", low = 0.0, high = 1.0 }}
y = {{ type = "float", low = 0.0, high = 1.0 }}
kind = {{ type = "categorical", choices = ["a", "b"] }}
"#
    )
}

/// The hpo stage on `text` into `dir/hpo`, with extra arguments (e.g. `--storage`).
fn hpo(dir: &Path, text: &str, args: &[&str]) -> Command {
    let file = dir.join("hpo.params.toml");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .arg("hpo")
        .arg("--params")
        .arg(&file)
        .arg("--output")
        .arg(dir.join("hpo"))
        .args(["--seed", "3"])
        .args(args);
    cmd
}

/// `mmrl-hpo worker` on a study, working in `dir`.
fn worker(url: &str, study: &str, dir: &Path) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(["worker", "--storage", url, "--study", study]);
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits until `ready` holds, failing (with the stage's stderr) if `stage` exits first or it takes a minute.
fn wait_for(stage: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(status) = stage.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(stage.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the hpo stage exited ({status}) before {what}: {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {what} within a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(child: Child, who: &str) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{who} failed: {}", stderr(&out));
    out
}

#[test]
fn four_workers_share_one_study_without_losing_or_repeating_a_trial() {
    let Some(mut db) = schema("share") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let text = params("random", 160, "steps = 1, sleep_ms = 0", "");
    let mut stage = spawn(hpo(
        dir.path(),
        &text,
        &["--storage", &url, "--study", "shared"],
    ));
    wait_for(&mut stage, "the study was created", || {
        db.has_study("shared")
    });
    let workers: Vec<Child> = (0..4)
        .map(|i| spawn(worker(&url, "shared", &dir.path().join(format!("w{i}")))))
        .collect();
    let pids: Vec<u32> = workers.iter().map(Child::id).collect();
    for (i, w) in workers.into_iter().enumerate() {
        finish(w, &format!("worker {i}"));
    }
    finish(stage, "the hpo stage");

    let trials = db.rows(
        "SELECT number, state, lost, worker, params FROM {s}.trials t \
         JOIN {s}.studies s ON s.id = t.study_id WHERE s.name = 'shared' ORDER BY number",
    );
    let numbers: Vec<u64> = trials
        .iter()
        .map(|t| t["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..160).collect::<Vec<u64>>(), "trial numbers");
    for t in &trials {
        assert_eq!(t["state"], "complete", "{t}");
        assert_eq!(t["lost"], false, "{t}");
    }
    // Every worker process took part, and no two trials drew the same point.
    let ran_by: BTreeSet<String> = trials
        .iter()
        .map(|t| t["worker"].as_str().unwrap().to_owned())
        .collect();
    for pid in pids {
        assert!(
            ran_by.iter().any(|w| w.ends_with(&format!(":{pid}"))),
            "worker {pid} ran no trial; workers seen: {ran_by:?}"
        );
    }
    let points: BTreeSet<String> = trials.iter().map(|t| t["params"].to_string()).collect();
    assert_eq!(points.len(), 160, "distinct parameter draws");
    // The stage wrote the artifact of the whole study once it was done.
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("hpo/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["counts"]["complete"], 160, "{report}");
    assert!(report["storage"].as_str().unwrap().ends_with("#shared"));
}

#[test]
fn a_killed_workers_trial_is_failed_after_the_grace_period_and_retried() {
    let Some(mut db) = schema("kill") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    // Trials of about 1.5 s; a worker silent for 1.5 s is lost.
    let text = params(
        "random",
        6,
        "steps = 15, sleep_ms = 100",
        "heartbeat_interval_s = 0.2\ngrace_period_s = 1.5",
    );
    let mut stage = spawn(hpo(
        dir.path(),
        &text,
        &["--storage", &url, "--study", "kill"],
    ));
    wait_for(&mut stage, "the study was created", || db.has_study("kill"));
    let mut victim = spawn(worker(&url, "kill", &dir.path().join("victim")));
    let pid = victim.id();
    let mine = format!(
        "SELECT number, params FROM {{s}}.trials WHERE worker LIKE '%:{pid}' AND state = 'running'"
    );
    wait_for(&mut stage, "the worker started a trial", || {
        if let Some(status) = victim.try_wait().unwrap() {
            panic!("the worker exited ({status}) before starting a trial");
        }
        !db.rows(&mine).is_empty()
    });
    let running = db.rows(&mine);
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let killed = running[0]["number"].as_u64().unwrap();
    finish(stage, "the hpo stage");

    let trials = db.rows(
        "SELECT number, state, lost, error, retry_of, params, \
         extract(epoch FROM finished_at - heartbeat_at)::float8 AS silent_s FROM {s}.trials ORDER BY number",
    );
    let lost = &trials[killed as usize];
    assert_eq!(lost["state"], "failed", "{lost}");
    assert_eq!(lost["lost"], true, "{lost}");
    // Failed only once its last heartbeat was older than the grace period.
    assert!(lost["silent_s"].as_f64().unwrap() >= 1.5, "{lost}");
    let error = lost["error"].as_str().unwrap();
    assert!(
        error.contains("worker lost") && error.contains(&format!(":{pid}")),
        "{error}"
    );
    let retries: Vec<&Value> = trials
        .iter()
        .filter(|t| t["retry_of"].as_u64() == Some(killed))
        .collect();
    assert_eq!(retries.len(), 1, "{trials:?}");
    assert_eq!(retries[0]["params"], running[0]["params"]);
    assert_eq!(retries[0]["state"], "complete");
    let counted = trials.iter().filter(|t| t["lost"] == false).count();
    assert_eq!(counted, 6, "{trials:?}");
    assert!(trials.iter().all(|t| t["state"] != "running"), "{trials:?}");
}

/// The parameters of the journal's trials, by number.
fn journal_params(study_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(study_dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "start")
        .map(|e| e["params"].clone())
        .collect()
}

#[test]
fn the_journal_and_postgres_choose_the_same_parameters() {
    let Some(mut db) = schema("same") else {
        return;
    };
    // 12 trials: past GP's random start-up points (at most 10), so later choices depend on the values read back.
    let toy = "steps = 2, sleep_ms = 0";
    let journal_dir = tempfile::tempdir().unwrap();
    let out = hpo(journal_dir.path(), &params("gp", 12, toy, ""), &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let db_dir = tempfile::tempdir().unwrap();
    let storage = format!("storage = \"{}\"\nstudy = \"same\"", db.url());
    let out = hpo(db_dir.path(), &params("gp", 12, toy, &storage), &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let from_journal = journal_params(&journal_dir.path().join(".hpo.hpo-study"));
    let from_db: Vec<Value> = db
        .rows("SELECT params FROM {s}.trials ORDER BY number")
        .into_iter()
        .map(|r| r["params"].clone())
        .collect();
    assert_eq!(from_journal.len(), 12);
    assert_eq!(from_db, from_journal);
    let best = |d: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("hpo/best_params.json")).unwrap())
            .unwrap()
    };
    assert_eq!(best(db_dir.path()), best(journal_dir.path()));
}

/// Runs the stage on `url` (one trial; with `narrow_x`, another search space) and returns its stderr, asserting that it failed before any trial.
fn refused(dir: &Path, url: &str, narrow_x: bool) -> String {
    let storage = format!("storage = \"{url}\"\nstudy = \"bad\"");
    let mut text = params("random", 1, "steps = 1, sleep_ms = 0", &storage);
    if narrow_x {
        text = text.replace("low = 0.0, high = 1.0 }\ny", "low = 0.0, high = 0.5 }\ny");
    }
    let out = hpo(dir, &text, &[]).output().unwrap();
    assert!(!out.status.success(), "{url}: the stage succeeded");
    assert!(
        !dir.join(".hpo.hpo-study/trials/0.params.toml").exists(),
        "{url}: a trial started"
    );
    let e = stderr(&out);
    assert!(
        !e.contains("s3cret"),
        "{url}: the password is in the message: {e}"
    );
    e
}

fn assert_has(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "{text:?} lacks {w:?}");
    }
}

#[test]
fn bad_storage_input_is_refused_before_any_trial_naming_the_url() {
    let Some(mut db) = schema("bad") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = db
        .base
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let schema = db.name.clone();

    let e = refused(
        dir.path(),
        "postgresql://postgres:s3cret@127.0.0.1:1/test",
        false,
    );
    assert_has(
        &e,
        &[
            "postgresql://postgres@127.0.0.1:1/test",
            "cannot connect",
            "is it running",
        ],
    );

    let url = format!("postgresql://postgres:s3cret@{host}/mmrl_no_such_db?schema={schema}");
    let e = refused(dir.path(), &url, false);
    assert_has(
        &e,
        &[&url.replace(":s3cret", ""), "expected an existing database"],
    );

    let url = format!("postgresql://mmrl_no_such_user:s3cret@{host}/test?schema={schema}");
    let e = refused(dir.path(), &url, false);
    assert_has(&e, &[&url.replace(":s3cret", ""), "expected a user"]);

    let e = refused(
        dir.path(),
        "postgress://postgres:s3cret@127.0.0.1/test",
        false,
    );
    assert_has(
        &e,
        &[
            "postgress://postgres@127.0.0.1/test",
            "not a storage URL",
            "postgresql://USER",
        ],
    );
    let e = refused(
        dir.path(),
        "postgresql://postgres:s3cret@127.0.0.1:54x2/test",
        false,
    );
    assert_has(
        &e,
        &[
            "postgresql://postgres@127.0.0.1:54x2/test",
            "cannot read the URL",
            "expected",
        ],
    );

    // A study of this name with another search space.
    let url = db.url().replace("postgres@", "postgres:s3cret@");
    let ok = hpo(
        dir.path(),
        &params(
            "random",
            1,
            "steps = 1, sleep_ms = 0",
            &format!("storage = \"{url}\"\nstudy = \"bad\""),
        ),
        &[],
    )
    .output()
    .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let other = tempfile::tempdir().unwrap();
    let e = refused(other.path(), &url, true);
    assert_has(
        &e,
        &[&db.url(), "study \"bad\" exists with another search space"],
    );
    assert_eq!(
        db.rows("SELECT number FROM {s}.trials").len(),
        1,
        "no trial was added"
    );

    // Tables of a newer version of mmrl-hpo.
    db.client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}_new; CREATE TABLE {schema}_new.meta (key text PRIMARY KEY, value text); \
             INSERT INTO {schema}_new.meta VALUES ('schema_version', '99')"
        ))
        .unwrap();
    let url = format!("postgresql://postgres:s3cret@{host}/test?schema={schema}_new");
    let e = refused(other.path(), &url, false);
    db.client
        .batch_execute(&format!("DROP SCHEMA {schema}_new CASCADE"))
        .unwrap();
    assert_has(
        &e,
        &[&url.replace(":s3cret", ""), "version 99", "expected 1"],
    );

    // A worker for a study that does not exist lists the ones that do.
    let out = worker(&db.url(), "nope", &dir.path().join("w"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_has(&stderr(&out), &[&db.url(), "no study \"nope\"", "bad"]);
}
