//! Search-space parsing, validation and encoding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mmrl_hpo::Space;
use mmrl_hpo::sampler::grid::GridSampler;
use serde_json::json;

fn err(toml: &str) -> String {
    match Space::from_toml(toml) {
        Ok(s) => panic!("expected an error for {toml}, got {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_spaces_are_errors_naming_the_parameter() {
    let cases = [
        (
            r#"lr = { type = "float", low = 1.0, high = 0.1 }"#,
            "\"lr\": low 1 > high 0.1",
        ),
        (
            r#"lr = { type = "float", low = 0.0, high = 1.0, log = true }"#,
            "\"lr\": log scale needs a positive low bound",
        ),
        (
            r#"n = { type = "int", low = 1, high = 8, step = 2, log = true }"#,
            "\"n\": a log-scale int needs step 1",
        ),
        (
            r#"n = { type = "int", low = 1.5, high = 8 }"#,
            "\"n\": int bounds must be integers",
        ),
        (
            r#"c = { type = "categorical", choices = [] }"#,
            "\"c\": `choices` is empty",
        ),
        (
            r#"c = { type = "categorical", choices = ["a", "a"] }"#,
            "\"c\": choices: \"a\" is listed twice",
        ),
        (
            r#"c = { type = "categorical" }"#,
            "\"c\": missing `choices`",
        ),
        (
            r#"x = { type = "float", low = 0.0 }"#,
            "\"x\": missing `high`",
        ),
        (
            r#"x = { type = "float", low = 0.0, high = 1.0, condition = { parent = "nope", values = [1] } }"#,
            "condition parent \"nope\" is not in the space",
        ),
        (
            r#"a = { type = "categorical", choices = ["p", "q"] }
            x = { type = "float", low = 0.0, high = 1.0, condition = { parent = "a", values = ["z"] } }"#,
            "condition value \"z\" is not a value of \"a\"",
        ),
        (
            r#"a = { type = "categorical", choices = [1, 2], condition = { parent = "b", values = [1] } }
            b = { type = "categorical", choices = [1, 2], condition = { parent = "a", values = [1] } }"#,
            "conditions form a cycle",
        ),
        ("", "the search space is empty"),
        (
            r#"x = { type = "float", low = 0.0, high = 1.0, lo = 3 }"#,
            "unknown field `lo`",
        ),
        (
            r#"x = { type = "double", low = 0.0, high = 1.0 }"#,
            "unknown variant `double`",
        ),
    ];
    for (toml, expected) in cases {
        let e = err(toml);
        assert!(
            e.contains(expected),
            "{toml}\n  got: {e}\n  expected: {expected}"
        );
    }
}

#[test]
fn decode_respects_domains() {
    let space = Space::from_json(
        &json!({
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},
            "batch": {"type": "int", "low": 16, "high": 64, "step": 16},
            "layers": {"type": "int", "low": 1, "high": 32, "log": true},
            "opt": {"type": "categorical", "choices": ["adam", "sgd"]},
        })
        .to_string(),
    )
    .unwrap();
    for i in 0..=20 {
        let u = vec![i as f64 / 20.0; space.dim()];
        let p = space.decode(&u);
        let lr = p["lr"].as_f64().unwrap();
        assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        let b = p["batch"].as_i64().unwrap();
        assert!([16, 32, 48, 64].contains(&b), "{b}");
        let l = p["layers"].as_i64().unwrap();
        assert!((1..=32).contains(&l));
        assert!(p["opt"] == "adam" || p["opt"] == "sgd");
        space.validate_params(&p).unwrap();
        // Encoding what was decoded and decoding again gives the same parameters.
        assert_eq!(space.decode(&space.encode(&p)), p);
    }
    // The log scale puts the geometric middle at u = 0.5.
    let mid = space.decode(&[0.5; 4]);
    assert!((mid["lr"].as_f64().unwrap() - 1e-3).abs() < 1e-9);
    // All four batch sizes are reachable with equal width.
    let at = space.index("batch").unwrap();
    let counts: Vec<usize> = [16, 32, 48, 64]
        .iter()
        .map(|b| {
            (0..1000)
                .filter(|i| {
                    let mut u = vec![0.0; 4];
                    u[at] = *i as f64 / 1000.0;
                    space.decode(&u)["batch"] == *b
                })
                .count()
        })
        .collect();
    assert!(counts.iter().all(|c| (230..=270).contains(c)), "{counts:?}");
}

#[test]
fn conditional_parameters_are_absent_when_inactive() {
    let space = Space::from_toml(
        r#"
        "schedule.kind" = { type = "categorical", choices = ["constant", "warmup_cosine"] }
        "schedule.warmup_steps" = { type = "int", low = 0, high = 200, condition = { parent = "schedule.kind", values = ["warmup_cosine"] } }
        "schedule.min_lr" = { type = "float", low = 1e-6, high = 1e-4, log = true, condition = { parent = "schedule.warmup_steps", values = [0, 1, 2] } }
        "#,
    )
    .unwrap();
    let kind = space.index("schedule.kind").unwrap();
    let warm = space.index("schedule.warmup_steps").unwrap();
    let mut u = vec![0.5; 3];
    u[kind] = 0.1; // constant
    let p = space.decode(&u);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(!p.contains_key("schedule.warmup_steps") && !p.contains_key("schedule.min_lr"));
    space.validate_params(&p).unwrap();
    u[kind] = 0.9; // warmup_cosine
    u[warm] = 0.9;
    let p = space.decode(&u);
    assert!(
        p.contains_key("schedule.warmup_steps") && !p.contains_key("schedule.min_lr"),
        "{p:?}"
    );
    u[warm] = 0.0; // warmup 0 activates the grandchild
    let p = space.decode(&u);
    assert_eq!(p.len(), 3, "{p:?}");
    let mut wrong = p.clone();
    wrong.insert("schedule.kind".into(), json!("constant"));
    assert!(
        space
            .validate_params(&wrong)
            .unwrap_err()
            .to_string()
            .contains("present but inactive")
    );
}

#[test]
fn grid_enumerates_every_combination_once() {
    let space = Space::from_toml(
        r#"
        opt = { type = "categorical", choices = ["adam", "sgd"] }
        momentum = { type = "float", low = 0.0, high = 0.9, condition = { parent = "opt", values = ["sgd"] } }
        layers = { type = "int", low = 1, high = 3 }
        "#,
    )
    .unwrap();
    let grid = GridSampler::new(&space, 4).unwrap();
    // adam: 3 layer values; sgd: 4 momentum values x 3 layers.
    assert_eq!(grid.points().len(), 3 + 12);
    let mut seen = std::collections::BTreeSet::new();
    for p in grid.points() {
        space.validate_params(p).unwrap();
        assert!(
            seen.insert(serde_json::to_string(p).unwrap()),
            "duplicate {p:?}"
        );
    }
    let momenta: std::collections::BTreeSet<String> = grid
        .points()
        .iter()
        .filter_map(|p| p.get("momentum").map(|m| m.to_string()))
        .collect();
    assert_eq!(momenta.len(), 4);
    assert!(
        momenta.contains("0.0") && momenta.contains("0.9"),
        "{momenta:?}"
    );
}
