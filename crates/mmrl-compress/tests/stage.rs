//! The compress stage end to end on a tiny sft artifact built in the test: outputs, reload through
//! `load_models`, masks surviving fine-tuning, determinism, bad inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../mmrl-model/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_compress::Error;
use mmrl_compress::params::{is_quantized, state};
use mmrl_compress::sparse::{Scope, prunable};
use mmrl_compress::stage::{self, CompressConfig, RecoveryConfig, SparseConfig};
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::predict::{load_models, load_trained};
use mmrl_model::schedule::{ScheduleConfig, ScheduleKind};
use mmrl_model::sft::{self, DeviceKind, Hooks, SftConfig};

fn sft_config() -> SftConfig {
    SftConfig {
        d_model: Some(32),
        encoder_layers: Some(1),
        decoder_layers: Some(1),
        heads: Some(4),
        ff_mult: 2,
        image_patch: 4,
        epochs: 6,
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

/// A small sft artifact and its inputs.
fn fixture(dir: &Path) -> (PathBuf, InputPaths) {
    let rows = common::rows(120);
    let inputs = common::inputs(dir, &rows);
    let out = dir.join("sft");
    sft::run(&sft_config(), 3, &inputs, &out, Hooks::default()).unwrap();
    (out, inputs)
}

fn recovery(steps: u64) -> RecoveryConfig {
    RecoveryConfig {
        steps,
        batch_size: 16,
        ..Default::default()
    }
}

fn config() -> CompressConfig {
    let mut c = CompressConfig::default();
    c.sparse.sparsity = 0.6;
    c.sparse.scope = Scope::PerLayer;
    c.sparse.prune_every = 2;
    c.sparse.recovery = recovery(12);
    c.structured.recovery = recovery(6);
    c.structured.taylor_batches = 2;
    c.throughput_rounds = 1;
    c
}

#[test]
fn stage_writes_every_variant_and_eval_can_load_them() {
    let dir = tempfile::tempdir().unwrap();
    let (model, inputs) = fixture(dir.path());
    let out = dir.path().join("compress");
    let report = stage::run(&config(), 5, &model, &inputs, &out).unwrap();

    let artifact = Artifact::open(&out).unwrap();
    assert_eq!(artifact.manifest().fit_splits, ["train"]);
    for f in [
        "sparse",
        "pruned",
        "int8",
        "models.json",
        "compress.parquet",
        "sparsity.parquet",
        "report.json",
    ] {
        artifact.file(f).unwrap();
    }
    let (_, batches) = artifact.read_table("compress").unwrap();
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            col.iter()
                .map(|s| s.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        names,
        ["original", "sparse", "pruned", "int8", "pruned_int8"]
    );

    let by_name = |n: &str| report.variants.iter().find(|r| r.variant == n).unwrap();
    let (orig, sparse, pruned, int8) = (
        by_name("original"),
        by_name("sparse"),
        by_name("pruned"),
        by_name("int8"),
    );
    assert!(pruned.parameters < orig.parameters);
    assert!(sparse.nonzero_parameters < orig.nonzero_parameters);
    assert!(
        int8.file_bytes * 2 < orig.file_bytes,
        "{} vs {}",
        int8.file_bytes,
        orig.file_bytes
    );
    for r in &report.variants {
        assert!(
            r.cpu_infer_samples_per_s > 0.0 && (0.0..=1.0).contains(&r.val_exact_match),
            "{r:?}"
        );
        assert!((r.delta_exact_match - (r.val_exact_match - orig.val_exact_match)).abs() < 1e-12);
    }
    // Per-layer targets are met in every prunable matrix.
    assert!(!report.sparsity.is_empty());
    for l in &report.sparsity {
        assert!(
            (l.sparsity - 0.6).abs() <= 1.0 / l.parameters as f64 + 1e-9,
            "{l:?}"
        );
    }

    // eval's loader gets every variant; what it loads is what the table measured.
    let loaded = load_models(&out, DeviceKind::Cpu).unwrap();
    let loaded_names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        loaded_names,
        [
            "compress/sparse",
            "compress/pruned",
            "compress/int8",
            "compress/pruned_int8"
        ]
    );
    let data = Dataset::load(&inputs).unwrap();
    let val = data.split(mmrl_artifact::sample::Split::Val);
    for (name, t) in &loaded {
        let variant = name.trim_start_matches("compress/");
        let em = stage::val_exact_match(&t.model, &data, &t.vocab, &val, 64);
        assert_eq!(em, by_name(variant).val_exact_match, "{name}");
        assert_eq!(is_quantized(&t.model), variant.ends_with("int8"), "{name}");
    }
    let pruned_cfg = &loaded[1].1.model.config().layer_shapes;
    assert!(pruned_cfg.is_some());
    // The saved sparse model still has its zeros (masks survived fine-tuning and saving).
    let st = state(&loaded[0].1.model);
    for (p, e) in st.iter().filter(|(p, _)| prunable(p)) {
        let zeros = e.values.iter().filter(|v| **v == 0.0).count();
        assert_eq!(zeros, (e.len() as f64 * 0.6).floor() as usize, "{p}");
    }
}

#[test]
fn masks_stay_fixed_while_the_kept_weights_train() {
    let dir = tempfile::tempdir().unwrap();
    let (model, inputs) = fixture(dir.path());
    let trained = load_trained(&model, DeviceKind::Cpu).unwrap();
    let data = Dataset::load(&inputs).unwrap();
    let sc = SparseConfig {
        sparsity: 0.5,
        scope: Scope::Global,
        prune_every: 3,
        ramp: 0.5,
        recovery: recovery(16),
        ..Default::default()
    };
    let (pruned, rows, _) = stage::sparse_variant(
        &trained.model,
        &sc,
        &data,
        &trained.vocab,
        1,
        DeviceKind::Cpu,
    )
    .unwrap();
    // The ramp ends at step 8; steps 8..16 train with fixed masks. AdamW moves every weight whose gradient
    // is non-zero, so without the re-applied masks the zeros would not survive those 8 steps.
    let overall = mmrl_compress::sparse::overall(&rows);
    assert!((overall - 0.5).abs() < 1e-3, "{overall}");
    assert!(
        rows.iter().all(|r| r.target.is_none()),
        "global scope sets no per-layer target"
    );
    let before = state(&trained.model);
    let after = state(&pruned);
    let mut moved = 0usize;
    for (p, e) in after.iter().filter(|(p, _)| prunable(p)) {
        for (a, b) in e.values.iter().zip(&before[p].values) {
            if *a != 0.0 && a != b {
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "recovery fine-tuning changed no kept weight");
}

#[test]
fn same_seed_gives_the_same_models() {
    let dir = tempfile::tempdir().unwrap();
    let (model, inputs) = fixture(dir.path());
    let mut c = config();
    c.quantize.enabled = false;
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let ra = stage::run(&c, 9, &model, &inputs, &a).unwrap();
    let rb = stage::run(&c, 9, &model, &inputs, &b).unwrap();
    for v in ["sparse", "pruned"] {
        let fa = std::fs::read(a.join(v).join("model.bpk")).unwrap();
        let fb = std::fs::read(b.join(v).join("model.bpk")).unwrap();
        assert!(fa == fb, "{v}/model.bpk differs between identical runs");
    }
    let em = |r: &stage::CompressReport| {
        r.variants
            .iter()
            .map(|v| v.val_exact_match)
            .collect::<Vec<_>>()
    };
    assert_eq!(em(&ra), em(&rb));
}

fn expect_config_err(c: &CompressConfig, field: &str) {
    match c.validate() {
        Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a config error on {field}, got {other:?}"),
    }
}

#[test]
fn bad_configs_name_the_field() {
    for s in [1.0, -0.1, 1.5, f64::NAN] {
        let mut c = CompressConfig::default();
        c.sparse.sparsity = s;
        expect_config_err(&c, "sparse.sparsity");
    }
    let mut c = CompressConfig::default();
    c.structured.head_fraction = 1.0;
    expect_config_err(&c, "structured.head_fraction");
    let mut c = CompressConfig::default();
    c.sparse.layers.insert("encoder.0".into(), 0.3);
    expect_config_err(&c, "sparse.layers");
    c.sparse.scope = Scope::PerLayer;
    c.sparse.layers.insert("head".into(), 1.0);
    expect_config_err(&c, "sparse.layers.\"head\"");
    let mut c = CompressConfig::default();
    c.quantize.bits = mmrl_compress::quant::Bits::Int4;
    expect_config_err(&c, "quantize.block");
    let unknown = serde_json::from_str::<CompressConfig>(r#"{"sparse": {"sparsty": 0.5}}"#);
    assert!(unknown.unwrap_err().to_string().contains("sparsty"));
}

/// A model artifact holding `model.bpk`, `config.json`, `vocab.json` copied from `from`, with `edit` applied
/// to the config and `model` replacing the weights when given.
fn model_artifact(
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
    model: Option<&mmrl_model::MultimodalModel>,
) -> PathBuf {
    let info = StageInfo {
        stage: "sft".into(),
        crate_name: "test".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: None,
    };
    let mut w = ArtifactWriter::create(to, info).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    w.write_json("config.json", Role::State, &cfg).unwrap();
    w.write_bytes(
        "vocab.json",
        Role::State,
        &std::fs::read(from.join("vocab.json")).unwrap(),
    )
    .unwrap();
    match model {
        Some(m) => {
            use burn::module::Module;
            m.clone()
                .into_record()
                .save(w.tmp_dir().join("model.bpk"))
                .unwrap();
        }
        None => {
            std::fs::copy(from.join("model.bpk"), w.tmp_dir().join("model.bpk")).unwrap();
        }
    }
    w.add_file("model.bpk", Role::State).unwrap();
    w.commit().unwrap();
    to.to_path_buf()
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (model, inputs) = fixture(dir.path());
    let out = dir.path().join("out");

    // A checkpoint of another config.
    let other = model_artifact(
        &model,
        &dir.path().join("other"),
        |c| c["ff_mult"] = 3.into(),
        None,
    );
    let err = stage::run(&config(), 1, &other, &inputs, &out).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Input { .. }) && msg.contains("different model config"),
        "{msg}"
    );

    // An already quantized model.
    let trained = load_trained(&model, DeviceKind::Cpu).unwrap();
    let q = mmrl_compress::quant::quantize(trained.model, Default::default()).unwrap();
    let quantized = model_artifact(&model, &dir.path().join("q"), |_| {}, Some(&q));
    let err = stage::run(&config(), 1, &quantized, &inputs, &out).unwrap_err();
    assert!(
        matches!(err, Error::Quantize(ref m) if m.contains("already quantized")),
        "{err}"
    );

    // More heads than a layer has.
    let mut c = config();
    c.structured.heads = Some(vec![5, 1]);
    let err = stage::run(&c, 1, &model, &inputs, &out).unwrap_err();
    assert!(
        matches!(err, Error::Prune(ref m) if m.contains("cannot remove 5 attention heads of 4")),
        "{err}"
    );
    // A count list of the wrong length.
    c.structured.heads = Some(vec![1]);
    let err = stage::run(&c, 1, &model, &inputs, &out).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref field, .. } if field == "structured.heads"),
        "{err}"
    );

    // Data the model was not trained on (no image input although the model reads images).
    let no_image = InputPaths {
        image: None,
        ..inputs.clone()
    };
    let err = stage::run(&config(), 1, &model, &no_image, &out).unwrap_err();
    assert!(matches!(err, Error::Input { .. }), "{err}");
    assert!(!out.exists(), "no artifact is committed on error");
}

#[test]
fn the_binary_names_an_unknown_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmrl-compress"))
        .args(["compress", "--input"])
        .arg(format!("modle={}", dir.path().display()))
        .arg("--input")
        .arg(format!("samples={}", dir.path().display()))
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown input \"modle\"") && stderr.contains("model, samples"),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists());
}
