//! `replay-bench`: sampled-and-updated items per second of the prioritized replay buffer on one core.
//!
//! The workload of `../shared/bench/replay/run_sumtree.py`: a full buffer of `2^log2_capacity` items with
//! priorities `U(0,1) + 1e-3`; each step samples a stratified batch proportional to priority and sets the
//! sampled items' priorities to fresh `U(0,1) + 1e-3` values. Beyond the reference, every step also computes
//! the batch's importance-sampling weights and keeps the min-tree current.

use std::time::Instant;

use clap::Parser;
use mmrl_rl::replay::{PrioritizedReplay, ReplayState, SampleBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Parser)]
#[command(
    name = "replay-bench",
    about = "prioritized replay: sampled-and-updated items per second"
)]
struct Args {
    /// log2 of the buffer capacity.
    #[arg(long, default_value_t = 20)]
    log2_capacity: u32,
    /// Items sampled and updated per step.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20_000)]
    steps: usize,
    /// Timed repetitions (the best and the median are printed).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also time sampling alone (no priority updates).
    #[arg(long)]
    split: bool,
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`), so a shared machine's time slicing does not
/// count against the figure; `None` elsewhere.
fn on_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let a = Args::parse();
    let cap = 1usize << a.log2_capacity;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let leaves: Vec<f64> = (0..cap).map(|_| rng.random::<f64>() + 1e-3).collect();
    let state = ReplayState {
        items: vec![(); cap],
        leaves,
        next: 0,
        max_priority: 1.0,
    };
    // alpha 1: the stored priority is the drawn value, as in the reference.
    let mut replay = PrioritizedReplay::from_state(cap, 1.0, 0.0, state);
    let mut batch = SampleBatch::with_capacity(a.batch);
    let mut fresh = vec![0.0f64; a.batch];
    let mut checksum = 0.0f64;
    let mut rates = Vec::with_capacity(a.reps);
    let mut cpu_rates = Vec::with_capacity(a.reps);
    for _ in 0..a.reps {
        let c0 = on_cpu_ns();
        let t0 = Instant::now();
        for _ in 0..a.steps {
            replay.sample_into(a.batch, 0.4, &mut rng, &mut batch);
            for p in fresh.iter_mut() {
                *p = rng.random::<f64>() + 1e-3;
            }
            checksum += batch.weights[0];
            replay.update_priorities(&mut batch, &fresh);
        }
        rates.push((a.steps * a.batch) as f64 / t0.elapsed().as_secs_f64());
        if let (Some(c0), Some(c1)) = (c0, on_cpu_ns()) {
            cpu_rates.push((a.steps * a.batch) as f64 / ((c1 - c0) as f64 * 1e-9));
        }
    }
    cpu_rates.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    if a.split {
        let t0 = Instant::now();
        for _ in 0..a.steps {
            replay.sample_into(a.batch, 0.4, &mut rng, &mut batch);
            checksum += batch.weights[0];
        }
        println!(
            "sampling alone (with IS weights): {:.2} M items/s",
            (a.steps * a.batch) as f64 / t0.elapsed().as_secs_f64() / 1e6
        );
    }
    println!(
        "capacity=2^{} batch={} steps={} reps={}: best {:.2} M items/s, median {:.2} M items/s (sample + IS weights + update, one thread; checksum {checksum:.3})",
        a.log2_capacity,
        a.batch,
        a.steps,
        a.reps,
        rates[rates.len() - 1] / 1e6,
        rates[rates.len() / 2] / 1e6
    );
    if !cpu_rates.is_empty() {
        println!(
            "per on-CPU second (time slices lost to other processes not counted): median {:.2} M items/s",
            cpu_rates[cpu_rates.len() / 2] / 1e6
        );
    }
}
