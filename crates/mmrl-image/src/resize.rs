//! Fitting a region of a decoded image into the square output, with `fast_image_resize`.
//!
//! The resizer runs on the decoded pixel layout (grey, RGBA, 16-bit, ...) and only its small output is turned
//! into planar RGB `f32` on the 0-1 scale: grey is replicated, 16-bit values are divided by 65535, and alpha is
//! composited onto the configured background (`alpha_background`, white by default). Resizing an alpha layout
//! premultiplies it (fast_image_resize's `use_alpha`), so a transparent pixel's stored color never bleeds into
//! its neighbours, and compositing the resized pixels is then exactly compositing the image before resizing
//! (both are linear). Pillow's `convert("RGB")` drops alpha instead, which turns dark strokes on a transparent
//! background into a black image when the transparent pixels store black. Pixels outside the image (padding)
//! are NaN in the [`Canvas`]; they normalize to 0 and are left out of every statistic.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::{U8, U8x2, U8x3, U8x4, U16, U16x2, U16x3, U16x4};
use fast_image_resize::{FilterType, PixelTrait, ResizeAlg, ResizeOptions, Resizer};

use crate::config::{Filter, Fit};
use crate::decode::{Decoded, Pixels};
use crate::reject::{Reason, Reject};

/// A rectangle of the source image in relative coordinates: `x`, `y`, `w`, `h` in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl Region {
    /// The whole image.
    pub const FULL: Region = Region {
        x: 0.0,
        y: 0.0,
        w: 1.0,
        h: 1.0,
    };
}

/// Where a source region lands on the canvas: the region actually read (after a centre crop) and the
/// destination rectangle in canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// The part of the source read, relative.
    pub src: Region,
    /// Left edge on the canvas.
    pub x0: u32,
    /// Top edge on the canvas.
    pub y0: u32,
    /// Width on the canvas.
    pub w: u32,
    /// Height on the canvas.
    pub h: u32,
}

impl Placement {
    /// Places `region` of an upright `full_w` x `full_h` image on a `size` x `size` canvas.
    pub fn new(full_w: u32, full_h: u32, region: Region, fit: Fit, size: u32) -> Self {
        // Aspect ratio of the region in source pixels.
        let aspect =
            (region.w * f64::from(full_w)) / (region.h * f64::from(full_h)).max(f64::MIN_POSITIVE);
        let side = |v: f64| (v.round() as u32).clamp(1, size);
        match fit {
            Fit::Stretch => Placement {
                src: region,
                x0: 0,
                y0: 0,
                w: size,
                h: size,
            },
            Fit::Pad => {
                let (w, h) = if aspect >= 1.0 {
                    (size, side(f64::from(size) / aspect))
                } else {
                    (side(f64::from(size) * aspect), size)
                };
                Placement {
                    src: region,
                    x0: (size - w) / 2,
                    y0: (size - h) / 2,
                    w,
                    h,
                }
            }
            Fit::CenterCrop => {
                let src = if aspect > 1.0 {
                    let w = region.w / aspect;
                    Region {
                        x: region.x + (region.w - w) / 2.0,
                        w,
                        ..region
                    }
                } else {
                    let h = region.h * aspect;
                    Region {
                        y: region.y + (region.h - h) / 2.0,
                        h,
                        ..region
                    }
                };
                Placement {
                    src,
                    x0: 0,
                    y0: 0,
                    w: size,
                    h: size,
                }
            }
        }
    }

