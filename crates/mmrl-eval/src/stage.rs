//! The eval stage: checks the lineage of every input, decodes every test row select wrote with every model
//! (and our model with modalities masked), fits the baselines on train, measures which question types need
//! which modality, scores everything with the metrics of [`crate::metrics`], and commits `metrics.json`,
//! `predictions.parquet`, `report.md`, `report.html` and `summary.txt`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mmrl_artifact::sample::Split;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::predict::{Trained, load_models};
use mmrl_model::sft::{DeviceKind, decode_split_with};
use mmrl_model::vocab::normalize_answer;
use serde::Serialize;

use crate::baselines::{Baselines, ClassicalSettings};
use crate::bootstrap::{Interval, PairedTest, bootstrap_ci, derive_seed, paired_bootstrap};
use crate::config::EvalConfig;
use crate::coverage::Coverage;
use crate::error::{Error, Result, config_err, input_err};
use crate::metrics::{
    Abstention, Calibration, ClassReport, ExactMatch, Mae, RiskCoverage, Scored, abstention,
    calibration, confusion_matrix, evaluate, mae, risk_coverage, standard_metrics,
};
use crate::needs::{Rule, TypeNeeds};

/// Stage name in manifests.
pub const STAGE: &str = "eval";

/// Input names that hold additional model checkpoints (besides `model`, also any name starting `model_`).
pub const CHECKPOINT_INPUTS: [&str; 3] = ["sft", "rl", "compress"];

/// The stage inputs, sorted out by name.
#[derive(Debug, Clone, Default)]
pub struct EvalInputs {
    /// Samples (select) and the optional modality artifacts.
    pub data: InputPaths,
    /// The headline model artifact ("ours").
    pub model: PathBuf,
    /// Additional model artifacts, by input name (`sft`, `rl`, `compress`, `model_*`).
    pub models: Vec<(String, PathBuf)>,
    /// Prediction artifacts (table `predictions`: id, answer, optional logprob), by input name
    /// (`predictions_*`), scored as they are.
    pub predictions: Vec<(String, PathBuf)>,
    /// The hpo artifact (table `trials`), for the history plot.
    pub hpo: Option<PathBuf>,
    /// An `mmrl-rl compare` artifact: its models are scored on test for the RL comparison section.
    pub compare: Option<PathBuf>,
}

impl EvalInputs {
    /// Sorts `--input NAME=PATH` pairs into roles; unknown names and a missing `samples` or `model` are
    /// errors.
    pub fn from_named(inputs: &[(String, PathBuf)]) -> Result<Self> {
        let mut out = EvalInputs::default();
        let mut samples = None;
        let mut model = None;
        for (name, path) in inputs {
            let p = path.clone();
            match name.as_str() {
                "samples" => samples = Some(p),
                "image" => out.data.image = Some(p),
                "audio" => out.data.audio = Some(p),
                "tabular" => out.data.tabular = Some(p),
                "model" => model = Some(p),
                "hpo" => out.hpo = Some(p),
                "compare" => out.compare = Some(p),
                n if CHECKPOINT_INPUTS.contains(&n) || n.starts_with("model_") => {
                    out.models.push((n.to_owned(), p))
                }
                n if n.starts_with("predictions") => out.predictions.push((n.to_owned(), p)),
                other => {
                    return Err(config_err(
                        "--input",
                        format!(
                            "unknown input {other:?}; expected samples, image, audio, tabular, model, hpo, compare, sft, rl, compress, model_*, predictions_*"
                        ),
                    ));
                }
            }
        }
        out.data.samples =
            samples.ok_or_else(|| config_err("--input", "missing samples=SELECT_ARTIFACT"))?;
        out.model = model.ok_or_else(|| config_err("--input", "missing model=MODEL_ARTIFACT"))?;
        Ok(out)
    }
}

/// Refuses an input whose lineage fit on the test split, and a model artifact without lineage.
pub fn check_lineage(name: &str, artifact: &Artifact, is_model: bool) -> Result<()> {
    let m = artifact.manifest();
    let lineage = m.lineage_fit_splits();
    if lineage.iter().any(|s| s == "test") {
        let culprits: Vec<String> = std::iter::once((m.stage.clone(), m.fit_splits.clone()))
            .chain(
                m.inputs
                    .iter()
                    .map(|i| (i.name.clone(), i.lineage_fit_splits.clone())),
            )
            .filter(|(_, s)| s.iter().any(|x| x == "test"))
            .map(|(n, _)| n)
            .collect();
        return Err(Error::Lineage {
            path: artifact.dir().to_path_buf(),
            message: format!(
                "input {name:?} (stage {:?}) was fit on the test split (lineage fit splits {lineage:?}, via {}); \
                 eval refuses to score it: re-run that stage fitting on train (and val) only",
                m.stage,
                culprits.join(", ")
            ),
        });
    }
    if is_model && lineage.is_empty() {
        return Err(Error::Lineage {
            path: artifact.dir().to_path_buf(),
            message: format!(
                "model input {name:?} (stage {:?}) records no lineage: its manifest and its inputs list no fit splits, \
                 so eval cannot tell whether it ever saw test rows; re-run the stage that trained it",
                m.stage
            ),
        });
    }
    Ok(())
}

/// Input names under which a stage records the data it was trained or evaluated on.
pub const DATA_INPUTS: [&str; 4] = ["samples", "image", "audio", "tabular"];

