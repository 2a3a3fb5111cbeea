//! Studies: journal replay, kill-and-resume, corrupt lines, concurrent writers, pruning in the loop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use mmrl_hpo::study::{Launcher, Poll, RunningTrial, Study, StudySettings};
use mmrl_hpo::{
    Direction, JournalStorage, Params, PrunerConfig, SamplerKind, Space, Storage, TrialState,
};

/// Trials that report one intermediate value per poll: `score * step / steps`, then finish with `score`.
struct Stepwise {
    score: f64,
    step: u64,
    steps: u64,
}

impl RunningTrial for Stepwise {
    fn poll(&mut self) -> Poll {
        self.step += 1;
        let v = self.score * self.step as f64 / self.steps as f64;
        if self.step >= self.steps {
            Poll::Done(vec![(self.step, v)], Ok(self.score))
        } else {
            Poll::Running(vec![(self.step, v)])
        }
    }
    fn kill(&mut self) {}
}

struct Toy {
    steps: u64,
    fail_above: f64,
    launched: Vec<(u64, Params)>,
}

fn score(p: &Params) -> f64 {
    let x = p["x"].as_f64().unwrap_or(0.0);
    let y = p["y"].as_f64().unwrap_or(0.0);
    1.0 - (x - 0.3).powi(2) - (y - 0.7).powi(2)
}

impl Launcher for Toy {
    fn launch(&mut self, number: u64, params: &Params) -> mmrl_hpo::Result<Box<dyn RunningTrial>> {
        self.launched.push((number, params.clone()));
        if params
            .get("x")
            .and_then(|x| x.as_f64())
            .is_some_and(|x| x > self.fail_above)
        {
            return Err(mmrl_hpo::Error::Study("x too large to launch".into()));
        }
        Ok(Box::new(Stepwise {
            score: score(params),
            step: 0,
            steps: self.steps,
        }))
    }
}

fn settings(n_trials: u64, pruner: PrunerConfig, workers: usize) -> StudySettings {
    StudySettings {
        space: Space::floats(&[(0.0, 1.0); 2])
            .params
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                p.name = ["x", "y"][i].into();
                p
            })
            .collect::<Vec<_>>()
            .pipe(|params| Space { params }),
        sampler: SamplerKind::Tpe,
        n_trials,
        workers,
        direction: Direction::Maximize,
        pruner,
        seed: 11,
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

fn run(
    dir: &std::path::Path,
    n: u64,
    pruner: PrunerConfig,
    workers: usize,
) -> Vec<mmrl_hpo::TrialRecord> {
    let fail_above = if workers > 1 { 0.9 } else { 2.0 };
    let mut study = Study::open(dir, settings(n, pruner, workers)).unwrap();
    let mut toy = Toy {
        steps: 3,
        fail_above,
        launched: Vec::new(),
    };
    study.optimize(&mut toy, Duration::ZERO, |_| {}).unwrap()
}

#[test]
fn a_killed_study_resumes_without_losing_or_repeating_trials() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), 5, PrunerConfig::None, 1);
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|t| t.state == TrialState::Complete));
    // A kill mid-trial: trial 5 started and reported once; the process died while writing its next event.
    let params: Params = [
        ("x".to_owned(), serde_json::json!(0.25)),
        ("y".to_owned(), serde_json::json!(0.5)),
    ]
    .into_iter()
    .collect();
    {
        let journal = JournalStorage::open(dir.path()).unwrap();
        assert_eq!(journal.start_trial(&params, None).unwrap(), 5);
        journal.report(5, 1, 0.3).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        f.write_all(br#"{"event":"intermediate","trial":5,"st"#)
            .unwrap();
    }
    let after = run(dir.path(), 8, PrunerConfig::None, 1);
    let numbers: BTreeSet<u64> = after.iter().map(|t| t.number).collect();
    assert_eq!(numbers.len(), after.len(), "duplicate trial numbers");
    // The five completed trials are kept as they were.
    assert_eq!(&after[..5], &first[..]);
    // The interrupted trial is not counted and is re-run once, with its parameters, as a new number.
    assert_eq!(after[5].state, TrialState::Interrupted);
    assert_eq!(after[5].intermediate.get(&1), Some(&0.3));
    let reruns: Vec<_> = after.iter().filter(|t| t.retry_of == Some(5)).collect();
    assert_eq!(reruns.len(), 1);
    assert_eq!(reruns[0].number, 6);
    assert_eq!(reruns[0].params, params);
    assert_eq!(reruns[0].state, TrialState::Complete);
    assert_eq!(Study::counted(&after), 8);
    assert!(dir.path().join("journal.jsonl.corrupt-tail").is_file());
    // Opening again with the same budget runs nothing more.
    let again = run(dir.path(), 8, PrunerConfig::None, 1);
    assert_eq!(again, after);
}

