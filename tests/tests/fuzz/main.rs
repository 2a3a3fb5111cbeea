//! Fuzz targets: what users and crashes hand the pipeline, malformed a thousand ways. Each target starts from
//! valid inputs (WAV, PNG and JPEG files, dataset folders in every layout ingest reads, every stage's params of
//! the default and smoke pipelines, pipeline files, artifacts, an hpo journal) and mutates them. No input may
//! panic, and every refusal must be an error naming the file, row or field.
//!
//! `cargo test -p mmrl-tests --test fuzz` runs each target for a few hundred cases; `MMRL_FUZZ_SECONDS=60` runs
//! each for a minute (see `driver.rs`). Inputs that once failed, and hand-made edge cases of each format
//! (truncated headers, impossible sizes, NaN samples, a cyclic pipeline), live in `tests/fuzz/regressions/` and
//! are replayed by `regressions_stay_fixed`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // setup of valid seeds; a failure there stops the test

mod driver;
mod inputs;

use std::path::Path;

use driver::{Outcome, mutate, mutations};
use inputs::{Dataset, Layout, Seeds};
use proptest::prelude::*;

/// An error message names one of `names` (a file, a row or line, a field), or it is unclear.
fn names_one(message: &str, names: &[&str]) -> Result<Outcome, String> {
    if message.trim().is_empty() {
        return Err("an empty error message".into());
    }
    if names.iter().any(|n| !n.is_empty() && message.contains(n)) {
        Ok(Outcome::Refused)
    } else {
        Err(format!("the error names none of {names:?}: {message}"))
    }
}

// --- media: the decoders of the audio and image stages ------------------------------------------------------

/// The audio stage's decoder on WAV bytes: samples, or a reject with a detail.
fn check_wav(bytes: &[u8]) -> Result<Outcome, String> {
    match mmrl_audio::wav::decode(bytes, &mmrl_audio::wav::DecodeLimits::default()) {
        Ok(d) if d.samples.iter().all(|s| s.is_finite()) => Ok(Outcome::Accepted),
        Ok(_) => Err("decoded non-finite samples without refusing them".into()),
        Err(r) if r.detail().trim().is_empty() => Err(format!("{} with no detail", r.code())),
        Err(_) => Ok(Outcome::Refused),
    }
}

#[test]
fn wav_decoding_never_panics() {
    let seeds = Seeds::get();
    driver::run(
        "wav (mmrl-audio wav::decode)",
        600,
        (0..seeds.wavs.len(), mutations(4)),
        |(i, m)| check_wav(&mutate(&seeds.wavs[i], &m)),
    );
}

/// The image stage's decoder on PNG or JPEG bytes (at full size, or scaled down where JPEG allows).
fn check_image(bytes: &[u8], scaled: bool) -> Result<Outcome, String> {
    let probe = match mmrl_image::decode::probe(bytes) {
        Ok(p) => p,
        Err(r) if r.detail.trim().is_empty() => {
            return Err(format!("{:?} with no detail", r.reason));
        }
        Err(_) => return Ok(Outcome::Refused),
    };
    // The stage refuses more pixels than its limit before decoding; a header may claim anything.
    if probe.pixels() > 1 << 22 {
        return Ok(Outcome::Refused);
    }
    match probe.decode(256 << 20, scaled.then_some((4, 4))) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(r) if r.detail.trim().is_empty() => Err(format!("{:?} with no detail", r.reason)),
        Err(_) => Ok(Outcome::Refused),
    }
}

#[test]
fn image_decoding_never_panics() {
    let seeds = Seeds::get();
    driver::run(
        "png/jpeg (mmrl-image decode::probe, decode)",
        600,
        (0..seeds.images.len(), mutations(4), any::<bool>()),
        |(i, m, scaled)| check_image(&mutate(&seeds.images[i].1, &m), scaled),
    );
}

// --- datasets: ingest on every layout it reads ---------------------------------------------------------------

