//! The stage parameters (`[stages.image.params]`), their defaults and their validation.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How an image of another aspect ratio is fitted into the square output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Resize to `size` x `size`, distorting the aspect ratio (what `Image.resize((s, s))` does).
    Stretch,
    /// Keep the aspect ratio: the long side becomes `size`, the rest is padding, which normalizes to 0
    /// (the train mean) and is left out of the statistics.
    Pad,
    /// Keep the aspect ratio: the short side becomes `size` and the long side is cropped around the centre.
    CenterCrop,
}

/// The resampling filter of the resizer (a convolution that also antialiases when shrinking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Box (area average).
    Box,
    /// Bilinear (triangle), as Pillow's `BILINEAR`.
    Bilinear,
    /// Hamming: bilinear cost, sharper.
    Hamming,
    /// Catmull-Rom bicubic.
    CatmullRom,
    /// Lanczos with 3 lobes.
    Lanczos3,
}

/// What to do with an image that fails a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Drop the sample: it leaves the image table and is listed in `rejects.parquet`.
    Drop,
    /// Keep the sample without its image: `image_present = false`, a null tensor.
    Absent,
}

/// Parameters of the image stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Output height and width in pixels: tensors are `3 x size x size`.
    pub size: u32,
    /// How other aspect ratios are fitted into the square.
    pub fit: Fit,
    /// The resampling filter.
    pub filter: Filter,
    /// Decode a JPEG at 1/8 scale in the DCT when that still leaves at least twice the output size (large photos
    /// to small tensors: about 30% faster there; within about a grey level of full decoding plus resizing).
    pub jpeg_dct_scaling: bool,
    /// Images with more pixels than this are refused from the header, before decoding (`image_too_large`).
    pub max_pixels: u64,
    /// Images whose long side is more than this many times the short side are `extreme_aspect`.
    pub max_aspect_ratio: f64,
    /// An image whose per-channel standard deviation (0-255 scale, measured on the resized image) is at most
    /// this in every channel is `blank_image`.
    pub blank_max_std: f64,
    /// The color transparent pixels are composited onto (0-255 RGB; default white): an RGBA or grey+alpha image
    /// becomes `color * alpha + background * (1 - alpha)`, so dark strokes on a transparent background stay
    /// visible instead of turning into whatever color the transparent pixels happen to store.
    pub alpha_background: [u8; 3],
    /// Policy for `undecodable_image`, `unsupported_format` and `image_too_large`.
    pub on_undecodable: Policy,
    /// Policy for `blank_image`.
    pub on_blank: Policy,
    /// Policy for `extreme_aspect`.
    pub on_extreme_aspect: Policy,
    /// Near-duplicate candidates: 64-bit perceptual hashes at most this many bits apart (0: identical hashes).
    pub dedup_max_distance: u32,
    /// A candidate pair is confirmed when their 16x16 RGB thumbnails (each channel centred) correlate at least
    /// this much. Hashes alone pair distinct images that share a coarse layout.
    pub dedup_min_correlation: f64,
    /// For sources with fewer than 16 pixels across (small scans, icons), where a 16x16 thumbnail only repeats
    /// the source's pixels and two distinct scans of one character correlate highly: the pair is compared at
    /// the source's own resolution and is confirmed only when, with each luma thumbnail standardized (mean 0,
    /// std 1), no pixel differs by more than this many standard deviations. Copies (re-encoded, brightened)
    /// stay far below it; a stroke drawn one pixel elsewhere does not.
    pub dedup_small_max_diff: f64,
    /// Also drop near-duplicates inside one split, keeping the first in input order (across splits they are
    /// always dropped from the later split).
    pub dedup_within_split: bool,
    /// Fixed per-channel mean on the 0-1 scale; with `std`, replaces fitting on the train split.
    pub mean: Option<[f64; 3]>,
    /// Fixed per-channel standard deviation on the 0-1 scale; with `mean`, replaces fitting.
    pub std: Option<[f64; 3]>,
    /// Augmented copies of train images.
    pub augment: AugmentConfig,
}

