//! End-to-end tests of the audio stage on a select-like artifact built in code.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, BinaryBuilder, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
    StringBuilder, UInt16Array, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use mmrl_artifact::sample::{self, tensor_shape};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_audio::denoise::{Method, NoiseSource};
use mmrl_audio::stage::{self, AudioConfig, AudioState, FlagAction};
use mmrl_audio::wav::encode_with_spec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn spec(channels: u16, rate: u32, bits: u16, float: bool) -> hound::WavSpec {
    hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    }
}

/// A 1 s DTMF-like tone burst (0.3-0.7 s) in white noise at `snr_db`, mono, `rate` Hz.
fn tone_in_noise(rate: u32, snr_db: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rate as usize;
    let tone: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            if (0.3..0.7).contains(&t) {
                0.1 * ((2.0 * std::f64::consts::PI * 852.0 * t).sin()
                    + (2.0 * std::f64::consts::PI * 1336.0 * t).sin())
            } else {
                0.0
            }
        })
        .collect();
    let sigma = (0.01f64 / 10f64.powf(snr_db / 10.0)).sqrt();
    tone.iter()
        .map(|s| s + sigma * rng.sample::<f64, _>(StandardNormal))
        .collect()
}

fn wav16(x: &[f64]) -> Vec<u8> {
    encode_with_spec(x, spec(1, 8000, 16, false)).unwrap()
}

/// One input row: id, split, task, qtype, audio bytes.
struct Row {
    id: &'static str,
    split: &'static str,
    task: &'static str,
    qtype: &'static str,
    audio: Option<Vec<u8>>,
}

fn row(id: &'static str, split: &'static str, audio: Option<Vec<u8>>) -> Row {
    Row {
        id,
        split,
        task: "tone",
        qtype: "tone_digit",
        audio,
    }
}

/// The default fixture: tone clips in every split plus one row per bad input and per flag.
fn fixture(val_seed: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let train_ids = ["t0", "t1", "t2", "t3", "t4", "t5"];
    for (i, id) in train_ids.into_iter().enumerate() {
        rows.push(row(
            id,
            "train",
            Some(wav16(&tone_in_noise(8000, 5.0 * i as f64 - 5.0, i as u64))),
        ));
    }
    rows.push(row(
        "v0",
        "val",
        Some(wav16(&tone_in_noise(8000, 10.0, val_seed))),
    ));
    rows.push(row(
        "v1",
        "val",
        Some(wav16(&tone_in_noise(8000, 0.0, val_seed + 1))),
    ));
    rows.push(row(
        "x0",
        "test",
        Some(wav16(&tone_in_noise(8000, 15.0, val_seed + 2))),
    ));
    // Other encodings: stereo 44.1 kHz float, 24-bit 16 kHz.
    let stereo: Vec<f64> = tone_in_noise(44100, 10.0, 40)
        .iter()
        .flat_map(|v| [*v, *v])
        .collect();
    rows.push(row(
        "f0",
        "train",
        Some(encode_with_spec(&stereo, spec(2, 44100, 32, true)).unwrap()),
    ));
    rows.push(row(
        "p0",
        "train",
        Some(encode_with_spec(&tone_in_noise(16000, 10.0, 41), spec(1, 16000, 24, false)).unwrap()),
    ));
    // Flags.
    rows.push(row("silent", "train", Some(wav16(&[0.0; 8000]))));
    let loud: Vec<f64> = tone_in_noise(8000, 10.0, 50)
        .iter()
        .map(|v| (v * 20.0).clamp(-1.0, 1.0))
        .collect();
    rows.push(row("clipped", "val", Some(wav16(&loud))));
    rows.push(row("missing", "train", None));
    rows.push(Row {
        id: "masked",
        split: "train",
        task: "shapes",
        qtype: "count_shapes",
        audio: Some(wav16(&[0.1; 100])),
    });
    rows.push(Row {
        id: "masked_q",
        split: "test",
        task: "compare",
        qtype: "battery_or_triangle",
        audio: Some(wav16(&[0.1; 100])),
    });
    // Bad input.
    let good = wav16(&tone_in_noise(8000, 10.0, 60));
    rows.push(row(
        "truncated",
        "train",
        Some(good[..good.len() / 2].to_vec()),
    ));
    rows.push(row("empty", "val", Some(Vec::new())));
    rows.push(row("zero_samples", "val", Some(wav16(&[]))));
    let mut nan = tone_in_noise(8000, 10.0, 61);
    nan[100] = f64::NAN;
    rows.push(row(
        "nan",
        "test",
        Some(encode_with_spec(&nan, spec(1, 8000, 32, true)).unwrap()),
    ));
    rows.push(row(
        "inf",
        "test",
        Some(encode_with_spec(&[0.0, f64::INFINITY], spec(1, 8000, 32, true)).unwrap()),
    ));
    rows.push(row(
        "rate",
        "train",
        Some(encode_with_spec(&[0.1; 100], spec(1, 7, 16, false)).unwrap()),
    ));
    let mut adpcm = good.clone();
    adpcm[20..22].copy_from_slice(&2u16.to_le_bytes());
    rows.push(row("adpcm", "train", Some(adpcm)));
    rows.push(row(
        "garbage",
        "test",
        Some(b"ID3\x03\x00 an mp3 file, not a wav at all".to_vec()),
    ));
    rows
}

