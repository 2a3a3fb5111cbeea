//! The model and its policy API: shapes, masking of absent modalities, log-probabilities, decoding.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use mmrl_model::model::{ModalityBatch, TabularBatch, pick};
use mmrl_model::vocab::{BOS, EOS, PAD};
use mmrl_model::{Batch, Decoding, Dropout, ModelConfig, MultimodalModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config() -> ModelConfig {
    let mut c = ModelConfig::new()
        .with_d_model(32)
        .with_heads(4)
        .with_dropout(0.0)
        .with_max_answer_len(3);
    c.question_vocab = 12;
    c.answer_vocab = 10;
    c.image_shape = Some([3, 8, 8]);
    c.audio_shape = Some([4, 9]);
    c.numeric_features = 2;
    c.categorical_cardinalities = vec![3];
    c
}

fn model(device: &Device) -> MultimodalModel {
    config().init(device, 7).unwrap()
}

fn batch(rng: &mut ChaCha8Rng, image_present: Vec<bool>) -> Batch {
    let n = image_present.len();
    let mut b = Batch::new(
        (0..n)
            .map(|i| (0..2 + i % 3).map(|_| rng.random_range(2..12)).collect())
            .collect(),
    );
    let mut m = |per: usize, present: Vec<bool>| ModalityBatch {
        values: (0..n * per).map(|_| rng.random_range(-1.0..1.0)).collect(),
        present,
    };
    b.image = Some(m(3 * 64, image_present));
    b.audio = Some(m(36, vec![true; n]));
    b.tabular = Some(TabularBatch {
        numeric: vec![0.3; n * 2],
        categorical: vec![1; n],
        present: vec![true; n],
    });
    b
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn shapes_of_encoder_decoder_and_scores() {
    let device = Device::flex();
    let m = model(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let b = batch(&mut rng, vec![true, false, true]);
    let enc = m.encode(&b, &mut Dropout::off());
    // 1 fusion + 4 question (longest) + 1 image patch + 2 audio patches + 2 numeric + 1 categorical.
    assert_eq!(enc.memory.dims(), [3, 11, 32]);
    let answers = vec![vec![4], vec![5, 6], vec![]];
    let s = m.score(&b, &answers, &mut Dropout::off());
    assert_eq!(s.token_logprobs.dims(), [3, 3]);
    assert_eq!(s.entropy.dims(), [3, 3]);
    assert_eq!(
        values(s.mask),
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    );
    assert!(
        values(s.entropy)
            .iter()
            .all(|&e| e >= 0.0 && e <= (10f32).ln() + 1e-4)
    );
    assert!(m.num_params() > 10_000);
}

#[test]
fn absent_modality_values_change_nothing() {
    let device = Device::flex();
    let m = model(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let b1 = batch(&mut rng, vec![false, true]);
    let mut b2 = b1.clone();
    // New values for sample 0's absent image; sample 1's image is present and unchanged.
    let per = 3 * 64;
    for v in &mut b2.image.as_mut().unwrap().values[..per] {
        *v = rng.random_range(-50.0..50.0);
    }
    let answers = vec![vec![4, 5], vec![6]];
    let s1 = values(m.score(&b1, &answers, &mut Dropout::off()).token_logprobs);
    let s2 = values(m.score(&b2, &answers, &mut Dropout::off()).token_logprobs);
    assert_eq!(s1, s2, "masked image must not influence anything");
    // A present modality does influence the output (the mask is not masking everything).
    let mut b3 = b1.clone();
    for v in &mut b3.image.as_mut().unwrap().values[per..] {
        *v += 1.0;
    }
    let s3 = values(m.score(&b3, &answers, &mut Dropout::off()).token_logprobs);
    assert!(
        s1[2..]
            .iter()
            .zip(&s3[2..])
            .any(|(a, b)| (a - b).abs() > 1e-6)
    );
    // Masking the same image changes the output of that sample.
    let mut b4 = b1.clone();
    b4.image.as_mut().unwrap().present[1] = false;
    let s4 = values(m.score(&b4, &answers, &mut Dropout::off()).token_logprobs);
    assert!(
        s1[2..]
            .iter()
            .zip(&s4[2..])
            .any(|(a, b)| (a - b).abs() > 1e-6)
    );
}

#[test]
fn sequence_logprob_is_the_sum_of_manual_per_token_logprobs() {
    let device = Device::flex();
    let m = model(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let b = batch(&mut rng, vec![true, true]);
    let answers = vec![vec![4, 7], vec![5]];
    let s = m.score(&b, &answers, &mut Dropout::off());
    let seq = values(s.sequence_logprobs());
    // Manual: run the decoder on each prefix and read log-softmax of the target.
    let enc = m.encode(&b, &mut Dropout::off());
    for (i, a) in answers.iter().enumerate() {
        let mut targets = a.clone();
        targets.push(EOS);
        let mut prefix = vec![i64::from(BOS)];
        let mut total = 0f32;
        for &t in &targets {
            let one = b.questions[i].clone();
            let mut bi = Batch::new(vec![one]);
            bi.image = b.image.as_ref().map(|m| ModalityBatch {
                values: m.values[i * 192..(i + 1) * 192].to_vec(),
                present: vec![m.present[i]],
            });
            bi.audio = b.audio.as_ref().map(|m| ModalityBatch {
                values: m.values[i * 36..(i + 1) * 36].to_vec(),
                present: vec![true],
            });
            bi.tabular = b.tabular.as_ref().map(|t| TabularBatch {
                numeric: t.numeric[i * 2..i * 2 + 2].to_vec(),
                categorical: vec![t.categorical[i]],
                present: vec![true],
            });
            let enc_i = m.encode(&bi, &mut Dropout::off());
            let steps = prefix.len();
            let inputs =
                Tensor::<2, Int>::from_data(TensorData::new(prefix.clone(), [1, steps]), &device);
            let logits = m
                .decode(&enc_i, inputs, &mut Dropout::off())
                .narrow(1, steps - 1, 1)
                .reshape([1, 10]);
            let lp = values(activation::log_softmax(logits, 1));
            total += lp[t as usize];
            prefix.push(i64::from(t));
        }
        assert!(
            (total - seq[i]).abs() < 1e-4,
            "sample {i}: manual {total} vs batched {}",
            seq[i]
        );
        let _ = &enc;
    }
}

#[test]
fn greedy_is_argmax_and_zero_temperature_is_greedy() {
    let device = Device::flex();
    let m = model(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let b = batch(&mut rng, vec![true, false, true, true]);
    let greedy = m.generate(&b, Decoding::Greedy, &mut rng);
    // First token = argmax over allowed tokens of the first decoder step.
    let enc = m.encode(&b, &mut Dropout::off());
    let inputs =
        Tensor::<2, Int>::from_data(TensorData::new(vec![i64::from(BOS); 4], [4, 1]), &device);
    let logits = values(m.decode(&enc, inputs, &mut Dropout::off()).reshape([4, 10]));
    for (i, g) in greedy.iter().enumerate() {
        let row = &logits[i * 10..(i + 1) * 10];
        let best = (0..10)
            .filter(|&t| t != PAD as usize && t != BOS as usize)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let first = g.tokens.first().copied().unwrap_or(EOS);
        assert_eq!(first as usize, best);
    }
    // The generated log-prob equals the scored log-prob of the same tokens.
    let answers: Vec<Vec<u32>> = greedy.iter().map(|g| g.tokens.clone()).collect();
    let scored = values(
        m.score(&b, &answers, &mut Dropout::off())
            .sequence_logprobs(),
    );
    for (g, s) in greedy.iter().zip(&scored) {
        if g.tokens.len() < 3 {
            assert!((g.logprob - s).abs() < 1e-4, "{} vs {s}", g.logprob);
        }
    }
    let cold = m.generate(
        &b,
        Decoding::Sample {
            temperature: 1e-7,
            top_k: None,
            epsilon: 0.0,
        },
        &mut rng,
    );
    assert_eq!(cold, greedy);
    let top1 = m.generate(
        &b,
        Decoding::Sample {
            temperature: 1.0,
            top_k: Some(1),
            epsilon: 0.0,
        },
        &mut rng,
    );
    assert_eq!(top1, greedy);
}

#[test]
fn epsilon_one_samples_uniformly_and_temperature_spreads() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let row = [0.0, 0.0, 0.0, 9.0, 1.0, 0.5, -3.0, 2.0];
    let eps = Decoding::Sample {
        temperature: 1.0,
        top_k: None,
        epsilon: 1.0,
    };
    let mut counts = [0usize; 8];
    let n = 12_000;
    for _ in 0..n {
        counts[pick(&row, eps, &mut rng) as usize] += 1;
    }
    assert_eq!(counts[PAD as usize] + counts[BOS as usize], 0);
    let expected = n as f64 / 6.0;
    for (t, &c) in counts
        .iter()
        .enumerate()
        .filter(|(t, _)| *t != 0 && *t != 2)
    {
        assert!(
            (c as f64 - expected).abs() < 0.1 * expected,
            "token {t}: {c} vs {expected}"
        );
    }
    // Plain sampling concentrates on the best token; top_k 2 never leaves the two best.
    let mut hot = [0usize; 8];
    for _ in 0..2000 {
        hot[pick(
            &row,
            Decoding::Sample {
                temperature: 1.0,
                top_k: Some(2),
                epsilon: 0.0,
            },
            &mut rng,
        ) as usize] += 1;
    }
    assert_eq!(hot.iter().sum::<usize>(), hot[3] + hot[7]);
    assert!(hot[3] > 1900);
}

struct Flat(Vec<f32>);
impl ModuleVisitor for Flat {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0
            .extend(p.val().into_data().try_into_vec::<f32>().unwrap());
    }
}

#[test]
fn scores_are_differentiable_and_the_reference_stays_frozen() {
    let device = Device::flex().autodiff();
    let mut m = model(&device);
    let reference = m.reference();
    assert!(!reference.device().is_autodiff());
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let b = batch(&mut rng, vec![true, true]);
    let answers = vec![vec![4], vec![5, 6]];
    let before = values(
        reference
            .score(&b, &answers, &mut Dropout::off())
            .sequence_logprobs(),
    );
    let s = m.score(&b, &answers, &mut Dropout::off());
    let loss = -s.sequence_logprobs().sum();
    let grads = GradientsParams::from_grads(loss.backward(), &m);
    assert!(grads.len() > 20);
    let mut optim = AdamWConfig::new().init();
    m = optim.step(1e-2, m, grads);
    let after_model = values(
        m.valid()
            .score(&b, &answers, &mut Dropout::off())
            .sequence_logprobs(),
    );
    let after_ref = values(
        reference
            .score(&b, &answers, &mut Dropout::off())
            .sequence_logprobs(),
    );
    assert_eq!(before, after_ref);
    assert!(
        after_model.iter().zip(&before).all(|(a, b)| a > b),
        "a step on the answers raises their log-prob"
    );
    let mut f = Flat(Vec::new());
    reference.visit(&mut f);
    assert_eq!(f.0.len(), reference.num_params());
}
