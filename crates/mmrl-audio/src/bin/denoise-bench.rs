//! Denoising benchmark on the FSDD noisy mixtures of `../shared/bench/denoise/make_mixtures.py`: for each method,
//! one thread, prints the mean SI-SDR improvement (computed here, as `score.py` does) and clips per second, and
//! writes the enhanced WAVs to `OUT/<method>/` so `score.py` can check them.
//!
//! ```sh
//! python3 ../shared/bench/denoise/make_mixtures.py --fsdd ../shared/data/fsdd --out /tmp/mix
//! cargo run --release -p mmrl-audio --bin denoise-bench -- --mix /tmp/mix
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use mmrl_audio::denoise::{DenoiseConfig, Denoiser, Fitted, Method};
use mmrl_audio::nmf::NmfModel;
use mmrl_audio::snr::si_sdr;
use mmrl_audio::wav::{DecodeLimits, decode, encode_i16};

#[derive(Parser)]
#[command(
    name = "denoise-bench",
    about = "SI-SDR improvement and clips/s of every denoiser on the FSDD mixtures"
)]
struct Args {
    /// The mixtures folder (clean/, noisy/, mixtures.csv) written by make_mixtures.py.
    #[arg(long, default_value = "/tmp/mix")]
    mix: PathBuf,
    /// The FSDD folder (recordings/), for the NMF speech dictionary (recordings with index >= 5, never the test
    /// clips).
    #[arg(long, default_value = "../shared/data/fsdd")]
    fsdd: PathBuf,
    /// Where enhanced WAVs go, one folder per method.
    #[arg(long, default_value = "/tmp/mmrl-denoise-bench")]
    out: PathBuf,
    /// Methods to run, comma-separated (default: every method but none).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// A TOML file with denoiser parameters (the `denoise` table of the stage params); `method` is overridden.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Timed passes over the clips per method; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Also score these folders of enhanced WAVs (e.g. noisereduce's output) with the same SI-SDR code.
    #[arg(long)]
    score: Vec<PathBuf>,
}

struct Clip {
    name: String,
    group: String,
    clean: Vec<f32>,
    noisy: Vec<f32>,
}

fn shared_hint() -> String {
    if Path::new("../shared").is_dir() {
        "create them with: python3 ../shared/bench/denoise/make_mixtures.py --fsdd ../shared/data/fsdd --out /tmp/mix".into()
    } else {
        "../shared is absent (it holds the FSDD recordings and the mixture script), so this benchmark cannot run here"
            .into()
    }
}

fn read_wav(path: &Path) -> anyhow::Result<(Vec<f32>, u32)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let d = decode(&bytes, &DecodeLimits::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((d.samples, d.sample_rate))
}

fn load_mixtures(mix: &Path) -> anyhow::Result<(Vec<Clip>, u32)> {
    let csv_path = mix.join("mixtures.csv");
    if !csv_path.is_file() {
        bail!("{} not found; {}", csv_path.display(), shared_hint());
    }
    let text = std::fs::read_to_string(&csv_path)
        .with_context(|| format!("reading {}", csv_path.display()))?;
    let mut clips = Vec::new();
    let mut rate = 0;
    for (i, line) in text.lines().enumerate().skip(1) {
        let cells: Vec<&str> = line.trim().split(',').collect();
        let [file, noise, snr] = cells[..] else {
            bail!(
                "{} line {}: expected file,noise,snr_db",
                csv_path.display(),
                i + 1
            );
        };
        let (clean, sr) = read_wav(&mix.join("clean").join(file))?;
        let (noisy, sr2) = read_wav(&mix.join("noisy").join(file))?;
        if sr != sr2 || (rate != 0 && sr != rate) {
            bail!("{file}: sample rates differ ({sr}, {sr2}, {rate})");
        }
        rate = sr;
        clips.push(Clip {
            name: file.to_owned(),
            group: format!("{noise}@{snr}dB"),
            clean,
            noisy,
        });
    }
    if clips.is_empty() {
        bail!("{}: no mixtures", csv_path.display());
    }
    Ok((clips, rate))
}

