//! Rewards: the [`Reward`] trait, the built-ins, their weighted combination with weight schedules, and
//! potential-based shaping for per-token rewards.
//!
//! A reward sees one generated answer with its sample ([`RewardContext`]: the reference answer when the row is
//! labeled, and the row's checker columns) and returns `Some(value)` or `None` when it does not apply to that
//! sample (numeric closeness on a yes/no question, exact match on a row without a demonstration). The
//! combined reward of a rollout is `sum_k w_k(step) * r_k` over the rewards that apply; each reward is also
//! logged on its own (mean and std over the samples it applied to). A non-finite value is an error that names
//! the reward and the sample, never a silent NaN in the loss. Rewards score a whole step's rollouts at once
//! ([`Reward::score_batch`]), so an external command ([`crate::external`]) runs once per step.

use std::collections::{BTreeMap, BTreeSet};

use mmrl_artifact::sample::ACCEPT;
use mmrl_model::vocab::{normalize_answer, numbers, token_f1};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::external::ExternalReward;

/// The checker column of the numeric tolerance reward: the largest distance from a valid answer that still
/// counts as right.
pub const TOLERANCE_COLUMN: &str = "check_tolerance";

/// The answer an abstaining policy gives.
pub const UNSURE: &str = mmrl_model::vocab::UNSURE;

/// What a reward sees of one rollout.
#[derive(Debug, Clone, Copy)]
pub struct RewardContext<'a> {
    /// Sample id (for error messages).
    pub sample_id: &'a str,
    /// Question type.
    pub qtype: &'a str,
    /// The question.
    pub question: &'a str,
    /// The reference answer, normalized (lowercase words joined by single spaces); `None` when the row is
    /// unlabeled (select's label budget): its demonstration is hidden from training.
    pub reference: Option<&'a str>,
    /// The generated answer, decoded and normalized.
    pub answer: &'a str,
    /// The generated answer token ids (without `<eos>`).
    pub tokens: &'a [u32],
    /// Answers of this question type in the labeled train rows (normalized).
    pub answer_set: Option<&'a BTreeSet<String>>,
    /// The row's checker cells by column name (`accept`, `check_*`), as the dataset holds them.
    pub checks: &'a BTreeMap<String, String>,
}

impl RewardContext<'_> {
    /// The answers a checker accepts for this row, normalized: the `accept` cell split at `|`, or else the
    /// reference answer when the row is labeled; `None` when the row has neither.
    pub fn valid_answers(&self) -> Option<Vec<String>> {
        match (self.checks.get(ACCEPT), self.reference) {
            (Some(cell), _) => Some(
                cell.split('|')
                    .map(normalize_answer)
                    .filter(|a| !a.is_empty())
                    .collect(),
            ),
            (None, Some(r)) => Some(vec![r.to_owned()]),
            (None, None) => None,
        }
    }
}

/// A reward function. Implement it for custom rewards and hand them to the stage with
/// [`RewardSet::build`].
pub trait Reward: Send + Sync {
    /// Name in the config and in the logs (`reward_<name>_mean`).
    fn name(&self) -> &str;
    /// The reward of one rollout, or `None` when it does not apply to this sample.
    fn score(&self, ctx: &RewardContext) -> Option<f64>;
    /// The rewards of a step's rollouts, in order; the stage calls this. The default scores each with
    /// [`Reward::score`]; a reward that runs something per call (an external command) overrides it, and its
    /// errors name the reward and the sample.
    fn score_batch(&self, ctxs: &[RewardContext]) -> Result<Vec<Option<f64>>> {
        Ok(ctxs.iter().map(|c| self.score(c)).collect())
    }
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// 1 when the answer equals the reference, else 0.
#[derive(Debug, Clone, Default)]
pub struct ExactMatch;

impl Reward for ExactMatch {
    fn name(&self) -> &str {
        "exact_match"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        Some(f64::from(u8::from(ctx.answer == ctx.reference?)))
    }
}

/// 1 when the answer is one of the row's valid answers ([`RewardContext::valid_answers`]: the `accept`
/// column, or the reference of a labeled row), else 0; `None` for a row with neither.
#[derive(Debug, Clone, Default)]
pub struct Accept;

impl Reward for Accept {
    fn name(&self) -> &str {
        "accept"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        let valid = ctx.valid_answers()?;
        Some(f64::from(u8::from(valid.iter().any(|v| v == ctx.answer))))
    }
}

/// For rows with a `check_tolerance` cell: 1 when the answer is a number within that distance of a valid
/// answer's number (the `accept` column, or the reference of a labeled row), else 0; `None` for other rows.
/// A tolerance that is not a finite number of at least 0 scores NaN, which the stage reports as an error (it
/// also checks every cell before training).
#[derive(Debug, Clone, Default)]
pub struct Tolerance;

/// The tolerance of a `check_tolerance` cell: a finite number of at least 0.
pub fn parse_tolerance(cell: &str) -> Option<f64> {
    cell.trim()
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t >= 0.0)
}

