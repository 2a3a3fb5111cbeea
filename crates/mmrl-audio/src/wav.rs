//! WAV decoding to mono `f32` in `[-1, 1]`, and 16-bit encoding, with a stable reject code for every bad input.
//!
//! Accepted: integer PCM of 8, 16, 24 or 32 bits and 32-bit IEEE float, any number of channels (averaged to
//! mono). Refused, never panicking: zero-length or truncated data, other encodings, non-finite float samples and
//! sample rates outside the configured range.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Why a clip was refused. [`AudioReject::code`] is the stable reason written to `rejects.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioReject {
    /// The bytes are not a RIFF/WAVE file or its header is malformed.
    Undecodable(String),
    /// The header promises more sample data than the file holds.
    Truncated(String),
    /// The file holds no samples.
    Empty,
    /// A format hound can parse but we do not accept (ADPCM, 64-bit float, 12-bit int...).
    UnsupportedEncoding(String),
    /// A float sample is NaN or infinite.
    NonFinite {
        /// Index of the first bad sample (interleaved).
        index: usize,
    },
    /// The sample rate is outside the accepted range.
    BadSampleRate {
        /// The rate in the header.
        rate: u32,
        /// The accepted range.
        min: u32,
        /// The accepted range.
        max: u32,
    },
    /// The clip is longer than the configured limit.
    TooLong {
        /// Its length in seconds.
        seconds: f64,
        /// The limit.
        max: f64,
    },
}

impl AudioReject {
    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            AudioReject::Undecodable(_) => "undecodable_audio",
            AudioReject::Truncated(_) => "truncated_audio",
            AudioReject::Empty => "empty_audio",
            AudioReject::UnsupportedEncoding(_) => "unsupported_encoding",
            AudioReject::NonFinite { .. } => "non_finite_samples",
            AudioReject::BadSampleRate { .. } => "bad_sample_rate",
            AudioReject::TooLong { .. } => "audio_too_long",
        }
    }

    /// A message for people.
    pub fn detail(&self) -> String {
        match self {
            AudioReject::Undecodable(e) => format!("not a readable WAV file: {e}"),
            AudioReject::Truncated(e) => {
                format!("the data chunk is shorter than its header says: {e}")
            }
            AudioReject::Empty => "the WAV file holds no samples".into(),
            AudioReject::UnsupportedEncoding(e) => {
                format!("{e}; expected integer PCM of 8, 16, 24 or 32 bits or 32-bit float")
            }
            AudioReject::NonFinite { index } => format!("sample {index} is NaN or infinite"),
            AudioReject::BadSampleRate { rate, min, max } => {
                format!("sample rate {rate} Hz is outside the accepted {min}..={max} Hz")
            }
            AudioReject::TooLong { seconds, max } => {
                format!("{seconds:.1} s is longer than max_source_seconds {max}")
            }
        }
    }
}

impl std::error::Error for AudioReject {}

impl std::fmt::Display for AudioReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.detail())
    }
}

/// Limits checked while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Lowest accepted source sample rate in Hz.
    pub min_sample_rate: u32,
    /// Highest accepted source sample rate in Hz.
    pub max_sample_rate: u32,
    /// Longest accepted clip in seconds (memory guard; clips are trimmed to `clip_seconds` later anyway).
    pub max_seconds: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            min_sample_rate: 1000,
            max_sample_rate: 384_000,
            max_seconds: 600.0,
        }
    }
}

/// A decoded clip: mono samples in `[-1, 1]` (float files may exceed it) and the source sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The samples, channels averaged.
    pub samples: Vec<f32>,
    /// The sample rate in Hz.
    pub sample_rate: u32,
    /// Channels in the file.
    pub channels: u16,
    /// Bits per sample in the file.
    pub bits: u16,
    /// Whether the file was float.
    pub float: bool,
}