/// Ingests `dataset`; a refusal must name the dataset's file, an accepted dataset's rejects their line or row.
fn ingest(dataset: &Dataset) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().unwrap();
    dataset.write(dir.path());
    let config = mmrl_data::ingest::IngestConfig {
        max_image_pixels: 1 << 20,
        ..Default::default()
    };
    match mmrl_data::ingest::read(&config, dir.path()) {
        Ok(ingested) => {
            for row in &ingested.rows {
                if let Err(r) = &row.outcome
                    && !(r.detail.contains("line ") || r.detail.contains("row "))
                {
                    return Err(format!(
                        "reject {} names no line or row: {}",
                        r.reason, r.detail
                    ));
                }
            }
            Ok(Outcome::Accepted)
        }
        Err(e) => {
            let message = e.to_string();
            let root = dir.path().display().to_string();
            let mut names: Vec<&str> = dataset.files.iter().map(|(n, _)| n.as_str()).collect();
            names.push(&root);
            names_one(&message, &names)
        }
    }
}

#[test]
fn manifest_csv_rows_never_panic() {
    driver::run(
        "manifest.csv (mmrl-data ingest)",
        300,
        inputs::dataset(Layout::ManifestCsv),
        |d| ingest(&d),
    );
}

#[test]
fn metadata_jsonl_rows_never_panic() {
    driver::run(
        "metadata.jsonl (mmrl-data ingest)",
        300,
        inputs::dataset(Layout::MetadataJsonl),
        |d| ingest(&d),
    );
}

#[test]
fn parquet_datasets_never_panic() {
    driver::run(
        "datasets Parquet (mmrl-data ingest)",
        300,
        inputs::dataset(Layout::Parquet),
        |d| ingest(&d),
    );
}

// --- configs: pipeline files and every stage's params ---------------------------------------------------------

/// The runner's pipeline loader on a pipeline file named `name` (beside the default and recipe files it may
/// extend).
fn check_pipeline(name: &str, text: &[u8]) -> Result<Outcome, String> {
    let seeds = Seeds::get();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.toml"), &seeds.pipelines[0].1).unwrap();
    std::fs::write(dir.path().join("recipe.toml"), &seeds.recipe).unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    match xtask::pipeline::Pipeline::load(&path) {
        Ok(p) => p
            .order()
            .map(|_| Outcome::Accepted)
            .map_err(|e| format!("order of a valid pipeline: {e:#}")),
        Err(e) => names_one(&format!("{e:#}"), &[name, "default.toml", "recipe.toml"]),
    }
}

#[test]
fn pipeline_files_never_panic() {
    let seeds = Seeds::get();
    driver::run(
        "pipeline TOML (xtask Pipeline::load)",
        400,
        (0..seeds.pipelines.len(), inputs::text_edits()),
        |(i, edits)| {
            let (name, text) = &seeds.pipelines[i];
            check_pipeline(name, &inputs::edit_text(text, &edits))
        },
    );
}

/// A stage's params check (`run` is its `BIN STAGE`) on params text; a refusal must name the file or `key`.
fn check_params(run: &str, text: &str, key: &str) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("params.toml");
    std::fs::write(&file, text).unwrap();
    match inputs::check_params(run, &file) {
        Ok(()) => Ok(Outcome::Accepted),
        Err(message) => {
            let path = file.display().to_string();
            names_one(&message, &[&path, key]).map_err(|e| format!("{run}: {e}\nparams:\n{text}"))
        }
    }
}

#[test]
fn every_stage_params_never_panic() {
    let seeds = Seeds::get();
    driver::run(
        "stage params (each stage's config and validate)",
        1200,
        (0..seeds.params.len(), inputs::param_edit()),
        |(i, edit)| {
            let (run, base) = &seeds.params[i];
            let (table, key) = inputs::edit_params(base, &edit);
            let text =
                toml::to_string(&table).map_err(|e| format!("serializing the params: {e}"))?;
            check_params(run, &text, &key)
        },
    );
}

// --- artifacts: Parquet tables with flipped or truncated bytes -------------------------------------------------

