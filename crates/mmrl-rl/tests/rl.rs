//! The rl stage end to end on tiny artifacts: each algorithm moves the policy towards its reward, the
//! artifact loads like an sft one, a killed-and-resumed run ends identical, bad input fails before training.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../mmrl-model/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array};
use mmrl_artifact::Artifact;
use mmrl_model::data::InputPaths;
use mmrl_model::predict::load_trained;
use mmrl_model::schedule::{ScheduleConfig, ScheduleKind};
use mmrl_model::sft::{self, DeviceKind, SftConfig};
use mmrl_rl::algo::{Algorithm, Decay, EntropyConfig};
use mmrl_rl::replay::ReplayConfig;
use mmrl_rl::reward::{Reward, RewardContext, RewardSpec};
use mmrl_rl::stage::{self, Hooks, Outcome, RlConfig, RlInputs, RlReport};

/// A tiny sft model on 120 synthetic samples (a few epochs: good enough to start RL from).
fn sft_model(dir: &Path) -> (PathBuf, InputPaths) {
    let rows = common::rows(120);
    let inputs = common::inputs(dir, &rows);
    let cfg = SftConfig {
        d_model: Some(32),
        encoder_layers: Some(1),
        decoder_layers: Some(1),
        heads: Some(2),
        image_patch: 4,
        epochs: 3,
        batch_size: 16,
        lr: 3e-3,
        early_stopping_patience: 0,
        checkpoint_every: 0,
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = dir.join("sft");
    sft::run(&cfg, 1, &inputs, &out, sft::Hooks::default()).unwrap();
    (out, inputs)
}

fn spec(name: &str, weight: f64) -> RewardSpec {
    RewardSpec::new(name, weight)
}

fn tiny(algorithm: Algorithm) -> RlConfig {
    RlConfig {
        algorithm,
        steps: 12,
        batch_size: 16,
        group_size: 4,
        lr: 3e-3,
        eval_every: 6,
        eval_batch_size: 64,
        checkpoint_every: 0,
        epsilon: Decay::constant(0.1),
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn done(o: Outcome) -> Box<RlReport> {
    match o {
        Outcome::Done(r) => r,
        Outcome::Interrupted { step } => panic!("interrupted at {step}"),
    }
}

/// Rewards answering "yes", whatever the question: a target every algorithm must move towards.
struct SaysYes;
impl Reward for SaysYes {
    fn name(&self) -> &str {
        "says_yes"
    }
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        Some(f64::from(u8::from(ctx.answer == "yes")))
    }
}

fn column(artifact: &Artifact, table: &str, name: &str) -> Vec<f64> {
    let (_, batches) = artifact.read_table(table).unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
            (0..c.len())
                .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn check_learns(algorithm: Algorithm) {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model(dir.path());
    let mut cfg = tiny(algorithm);
    cfg.rewards = vec![spec("says_yes", 1.0)];
    if algorithm == Algorithm::Ppo {
        cfg.policy_epochs = 2;
        cfg.minibatches = 2;
    }
    if algorithm == Algorithm::Rft {
        cfg.kl_beta = 0.0;
    }
    let out = dir.path().join("rl");
    let hooks = Hooks {
        custom_rewards: vec![Box::new(SaysYes)],
        ..Default::default()
    };
    let inputs = RlInputs { model, data };
    let report = done(stage::run(&cfg, 5, &inputs, &out, hooks).unwrap());
    let artifact = Artifact::open(&out).unwrap();
    assert_eq!(artifact.manifest().fit_splits, ["train"]);
    let reward = column(&artifact, "metrics_steps", "reward_says_yes_mean");
    assert_eq!(reward.len(), 12);
    let first: f64 = reward[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = reward[9..].iter().sum::<f64>() / 3.0;
    assert!(
        last > first + 0.2,
        "{algorithm:?}: reward {first:.3} -> {last:.3} ({reward:?})"
    );
    for c in [
        "step",
        "reward",
        "kl",
        "entropy",
        "clip_fraction",
        "epsilon",
        "temperature",
        "lr",
        "zero_variance_fraction",
    ] {
        assert_eq!(column(&artifact, "metrics_steps", c).len(), 12, "{c}");
    }
    assert_eq!(column(&artifact, "metrics_val", "step"), [0.0, 6.0, 12.0]);
    // The artifact loads like an sft artifact.
    let trained = load_trained(&out, DeviceKind::Cpu).unwrap();
    assert_eq!(trained.model.config().d_model, 32);
    assert!(report.val_exact_match.is_finite());
    assert!(!stage::work_dir(&out).exists());
}

#[test]
fn grpo_moves_the_policy_towards_its_reward() {
    check_learns(Algorithm::Grpo);
}

#[test]
fn rloo_moves_the_policy_towards_its_reward() {
    check_learns(Algorithm::Rloo);
}

#[test]
fn ppo_moves_the_policy_towards_its_reward() {
    check_learns(Algorithm::Ppo);
}

/// Also the thread count: the uninterrupted run uses one thread, the killed and resumed one two (the
/// update's data-parallel shards then run concurrently); both must end byte-identical.
#[test]
fn killed_and_resumed_run_ends_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model(dir.path());
    let inputs = RlInputs { model, data };
    // PPO with replay and an adaptive entropy bonus: every piece of checkpointed state matters.
    let cfg = RlConfig {
        steps: 6,
        eval_every: 3,
        replay: ReplayConfig {
            enabled: true,
            batch: 4,
            capacity: 64,
            ..Default::default()
        },
        entropy: EntropyConfig {
            coef: 0.01,
            target: Some(0.5),
            ..Default::default()
        },
        dynamic_sampling: true,
        ..tiny(Algorithm::Ppo)
    };
    assert!(cfg.shards >= 2);
    mmrl_model::parallel::set_threads(1);
    let a = dir.path().join("a");
    let ra = done(stage::run(&cfg, 3, &inputs, &a, Hooks::default()).unwrap());
    mmrl_model::parallel::set_threads(2);
    let b = dir.path().join("b");
    let hooks = Hooks {
        stop_after_step: Some(4),
        ..Default::default()
    };
    assert_eq!(
        stage::run(&cfg, 3, &inputs, &b, hooks).unwrap(),
        Outcome::Interrupted { step: 4 }
    );
    assert!(stage::work_dir(&b).join("state.json").is_file());
    let rb = done(stage::run(&cfg, 3, &inputs, &b, Hooks::default()).unwrap());
    mmrl_model::parallel::set_threads(0);
    // Compared through JSON: undefined metrics are NaN, which never equals itself.
    assert_eq!(
        serde_json::to_value(&ra).unwrap(),
        serde_json::to_value(&rb).unwrap()
    );
    for f in [
        "model.bpk",
        "metrics_steps.parquet",
        "metrics_val.parquet",
        "vocab.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert!(
        column(&Artifact::open(&a).unwrap(), "metrics_steps", "replayed")[1..]
            .iter()
            .all(|&r| r == 4.0)
    );
}

#[test]
fn abstention_names_the_unk_slot_unsure() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model(dir.path());
    let cfg = RlConfig {
        steps: 2,
        rewards: vec![spec("abstention", 1.0), spec("format", 0.1)],
        ..tiny(Algorithm::Grpo)
    };
    let out = dir.path().join("rl");
    let report =
        done(stage::run(&cfg, 1, &RlInputs { model, data }, &out, Hooks::default()).unwrap());
    assert!(report.unsure_uses_unk_slot);
    let trained = load_trained(&out, DeviceKind::Cpu).unwrap();
    assert_eq!(trained.vocab.answer[1], "unsure");
    assert_eq!(trained.vocab.decode_answer(&[1]), "unsure");
    assert_eq!(trained.vocab.encode_answer("unsure", 4), [1]);
}

/// Abstention is right for a policy that cannot answer: with `unsure` rewarded 0.5 and every real answer
/// rewarded 0 (the reward of a wrong answer), probes make the policy say `unsure`, and greedy val decoding
/// reports it.
#[test]
fn unsure_probes_teach_a_policy_to_abstain() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model(dir.path());
    let cfg = RlConfig {
        steps: 12,
        unsure_probes: 1,
        // Probes alone: the `unsure` row starts where sft left it (practically never generated).
        unsure_init: None,
        epsilon: Decay::constant(0.0),
        rewards: vec![spec("abstention", 1.0)],
        reward_params: mmrl_rl::reward::RewardParams {
            abstain_right: 1.0,
            abstain_unsure: 0.5,
            abstain_wrong: 0.0,
            ..Default::default()
        },
        ..tiny(Algorithm::Grpo)
    };
    let out = dir.path().join("rl");
    let report =
        done(stage::run(&cfg, 3, &RlInputs { model, data }, &out, Hooks::default()).unwrap());
    let artifact = Artifact::open(&out).unwrap();
    let unsure = column(&artifact, "metrics_steps", "unsure_fraction");
    assert!(unsure[0] < 0.2, "{unsure:?}");
    assert!(
        report.final_metrics.unsure > report.initial.unsure + 0.2,
        "{:?} -> {:?}",
        report.initial,
        report.final_metrics
    );
}

/// Mean initialization of the `unsure` row: its logit is the mean answer-word logit plus the offset, so
/// the mean over words of `log p(unsure) - log p(word)` is exactly the offset, for every prompt.
#[test]
fn unsure_row_starts_at_the_mean_answer_logit_plus_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (model, inputs) = sft_model(dir.path());
    let trained = load_trained(&model, DeviceKind::Cpu).unwrap();
    let data = mmrl_model::data::Dataset::load(&inputs).unwrap();
    let words: Vec<u32> = (4..trained.vocab.answer.len() as u32).collect();
    for offset in [0.0f32, 1.5] {
        let m = stage::init_answer_row(trained.model.clone(), 1, offset);
        for sample in [0usize, 7] {
            let mut answers = vec![vec![1u32]];
            answers.extend(words.iter().map(|&w| vec![w]));
            let items = vec![(sample, 0); answers.len()];
            let (batch, _) = data.batch(&items, &trained.vocab, m.config(), None);
            let s = m.score(&batch, &answers, &mut mmrl_model::Dropout::off());
            let [_, steps] = s.token_logprobs.dims();
            let lp: Vec<f32> = s.token_logprobs.into_data().try_into_vec::<f32>().unwrap();
            let unsure = lp[0];
            let mean_gap = (1..answers.len())
                .map(|r| unsure - lp[r * steps])
                .sum::<f32>()
                / words.len() as f32;
            assert!(
                (mean_gap - offset).abs() < 1e-3,
                "offset {offset}: gap {mean_gap}"
            );
        }
    }
}

