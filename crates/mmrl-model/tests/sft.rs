//! The sft stage end to end on tiny artifacts: learning, resume, accumulation, bad input, predict.
#![allow(clippy::unwrap_used)]

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::AdamWConfig;
use burn::tensor::{Device, Tensor};
use mmrl_artifact::Artifact;
use mmrl_artifact::sample::Split;
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::schedule::{ScheduleConfig, ScheduleKind};
use mmrl_model::sft::{self, Hooks, Outcome, SftConfig};
use mmrl_model::vocab::Vocab;
use mmrl_model::{Error, predict};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn tiny() -> SftConfig {
    SftConfig {
        d_model: Some(32),
        encoder_layers: Some(1),
        decoder_layers: Some(1),
        heads: Some(2),
        image_patch: 4,
        epochs: 12,
        batch_size: 16,
        lr: 3e-3,
        early_stopping_patience: 0,
        checkpoint_every: 0,
        schedule: ScheduleConfig {
            kind: ScheduleKind::WarmupCosine,
            warmup_steps: 5,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn done(o: Outcome) -> Box<sft::SftReport> {
    match o {
        Outcome::Done(r) => r,
        Outcome::Interrupted { step } => panic!("interrupted at {step}"),
    }
}

#[test]
fn learns_every_question_type_beyond_the_majority_answer_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::rows(150);
    let inputs = common::inputs(dir.path(), &rows);
    let out = dir.path().join("sft");
    let report = done(sft::run(&tiny(), 3, &inputs, &out, Hooks::default()).unwrap());
    for (q, r) in &report.by_qtype {
        assert!(
            r.exact_match > r.majority_baseline + 0.15,
            "{q}: {} vs majority {}",
            r.exact_match,
            r.majority_baseline
        );
    }
    let artifact = Artifact::open(&out).unwrap();
    assert_eq!(artifact.manifest().fit_splits, ["train"]);
    for f in [
        "model.bpk",
        "checkpoint",
        "config.json",
        "vocab.json",
        "metrics_steps.parquet",
        "metrics_val.parquet",
        "report.json",
    ] {
        artifact.file(f).unwrap();
    }
    assert!(
        !sft::work_dir(&out).exists(),
        "the work folder is removed after commit"
    );
    let (_, steps) = artifact.read_table("metrics_steps").unwrap();
    assert_eq!(
        steps.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        report.steps
    );

    // predict with the trained model reproduces the reported val exact match.
    let pred = dir.path().join("pred");
    let n = predict::run(&predict::PredictConfig::default(), &out, &inputs, &pred).unwrap();
    assert_eq!(n, report.val_samples);
    let (_, batches) = Artifact::open(&pred)
        .unwrap()
        .read_table("predictions")
        .unwrap();
    let b = &batches[0];
    let col = |name: &str| {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .clone()
    };
    let (ans, reference) = (col("answer"), col("reference"));
    let hits = (0..b.num_rows())
        .filter(|&i| ans.value(i) == reference.value(i))
        .count();
    assert!((hits as f64 / n as f64 - report.val_exact_match).abs() < 1e-9);
    let lp = b
        .column_by_name("logprob")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .unwrap();
    assert!(lp.iter().all(|v| v.unwrap() <= 0.0));

    // predict refuses a dataset without the image modality the model was trained with.
    let no_image = InputPaths {
        image: None,
        ..inputs.clone()
    };
    let err = predict::run(
        &predict::PredictConfig::default(),
        &out,
        &no_image,
        &dir.path().join("p2"),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("needs the image modality"),
        "{err}"
    );
}

#[test]
fn a_killed_and_resumed_run_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::rows(60);
    let inputs = common::inputs(dir.path(), &rows);
    let config = SftConfig {
        epochs: 3,
        max_steps: 0,
        checkpoint_every: 2,
        ..tiny()
    };
    let a = dir.path().join("a");
    let ra = done(sft::run(&config, 9, &inputs, &a, Hooks::default()).unwrap());
    let b = dir.path().join("b");
    let hooks = Hooks {
        progress: None,
        stop_after_step: Some(5),
    };
    assert_eq!(
        sft::run(&config, 9, &inputs, &b, hooks).unwrap(),
        Outcome::Interrupted { step: 5 }
    );
    assert!(sft::work_dir(&b).join("state.json").is_file());
    let rb = done(sft::run(&config, 9, &inputs, &b, Hooks::default()).unwrap());
    assert_eq!(ra, rb);
    for f in [
        "model.bpk",
        "metrics_steps.parquet",
        "metrics_val.parquet",
        "config.json",
        "vocab.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert_eq!(
        std::fs::read(a.join("checkpoint").join("model.bpk")).unwrap(),
        std::fs::read(b.join("checkpoint").join("model.bpk")).unwrap(),
    );
    // The artifacts themselves are identical, checkpoint included. (The resumed run read the optimizer state
    // saved at step 5 from the work folder, so equal final models also show the optimizer state resumed exactly.)
    assert_eq!(
        mmrl_artifact::Artifact::open(&a)
            .unwrap()
            .manifest()
            .content_hash,
        mmrl_artifact::Artifact::open(&b)
            .unwrap()
            .manifest()
            .content_hash
    );
}

struct Flat(Vec<f32>);
impl ModuleVisitor for Flat {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0
            .extend(p.val().into_data().try_into_vec::<f32>().unwrap());
    }
}