/// Writes a select-like artifact (sample schema plus `repeat`) at `dir`.
fn write_samples(dir: &Path, rows: &[Row]) {
    let mut fields: Vec<Field> = sample::sample_schema(&[])
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("repeat", DataType::UInt32, false));
    let schema = Arc::new(Schema::new(fields));
    let (mut id, mut split, mut task, mut qtype, mut q, mut a) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut image, mut audio, mut line, mut repeat) = (
        BinaryBuilder::new(),
        BinaryBuilder::new(),
        UInt64Builder::new(),
        UInt32Builder::new(),
    );
    for (i, r) in rows.iter().enumerate() {
        id.append_value(r.id);
        split.append_value(r.split);
        task.append_value(r.task);
        qtype.append_value(r.qtype);
        q.append_value("what digit is the tone");
        a.append_value("5");
        image.append_null();
        audio.append_option(r.audio.as_deref());
        line.append_value(i as u64 + 2);
        repeat.append_value(1);
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(id.finish()),
            Arc::new(split.finish()),
            Arc::new(task.finish()),
            Arc::new(qtype.finish()),
            Arc::new(q.finish()),
            Arc::new(a.finish()),
            Arc::new(image.finish()),
            Arc::new(audio.finish()),
            Arc::new(line.finish()),
            Arc::new(repeat.finish()),
        ],
    )
    .unwrap();
    let info = StageInfo {
        stage: "select".into(),
        crate_name: "test".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: None,
    };
    let mut writer = ArtifactWriter::create(dir, info).unwrap();
    writer
        .write_table("samples", Role::Data, schema, &[batch])
        .unwrap();
    writer.commit().unwrap();
}

fn config() -> AudioConfig {
    let mut c = AudioConfig::default();
    c.filter.mask_tasks = vec!["shapes".into(), "battery_or_triangle".into()];
    c.threads = 2;
    c
}

struct Out {
    ids: Vec<String>,
    views: Vec<u16>,
    present: Vec<bool>,
    snr: Vec<Option<f32>>,
    mel_valid: Vec<bool>,
    mel: Vec<f32>,
    rejects: Vec<(String, String)>,
    report: serde_json::Value,
    artifact: Artifact,
}