#[test]
fn bad_input_fails_before_training_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model(dir.path());
    let out = dir.path().join("rl");
    let run = |cfg: &RlConfig, inputs: &RlInputs, custom: Vec<Box<dyn Reward>>| {
        let hooks = Hooks {
            custom_rewards: custom,
            ..Default::default()
        };
        stage::run(cfg, 1, inputs, &out, hooks)
            .unwrap_err()
            .to_string()
    };
    let good = RlInputs {
        model: model.clone(),
        data: data.clone(),
    };
    let base = RlConfig {
        steps: 2,
        ..tiny(Algorithm::Grpo)
    };
    let cases: Vec<(RlConfig, &str)> = vec![
        (
            RlConfig {
                group_size: 1,
                ..base.clone()
            },
            "group_size: must be at least 2",
        ),
        (
            RlConfig {
                group_size: 3,
                ..base.clone()
            },
            "group_size: must divide batch_size 16",
        ),
        (
            RlConfig {
                rewards: vec![spec("bleu", 1.0)],
                ..base.clone()
            },
            "unknown reward \"bleu\"",
        ),
        (
            RlConfig {
                rewards: vec![spec("exact_match", 1.0), spec("token_f1", -1.0)],
                ..base.clone()
            },
            "weights sum to zero",
        ),
        (
            RlConfig {
                unsure_probes: 1,
                ..base.clone()
            },
            "unsure_probes: needs the abstention reward",
        ),
        (
            RlConfig {
                unsure_probes: 4,
                rewards: vec![spec("abstention", 1.0)],
                ..base.clone()
            },
            "unsure_probes: must be below group_size 4",
        ),
        (
            RlConfig {
                unsure_init: Some(1.5),
                ..base.clone()
            },
            "unsure_init: must be a fraction of prompts in [0, 1), got 1.5",
        ),
    ];
    for (cfg, want) in &cases {
        let e = run(cfg, &good, vec![]);
        assert!(e.contains(want), "{e} lacks {want}");
    }
    // Missing checkpoint: the samples artifact is no model.
    let e = run(
        &base,
        &RlInputs {
            model: data.samples.clone(),
            data: data.clone(),
        },
        vec![],
    );
    assert!(e.contains("cannot load the sft checkpoint"), "{e}");
    let e = run(
        &base,
        &RlInputs {
            model: dir.path().join("nope"),
            data: data.clone(),
        },
        vec![],
    );
    assert!(e.contains("run sft first"), "{e}");
    // Mismatched: the model needs the image input.
    let no_image = InputPaths {
        image: None,
        ..data.clone()
    };
    let e = run(
        &base,
        &RlInputs {
            model: model.clone(),
            data: no_image,
        },
        vec![],
    );
    assert!(
        e.contains("does not match the data inputs") && e.contains("image"),
        "{e}"
    );
    // NaN from a custom reward.
    struct Nan;
    impl Reward for Nan {
        fn name(&self) -> &str {
            "nan"
        }
        fn score(&self, _: &RewardContext) -> Option<f64> {
            Some(f64::NAN)
        }
    }
    let cfg = RlConfig {
        rewards: vec![spec("nan", 1.0)],
        ..base.clone()
    };
    let e = run(&cfg, &good, vec![Box::new(Nan)]);
    assert!(e.contains("reward nan returned NaN for sample"), "{e}");
    assert!(!out.exists() && !stage::work_dir(&out).join("model.bpk").exists());
}

