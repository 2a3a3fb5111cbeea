//! One image, bytes to canvas: the checks in order (format, size, aspect, decode, blank), the fit into the
//! square, the perceptual hash and, for train samples, the augmented views.

use fast_image_resize::Resizer;

use crate::augment;
use crate::config::ImageConfig;
use crate::decode::{self, Decoded, Format};
use crate::dedup::{Fingerprint, PerceptualHasher};
use crate::normalize::ChannelSums;
use crate::reject::{Reason, Reject};
use crate::resize::{self, Canvas, Placement, Region, Style};

/// What the first look at an image found: it passed every check.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The container format.
    pub format: Format,
    /// The decoded pixel layout (`rgb8`, `l16`, ...).
    pub layout: &'static str,
    /// Upright width in the file.
    pub width: u32,
    /// Upright height in the file.
    pub height: u32,
    /// The un-augmented image on the output grid.
    pub canvas: Canvas,
    /// Its per-channel sums (content pixels only).
    pub sums: ChannelSums,
    /// Its near-duplicate fingerprint (perceptual hash and thumbnail).
    pub fingerprint: Fingerprint,
}

/// Per-thread working memory reused from image to image: the resizer's buffers and the decode buffer (which
/// grows to the largest image seen, bounded by `max_pixels`).
#[derive(Debug, Default)]
pub struct Scratch {
    resizer: Resizer,
    buffer: Vec<u8>,
}

