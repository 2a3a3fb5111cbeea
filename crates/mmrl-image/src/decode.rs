//! Decoding: sniff the format from the bytes, read the header, then decode into the image's native pixels.
//!
//! PNG goes through the `image` crate's decoder (the `png` crate, whose `fdeflate` inflate was the fastest of
//! fdeflate, libdeflate, zlib-rs, zune-inflate and miniz_oxide on the benchmark images). JPEG goes through
//! `zune-jpeg` (the decoder `image` uses, called directly so the headers are parsed once and the input is not
//! copied), except when 1/8 of the size is enough: then `jpeg-decoder` scales inside the inverse DCT, which
//! skips most of the IDCT, upsampling, color conversion and resizing work. (`zune-jpeg` cannot scale;
//! `jpeg-decoder`'s entropy decoding is slower than `zune-jpeg`'s, so at 1/4 and above `zune-jpeg` wins.)
//!
//! EXIF orientation is applied, so a portrait photo stays upright. Pixels stay in their native layout (grey,
//! grey+alpha, RGB, RGBA; 8 or 16 bits): the resizer works on that and only its small output is converted to
//! RGB, which is cheaper than converting the full-size image.

use std::io::Cursor;

use fast_image_resize::pixels::{U16, U16x2, U16x3, U16x4};
use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageFormat};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace as ZuneColorSpace;
use zune_core::options::DecoderOptions;

use crate::reject::{Reason, Reject};

/// The container formats the stage accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// PNG, any bit depth and color type.
    Png,
    /// Baseline or progressive JPEG.
    Jpeg,
}

impl Format {
    /// Lowercase name, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
        }
    }
}

/// Decoded pixels in their native layout, row-major, without padding. An 8-bit vector decoded into a reused
/// buffer ([`Probe::decode_reusing`]) may be longer than the image: only its first `width * height * channels`
/// bytes count.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// 8-bit grey.
    L8(Vec<u8>),
    /// 8-bit grey + alpha.
    La8(Vec<u8>),
    /// 8-bit RGB.
    Rgb8(Vec<u8>),
    /// 8-bit RGBA.
    Rgba8(Vec<u8>),
    /// 16-bit grey.
    L16(Vec<U16>),
    /// 16-bit grey + alpha.
    La16(Vec<U16x2>),
    /// 16-bit RGB.
    Rgb16(Vec<U16x3>),
    /// 16-bit RGBA.
    Rgba16(Vec<U16x4>),
}

impl Pixels {
    /// The byte buffer of an 8-bit layout, to decode the next image into.
    fn into_buffer(self) -> Option<Vec<u8>> {
        match self {
            Pixels::L8(v) | Pixels::La8(v) | Pixels::Rgb8(v) | Pixels::Rgba8(v) => Some(v),
            _ => None,
        }
    }

    /// Lowercase name of the layout (`rgb8`, `la16`), for reports.
    pub fn layout(&self) -> &'static str {
        match self {
            Pixels::L8(_) => "l8",
            Pixels::La8(_) => "la8",
            Pixels::Rgb8(_) => "rgb8",
            Pixels::Rgba8(_) => "rgba8",
            Pixels::L16(_) => "l16",
            Pixels::La16(_) => "la16",
            Pixels::Rgb16(_) => "rgb16",
            Pixels::Rgba16(_) => "rgba16",
        }
    }
}

/// A decoded image. `width` x `height` are the decoded pixels (smaller than the file's when the JPEG was
/// DCT-scaled); `full_width` x `full_height` the upright size of the file, which all geometry is based on so
/// that the result does not depend on how the image was decoded.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The container format.
    pub format: Format,
    /// Decoded width.
    pub width: u32,
    /// Decoded height.
    pub height: u32,
    /// Upright width of the image in the file.
    pub full_width: u32,
    /// Upright height of the image in the file.
    pub full_height: u32,
    /// The pixels.
    pub pixels: Pixels,
}

impl Decoded {
    /// Gives the pixel buffer back to `buffer` for the next [`Probe::decode_reusing`].
    pub fn recycle(self, buffer: &mut Vec<u8>) {
        if let Some(v) = self.pixels.into_buffer()
            && v.len() >= buffer.len()
        {
            *buffer = v;
        }
    }
}

