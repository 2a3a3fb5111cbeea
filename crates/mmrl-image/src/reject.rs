//! Why an image is refused: stable reason codes (the `reason` column of `rejects.parquet`) and their messages.

use serde::Serialize;

use crate::config::{ImageConfig, Policy};

/// The reason an image was dropped or marked absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The bytes could not be decoded: truncated, corrupt, zero-size, or a signature that lies.
    UndecodableImage,
    /// The bytes are not PNG or JPEG.
    UnsupportedFormat,
    /// More pixels than `max_pixels`, refused from the header before decoding.
    ImageTooLarge,
    /// The long side is more than `max_aspect_ratio` times the short side.
    ExtremeAspect,
    /// Near-constant: every channel's standard deviation is at most `blank_max_std`.
    BlankImage,
    /// A near-duplicate of an image in an earlier split (train < val < test).
    NearDuplicateAcrossSplits,
    /// A near-duplicate of an earlier image in the same split (only with `dedup_within_split`).
    NearDuplicate,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 7] = [
        Reason::UndecodableImage,
        Reason::UnsupportedFormat,
        Reason::ImageTooLarge,
        Reason::ExtremeAspect,
        Reason::BlankImage,
        Reason::NearDuplicateAcrossSplits,
        Reason::NearDuplicate,
    ];

    /// The stable code written to `rejects.parquet`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UndecodableImage => "undecodable_image",
            Reason::UnsupportedFormat => "unsupported_format",
            Reason::ImageTooLarge => "image_too_large",
            Reason::ExtremeAspect => "extreme_aspect",
            Reason::BlankImage => "blank_image",
            Reason::NearDuplicateAcrossSplits => "near_duplicate_across_splits",
            Reason::NearDuplicate => "near_duplicate",
        }
    }

    /// What the config says to do about it. Duplicates are always dropped: a near-copy marked absent would still
    /// be a sample whose question was seen with that image in another split.
    pub fn policy(self, config: &ImageConfig) -> Policy {
        match self {
            Reason::UndecodableImage | Reason::UnsupportedFormat | Reason::ImageTooLarge => {
                config.on_undecodable
            }
            Reason::ExtremeAspect => config.on_extreme_aspect,
            Reason::BlankImage => config.on_blank,
            Reason::NearDuplicateAcrossSplits | Reason::NearDuplicate => Policy::Drop,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused image: the reason and a message that says what was found and what was expected. The caller adds
/// which file or sample it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The stable reason.
    pub reason: Reason,
    /// The human message.
    pub detail: String,
}

impl Reject {
    /// A reject with this reason and message.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::error::Error for Reject {}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}