impl Reward for Tolerance {
    fn name(&self) -> &str {
        "tolerance"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        let cell = ctx.checks.get(TOLERANCE_COLUMN)?;
        let valid = ctx.valid_answers()?;
        let Some(tolerance) = parse_tolerance(cell) else {
            return Some(f64::NAN);
        };
        let single = |s: &str| match numbers(s)?.as_slice() {
            [x] => Some(*x),
            _ => None,
        };
        let Some(a) = single(ctx.answer) else {
            return Some(0.0);
        };
        let hit = valid
            .iter()
            .filter_map(|v| single(v))
            .any(|v| (a - v).abs() <= tolerance + 1e-12);
        Some(f64::from(u8::from(hit)))
    }
}

/// Token-level F1 between answer and reference (bag of words): partial credit for multi-token answers.
#[derive(Debug, Clone, Default)]
pub struct TokenF1;

impl Reward for TokenF1 {
    fn name(&self) -> &str {
        "token_f1"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        Some(token_f1(ctx.answer, ctx.reference?))
    }
}

/// For numeric references: `mean_t 1 / (1 + |a_t - r_t| / scale)` over the numbers, position by
/// position (0 for a non-numeric answer or a different count); `None` for non-numeric references.
#[derive(Debug, Clone)]
pub struct NumericCloseness {
    /// Distance at which the reward halves.
    pub scale: f64,
}

/// Numeric closeness of an answer to a numeric reference (see [`NumericCloseness`]).
pub fn numeric_closeness(answer: &str, reference: &str, scale: f64) -> Option<f64> {
    let r = numbers(reference)?;
    let Some(a) = numbers(answer) else {
        return Some(0.0);
    };
    if a.len() != r.len() {
        return Some(0.0);
    }
    let s: f64 = a
        .iter()
        .zip(&r)
        .map(|(x, y)| 1.0 / (1.0 + (x - y).abs() / scale))
        .sum();
    Some(s / r.len() as f64)
}

impl Reward for NumericCloseness {
    fn name(&self) -> &str {
        "numeric"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        numeric_closeness(ctx.answer, ctx.reference?, self.scale)
    }
}

/// 1 when the answer is well formed: one of the train answers of its question type (or the abstention
/// answer when abstention is on), else 0.
#[derive(Debug, Clone)]
pub struct FormatValidity {
    /// Whether `unsure` counts as well formed.
    pub allow_unsure: bool,
}

impl Reward for FormatValidity {
    fn name(&self) -> &str {
        "format"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        let set = ctx.answer_set?;
        let ok = set.contains(ctx.answer) || (self.allow_unsure && ctx.answer == UNSURE);
        Some(f64::from(u8::from(ok)))
    }
}

/// `-max(0, answer tokens - reference tokens)`: penalizes rambling past the reference length.
#[derive(Debug, Clone, Default)]
pub struct LengthPenalty;

impl Reward for LengthPenalty {
    fn name(&self) -> &str {
        "length"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        let excess = ctx.tokens.len().saturating_sub(words(ctx.reference?).len());
        Some(-(excess as f64))
    }
}

