//! PostgreSQL storage: one study shared by workers on many machines, each opening it by URL.
//!
//! Tables live in their own schema (`mmrl_hpo` unless the URL says `?schema=NAME`), created on first use
//! with a schema version in `meta`, and are meant to be read with `psql`: `studies` (one row per study: its
//! search space, direction, budget, what a worker needs to run its trials, heartbeat settings), `trials`
//! (number, state, parameters as `jsonb`, value, error, duration, worker, heartbeat, the trial it retries) and
//! `trial_values` (intermediate values by step).
//!
//! Hand-out is transactional. Every change to a study's trials first increments its `studies.version` with an
//! `UPDATE` (a row lock held to the end of the transaction), so changes to one study are serialized and
//! stamped with increasing versions: starting a trial takes the lock, reads the trials that changed since this
//! worker last looked (all committed changes, since every earlier writer has committed), lets the study
//! choose the parameters, and inserts the trial under the study's next number, then commits. Two workers
//! never get one number (also the primary key), a suggestion sees every trial finished before it, and a
//! trial ends at most once (`UPDATE ... WHERE state = 'running'`), so none is lost or counted twice.
//!
//! Dead workers: the study loop sends a heartbeat for its running trials every `heartbeat_interval_s`; a
//! running trial whose heartbeat is older than `grace_period_s` (server clock) is marked failed and lost by
//! whichever worker notices, and its parameters are re-run under a new number (Optuna's heartbeat with the
//! retry callback). A worker whose trial was failed that way while it still ran finds it so when the trial
//! ends: the late result is discarded with a warning, and the re-run stands.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::Json;
use postgres::{Client, GenericClient, NoTls, Statement};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::space::Params;
use crate::storage::{Choose, Storage, TrialRecord, TrialState, fixed, started};

/// The version of the tables this build writes; a database at a newer version is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The schema the tables live in unless the URL names another (`?schema=NAME`).
pub const DEFAULT_SCHEMA: &str = "mmrl_hpo";

/// What a storage URL must look like, for error messages.
pub const URL_FORM: &str = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]";

/// Whether `url` names a database storage (rather than the journal).
pub fn is_db_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("postgresql://") || lower.starts_with("postgres://")
}

/// `url` without its password (userinfo and a `password=` parameter), for messages, logs and manifests.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or_default();
            format!("{user}{}", &authority[at..])
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    format!("{}{authority}{tail}", &url[..scheme_end])
}

/// A parsed storage URL: the connection settings, the schema and the URL as shown (no password).
#[derive(Clone)]
pub struct DbUrl {
    config: postgres::Config,
    schema: String,
    shown: String,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbUrl")
            .field("url", &self.shown)
            .field("schema", &self.schema)
            .finish()
    }
}

impl DbUrl {
    /// Parses `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME&...]` (other parameters are
    /// libpq's, e.g. `connect_timeout=5`). Without a password in the URL, `PGPASSWORD` is used if set.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact(url.trim());
        let bad = |message: String| Error::Storage {
            url: shown.clone(),
            message,
        };
        if !is_db_url(url) {
            return Err(bad(format!(
                "not a storage URL: expected \"journal\" or {URL_FORM}"
            )));
        }
        let (base, schema) = take_schema(url.trim()).map_err(&bad)?;
        let mut config = postgres::Config::from_str(&base)
            .map_err(|e| bad(format!("cannot read the URL ({e}): expected {URL_FORM}")))?;
        if config.get_user().is_none_or(str::is_empty) {
            return Err(bad(format!("no user in the URL: expected {URL_FORM}")));
        }
        if config.get_hosts().is_empty() {
            return Err(bad(format!("no host in the URL: expected {URL_FORM}")));
        }
        if config.get_password().is_none()
            && let Some(password) = std::env::var_os("PGPASSWORD")
        {
            config.password(password.to_string_lossy().as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("mmrl-hpo");
        }
        Ok(DbUrl {
            config,
            schema,
            shown,
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Storage {
            url: self.shown.clone(),
            message: message.into(),
        }
    }

    /// An error of a query, with what was being done.
    fn db<'a>(&'a self, action: &'a str) -> impl FnOnce(postgres::Error) -> Error + 'a {
        move |e| self.err(format!("{action}: {}", describe(&e)))
    }

    /// Connects, naming the URL and what was expected when it fails.
    pub fn connect(&self) -> Result<Client> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            let expected = match e.code() {
                Some(c)
                    if *c == SqlState::INVALID_PASSWORD
                        || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                {
                    "expected a user (and password) the server accepts"
                }
                Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
                    "expected an existing database (create it with `createdb`)"
                }
                Some(_) => "expected a PostgreSQL server that accepts this connection",
                None => "expected a PostgreSQL server accepting connections there (is it running?)",
            };
            self.err(format!("cannot connect: {}; {expected}", describe(&e)))
        })?;
        // Doubles travel as text inside JSON (the change feed): print them so they read back exactly.
        client
            .batch_execute("SET extra_float_digits = 3")
            .map_err(self.db("setting up the session"))?;
        Ok(client)
    }
}

