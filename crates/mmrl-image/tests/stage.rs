//! End-to-end tests of the image stage and of `preprocess`, on select-like artifacts built in code.
// The fixture helpers below are test code too; `allow-unwrap-in-tests` only covers the #[test] functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray, UInt16Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use image::{ExtendedColorType, ImageEncoder};
use mmrl_artifact::sample::{self, tensor_shape};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_image::{
    AugmentConfig, Error, ImageConfig, ImageReport, ImageState, Policy, folder, stage,
};
use rand::{Rng, SeedableRng};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A seeded RGB8 picture: a gradient, a few rectangles, mild noise.
fn pattern(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rects: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..4)
        .map(|_| {
            let (x, y) = (rng.random_range(0..w), rng.random_range(0..h));
            (
                x,
                y,
                rng.random_range(2..=w / 2 + 2),
                rng.random_range(2..=h / 2 + 2),
                rng.random(),
            )
        })
        .collect();
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let rect = rects
                .iter()
                .rev()
                .find(|r| x >= r.0 && x < r.0 + r.2 && y >= r.1 && y < r.1 + r.3);
            for c in 0..3u32 {
                let base = match rect {
                    Some(r) => f32::from(r.4[c as usize]),
                    None => ((x * 7 + y * 3 + c * 50) % 256) as f32 * 0.8,
                };
                out.push((base + rng.random_range(-3.0..3.0f32)).clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

fn png_rgb(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn jpeg_rgb(rgb: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(rgb, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn picture(seed: u64) -> Vec<u8> {
    png_rgb(&pattern(24, 20, seed), 24, 20)
}

/// A select-like artifact: the sample schema, every split set, plus select's `repeat` column.
fn write_samples(dir: &Path, rows: &[(&str, &str, Option<Vec<u8>>)]) -> PathBuf {
    let mut fields = sample::fixed_fields();
    fields.push(Field::new("repeat", DataType::UInt32, false));
    let schema = Arc::new(Schema::new(fields));
    let n = rows.len();
    let strings = |f: &dyn Fn(usize) -> Option<String>| -> ArrayRef {
        Arc::new((0..n).map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|i| Some(rows[i].0.to_owned())),
        strings(&|i| Some(rows[i].1.to_owned())),
        strings(&|_| Some("shapes".into())),
        strings(&|_| Some("count".into())),
        strings(&|i| Some(format!("question {i}"))),
        strings(&|_| Some("3".into())),
        Arc::new(rows.iter().map(|r| r.2.as_deref()).collect::<BinaryArray>()),
        Arc::new(BinaryArray::from(vec![None::<&[u8]>; n])),
        Arc::new(UInt64Array::from(
            (0..n as u64).map(|i| i + 2).collect::<Vec<_>>(),
        )),
        Arc::new(UInt32Array::from(vec![1u32; n])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = dir.join("select");
    let info = StageInfo {
        stage: "select".into(),
        crate_name: "test".into(),
        crate_version: "0".into(),
        config: serde_json::json!({}),
        seed: Some(1),
    };
    let mut writer = ArtifactWriter::create(&path, info).unwrap();
    writer
        .write_table("samples", Role::Data, schema, &[batch])
        .unwrap();
    writer.commit().unwrap();
    path
}

/// One row of the images table: id, split, view, image_present, tensor.
type ImageRow = (String, String, u16, bool, Option<Vec<f32>>);

/// What a run wrote, read back.
struct Output {
    report: ImageReport,
    state: serde_json::Value,
    rows: Vec<ImageRow>,
    rejects: Vec<(String, String, String)>,
    content_hash: String,
    table_hash: String,
    shape: Vec<usize>,
}

fn run(
    dir: &Path,
    name: &str,
    config: &ImageConfig,
    seed: u64,
    samples: &Path,
) -> Result<Output, Error> {
    let out = dir.join(name);
    let report = stage::run(config, seed, samples, &out)?;
    let artifact = Artifact::open(&out).unwrap();
    artifact.verify_hashes().unwrap();
    let (schema, batches) = artifact.read_table(stage::TABLE).unwrap();
    let shape = tensor_shape(schema.field_with_name(stage::TENSOR).unwrap()).unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let splits = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let views = b.column(2).as_any().downcast_ref::<UInt16Array>().unwrap();
        let present = b.column(3).as_any().downcast_ref::<BooleanArray>().unwrap();
        let tensors = b
            .column(4)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let tensor = tensors.is_valid(i).then(|| {
                let v = tensors.value(i);
                v.as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            });
            rows.push((
                ids.value(i).to_owned(),
                splits.value(i).to_owned(),
                views.value(i),
                present.value(i),
                tensor,
            ));
        }
    }
    let (_, reject_batches) = artifact.read_table("rejects").unwrap();
    let mut rejects = Vec::new();
    for b in &reject_batches {
        let ids = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let reasons = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        let details = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            rejects.push((
                ids.value(i).to_owned(),
                reasons.value(i).to_owned(),
                details.value(i).to_owned(),
            ));
        }
    }
    let state =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    let manifest = artifact.manifest();
    let table_hash = manifest.output("images.parquet").unwrap().blake3.clone();
    Ok(Output {
        report,
        state,
        rows,
        rejects,
        content_hash: manifest.content_hash.clone(),
        table_hash,
        shape,
    })
}

fn small(size: u32) -> ImageConfig {
    ImageConfig {
        size,
        ..ImageConfig::default()
    }
}

#[test]
fn the_stage_writes_a_fixed_shape_tensor_per_kept_sample() -> TestResult {
    let dir = tempfile::tempdir()?;
    let samples = write_samples(
        dir.path(),
        &[
            ("a", "train", Some(picture(1))),
            ("b", "train", None),
            ("c", "val", Some(jpeg_rgb(&pattern(30, 20, 2), 30, 20, 90))),
            ("d", "test", Some(picture(3))),
        ],
    );
    let out = run(dir.path(), "image", &small(12), 7, &samples)?;
    assert_eq!(out.shape, vec![3, 12, 12]);
    let summary: Vec<(&str, &str, u16, bool, bool)> = out
        .rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2, r.3, r.4.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            ("a", "train", 0, true, true),
            ("b", "train", 0, false, false),
            ("c", "val", 0, true, true),
            ("d", "test", 0, true, true)
        ]
    );
    assert!(
        out.rows
            .iter()
            .filter_map(|r| r.4.as_ref())
            .all(|t| t.len() == 3 * 12 * 12 && t.iter().all(|v| v.is_finite()))
    );
    assert_eq!(
        (
            out.report.rows_in,
            out.report.present,
            out.report.absent_in_input
        ),
        (4, 3, 1)
    );
    let manifest = Artifact::open(dir.path().join("image"))?.manifest().clone();
    assert_eq!(manifest.fit_splits, ["train"]);
    assert_eq!(manifest.inputs[0].name, "samples");
    assert_eq!(out.state["fit_images"], 1);
    Ok(())
}

#[test]
fn normalization_is_fit_on_train_only_and_applied_unchanged_to_val_and_test() -> TestResult {
    let dir = tempfile::tempdir()?;
    let train: Vec<(String, Vec<u8>)> =
        (0..4).map(|i| (format!("t{i}"), picture(10 + i))).collect();
    let build = |name: &str, other_seed: u64| {
        let mut rows: Vec<(&str, &str, Option<Vec<u8>>)> = train
            .iter()
            .map(|(id, bytes)| (id.as_str(), "train", Some(bytes.clone())))
            .collect();
        // Val and test images differ wildly between the two datasets (a bright one and a dark one).
        let bright: Vec<u8> = pattern(24, 20, other_seed)
            .iter()
            .map(|v| v / 4 + 190)
            .collect();
        rows.push(("v0", "val", Some(png_rgb(&bright, 24, 20))));
        rows.push((
            "x0",
            "test",
            Some(png_rgb(
                &pattern(24, 20, other_seed + 1)
                    .iter()
                    .map(|v| v / 5)
                    .collect::<Vec<_>>(),
                24,
                20,
            )),
        ));
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        write_samples(&sub, &rows)
    };
    let first = run(dir.path(), "one", &small(12), 1, &build("a", 100))?;
    let second = run(dir.path(), "two", &small(12), 1, &build("b", 200))?;
    assert_eq!(
        first.state["normalization"], second.state["normalization"],
        "val/test never change the fit"
    );
    assert_eq!(first.state["fit_images"], 4);

    // The fitted mean is the mean of the train images' pixels (0-1 scale), computed independently here.
    let pre = mmrl_image::Preprocessor::new(&small(12))?;
    let mut sums = mmrl_image::ChannelSums::default();
    for (_, bytes) in &train {
        sums.add(&pre.analyze(&mut mmrl_image::Scratch::new(), bytes)?.sums);
    }
    let fitted: [f64; 3] = serde_json::from_value(first.state["normalization"]["mean"].clone())?;
    for c in 0..3 {
        assert!(
            (fitted[c] - sums.mean()[c]).abs() < 1e-9,
            "channel {c}: {fitted:?} vs {:?}",
            sums.mean()
        );
    }
    // Train tensors are centred (mean 0 over the content pixels); the bright val image is not.
    let channel_mean = |t: &[f32], c: usize| t[c * 144..(c + 1) * 144].iter().sum::<f32>() / 144.0;
    let train_mean: f32 = first
        .rows
        .iter()
        .filter(|r| r.1 == "train")
        .map(|r| channel_mean(r.4.as_ref().unwrap(), 0))
        .sum::<f32>()
        / 4.0;
    assert!(train_mean.abs() < 0.05, "{train_mean}");
    let val = first.rows.iter().find(|r| r.0 == "v0").unwrap();
    assert!(channel_mean(val.4.as_ref().unwrap(), 0) > 0.5);
    Ok(())
}

/// The default pipeline's job in small: blank images dropped, planted exact duplicates reported.
#[test]
fn each_rejection_reason_is_reported_and_follows_its_policy() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = picture(20);
    let truncated = good[..good.len() / 2].to_vec();
    let blank = png_rgb(&[90u8; 3 * 24 * 20], 24, 20);
    let wide = png_rgb(&pattern(120, 10, 21), 120, 10);
    let huge = png_rgb(&pattern(80, 80, 22), 80, 80);
    let samples = write_samples(
        dir.path(),
        &[
            ("ok", "train", Some(good.clone())),
            ("ok2", "train", Some(picture(23))),
            ("cut", "train", Some(truncated)),
            ("text", "train", Some(b"not an image".to_vec())),
            ("big", "val", Some(huge)),
            ("wide", "val", Some(wide)),
            ("blank", "test", Some(blank)),
            ("copy", "test", Some(good.clone())),
        ],
    );
    let config = ImageConfig {
        max_pixels: 60 * 60,
        ..small(12)
    };
    let dropped = run(dir.path(), "drop", &config, 1, &samples)?;
    let reasons: Vec<(&str, &str)> = dropped
        .rejects
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    // The copy is in test, so its train original is the one dropped: test keeps every row it can.
    assert_eq!(
        reasons,
        [
            ("ok", "near_duplicate_across_splits"),
            ("cut", "undecodable_image"),
            ("text", "unsupported_format"),
            ("big", "image_too_large"),
            ("wide", "extreme_aspect"),
            ("blank", "blank_image"),
        ]
    );
    assert!(
        dropped
            .rejects
            .iter()
            .all(|r| r.2.contains(&format!("sample {:?}", r.0))),
        "details name the sample"
    );
    let kept: Vec<&str> = dropped.rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(kept, ["ok2", "copy"]);
    assert_eq!(
        dropped.report.dropped_by_reason.get("blank_image"),
        Some(&1)
    );
    assert_eq!(dropped.report.duplicates.identical_bytes_groups, 1);

    // With every policy at "absent" the samples stay, without image; the duplicate is still dropped.
    let absent = ImageConfig {
        on_undecodable: Policy::Absent,
        on_blank: Policy::Absent,
        on_extreme_aspect: Policy::Absent,
        ..config
    };
    let marked = run(dir.path(), "absent", &absent, 1, &samples)?;
    let rows: Vec<(&str, bool)> = marked.rows.iter().map(|r| (r.0.as_str(), r.3)).collect();
    assert_eq!(
        rows,
        [
            ("ok2", true),
            ("cut", false),
            ("text", false),
            ("big", false),
            ("wide", false),
            ("blank", false),
            ("copy", true)
        ]
    );
    assert_eq!(marked.rejects.len(), 1);
    assert_eq!(marked.report.marked_absent, 5);
    assert_eq!(
        marked.report.marked_absent_by_reason.get("image_too_large"),
        Some(&1)
    );
    assert_eq!(marked.report.marked_absent_samples.len(), 5);
    assert_eq!(
        dropped.state["normalization"], marked.state["normalization"],
        "absent images are not fit on"
    );
    Ok(())
}

#[test]
fn near_duplicates_never_straddle_splits_and_test_keeps_its_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = pattern(64, 48, 30);
    let original = png_rgb(&base, 64, 48);
    let reencoded = jpeg_rgb(&base, 64, 48, 80);
    let brighter = png_rgb(
        &base.iter().map(|v| v.saturating_add(6)).collect::<Vec<_>>(),
        64,
        48,
    );
    let other = png_rgb(&pattern(64, 48, 31), 64, 48);
    let twin = png_rgb(&pattern(64, 48, 33), 64, 48);
    let samples = write_samples(
        dir.path(),
        &[
            ("val-copy", "val", Some(original.clone())),
            ("train-orig", "train", Some(original.clone())),
            ("train-copy", "train", Some(original.clone())),
            ("test-jpeg", "test", Some(reencoded)),
            ("val-bright", "val", Some(brighter)),
            ("unrelated", "test", Some(other.clone())),
            (
                "pair-val",
                "val",
                Some(png_rgb(&pattern(64, 48, 32), 64, 48)),
            ),
            (
                "pair-test",
                "test",
                Some(png_rgb(&pattern(64, 48, 32), 64, 48)),
            ),
            ("twin-a", "train", Some(twin.clone())),
            ("twin-b", "train", Some(twin)),
        ],
    );
    let out = run(dir.path(), "image", &small(16), 1, &samples)?;
    let rejects: Vec<(&str, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    // Each group keeps its members in the most protected split (test, else val); the others are dropped.
    assert_eq!(
        rejects,
        [
            ("val-copy", "near_duplicate_across_splits"),
            ("train-orig", "near_duplicate_across_splits"),
            ("train-copy", "near_duplicate_across_splits"),
            ("val-bright", "near_duplicate_across_splits"),
            ("pair-val", "near_duplicate_across_splits"),
        ]
    );
    assert!(
        out.rejects[0].2.contains("test sample \"test-jpeg\"")
            && out.rejects[0].2.contains("from val"),
        "{}",
        out.rejects[0].2
    );
    assert!(
        out.rejects[4].2.contains("test sample \"pair-test\""),
        "{}",
        out.rejects[4].2
    );
    let groups = &out.report.duplicates.list;
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups[0].ids,
        [
            "val-copy",
            "train-orig",
            "train-copy",
            "test-jpeg",
            "val-bright"
        ]
    );
    assert_eq!(groups[0].splits, ["val", "train", "train", "test", "val"]);
    assert_eq!(groups[0].kept_split, "test");
    assert!(!groups[0].identical_bytes);
    assert_eq!(
        groups[0].dropped,
        ["val-copy", "train-orig", "train-copy", "val-bright"]
    );
    assert_eq!(groups[1].ids, ["pair-val", "pair-test"]);
    assert!(groups[1].identical_bytes);
    assert_eq!(
        (groups[2].ids.as_slice(), groups[2].dropped.len()),
        (["twin-a".to_owned(), "twin-b".to_owned()].as_slice(), 0)
    );
    assert_eq!(
        (
            out.report.duplicates.cross_split_groups,
            out.report.duplicates.dropped
        ),
        (2, 5)
    );
    // Every test row select wrote is still there; what each split lost is counted per split and reason.
    let test_ids: Vec<&str> = out
        .rows
        .iter()
        .filter(|r| r.1 == "test")
        .map(|r| r.0.as_str())
        .collect();
    assert_eq!(test_ids, ["test-jpeg", "unrelated", "pair-test"]);
    let lost = |split: &str| {
        out.report
            .dropped_by_split
            .get(split)
            .and_then(|m| m.get("near_duplicate_across_splits"))
            .copied()
    };
    assert_eq!(
        (lost("train"), lost("val"), lost("test")),
        (Some(2), Some(3), None)
    );
    // Within one split copies are kept (and reported) unless dedup_within_split asks otherwise.
    assert!(out.rows.iter().any(|r| r.0 == "twin-b"));
    let strict = run(
        dir.path(),
        "strict",
        &ImageConfig {
            dedup_within_split: true,
            ..small(16)
        },
        1,
        &samples,
    )?;
    assert!(
        strict
            .rejects
            .iter()
            .any(|r| r.0 == "twin-b" && r.1 == "near_duplicate" && r.2.contains("twin-a"))
    );
    // With distance 0 only identical hashes group: the re-encoded JPEG and the brighter copy may escape, the
    // exact copies never do.
    let exact = run(
        dir.path(),
        "exact",
        &ImageConfig {
            dedup_max_distance: 0,
            ..small(16)
        },
        1,
        &samples,
    )?;
    assert!(exact.rejects.iter().any(|r| r.0 == "train-orig"));
    assert!(exact.rejects.iter().any(|r| r.0 == "pair-val"));
    Ok(())
}