/// The default `dedup_small_max_diff` (standard deviations of the standardized luma thumbnail).
pub const SMALL_MAX_DIFF: f64 = 0.375;

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            size: 32,
            fit: Fit::Pad,
            filter: Filter::Bilinear,
            jpeg_dct_scaling: true,
            max_pixels: 4096 * 4096,
            max_aspect_ratio: 5.0,
            blank_max_std: 2.0,
            alpha_background: [255, 255, 255],
            on_undecodable: Policy::Drop,
            on_blank: Policy::Drop,
            on_extreme_aspect: Policy::Drop,
            dedup_max_distance: 8,
            dedup_min_correlation: 0.95,
            dedup_small_max_diff: SMALL_MAX_DIFF,
            dedup_within_split: false,
            mean: None,
            std: None,
            augment: AugmentConfig::default(),
        }
    }
}

/// Augmentation of train images: `n_views` extra rows per train sample, each a random variant of the image.
///
/// The defaults are mild on purpose: the default dataset asks about counts, colors and positions of shapes, and
/// an aggressive crop or a cutout can remove the object a question is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Augmented views per train sample (rows with `view` 1..=n_views); 0 turns augmentation off.
    pub n_views: u16,
    /// Random resized crop: the crop's area as a fraction of the image, `[min, max]`.
    pub crop_scale: [f64; 2],
    /// Random resized crop: the crop's aspect ratio relative to the image's, `[min, max]`, sampled log-uniformly.
    pub crop_ratio: [f64; 2],
    /// Probability of a horizontal flip. Off by default: it mirrors digits and text.
    pub hflip_prob: f64,
    /// Rotation by an angle uniform in `[-rotate_degrees, rotate_degrees]`.
    pub rotate_degrees: f64,
    /// Brightness factor uniform in `[1 - brightness, 1 + brightness]`.
    pub brightness: f64,
    /// Contrast factor uniform in `[1 - contrast, 1 + contrast]`.
    pub contrast: f64,
    /// Saturation factor uniform in `[1 - saturation, 1 + saturation]`.
    pub saturation: f64,
    /// Standard deviation of added Gaussian noise on the 0-1 scale.
    pub noise_std: f64,
    /// Probability of one cutout square (filled with the mean, i.e. 0 after normalization).
    pub cutout_prob: f64,
    /// The cutout square's side as a fraction of `size`.
    pub cutout_size: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            n_views: 0,
            crop_scale: [0.8, 1.0],
            crop_ratio: [0.9, 1.0 / 0.9],
            hflip_prob: 0.0,
            rotate_degrees: 10.0,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            noise_std: 0.02,
            cutout_prob: 0.0,
            cutout_size: 0.25,
        }
    }
}

fn config_error(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn in_range(field: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(config_error(
            field,
            format!("{value} is not in [{lo}, {hi}]"),
        ))
    }
}

fn ordered_pair(field: &str, pair: [f64; 2], lo: f64, hi: f64) -> Result<()> {
    in_range(&format!("{field}[0]"), pair[0], lo, hi)?;
    in_range(&format!("{field}[1]"), pair[1], lo, hi)?;
    if pair[0] > pair[1] {
        return Err(config_error(
            field,
            format!(
                "[{}, {}] must be [min, max] with min <= max",
                pair[0], pair[1]
            ),
        ));
    }
    Ok(())
}

impl ImageConfig {
    /// Checks every field before any work is done.
    pub fn validate(&self) -> Result<()> {
        if !(4..=1024).contains(&self.size) {
            return Err(config_error(
                "size",
                format!("{} is not in [4, 1024]", self.size),
            ));
        }
        if self.max_pixels == 0 {
            return Err(config_error("max_pixels", "must be at least 1"));
        }
        in_range("max_aspect_ratio", self.max_aspect_ratio, 1.0, 1e6)?;
        in_range("blank_max_std", self.blank_max_std, 0.0, 255.0)?;
        if self.dedup_max_distance > 32 {
            return Err(config_error(
                "dedup_max_distance",
                format!(
                    "{} is not in [0, 32] (bits of a 64-bit hash)",
                    self.dedup_max_distance
                ),
            ));
        }
        in_range(
            "dedup_min_correlation",
            self.dedup_min_correlation,
            -1.0,
            1.0,
        )?;
        in_range(
            "dedup_small_max_diff",
            self.dedup_small_max_diff,
            0.0,
            100.0,
        )?;
        match (&self.mean, &self.std) {
            (None, None) => {}
            (Some(mean), Some(std)) => {
                for c in 0..3 {
                    in_range(&format!("mean[{c}]"), mean[c], -1e3, 1e3)?;
                    if !(std[c].is_finite() && std[c] > 0.0) {
                        return Err(config_error(
                            &format!("std[{c}]"),
                            format!("{} must be finite and > 0", std[c]),
                        ));
                    }
                }
            }
            (Some(_), None) => {
                return Err(config_error("std", "mean is set, so std must be set too"));
            }
            (None, Some(_)) => {
                return Err(config_error("mean", "std is set, so mean must be set too"));
            }
        }
        self.augment.validate()
    }