/// Splits our own `schema=NAME` parameter off the URL (libpq does not know it) and checks the name.
fn take_schema(url: &str) -> std::result::Result<(String, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_SCHEMA.to_owned()));
    };
    let mut schema = DEFAULT_SCHEMA.to_owned();
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("schema", name)) => schema = name.to_owned(),
            _ => rest.push(kv),
        }
    }
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!(
            "schema={schema:?}: expected a lowercase SQL name (letters, digits, _; at most 63)"
        ));
    }
    let base = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, schema))
}

/// A driver error as one line: the server's message (and detail) for database errors, else the cause.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = s.source();
            }
            text
        }
    }
}

/// The tables of [`SCHEMA_VERSION`]; `{s}` is the schema.
const TABLES: &str = r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {s}.studies (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    direction text NOT NULL,
    n_trials bigint NOT NULL,
    space jsonb NOT NULL,
    definition jsonb NOT NULL,
    config_key text NOT NULL,
    heartbeat_interval_s double precision NOT NULL,
    grace_period_s double precision NOT NULL,
    next_number bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 0
);
CREATE TABLE {s}.trials (
    study_id bigint NOT NULL REFERENCES {s}.studies (id) ON DELETE CASCADE,
    number bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'complete', 'pruned', 'failed', 'interrupted')),
    params jsonb NOT NULL,
    value double precision,
    error text,
    lost boolean NOT NULL DEFAULT false,
    retry_of bigint,
    worker text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    duration_s double precision,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    version bigint NOT NULL,
    PRIMARY KEY (study_id, number)
);
CREATE INDEX trials_by_version ON {s}.trials (study_id, version);
CREATE INDEX trials_running ON {s}.trials (study_id) WHERE state = 'running';
CREATE TABLE {s}.trial_values (
    study_id bigint NOT NULL,
    number bigint NOT NULL,
    step bigint NOT NULL,
    value double precision NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (study_id, number, step),
    FOREIGN KEY (study_id, number) REFERENCES {s}.trials (study_id, number) ON DELETE CASCADE
);
CREATE INDEX trial_values_by_version ON {s}.trial_values (study_id, version);
"#;

