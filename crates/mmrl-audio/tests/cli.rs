//! The `mmrl-audio` binary: the standalone `denoise` command and the stage protocol's `--check`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mmrl_audio::snr::si_sdr;
use mmrl_audio::wav::{DecodeLimits, decode, encode_i16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mmrl-audio"))
}

fn clean_and_noisy(seed: u64, len: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clean: Vec<f32> = (0..len)
        .map(|i| {
            let t = i as f32 / 8000.0;
            if (0.25..0.6).contains(&t) {
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
            } else {
                0.0
            }
        })
        .collect();
    let noisy = clean
        .iter()
        .map(|c| c + 0.05 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    (clean, noisy)
}

#[test]
fn denoise_turns_a_folder_into_a_folder_with_the_same_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    let mut cleans = Vec::new();
    for (i, len) in [(0u64, 8000usize), (1, 6000), (2, 9001)] {
        let (clean, noisy) = clean_and_noisy(i, len);
        std::fs::write(
            input.join(format!("clip{i}.wav")),
            encode_i16(&noisy, 8000).unwrap(),
        )
        .unwrap();
        cleans.push((format!("clip{i}.wav"), clean, noisy));
    }
    std::fs::write(input.join("notes.txt"), "not audio").unwrap();
    let status = bin()
        .args(["denoise", "--method", "wiener", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    let mut names: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["clip0.wav", "clip1.wav", "clip2.wav"]);
    for (name, clean, noisy) in &cleans {
        let out = decode(
            &std::fs::read(output.join(name)).unwrap(),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(out.sample_rate, 8000);
        assert_eq!(out.samples.len(), clean.len(), "{name} changed length");
        let gain = si_sdr(clean, &out.samples) - si_sdr(clean, noisy);
        assert!(gain > 3.0, "{name}: SI-SDR improved by only {gain:.2} dB");
    }
}

#[test]
fn denoise_reports_bad_files_and_still_writes_the_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    let (_, noisy) = clean_and_noisy(0, 8000);
    let good = encode_i16(&noisy, 8000).unwrap();
    std::fs::write(input.join("good.wav"), &good).unwrap();
    std::fs::write(input.join("cut.wav"), &good[..good.len() / 3]).unwrap();
    std::fs::write(input.join("empty.wav"), b"").unwrap();
    let out = bin()
        .args(["denoise", "--method", "spectral_gate", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cut.wav") && stderr.contains("truncated_audio"),
        "{stderr}"
    );
    assert!(
        stderr.contains("empty.wav") && stderr.contains("empty_audio"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.join("good.wav").is_file());

    let out = bin()
        .args(["denoise", "--method", "magic", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wiener"));
    let out = bin()
        .args(["denoise", "--method", "nmf", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fit"));
}

#[test]
fn nmf_fits_on_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    let (clean, noisy) = clean_and_noisy(3, 8000);
    std::fs::write(input.join("a.wav"), encode_i16(&noisy, 8000).unwrap()).unwrap();
    let params = tmp.path().join("p.toml");
    std::fs::write(
        &params,
        "[nmf]\nspeech_atoms = 4\nnoise_atoms = 2\nfit_iterations = 20\n",
    )
    .unwrap();
    let status = bin()
        .args(["denoise", "--method", "nmf", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--fit")
        .arg(&input)
        .arg("--params")
        .arg(&params)
        .status()
        .unwrap();
    assert!(status.success());
    let out = decode(
        &std::fs::read(output.join("a.wav")).unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap();
    let gain = si_sdr(&clean, &out.samples) - si_sdr(&clean, &noisy);
    assert!(gain > 3.0, "nmf improved SI-SDR by only {gain:.2} dB");
}

#[test]
fn check_prints_the_resolved_config_and_refuses_bad_params() {
    let tmp = tempfile::tempdir().unwrap();
    let params = tmp.path().join("p.toml");
    std::fs::write(
        &params,
        "clip_seconds = 2.0\n[denoise]\nmethod = \"spectral_gate\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["audio", "--check", "--params"])
        .arg(&params)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["clip_seconds"], 2.0);
    assert_eq!(json["denoise"]["method"], "spectral_gate");
    assert_eq!(json["mel"]["n_mels"], 32);
    std::fs::write(&params, "[filter]\nmin_snr_db = 500.0\n").unwrap();
    let out = bin()
        .args(["audio", "--check", "--params"])
        .arg(&params)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("filter.min_snr_db"));
}
