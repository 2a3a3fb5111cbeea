//! Samplers: better than random on simple functions with fixed seeds, valid parameters on mixed and
//! conditional spaces, determinism.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mmrl_hpo::sampler::{Context, Observation, SamplerKind};
use mmrl_hpo::{Params, Space};

/// Runs `trials` suggestions of `kind` minimizing `f` and returns the best loss.
fn run(
    kind: SamplerKind,
    space: &Space,
    f: &dyn Fn(&Params) -> f64,
    trials: u64,
    seed: u64,
) -> (f64, Vec<Params>) {
    let mut s = kind.build(space).unwrap();
    let mut history: Vec<Observation> = Vec::new();
    let mut seen = Vec::new();
    for t in 0..trials {
        let p = s
            .suggest(&Context {
                space,
                history: &history,
                trial: t,
                seed,
            })
            .unwrap();
        space
            .validate_params(&p)
            .unwrap_or_else(|e| panic!("{kind:?} trial {t}: {e}: {p:?}"));
        history.push(Observation {
            number: t,
            params: p.clone(),
            loss: f(&p),
        });
        seen.push(p);
    }
    (
        history.iter().map(|o| o.loss).fold(f64::INFINITY, f64::min),
        seen,
    )
}

fn x(p: &Params, k: &str) -> f64 {
    p[k].as_f64().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn model_based_samplers_beat_random_on_a_shifted_sphere() {
    let space = Space::floats(&[(-5.0, 5.0); 3]);
    let f = |p: &Params| {
        (x(p, "x0") - 1.0).powi(2) + (x(p, "x1") + 2.0).powi(2) + (x(p, "x2") - 0.5).powi(2)
    };
    let seeds = 0..5u64;
    let random = median(
        seeds
            .clone()
            .map(|s| run(SamplerKind::Random, &space, &f, 40, s).0)
            .collect(),
    );
    for kind in [
        SamplerKind::Tpe,
        SamplerKind::Gp,
        SamplerKind::Cmaes,
        SamplerKind::Ga,
    ] {
        let m = median(
            seeds
                .clone()
                .map(|s| run(kind, &space, &f, 40, s).0)
                .collect(),
        );
        assert!(m < random, "{kind:?}: median best {m} vs random {random}");
    }
}

#[test]
fn sobol_points_stratify_better_than_random() {
    // Over 64 points in 2-d, Sobol fills every cell of an 8x8 grid; random draws leave many empty.
    let space = Space::floats(&[(0.0, 1.0); 2]);
    let f = |_: &Params| 0.0;
    let cells = |ps: &[Params]| {
        let mut c = std::collections::BTreeSet::new();
        for p in ps {
            c.insert(((x(p, "x0") * 8.0) as u32, (x(p, "x1") * 8.0) as u32));
        }
        c.len()
    };
    let (_, sob) = run(SamplerKind::Sobol, &space, &f, 64, 7);
    let (_, rnd) = run(SamplerKind::Random, &space, &f, 64, 7);
    assert_eq!(cells(&sob), 64);
    assert!(cells(&rnd) < 64);
}

#[test]
fn mixed_and_conditional_spaces_give_valid_params_and_improve() {
    let space = Space::from_toml(
        r#"
        lr = { type = "float", low = 1e-4, high = 1e-1, log = true }
        batch = { type = "int", low = 8, high = 64, step = 8 }
        kind = { type = "categorical", choices = ["a", "b", "c"] }
        warm = { type = "int", low = 0, high = 100, condition = { parent = "kind", values = ["b"] } }
        "#,
    )
    .unwrap();
    // Best: kind b, warm 30, lr 1e-2, batch 32.
    let f = |p: &Params| {
        let lr = (x(p, "lr").log10() + 2.0).powi(2);
        let b = ((x(p, "batch") - 32.0) / 32.0).powi(2);
        let k = match p["kind"].as_str() {
            Some("b") => ((x(p, "warm") - 30.0) / 100.0).powi(2),
            Some("a") => 0.5,
            _ => 1.0,
        };
        lr + b + k
    };
    let seeds = 0..4u64;
    let random = median(
        seeds
            .clone()
            .map(|s| run(SamplerKind::Random, &space, &f, 40, s).0)
            .collect(),
    );
    for kind in [SamplerKind::Tpe, SamplerKind::Gp, SamplerKind::Ga] {
        let m = median(
            seeds
                .clone()
                .map(|s| run(kind, &space, &f, 40, s).0)
                .collect(),
        );
        assert!(m < random, "{kind:?}: median best {m} vs random {random}");
    }
    for kind in [SamplerKind::Cmaes, SamplerKind::Sobol, SamplerKind::Grid] {
        run(kind, &space, &f, 20, 1);
    }
}

#[test]
fn same_seed_same_suggestions() {
    let space = Space::floats(&[(0.0, 1.0); 2]);
    let f = |p: &Params| (x(p, "x0") - 0.2).powi(2) + x(p, "x1");
    for kind in SamplerKind::ALL {
        let a = run(kind, &space, &f, 15, 3).1;
        let b = run(kind, &space, &f, 15, 3).1;
        assert_eq!(a, b, "{kind:?}");
        if kind != SamplerKind::Grid {
            let c = run(kind, &space, &f, 15, 4).1;
            assert_ne!(a, c, "{kind:?} ignores the seed");
        }
    }
}