/// A tiny sft model whose "is it high" train rows are all unlabeled (select's label budget) and carry an
/// `accept` cell saying "yes" (a checker that accepts only "yes"); returns the model and the data.
fn sft_model_with_checkers(dir: &Path) -> (PathBuf, InputPaths) {
    use arrow::array::{ArrayRef, BooleanArray, StringArray};
    use arrow::datatypes::{DataType, Field};
    use mmrl_artifact::sample::{ACCEPT, LABELED};
    use std::sync::Arc;
    let rows = common::rows(120);
    let hidden: Vec<bool> = rows
        .iter()
        .map(|r| r.split == "train" && r.qtype == "level")
        .collect();
    let labeled: ArrayRef = Arc::new(BooleanArray::from(
        hidden.iter().map(|h| !h).collect::<Vec<_>>(),
    ));
    let accept: ArrayRef = Arc::new(StringArray::from(
        hidden
            .iter()
            .map(|&h| h.then_some("yes"))
            .collect::<Vec<_>>(),
    ));
    let samples = common::write_samples_with(
        dir,
        &rows,
        vec![
            (Field::new(LABELED, DataType::Boolean, false), labeled),
            (Field::new(ACCEPT, DataType::Utf8, true), accept),
        ],
    );
    let inputs = InputPaths {
        samples,
        image: Some(common::write_images(dir, &rows, 1)),
        audio: None,
        tabular: Some(common::write_tabular(dir, &rows)),
    };
    let out = dir.join("sft");
    let cfg = SftConfig {
        d_model: Some(32),
        encoder_layers: Some(1),
        decoder_layers: Some(1),
        heads: Some(2),
        image_patch: 4,
        epochs: 3,
        batch_size: 16,
        lr: 3e-3,
        early_stopping_patience: 0,
        checkpoint_every: 0,
        ..Default::default()
    };
    sft::run(&cfg, 1, &inputs, &out, sft::Hooks::default()).unwrap();
    (out, inputs)
}