/// The header of an image, read without decoding the pixels.
pub struct Probe<'a> {
    /// The container format.
    pub format: Format,
    /// Upright width (after EXIF orientation).
    pub width: u32,
    /// Upright height (after EXIF orientation).
    pub height: u32,
    orientation: Orientation,
    inner: Inner<'a>,
}

enum Inner<'a> {
    Png(Box<image::codecs::png::PngDecoder<Cursor<&'a [u8]>>>),
    Jpeg {
        bytes: &'a [u8],
        decoder: Box<zune_jpeg::JpegDecoder<ZCursor<&'a [u8]>>>,
        grey: bool,
    },
}

fn undecodable(detail: impl std::fmt::Display) -> Reject {
    Reject::new(Reason::UndecodableImage, detail.to_string())
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Sniffs the format and reads the header. Refuses empty input, formats other than PNG and JPEG (whatever the
/// file name claims), zero-size images and truncated JPEGs.
pub fn probe(bytes: &[u8]) -> Result<Probe<'_>, Reject> {
    if bytes.is_empty() {
        return Err(undecodable("empty file (0 bytes)"));
    }
    let format = match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => Format::Png,
        Ok(ImageFormat::Jpeg) => Format::Jpeg,
        Ok(other) => {
            return Err(Reject::new(
                Reason::UnsupportedFormat,
                format!("the bytes are {other:?}; expected PNG or JPEG"),
            ));
        }
        Err(_) => {
            return Err(Reject::new(
                Reason::UnsupportedFormat,
                format!(
                    "not a PNG or JPEG file (unrecognized signature {:02x?})",
                    &bytes[..bytes.len().min(8)]
                ),
            ));
        }
    };
    let (width, height, orientation, inner) = match format {
        Format::Png => {
            let mut decoder = image::codecs::png::PngDecoder::with_limits(
                Cursor::new(bytes),
                image::Limits::no_limits(),
            )
            .map_err(|e| undecodable(format!("invalid PNG: {e}")))?;
            let (w, h) = decoder.dimensions();
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            (w, h, orientation, Inner::Png(Box::new(decoder)))
        }
        Format::Jpeg => {
            if !has_end_of_image(bytes) {
                return Err(undecodable(
                    "truncated JPEG: no end-of-image marker after the last scan",
                ));
            }
            let options = DecoderOptions::default()
                .set_strict_mode(false)
                .set_max_width(usize::MAX)
                .set_max_height(usize::MAX);
            let mut decoder =
                zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
            decoder
                .decode_headers()
                .map_err(|e| undecodable(format!("invalid JPEG: {e}")))?;
            let (w, h) = decoder
                .dimensions()
                .ok_or_else(|| undecodable("invalid JPEG: no frame header"))?;
            let orientation = decoder
                .exif()
                .and_then(|exif| Orientation::from_exif_chunk(exif))
                .unwrap_or(Orientation::NoTransforms);
            // Grey stays grey (the resizer replicates it later, on the small image); everything else becomes RGB.
            let grey = matches!(decoder.input_colorspace(), Some(ZuneColorSpace::Luma));
            let out = if grey {
                ZuneColorSpace::Luma
            } else {
                ZuneColorSpace::RGB
            };
            decoder.set_options(options.jpeg_set_out_colorspace(out));
            let (w, h) = (
                u32::try_from(w).unwrap_or(u32::MAX),
                u32::try_from(h).unwrap_or(u32::MAX),
            );
            (
                w,
                h,
                orientation,
                Inner::Jpeg {
                    bytes,
                    decoder: Box::new(decoder),
                    grey,
                },
            )
        }
    };
    if width == 0 || height == 0 {
        return Err(undecodable(format!("zero-size image ({width}x{height})")));
    }
    let (width, height) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Probe {
        format,
        width,
        height,
        orientation,
        inner,
    })
}

/// Whether a JPEG ends its last scan: an end-of-image marker (FF D9) must follow the last start-of-scan marker
/// (FF DA). Inside entropy-coded data an FF byte is always followed by 00 or a restart marker, so neither marker
/// occurs there by accident; an EXIF thumbnail's markers come before the main image's scan. Decoders fill a cut
/// JPEG with grey rather than fail, so without this check a truncated file would pass as a half-grey image.
fn has_end_of_image(bytes: &[u8]) -> bool {
    // Searched from the end, so a well-formed file costs a few bytes, not a scan of the whole file.
    let is_marker = |marker: u8| move |w: &[u8]| w[0] == 0xFF && w[1] == marker;
    match bytes.windows(2).rposition(is_marker(0xD9)) {
        Some(eoi) => {
            !bytes[eoi..].windows(2).any(is_marker(0xDA))
                && bytes[..eoi].windows(2).any(is_marker(0xDA))
        }
        None => false,
    }
}