/// Creates the tables on first use and checks the schema version; concurrent first uses wait on an advisory
/// lock, so exactly one creates them.
fn ensure_schema(url: &DbUrl, client: &mut Client) -> Result<()> {
    let s = url.schema();
    let mut tx = client
        .transaction()
        .map_err(url.db("starting a transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&advisory_key(s)])
        .map_err(url.db("locking the schema for setup"))?;
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{s}.meta")],
        )
        .and_then(|r| r.try_get(0))
        .map_err(url.db("looking for the tables"))?;
    if !exists {
        tx.batch_execute(&TABLES.replace("{s}", s))
            .map_err(url.db(&format!("creating the tables in schema {s}")))?;
        tx.execute(
            &format!("INSERT INTO {s}.meta (key, value) VALUES ('schema_version', $1)"),
            &[&SCHEMA_VERSION.to_string()],
        )
        .map_err(url.db("recording the schema version"))?;
        tracing::info!(
            url = url.shown(),
            schema = s,
            version = SCHEMA_VERSION,
            "created the hpo tables"
        );
    }
    let version: Option<String> = tx
        .query_opt(
            &format!("SELECT value FROM {s}.meta WHERE key = 'schema_version'"),
            &[],
        )
        .map_err(url.db("reading the schema version"))?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(url.db("reading the schema version"))?;
    let version = version
        .as_deref()
        .and_then(|v| v.trim().parse::<i64>().ok());
    match version {
        Some(v) if v == SCHEMA_VERSION => {}
        Some(v) if v > SCHEMA_VERSION => {
            return Err(url.err(format!(
                "schema {s} has version {v}, newer than this mmrl-hpo understands (expected {SCHEMA_VERSION}): \
                 upgrade mmrl-hpo on this machine, or use another schema (?schema=NAME)"
            )));
        }
        other => {
            return Err(url.err(format!(
                "schema {s}: {s}.meta holds schema_version {other:?}, expected {SCHEMA_VERSION}; it was not \
                 made by mmrl-hpo, use another schema (?schema=NAME)"
            )));
        }
    }
    tx.commit().map_err(url.db("committing the schema setup"))
}

/// A stable advisory-lock key for a schema name (FNV-1a).
fn advisory_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("mmrl-hpo:{schema}").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A study to create, or to join if it exists with the same search space and config.
#[derive(Debug, Clone)]
pub struct NewStudy {
    /// Its name (unique in the schema).
    pub name: String,
    /// Objective direction, for users reading the table.
    pub direction: crate::Direction,
    /// The trial budget, for users reading the table.
    pub n_trials: u64,
    /// The search space definition; a study of this name with another space is refused.
    pub space: Value,
    /// What a worker needs to run the study's trials (see [`crate::worker`]).
    pub definition: Value,
    /// A hash of everything that makes trials comparable; a study of this name under another key is refused.
    pub config_key: String,
    /// How often workers send heartbeats for their running trials.
    pub heartbeat_interval: Duration,
    /// How long a running trial may go without a heartbeat before it is failed and re-run.
    pub grace_period: Duration,
}

/// One study in PostgreSQL, as one worker sees it.
pub struct PgStorage {
    url: DbUrl,
    study: i64,
    name: String,
    worker: String,
    heartbeat: Duration,
    grace: Duration,
    definition: Value,
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage")
            .field("url", &self.url.shown)
            .field("study", &self.name)
            .field("worker", &self.worker)
            .finish()
    }
}

/// A connection with its prepared statements and this worker's copy of the study's trials.
struct Conn {
    client: Client,
    sql: Statements,
    cache: Cache,
}

/// The trials as of `version`: every change stamped `version` or lower has been read. Sorted by number
/// (numbers are dense, so a new trial is pushed at the end), and handed to a choice without copying.
#[derive(Default)]
struct Cache {
    version: i64,
    trials: Vec<TrialRecord>,
}

impl Cache {
    /// The trial of `number`, created from `fresh` when new.
    fn entry(&mut self, number: u64, fresh: impl FnOnce() -> TrialRecord) -> &mut TrialRecord {
        let at = match self.trials.binary_search_by_key(&number, |t| t.number) {
            Ok(i) => i,
            Err(i) => {
                self.trials.insert(i, fresh());
                i
            }
        };
        &mut self.trials[at]
    }
}

/// Statements prepared once per connection (one round trip each afterwards).
struct Statements {
    claim: Statement,
    changes: Statement,
    insert: Statement,
    finish: Statement,
    report: Statement,
    heartbeat: Statement,
    any_lost: Statement,
    lock: Statement,
    fail_lost: Statement,
}