/// Calibrated abstention: `right` for a correct answer (one of [`RewardContext::valid_answers`]), `unsure` for
/// the answer `unsure`, `wrong` for a wrong one, with `wrong < unsure < right`: guessing pays only when the
/// policy is right often enough (with the defaults 1 / 0 / -1, when it is right more than half the time).
#[derive(Debug, Clone)]
pub struct Abstention {
    /// Reward of a correct answer.
    pub right: f64,
    /// Reward of `unsure`.
    pub unsure: f64,
    /// Reward of a wrong answer.
    pub wrong: f64,
}

impl Reward for Abstention {
    fn name(&self) -> &str {
        "abstention"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        let valid = ctx.valid_answers()?;
        Some(if valid.iter().any(|v| v == ctx.answer) {
            self.right
        } else if ctx.answer == UNSURE {
            self.unsure
        } else {
            self.wrong
        })
    }
}

/// One reward in the config (`[[stages.rl.params.rewards]]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// A built-in ([`BUILTINS`]), a custom reward's name, or any other name with `command`.
    pub name: String,
    /// Weight at step 0.
    pub weight: f64,
    /// Weight at `weight_steps` (linear in between, constant after); `None`: constant.
    #[serde(default)]
    pub weight_end: Option<f64>,
    /// Steps of the weight schedule (0: the whole run).
    #[serde(default)]
    pub weight_steps: u64,
    /// An external checker: the program and its arguments, run once per step with a JSON line per rollout on
    /// stdin, answering a line `{"score": x}` per rollout on stdout ([`crate::external`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Seconds the command may take per step (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

impl RewardSpec {
    /// A reward of constant `weight`.
    pub fn new(name: &str, weight: f64) -> Self {
        Self {
            name: name.to_owned(),
            weight,
            ..Self::default()
        }
    }

    /// The weight at `step` of a run of `total` steps.
    pub fn weight_at(&self, step: u64, total: u64) -> f64 {
        match self.weight_end {
            None => self.weight,
            Some(end) => {
                let span = if self.weight_steps == 0 {
                    total
                } else {
                    self.weight_steps
                }
                .max(1);
                let t = (step as f64 / span as f64).min(1.0);
                self.weight + (end - self.weight) * t
            }
        }
    }
}

/// Parameters of the built-in rewards (`[stages.rl.params.reward_params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardParams {
    /// Distance at which numeric closeness halves.
    pub numeric_scale: f64,
    /// Abstention reward of a correct answer.
    pub abstain_right: f64,
    /// Abstention reward of `unsure`.
    pub abstain_unsure: f64,
    /// Abstention reward of a wrong answer.
    pub abstain_wrong: f64,
}

impl Default for RewardParams {
    fn default() -> Self {
        Self {
            numeric_scale: 1.0,
            abstain_right: 1.0,
            abstain_unsure: 0.0,
            abstain_wrong: -1.0,
        }
    }
}

/// Names of the built-in rewards.
pub const BUILTINS: [&str; 8] = [
    "exact_match",
    "accept",
    "tolerance",
    "token_f1",
    "numeric",
    "format",
    "length",
    "abstention",
];

/// Potential-based shaping of per-token rewards (`[stages.rl.params.shaping]`): with potential
/// `Phi(prefix) = coef * (leading tokens that match the reference) / (reference length)` and `Phi = 0` at the
/// end of the answer, token `t` gets `gamma * Phi(s_{t+1}) - Phi(s_t)`. The shaped terms telescope, so
/// the optimal policy is unchanged (Ng et al. 1999) while each correct token gets credit at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    /// Scale of the potential (0: off).
    pub coef: f64,
    /// Discount of the shaping terms.
    pub gamma: f64,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        Self {
            coef: 0.0,
            gamma: 1.0,
        }
    }
}

/// The shaped per-token rewards of `tokens` (then `<eos>`): `tokens.len() + 1` values.
pub fn shaping(tokens: &[u32], reference: &[u32], config: &ShapingConfig) -> Vec<f64> {
    let n = tokens.len() + 1;
    if config.coef == 0.0 || reference.is_empty() {
        return vec![0.0; n];
    }
    let phi = |t: usize| -> f64 {
        // Potential of the prefix of the first t tokens; the terminal state (after <eos>) has 0.
        if t >= n {
            return 0.0;
        }
        let matched = tokens[..t]
            .iter()
            .zip(reference)
            .take_while(|(a, b)| a == b)
            .count();
        config.coef * matched as f64 / reference.len() as f64
    };
    (0..n).map(|t| config.gamma * phi(t + 1) - phi(t)).collect()
}