#[test]
fn augmentation_is_seeded_train_only_and_independent_of_threads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rows: Vec<(String, &str, Option<Vec<u8>>)> = (0..12)
        .map(|i| {
            (
                format!("s{i}"),
                ["train", "train", "val", "test"][i % 4],
                (i != 5).then(|| picture(40 + i as u64)),
            )
        })
        .collect();
    let rows: Vec<(&str, &str, Option<Vec<u8>>)> = rows
        .iter()
        .map(|(a, b, c)| (a.as_str(), *b, c.clone()))
        .collect();
    let samples = write_samples(dir.path(), &rows);
    let config = ImageConfig {
        augment: AugmentConfig {
            n_views: 2,
            cutout_prob: 0.5,
            ..AugmentConfig::default()
        },
        ..small(12)
    };
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let a = one_thread.install(|| run(dir.path(), "a", &config, 5, &samples))?;
    let four_threads = rayon::ThreadPoolBuilder::new().num_threads(4).build()?;
    let b = four_threads.install(|| run(dir.path(), "b", &config, 5, &samples))?;
    assert_eq!(
        a.table_hash, b.table_hash,
        "same seed, byte-identical tensors, whatever the thread count"
    );
    assert_eq!(a.content_hash, b.content_hash);

    // Train samples get views 1 and 2 (absent ones too, as null rows); val and test only view 0.
    for (id, split, _) in &rows {
        let views: Vec<u16> = a.rows.iter().filter(|r| r.0 == *id).map(|r| r.2).collect();
        let expected: &[u16] = if *split == "train" { &[0, 1, 2] } else { &[0] };
        assert_eq!(views, expected, "{id} ({split})");
    }
    assert_eq!(a.report.rows_out, 12 + 2 * 6);
    let s5: Vec<bool> = a.rows.iter().filter(|r| r.0 == "s5").map(|r| r.3).collect();
    assert_eq!(s5, [false, false, false]);

    let c = run(dir.path(), "c", &config, 6, &samples)?;
    let find = |o: &Output, id: &str, view: u16| {
        o.rows
            .iter()
            .find(|r| r.0 == id && r.2 == view)
            .unwrap()
            .4
            .clone()
            .unwrap()
    };
    assert_eq!(
        find(&a, "s0", 0),
        find(&c, "s0", 0),
        "the seed does not touch view 0"
    );
    assert_ne!(
        find(&a, "s0", 1),
        find(&c, "s0", 1),
        "but changes the views"
    );
    assert_ne!(
        find(&a, "s0", 1),
        find(&a, "s0", 2),
        "two views of one sample differ"
    );
    assert_eq!(
        a.state["normalization"], c.state["normalization"],
        "statistics come from view 0 only"
    );
    Ok(())
}