/// Decodes WAV bytes to mono `f32`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, AudioReject> {
    if bytes.is_empty() {
        return Err(AudioReject::Empty);
    }
    let mut reader = hound::WavReader::new(Cursor::new(bytes)).map_err(header_error)?;
    let spec = reader.spec();
    if !(limits.min_sample_rate..=limits.max_sample_rate).contains(&spec.sample_rate) {
        return Err(AudioReject::BadSampleRate {
            rate: spec.sample_rate,
            min: limits.min_sample_rate,
            max: limits.max_sample_rate,
        });
    }
    let channels = usize::from(spec.channels.max(1));
    let declared = reader.len() as usize;
    if declared == 0 {
        return Err(AudioReject::Empty);
    }
    let seconds = declared as f64 / channels as f64 / f64::from(spec.sample_rate);
    if seconds > limits.max_seconds {
        return Err(AudioReject::TooLong {
            seconds,
            max: limits.max_seconds,
        });
    }
    // Never trust the header for an allocation: a truncated file may claim gigabytes.
    let bytes_per_sample = usize::from(spec.bits_per_sample).div_ceil(8).max(1);
    let capacity = declared.min(bytes.len() / bytes_per_sample) / channels + 1;
    let mut mono = Vec::with_capacity(capacity);
    let inv_channels = 1.0 / channels as f32;
    let mut acc = 0.0f32;
    let mut push = |i: usize, v: f32| {
        acc += v;
        if (i + 1).is_multiple_of(channels) {
            mono.push(acc * inv_channels);
            acc = 0.0;
        }
    };
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            for (i, s) in reader.samples::<f32>().enumerate() {
                let v = s.map_err(sample_error)?;
                if !v.is_finite() {
                    return Err(AudioReject::NonFinite { index: i });
                }
                push(i, v);
            }
        }
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            for (i, s) in reader.samples::<i32>().enumerate() {
                let v = s.map_err(sample_error)?;
                push(i, (f64::from(v) * scale) as f32);
            }
        }
        (format, bits) => {
            return Err(AudioReject::UnsupportedEncoding(format!(
                "{format:?} samples of {bits} bits"
            )));
        }
    }
    if mono.is_empty() {
        return Err(AudioReject::Empty);
    }
    if !declared.is_multiple_of(channels) {
        return Err(AudioReject::Truncated(format!(
            "{declared} samples do not divide into {channels} channels"
        )));
    }
    Ok(Decoded {
        samples: mono,
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits: spec.bits_per_sample,
        float: spec.sample_format == hound::SampleFormat::Float,
    })
}

fn header_error(e: hound::Error) -> AudioReject {
    match e {
        hound::Error::FormatError(m) if m.contains("enough bytes") => {
            AudioReject::Truncated(format!("header cut short: {m}"))
        }
        hound::Error::IoError(io) if io.to_string().contains("enough bytes") => {
            AudioReject::Truncated(format!("header cut short: {io}"))
        }
        hound::Error::Unsupported => {
            AudioReject::UnsupportedEncoding("unsupported WAV format tag".into())
        }
        hound::Error::TooWide => {
            AudioReject::UnsupportedEncoding("samples wider than 32 bits".into())
        }
        hound::Error::FormatError(m) if m.contains("bits per sample") => {
            AudioReject::UnsupportedEncoding(format!("float samples: {m}"))
        }
        hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioReject::Truncated(format!("header cut short: {io}"))
        }
        other => AudioReject::Undecodable(other.to_string()),
    }
}

fn sample_error(e: hound::Error) -> AudioReject {
    match e {
        hound::Error::TooWide => {
            AudioReject::UnsupportedEncoding("sample container wider than 32 bits".into())
        }
        hound::Error::FormatError(m) if m.contains("enough bytes") => {
            AudioReject::Truncated(m.to_owned())
        }
        hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioReject::Truncated(io.to_string())
        }
        hound::Error::IoError(io) => AudioReject::Truncated(io.to_string()),
        other => AudioReject::Undecodable(other.to_string()),
    }
}

/// Encodes mono samples as 16-bit PCM WAV bytes (values clamped to `[-1, 1]`).
pub fn encode_i16(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>, hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = Cursor::new(Vec::with_capacity(44 + 2 * samples.len()));
    {
        let mut writer = hound::WavWriter::new(&mut cursor, spec)?;
        let mut out = writer.get_i16_writer(samples.len() as u32);
        for &s in samples {
            out.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16);
        }
        out.flush()?;
        writer.finalize()?;
    }
    Ok(cursor.into_inner())
}