fn read(dir: &Path) -> Out {
    let artifact = Artifact::open(dir).unwrap();
    artifact.verify_hashes().unwrap();
    let (schema, batches) = artifact.read_table(stage::TABLE).unwrap();
    let field = schema.field_with_name(stage::MEL).unwrap();
    let shape = tensor_shape(field).unwrap();
    assert_eq!(shape, vec![32, 63]);
    let mut out = Out {
        ids: Vec::new(),
        views: Vec::new(),
        present: Vec::new(),
        snr: Vec::new(),
        mel_valid: Vec::new(),
        mel: Vec::new(),
        rejects: Vec::new(),
        report: serde_json::Value::Null,
        artifact: artifact.clone(),
    };
    for b in &batches {
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let ids = col("id");
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let views = col("view");
        let views = views.as_any().downcast_ref::<UInt16Array>().unwrap();
        let present = col(stage::PRESENT);
        let present = present.as_any().downcast_ref::<BooleanArray>().unwrap();
        let snr = col(stage::SNR);
        let snr = snr.as_any().downcast_ref::<Float32Array>().unwrap();
        let mel = col(stage::MEL);
        let mel = mel.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        for i in 0..b.num_rows() {
            out.ids.push(ids.value(i).to_owned());
            out.views.push(views.value(i));
            out.present.push(present.value(i));
            out.snr.push((!snr.is_null(i)).then(|| snr.value(i)));
            out.mel_valid.push(mel.is_valid(i));
            if mel.is_valid(i) {
                let v = mel.value(i);
                out.mel.extend(
                    v.as_any()
                        .downcast_ref::<Float32Array>()
                        .unwrap()
                        .values()
                        .iter(),
                );
            }
        }
    }
    let (_, rejects) = artifact.read_table("rejects").unwrap();
    for b in &rejects {
        let ids = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let reasons = b
            .column_by_name("reason")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            out.rejects
                .push((ids.value(i).to_owned(), reasons.value(i).to_owned()));
        }
    }
    out.report = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    out
}

fn run(config: &AudioConfig, rows: &[Row], seed: u64) -> (tempfile::TempDir, Out) {
    let tmp = tempfile::tempdir().unwrap();
    write_samples(&tmp.path().join("select"), rows);
    stage::run(
        config,
        &tmp.path().join("select"),
        &tmp.path().join("audio"),
        seed,
    )
    .unwrap();
    let out = read(&tmp.path().join("audio"));
    (tmp, out)
}

/// The fate of a sample: `present`, `absent`, or the reject reason.
fn fate(out: &Out, id: &str) -> String {
    if let Some((_, reason)) = out.rejects.iter().find(|(i, _)| i == id) {
        return reason.clone();
    }
    let i = out
        .ids
        .iter()
        .position(|i| i == id)
        .unwrap_or_else(|| panic!("{id} is neither in the table nor rejected"));
    assert_eq!(out.views[i], 0);
    assert_eq!(
        out.present[i], out.mel_valid[i],
        "{id}: present and tensor validity disagree"
    );
    if out.present[i] {
        "present".into()
    } else {
        "absent".into()
    }
}