#[test]
fn inputs_that_break_the_contract_are_errors_naming_the_problem() -> TestResult {
    let dir = tempfile::tempdir()?;
    let samples = write_samples(
        dir.path(),
        &[
            ("a", "train", Some(picture(1))),
            ("a", "val", Some(picture(2))),
        ],
    );
    let err = stage::run(&small(8), 0, &samples, &dir.path().join("o1")).unwrap_err();
    assert!(
        matches!(&err, Error::Input { message, .. } if message.contains("\"a\" appears twice")),
        "{err}"
    );

    let sub = dir.path().join("nosplit");
    std::fs::create_dir_all(&sub)?;
    let samples = write_samples(&sub, &[("a", "holdout", Some(picture(1)))]);
    let err = stage::run(&small(8), 0, &samples, &dir.path().join("o2")).unwrap_err();
    assert!(err.to_string().contains("split is \"holdout\""), "{err}");

    let bad = ImageConfig {
        size: 1,
        ..ImageConfig::default()
    };
    let err = stage::run(&bad, 0, &samples, &dir.path().join("o3")).unwrap_err();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "size"),
        "{err}"
    );
    assert!(
        !dir.path().join("o3").exists(),
        "nothing is written on a config error"
    );

    // Images only in val: nothing to fit on is an error that says how to fix it.
    let sub = dir.path().join("noval");
    std::fs::create_dir_all(&sub)?;
    let samples = write_samples(
        &sub,
        &[("a", "train", None), ("b", "val", Some(picture(1)))],
    );
    let err = stage::run(&small(8), 0, &samples, &dir.path().join("o4")).unwrap_err();
    assert!(matches!(err, Error::NothingToFit { .. }), "{err}");
    let fixed = ImageConfig {
        mean: Some([0.5; 3]),
        std: Some([0.25; 3]),
        ..small(8)
    };
    let out = run(dir.path(), "o5", &fixed, 0, &samples)?;
    assert_eq!(out.state["fitted"], false);
    assert!(
        Artifact::open(dir.path().join("o5"))?
            .manifest()
            .fit_splits
            .is_empty()
    );
    Ok(())
}