impl Scratch {
    /// Empty scratch space.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Turns encoded images into canvases according to an [`ImageConfig`]. Cheap to share between threads; each
/// thread brings its own [`Scratch`].
#[derive(Debug)]
pub struct Preprocessor {
    config: ImageConfig,
    hasher: PerceptualHasher,
}

impl Preprocessor {
    /// A preprocessor for a validated config.
    pub fn new(config: &ImageConfig) -> crate::Result<Self> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            hasher: PerceptualHasher::new(),
        })
    }

    /// The config in use.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// How images are drawn: the configured filter, size and alpha background.
    fn style(&self) -> Style {
        Style {
            filter: self.config.filter,
            size: self.config.size,
            background: self.config.alpha_background.map(|v| f32::from(v) / 255.0),
        }
    }

    /// The bytes a decoder may allocate: 8 bytes a pixel (16-bit RGBA) up to the pixel limit, plus slack for the
    /// decoder's own buffers.
    fn max_alloc(&self) -> u64 {
        self.config
            .max_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20)
    }

    /// Reads the header and applies the checks that need no pixels: format, zero size, pixel limit, aspect.
    fn probe<'a>(&self, bytes: &'a [u8]) -> Result<decode::Probe<'a>, Reject> {
        let probe = decode::probe(bytes)?;
        let (w, h) = (probe.width, probe.height);
        if probe.pixels() > self.config.max_pixels {
            return Err(Reject::new(
                Reason::ImageTooLarge,
                format!(
                    "{w}x{h} = {} pixels, over max_pixels {}",
                    probe.pixels(),
                    self.config.max_pixels
                ),
            ));
        }
        let aspect = f64::from(w.max(h)) / f64::from(w.min(h));
        if aspect > self.config.max_aspect_ratio {
            return Err(Reject::new(
                Reason::ExtremeAspect,
                format!(
                    "{w}x{h} has aspect ratio {aspect:.2}, over max_aspect_ratio {}",
                    self.config.max_aspect_ratio
                ),
            ));
        }
        Ok(probe)
    }

    /// Decodes at the smallest size that still serves every placement (when JPEG DCT scaling is on).
    fn decode(
        &self,
        scratch: &mut Scratch,
        probe: decode::Probe<'_>,
        want: (u32, u32),
    ) -> Result<Decoded, Reject> {
        let want = self.config.jpeg_dct_scaling.then_some(want);
        probe.decode_reusing(self.max_alloc(), want, &mut scratch.buffer)
    }

    /// Decodes and renders view 0; also returns its placement.
    fn view_zero(
        &self,
        scratch: &mut Scratch,
        probe: decode::Probe<'_>,
    ) -> Result<(Decoded, Canvas, Placement), Reject> {
        let placement = Placement::new(
            probe.width,
            probe.height,
            Region::FULL,
            self.config.fit,
            self.config.size,
        );
        let image = self.decode(scratch, probe, placement.min_decode_size())?;
        let canvas = resize::render(&mut scratch.resizer, &image, &placement, &self.style())?;
        Ok((image, canvas, placement))
    }

    /// The view-0 canvas of an image, without the blank check or hash: the fast path the bench measures.
    pub fn canvas(&self, scratch: &mut Scratch, bytes: &[u8]) -> Result<Canvas, Reject> {
        guard(|| {
            let (image, canvas, _) = self.view_zero(scratch, self.probe(bytes)?)?;
            image.recycle(&mut scratch.buffer);
            Ok(canvas)
        })
    }

    /// Checks an image and makes its view-0 canvas, statistics and fingerprint.
    pub fn analyze(&self, scratch: &mut Scratch, bytes: &[u8]) -> Result<Analysis, Reject> {
        guard(|| {
            let probe = self.probe(bytes)?;
            let (format, width, height) = (probe.format, probe.width, probe.height);
            let (image, canvas, placement) = self.view_zero(scratch, probe)?;
            let layout = image.pixels.layout();
            image.recycle(&mut scratch.buffer);
            let sums = ChannelSums::of(&canvas);
            let std = sums.std().map(|s| s * 255.0);
            if std.iter().all(|&s| s <= self.config.blank_max_std) {
                return Err(Reject::new(
                    Reason::BlankImage,
                    format!(
                        "near-constant image: channel std [{:.2}, {:.2}, {:.2}] (0-255 scale) all at most blank_max_std {}",
                        std[0], std[1], std[2], self.config.blank_max_std
                    ),
                ));
            }
            let detail = placement.source_pixels_across(width, height, self.config.size);
            let fingerprint = self.hasher.fingerprint(&canvas, detail);
            Ok(Analysis {
                format,
                layout,
                width,
                height,
                canvas,
                sums,
                fingerprint,
            })
        })
    }

    /// The canvases of an image that passed [`analyze`](Self::analyze): view 0, then `n_views` augmented views,
    /// each drawn from `augment::view_rng(seed, id, view)`.
    pub fn views(
        &self,
        scratch: &mut Scratch,
        bytes: &[u8],
        n_views: u16,
        seed: u64,
        id: &str,
    ) -> Result<Vec<Canvas>, Reject> {
        guard(|| {
            let probe = self.probe(bytes)?;
            let (width, height) = (probe.width, probe.height);
            let (fit, size, style) = (self.config.fit, self.config.size, self.style());
            let (image, first, _) = self.view_zero(scratch, probe)?;
            let mut canvases = vec![first];
            if n_views == 0 {
                image.recycle(&mut scratch.buffer);
                return Ok(canvases);
            }
            let mut plans: Vec<_> = (1..=n_views)
                .map(|view| {
                    let mut rng = augment::view_rng(seed, id, view);
                    let region = augment::sample_region(&mut rng, &self.config.augment);
                    (Placement::new(width, height, region, fit, size), rng)
                })
                .collect();
            // One decode serves every view: at the size the smallest crop needs, unless view 0's already does.
            let want = plans.iter().fold((1, 1), |(w, h), (p, _)| {
                let (pw, ph) = p.min_decode_size();
                (w.max(pw), h.max(ph))
            });
            let source = if image.width >= want.0.min(width) && image.height >= want.1.min(height) {
                image
            } else {
                image.recycle(&mut scratch.buffer);
                self.decode(scratch, self.probe(bytes)?, want)?
            };
            for (placement, rng) in &mut plans {
                let mut canvas = resize::render(&mut scratch.resizer, &source, placement, &style)?;
                augment::apply(&mut canvas, rng, &self.config.augment);
                canvases.push(canvas);
            }
            source.recycle(&mut scratch.buffer);
            Ok(canvases)
        })
    }
}