impl Statements {
    fn prepare(url: &DbUrl, client: &mut Client) -> Result<Self> {
        let s = url.schema();
        let mut prep = |sql: String| {
            client
                .prepare(&sql)
                .map_err(url.db("preparing a statement"))
        };
        Ok(Statements {
            claim: prep(format!(
                "UPDATE {s}.studies SET version = version + 1, next_number = next_number + 1 \
                 WHERE id = $1 RETURNING version, next_number - 1"
            ))?,
            changes: prep(format!(
                "SELECT s.version, \
                   COALESCE((SELECT json_agg(json_build_object('number', t.number, 'state', t.state, \
                     'params', t.params, 'value', t.value, 'error', t.error, 'lost', t.lost, \
                     'retry_of', t.retry_of, 'started', extract(epoch FROM t.started_at)::float8, \
                     'duration_s', t.duration_s) ORDER BY t.number) \
                     FROM {s}.trials t WHERE t.study_id = s.id AND t.version > $2), '[]')::text, \
                   COALESCE((SELECT json_agg(json_build_array(v.number, v.step, v.value)) \
                     FROM {s}.trial_values v WHERE v.study_id = s.id AND v.version > $2), '[]')::text \
                 FROM {s}.studies s WHERE s.id = $1"
            ))?,
            insert: prep(format!(
                "INSERT INTO {s}.trials (study_id, number, state, params, retry_of, worker, version) \
                 VALUES ($1, $2, 'running', $3, $4, $5, $6)"
            ))?,
            finish: prep(format!(
                "WITH s AS (UPDATE {s}.studies SET version = version + 1 WHERE id = $1 RETURNING version) \
                 UPDATE {s}.trials t SET state = $3, value = $4, error = $5, duration_s = $6, \
                   finished_at = now(), version = s.version \
                 FROM s WHERE t.study_id = $1 AND t.number = $2 AND t.state = 'running' RETURNING t.number"
            ))?,
            report: prep(format!(
                "WITH s AS (UPDATE {s}.studies SET version = version + 1 WHERE id = $1 RETURNING version) \
                 INSERT INTO {s}.trial_values (study_id, number, step, value, version) \
                 SELECT $1::bigint, $2::bigint, $3::bigint, $4::float8, s.version FROM s \
                 ON CONFLICT (study_id, number, step) DO UPDATE \
                   SET value = excluded.value, version = excluded.version"
            ))?,
            heartbeat: prep(format!(
                "UPDATE {s}.trials SET heartbeat_at = now() \
                 WHERE study_id = $1 AND number = ANY($2) AND state = 'running'"
            ))?,
            any_lost: prep(format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.trials WHERE study_id = $1 AND state = 'running' \
                   AND heartbeat_at < now() - make_interval(secs => $2::float8))"
            ))?,
            lock: prep(format!(
                "UPDATE {s}.studies SET version = version + 1 WHERE id = $1 RETURNING version"
            ))?,
            fail_lost: prep(format!(
                "UPDATE {s}.trials SET state = 'failed', lost = true, finished_at = now(), \
                   duration_s = extract(epoch FROM now() - started_at)::float8, version = $3::bigint, \
                   error = format('worker lost: %s sent no heartbeat for %s s (grace period %s s); \
                     its parameters are re-run as a new trial', worker, \
                     round(extract(epoch FROM now() - heartbeat_at)::numeric, 1), $2::float8) \
                 WHERE study_id = $1 AND state = 'running' \
                   AND heartbeat_at < now() - make_interval(secs => $2::float8) RETURNING number"
            ))?,
        })
    }
}

/// A trial as the change feed returns it.
#[derive(Deserialize)]
struct ChangedTrial {
    number: u64,
    state: TrialState,
    params: Params,
    value: Option<f64>,
    error: Option<String>,
    lost: bool,
    retry_of: Option<u64>,
    started: f64,
    duration_s: Option<f64>,
}

/// This process as a worker: host and pid, recorded on the trials it runs.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// A study's row as joining reads it.
struct StudyRow {
    id: i64,
    config_key: String,
    definition: Value,
    heartbeat_s: f64,
    grace_s: f64,
}