#[test]
fn preprocess_turns_a_folder_into_tensors_keyed_by_file_name() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("images");
    std::fs::create_dir_all(input.join("sub"))?;
    std::fs::write(input.join("a.png"), picture(60))?;
    std::fs::write(
        input.join("sub/b.jpg"),
        jpeg_rgb(&pattern(40, 30, 61), 40, 30, 90),
    )?;
    std::fs::write(input.join("fake.png"), b"GIF89a not really a png")?;
    let good = jpeg_rgb(&pattern(40, 30, 62), 40, 30, 90);
    std::fs::write(input.join("cut.jpg"), &good[..good.len() - 40])?;
    std::fs::write(input.join("notes.txt"), "ignored")?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("nowhere.png"), input.join("dangling.png"))?;
    let output = dir.path().join("out.parquet");
    let report = folder::preprocess(Some(&small(10)), None, &input, &output)?;
    let rejects: Vec<(&str, &str)> = report
        .rejects
        .iter()
        .map(|r| (r.file.as_str(), r.reason.as_str()))
        .collect();
    let mut expected = vec![
        ("cut.jpg", "undecodable_image"),
        ("fake.png", "unsupported_format"),
    ];
    if cfg!(unix) {
        expected.insert(1, ("dangling.png", "undecodable_image"));
        assert!(
            report.rejects[1].detail.contains("cannot read"),
            "{}",
            report.rejects[1].detail
        );
    }
    assert_eq!(rejects, expected);

    let file = std::fs::File::open(&output)?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch?;
        assert_eq!(tensor_shape(batch.schema().field(2)), Some(vec![3, 10, 10]));
        let col = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        ids.extend((0..batch.num_rows()).map(|i| col.value(i).to_owned()));
    }
    assert_eq!(ids, ["a.png", "sub/b.jpg"]);

    // The saved state re-applies the same normalization to another folder.
    let state = ImageState::read(&folder::sidecar(&output, "state.json"))?;
    assert_eq!(state.fit_images, 2);
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other)?;
    std::fs::write(other.join("c.png"), picture(63))?;
    let again = folder::preprocess(
        None,
        Some(&state),
        &other,
        &dir.path().join("again.parquet"),
    )?;
    assert_eq!(again.summary.normalization, state.normalization);
    assert!(!again.summary.fitted);
    assert!(
        folder::preprocess(
            Some(&small(10)),
            Some(&state),
            &other,
            &dir.path().join("x.parquet")
        )
        .is_err()
    );
    Ok(())
}