/// Refuses a model (or predictions) artifact that was trained on other data than eval reads.
///
/// `data` maps each data input eval reads (`samples`, `image`, `audio`, `tabular`) to that artifact's
/// `content_hash`. Every input of `artifact` recorded under one of those names must carry the same hash:
/// a model trained on another select or modality artifact (another seed's split, say) may hold eval's test
/// rows in its train split. The check follows the recorded `model` input (rl, compress and predict record
/// the model they started from) back to the stage that trained on data; an upstream artifact that is no
/// longer at its recorded path, or was rebuilt there since, cannot be followed and is logged.
pub fn check_trained_on(
    name: &str,
    artifact: &Artifact,
    data: &BTreeMap<String, String>,
) -> Result<()> {
    let mut current = artifact.clone();
    let mut via: Vec<String> = vec![format!("{name:?} (stage {:?})", current.manifest().stage)];
    // A lineage chain is short; the bound only guards against a manifest cycle.
    for _ in 0..32 {
        let m = current.manifest();
        for input in m
            .inputs
            .iter()
            .filter(|i| DATA_INPUTS.contains(&i.name.as_str()))
        {
            let Some(ours) = data.get(&input.name) else {
                continue;
            };
            if &input.content_hash != ours {
                return Err(Error::Lineage {
                    path: current.dir().to_path_buf(),
                    message: format!(
                        "model input {} was trained on other data: its input {:?} ({}) has content hash {},                          but eval reads {:?} with content hash {}; its train split may hold eval's test rows,                          so eval refuses to score it: re-run it on the data eval reads",
                        via.join(" <- model "),
                        input.name,
                        input.path,
                        input.content_hash,
                        input.name,
                        ours
                    ),
                });
            }
        }
        let Some(upstream) = m
            .inputs
            .iter()
            .find(|i| i.name == "model" && i.kind == mmrl_artifact::InputKind::Artifact)
        else {
            return Ok(());
        };
        match Artifact::open(Path::new(&upstream.path)) {
            Ok(a) if a.manifest().content_hash == upstream.content_hash => {
                via.push(format!(
                    "{:?} (stage {:?})",
                    upstream.path,
                    a.manifest().stage
                ));
                current = a;
            }
            Ok(_) | Err(_) => {
                tracing::warn!(
                    input = name,
                    upstream = %upstream.path,
                    "the model this input started from is gone or rebuilt at its recorded path; \
                     its training data cannot be compared with eval's beyond this artifact"
                );
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One test sample.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRow {
    /// Index in the dataset.
    pub index: usize,
    /// Sample id.
    pub id: String,
    /// Question type.
    pub qtype: String,
    /// Task ("" when none).
    pub task: String,
    /// Reference answer.
    pub reference: String,
}

/// One prediction as read or decoded: id, answer, sequence log-probability.
pub type Prediction = (String, String, Option<f64>);

/// An answer aligned to a test row: the text and its log-probability.
pub type Aligned = (String, Option<f64>);

/// Orders `predictions` like `test`; an id outside the test split, an id given twice, or a test sample
/// without a prediction is an error naming the ids.
pub fn align(model: &str, test: &[TestRow], predictions: &[Prediction]) -> Result<Vec<Aligned>> {
    let index: HashMap<&str, usize> = test
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut out: Vec<Option<Aligned>> = vec![None; test.len()];
    let (mut unknown, mut duplicate) = (Vec::new(), Vec::new());
    for (id, answer, lp) in predictions {
        match index.get(id.as_str()) {
            None => unknown.push(id.clone()),
            Some(&i) if out[i].is_some() => duplicate.push(id.clone()),
            Some(&i) => out[i] = Some((answer.clone(), *lp)),
        }
    }
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
        format!(
            "{}{}",
            shown.join(", "),
            if v.len() > 5 { ", ..." } else { "" }
        )
    };
    if !unknown.is_empty() {
        return Err(Error::Predictions {
            model: model.to_owned(),
            message: format!(
                "{} prediction(s) for ids that are not test samples: {}",
                unknown.len(),
                list(&unknown)
            ),
        });
    }
    if !duplicate.is_empty() {
        return Err(Error::Predictions {
            model: model.to_owned(),
            message: format!(
                "{} id(s) predicted more than once: {}",
                duplicate.len(),
                list(&duplicate)
            ),
        });
    }
    let missing: Vec<String> = out
        .iter()
        .zip(test)
        .filter(|(o, _)| o.is_none())
        .map(|(_, r)| r.id.clone())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Predictions {
            model: model.to_owned(),
            message: format!(
                "{} of {} test samples have no prediction: {}",
                missing.len(),
                test.len(),
                list(&missing)
            ),
        });
    }
    Ok(out.into_iter().flatten().collect())
}

/// Which modalities a decode keeps; the others are masked (marked absent) for every sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Keep the image.
    pub image: bool,
    /// Keep the audio.
    pub audio: bool,
    /// Keep the tabular features.
    pub tabular: bool,
}

impl Keep {
    /// Every modality.
    pub const ALL: Keep = Keep {
        image: true,
        audio: true,
        tabular: true,
    };
}

/// Greedy answers of `model` on `indices`, with `keep` masking modalities.
pub fn decode(
    trained: &Trained,
    data: &Dataset,
    indices: &[usize],
    batch_size: usize,
    keep: Keep,
) -> Vec<Prediction> {
    let generated = decode_split_with(
        &trained.model,
        data,
        &trained.vocab,
        indices,
        batch_size,
        |batch| {
            if !keep.image
                && let Some(m) = batch.image.as_mut()
            {
                m.present.iter_mut().for_each(|p| *p = false);
            }
            if !keep.audio
                && let Some(m) = batch.audio.as_mut()
            {
                m.present.iter_mut().for_each(|p| *p = false);
            }
            if !keep.tabular
                && let Some(t) = batch.tabular.as_mut()
            {
                t.present.iter_mut().for_each(|p| *p = false);
            }
        },
    );
    indices
        .iter()
        .zip(generated)
        .map(|(&i, g)| {
            (
                data.samples[i].id.clone(),
                trained.vocab.decode_answer(&g.tokens),
                finite_logprob(g.logprob),
            )
        })
        .collect()
}

