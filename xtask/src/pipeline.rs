//! Pipeline files: parsing, `extends`, validation, and the stage DAG.
//!
//! ```toml
//! [pipeline]
//! name = "default"          # artifacts land in artifacts/<name>/<stage>/
//! seed = 42                 # every stage's seed unless it sets its own
//! dataset_stage = "generate" # the stage that `--dataset DIR` replaces
//!
//! [stages.ingest]
//! run = "mmrl-data ingest"  # binary (= package) and subcommand
//! inputs = { dataset = "generate/dataset" } # NAME = "STAGE" or "STAGE/OUTPUT"
//! [stages.ingest.params]    # handed to the stage, which validates it
//! max_reject_fraction = 0.2
//! ```
//!
//! A file may start from another with `extends = "other.toml"` at top level: tables are merged key by key, and
//! this file's values win.
//!
//! A pipeline that reads a user's dataset folder names it `$dataset` in its inputs
//! (`inputs = { dataset = "$dataset" }`); the folder is `[pipeline] dataset = "DIR"` (relative to the pipeline file
//! given on the command line) or `--dataset DIR`, which wins.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// A parsed, validated pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Pipeline-wide settings.
    pub pipeline: Settings,
    /// Stages by name.
    pub stages: BTreeMap<String, StageSpec>,
}

/// The `[pipeline]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Name of the artifact folder under `artifacts/`.
    pub name: String,
    /// Default seed of every stage.
    #[serde(default)]
    pub seed: u64,
    /// The stage whose output `--dataset DIR` replaces.
    pub dataset_stage: Option<String>,
    /// The dataset folder (or Parquet file) that inputs named [`DATASET_REF`] read, relative to the pipeline file
    /// given on the command line; `--dataset DIR` overrides it.
    pub dataset: Option<String>,
}

/// The input reference that reads the pipeline's dataset folder.
pub const DATASET_REF: &str = "$dataset";

/// One `[stages.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `"BINARY SUBCOMMAND"`: the stage binary (named as its package) and the stage within it.
    pub run: String,
    /// Inputs by the stage's name for them: `"STAGE"` (the artifact) or `"STAGE/OUTPUT"` (a file in it).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Parameters, passed to the stage as a TOML file and validated by the stage itself.
    #[serde(default)]
    pub params: toml::Table,
    /// Overrides the pipeline seed.
    pub seed: Option<u64>,
    /// A stage this one tunes (an hpo stage): the runner hands it the tuned stage's `run` and `params` as
    /// `params.trial = { run, params }`, and the tuned stage's inputs (those not produced by this stage; an
    /// input this stage declares itself under the same name wins).
    pub tune: Option<String>,
}

/// Where a stage input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Another stage's artifact, or one output inside it.
    Stage {
        /// The producing stage.
        stage: String,
        /// A file or folder inside its artifact; `None` for the whole artifact directory.
        output: Option<String>,
    },
    /// A path outside the pipeline (a user's dataset folder).
    External(PathBuf),
    /// The pipeline's dataset folder (`$dataset`), resolved by the runner.
    Dataset,
}

impl StageSpec {
    /// The binary and subcommand of `run`.
    pub fn command(&self) -> Result<(&str, &str)> {
        let mut parts = self.run.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(bin), Some(cmd), None) => Ok((bin, cmd)),
            _ => bail!(
                "run = {:?}: expected \"BINARY SUBCOMMAND\", e.g. \"mmrl-data ingest\"",
                self.run
            ),
        }
    }
}

