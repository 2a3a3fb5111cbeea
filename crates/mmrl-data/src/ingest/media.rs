//! Media checks: which kind a file or a byte string is, reading files under the dataset folder, and decoding
//! images and audio in full so that a truncated or disguised file is refused at ingest.

use std::io::Cursor;
use std::path::{Component, Path, PathBuf};

use super::{IngestConfig, Reject, reject};
use crate::source::MediaKind;

/// Image file extensions ingest decodes.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// Audio file extensions ingest decodes.
pub const AUDIO_EXTENSIONS: [&str; 1] = ["wav"];
/// Audio formats users have that ingest recognizes but does not decode, by extension.
const OTHER_AUDIO: [(&str, &str); 6] = [
    ("flac", "FLAC"),
    ("mp3", "MP3"),
    ("ogg", "Ogg"),
    ("opus", "Opus"),
    ("m4a", "M4A"),
    ("aac", "AAC"),
];

/// What a file name or byte string holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniffed {
    /// A kind ingest decodes.
    Media(MediaKind),
    /// Audio in a format ingest does not decode (named).
    OtherAudio(&'static str),
    /// Not recognized.
    Unknown,
}

/// The kind a file name's extension says.
pub(super) fn kind_by_extension(name: &str) -> Sniffed {
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        Sniffed::Media(MediaKind::Image)
    } else if AUDIO_EXTENSIONS.contains(&ext.as_str()) {
        Sniffed::Media(MediaKind::Audio)
    } else {
        OTHER_AUDIO
            .iter()
            .find(|(e, _)| *e == ext)
            .map_or(Sniffed::Unknown, |(_, name)| Sniffed::OtherAudio(name))
    }
}

/// The kind a byte string's signature says.
pub(super) fn kind_by_signature(bytes: &[u8]) -> Sniffed {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Sniffed::Media(MediaKind::Image)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        Sniffed::Media(MediaKind::Audio)
    } else {
        other_audio_signature(bytes).map_or(Sniffed::Unknown, Sniffed::OtherAudio)
    }
}

/// Names compressed audio formats by their signature: FLAC, MP3 (ID3 tag or an MPEG frame sync), Ogg.
fn other_audio_signature(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"fLaC") {
        Some("FLAC")
    } else if bytes.starts_with(b"ID3")
        || (bytes.len() >= 2 && bytes[0] == 0xff && bytes[1] & 0xe0 == 0xe0)
    {
        Some("MP3")
    } else if bytes.starts_with(b"OggS") {
        Some("Ogg")
    } else if bytes.len() >= 8 && &bytes[4..8] == b"ftyp" {
        Some("M4A")
    } else {
        None
    }
}

/// What ingest decodes, for messages.
pub(super) fn supported(kind: Option<MediaKind>) -> String {
    let images = format!("{} (image)", IMAGE_EXTENSIONS.join(", "));
    let audio = format!("{} (audio)", AUDIO_EXTENSIONS.join(", "));
    match kind {
        Some(MediaKind::Image) => format!("images must be {}", IMAGE_EXTENSIONS.join(", ")),
        Some(MediaKind::Audio) => "audio must be WAV (.wav); only WAV is decoded".into(),
        None => format!("supported: {images}; {audio}"),
    }
}

/// Resolves a media path relative to `base` (the folder of the file that names it), refusing anything that
/// leaves it.
pub(super) fn resolve_media(
    base: &Path,
    rel: &str,
    loc: &str,
    column: &str,
) -> std::result::Result<PathBuf, Reject> {
    let path = Path::new(rel);
    let escapes = path.is_absolute()
        || rel.contains("://")
        || path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if escapes {
        return Err(reject(
            "path_escapes_folder",
            format!(
                "{loc}: {column} path {rel:?} must be relative to the dataset folder, without '..'"
            ),
        ));
    }
    let joined = base.join(path);
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(reject(
                "missing_media",
                format!("{loc}: {column} file {rel:?} does not exist"),
            ));
        }
        Err(e) => {
            return Err(reject(
                "unreadable_media",
                format!("{loc}: {column} file {rel:?}: {e}"),
            ));
        }
    };
    if !resolved.starts_with(base) {
        return Err(reject(
            "path_escapes_folder",
            format!(
                "{loc}: {column} path {rel:?} resolves outside the dataset folder (a symlink?)"
            ),
        ));
    }
    if !resolved.is_file() {
        return Err(reject(
            "unreadable_media",
            format!("{loc}: {column} path {rel:?} is not a file"),
        ));
    }
    Ok(resolved)
}

/// Reads a media file within the size limit.
pub(super) fn read_media(
    config: &IngestConfig,
    rel: &str,
    path: &Path,
    loc: &str,
    column: &str,
) -> std::result::Result<Vec<u8>, Reject> {
    let size = std::fs::metadata(path)
        .map_err(|e| {
            reject(
                "unreadable_media",
                format!("{loc}: {column} file {rel:?}: {e}"),
            )
        })?
        .len();
    check_size(config, size, rel, loc, column)?;
    std::fs::read(path).map_err(|e| {
        reject(
            "unreadable_media",
            format!("{loc}: {column} file {rel:?}: {e}"),
        )
    })
}