/// An 8x8 grey scan from 0-16 ink levels, as the UCI/scikit-learn handwritten digits store them.
fn scan(levels: [[u8; 8]; 8]) -> Vec<u8> {
    levels
        .iter()
        .flatten()
        .map(|&v| (f32::from(v) * 255.0 / 16.0).round() as u8)
        .collect()
}

fn png_grey(pixels: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(pixels, w, h, ExtendedColorType::L8)
        .unwrap();
    out
}

fn jpeg_grey(pixels: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(pixels, w, h, ExtendedColorType::L8)
        .unwrap();
    out
}

/// Two writers' sevens: distinct scans of one character that look alike.
const SEVEN_A: [[u8; 8]; 8] = [
    [0, 2, 12, 16, 16, 16, 11, 0],
    [0, 3, 11, 8, 6, 13, 14, 0],
    [0, 0, 0, 0, 5, 16, 5, 0],
    [0, 0, 0, 1, 14, 11, 0, 0],
    [0, 0, 0, 9, 16, 3, 0, 0],
    [0, 0, 2, 16, 9, 0, 0, 0],
    [0, 0, 8, 16, 2, 0, 0, 0],
    [0, 0, 13, 10, 0, 0, 0, 0],
];
const SEVEN_B: [[u8; 8]; 8] = [
    [0, 1, 10, 16, 16, 16, 13, 1],
    [0, 2, 9, 8, 7, 14, 12, 0],
    [0, 0, 0, 0, 8, 16, 3, 0],
    [0, 0, 0, 3, 16, 9, 0, 0],
    [0, 0, 0, 11, 15, 2, 0, 0],
    [0, 0, 4, 16, 7, 0, 0, 0],
    [0, 0, 10, 15, 1, 0, 0, 0],
    [0, 0, 12, 8, 0, 0, 0, 0],
];
const ZERO: [[u8; 8]; 8] = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
];
const ONE: [[u8; 8]; 8] = [
    [0, 0, 0, 12, 13, 5, 0, 0],
    [0, 0, 0, 11, 16, 9, 0, 0],
    [0, 0, 3, 15, 16, 6, 0, 0],
    [0, 7, 15, 16, 16, 2, 0, 0],
    [0, 0, 1, 16, 16, 3, 0, 0],
    [0, 0, 1, 16, 16, 6, 0, 0],
    [0, 0, 1, 16, 16, 6, 0, 0],
    [0, 0, 0, 11, 16, 10, 0, 0],
];