/// The configured rewards with their weights.
pub struct RewardSet {
    rewards: Vec<(RewardSpec, Box<dyn Reward>)>,
}

impl std::fmt::Debug for RewardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rewards.iter().map(|(s, _)| s))
            .finish()
    }
}

/// The scores of one rollout: combined, and each reward's own (`None`: not applicable).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// `sum_k w_k r_k` over the applicable rewards.
    pub total: f64,
    /// Each reward's value, in config order.
    pub each: Vec<Option<f64>>,
}

impl RewardSet {
    /// Checks the specs (names known, weights finite and not summing to zero) and builds the rewards;
    /// `custom` rewards are found by name after the built-ins.
    pub fn build(
        specs: &[RewardSpec],
        params: &RewardParams,
        custom: Vec<Box<dyn Reward>>,
    ) -> Result<Self> {
        validate_specs(specs, custom.iter().map(|c| c.name().to_owned()).collect())?;
        let abstention = specs.iter().any(|s| s.name == "abstention");
        let mut custom: Vec<Option<Box<dyn Reward>>> = custom.into_iter().map(Some).collect();
        let mut rewards = Vec::with_capacity(specs.len());
        for spec in specs {
            let r: Box<dyn Reward> = match spec.name.as_str() {
                _ if spec.command.is_some() => Box::new(ExternalReward::from_spec(spec)?),
                "exact_match" => Box::new(ExactMatch),
                "accept" => Box::new(Accept),
                "tolerance" => Box::new(Tolerance),
                "token_f1" => Box::new(TokenF1),
                "numeric" => Box::new(NumericCloseness {
                    scale: params.numeric_scale,
                }),
                "format" => Box::new(FormatValidity {
                    allow_unsure: abstention,
                }),
                "length" => Box::new(LengthPenalty),
                "abstention" => Box::new(Abstention {
                    right: params.abstain_right,
                    unsure: params.abstain_unsure,
                    wrong: params.abstain_wrong,
                }),
                name => custom
                    .iter_mut()
                    .find(|c| c.as_ref().is_some_and(|c| c.name() == name))
                    .and_then(Option::take)
                    .ok_or_else(|| unknown(name, &[]))?,
            };
            rewards.push((spec.clone(), r));
        }
        Ok(Self { rewards })
    }

    /// The names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.rewards.iter().map(|(s, _)| s.name.clone()).collect()
    }

    /// Scores one rollout at `step` of `total` steps.
    pub fn score(&self, ctx: &RewardContext, step: u64, total: u64) -> Result<Scored> {
        let mut all = self.score_batch(std::slice::from_ref(ctx), step, total)?;
        all.pop()
            .ok_or_else(|| Error::config("rewards", "scoring returned no value"))
    }

    /// Scores a step's rollouts at `step` of `total` steps: each reward scores the whole batch once.
    pub fn score_batch(
        &self,
        ctxs: &[RewardContext],
        step: u64,
        total: u64,
    ) -> Result<Vec<Scored>> {
        let mut out: Vec<Scored> = ctxs
            .iter()
            .map(|_| Scored {
                total: 0.0,
                each: Vec::with_capacity(self.rewards.len()),
            })
            .collect();
        for (spec, r) in &self.rewards {
            let values = r.score_batch(ctxs)?;
            if values.len() != ctxs.len() {
                return Err(Error::config(
                    "rewards",
                    format!(
                        "reward {} scored {} of {} rollouts",
                        spec.name,
                        values.len(),
                        ctxs.len()
                    ),
                ));
            }
            let w = spec.weight_at(step, total);
            for ((scored, v), ctx) in out.iter_mut().zip(values).zip(ctxs) {
                if let Some(x) = v {
                    if !x.is_finite() {
                        return Err(Error::BadReward {
                            name: spec.name.clone(),
                            value: x,
                            sample: ctx.sample_id.to_owned(),
                            answer: ctx.answer.to_owned(),
                        });
                    }
                    scored.total += w * x;
                }
                scored.each.push(v);
            }
        }
        Ok(out)
    }
}