impl Probe<'_> {
    /// Pixels in the image (upright width x height).
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Decodes the pixels. `max_alloc` bounds what the decoder may allocate. With `want = Some((w, h))`, a JPEG
    /// may be decoded at a reduced scale, but never below `w` x `h` (upright); `None` decodes at full size.
    pub fn decode(self, max_alloc: u64, want: Option<(u32, u32)>) -> Result<Decoded, Reject> {
        self.decode_reusing(max_alloc, want, &mut Vec::new())
    }

    /// [`decode`](Self::decode) into `buffer`'s allocation, which is taken (give it back with
    /// [`Decoded::recycle`]): decoding image after image into one buffer saves zeroing and page-faulting a fresh
    /// one each time. 8-bit pixel vectors may then be longer than the image; only the first
    /// `width * height * channels` values count.
    pub fn decode_reusing(
        self,
        max_alloc: u64,
        want: Option<(u32, u32)>,
        buffer: &mut Vec<u8>,
    ) -> Result<Decoded, Reject> {
        let (full_width, full_height) = (self.width, self.height);
        let (stored_w, stored_h) = if swaps_axes(self.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        };
        let (width, height, pixels) = match self.inner {
            Inner::Png(mut decoder) => {
                let mut limits = image::Limits::default();
                limits.max_alloc = Some(max_alloc);
                decoder
                    .set_limits(limits)
                    .map_err(|e| undecodable(format!("PNG: {e}")))?;
                let color = decoder.color_type();
                let pixels = read_with_image_crate(*decoder, color, max_alloc, buffer)?;
                (stored_w, stored_h, pixels)
            }
            Inner::Jpeg {
                bytes,
                mut decoder,
                grey,
            } => {
                let want_stored = want.map(|(w, h)| {
                    if swaps_axes(self.orientation) {
                        (h, w)
                    } else {
                        (w, h)
                    }
                });
                let scaled = want_stored
                    .and_then(|want| dct_scale(stored_w, stored_h, want))
                    .and_then(|size| decode_scaled_jpeg(bytes, size, max_alloc).transpose())
                    .transpose()?;
                match scaled {
                    Some(decoded) => decoded,
                    None => {
                        let total =
                            u64::from(stored_w) * u64::from(stored_h) * if grey { 1 } else { 3 };
                        if total > max_alloc {
                            return Err(Reject::new(
                                Reason::ImageTooLarge,
                                format!(
                                    "decoding needs {total} bytes, over the limit of {max_alloc}"
                                ),
                            ));
                        }
                        let mut buf = take_buffer(buffer, total as usize);
                        decoder
                            .decode_into(&mut buf[..total as usize])
                            .map_err(|e| undecodable(format!("invalid JPEG: {e}")))?;
                        let pixels = if grey {
                            Pixels::L8(buf)
                        } else {
                            Pixels::Rgb8(buf)
                        };
                        (stored_w, stored_h, pixels)
                    }
                }
            }
        };
        let (width, height, pixels) = orient(width, height, pixels, self.orientation);
        Ok(Decoded {
            format: self.format,
            width,
            height,
            full_width,
            full_height,
            pixels,
        })
    }
}

/// The size to decode a `w` x `h` JPEG at, scaled by 1/8 in the DCT, when that still leaves at least twice
/// `want` in both directions; `None` otherwise.
///
/// Only 1/8 pays: at 1/4 and above `jpeg-decoder`'s slower entropy decoding cancels what the skipped IDCT saves.
/// The 2x margin keeps the result consistent with full decoding: a 1/8 decode is a block average aligned to the
/// JPEG's 8x8 grid, and resizing it by less than 2x more left edges up to several grey levels away from the
/// bilinear result of a full decode; with the margin the resizer's own antialiasing dominates.
fn dct_scale(w: u32, h: u32, want: (u32, u32)) -> Option<(u32, u32)> {
    let (sw, sh) = (w.div_ceil(8), h.div_ceil(8));
    (sw >= 2 * want.0 && sh >= 2 * want.1).then_some((sw, sh))
}