#[test]
fn a_corrupt_middle_line_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), 2, PrunerConfig::None, 1);
    let path = dir.path().join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "{not json");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let journal = JournalStorage::open(dir.path()).unwrap();
    let e = journal.trials().unwrap_err().to_string();
    assert!(
        e.contains("journal.jsonl: line 3: not a journal event"),
        "{e}"
    );
}

#[test]
fn a_corrupt_last_line_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), 2, PrunerConfig::None, 1);
    let path = dir.path().join("journal.jsonl");
    let before = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{before}garbage that ends in a newline\n")).unwrap();
    let journal = JournalStorage::open(dir.path()).unwrap();
    assert_eq!(journal.trials().unwrap().len(), 2);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn concurrent_writers_never_share_a_trial_number() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let d = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let journal = JournalStorage::open(&d).unwrap();
                let mut mine = Vec::new();
                for i in 0..20 {
                    let p: Params = [("w".to_owned(), serde_json::json!(w * 100 + i))]
                        .into_iter()
                        .collect();
                    let n = journal.start_trial(&p, None).unwrap();
                    journal.report(n, 1, i as f64).unwrap();
                    journal
                        .finish(n, TrialState::Complete, Some(i as f64), None, 0.0)
                        .unwrap();
                    mine.push(n);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..80).collect::<Vec<u64>>());
    let trials = JournalStorage::open(dir.path()).unwrap().trials().unwrap();
    assert_eq!(trials.len(), 80);
    assert!(
        trials
            .iter()
            .all(|t| t.state == TrialState::Complete && t.intermediate.len() == 1)
    );
}

#[test]
fn a_second_process_on_the_same_study_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Study::open(dir.path(), settings(1, PrunerConfig::None, 1)).unwrap();
    let e = Study::open(dir.path(), settings(1, PrunerConfig::None, 1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in use by another hpo process"), "{e}");
}

#[test]
fn the_pruner_stops_poor_trials_and_launch_failures_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let pruner = PrunerConfig::Median {
        n_startup_trials: 3,
        n_warmup_steps: 0,
    };
    let trials = run(dir.path(), 24, pruner, 3);
    assert_eq!(Study::counted(&trials), 24);
    let pruned: Vec<_> = trials
        .iter()
        .filter(|t| t.state == TrialState::Pruned)
        .collect();
    assert!(!pruned.is_empty());
    for t in &pruned {
        // A pruned trial stopped before its last step and keeps its last value.
        let (last_step, last) = t.intermediate.iter().next_back().unwrap();
        assert!(*last_step < 3);
        assert_eq!(t.value, Some(*last));
    }
    let failed: Vec<_> = trials
        .iter()
        .filter(|t| t.state == TrialState::Failed)
        .collect();
    assert!(!failed.is_empty());
    for t in failed {
        assert!(t.error.as_deref().unwrap_or("").contains("x too large"));
    }
    let best = mmrl_hpo::study::best_trial(&trials, Direction::Maximize).unwrap();
    assert_eq!(best.state, TrialState::Complete);
}

#[test]
fn samplers_see_pruned_trials_as_the_worst_complete_loss() {
    let dir = tempfile::tempdir().unwrap();
    let study = Study::open(dir.path(), settings(10, PrunerConfig::None, 1)).unwrap();
    let p = |x: f64| -> Params {
        [
            ("x".to_owned(), serde_json::json!(x)),
            ("y".to_owned(), serde_json::json!(0.5)),
        ]
        .into_iter()
        .collect()
    };
    let s = study.storage();
    for (x, state, value) in [
        (0.1, TrialState::Complete, Some(0.9)),
        (0.2, TrialState::Pruned, Some(0.1)),
        (0.3, TrialState::Complete, Some(0.4)),
        (0.4, TrialState::Failed, None),
    ] {
        let n = s.start_trial(&p(x), None).unwrap();
        s.finish(n, state, value, None, 1.0).unwrap();
    }
    let obs = study.observations(&study.trials().unwrap());
    // Maximized values become negated losses; the pruned trial gets the worst completed loss (-0.4).
    let got: Vec<(u64, f64)> = obs.iter().map(|o| (o.number, o.loss)).collect();
    assert_eq!(got, vec![(0, -0.9), (1, -0.4), (2, -0.4)]);
}

/// Runs a study with `sampler` on `space` to `n` counted trials, with the stepwise toy launcher.
fn run_with(
    dir: &std::path::Path,
    space: &Space,
    sampler: SamplerKind,
    n: u64,
) -> Vec<mmrl_hpo::TrialRecord> {
    let mut s = settings(n, PrunerConfig::None, 1);
    s.space = space.clone();
    s.sampler = sampler;
    let mut study = Study::open(dir, s).unwrap();
    let mut toy = Toy {
        steps: 2,
        fail_above: 2.0,
        launched: Vec::new(),
    };
    study.optimize(&mut toy, Duration::ZERO, |_| {}).unwrap()
}

