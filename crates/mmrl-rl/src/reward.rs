//! Rewards: the [`Reward`] trait, the built-ins, their weighted combination with weight schedules, and
//! potential-based shaping for per-token rewards.
//!
//! A reward sees one generated answer with its sample ([`RewardContext`]) and returns `Some(value)` or
//! `None` when it does not apply to that sample (numeric closeness on a yes/no question). The combined
//! reward of a rollout is `sum_k w_k(step) * r_k` over the rewards that apply; each reward is also logged
//! on its own (mean and std over the samples it applied to). A non-finite value is an error that names the
//! reward and the sample, never a silent NaN in the loss.

use std::collections::BTreeSet;

use mmrl_model::vocab::{numbers, token_f1};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    /// The reference answer, normalized (lowercase words joined by single spaces).
    pub reference: &'a str,
    /// The generated answer, decoded and normalized.
    pub answer: &'a str,
    /// The generated answer token ids (without `<eos>`).
    pub tokens: &'a [u32],
    /// Answers of this question type in the train split (normalized).
    pub answer_set: Option<&'a BTreeSet<String>>,
}

/// A reward function. Implement it for custom rewards and hand them to the stage with
/// [`RewardSet::build`].
pub trait Reward: Send + Sync {
    /// Name in the config and in the logs (`reward_<name>_mean`).
    fn name(&self) -> &str;
    /// The reward of one rollout, or `None` when it does not apply to this sample.
    fn score(&self, ctx: &RewardContext) -> Option<f64>;
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
        Some(f64::from(u8::from(ctx.answer == ctx.reference)))
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
        Some(token_f1(ctx.answer, ctx.reference))
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
        numeric_closeness(ctx.answer, ctx.reference, self.scale)
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
        let excess = ctx.tokens.len().saturating_sub(words(ctx.reference).len());
        Some(-(excess as f64))
    }
}

/// Calibrated abstention: `right` for a correct answer, `unsure` for the answer `unsure`, `wrong` for a
/// wrong one, with `wrong < unsure < right`: guessing pays only when the policy is right often enough
/// (with the defaults 1 / 0 / -1, when it is right more than half the time).
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
        Some(if ctx.answer == ctx.reference {
            self.right
        } else if ctx.answer == UNSURE {
            self.unsure
        } else {
            self.wrong
        })
    }
}

/// One reward in the config (`[[stages.rl.params.rewards]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// A built-in (`exact_match`, `token_f1`, `numeric`, `format`, `length`, `abstention`) or a custom
    /// reward's name.
    pub name: String,
    /// Weight at step 0.
    pub weight: f64,
    /// Weight at `weight_steps` (linear in between, constant after); `None`: constant.
    #[serde(default)]
    pub weight_end: Option<f64>,
    /// Steps of the weight schedule (0: the whole run).
    #[serde(default)]
    pub weight_steps: u64,
}

impl RewardSpec {
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
pub const BUILTINS: [&str; 6] = [
    "exact_match",
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
                "exact_match" => Box::new(ExactMatch),
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
        let mut each = Vec::with_capacity(self.rewards.len());
        let mut sum = 0.0;
        for (spec, r) in &self.rewards {
            let v = r.score(ctx);
            if let Some(x) = v {
                if !x.is_finite() {
                    return Err(Error::BadReward {
                        name: spec.name.clone(),
                        value: x,
                        sample: ctx.sample_id.to_owned(),
                        answer: ctx.answer.to_owned(),
                    });
                }
                sum += spec.weight_at(step, total) * x;
            }
            each.push(v);
        }
        Ok(Scored { total: sum, each })
    }
}

fn unknown(name: &str, custom: &[String]) -> Error {
    let mut known: Vec<String> = BUILTINS.iter().map(|s| (*s).to_owned()).collect();
    known.extend(custom.iter().cloned());
    Error::config(
        "rewards.name",
        format!("unknown reward {name:?}; known: {}", known.join(", ")),
    )
}

/// Checks reward specs before any compute: at least one, names known (built-ins or `custom`), no
/// duplicates, finite weights whose start (and end) sums are not zero.
pub fn validate_specs(specs: &[RewardSpec], custom: Vec<String>) -> Result<()> {
    if specs.is_empty() {
        return Err(Error::config(
            "rewards",
            "at least one reward is needed, e.g. [[stages.rl.params.rewards]] name = \"exact_match\" weight = 1.0",
        ));
    }
    let mut seen = BTreeSet::new();
    for s in specs {
        if !BUILTINS.contains(&s.name.as_str()) && !custom.contains(&s.name) {
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

    fn ctx<'a>(
        answer: &'a str,
        reference: &'a str,
        set: Option<&'a BTreeSet<String>>,
    ) -> RewardContext<'a> {
        RewardContext {
            sample_id: "s1",
            qtype: "q",
            question: "how many",
            reference,
            answer,
            tokens: &[7, 8, 9][..answer.split_whitespace().count().min(3)],
            answer_set: set,
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
        RewardSpec {
            name: name.into(),
            weight,
            weight_end: None,
            weight_steps: 0,
        }
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
                name: "numeric".into(),
                weight: 0.0,
                weight_end: Some(1.0),
                weight_steps: 10,
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