/// Refuses media over `max_file_bytes`, files and embedded bytes alike.
pub(super) fn check_size(
    config: &IngestConfig,
    size: u64,
    name: &str,
    loc: &str,
    column: &str,
) -> std::result::Result<(), Reject> {
    if size > config.max_file_bytes {
        return Err(reject(
            "file_too_large",
            format!(
                "{loc}: {column} file {name:?} has {size} bytes, over max_file_bytes {}",
                config.max_file_bytes
            ),
        ));
    }
    Ok(())
}

/// Decodes the whole image (a truncated file fails here), refusing formats other than PNG and JPEG and images
/// over the pixel limit before allocating for them.
pub(super) fn check_image(
    config: &IngestConfig,
    bytes: &[u8],
    name: &str,
    loc: &str,
) -> std::result::Result<(), Reject> {
    let undecodable = |e: &dyn std::fmt::Display| {
        reject("undecodable_image", format!("{loc}: image {name:?}: {e}"))
    };
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(reject(
                "unsupported_format",
                format!("{loc}: image {name:?} is {other:?}; expected PNG or JPEG"),
            ));
        }
        None => {
            return Err(reject(
                "unsupported_format",
                format!("{loc}: image {name:?} is not a PNG or JPEG file (unrecognized signature)"),
            ));
        }
    }
    let (width, height) = reader.into_dimensions().map_err(|e| undecodable(&e))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(reject(
            "undecodable_image",
            format!("{loc}: image {name:?} has zero size"),
        ));
    }
    if pixels > config.max_image_pixels {
        return Err(reject(
            "image_too_large",
            format!(
                "{loc}: image {name:?} is {width}x{height}, over max_image_pixels {}",
                config.max_image_pixels
            ),
        ));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?;
    let mut limits = image::Limits::default();
    // 16-bit RGBA is 8 bytes a pixel; leave room for the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| undecodable(&e))?;
    Ok(())
}

/// Reads every sample of a WAV file (a truncated file fails here); compressed audio is refused by name.
pub(super) fn check_audio(bytes: &[u8], name: &str, loc: &str) -> std::result::Result<(), Reject> {
    if let Some(format) = other_audio_signature(bytes).filter(|_| !bytes.starts_with(b"RIFF")) {
        return Err(reject(
            "unsupported_format",
            format!(
                "{loc}: audio {name:?} is {format}; only WAV audio is decoded (convert it to .wav)"
            ),
        ));
    }
    let undecodable =
        |e: String| reject("undecodable_audio", format!("{loc}: audio {name:?}: {e}"));
    let reader =
        hound::WavReader::new(Cursor::new(bytes)).map_err(|e| undecodable(e.to_string()))?;
    let spec = reader.spec();
    let expected = reader.len() as usize;
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(undecodable(format!(
            "{} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    if expected == 0 {
        return Err(undecodable("no samples".into()));
    }
    let read = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .into_samples::<i32>()
            .try_fold(0usize, |n, s| s.map(|_| n + 1)),
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .try_fold(0usize, |n, s| s.map(|_| n + 1)),
    }
    .map_err(|e| undecodable(e.to_string()))?;
    if read != expected {
        return Err(undecodable(format!(
            "truncated: {read} of {expected} samples"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension_and_signature() {
        let by_ext: &[(&str, Sniffed)] = &[
            ("a.png", Sniffed::Media(MediaKind::Image)),
            ("a.JPG", Sniffed::Media(MediaKind::Image)),
            ("dir/a.jpeg", Sniffed::Media(MediaKind::Image)),
            ("a.wav", Sniffed::Media(MediaKind::Audio)),
            ("a.flac", Sniffed::OtherAudio("FLAC")),
            ("a.mp3", Sniffed::OtherAudio("MP3")),
            ("a.webp", Sniffed::Unknown),
            ("noext", Sniffed::Unknown),
        ];
        for (name, expected) in by_ext {
            assert_eq!(kind_by_extension(name), *expected, "{name}");
        }
        let by_sig: &[(&[u8], Sniffed)] = &[
            (b"\x89PNG\r\n\x1a\n....", Sniffed::Media(MediaKind::Image)),
            (&[0xff, 0xd8, 0xff, 0xe0], Sniffed::Media(MediaKind::Image)),
            (b"RIFF\0\0\0\0WAVEfmt ", Sniffed::Media(MediaKind::Audio)),
            (b"RIFF\0\0\0\0AVI LIST", Sniffed::Unknown),
            (b"fLaC\0\0\0\x22", Sniffed::OtherAudio("FLAC")),
            (b"ID3\x04\0\0", Sniffed::OtherAudio("MP3")),
            (&[0xff, 0xfb, 0x90, 0x64], Sniffed::OtherAudio("MP3")),
            (b"OggS\0\x02", Sniffed::OtherAudio("Ogg")),
            (b"GIF89a", Sniffed::Unknown),
            (b"", Sniffed::Unknown),
        ];
        for (bytes, expected) in by_sig {
            assert_eq!(kind_by_signature(bytes), *expected, "{bytes:?}");
        }
    }
}