impl PgStorage {
    /// Creates the study, or joins it when one of that name exists with the same search space and config
    /// key; another space or key is an error naming the study and the URL.
    pub fn create_or_join(url: &DbUrl, study: &NewStudy) -> Result<Self> {
        let mut client = url.connect()?;
        ensure_schema(url, &mut client)?;
        let s = url.schema();
        let inserted = client
            .query_opt(
                &format!(
                    "INSERT INTO {s}.studies (name, direction, n_trials, space, definition, config_key, \
                       heartbeat_interval_s, grace_period_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (name) DO NOTHING RETURNING id"
                ),
                &[
                    &study.name,
                    &direction_name(study.direction),
                    &i64::try_from(study.n_trials).unwrap_or(i64::MAX),
                    &Json(&study.space),
                    &Json(&study.definition),
                    &study.config_key,
                    &study.heartbeat_interval.as_secs_f64(),
                    &study.grace_period.as_secs_f64(),
                ],
            )
            .map_err(url.db(&format!("creating study {:?}", study.name)))?;
        if inserted.is_some() {
            tracing::info!(url = url.shown(), study = %study.name, "created the study");
        } else {
            let same_space: bool = client
                .query_one(
                    &format!("SELECT space = $2 FROM {s}.studies WHERE name = $1"),
                    &[&study.name, &Json(&study.space)],
                )
                .and_then(|r| r.try_get(0))
                .map_err(url.db(&format!("reading study {:?}", study.name)))?;
            let row = read_study(url, &mut client, &study.name)?;
            check_same_study(url, study, &row, same_space)?;
            tracing::info!(url = url.shown(), study = %study.name, "joined the existing study");
        }
        Self::join_with(url, client, &study.name)
    }

    /// Joins an existing study by name (a worker): an error lists the studies there when it does not exist.
    pub fn join(url: &DbUrl, name: &str) -> Result<Self> {
        let mut client = url.connect()?;
        ensure_schema(url, &mut client)?;
        Self::join_with(url, client, name)
    }