/// Decodes a JPEG scaled in the DCT to `size` (stored orientation) with `jpeg-decoder`; `Ok(None)` when that
/// decoder cannot do this file (CMYK, 16-bit, a size it would round differently), so the caller decodes at full
/// size instead.
fn decode_scaled_jpeg(
    bytes: &[u8],
    size: (u32, u32),
    max_alloc: u64,
) -> Result<Option<(u32, u32, Pixels)>, Reject> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(usize::try_from(max_alloc).unwrap_or(usize::MAX));
    let (Ok(w), Ok(h)) = (u16::try_from(size.0), u16::try_from(size.1)) else {
        return Ok(None);
    };
    let (out_w, out_h) = decoder
        .scale(w, h)
        .map_err(|e| undecodable(format!("invalid JPEG: {e}")))?;
    let channels = match decoder.info().map(|i| i.pixel_format) {
        Some(jpeg_decoder::PixelFormat::L8) => 1,
        Some(jpeg_decoder::PixelFormat::RGB24) => 3,
        _ => return Ok(None),
    };
    if (u32::from(out_w), u32::from(out_h)) != size {
        return Ok(None);
    }
    let data = decoder
        .decode()
        .map_err(|e| undecodable(format!("invalid JPEG: {e}")))?;
    if data.len() != usize::from(out_w) * usize::from(out_h) * channels {
        return Err(undecodable(format!(
            "invalid JPEG: decoded {} bytes for {out_w}x{out_h}x{channels}",
            data.len()
        )));
    }
    let pixels = if channels == 1 {
        Pixels::L8(data)
    } else {
        Pixels::Rgb8(data)
    };
    Ok(Some((u32::from(out_w), u32::from(out_h), pixels)))
}