/// On small low-detail scans, distinct scans of one character survive across splits while true copies
/// (re-encoded, brightened) are still caught, and the copy's train member is the one dropped.
#[test]
fn small_scans_are_compared_at_their_own_resolution() -> TestResult {
    let (seven_a, seven_b) = (scan(SEVEN_A), scan(SEVEN_B));
    let (zero, one) = (scan(ZERO), scan(ONE));
    let brighter_one: Vec<u8> = one.iter().map(|v| v.saturating_add(12)).collect();
    let rows = [
        ("seven-a", "train", png_grey(&seven_a, 8, 8)),
        ("seven-b", "test", png_grey(&seven_b, 8, 8)),
        ("zero", "train", png_grey(&zero, 8, 8)),
        ("zero-jpeg", "test", jpeg_grey(&zero, 8, 8, 80)),
        ("one", "train", png_grey(&one, 8, 8)),
        ("one-bright", "val", png_grey(&brighter_one, 8, 8)),
        ("photo", "train", picture(70)),
    ];

    // The old rule (16x16 thumbnails of the upscaled canvas correlating at 0.95) took the two sevens for copies.
    let config = ImageConfig::default();
    let pre = mmrl_image::Preprocessor::new(&config)?;
    let print = |bytes: &[u8]| {
        pre.analyze(&mut mmrl_image::Scratch::new(), bytes)
            .map(|a| a.fingerprint)
    };
    let (a, b) = (print(&rows[0].2)?, print(&rows[1].2)?);
    assert!(
        a.similarity(&b) >= 0.95 && mmrl_image::dedup::distance(a.hash, b.hash) <= 8,
        "the sevens are a hard case: correlation {}, hash distance {}",
        a.similarity(&b),
        mmrl_image::dedup::distance(a.hash, b.hash)
    );

    let dir = tempfile::tempdir()?;
    let samples = write_samples(
        dir.path(),
        &rows
            .iter()
            .map(|(id, split, bytes)| (*id, *split, Some(bytes.clone())))
            .collect::<Vec<_>>(),
    );
    let out = run(dir.path(), "image", &config, 1, &samples)?;
    let rejects: Vec<(&str, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    assert_eq!(
        rejects,
        [
            ("zero", "near_duplicate_across_splits"),
            ("one", "near_duplicate_across_splits")
        ],
        "{:?}",
        out.rejects
    );
    assert!(
        out.rejects[0].2.contains("8x8 thumbnail") && out.rejects[0].2.contains("\"zero-jpeg\""),
        "{}",
        out.rejects[0].2
    );
    let kept: Vec<&str> = out.rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        kept,
        ["seven-a", "seven-b", "zero-jpeg", "one-bright", "photo"]
    );

    // Turning the pixel check off (any difference allowed) brings the sevens back together: the check is what
    // tells them apart.
    let loose = ImageConfig {
        dedup_small_max_diff: 100.0,
        ..ImageConfig::default()
    };
    let merged = run(dir.path(), "loose", &loose, 1, &samples)?;
    assert!(
        merged.rejects.iter().any(|r| r.0 == "seven-a"),
        "{:?}",
        merged.rejects
    );
    Ok(())
}