    fn join_with(url: &DbUrl, mut client: Client, name: &str) -> Result<Self> {
        let row = read_study(url, &mut client, name)?;
        let sql = Statements::prepare(url, &mut client)?;
        let seconds = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| url.err(format!("study {name:?}: {what} = {v} is not a duration")))
        };
        Ok(PgStorage {
            url: url.clone(),
            study: row.id,
            name: name.to_owned(),
            worker: worker_id(),
            heartbeat: seconds(row.heartbeat_s, "heartbeat_interval_s")?,
            grace: seconds(row.grace_s, "grace_period_s")?,
            definition: row.definition,
            conn: Mutex::new(Conn {
                client,
                sql,
                cache: Cache::default(),
            }),
        })
    }

    /// The study's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL (without password).
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// What the study's creator recorded for its workers.
    pub fn definition(&self) -> &Value {
        &self.definition
    }

    /// The grace period after which a silent worker's trials are failed.
    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// This worker's id as recorded on its trials.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    fn conn(&self) -> Result<MutexGuard<'_, Conn>> {
        self.conn
            .lock()
            .map_err(|_| self.url.err("the connection was poisoned by a panic"))
    }

    fn number(&self, n: u64) -> Result<i64> {
        i64::try_from(n).map_err(|_| self.url.err(format!("trial number {n} is out of range")))
    }

    /// Merges the changes since the cache's version (one statement, so one consistent snapshot).
    fn refresh(
        &self,
        client: &mut impl GenericClient,
        sql: &Statements,
        cache: &mut Cache,
    ) -> Result<()> {
        let row = client
            .query_one(&sql.changes, &[&self.study, &cache.version])
            .map_err(
                self.url
                    .db(&format!("reading the trials of study {:?}", self.name)),
            )?;
        let version: i64 = row
            .try_get(0)
            .map_err(self.url.db("reading the study version"))?;
        let trials: String = row.try_get(1).map_err(self.url.db("reading the trials"))?;
        let values: String = row
            .try_get(2)
            .map_err(self.url.db("reading intermediate values"))?;
        let trials: Vec<ChangedTrial> = serde_json::from_str(&trials).map_err(|e| {
            self.url
                .err(format!("study {:?}: unreadable trial row: {e}", self.name))
        })?;
        let values: Vec<(u64, u64, f64)> = serde_json::from_str(&values).map_err(|e| {
            self.url.err(format!(
                "study {:?}: unreadable intermediate value: {e}",
                self.name
            ))
        })?;
        for t in trials {
            let record = cache.entry(t.number, || TrialRecord {
                number: t.number,
                state: t.state,
                params: Params::new(),
                value: None,
                intermediate: BTreeMap::new(),
                error: None,
                started: t.started,
                duration_s: None,
                retry_of: None,
                lost: false,
            });
            record.state = t.state;
            record.params = t.params;
            record.value = t.value;
            record.error = t.error;
            record.lost = t.lost;
            record.retry_of = t.retry_of;
            record.started = t.started;
            record.duration_s = t.duration_s;
        }
        for (number, step, value) in values {
            if let Ok(i) = cache.trials.binary_search_by_key(&number, |t| t.number) {
                cache.trials[i].intermediate.insert(step, value);
            }
        }
        cache.version = version;
        Ok(())
    }

    /// Fails the running trials whose heartbeat is older than the grace period, under the study lock.
    fn fail_stale(&self, conn: &mut Conn) -> Result<Vec<u64>> {
        let Conn { client, sql, .. } = conn;
        let grace = self.grace.as_secs_f64();
        let any: bool = client
            .query_one(&sql.any_lost, &[&self.study, &grace])
            .and_then(|r| r.try_get(0))
            .map_err(self.url.db("looking for trials of lost workers"))?;
        if !any {
            return Ok(Vec::new());
        }
        let mut tx = client
            .transaction()
            .map_err(self.url.db("starting a transaction"))?;
        let version: i64 = tx
            .query_one(&sql.lock, &[&self.study])
            .and_then(|r| r.try_get(0))
            .map_err(self.url.db("locking the study"))?;
        let rows = tx
            .query(&sql.fail_lost, &[&self.study, &grace, &version])
            .map_err(self.url.db("failing the trials of lost workers"))?;
        tx.commit().map_err(self.url.db("committing"))?;
        rows.iter()
            .map(|r| r.try_get::<_, i64>(0).map(|n| n as u64))
            .collect::<std::result::Result<_, _>>()
            .map_err(self.url.db("reading failed trial numbers"))
    }
}

fn direction_name(d: crate::Direction) -> &'static str {
    match d {
        crate::Direction::Maximize => "maximize",
        crate::Direction::Minimize => "minimize",
    }
}

fn read_study(url: &DbUrl, client: &mut Client, name: &str) -> Result<StudyRow> {
    let s = url.schema();
    let row = client
        .query_opt(
            &format!(
                "SELECT id, config_key, definition, heartbeat_interval_s, grace_period_s \
                 FROM {s}.studies WHERE name = $1"
            ),
            &[&name],
        )
        .map_err(url.db(&format!("reading study {name:?}")))?;
    let Some(row) = row else {
        let names: Vec<String> = client
            .query(
                &format!("SELECT name FROM {s}.studies ORDER BY name LIMIT 20"),
                &[],
            )
            .map_err(url.db("listing studies"))?
            .iter()
            .filter_map(|r| r.try_get(0).ok())
            .collect();
        return Err(url.err(format!(
            "no study {name:?} in schema {s} (studies there: {}); start the hpo stage with this storage first, \
             it creates the study",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        )));
    };
    let read = |e| url.db(&format!("reading study {name:?}"))(e);
    let Json(definition): Json<Value> = row.try_get(2).map_err(read)?;
    Ok(StudyRow {
        id: row.try_get(0).map_err(read)?,
        config_key: row.try_get(1).map_err(read)?,
        definition,
        heartbeat_s: row.try_get(3).map_err(read)?,
        grace_s: row.try_get(4).map_err(read)?,
    })
}