    /// The tensor shape `[3, size, size]`.
    pub fn shape(&self) -> [usize; 3] {
        [3, self.size as usize, self.size as usize]
    }
}

impl AugmentConfig {
    /// Checks every field; errors name them as `augment.FIELD`.
    pub fn validate(&self) -> Result<()> {
        if self.n_views > 64 {
            return Err(config_error(
                "augment.n_views",
                format!("{} is not in [0, 64]", self.n_views),
            ));
        }
        ordered_pair("augment.crop_scale", self.crop_scale, 0.01, 1.0)?;
        ordered_pair("augment.crop_ratio", self.crop_ratio, 0.1, 10.0)?;
        in_range("augment.hflip_prob", self.hflip_prob, 0.0, 1.0)?;
        in_range("augment.rotate_degrees", self.rotate_degrees, 0.0, 45.0)?;
        in_range("augment.brightness", self.brightness, 0.0, 1.0)?;
        in_range("augment.contrast", self.contrast, 0.0, 1.0)?;
        in_range("augment.saturation", self.saturation, 0.0, 1.0)?;
        in_range("augment.noise_std", self.noise_std, 0.0, 1.0)?;
        in_range("augment.cutout_prob", self.cutout_prob, 0.0, 1.0)?;
        in_range("augment.cutout_size", self.cutout_size, 0.01, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `toml_text` as a params table and checks that validation passes (`None`) or fails on that field.
    fn check(toml_text: &str, expected_field: Option<&str>) {
        let config: ImageConfig = toml::from_str(toml_text).unwrap();
        match (config.validate(), expected_field) {
            (Ok(()), None) => {}
            (Err(Error::Config { field, .. }), Some(expected)) => {
                assert_eq!(field, expected, "{toml_text}")
            }
            (other, _) => panic!("{toml_text}: expected {expected_field:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        check("", None);
        check("size = 2", Some("size"));
        check("max_pixels = 0", Some("max_pixels"));
        check("max_aspect_ratio = 0.5", Some("max_aspect_ratio"));
        check("blank_max_std = -1.0", Some("blank_max_std"));
        check("dedup_max_distance = 40", Some("dedup_max_distance"));
        check("dedup_min_correlation = 1.5", Some("dedup_min_correlation"));
        check("dedup_small_max_diff = -0.1", Some("dedup_small_max_diff"));
        check("mean = [0.5, 0.5, 0.5]", Some("std"));
        check(
            "mean = [0.5, 0.5, 0.5]\nstd = [0.2, 0.0, 0.2]",
            Some("std[1]"),
        );
        check("mean = [0.5, 0.5, 0.5]\nstd = [0.2, 0.2, 0.2]", None);
        check("[augment]\nn_views = 100", Some("augment.n_views"));
        check(
            "[augment]\ncrop_scale = [0.9, 0.5]",
            Some("augment.crop_scale"),
        );
        check(
            "[augment]\ncrop_scale = [0.0, 0.5]",
            Some("augment.crop_scale[0]"),
        );
        check("[augment]\nhflip_prob = 1.5", Some("augment.hflip_prob"));
        check(
            "[augment]\nrotate_degrees = 90.0",
            Some("augment.rotate_degrees"),
        );
        check("[augment]\ncutout_size = 0.0", Some("augment.cutout_size"));
    }

    #[test]
    fn unknown_keys_and_bad_enum_values_are_refused() {
        assert!(toml::from_str::<ImageConfig>("sise = 32").is_err());
        assert!(toml::from_str::<ImageConfig>("[augment]\nflip = 0.5").is_err());
        assert!(toml::from_str::<ImageConfig>("on_blank = \"ignore\"").is_err());
        assert!(toml::from_str::<ImageConfig>("alpha_background = [0, 0, 300]").is_err());
        let config: ImageConfig =
            toml::from_str("fit = \"center_crop\"\non_blank = \"absent\"").unwrap();
        assert_eq!(
            (config.fit, config.on_blank),
            (Fit::CenterCrop, Policy::Absent)
        );
    }
}