/// Takes `buffer`'s allocation, grown to at least `len` bytes (only the growth is zeroed).
fn take_buffer(buffer: &mut Vec<u8>, len: usize) -> Vec<u8> {
    let mut buf = std::mem::take(buffer);
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

fn read_with_image_crate(
    decoder: impl ImageDecoder,
    color: ColorType,
    max_alloc: u64,
    buffer: &mut Vec<u8>,
) -> Result<Pixels, Reject> {
    let total = decoder.total_bytes();
    if total > max_alloc {
        return Err(Reject::new(
            Reason::ImageTooLarge,
            format!("decoding needs {total} bytes, over the limit of {max_alloc}"),
        ));
    }
    let total = usize::try_from(total).map_err(|_| undecodable("image too large for memory"))?;
    let mut buf = take_buffer(buffer, total);
    decoder
        .read_image(&mut buf[..total])
        .map_err(|e| undecodable(format!("{e}")))?;
    let wide = |buf: &[u8]| -> Vec<u16> {
        buf.chunks_exact(2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .collect()
    };
    let pixels = match color {
        ColorType::L8 => return Ok(Pixels::L8(buf)),
        ColorType::La8 => return Ok(Pixels::La8(buf)),
        ColorType::Rgb8 => return Ok(Pixels::Rgb8(buf)),
        ColorType::Rgba8 => return Ok(Pixels::Rgba8(buf)),
        ColorType::L16 => Pixels::L16(wide(&buf[..total]).into_iter().map(U16::new).collect()),
        ColorType::La16 => Pixels::La16(
            wide(&buf[..total])
                .chunks_exact(2)
                .map(|p| U16x2::new([p[0], p[1]]))
                .collect(),
        ),
        ColorType::Rgb16 => Pixels::Rgb16(
            wide(&buf[..total])
                .chunks_exact(3)
                .map(|p| U16x3::new([p[0], p[1], p[2]]))
                .collect(),
        ),
        ColorType::Rgba16 => Pixels::Rgba16(
            wide(&buf[..total])
                .chunks_exact(4)
                .map(|p| U16x4::new([p[0], p[1], p[2], p[3]]))
                .collect(),
        ),
        other => return Err(undecodable(format!("unsupported pixel layout {other:?}"))),
    };
    // 16-bit pixels were copied out; the byte buffer goes back for the next image.
    *buffer = buf;
    Ok(pixels)
}

/// Applies an EXIF orientation to decoded pixels.
fn orient(width: u32, height: u32, pixels: Pixels, orientation: Orientation) -> (u32, u32, Pixels) {
    if orientation == Orientation::NoTransforms {
        return (width, height, pixels);
    }
    let (w, h) = (width as usize, height as usize);
    let (out_w, out_h) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    let pixels = match pixels {
        Pixels::L8(p) => Pixels::L8(remap(&p, w, h, 1, orientation)),
        Pixels::La8(p) => Pixels::La8(remap(&p, w, h, 2, orientation)),
        Pixels::Rgb8(p) => Pixels::Rgb8(remap(&p, w, h, 3, orientation)),
        Pixels::Rgba8(p) => Pixels::Rgba8(remap(&p, w, h, 4, orientation)),
        Pixels::L16(p) => Pixels::L16(remap(&p, w, h, 1, orientation)),
        Pixels::La16(p) => Pixels::La16(remap(&p, w, h, 1, orientation)),
        Pixels::Rgb16(p) => Pixels::Rgb16(remap(&p, w, h, 1, orientation)),
        Pixels::Rgba16(p) => Pixels::Rgba16(remap(&p, w, h, 1, orientation)),
    };
    (out_w, out_h, pixels)
}

/// Rearranges a `w` x `h` image of `ch` elements a pixel by `orientation`.
fn remap<T: Copy>(src: &[T], w: usize, h: usize, ch: usize, orientation: Orientation) -> Vec<T> {
    let (out_w, out_h) = if swaps_axes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    let mut out = Vec::with_capacity(src.len());
    for dy in 0..out_h {
        for dx in 0..out_w {
            let (sx, sy) = match orientation {
                Orientation::NoTransforms => (dx, dy),
                Orientation::Rotate90 => (dy, h - 1 - dx),
                Orientation::Rotate180 => (w - 1 - dx, h - 1 - dy),
                Orientation::Rotate270 => (w - 1 - dy, dx),
                Orientation::FlipHorizontal => (w - 1 - dx, dy),
                Orientation::FlipVertical => (dx, h - 1 - dy),
                Orientation::Rotate90FlipH => (dy, dx),
                Orientation::Rotate270FlipH => (w - 1 - dy, h - 1 - dx),
            };
            let at = (sy * w + sx) * ch;
            out.extend_from_slice(&src[at..at + ch]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_scale_keeps_both_sides_at_least_the_wanted_size() {
        let check = |w, h, want, expected| {
            assert_eq!(dct_scale(w, h, want), expected, "{w}x{h} want {want:?}")
        };
        check(640, 640, (64, 64), None);
        check(1024, 1100, (64, 64), Some((128, 138)));
        check(1016, 1100, (64, 64), None);
        check(3000, 2000, (64, 64), Some((375, 250)));
        check(3000, 2000, (224, 224), None);
    }

    #[test]
    fn remap_matches_the_exif_meaning_of_each_orientation() {
        // A 3x2 image whose pixel values are their indices:  0 1 2 / 3 4 5
        let src: Vec<u8> = (0..6).collect();
        let check = |o, expected: &[u8]| assert_eq!(remap(&src, 3, 2, 1, o), expected, "{o:?}");
        check(Orientation::NoTransforms, &[0, 1, 2, 3, 4, 5]);
        check(Orientation::Rotate90, &[3, 0, 4, 1, 5, 2]);
        check(Orientation::Rotate180, &[5, 4, 3, 2, 1, 0]);
        check(Orientation::Rotate270, &[2, 5, 1, 4, 0, 3]);
        check(Orientation::FlipHorizontal, &[2, 1, 0, 5, 4, 3]);
        check(Orientation::FlipVertical, &[3, 4, 5, 0, 1, 2]);
        check(Orientation::Rotate90FlipH, &[0, 3, 1, 4, 2, 5]);
        check(Orientation::Rotate270FlipH, &[5, 2, 4, 1, 3, 0]);
    }

    #[test]
    fn end_of_image_marker_must_follow_the_last_scan() {
        assert!(has_end_of_image(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00, 0xFF, 0xD9
        ]));
        assert!(!has_end_of_image(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00
        ]));
        // A thumbnail's EOI before the main scan does not count.
        assert!(!has_end_of_image(&[
            0xFF, 0xD8, 0xFF, 0xD9, 0xFF, 0xDA, 1, 2
        ]));
    }
}