    /// How many source pixels (of an upright `full_w` x `full_h` image) span the canvas side, along the axis
    /// with fewer: the real resolution behind a canvas of side `size`. An 8x8 scan padded or stretched onto a
    /// 32 px canvas has 8; a 640x480 photo has 480 (stretch, centre crop) or 640 (pad).
    pub fn source_pixels_across(&self, full_w: u32, full_h: u32, size: u32) -> u32 {
        let across = |src: f64, full: u32, dst: u32| {
            src * f64::from(full) * f64::from(size) / f64::from(dst.max(1))
        };
        let x = across(self.src.w, full_w, self.w);
        let y = across(self.src.h, full_h, self.h);
        // The small epsilon keeps 7.9999999 (float rounding of an exact 8) at 8.
        (x.min(y) + 1e-6).floor().clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// The smallest decoded size (upright) at which the source region still has at least as many pixels as its
    /// destination, so that a reduced-scale decode never has to be enlarged again.
    pub fn min_decode_size(&self) -> (u32, u32) {
        let need = |dst: u32, rel: f64| {
            (f64::from(dst) / rel.max(1e-9))
                .ceil()
                .min(f64::from(u32::MAX)) as u32
        };
        (need(self.w, self.src.w), need(self.h, self.src.h))
    }
}

/// An image on the output grid: planar RGB `f32` (`3 x size x size`, channel-major) on the 0-1 scale, NaN where
/// there is no image content (padding, or what an augmentation removed).
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// Side in pixels.
    pub size: usize,
    /// `3 * size * size` values.
    pub data: Vec<f32>,
}

impl Canvas {
    /// A canvas with no content.
    pub fn empty(size: usize) -> Self {
        Self {
            size,
            data: vec![f32::NAN; 3 * size * size],
        }
    }

    /// Pixels per channel.
    pub fn plane(&self) -> usize {
        self.size * self.size
    }
}

fn filter_type(filter: Filter) -> FilterType {
    match filter {
        Filter::Box => FilterType::Box,
        Filter::Bilinear => FilterType::Bilinear,
        Filter::Hamming => FilterType::Hamming,
        Filter::CatmullRom => FilterType::CatmullRom,
        Filter::Lanczos3 => FilterType::Lanczos3,
    }
}

/// Values of a pixel as RGB on the 0-1 scale, alpha composited onto `bg`.
trait ToRgb: PixelTrait {
    fn rgb(&self, bg: &[f32; 3]) -> [f32; 3];
}

const U8_SCALE: f32 = 1.0 / 255.0;
const U16_SCALE: f32 = 1.0 / 65535.0;

/// `color * alpha + bg * (1 - alpha)` per channel, `alpha` on the 0-1 scale.
fn over(color: [f32; 3], alpha: f32, bg: &[f32; 3]) -> [f32; 3] {
    [0, 1, 2].map(|c| color[c] * alpha + bg[c] * (1.0 - alpha))
}

impl ToRgb for U8 {
    fn rgb(&self, _: &[f32; 3]) -> [f32; 3] {
        let v = f32::from(self.0) * U8_SCALE;
        [v, v, v]
    }
}
impl ToRgb for U8x2 {
    fn rgb(&self, bg: &[f32; 3]) -> [f32; 3] {
        let [l, a] = self.0.map(|v| f32::from(v) * U8_SCALE);
        over([l, l, l], a, bg)
    }
}
impl ToRgb for U8x3 {
    fn rgb(&self, _: &[f32; 3]) -> [f32; 3] {
        self.0.map(|v| f32::from(v) * U8_SCALE)
    }
}
impl ToRgb for U8x4 {
    fn rgb(&self, bg: &[f32; 3]) -> [f32; 3] {
        let [r, g, b, a] = self.0.map(|v| f32::from(v) * U8_SCALE);
        over([r, g, b], a, bg)
    }
}
impl ToRgb for U16 {
    fn rgb(&self, _: &[f32; 3]) -> [f32; 3] {
        let v = f32::from(self.0) * U16_SCALE;
        [v, v, v]
    }
}
impl ToRgb for U16x2 {
    fn rgb(&self, bg: &[f32; 3]) -> [f32; 3] {
        let [l, a] = self.0.map(|v| f32::from(v) * U16_SCALE);
        over([l, l, l], a, bg)
    }
}
impl ToRgb for U16x3 {
    fn rgb(&self, _: &[f32; 3]) -> [f32; 3] {
        self.0.map(|v| f32::from(v) * U16_SCALE)
    }
}
impl ToRgb for U16x4 {
    fn rgb(&self, bg: &[f32; 3]) -> [f32; 3] {
        let [r, g, b, a] = self.0.map(|v| f32::from(v) * U16_SCALE);
        over([r, g, b], a, bg)
    }
}