fn setup(n: usize) -> (tempfile::TempDir, Dataset, Vocab, mmrl_model::ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::rows(n);
    let data = Dataset::load(&common::inputs(dir.path(), &rows)).unwrap();
    let train = data.split(Split::Train);
    let vocab = Vocab::fit(train.iter().map(|&i| {
        (
            data.samples[i].question.as_str(),
            data.samples[i].answer.as_str(),
        )
    }));
    let cfg = data.shape_config(
        SftConfig {
            dropout: 0.0,
            ..tiny()
        }
        .model_config(),
        &vocab,
    );
    (dir, data, vocab, cfg)
}

#[test]
fn batch_32_equals_4_accumulated_batches_of_8() {
    let (_dir, data, vocab, cfg) = setup(80);
    let items: Vec<(usize, usize)> = data
        .split(Split::Train)
        .into_iter()
        .take(32)
        .map(|i| (i, 0))
        .collect();
    let device = Device::flex().autodiff();
    let mut results = Vec::new();
    for accum in [1, 4] {
        let model = cfg.init(&device, 1).unwrap();
        let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // Two steps, so the optimizer state from the first step matters too.
        let (model, r1) = sft::train_step(
            model, &mut optim, &data, &vocab, &items, accum, 1e-3, 1.0, 0.0, &mut rng,
        )
        .unwrap();
        let (model, r2) = sft::train_step(
            model, &mut optim, &data, &vocab, &items, accum, 1e-3, 1.0, 0.0, &mut rng,
        )
        .unwrap();
        let mut f = Flat(Vec::new());
        model.visit(&mut f);
        results.push((f.0, r1.unwrap(), r2.unwrap()));
    }
    let (a, b) = (&results[0], &results[1]);
    assert!(
        (a.1.0 - b.1.0).abs() < 1e-5 && (a.1.1 - b.1.1).abs() < 1e-4,
        "loss/norm {:?} vs {:?}",
        a.1,
        b.1
    );
    let max_diff =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "parameters differ by {max_diff}");
}

/// Data-parallel shards and generation chunks run on as many threads as there are cores; the bits must
/// not depend on that: one and two threads give the same parameters after sharded steps with dropout,
/// and the same sampled answers over several generation chunks.
#[test]
fn sharded_steps_and_chunked_sampling_do_not_depend_on_the_thread_count() {
    let (_dir, data, vocab, cfg) = setup(80);
    let cfg = cfg.with_dropout(0.1);
    let train = data.split(Split::Train);
    let items: Vec<(usize, usize)> = train.iter().take(32).map(|&i| (i, 0)).collect();
    let rows = mmrl_model::model::GENERATE_CHUNK * 2 + 7;
    let gen_items: Vec<(usize, usize)> = train.iter().cycle().take(rows).map(|&i| (i, 0)).collect();
    let device = Device::flex().autodiff();
    let mut runs = Vec::new();
    for threads in [1, 2] {
        mmrl_model::parallel::set_threads(threads);
        let mut model = cfg.init(&device, 1).unwrap();
        let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut losses = Vec::new();
        for _ in 0..2 {
            let (next, r) = sft::train_step(
                model, &mut optim, &data, &vocab, &items, 4, 1e-3, 1.0, 0.1, &mut rng,
            )
            .unwrap();
            model = next;
            losses.push(r.unwrap());
        }
        let mut f = Flat(Vec::new());
        model.visit(&mut f);
        let valid = model.valid();
        let (batch, _) = data.batch(&gen_items, &vocab, valid.config(), None);
        let sampled = valid.generate(
            &batch,
            mmrl_model::Decoding::Sample {
                temperature: 1.5,
                top_k: None,
                epsilon: 0.2,
            },
            &mut ChaCha8Rng::seed_from_u64(5),
        );
        runs.push((f.0, losses, sampled));
    }
    mmrl_model::parallel::set_threads(0);
    let (one, two) = (&runs[0], &runs[1]);
    assert_eq!(one.1, two.1, "losses and grad norms");
    assert!(one.0 == two.0, "parameters differ between 1 and 2 threads");
    assert_eq!(one.2.len(), rows);
    assert_eq!(
        one.2, two.2,
        "sampled answers differ between 1 and 2 threads"
    );
    // The sampled answers are not all the same answer (the check above would be vacuous).
    assert!(one.2.iter().any(|g| g.tokens != one.2[0].tokens));
}