#[test]
fn the_stage_denoises_filters_and_featurizes() {
    let (_tmp, out) = run(&config(), &fixture(100), 7);
    let check = |id: &str, expected: &str| assert_eq!(fate(&out, id), expected, "sample {id}");
    for id in [
        "t0", "t1", "t2", "t3", "t4", "t5", "v0", "v1", "x0", "f0", "p0",
    ] {
        check(id, "present");
    }
    for id in ["silent", "clipped", "missing", "masked", "masked_q"] {
        check(id, "absent");
    }
    check("truncated", "truncated_audio");
    check("empty", "empty_audio");
    check("zero_samples", "empty_audio");
    check("nan", "non_finite_samples");
    check("inf", "non_finite_samples");
    check("rate", "bad_sample_rate");
    check("adpcm", "unsupported_encoding");
    check("garbage", "undecodable_audio");

    // Every train sample kept has views 0 and 1, the others view 0 only.
    let views_of = |id: &str| {
        out.ids
            .iter()
            .zip(&out.views)
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    assert_eq!(views_of("t0"), vec![0, 1]);
    assert_eq!(views_of("missing"), vec![0, 1]);
    assert_eq!(views_of("v0"), vec![0]);
    assert_eq!(views_of("x0"), vec![0]);
    // The SNR column follows the true SNR of the train clips (-5, 0, .. 20 dB) in order.
    let snr_of = |id: &str| out.snr[out.ids.iter().position(|i| i == id).unwrap()].unwrap();
    let train_snr: Vec<f32> = ["t0", "t1", "t2", "t3", "t4", "t5"]
        .iter()
        .map(|id| snr_of(id))
        .collect();
    assert!(
        train_snr.windows(2).all(|w| w[0] < w[1]),
        "estimated SNRs {train_snr:?} are not increasing"
    );
    assert!(out.snr[out.ids.iter().position(|i| i == "silent").unwrap()].is_none());
    assert!(out.mel.iter().all(|v| v.is_finite()));

    let r = &out.report;
    assert_eq!(r["rows"], 24);
    assert_eq!(r["dropped"], 8);
    assert_eq!(r["present"], 11);
    assert_eq!(r["absent_by_reason"]["masked_task"], 2);
    assert_eq!(r["absent_by_reason"]["silent_audio"], 1);
    assert_eq!(r["absent_by_reason"]["clipped_audio"], 1);
    assert_eq!(r["absent_by_reason"]["missing_audio"], 1);
    assert_eq!(r["rejects_by_reason"]["non_finite_samples"], 2);
    // Denoising measurably improves the SNR.
    let gain = r["snr"]["mean_snr_gain_db"].as_f64().unwrap();
    let (before, after) = (
        r["snr"]["mean_before_db"].as_f64().unwrap(),
        r["snr"]["mean_after_db"].as_f64().unwrap(),
    );
    assert!(gain > 3.0, "estimated SNR gain {gain} dB");
    assert!(after > before + 3.0, "blind SNR {before} -> {after} dB");
    assert_eq!(out.artifact.manifest().fit_splits, vec!["train".to_owned()]);
}

#[test]
fn train_view_zero_features_are_normalized_per_mel_bin() {
    let (tmp, out) = run(&config(), &fixture(100), 7);
    let state = AudioState::read(&tmp.path().join("audio").join("state.json")).unwrap();
    assert_eq!(state.mel_shape, [32, 63]);
    assert_eq!(
        state.mel_norm.frames,
        8 * 63,
        "fit on the 8 present train clips, view 0 only"
    );
    // Over train view 0 the normalized values have mean 0 and std 1 per mel bin.
    let per = 32 * 63;
    let mut k = 0;
    let mut sums = vec![(0.0f64, 0.0f64, 0usize); 32];
    for (i, valid) in out.mel_valid.iter().enumerate() {
        if !valid {
            continue;
        }
        let mel = &out.mel[k * per..(k + 1) * per];
        k += 1;
        let id = &out.ids[i];
        let train = id.starts_with('t') || id == "f0" || id == "p0";
        if train && out.views[i] == 0 {
            for (m, row) in mel.chunks_exact(63).enumerate() {
                for v in row {
                    sums[m].0 += f64::from(*v);
                    sums[m].1 += f64::from(*v) * f64::from(*v);
                    sums[m].2 += 1;
                }
            }
        }
    }
    for (m, (s, s2, n)) in sums.iter().enumerate() {
        let mean = s / *n as f64;
        let std = (s2 / *n as f64 - mean * mean).sqrt();
        assert!(mean.abs() < 1e-3, "mel bin {m}: mean {mean}");
        assert!(
            (std - 1.0).abs() < 1e-2 || std < 1e-6,
            "mel bin {m}: std {std}"
        );
    }
}

#[test]
fn same_seed_same_artifact_whatever_the_thread_count() {
    let rows = fixture(100);
    let mut one = config();
    one.threads = 1;
    let (_a, a) = run(&one, &rows, 3);
    let mut four = config();
    four.threads = 4;
    let (_b, b) = run(&four, &rows, 3);
    assert_eq!(
        a.artifact.manifest().content_hash,
        b.artifact.manifest().content_hash
    );
    let (_c, c) = run(&one, &rows, 4);
    assert_ne!(
        a.artifact.manifest().content_hash,
        c.artifact.manifest().content_hash,
        "the seed drives augmentation"
    );
}

#[test]
fn fitting_reads_train_rows_only() {
    // Train noise profile, NMF dictionaries and mel normalization: none may change when val/test audio changes.
    let mut c = config();
    c.denoise.method = Method::Nmf;
    c.denoise.noise_source = NoiseSource::Train;
    c.denoise.nmf.speech_atoms = 4;
    c.denoise.nmf.noise_atoms = 2;
    c.denoise.nmf.fit_iterations = 10;
    let (ta, a) = run(&c, &fixture(100), 1);
    let (tb, b) = run(&c, &fixture(200), 1);
    let state =
        |t: &tempfile::TempDir| std::fs::read(t.path().join("audio").join("state.json")).unwrap();
    assert_eq!(state(&ta), state(&tb));
    let parsed = AudioState::read(&ta.path().join("audio").join("state.json")).unwrap();
    assert!(parsed.fitted.noise.is_some() && parsed.fitted.nmf.is_some());
    assert_eq!(parsed.fit_clips, 8);
    // The val rows themselves did change.
    let snr = |o: &Out| o.snr[o.ids.iter().position(|i| i == "v0").unwrap()];
    assert_ne!(snr(&a), snr(&b));
}

#[test]
fn flag_actions_drop_keep_or_mark_absent() {
    let mut c = config();
    c.filter.on_silent = FlagAction::Drop;
    c.filter.on_clipped = FlagAction::Keep;
    c.filter.min_snr_db = 100.0;
    c.filter.on_low_snr = FlagAction::MarkAbsent;
    let (_t, out) = run(&c, &fixture(100), 7);
    assert_eq!(fate(&out, "silent"), "silent_audio");
    // Clipped is kept by its own action, then marked absent by the low-SNR check like every clip.
    assert_eq!(fate(&out, "clipped"), "absent");
    assert_eq!(fate(&out, "t5"), "absent");
    assert_eq!(out.report["absent_by_reason"]["low_snr"], 12);
    assert_eq!(out.report["flagged"]["clipped_audio"], 1);

    let mut c = config();
    c.filter.on_clipped = FlagAction::Keep;
    let (_t, out) = run(&c, &fixture(100), 7);
    assert_eq!(fate(&out, "clipped"), "present");
    assert_eq!(out.report["flagged"]["clipped_audio"], 1);
}

#[test]
fn bad_configs_are_refused_before_any_work() {
    let check = |edit: &dyn Fn(&mut AudioConfig), field: &str| {
        let mut c = AudioConfig::default();
        edit(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "expected {field} in {e:?}");
    };
    check(&|c| c.sample_rate = 10, "sample_rate");
    check(&|c| c.clip_seconds = 0.0, "clip_seconds");
    check(&|c| c.clip_seconds = 0.01, "clip_seconds");
    check(&|c| c.filter.clip_level = 0.0, "filter.clip_level");
    check(
        &|c| c.filter.mask_tasks = vec![" ".into()],
        "filter.mask_tasks",
    );
    check(&|c| c.denoise.hop = 0, "denoise.hop");
    check(&|c| c.mel.n_mels = 1000, "mel.n_mels");
    check(&|c| c.mel.fmax = 4001.0, "mel.fmax");
    check(&|c| c.augment.gain_db = [3.0, -3.0], "augment.gain_db");
    check(&|c| c.decode.min_sample_rate = 0, "decode.min_sample_rate");
    let unknown: Result<AudioConfig, _> =
        toml::from_str("[denoise]\nmethod = \"wiener\"\nbogus = 1\n");
    assert!(unknown.unwrap_err().to_string().contains("bogus"));
    let method: Result<AudioConfig, _> = toml::from_str("[denoise]\nmethod = \"magic\"\n");
    assert!(method.is_err());
    // A split-less input is refused with the sample named.
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = fixture(100);
    rows[0].split = "holdout";
    write_samples(&tmp.path().join("select"), &rows);
    let e = stage::run(
        &config(),
        &tmp.path().join("select"),
        &tmp.path().join("audio"),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"t0\""), "{e}");
    assert!(!tmp.path().join("audio").exists());
}