/// Speech dictionary from clean FSDD recordings that are not test clips (index >= 5), every 7th file.
fn fit_nmf(fsdd: &Path, config: &DenoiseConfig, rate: u32) -> anyhow::Result<NmfModel> {
    let dir = fsdd.join("recordings");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {} ({})", dir.display(), shared_hint()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            p.extension().is_some_and(|e| e == "wav")
                && stem
                    .rsplit('_')
                    .next()
                    .and_then(|i| i.parse::<u32>().ok())
                    .is_some_and(|i| i >= 5)
        })
        .collect();
    files.sort();
    let mut probe = Denoiser::new(
        &DenoiseConfig {
            method: Method::None,
            ..config.clone()
        },
        rate,
        Arc::default(),
    )?;
    let mut speech = Vec::new();
    let mut power = Vec::new();
    let mut n_bins = 0;
    for path in files.iter().step_by(7) {
        let (x, sr) = read_wav(path)?;
        if sr != rate {
            continue;
        }
        let (_, nb) = probe.power_spectrogram(&x, &mut power)?;
        n_bins = nb;
        // Keep frames within 30 dB of the clip's loudest: the speech, not the trimmed edges.
        let energies: Vec<f32> = power.chunks_exact(nb).map(|f| f.iter().sum()).collect();
        let max = energies.iter().copied().fold(0.0f32, f32::max);
        for (frame, e) in power.chunks_exact(nb).zip(&energies) {
            if *e > max * 1e-3 {
                speech.extend(frame.iter().map(|p| p.sqrt()));
            }
        }
    }
    let params = mmrl_audio::nmf::NmfParams {
        noise_atoms: 0,
        ..config.nmf
    };
    Ok(NmfModel::fit(&speech, &[], n_bins, &params, 0)?)
}

fn mean_by_group(names: &[(&str, f64)]) -> (BTreeMap<String, f64>, f64) {
    let mut groups: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut total = 0.0;
    for (g, v) in names {
        let e = groups.entry((*g).to_owned()).or_default();
        e.0 += v;
        e.1 += 1;
        total += v;
    }
    let means = groups
        .into_iter()
        .map(|(g, (s, n))| (g, s / n as f64))
        .collect();
    (means, total / names.len().max(1) as f64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (clips, rate) = load_mixtures(&args.mix)?;
    let base: DenoiseConfig = match &args.params {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => DenoiseConfig::default(),
    };
    let methods: Vec<Method> = if args.methods.is_empty() {
        Method::ALL
            .into_iter()
            .filter(|m| *m != Method::None)
            .collect()
    } else {
        args.methods
            .iter()
            .map(|m| Method::parse(m).with_context(|| format!("unknown method {m:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let seconds: f64 = clips.iter().map(|c| c.noisy.len() as f64).sum::<f64>() / f64::from(rate);
    let baseline: Vec<f64> = clips.iter().map(|c| si_sdr(&c.clean, &c.noisy)).collect();
    println!(
        "{} mixtures, {:.1} s of audio at {rate} Hz, mean input SI-SDR {:.2} dB; one thread, best of {} passes",
        clips.len(),
        seconds,
        baseline.iter().sum::<f64>() / baseline.len() as f64,
        args.passes
    );
    for dir in &args.score {
        let mut imps = Vec::new();
        for (c, b) in clips.iter().zip(&baseline) {
            let (x, _) = read_wav(&dir.join(&c.name))?;
            imps.push((c.group.as_str(), si_sdr(&c.clean, &x) - b));
        }
        let (groups, mean) = mean_by_group(&imps);
        println!(
            "scored {}: mean SI-SDR improvement {mean:+.3} dB {groups:?}",
            dir.display()
        );
    }
    for method in methods {
        let config = DenoiseConfig {
            method,
            ..base.clone()
        };
        let fitted = if method == Method::Nmf {
            match fit_nmf(&args.fsdd, &config, rate) {
                Ok(model) => Fitted {
                    noise: None,
                    nmf: Some(model),
                },
                Err(e) => {
                    println!("method=nmf skipped: {e:#}");
                    continue;
                }
            }
        } else {
            Fitted::default()
        };
        let mut denoiser = Denoiser::new(&config, rate, Arc::new(fitted))?;
        let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); clips.len()];
        let mut best = f64::INFINITY;
        for _ in 0..args.passes.max(1) {
            let start = Instant::now();
            for (c, out) in clips.iter().zip(outputs.iter_mut()) {
                denoiser.process(&c.noisy, out)?;
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        let dir = args.out.join(method.as_str());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut imps = Vec::new();
        for ((c, out), b) in clips.iter().zip(&outputs).zip(&baseline) {
            let bytes = encode_i16(out, rate)?;
            std::fs::write(dir.join(&c.name), bytes)
                .with_context(|| format!("writing {}", c.name))?;
            // Score what a reader of the file gets: the 16-bit round trip.
            let (written, _) = read_wav(&dir.join(&c.name))?;
            imps.push((c.group.as_str(), si_sdr(&c.clean, &written) - b));
        }
        let (groups, mean) = mean_by_group(&imps);
        println!(
            "method={:<20} si_sdr_improvement_db={mean:+.3} clips_per_s={:.1} x_realtime={:.0} out={}",
            method.as_str(),
            clips.len() as f64 / best,
            seconds / best,
            dir.display()
        );
        println!(
            "  per group: {}",
            groups
                .iter()
                .map(|(g, v)| format!("{g} {v:+.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