#[test]
fn non_finite_inputs_are_skipped_and_a_divergent_loss_stops() {
    let (_dir, mut data, vocab, cfg) = setup(40);
    let items: Vec<(usize, usize)> = data
        .split(Split::Train)
        .into_iter()
        .take(8)
        .map(|i| (i, 0))
        .collect();
    let device = Device::flex().autodiff();
    let mut optim = AdamWConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let clean = data.clone();
    data.image.as_mut().unwrap().values[0] = f32::NAN;
    let row = data.samples[items[0].0].image[0];
    let per = 3 * common::SIDE * common::SIDE;
    data.image.as_mut().unwrap().values[row * per] = f32::NAN;
    let model = cfg.init(&device, 1).unwrap();
    let (model, r) = sft::train_step(
        model, &mut optim, &data, &vocab, &items, 1, 1e-3, 1.0, 0.0, &mut rng,
    )
    .unwrap();
    assert!(r.is_none(), "a NaN input batch is skipped");
    // An absurd learning rate blows the weights up: the next loss is not finite and training stops.
    let (model, _) = sft::train_step(
        model, &mut optim, &clean, &vocab, &items, 1, 1e30, 0.0, 0.0, &mut rng,
    )
    .unwrap();
    let err = sft::train_step(
        model, &mut optim, &clean, &vocab, &items, 1, 1e30, 0.0, 0.0, &mut rng,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Diverged { .. }) && err.to_string().contains("lower lr"),
        "{err}"
    );
}

#[test]
fn bad_inputs_stop_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::rows(30);
    let inputs = common::inputs(dir.path(), &rows);
    // Empty train split.
    let val_only: Vec<_> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            r.split = "val";
            r
        })
        .collect();
    let d2 = dir.path().join("v");
    std::fs::create_dir_all(&d2).unwrap();
    let only_val = InputPaths {
        samples: common::write_samples(&d2, &val_only),
        ..inputs.clone()
    };
    let err = sft::run(
        &tiny(),
        0,
        &only_val,
        &dir.path().join("x"),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no train samples"), "{err}");
    // Invalid config.
    let err = sft::run(
        &SftConfig {
            grad_accum: 3,
            ..tiny()
        },
        0,
        &inputs,
        &dir.path().join("y"),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("grad_accum"), "{err}");
    // A checkpoint from a different config.
    let data = Dataset::load(&inputs).unwrap();
    let vocab = Vocab::fit(
        data.samples
            .iter()
            .map(|s| (s.question.as_str(), s.answer.as_str())),
    );
    let small = data.shape_config(tiny().model_config(), &vocab);
    let wide = data.shape_config(
        SftConfig {
            d_model: Some(48),
            ..tiny()
        }
        .model_config(),
        &vocab,
    );
    let path = dir.path().join("m.bpk");
    small
        .init(&Device::flex(), 0)
        .unwrap()
        .into_record()
        .save(&path)
        .unwrap();
    let err = sft::load_model(wide.init(&Device::flex(), 0).unwrap(), &path).unwrap_err();
    assert!(err.to_string().contains("different model config"), "{err}");
    // A samples artifact without the modality the model needs.
    let no_tab = Dataset::load(&InputPaths {
        tabular: None,
        ..inputs.clone()
    })
    .unwrap();
    let err = no_tab
        .check_compatible(&small, &inputs.samples)
        .unwrap_err();
    assert!(err.to_string().contains("tabular"), "{err}");
}