/// A clip of `seconds` at `rate` Hz in `channels` channels (same signal in each), in `bits`-bit integer or
/// 32-bit float samples: faint noise with a tone burst over 20-60% of its first second (a steady tone would read
/// as noise to the blind SNR estimate).
fn shaped_wav(
    rate: u32,
    channels: u16,
    bits: u16,
    float: bool,
    seconds: f64,
    seed: u64,
) -> Vec<u8> {
    let n = (seconds * f64::from(rate)).round() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let interleaved: Vec<f64> = (0..n)
        .flat_map(|i| {
            let t = i as f64 / f64::from(rate);
            let kept = seconds.min(1.0);
            let burst = (0.2 * kept..0.6 * kept).contains(&t);
            let v =
                f64::from(u8::from(burst)) * 0.3 * (2.0 * std::f64::consts::PI * 697.0 * t).sin()
                    + 0.01 * rng.sample::<f64, _>(StandardNormal);
            std::iter::repeat_n(v, usize::from(channels))
        })
        .collect();
    encode_with_spec(&interleaved, spec(channels, rate, bits, float)).unwrap()
}

#[test]
fn every_rate_length_and_encoding_goes_through_the_stage() {
    let ids: Vec<&'static str> = (0..18)
        .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
        .collect();
    let shapes = [
        (8000, 1, 16, false, 1.0),
        (11025, 2, 8, false, 0.2),
        (16000, 1, 24, false, 3.5),
        (22050, 2, 32, false, 0.05),
        (44100, 2, 32, true, 12.0),
        (48000, 1, 16, false, 0.6),
        (32000, 2, 24, false, 1.0),
        (12345, 1, 32, true, 2.2),
        (8000, 2, 8, false, 0.01),
    ];
    let mut rows = Vec::new();
    for (i, (rate, channels, bits, float, seconds)) in shapes.into_iter().enumerate() {
        for (k, split) in ["train", "test"].into_iter().enumerate() {
            let seed = (2 * i + k) as u64;
            rows.push(row(
                ids[2 * i + k],
                split,
                Some(shaped_wav(rate, channels, bits, float, seconds, seed)),
            ));
        }
    }
    let c = AudioConfig {
        threads: 2,
        ..AudioConfig::default()
    };
    let (_t, out) = run(&c, &rows, 1);
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    for r in &rows {
        assert_eq!(fate(&out, r.id), "present", "{}", r.id);
    }
    assert_eq!(out.report["present"], rows.len());
    assert!(out.mel.iter().all(|v| v.is_finite()));
}