/// Encodes interleaved samples with any spec (tests and fixtures use it to make every accepted format).
pub fn encode_with_spec(
    interleaved: &[f64],
    spec: hound::WavSpec,
) -> Result<Vec<u8>, hound::Error> {
    let mut cursor = Cursor::new(Vec::new());
    {
        let mut writer = hound::WavWriter::new(&mut cursor, spec)?;
        for &s in interleaved {
            match spec.sample_format {
                hound::SampleFormat::Float => writer.write_sample(s as f32)?,
                hound::SampleFormat::Int => {
                    let max = ((1i64 << (spec.bits_per_sample - 1)) - 1) as f64;
                    let v = (s * max).round().clamp(-max - 1.0, max) as i32;
                    writer.write_sample(v)?;
                }
            }
        }
        writer.finalize()?;
    }
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(channels: u16, bits: u16, float: bool) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: 8000,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        }
    }

    /// Decodes `interleaved` written with `spec` and checks the mono result against `expected` within `tol`.
    fn check_decode(interleaved: &[f64], spec: hound::WavSpec, expected: &[f32], tol: f32) {
        let bytes = encode_with_spec(interleaved, spec).unwrap();
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.samples.len(), expected.len(), "{spec:?}");
        for (a, b) in decoded.samples.iter().zip(expected) {
            assert!((a - b).abs() <= tol, "{spec:?}: got {a}, expected {b}");
        }
    }

    fn check_reject(bytes: &[u8], limits: &DecodeLimits, code: &str) {
        match decode(bytes, limits) {
            Err(r) => assert_eq!(r.code(), code, "{r}"),
            Ok(d) => panic!("expected {code}, decoded {} samples", d.samples.len()),
        }
    }

    #[test]
    fn every_accepted_encoding_decodes_to_the_same_mono_signal() {
        let values = [0.0, 0.5, -0.5, 0.25, -1.0];
        let expected: Vec<f32> = values.iter().map(|v| *v as f32).collect();
        check_decode(&values, spec(1, 8, false), &expected, 1.0 / 64.0);
        check_decode(&values, spec(1, 16, false), &expected, 1e-4);
        check_decode(&values, spec(1, 24, false), &expected, 1e-6);
        check_decode(&values, spec(1, 32, false), &expected, 1e-6);
        check_decode(&values, spec(1, 32, true), &expected, 1e-7);
        // Stereo: left 0.5, right -0.1 averages to 0.2.
        check_decode(
            &[0.5, -0.1, 0.5, -0.1],
            spec(2, 16, false),
            &[0.2, 0.2],
            1e-4,
        );
        check_decode(
            &[0.3, 0.3, 0.3, 0.6, 0.6, 0.6],
            spec(3, 32, true),
            &[0.3, 0.6],
            1e-6,
        );
    }

    #[test]
    fn bad_files_are_rejected_with_their_reason() {
        let limits = DecodeLimits::default();
        check_reject(&[], &limits, "empty_audio");
        check_reject(
            b"definitely not a wav file, just text",
            &limits,
            "undecodable_audio",
        );
        let good = encode_with_spec(&[0.1; 100], spec(1, 16, false)).unwrap();
        check_reject(&good[..20], &limits, "truncated_audio");
        check_reject(&good[..good.len() - 51], &limits, "truncated_audio");
        let empty = encode_with_spec(&[], spec(1, 16, false)).unwrap();
        check_reject(&empty, &limits, "empty_audio");
        let nan = encode_with_spec(&[0.1, f64::NAN, 0.2], spec(1, 32, true)).unwrap();
        check_reject(&nan, &limits, "non_finite_samples");
        let inf = encode_with_spec(&[f64::INFINITY], spec(1, 32, true)).unwrap();
        check_reject(&inf, &limits, "non_finite_samples");
        // Format tag 2 (ADPCM) at byte 20 of a canonical header.
        let mut adpcm = good.clone();
        adpcm[20..22].copy_from_slice(&2u16.to_le_bytes());
        check_reject(&adpcm, &limits, "unsupported_encoding");
        // 64-bit float containers: byte rate at 28, block align at 32, bits per sample at 34.
        let mut f64_wav = encode_with_spec(&[0.1; 10], spec(1, 32, true)).unwrap();
        f64_wav[28..32].copy_from_slice(&(8000u32 * 8).to_le_bytes());
        f64_wav[32..34].copy_from_slice(&8u16.to_le_bytes());
        f64_wav[34..36].copy_from_slice(&64u16.to_le_bytes());
        check_reject(&f64_wav, &limits, "unsupported_encoding");
        let mut absurd = spec(1, 16, false);
        absurd.sample_rate = 3;
        check_reject(
            &encode_with_spec(&[0.1; 10], absurd).unwrap(),
            &limits,
            "bad_sample_rate",
        );
        absurd.sample_rate = 4_000_000;
        check_reject(
            &encode_with_spec(&[0.1; 10], absurd).unwrap(),
            &limits,
            "bad_sample_rate",
        );
        let short = DecodeLimits {
            max_seconds: 0.001,
            ..limits
        };
        check_reject(&good, &short, "audio_too_long");
    }

    #[test]
    fn a_header_claiming_huge_data_does_not_allocate_it() {
        let mut bytes = encode_with_spec(&[0.1; 10], spec(1, 16, false)).unwrap();
        // Patch the data chunk size (bytes 40..44 of a canonical header) to ~2 GB.
        bytes[40..44].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        check_reject(&bytes, &DecodeLimits::default(), "audio_too_long");
        let unlimited = DecodeLimits {
            max_seconds: 1e9,
            ..DecodeLimits::default()
        };
        check_reject(&bytes, &unlimited, "truncated_audio");
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let samples: Vec<f32> = (0..100).map(|i| (i as f32 / 10.0).sin() * 0.9).collect();
        let bytes = encode_i16(&samples, 16000).unwrap();
        let d = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(d.sample_rate, 16000);
        assert!(
            d.samples
                .iter()
                .zip(&samples)
                .all(|(a, b)| (a - b).abs() < 1e-4)
        );
    }
}