/// A decoded sequence log-probability as eval stores it: `None` when it is not finite (NaN or infinite
/// would poison calibration and risk-coverage).
pub fn finite_logprob(logprob: f32) -> Option<f64> {
    Some(f64::from(logprob)).filter(|x| x.is_finite())
}

/// What a scored system is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The headline model.
    Ours,
    /// Another trained checkpoint of the run (sft, rl, compressed).
    Checkpoint,
    /// Our model with modalities masked.
    Ablation,
    /// Majority or classical baseline.
    Baseline,
    /// Predictions read from an artifact.
    External,
}

/// A system's answers on the test split.
#[derive(Debug, Clone)]
pub struct System {
    /// Name (key under `baselines` in metrics.json).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Answers aligned to the test rows.
    pub answers: Vec<Aligned>,
}

/// The confusion matrix over all labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// Labels (sorted union of references and answers).
    pub labels: Vec<String>,
    /// `matrix[reference][answer]`.
    pub matrix: Vec<Vec<u64>>,
}

/// The detailed figures of the headline model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    /// Per-class precision/recall/F1 and averages.
    pub classes: ClassReport,
    /// Confusion matrix.
    pub confusion: Confusion,
    /// Calibration and the reliability diagram.
    pub calibration: Option<Calibration>,
    /// Risk-coverage by confidence threshold.
    pub risk_coverage: Option<RiskCoverage>,
}

/// Every figure of one system on the test split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemReport {
    /// What it is.
    pub kind: Kind,
    /// Test samples scored.
    pub samples: usize,
    /// Exact match overall.
    pub exact_match: f64,
    /// Its bootstrap interval.
    pub exact_match_ci: Option<Interval>,
    /// Exact match per question type.
    pub by_question: BTreeMap<String, f64>,
    /// Test samples per question type.
    pub by_question_samples: BTreeMap<String, usize>,
    /// Its bootstrap interval per question type.
    pub by_question_ci: BTreeMap<String, Interval>,
    /// Exact match per task.
    pub by_task: BTreeMap<String, f64>,
    /// Every standard metric overall (`null` where undefined).
    pub metrics: BTreeMap<String, Option<f64>>,
    /// Bootstrap intervals of the overall metrics.
    pub metrics_ci: BTreeMap<String, Interval>,
    /// Every standard metric per question type.
    pub by_question_metrics: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// Every standard metric per task.
    pub by_task_metrics: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// MAE on numeric answers with its coverage.
    pub mae: Option<Mae>,
    /// Abstention figures.
    pub abstention: Abstention,
    /// Exact match on the cross-modal question types together.
    pub cross_modal_exact_match: Option<f64>,
    /// Its bootstrap interval.
    pub cross_modal_ci: Option<Interval>,
    /// Per-class, confusion, calibration and risk-coverage detail (headline model only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

/// Paired bootstrap tests of ours against one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Exact match, all test samples.
    pub overall: Option<PairedTest>,
    /// Exact match, cross-modal question types only.
    pub cross_modal: Option<PairedTest>,
}

/// The cross-modal verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossModal {
    /// The question types that need two modalities (present in the test split).
    pub qtypes: Vec<String>,
    /// Where the list comes from: the `cross_modal` param, or derived from the leave-one-out ablations.
    pub source: String,
    /// Whether ours has a strictly higher exact match than every baseline and every ablation that keeps at
    /// most one modality, on the cross-modal types together and on each of them.
    pub ours_beats_all: bool,
    /// `system: qtype` pairs where ours does not win.
    pub not_beaten: Vec<String>,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsFile {
    /// Name of the headline model.
    pub headline: String,
    /// The split scored.
    pub split: String,
    /// Every test row of select is scored: how many, and which lost a modality to curation and why.
    pub test_rows: Coverage,
    /// The headline model's figures.
    pub test: SystemReport,
    /// Every other system (checkpoints, ablations, baselines, external predictions).
    pub baselines: BTreeMap<String, SystemReport>,
    /// Ours against each system.
    pub comparisons: BTreeMap<String, Comparison>,
    /// The cross-modal verdict.
    pub cross_modal: CrossModal,
    /// Per question type, the modalities it needs, measured with the leave-one-out ablations (empty without
    /// ablations).
    pub modality_needs: BTreeMap<String, TypeNeeds>,
    /// Where each optional report section came from, or why it is absent.
    pub sources: BTreeMap<String, String>,
    /// RL against its baselines on test, from the `compare` input (`mmrl-rl compare`), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rl_comparison: Option<RlComparison>,
    /// The resolved config.
    pub config: EvalConfig,
    /// The seed of the bootstrap.
    pub seed: u64,
}

/// The models of an `mmrl-rl compare` artifact scored on test: the table and what it shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlComparison {
    /// What the table shows, in words.
    pub legend: String,
    /// One row per run (mean over seeds), with paired-bootstrap differences per seed.
    pub table: mmrl_rl::compare::ComparisonTable,
}

/// Scores the models of the `compare` input on the test rows `indices` (none without the input).
fn rl_comparison(
    config: &EvalConfig,
    inputs: &EvalInputs,
    data: &Dataset,
    indices: &[usize],
) -> Result<Option<RlComparison>> {
    let Some(dir) = &inputs.compare else {
        return Ok(None);
    };
    let (report, table) = mmrl_rl::compare::evaluate_runs(
        dir,
        data,
        indices,
        "test",
        config.batch_size,
        config.bootstrap_samples,
    )
    .map_err(|e| input_err(dir, format!("scoring the compare artifact's models: {e}")))?;
    Ok(Some(RlComparison {
        legend: mmrl_rl::compare::legend(&report, &table),
        table,
    }))
}