fn unknown(name: &str, custom: &[String]) -> Error {
    let mut known: Vec<String> = BUILTINS.iter().map(|s| (*s).to_owned()).collect();
    known.extend(custom.iter().cloned());
    Error::config(
        "rewards.name",
        format!(
            "unknown reward {name:?}; known: {}; or give it a command (an external checker)",
            known.join(", ")
        ),
    )
}

/// Checks reward specs before any compute: at least one, names known (built-ins, `custom`, or any other name
/// with a `command`), no duplicates, finite weights whose start (and end) sums are not zero, commands that name
/// a program, positive timeouts.
pub fn validate_specs(specs: &[RewardSpec], custom: Vec<String>) -> Result<()> {
    if specs.is_empty() {
        return Err(Error::config(
            "rewards",
            "at least one reward is needed, e.g. [[stages.rl.params.rewards]] name = \"exact_match\" weight = 1.0",
        ));
    }
    let mut seen = BTreeSet::new();
    for s in specs {
        crate::external::validate_spec(s)?;
        let builtin = BUILTINS.contains(&s.name.as_str());
        if !builtin && !custom.contains(&s.name) && s.command.is_none() {
            return Err(unknown(&s.name, &custom));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(Error::config(
                "rewards.name",
                format!("reward {:?} is listed twice", s.name),
            ));
        }
        if !s.weight.is_finite() || s.weight_end.is_some_and(|w| !w.is_finite()) {
            return Err(Error::config(
                "rewards.weight",
                format!("weights of {:?} must be finite", s.name),
            ));
        }
    }
    let start: f64 = specs.iter().map(|s| s.weight).sum();
    let end: f64 = specs.iter().map(|s| s.weight_end.unwrap_or(s.weight)).sum();
    if start.abs() < 1e-12 || end.abs() < 1e-12 {
        return Err(Error::config(
            "rewards.weight",
            format!(
                "the weights sum to zero (start {start}, end {end}): the combined reward would carry no signal"
            ),
        ));
    }
    Ok(())
}