impl Pipeline {
    /// Reads a pipeline file (following `extends`) and validates it.
    pub fn load(path: &Path) -> Result<Self> {
        let table = load_table(path, 0)?;
        let mut pipeline: Pipeline = table.try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end())
        })?;
        pipeline
            .resolve_tunes()
            .and_then(|()| pipeline.validate())
            .with_context(|| format!("{}", path.display()))?;
        Ok(pipeline)
    }

    /// Parses and validates pipeline text (no `extends`).
    pub fn parse(text: &str) -> Result<Self> {
        let mut pipeline: Pipeline =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        pipeline.resolve_tunes()?;
        pipeline.validate()?;
        Ok(pipeline)
    }

    /// Fills in what `tune = "STAGE"` implies: `params.trial = { run, params }` of the tuned stage, and its
    /// inputs (the tuning stage's own entries win). Inputs of the tuned stage that read the tuning stage itself
    /// (the overlay it feeds back) are left out, so the two stages do not form a cycle.
    fn resolve_tunes(&mut self) -> Result<()> {
        let tuners: Vec<(String, String)> = self
            .stages
            .iter()
            .filter_map(|(name, spec)| spec.tune.clone().map(|t| (name.clone(), t)))
            .collect();
        for (name, tuned) in tuners {
            if tuned == name {
                bail!("[stages.{name}] tune = {tuned:?}: a stage cannot tune itself");
            }
            let Some(target) = self.stages.get(&tuned).cloned() else {
                bail!(
                    "[stages.{name}] tune = {tuned:?}: unknown stage; stages are {}",
                    self.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            if target.tune.is_some() {
                bail!("[stages.{name}] tune = {tuned:?}: that stage is itself a tuner");
            }
            let inputs: BTreeMap<String, String> = target
                .inputs
                .iter()
                .filter(|(_, r)| !matches!(self.source(r), Source::Stage { stage, .. } if stage == name))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let spec = self
                .stages
                .get_mut(&name)
                .ok_or_else(|| anyhow::anyhow!("stage {name}"))?;
            if spec.params.contains_key("trial") {
                bail!(
                    "[stages.{name}.params] sets `trial`, which `tune = {tuned:?}` fills in; remove one of them"
                );
            }
            let mut trial = toml::Table::new();
            trial.insert("run".into(), toml::Value::String(target.run.clone()));
            trial.insert("params".into(), toml::Value::Table(target.params.clone()));
            spec.params
                .insert("trial".into(), toml::Value::Table(trial));
            for (input, reference) in inputs {
                spec.inputs.entry(input).or_insert(reference);
            }
        }
        Ok(())
    }

    /// Checks names, `run` strings, input references and that the stages form a DAG.
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            bail!("the pipeline has no [stages.*]");
        }
        for (name, spec) in &self.stages {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!("stage name {name:?}: use letters, digits, '-' and '_'");
            }
            spec.command().with_context(|| format!("[stages.{name}]"))?;
            for (input, reference) in &spec.inputs {
                if let Source::Stage { stage, .. } = self.source(reference) {
                    if !self.stages.contains_key(&stage) {
                        bail!(
                            "[stages.{name}] input {input} = {reference:?}: unknown stage {stage:?}; stages are {}",
                            self.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                        );
                    }
                    if stage == *name {
                        bail!("[stages.{name}] input {input} reads the stage's own output");
                    }
                }
            }
        }
        if let Some(ds) = &self.pipeline.dataset_stage
            && !self.stages.contains_key(ds)
        {
            bail!("[pipeline] dataset_stage = {ds:?} is not a stage");
        }
        self.order()?;
        Ok(())
    }

    /// Interprets an input reference.
    pub fn source(&self, reference: &str) -> Source {
        if reference == DATASET_REF {
            return Source::Dataset;
        }
        let (stage, output) = match reference.split_once('/') {
            Some((s, o)) => (s, Some(o.to_owned())),
            None => (reference, None),
        };
        Source::Stage {
            stage: stage.to_owned(),
            output,
        }
    }

    /// The stages each stage reads from.
    pub fn upstream(&self, name: &str) -> BTreeSet<String> {
        self.stages
            .get(name)
            .map(|spec| {
                spec.inputs
                    .values()
                    .filter_map(|r| match self.source(r) {
                        Source::Stage { stage, .. } if self.stages.contains_key(&stage) => {
                            Some(stage)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any stage reads the pipeline's dataset folder (`$dataset`).
    pub fn reads_dataset(&self) -> bool {
        self.stages
            .values()
            .any(|s| s.inputs.values().any(|r| r == DATASET_REF))
    }

    /// Stages in dependency order (ties by name); an error names the stages on a cycle.
    pub fn order(&self) -> Result<Vec<String>> {
        let mut indegree: BTreeMap<&str, usize> =
            self.stages.keys().map(|k| (k.as_str(), 0)).collect();
        let mut downstream: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.stages.keys() {
            for up in self.upstream(name) {
                *indegree.entry(name.as_str()).or_default() += 1;
                downstream.entry(up).or_default().push(name.clone());
            }
        }
        let mut ready: BTreeSet<String> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| (*n).to_owned())
            .collect();
        let mut order = Vec::with_capacity(self.stages.len());
        while let Some(next) = ready.pop_first() {
            for down in downstream.get(&next).into_iter().flatten() {
                if let Some(d) = indegree.get_mut(down.as_str()) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(down.clone());
                    }
                }
            }
            order.push(next);
        }
        if order.len() != self.stages.len() {
            let stuck: Vec<_> = self
                .stages
                .keys()
                .filter(|k| !order.contains(k))
                .cloned()
                .collect();
            bail!(
                "the stages {} form a cycle through their inputs",
                stuck.join(", ")
            );
        }
        Ok(order)
    }

    /// Stages downstream of `name`, itself included.
    pub fn descendants(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::from([name.to_owned()]);
        loop {
            let more: Vec<String> = self
                .stages
                .keys()
                .filter(|s| !out.contains(*s) && self.upstream(s).iter().any(|u| out.contains(u)))
                .cloned()
                .collect();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }

    /// Stages upstream of `name`, itself included.
    pub fn ancestors(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::from([name.to_owned()]);
        let mut todo = vec![name.to_owned()];
        while let Some(s) = todo.pop() {
            for up in self.upstream(&s) {
                if out.insert(up.clone()) {
                    todo.push(up);
                }
            }
        }
        out
    }
}

const MAX_EXTENDS_DEPTH: usize = 8;

fn load_table(path: &Path, depth: usize) -> Result<toml::Table> {
    if depth > MAX_EXTENDS_DEPTH {
        bail!(
            "{}: `extends` nests deeper than {MAX_EXTENDS_DEPTH} files (a loop?)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading pipeline file {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    match table.remove("extends") {
        None => Ok(table),
        Some(toml::Value::String(base)) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(&base);
            if base.trim().is_empty() || !base_path.is_file() {
                bail!(
                    "{}: extends = {base:?}: expected a pipeline file beside it, but {} is not a file",
                    path.display(),
                    base_path.display()
                );
            }
            let mut merged = load_table(&base_path, depth + 1)
                .with_context(|| format!("{}: extends = {base:?}", path.display()))?;
            merge(&mut merged, table);
            Ok(merged)
        }
        Some(other) => bail!(
            "{}: extends = {other}: expected a file name string",
            path.display()
        ),
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, any other value replaces. A table whose `kind`
/// differs from the base table's own `kind` (`pruner = { kind = "asha", ... }` over `{ kind = "median", ... }`) is a
/// different variant and replaces the base table whole, so no field of the old variant is left behind.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !matches!((o.get("kind"), b.get("kind")), (Some(k), Some(bk)) if k != bk) => {
                merge(b, o)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [pipeline]
        name = "t"
        [stages.a]
        run = "bin-a gen"
        [stages.b]
        run = "bin-b step"
        inputs = { x = "a/out" }
        [stages.c]
        run = "bin-b step"
        inputs = { x = "b", y = "a" }
    "#;

    /// Parses `text`, expecting an error that contains every fragment of `expected`.
    fn check_err(text: &str, expected: &[&str]) {
        let err = match Pipeline::parse(text) {
            Ok(_) => panic!("expected an error containing {expected:?}"),
            Err(e) => format!("{e:#}"),
        };
        for fragment in expected {
            assert!(err.contains(fragment), "error {err:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn orders_stages_by_their_inputs() {
        let p = Pipeline::parse(GOOD).unwrap();
        assert_eq!(p.order().unwrap(), ["a", "b", "c"]);
        assert_eq!(
            p.descendants("b"),
            BTreeSet::from(["b".to_owned(), "c".to_owned()])
        );
        assert_eq!(
            p.ancestors("b"),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            p.source("a/out"),
            Source::Stage {
                stage: "a".into(),
                output: Some("out".into())
            }
        );
    }

    #[test]
    fn dollar_dataset_names_the_pipeline_dataset_folder() {
        let p = Pipeline::parse(GOOD).unwrap();
        assert!(!p.reads_dataset());
        let text = GOOD.replace(
            "[stages.a]\n        run = \"bin-a gen\"",
            "[stages.a]\n        run = \"bin-a gen\"\n        inputs = { dataset = \"$dataset\" }",
        );
        let p = Pipeline::parse(&text.replace("name = \"t\"", "name = \"t\"\ndataset = \"../d\""))
            .unwrap();
        assert!(p.reads_dataset());
        assert_eq!(p.source("$dataset"), Source::Dataset);
        assert_eq!(p.pipeline.dataset.as_deref(), Some("../d"));
        // `$dataset` is no stage: it adds no edge to the DAG.
        assert_eq!(p.order().unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn bad_pipelines_get_clear_errors() {
        check_err(
            &GOOD.replace("run = \"bin-a gen\"", "run = \"bin-a gen\"\nrunn = 1"),
            &["unknown field", "runn"],
        );
        check_err(
            &GOOD.replace("name = \"t\"", "name = \"t\"\nsed = 1"),
            &["unknown field", "sed"],
        );
        check_err(
            &GOOD.replace("x = \"a/out\"", "x = \"nope/out\""),
            &["stages.b", "unknown stage \"nope\""],
        );
        check_err(
            &GOOD.replace(
                "[stages.a]\n        run = \"bin-a gen\"",
                "[stages.a]\n        run = \"bin-a gen\"\n        inputs = { z = \"c\" }",
            ),
            &["cycle", "a, b, c"],
        );
        check_err(
            &GOOD.replace("run = \"bin-a gen\"", "run = \"bin-a\""),
            &["stages.a", "BINARY SUBCOMMAND"],
        );
        check_err(
            &GOOD.replace("name = \"t\"", "name = \"t\"\ndataset_stage = \"zz\""),
            &["dataset_stage", "zz"],
        );
        check_err("[pipeline]\nname = \"t\"\n[stages]\n", &["no [stages.*]"]);
        check_err("[pipeline\n", &["TOML parse error"]);
    }

    #[test]
    fn tune_hands_the_tuner_the_tuned_stage_and_its_inputs() {
        let text = r#"
            [pipeline]
            name = "t"
            [stages.a]
            run = "bin-a gen"
            [stages.hpo]
            run = "bin-h hpo"
            tune = "b"
            inputs = { y = "a/extra" }
            [stages.hpo.params]
            n_trials = 3
            [stages.b]
            run = "bin-b train"
            inputs = { x = "a", overlay = "hpo" }
            [stages.b.params]
            lr = 0.1
        "#;
        let p = Pipeline::parse(text).unwrap();
        let hpo = &p.stages["hpo"];
        // The overlay input reads the tuner itself, so it is not handed on (no cycle).
        assert_eq!(
            hpo.inputs,
            BTreeMap::from([
                ("x".to_owned(), "a".to_owned()),
                ("y".to_owned(), "a/extra".to_owned())
            ])
        );
        let trial = hpo.params["trial"].as_table().unwrap();
        assert_eq!(trial["run"].as_str(), Some("bin-b train"));
        assert_eq!(trial["params"]["lr"].as_float(), Some(0.1));
        assert_eq!(hpo.params["n_trials"].as_integer(), Some(3));
        assert_eq!(p.order().unwrap(), ["a", "hpo", "b"]);

        check_err(
            &text.replace("tune = \"b\"", "tune = \"zz\""),
            &["stages.hpo", "tune = \"zz\"", "unknown stage"],
        );
        check_err(
            &text.replace("n_trials = 3", "n_trials = 3\ntrial = 1"),
            &["stages.hpo.params", "trial"],
        );
    }

    #[test]
    fn extends_merges_tables_and_overrides_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            GOOD.replace(
                "run = \"bin-a gen\"",
                "run = \"bin-a gen\"\n[stages.a.params]\nsamples = 4000\nkeep = true",
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("small.toml"),
            "extends = \"base.toml\"\n[stages.a.params]\nsamples = 10\n",
        )
        .unwrap();
        let p = Pipeline::load(&dir.path().join("small.toml")).unwrap();
        let params = &p.stages["a"].params;
        assert_eq!(params["samples"].as_integer(), Some(10));
        assert_eq!(params["keep"].as_bool(), Some(true));
        assert_eq!(p.stages.len(), 3);

        // A table of another `kind` replaces the base table; one of the same kind merges into it.
        std::fs::write(
            dir.path().join("kinds.toml"),
            GOOD.replace(
                "run = \"bin-a gen\"",
                "run = \"bin-a gen\"\n[stages.a.params]\nx = { kind = \"median\", startup = 2 }\ny = { kind = \"u\", lo = 1 }",
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("over.toml"),
            "extends = \"kinds.toml\"\n[stages.a.params]\nx = { kind = \"asha\", rf = 3 }\ny = { kind = \"u\", hi = 2 }\n",
        )
        .unwrap();
        let p = Pipeline::load(&dir.path().join("over.toml")).unwrap();
        let params = &p.stages["a"].params;
        let x = params["x"].as_table().unwrap();
        assert_eq!(x.len(), 2, "{x:?}");
        assert_eq!(x["kind"].as_str(), Some("asha"));
        let y = params["y"].as_table().unwrap();
        assert_eq!(
            (y["lo"].as_integer(), y["hi"].as_integer()),
            (Some(1), Some(2))
        );
        // A `kind` added over a base table without one merges: nothing of the base is lost.
        std::fs::write(
            dir.path().join("kindless.toml"),
            GOOD.replace(
                "run = \"bin-a gen\"",
                "run = \"bin-a gen\"\n[stages.a.params]\ns = { warmup = 5, min = 1 }",
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("addkind.toml"),
            "extends = \"kindless.toml\"\n[stages.a.params]\ns = { kind = \"cos\", warmup = 9 }\n",
        )
        .unwrap();
        let p = Pipeline::load(&dir.path().join("addkind.toml")).unwrap();
        let s = p.stages["a"].params["s"].as_table().unwrap();
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s["warmup"].as_integer(), Some(9));
        assert_eq!(p.stages.len(), 3);

        std::fs::write(dir.path().join("loop.toml"), "extends = \"loop.toml\"\n").unwrap();
        let err = format!(
            "{:#}",
            Pipeline::load(&dir.path().join("loop.toml")).unwrap_err()
        );
        assert!(err.contains("nests deeper"), "{err}");
    }
}
