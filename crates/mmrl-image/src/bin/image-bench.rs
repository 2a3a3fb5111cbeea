//! `image-bench`: images/s of read + decode + RGB + resize + normalize over a folder, on one thread and on all
//! cores; the same work `../shared/bench/image/run_pillow.py` times for Pillow + NumPy.
//!
//! ```sh
//! python3 ../shared/bench/image/make_images.py --n 1000 --out /tmp/imgbench
//! cargo run --release -p mmrl-image --bin image-bench -- --input /tmp/imgbench --size 64
//! python3 ../shared/bench/image/run_pillow.py --input /tmp/imgbench --size 64
//! ```
//!
//! Like the reference, every image is read from disk, decoded, converted to RGB, resized bilinearly to
//! `size` x `size` (`--fit stretch`, the reference's behaviour) and normalized with fixed ImageNet mean/std into
//! one preallocated `f32` array. One untimed warm-up pass fills the page cache; each figure is the median of
//! `--repeat` timed passes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use mmrl_image::{Filter, Fit, ImageConfig, Normalization, Preprocessor, Scratch};
use rayon::prelude::*;

#[derive(Parser)]
#[command(
    name = "image-bench",
    about = "images/s of decode + resize + normalize on 1 thread and on all cores"
)]
struct Args {
    /// Folder of .png/.jpg/.jpeg images (e.g. from ../shared/bench/image/make_images.py).
    #[arg(long, value_name = "DIR")]
    input: PathBuf,
    /// Output side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// How the aspect ratio is fitted (stretch is what the Pillow reference does).
    #[arg(long, value_enum, default_value_t = FitArg::Stretch)]
    fit: FitArg,
    /// Decode JPEG at full size instead of scaling in the DCT.
    #[arg(long)]
    no_dct_scaling: bool,
    /// Timed passes per thread count; the median is printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also time each file type separately on one thread.
    #[arg(long)]
    by_type: bool,
    /// Time only reading and decoding (no resize, no normalization), to see what decoding costs.
    #[arg(long)]
    decode_only: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FitArg {
    Stretch,
    Pad,
    CenterCrop,
}

fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!(
            "{} is absent or not a folder; make one with `python3 ../shared/bench/image/make_images.py --n 1000 --out {}`",
            dir.display(),
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} has no .png/.jpg/.jpeg files", dir.display());
    }
    Ok(files)
}

/// One pass over `files` on the current rayon pool; returns the seconds taken and the images refused.
fn pass(
    pre: &Preprocessor,
    norm: &Normalization,
    files: &[PathBuf],
    out: &mut [f32],
    per: usize,
) -> (f64, usize) {
    if DECODE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return decode_pass(files);
    }
    let start = Instant::now();
    let refused: usize = out
        .par_chunks_mut(per)
        .zip(files.par_iter())
        .map_init(
            || (Scratch::new(), Vec::new()),
            |(scratch, bytes), (tensor, file)| {
                // The file buffer is reused too: read_to_end fills its spare capacity without zeroing it first.
                bytes.clear();
                if std::fs::File::open(file)
                    .and_then(|mut f| f.read_to_end(bytes))
                    .is_err()
                {
                    return 1;
                }
                match pre.canvas(scratch, bytes) {
                    Ok(canvas) => {
                        norm.apply(&canvas, tensor);
                        0
                    }
                    Err(_) => 1,
                }
            },
        )
        .sum();
    (start.elapsed().as_secs_f64(), refused)
}

static DECODE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn decode_pass(files: &[PathBuf]) -> (f64, usize) {
    let start = Instant::now();
    let refused = files
        .par_iter()
        .map(|file| {
            let Ok(bytes) = std::fs::read(file) else {
                return 1;
            };
            let decoded = mmrl_image::decode::probe(&bytes).and_then(|p| p.decode(u64::MAX, None));
            usize::from(decoded.is_err())
        })
        .sum();
    (start.elapsed().as_secs_f64(), refused)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = list(&args.input)?;
    DECODE_ONLY.store(args.decode_only, std::sync::atomic::Ordering::Relaxed);
    let fit = match args.fit {
        FitArg::Stretch => Fit::Stretch,
        FitArg::Pad => Fit::Pad,
        FitArg::CenterCrop => Fit::CenterCrop,
    };
    let config = ImageConfig {
        size: args.size,
        fit,
        filter: Filter::Bilinear,
        jpeg_dct_scaling: !args.no_dct_scaling,
        max_aspect_ratio: 1e6,
        ..ImageConfig::default()
    };
    let pre = Preprocessor::new(&config)?;
    // The reference's fixed ImageNet statistics.
    let norm = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let per = 3 * (args.size * args.size) as usize;
    let mut out = vec![0f32; files.len() * per];
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "images={} size={} fit={:?} jpeg_dct_scaling={} cores={cores} repeat={} profile={}",
        files.len(),
        args.size,
        fit,
        config.jpeg_dct_scaling,
        args.repeat,
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }
    );
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    for threads in thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let (_, refused) = pool.install(|| pass(&pre, &norm, &files, &mut out, per));
        let times: Vec<f64> = (0..args.repeat.max(1))
            .map(|_| pool.install(|| pass(&pre, &norm, &files, &mut out, per).0))
            .collect();
        let t = median(times);
        println!(
            "threads={threads} images={} refused={refused} seconds={t:.3} images_per_s={:.1}",
            files.len(),
            files.len() as f64 / t
        );
    }
    if args.by_type {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let mut groups: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
        for file in &files {
            let bytes = std::fs::read(file)?;
            let kind = match pre.analyze(&mut Scratch::new(), &bytes) {
                Ok(a) => format!("{}/{}", a.format.as_str(), a.layout),
                Err(e) => e.reason.as_str().to_owned(),
            };
            groups.entry(kind).or_default().push(file.clone());
        }
        for (kind, group) in groups {
            let times: Vec<f64> = (0..args.repeat.max(1))
                .map(|_| pool.install(|| pass(&pre, &norm, &group, &mut out, per).0))
                .collect();
            let t = median(times);
            println!(
                "threads=1 type={kind} images={} ms_per_image={:.3}",
                group.len(),
                1e3 * t / group.len() as f64
            );
        }
    }
    Ok(())
}
