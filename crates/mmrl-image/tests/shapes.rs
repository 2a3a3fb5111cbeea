//! Every image shape a user's folder may hold goes through the image stage to the configured size: any size
//! and aspect ratio (up to `max_aspect_ratio`), grey, grey+alpha, RGB and RGBA, 8 and 16 bits, PNG and JPEG
//! (grey JPEG too), under each `fit` mode. Fixtures are built in code.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
    UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use image::{ExtendedColorType, ImageEncoder};
use mmrl_artifact::sample;
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use mmrl_image::resize::{Canvas, Placement, Region};
use mmrl_image::{Fit, ImageConfig, Preprocessor, Scratch, stage};
use rand::{Rng, SeedableRng};

/// How a fixture is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    PngL8,
    PngLa8,
    PngRgb8,
    PngRgba8,
    PngL16,
    PngLa16,
    PngRgb16,
    PngRgba16,
    JpegRgb,
    JpegGrey,
}

const KINDS: [Kind; 10] = [
    Kind::PngL8,
    Kind::PngLa8,
    Kind::PngRgb8,
    Kind::PngRgba8,
    Kind::PngL16,
    Kind::PngLa16,
    Kind::PngRgb16,
    Kind::PngRgba16,
    Kind::JpegRgb,
    Kind::JpegGrey,
];

impl Kind {
    /// The `format/layout` key the stage's report counts it under.
    fn report_key(self) -> &'static str {
        match self {
            Kind::PngL8 => "png/l8",
            Kind::PngLa8 => "png/la8",
            Kind::PngRgb8 => "png/rgb8",
            Kind::PngRgba8 => "png/rgba8",
            Kind::PngL16 => "png/l16",
            Kind::PngLa16 => "png/la16",
            Kind::PngRgb16 => "png/rgb16",
            Kind::PngRgba16 => "png/rgba16",
            Kind::JpegRgb => "jpeg/rgb8",
            Kind::JpegGrey => "jpeg/l8",
        }
    }
}

/// Upright sizes: tiny, a small square scan, odd portrait and landscape, a photo, aspect 4 both ways, and a
/// JPEG large enough for 1/8 DCT scaling.
const SHAPES: [(u32, u32); 8] = [
    (3, 2),
    (8, 8),
    (13, 7),
    (7, 13),
    (64, 48),
    (200, 50),
    (50, 200),
    (960, 720),
];

