//! A bounded fuzzing driver on proptest, for the fuzz targets beside it.
//!
//! Each target draws inputs from a proptest strategy (mostly valid files or texts with a few mutations), runs
//! the code under test and checks the outcome; a panic or an unclear error fails the target, and proptest
//! shrinks the input to a small one before it is reported. Inside `cargo test` a target tries a few hundred
//! cases (a few seconds). `MMRL_FUZZ_SECONDS=N` runs each target for N seconds instead, `MMRL_FUZZ_CASES=N` for N
//! cases, and `MMRL_FUZZ_SEED=N` draws other inputs than the default seed. Each target writes its counts to
//! stderr past the test harness's capture, so `cargo test` shows them.

use std::cell::Cell;
use std::fmt::Debug;
use std::io::Write;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// What one case of a target came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input was accepted (maybe with rows rejected, each with its reason).
    Accepted,
    /// The input was refused with a clear error.
    Refused,
}

/// How long a target runs.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Cases(u64),
    Time(Duration),
}

fn budget(default_cases: u64) -> Budget {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    match (var("MMRL_FUZZ_SECONDS"), var("MMRL_FUZZ_CASES")) {
        (Some(s), _) if s > 0.0 => Budget::Time(Duration::from_secs_f64(s)),
        (_, Some(n)) if n >= 1.0 => Budget::Cases(n as u64),
        _ => Budget::Cases(default_cases),
    }
}

fn runner(target: &str) -> TestRunner {
    let seed = std::env::var("MMRL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut bytes = [0u8; 32];
    let key = blake3::hash(format!("{target}:{seed}").as_bytes());
    bytes.copy_from_slice(key.as_bytes());
    let config = Config {
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Runs `target`: draws cases from `strategy` and checks each with `check`, which returns how the code under
/// test took the input, or a description of what is wrong (an error that names no file, row or field). Panics
/// with the smallest failing input found; returns the number of cases tried.
pub fn run<S>(
    target: &str,
    default_cases: u64,
    strategy: S,
    check: impl Fn(S::Value) -> Result<Outcome, String>,
) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = budget(default_cases);
    let mut runner = runner(target);
    let accepted = Cell::new(0u64);
    let refused = Cell::new(0u64);
    let started = Instant::now();
    let mut cases = 0u64;
    let more = |cases: u64| match budget {
        Budget::Cases(n) => cases < n,
        Budget::Time(t) => started.elapsed() < t,
    };
    while more(cases) {
        let tree = match strategy.new_tree(&mut runner) {
            Ok(tree) => tree,
            Err(e) => panic!("fuzz {target}: the strategy gave no input: {e}"),
        };
        cases += 1;
        let result = runner.run_one(tree, |value| match check(value) {
            Ok(Outcome::Accepted) => {
                accepted.set(accepted.get() + 1);
                Ok(())
            }
            Ok(Outcome::Refused) => {
                refused.set(refused.get() + 1);
                Ok(())
            }
            Err(why) => Err(TestCaseError::fail(why)),
        });
        match result {
            Ok(_) => {}
            Err(TestError::Fail(why, input)) => panic!(
                "fuzz {target}: case {cases} failed: {why}\nsmallest failing input: {input:#?}\n\
                 (commit it as a regression input once fixed)"
            ),
            Err(TestError::Abort(why)) => panic!("fuzz {target}: aborted: {why}"),
        }
    }
    // Past the harness's capture: the counts are the point of a fuzz run.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {target}: {cases} cases in {:.1} s, no panic; {} accepted, {} refused with a clear error",
        started.elapsed().as_secs_f64(),
        accepted.get(),
        refused.get()
    );
    cases
}

/// Byte-level mutations of a valid file: what a flipped bit, a truncated download or a hand edit does.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte.
    Flip(proptest::sample::Index, u8),
    /// Cut the file at a position.
    Truncate(proptest::sample::Index),
    /// Insert bytes at a position.
    Insert(proptest::sample::Index, Vec<u8>),
    /// Remove up to `len` bytes at a position.
    Remove(proptest::sample::Index, u8),
    /// Overwrite four bytes with an extreme little-endian number (sizes and counts in headers).
    Word(proptest::sample::Index, u32),
}

/// A strategy for 1 to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    use proptest::prelude::*;
    let word = prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7fff_ffff),
        Just(0xffff_ffff),
        Just(0x8000_0000),
        any::<u32>()
    ];
    let one = prop_oneof![
        4 => (any::<proptest::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<proptest::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<proptest::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<proptest::sample::Index>(), 1u8..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        2 => (any::<proptest::sample::Index>(), word).prop_map(|(i, w)| Mutation::Word(i, w)),
    ];
    proptest::collection::vec(one, 1..=max)
}

/// `bytes` with `mutations` applied in order.
pub fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let at = |i: &proptest::sample::Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::Flip(i, x) => {
                if !out.is_empty() {
                    let p = at(i, out.len());
                    out[p] ^= x;
                }
            }
            Mutation::Truncate(i) => {
                let p = at(i, out.len());
                out.truncate(p);
            }
            Mutation::Insert(i, b) => {
                let p = at(i, out.len() + 1);
                out.splice(p..p, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let p = at(i, out.len());
                let end = (p + usize::from(*n)).min(out.len());
                out.drain(p..end);
            }
            Mutation::Word(i, w) => {
                if out.len() >= 4 {
                    let p = at(i, out.len() - 3);
                    out[p..p + 4].copy_from_slice(&w.to_le_bytes());
                }
            }
        }
    }
    out
}