/// Mean and (population) standard deviation of the values that are present.
pub fn mean_std(values: impl IntoIterator<Item = Option<f64>>) -> (f64, f64) {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_CHECKS: BTreeMap<String, String> = BTreeMap::new();

    fn ctx<'a>(
        answer: &'a str,
        reference: &'a str,
        set: Option<&'a BTreeSet<String>>,
    ) -> RewardContext<'a> {
        RewardContext {
            sample_id: "s1",
            qtype: "q",
            question: "how many",
            reference: Some(reference),
            answer,
            tokens: &[7, 8, 9][..answer.split_whitespace().count().min(3)],
            answer_set: set,
            checks: &NO_CHECKS,
        }
    }

    fn check(r: &dyn Reward, cases: &[(&str, &str, Option<f64>)]) {
        let set: BTreeSet<String> = ["yes", "no", "3", "7 3"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for &(a, reference, want) in cases {
            let got = r.score(&ctx(a, reference, Some(&set)));
            match (got, want) {
                (Some(g), Some(w)) => assert!(
                    (g - w).abs() < 1e-9,
                    "{} {a:?} vs {reference:?}: {g} != {w}",
                    r.name()
                ),
                _ => assert_eq!(got, want, "{} {a:?} vs {reference:?}", r.name()),
            }
        }
    }

    #[test]
    fn builtins_score_as_documented() {
        check(
            &ExactMatch,
            &[("7 3", "7 3", Some(1.0)), ("7", "7 3", Some(0.0))],
        );
        check(
            &TokenF1,
            &[
                ("7 3", "7 3", Some(1.0)),
                ("7", "7 3", Some(2.0 / 3.0)),
                ("no", "7 3", Some(0.0)),
                ("3 7", "7 3", Some(1.0)),
            ],
        );
        check(
            &NumericCloseness { scale: 1.0 },
            &[
                ("3", "3", Some(1.0)),
                ("4", "3", Some(0.5)),
                ("6", "3", Some(0.25)),
                ("yes", "3", Some(0.0)),
                ("7 4", "7 3", Some(0.75)),
                ("7", "7 3", Some(0.0)),
                ("yes", "no", None),
            ],
        );
        check(
            &FormatValidity { allow_unsure: true },
            &[
                ("yes", "no", Some(1.0)),
                ("7 3", "3", Some(1.0)),
                ("blue", "no", Some(0.0)),
                ("unsure", "no", Some(1.0)),
            ],
        );
        check(
            &FormatValidity {
                allow_unsure: false,
            },
            &[("unsure", "no", Some(0.0))],
        );
        check(
            &LengthPenalty,
            &[("7 3", "3", Some(-1.0)), ("7", "7 3", Some(0.0))],
        );
        check(
            &Abstention {
                right: 1.0,
                unsure: 0.0,
                wrong: -1.0,
            },
            &[
                ("yes", "yes", Some(1.0)),
                ("unsure", "yes", Some(0.0)),
                ("no", "yes", Some(-1.0)),
            ],
        );
    }

    /// Checkers over the row: `accept` lists the valid answers (else the labeled reference counts), the
    /// tolerance is a column; an unlabeled row (no reference) is scored by its checkers only.
    #[test]
    fn checkers_read_the_rows_columns_and_unlabeled_rows_have_no_reference() {
        let checks = |accept: Option<&str>, tolerance: Option<&str>| -> BTreeMap<String, String> {
            let mut m = BTreeMap::new();
            if let Some(a) = accept {
                m.insert(ACCEPT.to_owned(), a.to_owned());
            }
            if let Some(t) = tolerance {
                m.insert(TOLERANCE_COLUMN.to_owned(), t.to_owned());
            }
            m
        };
        // (answer, reference, accept, tolerance) -> (accept, tolerance, exact_match, abstention)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let cases: [(Case, [Option<f64>; 4]); 9] = [
            (
                ("red", Some("blue"), Some("Red|blue"), None),
                [Some(1.0), None, Some(0.0), Some(1.0)],
            ),
            (
                ("green", Some("blue"), Some("red|blue"), None),
                [Some(0.0), None, Some(0.0), Some(-1.0)],
            ),
            (
                ("yes", None, Some("yes"), None),
                [Some(1.0), None, None, Some(1.0)],
            ),
            (("yes", None, None, None), [None, None, None, None]),
            (
                ("no", Some("no"), None, None),
                [Some(1.0), None, Some(1.0), Some(1.0)],
            ),
            (
                ("7", Some("5"), None, Some("2")),
                [Some(0.0), Some(1.0), Some(0.0), Some(-1.0)],
            ),
            (
                ("8", None, Some("5|11"), Some("2.5")),
                [Some(0.0), Some(0.0), None, Some(-1.0)],
            ),
            (
                ("red", Some("5"), None, Some("2")),
                [Some(0.0), Some(0.0), Some(0.0), Some(-1.0)],
            ),
            (
                ("5", Some("5"), None, Some("lots")),
                [Some(1.0), Some(f64::NAN), Some(1.0), Some(1.0)],
            ),
        ];
        let rewards: [&dyn Reward; 4] = [
            &Accept,
            &Tolerance,
            &ExactMatch,
            &Abstention {
                right: 1.0,
                unsure: 0.0,
                wrong: -1.0,
            },
        ];
        for ((answer, reference, accept, tolerance), want) in cases {
            let c = checks(accept, tolerance);
            let ctx = RewardContext {
                reference,
                checks: &c,
                ..ctx(answer, "", None)
            };
            for (r, w) in rewards.iter().zip(want) {
                let got = r.score(&ctx);
                let same = match (got, w) {
                    (Some(g), Some(w)) => (g.is_nan() && w.is_nan()) || (g - w).abs() < 1e-12,
                    (g, w) => g == w,
                };
                assert!(
                    same,
                    "{} on {answer:?} ({reference:?}, {c:?}): {got:?} != {w:?}",
                    r.name()
                );
            }
        }
        // A bad tolerance cell is an error naming the reward and the sample.
        let set =
            RewardSet::build(&[spec("tolerance", 1.0)], &RewardParams::default(), vec![]).unwrap();
        let c = checks(None, Some("-1"));
        let e = set
            .score(
                &RewardContext {
                    checks: &c,
                    ..ctx("5", "5", None)
                },
                0,
                1,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reward tolerance returned NaN for sample s1"),
            "{e}"
        );
    }

    #[test]
    fn format_without_an_answer_set_does_not_apply() {
        assert_eq!(
            FormatValidity {
                allow_unsure: false
            }
            .score(&ctx("yes", "no", None)),
            None
        );
    }

    fn spec(name: &str, weight: f64) -> RewardSpec {
        RewardSpec::new(name, weight)
    }

    struct Custom(f64);
    impl Reward for Custom {
        fn name(&self) -> &str {
            "custom"
        }
        fn score(&self, _: &RewardContext) -> Option<f64> {
            Some(self.0)
        }
    }

    #[test]
    fn combination_weights_schedules_and_bad_specs() {
        let specs = vec![
            spec("exact_match", 1.0),
            RewardSpec {
                weight_end: Some(1.0),
                weight_steps: 10,
                ..RewardSpec::new("numeric", 0.0)
            },
        ];
        let set = RewardSet::build(&specs, &RewardParams::default(), vec![]).unwrap();
        let c = ctx("4", "3", None);
        assert_eq!(
            set.score(&c, 0, 100).unwrap(),
            Scored {
                total: 0.0,
                each: vec![Some(0.0), Some(0.5)]
            }
        );
        assert!((set.score(&c, 5, 100).unwrap().total - 0.25).abs() < 1e-12);
        assert!((set.score(&c, 50, 100).unwrap().total - 0.5).abs() < 1e-12);
        // Not applicable: contributes nothing.
        assert_eq!(
            set.score(&ctx("yes", "yes", None), 50, 100).unwrap().each,
            vec![Some(1.0), None]
        );

        let err = |specs: &[RewardSpec]| {
            RewardSet::build(specs, &RewardParams::default(), vec![])
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[spec("bleu", 1.0)]).contains("unknown reward \"bleu\""));
        assert!(err(&[spec("exact_match", 1.0), spec("length", -1.0)]).contains("sum to zero"));
        assert!(err(&[]).contains("at least one reward"));
        assert!(err(&[spec("exact_match", 1.0), spec("exact_match", 1.0)]).contains("twice"));
    }

    #[test]
    fn custom_rewards_are_found_by_name_and_nan_is_an_error() {
        let specs = vec![spec("custom", 2.0)];
        let set = RewardSet::build(
            &specs,
            &RewardParams::default(),
            vec![Box::new(Custom(0.5))],
        )
        .unwrap();
        assert_eq!(set.score(&ctx("a", "b", None), 0, 1).unwrap().total, 1.0);
        let set = RewardSet::build(
            &specs,
            &RewardParams::default(),
            vec![Box::new(Custom(f64::NAN))],
        )
        .unwrap();
        let e = set
            .score(&ctx("a", "b", None), 0, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reward custom returned NaN for sample s1"),
            "{e}"
        );
    }

    #[test]
    fn shaping_telescopes_and_credits_matching_tokens() {
        let c = ShapingConfig {
            coef: 1.0,
            gamma: 1.0,
        };
        let f = shaping(&[7, 3], &[7, 3], &c);
        assert_eq!(f, vec![0.5, 0.5, -1.0]);
        assert!(
            f.iter().sum::<f64>().abs() < 1e-12,
            "telescopes to -Phi(start) = 0"
        );
        assert_eq!(shaping(&[7, 4], &[7, 3], &c), vec![0.5, 0.0, -0.5]);
        assert_eq!(
            shaping(&[1], &[7, 3], &ShapingConfig::default()),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn mean_std_skips_absent_values() {
        assert_eq!(mean_std([Some(1.0), None, Some(3.0)]), (2.0, 1.0));
        assert!(mean_std([None]).0.is_nan());
    }
}