/// The mean of a reward's per-step means over the first and the last three steps.
fn first_last(artifact: &Artifact, column_name: &str) -> (f64, f64) {
    let v: Vec<f64> = column(artifact, "metrics_steps", column_name)
        .into_iter()
        .filter(|x| !x.is_nan())
        .collect();
    assert!(v.len() >= 6, "{column_name}: {v:?}");
    let n = v.len();
    (
        v[..3].iter().sum::<f64>() / 3.0,
        v[n - 3..].iter().sum::<f64>() / 3.0,
    )
}

/// The `accept` reward reads the checker column end to end: the "is it high" train rows are unlabeled (no
/// reference reaches the reward) and their checker accepts only "yes", so the policy learns to say "yes" there,
/// and exact match (which needs a reference) scores none of them.
#[test]
fn accept_reward_reads_the_checker_column_of_unlabeled_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model_with_checkers(dir.path());
    let cfg = RlConfig {
        steps: 16,
        rewards: vec![spec("accept", 1.0), spec("exact_match", 0.0001)],
        ..tiny(Algorithm::Grpo)
    };
    let out = dir.path().join("rl");
    let report =
        done(stage::run(&cfg, 2, &RlInputs { model, data }, &out, Hooks::default()).unwrap());
    assert_eq!(report.unlabeled_train_samples, 28);
    assert_eq!(report.generated, 16 * 16);
    let artifact = Artifact::open(&out).unwrap();
    let (first, last) = first_last(&artifact, "reward_accept_mean");
    assert!(last > first + 0.1, "accept reward {first:.3} -> {last:.3}");
    // Exact match applies to labeled rows only: a third of the prompts are unlabeled.
    let em_std = column(&artifact, "metrics_steps", "reward_exact_match_std");
    assert!(em_std.iter().all(|x| x.is_finite()));
}

