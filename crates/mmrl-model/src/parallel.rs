//! Data-parallel gradients on CPU threads: the shards of a batch run forward and backward at the same
//! time on forked copies of the model, and their gradients are summed in shard order.
//!
//! burn's CPU backend runs the small matrices of this model on one core (its own threads only help
//! large tensors), so a training step left one of two cores idle. Running shards concurrently is what
//! PyTorch's DistributedDataParallel does across processes; here the shards share the process and the
//! parameters. The result depends on the number of shards, never on the number of threads: each shard
//! computes the same thing whether it runs alone or beside others, and the sum is taken in shard order.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::model::MultimodalModel;

/// 0: not set yet.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The threads training shards and generation chunks run on: set by [`set_threads`], else the
/// `MMRL_THREADS` environment variable, else every available core. Like `torch.set_num_threads`, it
/// changes speed only, never results.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let n = match std::env::var("MMRL_THREADS") {
                Err(_) => cores,
                Ok(v) => match v.trim().parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        tracing::warn!(
                            value = %v,
                            cores,
                            "MMRL_THREADS must be a positive whole number; using every core"
                        );
                        cores
                    }
                },
            };
            THREADS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Sets the threads for this process (0: back to the default of [`threads`]).
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// `f(i)` for `i = 0..n`, up to `threads` at a time, results in order.
pub fn map_ordered<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let mut out = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let wave = next..(next + threads).min(n);
        std::thread::scope(|scope| {
            let f = &f;
            let handles: Vec<_> = wave.clone().map(|i| scope.spawn(move || f(i))).collect();
            for h in handles {
                out.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
        });
        next = wave.end;
    }
    out
}

/// The gradients of `Σ_i loss(model, i)` over shards `i = 0..shards`, and each shard's side output, in
/// shard order.
///
/// With one thread the shards run one after the other on `model` itself. With more, each shard runs on
/// its own fork of `model` (fresh autodiff leaves with the same parameter ids, so concurrent autograd
/// graphs never merge and backward passes do not wait on one another's lock), up to `threads` at a time.
/// Either way the gradients are summed in shard order, so both give the same bits.
pub fn sharded_grads<T, E>(
    model: &MultimodalModel,
    shards: usize,
    threads: usize,
    loss: impl Fn(&MultimodalModel, usize) -> Result<(Tensor<1>, T), E> + Sync,
) -> Result<(GradientsParams, Vec<T>), E>
where
    T: Send,
    E: Send,
{
    let shard_grads = |m: &MultimodalModel, i: usize| -> Result<(GradientsParams, T), E> {
        let (l, out) = loss(m, i)?;
        Ok((GradientsParams::from_grads(l.backward(), m), out))
    };
    let results: Vec<(GradientsParams, T)> = if threads.min(shards) <= 1 {
        (0..shards)
            .map(|i| shard_grads(model, i))
            .collect::<Result<_, E>>()?
    } else {
        let device = model.devices().into_iter().next();
        map_ordered(shards, threads, |i| {
            let fork = match &device {
                Some(d) => model.clone().fork(d),
                None => model.clone(),
            };
            shard_grads(&fork, i)
        })
        .into_iter()
        .collect::<Result<_, E>>()?
    };
    let mut outputs = Vec::with_capacity(results.len());
    let mut accumulator = GradientsAccumulator::<MultimodalModel>::new();
    let single = results.len() == 1;
    let mut only = None;
    for (g, out) in results {
        outputs.push(out);
        if single {
            only = Some(g);
        } else {
            accumulator.accumulate(model, g);
        }
    }
    Ok((only.unwrap_or_else(|| accumulator.grads()), outputs))
}