/// How a decoded image is drawn onto the canvas: the resampling filter, the canvas side and the color that
/// transparent pixels are composited onto (RGB, 0-1 scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    /// The resampling filter.
    pub filter: Filter,
    /// The canvas side in pixels.
    pub size: u32,
    /// The background under transparent pixels, RGB on the 0-1 scale.
    pub background: [f32; 3],
}

/// Resizes the placement's source region of `image` into a new canvas of side `style.size`.
pub fn render(
    resizer: &mut Resizer,
    image: &Decoded,
    placement: &Placement,
    style: &Style,
) -> Result<Canvas, Reject> {
    let (filter, size) = (style.filter, style.size);
    let mut canvas = Canvas::empty(size as usize);
    let (w, h) = (f64::from(image.width), f64::from(image.height));
    let src = placement.src;
    // Clamped so that rounding in the placement never reaches outside the image.
    let left = (src.x * w).clamp(0.0, w - 1.0);
    let top = (src.y * h).clamp(0.0, h - 1.0);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter_type(filter)))
        .use_alpha(true)
        .crop(
            left,
            top,
            (src.w * w).clamp(1.0, w - left),
            (src.h * h).clamp(1.0, h - top),
        );
    let (iw, ih) = (image.width, image.height);
    let args = (resizer, &mut canvas, placement, &options, &style.background);
    match &image.pixels {
        Pixels::L8(p) => draw(
            args,
            TypedImageRef::<U8>::from_buffer(iw, ih, p).map_err(buffer)?,
        ),
        Pixels::La8(p) => draw(
            args,
            TypedImageRef::<U8x2>::from_buffer(iw, ih, p).map_err(buffer)?,
        ),
        Pixels::Rgb8(p) => draw(
            args,
            TypedImageRef::<U8x3>::from_buffer(iw, ih, p).map_err(buffer)?,
        ),
        Pixels::Rgba8(p) => draw(
            args,
            TypedImageRef::<U8x4>::from_buffer(iw, ih, p).map_err(buffer)?,
        ),
        Pixels::L16(p) => draw(args, TypedImageRef::new(iw, ih, p).map_err(buffer)?),
        Pixels::La16(p) => draw(args, TypedImageRef::new(iw, ih, p).map_err(buffer)?),
        Pixels::Rgb16(p) => draw(args, TypedImageRef::new(iw, ih, p).map_err(buffer)?),
        Pixels::Rgba16(p) => draw(args, TypedImageRef::new(iw, ih, p).map_err(buffer)?),
    }?;
    Ok(canvas)
}

fn buffer(e: impl std::fmt::Display) -> Reject {
    Reject::new(
        Reason::UndecodableImage,
        format!("decoded pixel buffer does not match the image size: {e}"),
    )
}

type DrawArgs<'a> = (
    &'a mut Resizer,
    &'a mut Canvas,
    &'a Placement,
    &'a ResizeOptions,
    &'a [f32; 3],
);