/// A seeded RGB8 picture: a gradient, a few rectangles, mild noise.
fn pattern(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rects: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..4)
        .map(|_| {
            let (x, y) = (rng.random_range(0..w), rng.random_range(0..h));
            (
                x,
                y,
                rng.random_range(1..=w / 2 + 1),
                rng.random_range(1..=h / 2 + 1),
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
                    None => ((x * 255 / w + y * 128 / h + c * 60) % 256) as f32,
                };
                out.push((base + rng.random_range(-3.0..3.0f32)).clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

fn grey(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| ((u32::from(p[0]) * 3 + u32::from(p[1]) * 5 + u32::from(p[2]) * 2) / 10) as u8)
        .collect()
}

/// Every 8-bit value as a 16-bit one (v * 257), in the native byte order the encoder expects; `alpha` appends an
/// opaque alpha channel after every `channels` values.
fn samples16(v: &[u8], channels: usize, alpha: bool) -> Vec<u8> {
    v.chunks_exact(channels)
        .flat_map(|p| {
            let mut px: Vec<u16> = p.iter().map(|&b| u16::from(b) * 257).collect();
            if alpha {
                px.push(u16::MAX);
            }
            px
        })
        .flat_map(u16::to_ne_bytes)
        .collect()
}

fn opaque(v: &[u8], channels: usize) -> Vec<u8> {
    v.chunks_exact(channels)
        .flat_map(|p| p.iter().copied().chain([255]))
        .collect()
}

fn png(data: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, w, h, color)
        .unwrap();
    out
}

fn jpeg(data: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(data, w, h, color)
        .unwrap();
    out
}

/// The picture `seed` at `w` x `h`, stored as `kind` (alpha channels opaque).
fn encode(kind: Kind, w: u32, h: u32, seed: u64) -> Vec<u8> {
    use ExtendedColorType as C;
    let rgb = pattern(w, h, seed);
    let l = grey(&rgb);
    match kind {
        Kind::PngL8 => png(&l, w, h, C::L8),
        Kind::PngLa8 => png(&opaque(&l, 1), w, h, C::La8),
        Kind::PngRgb8 => png(&rgb, w, h, C::Rgb8),
        Kind::PngRgba8 => png(&opaque(&rgb, 3), w, h, C::Rgba8),
        Kind::PngL16 => png(&samples16(&l, 1, false), w, h, C::L16),
        Kind::PngLa16 => png(&samples16(&l, 1, true), w, h, C::La16),
        Kind::PngRgb16 => png(&samples16(&rgb, 3, false), w, h, C::Rgb16),
        Kind::PngRgba16 => png(&samples16(&rgb, 3, true), w, h, C::Rgba16),
        Kind::JpegRgb => jpeg(&rgb, w, h, C::Rgb8),
        Kind::JpegGrey => jpeg(&l, w, h, C::L8),
    }
}

/// The same pixels as an 8-bit RGB PNG, decoded by the `image` crate: the reference every kind must match.
fn reference(bytes: &[u8]) -> Vec<u8> {
    let decoded = image::load_from_memory(bytes).unwrap().to_rgb8();
    let (w, h) = decoded.dimensions();
    png(decoded.as_raw(), w, h, ExtendedColorType::Rgb8)
}

/// Mean absolute difference over the pixels both canvases have; padding must coincide.
fn mean_abs_diff(a: &Canvas, b: &Canvas) -> f32 {
    assert_eq!(a.data.len(), b.data.len());
    let mut sum = 0.0f32;
    let mut n = 0usize;
    for (x, y) in a.data.iter().zip(&b.data) {
        assert_eq!(x.is_nan(), y.is_nan(), "padding differs");
        if !x.is_nan() {
            sum += (x - y).abs();
            n += 1;
        }
    }
    sum / n.max(1) as f32
}

/// One stored fixture and the reference it must match.
struct Fixture {
    kind: Kind,
    shape: (u32, u32),
    bytes: Vec<u8>,
    reference: Vec<u8>,
}

/// Checks that a fixture becomes the canvas its reference pixels give, with the padding the fit implies:
/// `tolerance` is the largest mean absolute difference on the 0-1 scale.
fn check(fixture: &Fixture, fit: Fit, size: u32, tolerance: f32) {
    let (kind, (w, h)) = (fixture.kind, fixture.shape);
    let config = ImageConfig {
        size,
        fit,
        ..ImageConfig::default()
    };
    let pre = Preprocessor::new(&config).unwrap();
    let what = format!("{kind:?} {w}x{h} {fit:?} to {size}");
    let got = pre
        .analyze(&mut Scratch::new(), &fixture.bytes)
        .unwrap_or_else(|r| panic!("{what}: {r}"));
    assert_eq!((got.width, got.height), (w, h), "{what}");
    assert_eq!(got.canvas.size, size as usize, "{what}");
    let expected = pre
        .analyze(&mut Scratch::new(), &fixture.reference)
        .unwrap()
        .canvas;
    let diff = mean_abs_diff(&got.canvas, &expected);
    assert!(diff <= tolerance, "{what}: mean abs diff {diff}");
    let content = Placement::new(w, h, Region::FULL, fit, size);
    let padding = got.canvas.data.iter().filter(|v| v.is_nan()).count();
    let expected_padding = 3 * (size * size - content.w * content.h) as usize;
    assert_eq!(padding, expected_padding, "{what}: padding");
    if fit != Fit::Pad {
        assert_eq!(padding, 0, "{what}: only pad leaves padding");
    }
}

#[test]
fn every_layout_size_and_aspect_fits_into_the_square_under_every_fit() {
    for kind in KINDS {
        // 16-bit values round to 8 bits in the reference; JPEG's 1/8 DCT scaling of the large photo stays within
        // about a grey level of a full decode.
        let tolerance = match kind {
            Kind::PngL16 | Kind::PngLa16 | Kind::PngRgb16 | Kind::PngRgba16 => 1.0 / 255.0,
            Kind::JpegRgb | Kind::JpegGrey => 2.0 / 255.0,
            _ => 1e-6,
        };
        for (w, h) in SHAPES {
            let bytes = encode(kind, w, h, u64::from(w * 31 + h));
            let fixture = Fixture {
                kind,
                shape: (w, h),
                reference: reference(&bytes),
                bytes,
            };
            for fit in [Fit::Pad, Fit::Stretch, Fit::CenterCrop] {
                for size in [16, 24] {
                    check(&fixture, fit, size, tolerance);
                }
            }
        }
    }
}

/// A select-like artifact: the sample schema, every split set, plus select's `repeat` column.
fn write_samples(dir: &Path, rows: &[(String, &str, Vec<u8>)]) -> PathBuf {
    let mut fields = sample::fixed_fields();
    fields.push(Field::new("repeat", DataType::UInt32, false));
    let schema = Arc::new(Schema::new(fields));
    let n = rows.len();
    let strings = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new((0..n).map(|i| Some(f(i))).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|i| rows[i].0.clone()),
        strings(&|i| rows[i].1.to_owned()),
        strings(&|_| "scan".into()),
        strings(&|_| "what".into()),
        strings(&|i| format!("question {i}")),
        strings(&|_| "3".into()),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.2.as_slice()))
                .collect::<BinaryArray>(),
        ),
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