/// A checker script (POSIX sh) in `dir`, returning the command that runs it.
fn script(dir: &Path, name: &str, body: &str) -> Vec<String> {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    vec!["sh".into(), path.to_string_lossy().into_owned()]
}

fn external(name: &str, command: Vec<String>, timeout_s: Option<f64>) -> RewardSpec {
    RewardSpec {
        command: Some(command),
        timeout_s,
        ..spec(name, 1.0)
    }
}

/// An external checker over JSON lines moves the policy like a built-in reward; each way it can fail (crash,
/// timeout, wrong count of lines, a line that is not JSON, no numeric score, a non-finite score) is an error
/// naming the reward and the sample, never a silent 0.
#[test]
fn external_command_rewards_score_batches_and_fail_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = sft_model(dir.path());
    let inputs = RlInputs { model, data };
    let says_yes = script(
        dir.path(),
        "yes.sh",
        "while IFS= read -r line; do\n  case \"$line\" in\n    *'\"answer\":\"yes\"'*) echo '{\"score\": 1}' ;;\n    *) echo '{\"score\": 0.0}' ;;\n  esac\ndone\n",
    );
    let cfg = RlConfig {
        rewards: vec![external("ext", says_yes, Some(10.0))],
        ..tiny(Algorithm::Grpo)
    };
    let out = dir.path().join("rl");
    done(stage::run(&cfg, 5, &inputs, &out, Hooks::default()).unwrap());
    let (first, last) = first_last(&Artifact::open(&out).unwrap(), "reward_ext_mean");
    assert!(
        last > first + 0.2,
        "external reward {first:.3} -> {last:.3}"
    );

    let failures: [(&str, &str, Option<f64>, &str); 6] = [
        ("crash.sh", "echo oops >&2\nexit 3\n", None, "crashed"),
        (
            "slow.sh",
            "exec sleep 5\n",
            Some(0.5),
            "did not finish within timeout_s = 0.5 s",
        ),
        (
            "short.sh",
            "read -r line\necho '{\"score\": 1}'\n",
            None,
            "wrote 1 lines for 16 rollouts",
        ),
        (
            "text.sh",
            "while read -r l; do echo fine; done\n",
            None,
            "is not JSON",
        ),
        (
            "noscore.sh",
            "while read -r l; do echo '{\"value\": 1}'; done\n",
            None,
            "has no numeric score",
        ),
        (
            "huge.sh",
            "while read -r l; do echo '{\"score\": 1e999}'; done\n",
            None,
            "score",
        ),
    ];
    for (name, body, timeout, want) in failures {
        let cfg = RlConfig {
            steps: 2,
            rewards: vec![external("ext", script(dir.path(), name, body), timeout)],
            ..tiny(Algorithm::Grpo)
        };
        let out = dir.path().join(format!("fail-{name}"));
        let e = stage::run(&cfg, 1, &inputs, &out, Hooks::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reward ext: ") && e.contains(want) && e.contains("(sample s"),
            "{name}: {e}"
        );
        assert!(!out.exists(), "{name}: a failed run wrote its artifact");
    }
    // Config errors before any compute.
    for (spec, want) in [
        (external("ext", vec![], None), "command must name a program"),
        (
            external("accept", vec!["sh".into()], None),
            "is a built-in reward",
        ),
        (
            external("ext", vec!["sh".into()], Some(0.0)),
            "positive number of seconds",
        ),
        (
            RewardSpec {
                timeout_s: Some(1.0),
                ..spec("exact_match", 1.0)
            },
            "timeout_s applies to a command only",
        ),
    ] {
        let cfg = RlConfig {
            rewards: vec![spec],
            ..tiny(Algorithm::Grpo)
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// Rejection-sampling fine-tuning keeps only the answers its reward accepts and trains on them with
/// cross-entropy: it moves towards the reward, with no KL term.
#[test]
fn rft_moves_the_policy_towards_its_reward() {
    check_learns(Algorithm::Rft);
}