#[test]
fn mask_tasks_must_name_a_task_or_question_type_of_the_data() {
    let rows = fixture(100);
    let tmp = tempfile::tempdir().unwrap();
    write_samples(&tmp.path().join("select"), &rows);
    let mut c = config();
    c.filter.mask_tasks = vec!["shapes".into(), "sensor".into()];
    let e = stage::run(&c, &tmp.path().join("select"), &tmp.path().join("audio"), 0).unwrap_err();
    let message = e.to_string();
    for needle in [
        "filter.mask_tasks",
        "\"sensor\"",
        "tasks: [\"compare\", \"shapes\", \"tone\"]",
        "question types: [\"battery_or_triangle\", \"count_shapes\", \"tone_digit\"]",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    assert!(
        !message.contains("\"shapes\" is"),
        "only the unknown entry is named: {message}"
    );
    assert!(!tmp.path().join("audio").exists(), "nothing is written");

    // Empty masks nothing: the rows of the masked task keep their audio (a flat clip, flagged low-SNR or silent
    // at worst, but never masked_task).
    let mut none = config();
    none.filter.mask_tasks.clear();
    assert_eq!(
        AudioConfig::default().filter.mask_tasks,
        Vec::<String>::new()
    );
    let (_t, out) = run(&none, &rows, 7);
    assert!(out.report["absent_by_reason"].get("masked_task").is_none());

    // A question type masks only its rows.
    let mut qtype = config();
    qtype.filter.mask_tasks = vec!["battery_or_triangle".into()];
    let (_t, out) = run(&qtype, &rows, 7);
    assert_eq!(out.report["absent_by_reason"]["masked_task"], 1);
    assert_eq!(fate(&out, "masked_q"), "absent");
}