/// The stage's tensors by id.
fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let artifact = Artifact::open(dir).unwrap();
    let (_, batches) = artifact.read_table(stage::TABLE).unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let list = b
            .column(4)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let v = list.value(i);
            let values = v.as_any().downcast_ref::<Float32Array>().unwrap();
            out.push((ids.value(i).to_owned(), values.values().to_vec()));
        }
    }
    out
}

#[test]
fn the_stage_writes_every_kind_and_shape_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for (k, kind) in KINDS.into_iter().enumerate() {
        for (s, (w, h)) in SHAPES.into_iter().enumerate() {
            let split = ["train", "train", "val", "test"][(k + s) % 4];
            rows.push((
                format!("{kind:?}-{w}x{h}"),
                split,
                encode(kind, w, h, (k * 100 + s) as u64),
            ));
        }
    }
    let samples = write_samples(dir.path(), &rows);
    let size = 24u32;
    let config = ImageConfig {
        size,
        ..ImageConfig::default()
    };
    let report = stage::run(&config, 1, &samples, &dir.path().join("image")).unwrap();
    assert_eq!(
        (report.rows_in, report.present, report.dropped),
        (rows.len(), rows.len(), 0),
        "{:?}",
        report.dropped_by_reason
    );
    for kind in KINDS {
        assert_eq!(
            report.formats.get(kind.report_key()),
            Some(&SHAPES.len()),
            "{kind:?}: {:?}",
            report.formats
        );
    }
    let written = tensors(&dir.path().join("image"));
    assert_eq!(written.len(), rows.len());
    for ((id, tensor), (expected_id, _, _)) in written.iter().zip(&rows) {
        assert_eq!(id, expected_id);
        assert_eq!(tensor.len(), 3 * 24 * 24, "{id}");
        assert!(tensor.iter().all(|v| v.is_finite()), "{id}");
    }
    // Padding normalizes to exactly 0: a 200x50 image padded into 24x24 keeps rows 9..15 (its 24x6 content).
    let wide = &written
        .iter()
        .find(|(id, _)| id == "PngRgb8-200x50")
        .unwrap()
        .1;
    for (i, v) in wide.iter().enumerate() {
        let row = (i % (24 * 24)) / 24;
        assert_eq!(*v == 0.0, !(9..15).contains(&row), "value {i}: {v}");
    }
}

#[test]
fn aspect_ratios_past_the_limit_follow_their_policy_and_pass_when_it_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        (
            "strip".to_owned(),
            "train",
            encode(Kind::PngRgb8, 120, 10, 7),
        ),
        (
            "square".to_owned(),
            "train",
            encode(Kind::PngRgb8, 30, 30, 8),
        ),
    ];
    let samples = write_samples(dir.path(), &rows);
    let default = stage::run(
        &ImageConfig::default(),
        1,
        &samples,
        &dir.path().join("default"),
    )
    .unwrap();
    assert_eq!(default.dropped_by_reason.get("extreme_aspect"), Some(&1));
    let raised = ImageConfig {
        max_aspect_ratio: 20.0,
        ..ImageConfig::default()
    };
    let report = stage::run(&raised, 1, &samples, &dir.path().join("raised")).unwrap();
    assert_eq!((report.present, report.dropped), (2, 0));
}