fn scored(answers: &[Aligned], test: &[TestRow]) -> Vec<Scored> {
    answers
        .iter()
        .zip(test)
        .map(|((a, lp), r)| Scored::new(a, &r.reference, lp.map(f64::exp)))
        .collect()
}

fn subset(rows: &[Scored], test: &[TestRow], keep: impl Fn(&TestRow) -> bool) -> Vec<Scored> {
    rows.iter()
        .zip(test)
        .filter(|(_, t)| keep(t))
        .map(|(s, _)| s.clone())
        .collect()
}

/// Scores one system; `cross_modal` lists the cross-modal question types.
pub fn report_system(
    system: &System,
    test: &[TestRow],
    config: &EvalConfig,
    cross_modal: &[String],
    seed: u64,
    detail: bool,
) -> SystemReport {
    let rows = scored(&system.answers, test);
    let metrics = standard_metrics(config.ece_bins, &config.abstain_answer);
    let boot = |rows: &[Scored], metric: &dyn crate::metrics::Metric, key: &str| {
        bootstrap_ci(
            rows,
            metric,
            config.bootstrap_samples,
            config.confidence_level,
            derive_seed(seed, &format!("{}/{key}", system.name)),
        )
    };
    let mut metrics_ci = BTreeMap::new();
    for m in &metrics {
        if let Some(ci) = boot(&rows, m.as_ref(), m.name()) {
            metrics_ci.insert(m.name().to_owned(), ci);
        }
    }
    let qtypes: Vec<String> = test
        .iter()
        .map(|t| t.qtype.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let tasks: Vec<String> = test
        .iter()
        .map(|t| t.task.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut by_question = BTreeMap::new();
    let mut by_question_ci = BTreeMap::new();
    let mut by_question_samples = BTreeMap::new();
    let mut by_question_metrics = BTreeMap::new();
    for q in &qtypes {
        let sub = subset(&rows, test, |t| &t.qtype == q);
        by_question.insert(q.clone(), crate::metrics::exact_match(&sub));
        by_question_samples.insert(q.clone(), sub.len());
        if let Some(ci) = boot(&sub, &ExactMatch, &format!("qtype/{q}")) {
            by_question_ci.insert(q.clone(), ci);
        }
        by_question_metrics.insert(q.clone(), evaluate(&sub, &metrics));
    }
    let mut by_task = BTreeMap::new();
    let mut by_task_metrics = BTreeMap::new();
    for k in &tasks {
        let sub = subset(&rows, test, |t| &t.task == k);
        by_task.insert(k.clone(), crate::metrics::exact_match(&sub));
        by_task_metrics.insert(k.clone(), evaluate(&sub, &metrics));
    }
    let cross = subset(&rows, test, |t| cross_modal.contains(&t.qtype));
    let detail = detail.then(|| {
        let classes = ClassReport::new(&rows);
        let labels = classes.labels.clone();
        Detail {
            confusion: Confusion {
                matrix: confusion_matrix(&rows, &labels),
                labels,
            },
            classes,
            calibration: calibration(&rows, config.ece_bins),
            risk_coverage: risk_coverage(&rows),
        }
    });
    SystemReport {
        kind: system.kind,
        samples: rows.len(),
        exact_match: crate::metrics::exact_match(&rows),
        exact_match_ci: metrics_ci.get("exact_match").copied(),
        by_question,
        by_question_samples,
        by_question_ci,
        by_task,
        metrics: evaluate(&rows, &metrics),
        metrics_ci,
        by_question_metrics,
        by_task_metrics,
        mae: mae(&rows),
        abstention: abstention(&rows, &normalize_answer(&config.abstain_answer)),
        cross_modal_exact_match: (!cross.is_empty()).then(|| crate::metrics::exact_match(&cross)),
        cross_modal_ci: boot(&cross, &ExactMatch, "cross_modal"),
        detail,
    }
}

/// Paired tests of `ours` against `other` (exact match, overall and on the `cross_modal` types).
pub fn compare(
    ours: &System,
    other: &System,
    test: &[TestRow],
    config: &EvalConfig,
    cross_modal: &[String],
    seed: u64,
) -> Comparison {
    let a = scored(&ours.answers, test);
    let b = scored(&other.answers, test);
    let cross = |rows: &[Scored]| subset(rows, test, |t| cross_modal.contains(&t.qtype));
    let test_of = |rows: &[Scored], b: &[Scored], key: &str| {
        paired_bootstrap(
            rows,
            b,
            &ExactMatch,
            config.bootstrap_samples,
            config.confidence_level,
            derive_seed(seed, &format!("paired/{}/{key}", other.name)),
        )
    };
    Comparison {
        overall: test_of(&a, &b, "overall"),
        cross_modal: test_of(&cross(&a), &cross(&b), "cross_modal"),
    }
}

/// The cross-modal verdict over every baseline and every ablation that keeps at most one modality (one
/// that masks a single modality keeps two, and may rightly tie ours on a type that needs only those two).
/// Its `source` is left empty for the caller.
pub fn cross_modal_verdict(
    ours: &SystemReport,
    others: &BTreeMap<String, SystemReport>,
    cross_modal: &[String],
) -> CrossModal {
    let qtypes: Vec<String> = cross_modal
        .iter()
        .filter(|q| ours.by_question.contains_key(*q))
        .cloned()
        .collect();
    let mut not_beaten = Vec::new();
    for (name, r) in others {
        // Every baseline and every keep-one ablation (single modalities and question only).
        let keeps_one = r.kind == Kind::Ablation && !name.starts_with(&without_name(""));
        if !(r.kind == Kind::Baseline || keeps_one) {
            continue;
        }
        if let (Some(o), Some(b)) = (ours.cross_modal_exact_match, r.cross_modal_exact_match)
            && o <= b
        {
            not_beaten.push(format!("{name}: all cross-modal"));
        }
        for q in &qtypes {
            if let (Some(o), Some(b)) = (ours.by_question.get(q), r.by_question.get(q))
                && o <= b
            {
                not_beaten.push(format!("{name}: {q}"));
            }
        }
    }
    CrossModal {
        ours_beats_all: !qtypes.is_empty() && not_beaten.is_empty(),
        qtypes,
        source: String::new(),
        not_beaten,
    }
}

/// What eval reads from select's samples table itself, beside the joined dataset.
#[derive(Debug, Clone, Default)]
struct SelectRows {
    /// Task per sample id (rows with a task only).
    tasks: HashMap<String, String>,
    /// Every question type of the samples, sorted ("" for rows without one).
    qtypes: Vec<String>,
    /// Rows whose split is `test`.
    test_rows: usize,
}

/// Reads ids, splits, tasks and question types of every row of select's `samples` table.
fn read_select(samples: &Path) -> Result<SelectRows> {
    let artifact = Artifact::open(samples)?;
    let (_, batches) = artifact.read_table("samples")?;
    let mut out = SelectRows::default();
    let mut qtypes = std::collections::BTreeSet::new();
    for b in &batches {
        let utf8 = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (ids, splits, tasks, types) = (utf8("id"), utf8("split"), utf8("task"), utf8("qtype"));
        for i in 0..b.num_rows() {
            let value = |c| cell(c, i);
            if value(splits) == Some(Split::Test.as_str()) {
                out.test_rows += 1;
            }
            qtypes.insert(value(types).unwrap_or_default().to_owned());
            if let (Some(id), Some(task)) = (value(ids), value(tasks)) {
                out.tasks.insert(id.to_owned(), task.to_owned());
            }
        }
    }
    out.qtypes = qtypes.into_iter().collect();
    Ok(out)
}

/// The value of row `i` of a Utf8 column, `None` when the column is absent or the cell null.
fn cell(column: Option<&StringArray>, i: usize) -> Option<&str> {
    column.filter(|c| c.is_valid(i)).map(|c| c.value(i))
}

/// The test rows of `data`: every test row of select's table (the dataset keeps the test rows a modality
/// stage dropped, with that modality absent); a count that differs from select's is an error.
fn read_test_rows(data: &Dataset, samples: &Path, select: &SelectRows) -> Result<Vec<TestRow>> {
    let rows: Vec<TestRow> = data
        .split(Split::Test)
        .into_iter()
        .map(|i| {
            let s = &data.samples[i];
            TestRow {
                index: i,
                id: s.id.clone(),
                qtype: s.qtype.clone(),
                task: select.tasks.get(&s.id).cloned().unwrap_or_default(),
                reference: s.answer.clone(),
            }
        })
        .collect();
    if rows.is_empty() {
        return Err(input_err(
            samples,
            "the test split is empty: eval needs test samples (set split fractions in select so test gets rows)",
        ));
    }
    if rows.len() != select.test_rows {
        return Err(input_err(
            samples,
            format!(
                "eval would score {} of the {} test rows of table \"samples\"; it scores every test row",
                rows.len(),
                select.test_rows
            ),
        ));
    }
    Ok(rows)
}

/// Reads the `predictions` table of the artifact at `dir` (id and answer Utf8, optional logprob Float64).
/// A null id or answer, a logprob column of another type, or a non-finite logprob is an error naming the
/// row and the artifact.
pub fn read_predictions(name: &str, dir: &Path) -> Result<Vec<Prediction>> {
    let artifact = Artifact::open(dir)?;
    let (_, batches) = artifact.read_table("predictions")?;
    let bad_row = |row: usize, what: String| Error::Predictions {
        model: name.to_owned(),
        message: format!("{}: table \"predictions\" row {row} {what}", dir.display()),
    };
    let mut out = Vec::new();
    let mut row = 0usize;
    for b in &batches {
        let col = |c: &str| {
            b.column_by_name(c)
                .ok_or_else(|| input_err(dir, format!("table \"predictions\" has no column {c:?}")))
        };
        let ids = col("id")?
            .as_string_opt::<i32>()
            .ok_or_else(|| input_err(dir, "column \"id\" is not Utf8"))?;
        let answers = col("answer")?
            .as_string_opt::<i32>()
            .ok_or_else(|| input_err(dir, "column \"answer\" is not Utf8"))?;
        let lps = match b.column_by_name("logprob") {
            None => None,
            Some(c) => Some(
                c.as_primitive_opt::<arrow::datatypes::Float64Type>()
                    .ok_or_else(|| {
                        input_err(
                            dir,
                            format!("column \"logprob\" is {}, expected Float64", c.data_type()),
                        )
                    })?,
            ),
        };
        for i in 0..b.num_rows() {
            let r = row + i;
            if !ids.is_valid(i) {
                return Err(bad_row(r, "has a null id".into()));
            }
            if !answers.is_valid(i) {
                return Err(bad_row(
                    r,
                    format!("(id {:?}) has a null answer", ids.value(i)),
                ));
            }
            let lp = lps.and_then(|a| a.is_valid(i).then(|| a.value(i)));
            if let Some(v) = lp
                && !v.is_finite()
            {
                return Err(bad_row(
                    r,
                    format!(
                        "(id {:?}) has logprob {v}; expected a finite value or null",
                        ids.value(i)
                    ),
                ));
            }
            out.push((ids.value(i).to_owned(), answers.value(i).to_owned(), lp));
        }
        row += b.num_rows();
    }
    Ok(out)
}

/// What [`run`] returns for the binary's closing lines.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The metrics written.
    pub metrics: MetricsFile,
    /// Where `report.html` lands (inside the committed artifact).
    pub report_html: PathBuf,
}

/// An opened input: its name, the artifact, and whether it is a model (or predictions) artifact.
type Opened = (String, Artifact, bool);

/// Runs eval and commits the artifact at `output`.
pub fn run(config: &EvalConfig, inputs: &EvalInputs, output: &Path, seed: u64) -> Result<Summary> {
    config.validate()?;
    let opened = open_and_check_inputs(inputs)?;
    let select = read_select(&inputs.data.samples)?;
    config.check_against(&select.qtypes)?;

    // Every test row select wrote is scored; one whose media a curation stage dropped keeps that modality absent.
    let data = Dataset::load_keeping(&inputs.data, &[Split::Test])?;
    let test = read_test_rows(&data, &inputs.data.samples, &select)?;
    let indices: Vec<usize> = test.iter().map(|t| t.index).collect();
    let modality_artifacts: Vec<(&str, &Path)> = [
        ("image", inputs.data.image.as_deref()),
        ("audio", inputs.data.audio.as_deref()),
        ("tabular", inputs.data.tabular.as_deref()),
    ]
    .into_iter()
    .filter_map(|(m, p)| p.map(|p| (m, p)))
    .collect();
    let coverage = Coverage::measure(&data, &indices, select.test_rows, &modality_artifacts)?;
    tracing::info!(test = test.len(), "test split loaded");

    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let decoded = decode_checkpoints(config, inputs, &opened, &data, &test, &mut sources)?;
    let mut systems = decoded.systems;
    let mut leave_out: MaskedBy = Vec::new();
    if config.ablations
        && let Some(trained) = &decoded.ours
    {
        let (ablations, masks) = decode_ablations(config, trained, &data, &test)?;
        systems.extend(ablations);
        leave_out = masks;
    }
    systems.extend(fit_baselines(config, &data, &indices)?);

    let ours = systems
        .iter()
        .find(|s| s.kind == Kind::Ours)
        .cloned()
        .ok_or_else(|| input_err(&inputs.model, "the model artifact holds no model"))?;
    let modality_needs = measure_needs(config, seed, &test, &ours, &systems, &leave_out);
    let (cross_types, cross_source) = cross_modal_types(config, &modality_needs, &leave_out);

    // Scores.
    let test_report = report_system(&ours, &test, config, &cross_types, seed, true);
    let mut others = BTreeMap::new();
    let mut comparisons = BTreeMap::new();
    for s in systems.iter().filter(|s| s.kind != Kind::Ours) {
        others.insert(
            s.name.clone(),
            report_system(s, &test, config, &cross_types, seed, false),
        );
        comparisons.insert(
            s.name.clone(),
            compare(&ours, s, &test, config, &cross_types, seed),
        );
    }
    let mut cross_modal = cross_modal_verdict(&test_report, &others, &cross_types);
    cross_modal.source = cross_source;

    let history = training_history(&opened, &cross_types, &mut sources);
    let rl_comparison = rl_comparison(config, inputs, &data, &indices)?;
    let metrics = MetricsFile {
        headline: decoded.headline,
        split: "test".into(),
        test_rows: coverage,
        test: test_report,
        baselines: others,
        comparisons,
        cross_modal,
        modality_needs,
        sources,
        rl_comparison,
        config: config.clone(),
        seed,
    };
    let (md, html) = crate::report::render(&metrics, &history, config)?;
    let predictions = predictions_table(&systems, &test)?;
    commit(
        config,
        &opened,
        output,
        seed,
        &metrics,
        &predictions,
        (&md, &html),
    )?;
    let used: HashSet<&str> = systems.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(systems = used.len(), output = %output.display(), "eval committed");
    Ok(Summary {
        metrics,
        report_html: output.join("report.html"),
    })
}

/// Opens every input and checks hold-out discipline before anything is decoded: no input's lineage fit on
/// test, every model records a lineage, and every model was trained on the data eval reads.
fn open_and_check_inputs(inputs: &EvalInputs) -> Result<Vec<Opened>> {
    let mut opened: Vec<Opened> = Vec::new();
    let data_inputs: [(&str, Option<&PathBuf>); 4] = [
        ("samples", Some(&inputs.data.samples)),
        ("image", inputs.data.image.as_ref()),
        ("audio", inputs.data.audio.as_ref()),
        ("tabular", inputs.data.tabular.as_ref()),
    ];
    for (name, path) in data_inputs {
        if let Some(p) = path {
            opened.push((name.to_owned(), Artifact::open(p)?, false));
        }
    }
    opened.push(("model".to_owned(), Artifact::open(&inputs.model)?, true));
    for (name, p) in &inputs.models {
        opened.push((name.clone(), Artifact::open(p)?, true));
    }
    for (name, p) in &inputs.predictions {
        opened.push((name.clone(), Artifact::open(p)?, true));
    }
    if let Some(p) = &inputs.hpo {
        opened.push(("hpo".to_owned(), Artifact::open(p)?, false));
    }
    if let Some(p) = &inputs.compare {
        opened.push(("compare".to_owned(), Artifact::open(p)?, true));
    }
    for (name, artifact, is_model) in &opened {
        check_lineage(name, artifact, *is_model)?;
    }
    let data_hashes: BTreeMap<String, String> = opened
        .iter()
        .filter(|(n, _, is_model)| !is_model && DATA_INPUTS.contains(&n.as_str()))
        .map(|(n, a, _)| (n.clone(), a.manifest().content_hash.clone()))
        .collect();
    for (name, artifact, is_model) in &opened {
        if *is_model {
            check_trained_on(name, artifact, &data_hashes)?;
        }
    }
    Ok(opened)
}

/// The trained systems on the test split.
struct Decoded {
    /// Ours, every other checkpoint and every predictions input.
    systems: Vec<System>,
    /// Our model, for the ablations.
    ours: Option<Trained>,
    /// Its name.
    headline: String,
}

/// Decodes the test split with the headline model (the first model of its artifact is ours), every other
/// checkpoint (one that is the same artifact as ours is scored once), and reads every predictions input.
fn decode_checkpoints(
    config: &EvalConfig,
    inputs: &EvalInputs,
    opened: &[Opened],
    data: &Dataset,
    test: &[TestRow],
    sources: &mut BTreeMap<String, String>,
) -> Result<Decoded> {
    let indices: Vec<usize> = test.iter().map(|t| t.index).collect();
    let mut out = Decoded {
        systems: Vec::new(),
        ours: None,
        headline: String::new(),
    };
    let headline_hash = opened
        .iter()
        .find(|(n, _, _)| n == "model")
        .map(|(_, a, _)| a.manifest().content_hash.clone())
        .unwrap_or_default();
    for (k, (name, trained)) in load_models(&inputs.model, DeviceKind::Cpu)?
        .into_iter()
        .enumerate()
    {
        data.check_compatible(trained.model.config(), &inputs.data.samples)?;
        let preds = decode(&trained, data, &indices, config.batch_size, Keep::ALL);
        let answers = align(&name, test, &preds)?;
        tracing::info!(model = %name, "decoded test split");
        let kind = if k == 0 { Kind::Ours } else { Kind::Checkpoint };
        if k == 0 {
            out.headline = name.clone();
            out.ours = Some(trained);
        }
        out.systems.push(System {
            name,
            kind,
            answers,
        });
    }
    for (input, path) in &inputs.models {
        let artifact = Artifact::open(path)?;
        if artifact.manifest().content_hash == headline_hash {
            sources.insert(
                format!("checkpoint {input}"),
                "same artifact as the headline model; scored once".into(),
            );
            continue;
        }
        let models = load_models(path, DeviceKind::Cpu)?;
        let single = models.len() == 1;
        for (name, trained) in models {
            let name = if single { input.clone() } else { name };
            let name = if out.systems.iter().any(|s| s.name == name) {
                format!("{input}:{name}")
            } else {
                name
            };
            data.check_compatible(trained.model.config(), &inputs.data.samples)?;
            let preds = decode(&trained, data, &indices, config.batch_size, Keep::ALL);
            let answers = align(&name, test, &preds)?;
            tracing::info!(model = %name, "decoded test split");
            out.systems.push(System {
                name,
                kind: Kind::Checkpoint,
                answers,
            });
        }
    }
    for (name, path) in &inputs.predictions {
        let preds = read_predictions(name, path)?;
        let answers = align(name, test, &preds)?;
        out.systems.push(System {
            name: name.clone(),
            kind: Kind::External,
            answers,
        });
    }
    Ok(out)
}

/// The name of the ablation that keeps only `modality` (`question`: masks every modality).
pub fn keep_only_name(modality: &str) -> String {
    format!("ablation_{modality}_only")
}

/// The name of the ablation that masks only `modality`.
pub fn without_name(modality: &str) -> String {
    format!("ablation_without_{modality}")
}

/// Per modality, the name of the system that masks exactly that modality.
type MaskedBy = Vec<(String, String)>;

/// Our model with modalities masked: keeping one at a time (`ablation_X_only`) and none
/// (`ablation_question_only`), and, when it sees two modalities or more, masking one at a time
/// (`ablation_without_X`). Also returns, per modality, the system that masks exactly that modality (with a
/// single modality, the question-only ablation).
fn decode_ablations(
    config: &EvalConfig,
    trained: &Trained,
    data: &Dataset,
    test: &[TestRow],
) -> Result<(Vec<System>, MaskedBy)> {
    let indices: Vec<usize> = test.iter().map(|t| t.index).collect();
    let cfg = trained.model.config();
    let present: Vec<&str> = [
        ("image", cfg.image_shape.is_some() && data.image.is_some()),
        ("audio", cfg.audio_shape.is_some() && data.audio.is_some()),
        (
            "tabular",
            cfg.numeric_features + cfg.categorical_cardinalities.len() > 0
                && data.tabular.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(m, p)| p.then_some(m))
    .collect();
    let keep = |kept: &dyn Fn(&str) -> bool| Keep {
        image: kept("image"),
        audio: kept("audio"),
        tabular: kept("tabular"),
    };
    let mut variants: Vec<(String, Keep)> = present
        .iter()
        .map(|&m| (keep_only_name(m), keep(&|x| x == m)))
        .collect();
    variants.push((keep_only_name("question"), keep(&|_| false)));
    let mut masks = Vec::new();
    for &m in &present {
        if present.len() >= 2 {
            variants.push((without_name(m), keep(&|x| x != m)));
            masks.push((m.to_owned(), without_name(m)));
        } else {
            masks.push((m.to_owned(), keep_only_name("question")));
        }
    }
    let mut systems = Vec::new();
    for (name, keep) in variants {
        let preds = decode(trained, data, &indices, config.batch_size, keep);
        let answers = align(&name, test, &preds)?;
        tracing::info!(ablation = %name, "decoded test split");
        systems.push(System {
            name,
            kind: Kind::Ablation,
            answers,
        });
    }
    Ok((systems, masks))
}

/// The majority and classical baselines, fit on the train rows only, answering the test rows.
fn fit_baselines(config: &EvalConfig, data: &Dataset, indices: &[usize]) -> Result<Vec<System>> {
    let classical = config.classical_baselines.then_some(ClassicalSettings {
        pool: config.pool,
        logistic_alpha: config.logistic_alpha,
        logistic_max_iterations: config.logistic_max_iterations,
        tree_max_depth: config.tree_max_depth,
        question_words: config.question_words,
    });
    let baselines = Baselines::fit(data, classical)?;
    Ok(baselines
        .predict(data, indices)
        .into_iter()
        .map(|(name, answers)| System {
            name,
            kind: Kind::Baseline,
            answers: answers
                .into_iter()
                .map(|(a, c)| (a, c.map(f64::ln)))
                .collect(),
        })
        .collect())
}

/// Which question types need which modality, from ours against each system of `leave_out` (modality,
/// system that masks it); empty without ablations.
fn measure_needs(
    config: &EvalConfig,
    seed: u64,
    test: &[TestRow],
    ours: &System,
    systems: &[System],
    leave_out: &[(String, String)],
) -> BTreeMap<String, TypeNeeds> {
    if leave_out.is_empty() {
        return BTreeMap::new();
    }
    let masked: Vec<(&str, Vec<Scored>)> = leave_out
        .iter()
        .filter_map(|(m, name)| {
            let s = systems.iter().find(|s| &s.name == name)?;
            Some((m.as_str(), scored(&s.answers, test)))
        })
        .collect();
    let qtypes: Vec<&str> = test.iter().map(|t| t.qtype.as_str()).collect();
    crate::needs::measure(
        &qtypes,
        &scored(&ours.answers, test),
        &masked,
        Rule {
            threshold: config.needs_threshold,
            samples: config.bootstrap_samples,
            level: config.confidence_level,
            seed,
        },
    )
}

/// The cross-modal question types and where they come from: the params' list, or the types measured as
/// needing two modalities or more.
fn cross_modal_types(
    config: &EvalConfig,
    needs: &BTreeMap<String, TypeNeeds>,
    leave_out: &[(String, String)],
) -> (Vec<String>, String) {
    if let Some(listed) = &config.cross_modal {
        return (listed.clone(), "the cross_modal param".into());
    }
    if leave_out.len() < 2 {
        let why = if !config.ablations {
            "ablations = false"
        } else {
            "the model sees fewer than two modalities"
        };
        return (
            Vec::new(),
            format!("nowhere: no cross_modal param, and none derived ({why})"),
        );
    }
    let types: Vec<String> = needs
        .iter()
        .filter(|(_, n)| n.is_cross_modal())
        .map(|(q, _)| q.clone())
        .collect();
    (
        types,
        format!(
            "the mask-one ablations: the types that need two modalities or more (needs_threshold {:.3})",
            config.needs_threshold
        ),
    )
}

/// The training-history figures of the model and hpo inputs.
fn training_history(
    opened: &[Opened],
    cross_types: &[String],
    sources: &mut BTreeMap<String, String>,
) -> crate::report::History {
    let model_artifacts: Vec<(String, Artifact)> = opened
        .iter()
        .filter(|(name, _, is_model)| *is_model && !name.starts_with("predictions"))
        .map(|(name, a, _)| (name.clone(), a.clone()))
        .collect();
    let hpo = opened
        .iter()
        .find(|(n, _, _)| n == "hpo")
        .map(|(_, a, _)| a.clone());
    crate::report::History::collect(&model_artifacts, hpo.as_ref(), cross_types, sources)
}

/// `predictions.parquet`: one row per (system, test sample).
fn predictions_table(
    systems: &[System],
    test: &[TestRow],
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("qtype", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("reference", DataType::Utf8, false),
        Field::new("logprob", DataType::Float64, true),
        Field::new("correct", DataType::Boolean, false),
    ]));
    let mut batches = Vec::new();
    for s in systems {
        let kind = serde_json::to_value(s.kind)?
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let text =
            |values: Vec<&str>| -> arrow::array::ArrayRef { Arc::new(StringArray::from(values)) };
        let of_test = |f: fn(&TestRow) -> &str| test.iter().map(f).collect::<Vec<_>>();
        batches.push(RecordBatch::try_new(
            schema.clone(),
            vec![
                text(vec![s.name.as_str(); test.len()]),
                text(vec![kind.as_str(); test.len()]),
                text(of_test(|t| t.id.as_str())),
                text(of_test(|t| t.task.as_str())),
                text(of_test(|t| t.qtype.as_str())),
                Arc::new(StringArray::from_iter_values(
                    s.answers.iter().map(|(a, _)| a.as_str()),
                )),
                text(of_test(|t| t.reference.as_str())),
                Arc::new(Float64Array::from(
                    s.answers.iter().map(|(_, lp)| *lp).collect::<Vec<_>>(),
                )),
                Arc::new(BooleanArray::from(
                    s.answers
                        .iter()
                        .zip(test)
                        .map(|((a, _), t)| normalize_answer(a) == normalize_answer(&t.reference))
                        .collect::<Vec<_>>(),
                )),
            ],
        )?);
    }
    Ok((schema, batches))
}

