//! Pruning and quantization on a tiny randomly initialized model: paths, masks, shrinking, quantized
//! save and reload, bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use burn::module::Module;
use burn::tensor::Device;
use mmrl_compress::Error;
use mmrl_compress::params::{apply_masks, is_quantized, state};
use mmrl_compress::quant::{Bits, QuantSpec, dequantize, quantize};
use mmrl_compress::sparse::{
    Scope, cubic_sparsity, layer_targets, magnitude_masks, measure, prunable, unmatched_layer_keys,
};
use mmrl_compress::structured::{magnitude_scores, masks, plan, shrink};
use mmrl_model::model::{ModalityBatch, TabularBatch};
use mmrl_model::{Batch, Dropout, ModelConfig, MultimodalModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config() -> ModelConfig {
    let mut c = ModelConfig::new()
        .with_d_model(16)
        .with_heads(4)
        .with_encoder_layers(2)
        .with_decoder_layers(1)
        .with_ff_mult(2)
        .with_image_patch(4)
        .with_audio_patch(2)
        .with_dropout(0.0);
    c.question_vocab = 12;
    c.answer_vocab = 9;
    c.image_shape = Some([3, 8, 8]);
    c.audio_shape = Some([4, 6]);
    c.numeric_features = 2;
    c.categorical_cardinalities = vec![3];
    c
}

fn model(seed: u64) -> MultimodalModel {
    config().init(&Device::flex(), seed).unwrap()
}

fn batch(n: usize, seed: u64) -> (Batch, Vec<Vec<u32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = config();
    let questions = (0..n)
        .map(|_| (0..5).map(|_| rng.random_range(2..12u32)).collect())
        .collect();
    let mut b = Batch::new(questions);
    let modality = |per: usize, rng: &mut ChaCha8Rng| ModalityBatch {
        values: (0..n * per).map(|_| rng.random_range(-1.0..1.0)).collect(),
        present: (0..n).map(|i| i % 4 != 3).collect(),
    };
    b.image = Some(modality(3 * 8 * 8, &mut rng));
    b.audio = Some(modality(4 * 6, &mut rng));
    b.tabular = Some(TabularBatch {
        numeric: (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect(),
        categorical: (0..n).map(|i| (i % 3) as u32).collect(),
        present: vec![true; n],
    });
    let answers = (0..n).map(|i| vec![4 + (i % 4) as u32, 5]).collect();
    assert_eq!(c.image_shape, Some([3, 8, 8]));
    (b, answers)
}

/// Log-probabilities of the reference answers, flattened.
fn logprobs(m: &MultimodalModel, b: &Batch, answers: &[Vec<u32>]) -> Vec<f32> {
    m.score(b, answers, &mut Dropout::off())
        .token_logprobs
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn parameter_paths_name_the_linear_layers() {
    let st = state(&model(1));
    for p in [
        "encoder.0.attn.query.weight",
        "encoder.1.ff.up.weight",
        "decoder.0.cross_attn.key_value.weight",
        "decoder.0.self_attn.out.weight",
        "head.weight",
    ] {
        assert!(
            st.contains_key(p),
            "missing {p}: {:?}",
            st.keys().collect::<Vec<_>>()
        );
        assert!(prunable(p), "{p}");
    }
    for p in [
        "encoder.0.attn.query.bias",
        "question_embed",
        "encoder_norm.gamma",
    ] {
        assert!(!prunable(p), "{p}");
    }
}

#[test]
fn cubic_schedule_rises_from_initial_to_target() {
    let s: Vec<f64> = (0..=10)
        .map(|t| cubic_sparsity(t, 0, 10, 0.0, 0.8))
        .collect();
    assert_eq!(s[0], 0.0);
    assert!((s[10] - 0.8).abs() < 1e-12);
    assert!(s.windows(2).all(|w| w[1] >= w[0]));
    // Cubic: most of the pruning happens early.
    assert!(s[5] > 0.8 * 0.8);
    assert_eq!(cubic_sparsity(20, 0, 10, 0.0, 0.8), 0.8);
}

#[test]
fn per_layer_overrides_match_whole_path_segments_and_typos_are_found() {
    let st = state(&model(1));
    let overrides: std::collections::BTreeMap<String, f64> = [
        ("encoder.1".to_owned(), 0.3),
        ("encoder.1.ff".to_owned(), 0.7),
        ("encodr.0".to_owned(), 0.5),
        ("encoder.0.at".to_owned(), 0.5),
    ]
    .into();
    let targets = layer_targets(&st, 0.5, &overrides);
    // The longest matching key wins; a key names a module, not a prefix of a segment.
    assert_eq!(targets["encoder.1.ff.up.weight"], 0.7);
    assert_eq!(targets["encoder.1.attn.query.weight"], 0.3);
    assert_eq!(targets["encoder.0.attn.query.weight"], 0.5);
    assert_eq!(
        unmatched_layer_keys(&st, &overrides),
        ["encoder.0.at".to_owned(), "encodr.0".to_owned()]
    );
}

#[test]
fn magnitude_masks_reach_the_target_per_layer_and_globally() {
    let m = model(2);
    let st = state(&m);
    for scope in [Scope::PerLayer, Scope::Global] {
        let targets = layer_targets(&st, 0.6, &Default::default());
        let masks = magnitude_masks(&st, &targets, scope, 1.0);
        let pruned = apply_masks(m.clone(), &masks);
        let rows = measure(&state(&pruned), &targets, scope);
        let total: u64 = rows.iter().map(|r| r.parameters).sum();
        let zeros: u64 = rows.iter().map(|r| r.zeros).sum();
        let overall = zeros as f64 / total as f64;
        assert!((overall - 0.6).abs() < 0.01, "{scope:?}: {overall}");
        if scope == Scope::PerLayer {
            for r in &rows {
                assert!(
                    (r.sparsity - 0.6).abs() < 1.0 / r.parameters as f64 + 1e-9,
                    "{r:?}"
                );
            }
        }
        // The kept weights are the largest ones: every pruned magnitude <= every kept one, per layer.
        if scope == Scope::PerLayer {
            for (p, mask) in &masks {
                let v = &st[p].values;
                let max_pruned = v
                    .iter()
                    .zip(mask)
                    .filter(|(_, k)| **k == 0.0)
                    .map(|(x, _)| x.abs())
                    .fold(0.0, f32::max);
                let min_kept = v
                    .iter()
                    .zip(mask)
                    .filter(|(_, k)| **k == 1.0)
                    .map(|(x, _)| x.abs())
                    .fold(f32::MAX, f32::min);
                assert!(max_pruned <= min_kept, "{p}");
            }
        }
    }
}

#[test]
fn shrunk_model_matches_the_masked_model() {
    let m = model(3);
    let scores = magnitude_scores(&m).unwrap();
    assert_eq!(scores.len(), 3);
    assert_eq!(scores[0].heads.len(), 4);
    assert_eq!(scores[2].cross_heads.len(), 4);
    assert_eq!(scores[0].ff.len(), 32);
    let keep = plan(&scores, &[2, 1, 2], &[16, 8, 12]).unwrap();
    let masked = apply_masks(m.clone(), &masks(&m, &keep).unwrap());
    let small = shrink(&m, &keep).unwrap();
    assert!(small.num_params() < m.num_params());
    let shapes = small.config().layer_shapes.clone().unwrap();
    assert_eq!(shapes[0].heads, 2);
    assert_eq!(shapes[1].heads, 3);
    assert_eq!(shapes[2].cross_heads, 2);
    assert_eq!(shapes[2].ff, 20);
    let (b, a) = batch(6, 9);
    let full = logprobs(&m, &b, &a);
    let want = logprobs(&masked, &b, &a);
    let got = logprobs(&small, &b, &a);
    assert!(max_abs_diff(&got, &want) < 1e-4, "{got:?} vs {want:?}");
    // Pruning changed something (the test would pass trivially otherwise).
    assert!(max_abs_diff(&full, &want) > 1e-4);
    // Shrinking again works on the already shrunk shapes.
    let scores2 = magnitude_scores(&small).unwrap();
    assert_eq!(scores2[0].heads.len(), 2);
    let keep2 = plan(&scores2, &[1, 1, 1], &[0, 0, 0]).unwrap();
    let smaller = shrink(&small, &keep2).unwrap();
    assert!(smaller.num_params() < small.num_params());
}

#[test]
fn pruning_every_head_or_more_is_an_error() {
    let m = model(4);
    let scores = magnitude_scores(&m).unwrap();
    for (heads, ff) in [
        ([4, 0, 0], [0, 0, 0]),
        ([0, 9, 0], [0, 0, 0]),
        ([0, 0, 0], [0, 0, 32]),
    ] {
        match plan(&scores, &heads, &ff) {
            Err(Error::Prune(msg)) => assert!(msg.contains("at least one must stay"), "{msg}"),
            other => panic!("expected a prune error, got {other:?}"),
        }
    }
    assert!(matches!(
        plan(&scores, &[1, 1], &[0, 0, 0]),
        Err(Error::Prune(_))
    ));
}

#[test]
fn quantized_model_saves_small_and_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(5);
    let f32_path = dir.path().join("f32.bpk");
    m.clone().into_record().save(&f32_path).unwrap();
    let q = quantize(m.clone(), QuantSpec::default()).unwrap();
    assert!(is_quantized(&q));
    let q_path = dir.path().join("int8.bpk");
    q.clone().into_record().save(&q_path).unwrap();
    let f32_bytes = std::fs::metadata(&f32_path).unwrap().len();
    let q_bytes = std::fs::metadata(&q_path).unwrap().len();
    eprintln!(
        "f32 {f32_bytes} int8 {q_bytes} ratio {:.2}",
        f32_bytes as f64 / q_bytes as f64
    );
    // This toy model is mostly biases, norms and per-tensor record headers; the real one shrinks ~3.5x.
    assert!(
        q_bytes * 3 < f32_bytes * 2,
        "f32 {f32_bytes} int8 {q_bytes}"
    );

    let (b, a) = batch(5, 11);
    let before = logprobs(&q, &b, &a);
    let reloaded = mmrl_model::sft::load_model(model(99), &q_path).unwrap();
    assert!(is_quantized(&reloaded));
    let after = logprobs(&reloaded, &b, &a);
    assert_eq!(before, after);
    // Close to the f32 model.
    let reference = logprobs(&m, &b, &a);
    assert!(
        max_abs_diff(&before, &reference) < 0.05,
        "{}",
        max_abs_diff(&before, &reference)
    );
    // Dequantized copy computes the same function as the quantized one.
    let deq = dequantize(reloaded);
    assert!(!is_quantized(&deq));
    assert!(max_abs_diff(&logprobs(&deq, &b, &a), &after) < 1e-5);
    // Twice: clear error.
    match quantize(q, QuantSpec::default()) {
        Err(Error::Quantize(msg)) => assert!(msg.contains("already quantized"), "{msg}"),
        other => panic!("expected a quantize error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn int4_blocks_quantize_when_burn_supports_them() {
    let m = model(6);
    let spec = QuantSpec {
        bits: Bits::Int4,
        block: 8,
    };
    let q = quantize(m.clone(), spec).unwrap();
    let (b, a) = batch(4, 12);
    let diff = max_abs_diff(&logprobs(&q, &b, &a), &logprobs(&m, &b, &a));
    assert!(diff.is_finite() && diff < 0.5, "{diff}");
    let dir = tempfile::tempdir().unwrap();
    let (p4, p8) = (dir.path().join("int4.bpk"), dir.path().join("int8.bpk"));
    q.clone().into_record().save(&p4).unwrap();
    let q8 = quantize(
        m.clone(),
        QuantSpec {
            bits: Bits::Int8,
            block: 8,
        },
    )
    .unwrap();
    q8.into_record().save(&p8).unwrap();
    let (b4, b8) = (
        std::fs::metadata(&p4).unwrap().len(),
        std::fs::metadata(&p8).unwrap().len(),
    );
    eprintln!("int4 {b4} int8 {b8}");
    let reloaded = mmrl_model::sft::load_model(model(99), &p4).unwrap();
    assert_eq!(logprobs(&reloaded, &b, &a), logprobs(&q, &b, &a));
    let bad = QuantSpec {
        bits: Bits::Int4,
        block: 0,
    };
    assert!(matches!(quantize(m, bad), Err(Error::Config { .. })));
}

#[test]
fn configs_written_before_layer_shapes_still_load() {
    let mut v = serde_json::to_value(config()).unwrap();
    v.as_object_mut().unwrap().remove("layer_shapes");
    let c: ModelConfig = serde_json::from_value(v).unwrap();
    assert_eq!(c.layer_shapes, None);
    assert_eq!(c.layer_shape(0).heads, 4);
    assert_eq!(c.layer_shape(2).cross_heads, 4);
    assert_eq!(c.layer_shape(0).cross_heads, 0);
    // A wrong number of layer entries is refused at init.
    let bad = config().with_layer_shapes(Some(vec![c.layer_shape(0)]));
    let err = bad.init(&Device::flex(), 0).unwrap_err().to_string();
    assert!(err.contains("layer_shapes"), "{err}");
}