fn draw<P: ToRgb>(
    (resizer, canvas, placement, options, background): DrawArgs<'_>,
    src: TypedImageRef<'_, P>,
) -> Result<(), Reject> {
    let mut dst = TypedImage::<P>::new(placement.w, placement.h);
    resizer
        .resize_typed(&src, &mut dst, options)
        .map_err(|e| Reject::new(Reason::UndecodableImage, format!("resizing failed: {e}")))?;
    let plane = canvas.plane();
    let (size, x0, y0, w) = (
        canvas.size,
        placement.x0 as usize,
        placement.y0 as usize,
        placement.w as usize,
    );
    for (row, pixels) in dst.pixels().chunks_exact(w).enumerate() {
        let start = (y0 + row) * size + x0;
        for (x, pixel) in pixels.iter().enumerate() {
            let rgb = pixel.rgb(background);
            for (c, v) in rgb.into_iter().enumerate() {
                canvas.data[c * plane + start + x] = v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Format;

    fn check(full: (u32, u32), fit: Fit, expected: (u32, u32, u32, u32)) {
        let p = Placement::new(full.0, full.1, Region::FULL, fit, 32);
        assert_eq!((p.x0, p.y0, p.w, p.h), expected, "{full:?} {fit:?}");
    }

    #[test]
    fn placements_keep_or_distort_the_aspect_ratio_as_configured() {
        check((64, 64), Fit::Pad, (0, 0, 32, 32));
        check((200, 100), Fit::Pad, (0, 8, 32, 16));
        check((100, 200), Fit::Pad, (8, 0, 16, 32));
        check((200, 100), Fit::Stretch, (0, 0, 32, 32));
        check((200, 100), Fit::CenterCrop, (0, 0, 32, 32));
        let crop = Placement::new(200, 100, Region::FULL, Fit::CenterCrop, 32).src;
        assert!(
            (crop.x - 0.25).abs() < 1e-12 && (crop.w - 0.5).abs() < 1e-12 && crop.h == 1.0,
            "{crop:?}"
        );
        // The real resolution behind the canvas.
        let across = |full: (u32, u32), fit| {
            Placement::new(full.0, full.1, Region::FULL, fit, 32)
                .source_pixels_across(full.0, full.1, 32)
        };
        assert_eq!(across((8, 8), Fit::Pad), 8);
        assert_eq!(across((8, 6), Fit::Pad), 8);
        assert_eq!(across((8, 6), Fit::Stretch), 6);
        assert_eq!(across((8, 6), Fit::CenterCrop), 6);
        assert_eq!(across((640, 480), Fit::Pad), 640);
        assert_eq!(across((640, 480), Fit::CenterCrop), 480);
        // The whole image must be decoded at least at the destination's resolution.
        assert_eq!(
            Placement::new(640, 320, Region::FULL, Fit::Pad, 64).min_decode_size(),
            (64, 32)
        );
        assert_eq!(
            Placement::new(640, 320, Region::FULL, Fit::CenterCrop, 64).min_decode_size(),
            (128, 64)
        );
    }

    fn decoded(pixels: Pixels, width: u32, height: u32) -> Decoded {
        Decoded {
            format: Format::Png,
            width,
            height,
            full_width: width,
            full_height: height,
            pixels,
        }
    }

    const WHITE: Style = Style {
        filter: Filter::Bilinear,
        size: 8,
        background: [1.0; 3],
    };

    #[test]
    fn every_layout_becomes_the_same_rgb_and_padding_is_nan() {
        // A 4x2 image of one opaque color (51, 102, 153) in each layout, padded into an 8x8 canvas.
        let rgb = [51u8, 102, 153];
        let n = 8;
        let cases = vec![
            decoded(Pixels::Rgb8(rgb.repeat(n)), 4, 2),
            decoded(Pixels::Rgba8([51, 102, 153, 255].repeat(n)), 4, 2),
            decoded(
                Pixels::Rgb16(vec![U16x3::new(rgb.map(|v| u16::from(v) * 257)); n]),
                4,
                2,
            ),
            decoded(
                Pixels::Rgba16(vec![U16x4::new([51 * 257, 102 * 257, 153 * 257, 65535]); n]),
                4,
                2,
            ),
        ];
        for image in cases {
            let placement = Placement::new(4, 2, Region::FULL, Fit::Pad, 8);
            let canvas = render(&mut Resizer::new(), &image, &placement, &WHITE).unwrap();
            for (plane, value) in canvas.data.chunks_exact(64).zip(rgb) {
                assert!(
                    plane[..16].iter().chain(&plane[48..]).all(|v| v.is_nan()),
                    "{}",
                    image.pixels.layout()
                );
                for v in &plane[16..48] {
                    assert!(
                        (v - f32::from(value) / 255.0).abs() < 1e-4,
                        "{} {v}",
                        image.pixels.layout()
                    );
                }
            }
        }
        let grey = decoded(Pixels::L8(vec![128; 16]), 4, 4);
        let placement = Placement::new(4, 4, Region::FULL, Fit::Stretch, 8);
        let canvas = render(&mut Resizer::new(), &grey, &placement, &WHITE).unwrap();
        assert!(canvas.data.iter().all(|v| (v - 128.0 / 255.0).abs() < 1e-4));
    }

    /// Renders a uniform 4x4 image stretched to 8x8 onto `background` and checks every pixel against
    /// `expected` (RGB, 0-1 scale).
    fn check_composite(image: Decoded, background: [f32; 3], expected: [f32; 3]) {
        let layout = image.pixels.layout();
        let placement = Placement::new(4, 4, Region::FULL, Fit::Stretch, 8);
        let style = Style {
            background,
            ..WHITE
        };
        let canvas = render(&mut Resizer::new(), &image, &placement, &style).unwrap();
        for (c, plane) in canvas.data.chunks_exact(64).enumerate() {
            for v in plane {
                assert!(
                    (v - expected[c]).abs() < 2e-3,
                    "{layout} on {background:?}: channel {c} is {v}, expected {}",
                    expected[c]
                );
            }
        }
    }

    #[test]
    fn alpha_is_composited_onto_the_background() {
        let n = 16;
        // Fully transparent black (how many tools store the background of a transparent PNG) is the
        // background, whatever color it stores.
        check_composite(
            decoded(Pixels::Rgba8([0, 0, 0, 0].repeat(n)), 4, 4),
            [1.0; 3],
            [1.0; 3],
        );
        check_composite(
            decoded(Pixels::La8([0, 0].repeat(n)), 4, 4),
            [0.2, 0.4, 0.6],
            [0.2, 0.4, 0.6],
        );
        // Half-transparent red over white is pink; over black, dark red.
        let red = Pixels::Rgba8([255, 0, 0, 128].repeat(n));
        let a = 128.0 / 255.0;
        check_composite(
            decoded(red.clone(), 4, 4),
            [1.0; 3],
            [1.0, 1.0 - a, 1.0 - a],
        );
        check_composite(decoded(red, 4, 4), [0.0; 3], [a, 0.0, 0.0]);
        check_composite(
            decoded(Pixels::La16(vec![U16x2::new([0, 32768]); n]), 4, 4),
            [1.0; 3],
            [1.0 - 32768.0 / 65535.0; 3],
        );
        check_composite(
            decoded(
                Pixels::Rgba16(vec![U16x4::new([65535, 65535, 0, 65535]); n]),
                4,
                4,
            ),
            [0.0; 3],
            [1.0, 1.0, 0.0],
        );
    }

    #[test]
    fn a_transparent_pixel_does_not_bleed_its_stored_color_into_its_neighbours() {
        // Left half opaque white, right half transparent but storing pure red. Shrunk to 2x1 on white, the
        // right pixel must be white: resizing without premultiplying would average the red in.
        let mut pixels = Vec::new();
        for _ in 0..4 {
            pixels.extend([255, 255, 255, 255].repeat(2));
            pixels.extend([255, 0, 0, 0].repeat(2));
        }
        let image = decoded(Pixels::Rgba8(pixels), 4, 4);
        let placement = Placement::new(4, 4, Region::FULL, Fit::Stretch, 2);
        let style = Style { size: 2, ..WHITE };
        let canvas = render(&mut Resizer::new(), &image, &placement, &style).unwrap();
        assert!(
            canvas.data.iter().all(|v| (v - 1.0).abs() < 2e-3),
            "{:?}",
            canvas.data
        );
    }
}
