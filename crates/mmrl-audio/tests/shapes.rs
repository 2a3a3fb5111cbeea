//! Every WAV shape a user's folder may hold is conditioned as documented: any sample rate is resampled to
//! `sample_rate`, any channel count averaged to mono, 8/16/24/32-bit integer and 32-bit float decoded to the
//! same signal, and any length trimmed (`trim = "start"` keeps the beginning, `"center"` the middle) or
//! zero-padded (at the end, or on both sides) to `clip_seconds`. Fixtures are built in code.
#![allow(clippy::unwrap_used)]

use std::f64::consts::PI;
use std::sync::Arc;

use mmrl_audio::signal::Trim;
use mmrl_audio::stage::{AudioConfig, ClipProcessor};
use mmrl_audio::wav::encode_with_spec;

/// The tone every fixture carries, Hz.
const FREQ: f64 = 440.0;
/// Left and right amplitudes; the right channel leads by a quarter period, so the mono mix
/// `(L sin + R cos) / 2` differs from either channel alone.
const LEFT: f64 = 0.6;
const RIGHT: f64 = 0.4;
/// The stage rate and clip length of the default config.
const OUT_RATE: u32 = 8000;
const OUT_LEN: usize = 8000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Int(u16),
    Float,
}

const FORMATS: [Format; 5] = [
    Format::Int(8),
    Format::Int(16),
    Format::Int(24),
    Format::Int(32),
    Format::Float,
];
const RATES: [u32; 8] = [8000, 11025, 12345, 16000, 22050, 32000, 44100, 48000];

/// A WAV of the tone: `seconds` long at `rate` Hz, mono (left only) or stereo.
fn wav(rate: u32, channels: u16, format: Format, seconds: f64) -> Vec<u8> {
    let n = (seconds * f64::from(rate)).round() as usize;
    let mut interleaved = Vec::with_capacity(n * usize::from(channels));
    for i in 0..n {
        let phase = 2.0 * PI * FREQ * i as f64 / f64::from(rate);
        interleaved.push(LEFT * phase.sin());
        if channels == 2 {
            interleaved.push(RIGHT * phase.cos());
        }
    }
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: match format {
            Format::Int(bits) => bits,
            Format::Float => 32,
        },
        sample_format: match format {
            Format::Int(_) => hound::SampleFormat::Int,
            Format::Float => hound::SampleFormat::Float,
        },
    };
    encode_with_spec(&interleaved, spec).unwrap()
}

/// The mono mix as a complex amplitude: `Re * sin + Im * cos`.
fn expected_amplitude(channels: u16) -> (f64, f64) {
    if channels == 2 {
        (LEFT / 2.0, RIGHT / 2.0)
    } else {
        (LEFT, 0.0)
    }
}