/// Writes the artifact: metrics, predictions, both reports and `summary.txt` (the headline the runner prints).
fn commit(
    config: &EvalConfig,
    opened: &[Opened],
    output: &Path,
    seed: u64,
    metrics: &MetricsFile,
    (schema, batches): &(SchemaRef, Vec<RecordBatch>),
    (md, html): (&str, &str),
) -> Result<()> {
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        seed: Some(seed),
    };
    let mut writer = ArtifactWriter::create(output, info)?;
    for (name, artifact, _) in opened {
        writer.input_artifact(name, artifact);
    }
    // The baselines are fit on train rows; the test split is only scored.
    writer.fit_splits(&["train"]);
    writer.write_json("metrics.json", Role::Report, metrics)?;
    writer.write_table("predictions", Role::Report, schema.clone(), batches)?;
    writer.write_bytes("report.md", Role::Report, md.as_bytes())?;
    writer.write_bytes("report.html", Role::Report, html.as_bytes())?;
    // Paths inside the artifact only: its content must not depend on where it is written.
    let summary = format!(
        "{}report: report.html, report.md, metrics.json in this artifact\n",
        crate::report::headline_table(metrics)
    );
    writer.write_bytes("summary.txt", Role::Report, summary.as_bytes())?;
    writer.commit()?;
    Ok(())
}