/// Runs decoder code so that a panic inside a third-party decoder (a bug, but one that malformed input could
/// trigger) becomes an `undecodable_image` reject instead of taking the whole run down.
fn guard<T>(f: impl FnOnce() -> Result<T, Reject>) -> Result<T, Reject> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Reject::new(
                Reason::UndecodableImage,
                format!("the decoder failed on this input: {message}"),
            ))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Fit;
    use image::{ExtendedColorType, ImageEncoder};
    use rand::{Rng, SeedableRng};

    /// A seeded RGB8 test picture: a gradient, a few rectangles, mild noise.
    pub(crate) fn pattern(w: u32, h: u32, seed: u64) -> Vec<u8> {
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
                        None => {
                            (x * 255 / w.max(1) + c * 40) as f32 * 0.6
                                + (y * 255 / h.max(1)) as f32 * 0.3
                        }
                    };
                    out.push((base + rng.random_range(-3.0..3.0f32)).clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    pub(crate) fn png(data: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(data, w, h, color)
            .unwrap();
        out
    }

    pub(crate) fn jpeg(
        data: &[u8],
        w: u32,
        h: u32,
        color: ExtendedColorType,
        exif: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        if let Some(exif) = exif {
            encoder.set_exif_metadata(exif).unwrap();
        }
        encoder.write_image(data, w, h, color).unwrap();
        out
    }

    fn grey(rgb: &[u8]) -> Vec<u8> {
        rgb.chunks_exact(3)
            .map(|p| ((u32::from(p[0]) * 3 + u32::from(p[1]) * 5 + u32::from(p[2]) * 2) / 10) as u8)
            .collect()
    }

    fn wide(v: &[u8]) -> Vec<u8> {
        v.iter()
            .flat_map(|&b| (u16::from(b) * 257).to_be_bytes())
            .collect()
    }

    /// Appends an alpha channel of `alpha` to every pixel.
    fn with_alpha(v: &[u8], channels: usize, alpha: u8) -> Vec<u8> {
        v.chunks_exact(channels)
            .flat_map(|p| p.iter().copied().chain([alpha]))
            .collect()
    }

    fn preprocessor(config: ImageConfig) -> Preprocessor {
        Preprocessor::new(&config).unwrap()
    }

    fn stretch16() -> Preprocessor {
        preprocessor(ImageConfig {
            size: 16,
            fit: Fit::Stretch,
            ..ImageConfig::default()
        })
    }

    /// Mean absolute difference over the pixels both canvases have (padding is NaN in both).
    fn mean_abs_diff(a: &Canvas, b: &Canvas) -> f32 {
        let pairs: Vec<f32> = a
            .data
            .iter()
            .zip(&b.data)
            .filter(|(x, y)| !x.is_nan() && !y.is_nan())
            .map(|(x, y)| (x - y).abs())
            .collect();
        pairs.iter().sum::<f32>() / pairs.len().max(1) as f32
    }

    /// Every encoding of the same picture must give (nearly) the same canvas: `tolerance` is the largest mean
    /// absolute difference allowed, on the 0-1 scale.
    fn check_same(pre: &Preprocessor, reference: &[u8], cases: &[(&str, Vec<u8>, f32)]) {
        let expected = pre.analyze(&mut Scratch::new(), reference).unwrap().canvas;
        for (name, bytes, tolerance) in cases {
            let got = pre
                .analyze(&mut Scratch::new(), bytes)
                .unwrap_or_else(|r| panic!("{name}: {r}"))
                .canvas;
            let diff = mean_abs_diff(&expected, &got);
            assert!(
                diff <= *tolerance,
                "{name}: mean abs diff {diff} > {tolerance}"
            );
        }
    }

    #[test]
    fn every_png_and_jpeg_layout_gives_the_same_rgb_canvas() {
        let (w, h) = (48, 40);
        let rgb = pattern(w, h, 1);
        let l = grey(&rgb);
        let pre = stretch16();
        check_same(
            &pre,
            &png(&rgb, w, h, ExtendedColorType::Rgb8),
            &[
                (
                    "rgba8 png",
                    png(&with_alpha(&rgb, 3, 255), w, h, ExtendedColorType::Rgba8),
                    1e-6,
                ),
                (
                    "rgb16 png",
                    png(&wide(&rgb), w, h, ExtendedColorType::Rgb16),
                    2.0 / 255.0,
                ),
                (
                    "rgba16 png",
                    png(
                        &wide(&with_alpha(&rgb, 3, 255)),
                        w,
                        h,
                        ExtendedColorType::Rgba16,
                    ),
                    2.0 / 255.0,
                ),
                (
                    "rgb jpeg",
                    jpeg(&rgb, w, h, ExtendedColorType::Rgb8, None),
                    4.0 / 255.0,
                ),
            ],
        );
        check_same(
            &pre,
            &png(&l, w, h, ExtendedColorType::L8),
            &[
                (
                    "la8 png",
                    png(&with_alpha(&l, 1, 255), w, h, ExtendedColorType::La8),
                    1e-6,
                ),
                (
                    "l16 png",
                    png(&wide(&l), w, h, ExtendedColorType::L16),
                    2.0 / 255.0,
                ),
                (
                    "grey jpeg",
                    jpeg(&l, w, h, ExtendedColorType::L8, None),
                    3.0 / 255.0,
                ),
            ],
        );
        // Grey becomes equal R, G and B.
        let canvas = pre
            .analyze(&mut Scratch::new(), &png(&l, w, h, ExtendedColorType::L8))
            .unwrap()
            .canvas;
        assert_eq!(canvas.data[..256], canvas.data[256..512]);
        assert_eq!(canvas.data[..256], canvas.data[512..]);
    }

    #[test]
    fn transparent_pixels_are_composited_onto_the_configured_background() {
        // Dark strokes on a transparent background that stores black, as many tools write it: grey+alpha 8 bit,
        // and RGBA 16 bit with a half-transparent stroke.
        let (w, h) = (24u32, 20u32);
        let stroke = |x: u32, y: u32| (x + y) % 7 < 2 || x == 12;
        let la8: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                if stroke(i % w, i / w) {
                    [40, 255]
                } else {
                    [0, 0]
                }
            })
            .collect();
        let on_white: Vec<u8> = (0..w * h)
            .map(|i| if stroke(i % w, i / w) { 40 } else { 255 })
            .collect();
        let pre = stretch16();
        check_same(
            &pre,
            &png(&on_white, w, h, ExtendedColorType::L8),
            &[(
                "la8 on white",
                png(&la8, w, h, ExtendedColorType::La8),
                1.0 / 255.0,
            )],
        );
        // Half-transparent black over a grey background is a darker grey.
        let rgba16: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let a: u16 = if stroke(i % w, i / w) { 65535 } else { 32768 };
                [0u16, 0, 0, a]
            })
            .flat_map(u16::to_ne_bytes)
            .collect();
        let background = 200u8;
        let grey_bg = preprocessor(ImageConfig {
            alpha_background: [background; 3],
            ..ImageConfig {
                size: 16,
                fit: Fit::Stretch,
                ..ImageConfig::default()
            }
        });
        let half = (f32::from(background) * (1.0 - 32768.0 / 65535.0)).round() as u8;
        let expected: Vec<u8> = (0..w * h)
            .map(|i| if stroke(i % w, i / w) { 0 } else { half })
            .collect();
        check_same(
            &grey_bg,
            &png(&expected, w, h, ExtendedColorType::L8),
            &[(
                "rgba16 on grey",
                png(&rgba16, w, h, ExtendedColorType::Rgba16),
                1.5 / 255.0,
            )],
        );
        // The background is the configured one: on black, the same strokes sit on black.
        let on_black: Vec<u8> = on_white
            .iter()
            .map(|&v| if v == 255 { 0 } else { v })
            .collect();
        let black = preprocessor(ImageConfig {
            alpha_background: [0; 3],
            ..ImageConfig {
                size: 16,
                fit: Fit::Stretch,
                ..ImageConfig::default()
            }
        });
        check_same(
            &black,
            &png(&on_black, w, h, ExtendedColorType::L8),
            &[(
                "la8 on black",
                png(&la8, w, h, ExtendedColorType::La8),
                1.0 / 255.0,
            )],
        );
    }

    #[test]
    fn jpeg_dct_scaling_stays_close_to_full_decoding() {
        let (w, h) = (1100, 1040);
        let rgb = pattern(w, h, 2);
        let bytes = jpeg(&rgb, w, h, ExtendedColorType::Rgb8, None);
        let scaled = preprocessor(ImageConfig {
            size: 64,
            fit: Fit::Stretch,
            ..ImageConfig::default()
        });
        let full = preprocessor(ImageConfig {
            size: 64,
            fit: Fit::Stretch,
            jpeg_dct_scaling: false,
            ..ImageConfig::default()
        });
        let a = scaled.analyze(&mut Scratch::new(), &bytes).unwrap().canvas;
        let b = full.analyze(&mut Scratch::new(), &bytes).unwrap().canvas;
        let diff = mean_abs_diff(&a, &b);
        assert!(
            diff > 0.0,
            "a 1100x1040 JPEG at 64 px should take the scaled path"
        );
        assert!(diff < 1.5 / 255.0, "mean abs diff {diff}");
    }

    /// An EXIF chunk (big-endian TIFF) holding only an orientation.
    fn exif_orientation(value: u8) -> Vec<u8> {
        let mut tiff = b"MM\0*\0\0\0\x08\0\x01".to_vec();
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, value, 0, 0, 0, 0, 0, 0]);
        tiff
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 32x16: left half red, right half blue. Orientation 6 (rotate 90 clockwise) puts red on top.
        let (w, h) = (32u32, 16u32);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                if i % w < w / 2 {
                    [220, 20, 20]
                } else {
                    [20, 20, 220]
                }
            })
            .collect();
        let pre = preprocessor(ImageConfig {
            size: 8,
            fit: Fit::Pad,
            ..ImageConfig::default()
        });
        let analysis = pre
            .analyze(
                &mut Scratch::new(),
                &jpeg(
                    &rgb,
                    w,
                    h,
                    ExtendedColorType::Rgb8,
                    Some(exif_orientation(6)),
                ),
            )
            .unwrap();
        assert_eq!((analysis.width, analysis.height), (16, 32), "upright size");
        let c = &analysis.canvas;
        let (red_top, blue_top) = (c.data[3], c.data[128 + 3]);
        let (red_bottom, blue_bottom) = (c.data[7 * 8 + 3], c.data[128 + 7 * 8 + 3]);
        assert!(
            red_top > 0.7 && blue_top < 0.3,
            "top is red: {red_top} {blue_top}"
        );
        assert!(
            red_bottom < 0.3 && blue_bottom > 0.7,
            "bottom is blue: {red_bottom} {blue_bottom}"
        );
        assert!(c.data[0].is_nan(), "a 1:2 image is padded left and right");
    }

    /// A PNG file from raw chunks, with correct CRCs, so headers the encoder would refuse can be built.
    fn raw_png(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        }
        out
    }

    fn ihdr(w: u32, h: u32) -> Vec<u8> {
        let mut d = w.to_be_bytes().to_vec();
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&[8, 2, 0, 0, 0]);
        d
    }

    /// Checks that `bytes` is refused for `reason` with a detail containing `needle`.
    fn check_reject(pre: &Preprocessor, name: &str, bytes: &[u8], reason: Reason, needle: &str) {
        match pre.analyze(&mut Scratch::new(), bytes) {
            Ok(_) => panic!("{name}: accepted, expected {reason}"),
            Err(r) => {
                assert_eq!(r.reason, reason, "{name}: {r}");
                assert!(
                    r.detail.contains(needle),
                    "{name}: {:?} lacks {needle:?}",
                    r.detail
                );
            }
        }
    }

    #[test]
    fn each_bad_input_is_refused_with_its_reason() {
        let pre = preprocessor(ImageConfig {
            max_pixels: 200 * 200,
            max_aspect_ratio: 4.0,
            ..ImageConfig::default()
        });
        let good_png = png(&pattern(40, 30, 3), 40, 30, ExtendedColorType::Rgb8);
        let good_jpeg = jpeg(&pattern(40, 30, 3), 40, 30, ExtendedColorType::Rgb8, None);
        pre.analyze(&mut Scratch::new(), &good_png).unwrap();
        pre.analyze(&mut Scratch::new(), &good_jpeg).unwrap();

        use Reason::*;
        check_reject(&pre, "empty", &[], UndecodableImage, "empty");
        check_reject(
            &pre,
            "text",
            b"id,question\n1,what?\n",
            UnsupportedFormat,
            "not a PNG or JPEG",
        );
        check_reject(
            &pre,
            "gif",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
            UnsupportedFormat,
            "Gif",
        );
        let mut fake_png = b"\x89PNG\r\n\x1a\n".to_vec();
        fake_png.extend_from_slice(b"this is not a png at all, only its signature");
        check_reject(
            &pre,
            "png signature, garbage after",
            &fake_png,
            UndecodableImage,
            "PNG",
        );
        check_reject(
            &pre,
            "truncated png",
            &good_png[..good_png.len() * 2 / 3],
            UndecodableImage,
            "",
        );
        check_reject(
            &pre,
            "truncated jpeg",
            &good_jpeg[..good_jpeg.len() * 2 / 3],
            UndecodableImage,
            "truncated",
        );
        // An empty zlib stream: the pixel data is never reached, the header decides.
        let idat = vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
        let header_only = |w, h| {
            raw_png(&[
                (b"IHDR", ihdr(w, h)),
                (b"IDAT", idat.clone()),
                (b"IEND", vec![]),
            ])
        };
        check_reject(
            &pre,
            "zero-width png",
            &header_only(0, 10),
            UndecodableImage,
            "",
        );
        check_reject(
            &pre,
            "too large",
            &header_only(300, 300),
            ImageTooLarge,
            "max_pixels",
        );
        // A decompression bomb's header claims 100k x 100k; it is refused before any pixel is inflated.
        check_reject(
            &pre,
            "bomb",
            &header_only(100_000, 100_000),
            ImageTooLarge,
            "10000000000 pixels",
        );
        check_reject(
            &pre,
            "extreme aspect",
            &png(&pattern(100, 20, 4), 100, 20, ExtendedColorType::Rgb8),
            ExtremeAspect,
            "5.00",
        );
        check_reject(
            &pre,
            "blank png",
            &png(&[77u8; 3 * 30 * 30], 30, 30, ExtendedColorType::Rgb8),
            BlankImage,
            "near-constant",
        );
        let blank_jpeg = jpeg(
            &[200u8, 30, 60].repeat(30 * 30),
            30,
            30,
            ExtendedColorType::Rgb8,
            None,
        );
        check_reject(&pre, "blank jpeg", &blank_jpeg, BlankImage, "near-constant");
    }

    #[test]
    fn mutated_files_never_panic() {
        let pre = stretch16();
        let seeds = [
            png(&pattern(37, 29, 5), 37, 29, ExtendedColorType::Rgb8),
            jpeg(&pattern(37, 29, 5), 37, 29, ExtendedColorType::Rgb8, None),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut refused = 0;
        for round in 0..400 {
            let mut bytes = seeds[round % 2].clone();
            match rng.random_range(0..3) {
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    for _ in 0..rng.random_range(1..8) {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] = rng.random();
                    }
                }
                _ => {
                    let i = rng.random_range(0..bytes.len());
                    bytes.insert(i, rng.random());
                }
            }
            // Either outcome is fine; what matters is that it returns.
            refused += usize::from(pre.analyze(&mut Scratch::new(), &bytes).is_err());
        }
        assert!(
            refused > 50,
            "most mutations break the file; {refused} of 400 refused"
        );
    }

    #[test]
    fn views_are_deterministic_and_differ_from_view_zero() {
        let config = ImageConfig {
            size: 16,
            augment: crate::config::AugmentConfig {
                n_views: 3,
                cutout_prob: 0.5,
                ..Default::default()
            },
            ..ImageConfig::default()
        };
        let pre = preprocessor(config);
        let bytes = png(&pattern(50, 40, 6), 50, 40, ExtendedColorType::Rgb8);
        let a = pre.views(&mut Scratch::new(), &bytes, 3, 9, "s1").unwrap();
        let b = pre.views(&mut Scratch::new(), &bytes, 3, 9, "s1").unwrap();
        assert_eq!(a.len(), 4);
        let same_bits = |x: &Canvas, y: &Canvas| {
            x.data
                .iter()
                .zip(&y.data)
                .all(|(p, q)| p.to_bits() == q.to_bits())
        };
        for (x, y) in a.iter().zip(&b) {
            assert!(same_bits(x, y), "bit-identical reruns");
        }
        assert!(
            same_bits(
                &a[0],
                &pre.analyze(&mut Scratch::new(), &bytes).unwrap().canvas
            ),
            "view 0 is the analyzed canvas"
        );
        for view in &a[1..] {
            assert!(
                mean_abs_diff(&a[0], view) > 1e-3,
                "an augmented view differs from view 0"
            );
        }
        let other_seed = pre.views(&mut Scratch::new(), &bytes, 3, 10, "s1").unwrap();
        assert!(
            mean_abs_diff(&a[1], &other_seed[1]) > 1e-4,
            "the seed changes the views"
        );
        assert!(same_bits(&a[0], &other_seed[0]), "but not view 0");
    }
}