/// Least-squares fit of `a sin(w t_n) + b cos(w t_n)` to `x[n]` over `range`, where `t_n = n / OUT_RATE + t0`;
/// returns `(a, b)` and the largest residual.
fn fit(x: &[f32], range: std::ops::Range<usize>, t0: f64) -> ((f64, f64), f64) {
    let w = 2.0 * PI * FREQ;
    let t = |n: usize| n as f64 / f64::from(OUT_RATE) + t0;
    let (mut ss, mut sc, mut cc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for n in range.clone() {
        let (s, c, y) = ((w * t(n)).sin(), (w * t(n)).cos(), f64::from(x[n]));
        ss += s * s;
        sc += s * c;
        cc += c * c;
        ys += y * s;
        yc += y * c;
    }
    let det = ss * cc - sc * sc;
    let (a, b) = ((ys * cc - yc * sc) / det, (yc * ss - ys * sc) / det);
    let residual = range
        .map(|n| (f64::from(x[n]) - a * (w * t(n)).sin() - b * (w * t(n)).cos()).abs())
        .fold(0.0, f64::max);
    ((a, b), residual)
}

/// Where the tone lands in the conditioned clip: the output samples it covers, and the source time of output
/// sample 0.
fn expected_placement(rate: u32, seconds: f64, trim: Trim) -> (std::ops::Range<usize>, f64) {
    let source_len = (seconds * f64::from(rate)).round();
    let resampled = (source_len * f64::from(OUT_RATE) / f64::from(rate)).round() as usize;
    match trim {
        Trim::Start => (0..resampled.min(OUT_LEN), 0.0),
        Trim::Center if resampled >= OUT_LEN => (
            0..OUT_LEN,
            (seconds - OUT_LEN as f64 / f64::from(OUT_RATE)) / 2.0,
        ),
        Trim::Center => {
            let pad = (OUT_LEN - resampled) / 2;
            (pad..pad + resampled, -(pad as f64) / f64::from(OUT_RATE))
        }
    }
}

/// Conditions one WAV and checks length, downmix, level, timing and padding against the documented behaviour.
fn check(rate: u32, channels: u16, format: Format, seconds: f64, trim: Trim) {
    let what = format!("{rate} Hz, {channels} ch, {format:?}, {seconds} s, trim {trim:?}");
    let config = AudioConfig {
        trim,
        ..AudioConfig::default()
    };
    let mut processor = ClipProcessor::new(&config, Arc::default()).unwrap();
    let prepared = processor
        .prepare(&wav(rate, channels, format, seconds))
        .unwrap_or_else(|r| panic!("{what}: {}", r.detail()));
    let x = &prepared.samples;
    assert_eq!(x.len(), OUT_LEN, "{what}: length");
    assert!(!prepared.silent && !prepared.clipped, "{what}: flags");
    let (content, t0) = expected_placement(rate, seconds, trim);
    // Zero padding outside the content, exactly.
    for (n, v) in x.iter().enumerate() {
        if !content.contains(&n) {
            assert_eq!(*v, 0.0, "{what}: sample {n} should be padding");
        }
    }
    // Inside, away from the edges (the resampler rings for a few ms at a cut), the tone with the mono mix's
    // amplitude, and its phase within one output sample (0.35 rad at 440 Hz).
    let margin = 80;
    if content.len() < 2 * margin + 200 {
        let energy: f32 = x[content.clone()].iter().map(|v| v * v).sum();
        assert!(energy > 0.0, "{what}: the short tone vanished");
        return;
    }
    let interior = content.start + margin..content.end - margin;
    let ((a, b), residual) = fit(x, interior, t0);
    let (ea, eb) = expected_amplitude(channels);
    let quantization = match format {
        Format::Int(8) => 1.0 / 64.0,
        _ => 1e-3,
    };
    let amplitude = (ea * ea + eb * eb).sqrt();
    // The resampler may place its grid up to half an output sample off the source's (48 kHz to 8 kHz does);
    // more than one sample would be a misplaced clip.
    let shift = ((b.atan2(a) - eb.atan2(ea) + PI).rem_euclid(2.0 * PI) - PI).abs();
    let one_sample = 2.0 * PI * FREQ / f64::from(OUT_RATE);
    assert!(
        shift < one_sample,
        "{what}: fitted ({a:.4}, {b:.4}), expected ({ea:.4}, {eb:.4}): {:.2} samples off",
        shift / one_sample
    );
    assert!(
        ((a * a + b * b).sqrt() - amplitude).abs() < 0.01 * amplitude + quantization,
        "{what}: amplitude {} vs {amplitude}",
        (a * a + b * b).sqrt()
    );
    assert!(
        residual < 0.01 + quantization,
        "{what}: residual {residual}"
    );
}

#[test]
fn every_rate_encoding_and_channel_count_becomes_the_same_mono_clip() {
    for rate in RATES {
        for format in FORMATS {
            for channels in [1, 2] {
                check(rate, channels, format, 1.0, Trim::Start);
            }
        }
    }
}

#[test]
fn short_clips_are_padded_and_long_ones_trimmed_as_configured() {
    for rate in RATES {
        for (channels, format) in [
            (1, Format::Int(16)),
            (2, Format::Float),
            (2, Format::Int(24)),
        ] {
            for seconds in [0.002, 0.05, 0.37, 1.5, 7.3] {
                for trim in [Trim::Start, Trim::Center] {
                    check(rate, channels, format, seconds, trim);
                }
            }
        }
    }
}

#[test]
fn the_centre_of_a_long_clip_is_the_same_whether_or_not_only_its_window_is_resampled() {
    // A 30 s file at 44.1 kHz: the stage resamples only the middle second (plus a margin) and must keep what
    // resampling the whole file and then cutting its middle would keep, within the resampler's precision.
    let config = AudioConfig {
        trim: Trim::Center,
        ..AudioConfig::default()
    };
    let mut processor = ClipProcessor::new(&config, Arc::default()).unwrap();
    let bytes = wav(44100, 1, Format::Float, 30.0);
    let window = processor.prepare(&bytes).unwrap().samples;
    let decoded = mmrl_audio::wav::decode(&bytes, &config.decode).unwrap();
    let mut whole = mmrl_audio::signal::Resampler::new()
        .resample(&decoded.samples, 44100, OUT_RATE)
        .unwrap();
    mmrl_audio::signal::fix_length(&mut whole, OUT_LEN, Trim::Center);
    let worst = window
        .iter()
        .zip(&whole)
        .skip(100)
        .take(OUT_LEN - 200)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.01, "largest difference {worst}");
}