#[test]
fn samples_dropped_by_a_modality_stage_are_excluded_and_vocab_is_train_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = common::rows(30);
    let image_rows: Vec<_> = rows.iter().skip(1).cloned().collect();
    rows[29].question = "what color is the zebra".into(); // a val-only word
    let inputs = InputPaths {
        samples: common::write_samples(dir.path(), &rows),
        image: Some(common::write_images(dir.path(), &image_rows, 0)),
        audio: None,
        tabular: None,
    };
    assert_eq!(rows[29].split, "val");
    let data = Dataset::load(&inputs).unwrap();
    assert_eq!(data.samples.len(), 29);
    assert_eq!(data.dropped.get("image"), Some(&1));
    let train = data.split(Split::Train);
    let vocab = Vocab::fit(train.iter().map(|&i| {
        (
            data.samples[i].question.as_str(),
            data.samples[i].answer.as_str(),
        )
    }));
    assert!(!vocab.question.iter().any(|w| w == "zebra"));
}

/// Select's `labeled` column and the checker columns: sft never trains on an unlabeled answer and no checker
/// cell reaches the model. Two datasets that differ only in their unlabeled rows' answers and in every checker
/// cell train bit-identical models, whose vocabulary lacks the unlabeled answers' words; the rows still load,
/// with their checker cells, for rl.
#[test]
fn unlabeled_answers_and_checker_columns_never_reach_the_inputs_or_the_loss() {
    use arrow::array::{ArrayRef, BooleanArray, StringArray};
    use arrow::datatypes::{DataType, Field};
    use mmrl_artifact::sample::{ACCEPT, LABELED};
    use std::sync::Arc;

    let train_one = |name: &str, hidden: &str, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = common::rows(60);
        // Every other "is it high" train row is unlabeled; its answer is `hidden`.
        let unlabeled: Vec<bool> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| r.split == "train" && r.qtype == "level" && i % 2 == 0)
            .collect();
        for (r, &u) in rows.iter_mut().zip(&unlabeled) {
            if u {
                r.answer = hidden.to_owned();
            }
        }
        let labeled: ArrayRef = Arc::new(BooleanArray::from(
            unlabeled.iter().map(|u| !u).collect::<Vec<_>>(),
        ));
        let accept: ArrayRef = Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("{}|{extra}", r.answer)),
        ));
        let tolerance: ArrayRef = Arc::new(StringArray::from_iter_values(
            rows.iter().map(|_| extra.to_owned()),
        ));
        let samples = common::write_samples_with(
            dir.path(),
            &rows,
            vec![
                (Field::new(LABELED, DataType::Boolean, false), labeled),
                (Field::new(ACCEPT, DataType::Utf8, true), accept),
                (
                    Field::new("check_tolerance", DataType::Utf8, true),
                    tolerance,
                ),
            ],
        );
        let inputs = InputPaths {
            samples,
            image: Some(common::write_images(dir.path(), &rows, 1)),
            audio: None,
            tabular: Some(common::write_tabular(dir.path(), &rows)),
        };
        let data = Dataset::load(&inputs).unwrap();
        let n_unlabeled = data.samples.iter().filter(|s| !s.labeled).count();
        assert_eq!(n_unlabeled, unlabeled.iter().filter(|u| **u).count());
        assert!(n_unlabeled >= 5);
        let order = data.epoch_order(1, 0);
        assert!(order.iter().all(|&(i, _)| data.samples[i].labeled));
        assert_eq!(
            data.prompt_order(1, 0).len(),
            order.len() + n_unlabeled,
            "rl's prompts include the unlabeled rows"
        );
        let first = &data.samples[0];
        assert_eq!(first.checks[ACCEPT], format!("{}|{extra}", first.answer));
        assert_eq!(first.checks["check_tolerance"], extra);
        let out = dir.path().join(name);
        done(sft::run(&tiny_epochs(2), 3, &inputs, &out, Hooks::default()).unwrap());
        let bytes = |f: &str| std::fs::read(out.join(f)).unwrap();
        (bytes("model.bpk"), bytes("vocab.json"), dir)
    };
    let (model_a, vocab_a, _a) = train_one("a", "zebra", "x");
    let (model_b, vocab_b, _b) = train_one("b", "yak", "y z");
    assert_eq!(vocab_a, vocab_b);
    let vocab: Vocab = serde_json::from_slice(&vocab_a).unwrap();
    assert!(
        !vocab.answer.iter().any(|w| w == "zebra" || w == "x"),
        "{:?}",
        vocab.answer
    );
    assert!(
        model_a == model_b,
        "the models differ: a hidden answer or a checker cell reached training"
    );
}

fn tiny_epochs(epochs: u32) -> SftConfig {
    SftConfig { epochs, ..tiny() }
}
