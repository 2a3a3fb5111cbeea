//! `mmrl-audio`: the audio stage in the stage protocol of [`mmrl_artifact::cli`], and a standalone `denoise`
//! command that turns a folder of WAVs into a folder of denoised WAVs with the same names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use mmrl_artifact::cli::{StageArgs, init_logging, print_resolved, progress_bar};
use mmrl_audio::denoise::{DenoiseConfig, Denoiser, Fitted, Method};
use mmrl_audio::fit::{FitProbe, finish_fit};
use mmrl_audio::stage::{self, AudioConfig};
use mmrl_audio::wav::{DecodeLimits, decode, encode_i16};
use rayon::prelude::*;

#[derive(Parser)]
#[command(
    name = "mmrl-audio",
    version,
    about = "mmrl audio stage: denoise, filter and featurize clips"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The pipeline stage: --input samples=SELECT_ARTIFACT, writes audio.parquet, state.json, report.json and
    /// rejects.parquet.
    Audio(StageArgs),
    /// Denoise every WAV of a folder into another folder, same names, same rates and lengths (mono, 16-bit).
    Denoise(DenoiseArgs),
}

#[derive(clap::Args)]
struct DenoiseArgs {
    /// Folder of WAV files (not recursive).
    #[arg(long)]
    input: PathBuf,
    /// Folder to write the denoised WAVs to (created if needed).
    #[arg(long)]
    output: PathBuf,
    /// none, spectral_gate, nonstationary_gate, spectral_subtraction, wiener or nmf.
    #[arg(long)]
    method: String,
    /// A TOML file with denoiser parameters (the `denoise` table of the stage params); --method overrides its
    /// `method`.
    #[arg(long)]
    params: Option<PathBuf>,
    /// A folder of WAVs to fit the train state on (NMF dictionaries; the noise profile when noise_source = "train").
    #[arg(long)]
    fit: Option<PathBuf>,
    /// Seed for the NMF initialization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Audio(args) => run_stage(&args),
        Command::Denoise(args) => run_denoise(&args),
    }
}

fn run_stage(args: &StageArgs) -> anyhow::Result<()> {
    let config: AudioConfig = args.params().map_err(|e| anyhow!(e))?;
    config.validate()?;
    if args.check {
        return print_resolved(&config).map_err(|e| anyhow!(e));
    }
    let samples = args.input("samples").map_err(|e| anyhow!(e))?;
    let output = args.output().map_err(|e| anyhow!(e))?;
    let summary = stage::run(&config, samples, output, args.seed)
        .with_context(|| format!("audio stage on {}", samples.display()))?;
    for (reason, n) in &summary.rejects_by_reason {
        tracing::warn!(reason = %reason, rows = n, "samples dropped");
    }
    for (reason, n) in &summary.absent_by_reason {
        tracing::info!(reason = %reason, rows = n, "audio marked absent");
    }
    Ok(())
}

fn wav_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("wav")))
        .collect();
    files.sort();
    Ok(files)
}

fn fit_folder(config: &DenoiseConfig, dir: &Path, seed: u64) -> anyhow::Result<(Fitted, u32)> {
    let files = wav_files(dir)?;
    let mut rate = None;
    let mut probe: Option<FitProbe> = None;
    let mut clips = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let decoded = match decode(&bytes, &DecodeLimits::default()) {
            Ok(d) => d,
            Err(r) => {
                tracing::warn!(file = %path.display(), reason = r.code(), "skipped for fitting: {}", r.detail());
                continue;
            }
        };
        if *rate.get_or_insert(decoded.sample_rate) != decoded.sample_rate {
            tracing::warn!(file = %path.display(), rate = decoded.sample_rate, "skipped for fitting: another sample rate");
            continue;
        }
        let probe = match &mut probe {
            Some(p) => p,
            None => probe.insert(FitProbe::new(config, decoded.sample_rate)?),
        };
        if let Some(clip) = probe.measure(&decoded.samples, config.nmf.max_fit_frames)? {
            clips.push(clip);
        }
    }
    let Some(rate) = rate else {
        bail!("{}: no decodable WAV to fit on", dir.display())
    };
    let (fitted, used) = finish_fit(config, clips, seed)?;
    tracing::info!(clips = used, rate, folder = %dir.display(), "fit the denoiser");
    Ok((fitted, rate))
}

fn run_denoise(args: &DenoiseArgs) -> anyhow::Result<()> {
    let method = Method::parse(&args.method).ok_or_else(|| {
        anyhow!(
            "--method {:?} is not one of {}",
            args.method,
            Method::ALL
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let mut config: DenoiseConfig = match &args.params {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => DenoiseConfig::default(),
    };
    config.method = method;
    config.validate("")?;
    let (fitted, fit_rate) = match &args.fit {
        Some(dir) => {
            let (f, r) = fit_folder(&config, dir, args.seed)?;
            (f, Some(r))
        }
        None if FitProbe::needed(&config) => {
            bail!(
                "--method {} with noise_source {:?} needs --fit DIR (clips to fit on)",
                method.as_str(),
                config.noise_source
            )
        }
        None => (Fitted::default(), None),
    };
    let fitted = Arc::new(fitted);
    let files = wav_files(&args.input)?;
    if files.is_empty() {
        bail!("{}: no .wav files", args.input.display());
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let bar = progress_bar(files.len() as u64, "denoise");
    let results: Vec<Result<(), String>> = pool.install(|| {
        files
            .par_iter()
            .map_init(BTreeMap::<u32, Denoiser>::new, |denoisers, path| {
                let result =
                    denoise_file(path, &args.output, &config, &fitted, fit_rate, denoisers);
                bar.inc(1);
                result
            })
            .collect()
    });
    bar.finish_and_clear();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for message in &failed {
        eprintln!("rejected: {message}");
    }
    tracing::info!(files = files.len(), written = files.len() - failed.len(), method = method.as_str(), output = %args.output.display(), "denoised");
    if !failed.is_empty() {
        bail!(
            "{} of {} files were rejected (listed above); the others were written",
            failed.len(),
            files.len()
        );
    }
    Ok(())
}

fn denoise_file(
    path: &Path,
    output: &Path,
    config: &DenoiseConfig,
    fitted: &Arc<Fitted>,
    fit_rate: Option<u32>,
    denoisers: &mut BTreeMap<u32, Denoiser>,
) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let decoded =
        decode(&bytes, &DecodeLimits::default()).map_err(|r| format!("{}: {r}", path.display()))?;
    if fit_rate.is_some_and(|r| r != decoded.sample_rate) {
        return Err(format!(
            "{}: sample rate {} Hz differs from the {} Hz of the --fit clips",
            path.display(),
            decoded.sample_rate,
            fit_rate.unwrap_or_default()
        ));
    }
    let denoiser = match denoisers.entry(decoded.sample_rate) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => e.insert(
            Denoiser::new(config, decoded.sample_rate, Arc::clone(fitted))
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
    };
    let mut out = Vec::new();
    denoiser
        .process(&decoded.samples, &mut out)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let wav = encode_i16(&out, decoded.sample_rate)
        .map_err(|e| format!("{}: encoding: {e}", path.display()))?;
    let Some(name) = path.file_name() else {
        return Err(format!("{}: no file name", path.display()));
    };
    let dest = output.join(name);
    std::fs::write(&dest, wav).map_err(|e| format!("writing {}: {e}", dest.display()))
}