/// The parameters of the trials that ran to the end, in number order (interrupted attempts left out).
fn ran(trials: &[mmrl_hpo::TrialRecord]) -> Vec<Params> {
    trials
        .iter()
        .filter(|t| t.state != TrialState::Interrupted)
        .map(|t| t.params.clone())
        .collect()
}

#[test]
fn an_interrupted_trial_does_not_shift_the_samplers_draws() {
    // A 2 x 2 grid: four points.
    let grid_space = Space::from_toml(
        r#"x = { type = "categorical", choices = [0.1, 0.2] }
y = { type = "categorical", choices = [0.5, 0.6] }"#,
    )
    .unwrap();
    let points = mmrl_hpo::sampler::grid::GridSampler::new(
        &grid_space,
        mmrl_hpo::sampler::grid::DEFAULT_POINTS,
    )
    .unwrap()
    .points()
    .to_vec();
    assert_eq!(points.len(), 4);
    let float_space = settings(1, PrunerConfig::None, 1).space;
    for (sampler, space) in [
        (SamplerKind::Grid, &grid_space),
        (SamplerKind::Random, &float_space),
        (SamplerKind::Sobol, &float_space),
        (SamplerKind::Tpe, &float_space),
    ] {
        let name = sampler.name();
        // The uninterrupted run.
        let whole = tempfile::tempdir().unwrap();
        let want = ran(&run_with(whole.path(), space, sampler, 4));
        assert_eq!(want.len(), 4, "{name}");
        // Trial 0 completes; trial 1 (the same draw as in the uninterrupted run) is started and the
        // process dies; the resumed study retries it as trial 2 and draws points 2 and 3 for trials 3 and 4.
        let dir = tempfile::tempdir().unwrap();
        let first = run_with(dir.path(), space, sampler, 1);
        assert_eq!(ran(&first), want[..1], "{name}");
        {
            let journal = JournalStorage::open(dir.path()).unwrap();
            assert_eq!(journal.start_trial(&want[1], None).unwrap(), 1);
        }
        let after = run_with(dir.path(), space, sampler, 4);
        assert_eq!(after.len(), 5, "{name}");
        assert_eq!(after[1].state, TrialState::Interrupted, "{name}");
        assert_eq!(after[2].retry_of, Some(1), "{name}");
        assert_eq!(ran(&after), want, "{name}: every draw once, in order");
    }
    // The grid's 4 points each ran exactly once after trial 1 was interrupted and retried.
    let dir = tempfile::tempdir().unwrap();
    run_with(dir.path(), &grid_space, SamplerKind::Grid, 1);
    JournalStorage::open(dir.path())
        .unwrap()
        .start_trial(&points[1], None)
        .unwrap();
    let after = run_with(dir.path(), &grid_space, SamplerKind::Grid, 4);
    let key = |p: &Params| serde_json::to_string(p).unwrap();
    let mut got: Vec<String> = ran(&after).iter().map(key).collect();
    let mut want: Vec<String> = points.iter().map(key).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each grid point exactly once");
}

#[test]
fn non_finite_intermediate_values_are_skipped_and_old_null_values_replay() {
    let dir = tempfile::tempdir().unwrap();
    let params: Params = [("x".to_owned(), serde_json::json!(0.5))]
        .into_iter()
        .collect();
    let journal = JournalStorage::open(dir.path()).unwrap();
    let n = journal.start_trial(&params, None).unwrap();
    for (step, v) in [
        (1, 0.25),
        (2, f64::NAN),
        (3, f64::INFINITY),
        (4, f64::NEG_INFINITY),
        (5, 0.5),
    ] {
        journal.report(n, step, v).unwrap();
    }
    let trials = journal.trials().unwrap();
    let steps: Vec<(u64, f64)> = trials[0]
        .intermediate
        .iter()
        .map(|(s, v)| (*s, *v))
        .collect();
    assert_eq!(steps, [(1, 0.25), (5, 0.5)]);
    let text = std::fs::read_to_string(journal.path()).unwrap();
    assert!(!text.contains("null"), "{text}");
    // A journal written before the fix holds `"value":null` for such a value: it still opens, skipping it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal.path())
        .unwrap();
    f.write_all(br#"{"event":"intermediate","trial":0,"step":6,"value":null}"#)
        .unwrap();
    f.write_all(b"\n").unwrap();
    journal.report(n, 7, 0.75).unwrap();
    drop(f);
    let trials = JournalStorage::open(dir.path()).unwrap().trials().unwrap();
    let steps: Vec<u64> = trials[0].intermediate.keys().copied().collect();
    assert_eq!(
        steps,
        [1, 5, 7],
        "the null line is skipped, the lines after it kept"
    );
}