/// Refuses to join a study of the same name made with another search space or config.
fn check_same_study(url: &DbUrl, new: &NewStudy, row: &StudyRow, same_space: bool) -> Result<()> {
    if !same_space {
        let theirs = row
            .definition
            .pointer("/config/space")
            .map(Value::to_string)
            .unwrap_or_default();
        return Err(url.err(format!(
            "study {:?} exists with another search space (it has {theirs}, this run has {}): choose another \
             `study` name, or delete the old study (DELETE FROM {}.studies WHERE name = '{}')",
            new.name,
            new.space,
            url.schema(),
            new.name
        )));
    }
    if row.config_key != new.config_key {
        return Err(url.err(format!(
            "study {:?} was created by another config (other params, seed, inputs or trial binary; config key \
             {} there, {} here), so its trials do not apply to this run: choose another `study` name, or delete \
             the old study (DELETE FROM {}.studies WHERE name = '{}')",
            new.name,
            short(&row.config_key),
            short(&new.config_key),
            url.schema(),
            new.name
        )));
    }
    Ok(())
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Deletes a study and its trials; returns whether it existed.
pub fn delete_study(url: &DbUrl, name: &str) -> Result<bool> {
    let mut client = url.connect()?;
    ensure_schema(url, &mut client)?;
    let n = client
        .execute(
            &format!("DELETE FROM {}.studies WHERE name = $1", url.schema()),
            &[&name],
        )
        .map_err(url.db(&format!("deleting study {name:?}")))?;
    Ok(n > 0)
}

impl Storage for PgStorage {
    fn start_trial(&self, params: &Params, retry_of: Option<u64>) -> Result<u64> {
        started(self.start_next(&mut fixed(params, retry_of))?)
    }

    fn start_next(&self, choose: &mut Choose<'_>) -> Result<Option<(u64, Params)>> {
        let mut guard = self.conn()?;
        let Conn { client, sql, cache } = &mut *guard;
        let mut tx = client
            .transaction()
            .map_err(self.url.db("starting a transaction"))?;
        // The study row lock: held until commit, so no other trial starts or ends meanwhile.
        let row = tx.query_one(&sql.claim, &[&self.study]).map_err(
            self.url
                .db(&format!("claiming a trial number in study {:?}", self.name)),
        )?;
        let version: i64 = row
            .try_get(0)
            .map_err(self.url.db("reading the study version"))?;
        let number: i64 = row
            .try_get(1)
            .map_err(self.url.db("reading the trial number"))?;
        self.refresh(&mut tx, sql, cache)?;
        // Nothing carries `version` yet but the row inserted below, which the next refresh reads back (and
        // which nothing carries at all if this transaction rolls back).
        cache.version = version - 1;
        let Some((params, retry_of)) = choose(&cache.trials)? else {
            // Dropping the transaction rolls back the claimed number and version.
            return Ok(None);
        };
        let retry_of = retry_of.map(|n| self.number(n)).transpose()?;
        tx.execute(
            &sql.insert,
            &[
                &self.study,
                &number,
                &Json(&params),
                &retry_of,
                &self.worker,
                &version,
            ],
        )
        .map_err(self.url.db(&format!("starting trial {number}")))?;
        tx.commit()
            .map_err(self.url.db(&format!("committing trial {number}")))?;
        Ok(Some((number as u64, params)))
    }

    fn report(&self, trial: u64, step: u64, value: f64) -> Result<()> {
        if !value.is_finite() {
            tracing::warn!(
                trial,
                step,
                value,
                "skipping a non-finite intermediate value"
            );
            return Ok(());
        }
        let (trial, step) = (self.number(trial)?, self.number(step)?);
        let mut guard = self.conn()?;
        let Conn { client, sql, .. } = &mut *guard;
        client
            .execute(&sql.report, &[&self.study, &trial, &step, &value])
            .map_err(
                self.url
                    .db(&format!("recording an intermediate value of trial {trial}")),
            )?;
        Ok(())
    }

    fn finish(
        &self,
        trial: u64,
        state: TrialState,
        value: Option<f64>,
        error: Option<String>,
        duration_s: f64,
    ) -> Result<()> {
        let number = self.number(trial)?;
        let value = value.filter(|v| v.is_finite());
        let mut guard = self.conn()?;
        let Conn { client, sql, .. } = &mut *guard;
        let ended = client
            .query(
                &sql.finish,
                &[
                    &self.study,
                    &number,
                    &state.as_str(),
                    &value,
                    &error,
                    &duration_s,
                ],
            )
            .map_err(self.url.db(&format!("recording the end of trial {trial}")))?;
        if ended.is_empty() {
            tracing::warn!(
                trial,
                state = state.as_str(),
                "the trial was no longer running in the study (its worker was presumed lost and it was \
                 failed and re-run); this result is discarded"
            );
        }
        Ok(())
    }

    fn trials(&self) -> Result<Vec<TrialRecord>> {
        let mut guard = self.conn()?;
        let Conn { client, sql, cache } = &mut *guard;
        self.refresh(client, sql, cache)?;
        Ok(cache.trials.clone())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.heartbeat)
    }

    fn heartbeat(&self, running: &[u64]) -> Result<()> {
        if running.is_empty() {
            return Ok(());
        }
        let numbers = running
            .iter()
            .map(|&n| self.number(n))
            .collect::<Result<Vec<i64>>>()?;
        let mut guard = self.conn()?;
        let Conn { client, sql, .. } = &mut *guard;
        client
            .execute(&sql.heartbeat, &[&self.study, &numbers])
            .map_err(self.url.db("sending heartbeats"))?;
        Ok(())
    }

    fn fail_lost(&self) -> Result<Vec<u64>> {
        let mut guard = self.conn()?;
        self.fail_stale(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_redact(url: &str, expected: &str) {
        assert_eq!(redact(url), expected, "{url}");
    }

    #[test]
    fn passwords_never_reach_messages() {
        check_redact(
            "postgresql://alice:s3cret@db.example:5432/hpo",
            "postgresql://alice@db.example:5432/hpo",
        );
        check_redact("postgres://alice@db/hpo", "postgres://alice@db/hpo");
        check_redact(
            "postgresql://a:p@h/d?schema=x&password=p2&connect_timeout=3",
            "postgresql://a@h/d?schema=x&connect_timeout=3",
        );
        check_redact("postgresql://h/d?password=p", "postgresql://h/d");
        check_redact("postgresql://a:p:q@h", "postgresql://a@h");
        check_redact("journal", "journal");
    }

    fn check_parse(url: &str, expected: std::result::Result<&str, &[&str]>) {
        match (DbUrl::parse(url), expected) {
            (Ok(u), Ok(schema)) => assert_eq!(u.schema(), schema, "{url}"),
            (Err(e), Err(words)) => {
                let text = e.to_string();
                for w in words {
                    assert!(text.contains(w), "{url}: {text:?} lacks {w:?}");
                }
                assert!(!text.contains("s3cret"), "{text}");
            }
            (got, want) => panic!("{url}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        check_parse("postgresql://postgres@127.0.0.1/test", Ok(DEFAULT_SCHEMA));
        check_parse(
            "postgres://postgres@127.0.0.1:5432/test?schema=mine",
            Ok("mine"),
        );
        check_parse(
            "postgresql://u:s3cret@h/d?connect_timeout=3&schema=s_2",
            Ok("s_2"),
        );
        check_parse(
            "postgress://u:s3cret@h/d",
            Err(&[
                "postgress://u@h/d",
                "not a storage URL",
                "postgresql://USER",
            ]),
        );
        check_parse("sqlite:///tmp/x.db", Err(&["not a storage URL"]));
        check_parse(
            "postgresql://u:s3cret@h/d?schema=Bad-Name",
            Err(&["schema=\"Bad-Name\"", "lowercase"]),
        );
        check_parse(
            "postgresql://u:s3cret@h/d?colour=blue",
            Err(&["postgresql://u@h/d?colour=blue", "cannot read the URL"]),
        );
        check_parse("postgresql://h/d", Err(&["no user"]));
    }
}