/// Opens the seed artifact with `table` as its `samples.parquet` (the manifest made to agree with it when
/// `rehash`, as if the writer had written it) and reads the table.
fn check_artifact(table: &[u8], rehash: bool) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("select");
    inputs::copy_dir(&Seeds::get().artifact, &artifact);
    std::fs::write(artifact.join("samples.parquet"), table).unwrap();
    if rehash {
        inputs::rehash(&artifact, "samples.parquet");
    }
    match mmrl_artifact::Artifact::open(&artifact).and_then(|a| a.read_table("samples")) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e) => names_one(&e.to_string(), &["samples.parquet", "manifest.json"]),
    }
}

#[test]
fn damaged_artifact_tables_never_panic() {
    let seeds = Seeds::get();
    let table = std::fs::read(seeds.artifact.join("samples.parquet")).unwrap();
    driver::run(
        "artifact Parquet (mmrl-artifact Artifact::open, read_table)",
        400,
        (mutations(3), any::<bool>()),
        |(m, rehash)| check_artifact(&mutate(&table, &m), rehash),
    );
}

// --- the hpo journal ----------------------------------------------------------------------------------------

/// Opens a study journal with this text and replays its trials; a refusal must name the journal and the line.
fn check_journal(text: &[u8]) -> Result<Outcome, String> {
    use mmrl_hpo::storage::{JOURNAL_FILE, JournalStorage, Storage};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
    match JournalStorage::open(dir.path()).and_then(|s| s.trials()) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e) => {
            let message = e.to_string();
            if message.contains(JOURNAL_FILE) && message.contains("line") {
                Ok(Outcome::Refused)
            } else {
                Err(format!("the error names no journal line: {message}"))
            }
        }
    }
}

#[test]
fn hpo_journals_never_panic() {
    driver::run(
        "hpo journal (mmrl-hpo JournalStorage)",
        600,
        inputs::journal(),
        |text| check_journal(&text),
    );
}

// --- inputs that once failed --------------------------------------------------------------------------------

/// Runs a committed regression input through the target it failed in, chosen by its name:
/// `wav-*`, `image-*`, `journal-*`, `artifact-*` (a `samples.parquet`, manifest made to agree),
/// `pipeline-NAME` (a pipeline file), `params-BIN-STAGE-KEY-*.toml` (a stage's params, naming KEY),
/// `csv-*` (a `manifest.csv` beside the seed media), `jsonl-*`, `parquet-*` (a dataset file).
fn replay(name: &str, bytes: &[u8]) -> Result<Outcome, String> {
    let (kind, rest) = name.split_once('-').ok_or("no KIND- prefix")?;
    let media = || -> Vec<(String, Vec<u8>)> {
        let seeds = Seeds::get();
        vec![
            ("a.png".into(), seeds.images[2].1.clone()),
            ("b.wav".into(), seeds.wavs[1].clone()),
            ("e.jpg".into(), seeds.images[6].1.clone()),
        ]
    };
    let dataset = |file: &str| {
        let mut files = media();
        files.push((file.to_owned(), bytes.to_vec()));
        ingest(&inputs::Dataset { files })
    };
    match kind {
        "wav" => check_wav(bytes),
        "image" => check_image(bytes, false).and(check_image(bytes, true)),
        "journal" => check_journal(bytes),
        "artifact" => check_artifact(bytes, true),
        "pipeline" => check_pipeline(rest, bytes),
        "params" => {
            let mut parts = rest.splitn(4, '-');
            let (bin, stage, key) = (parts.next(), parts.next(), parts.next());
            let (Some(bin), Some(stage), Some(key)) = (bin, stage, key) else {
                return Err("expected params-BIN-STAGE-KEY-*".into());
            };
            let text = String::from_utf8_lossy(bytes);
            check_params(&format!("mmrl-{bin} {stage}"), &text, key)
        }
        "csv" => dataset("manifest.csv"),
        "jsonl" => dataset("metadata.jsonl"),
        "parquet" => dataset("data/train-00000-of-00001.parquet"),
        other => Err(format!("unknown kind {other:?}")),
    }
}

/// Replays every committed regression input through the target it failed in: each must now be handled.
#[test]
fn regressions_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = replay(&name, &std::fs::read(&path).unwrap());
        assert!(result.is_ok(), "{name}: {result:?}");
        replayed += 1;
    }
    assert!(replayed > 0, "no regression input under {}", dir.display());
}
