//! Tests of the core (fit, transform, quality) on tiny frames built in code, with hand-computed expectations.

use mmrl_artifact::sample::FeatureKind;
use polars::prelude::*;

use crate::recipe::ColumnOverride;
use crate::state::{ColumnState, NumericState};
use crate::*;

/// Float tolerance of every comparison below (outputs are `Float32`).
const TOL: f64 = 1e-5;

fn num(name: &str, values: &[Option<f64>]) -> Column {
    Column::new(name.into(), values)
}

fn cat(name: &str, values: &[Option<&str>]) -> Column {
    Column::new(name.into(), values)
}

fn split(values: &[&str]) -> Column {
    Column::new("split".into(), values)
}

fn frame(columns: Vec<Column>) -> DataFrame {
    let height = columns.first().map_or(0, Column::len);
    DataFrame::new(height, columns).unwrap()
}

fn train_of(df: &DataFrame) -> LazyFrame {
    df.clone().lazy().filter(col("split").eq(lit("train")))
}

fn numeric_state(state: &TabularState, name: &str) -> NumericState {
    state
        .columns
        .iter()
        .find_map(|c| match c {
            ColumnState::Numeric(n) if n.name == name => Some(n.clone()),
            _ => None,
        })
        .unwrap()
}

fn f32s(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name)
        .unwrap()
        .f32()
        .unwrap()
        .iter()
        .map(|v| v.map(f64::from))
        .collect()
}

fn u32s(df: &DataFrame, name: &str) -> Vec<Option<u32>> {
    df.column(name).unwrap().u32().unwrap().iter().collect()
}

fn assert_close(actual: &[Option<f64>], expected: &[f64], what: &str) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {actual:?} vs {expected:?}"
    );
    for (a, e) in actual.iter().zip(expected) {
        let a = a.unwrap_or_else(|| panic!("{what}: null output in {actual:?}"));
        assert!(
            (a - e).abs() <= TOL * e.abs().max(1.0),
            "{what}: got {actual:?}, expected {expected:?}"
        );
    }
}

/// Fits one numeric column `x` on `train` with `rules`, transforms `apply`, and checks the outputs.
fn check_numeric(
    train: &[Option<f64>],
    rules: NumericRules,
    apply: &[Option<f64>],
    expected: &[f64],
) -> NumericState {
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.numeric = rules;
    let state = fit(frame(vec![num("x", train)]).lazy(), &recipe).unwrap();
    let out = transform(frame(vec![num("x", apply)]).lazy(), &state)
        .unwrap()
        .collect()
        .unwrap();
    assert_close(&f32s(&out, "x"), expected, &format!("{:?}", recipe.numeric));
    numeric_state(&state, "x")
}

fn plain() -> NumericRules {
    NumericRules {
        impute: Impute::Constant,
        fill_value: 0.0,
        missing_indicators: false,
        sentinels: Vec::new(),
        outliers: Outliers::none(),
        scale: Scale::None,
    }
}

fn some(values: &[f64]) -> Vec<Option<f64>> {
    values.iter().copied().map(Some).collect()
}

#[test]
fn imputation_rules_fill_with_train_statistics() {
    let train = [Some(1.0), Some(2.0), Some(2.0), Some(10.0), None];
    let cases = [
        (Impute::Mean, 3.75),
        (Impute::Median, 2.0),
        (Impute::Mode, 2.0),
        (Impute::Constant, 7.0),
    ];
    for (impute, fill) in cases {
        let rules = NumericRules {
            impute,
            fill_value: 7.0,
            ..plain()
        };
        let s = check_numeric(&train, rules, &[None, Some(5.0)], &[fill, 5.0]);
        assert!((s.fill - fill).abs() < TOL, "{impute:?}");
    }
    // Mode ties go to the smallest value.
    let rules = NumericRules {
        impute: Impute::Mode,
        ..plain()
    };
    check_numeric(&some(&[3.0, 1.0, 3.0, 1.0]), rules, &[None], &[1.0]);
}

#[test]
fn sentinels_and_non_finite_values_become_missing_before_fitting() {
    let rules = NumericRules {
        impute: Impute::Mean,
        sentinels: vec![-999.0],
        missing_indicators: true,
        ..plain()
    };
    let train = some(&[1.0, 3.0, -999.0, f64::NAN, f64::INFINITY]);
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.numeric = rules;
    let state = fit(frame(vec![num("x", &train)]).lazy(), &recipe).unwrap();
    assert!((numeric_state(&state, "x").fill - 2.0).abs() < TOL);
    let out = transform(
        frame(vec![num("x", &some(&[-999.0, f64::NEG_INFINITY, 4.0]))]).lazy(),
        &state,
    )
    .unwrap()
    .collect()
    .unwrap();
    assert_close(&f32s(&out, "x"), &[2.0, 2.0, 4.0], "values");
    assert_close(&f32s(&out, "x__missing"), &[1.0, 1.0, 0.0], "indicator");
}

#[test]
fn outlier_rules_match_hand_computed_bounds() {
    // IQR: Q1 = 3.25, Q3 = 7.75 (linear interpolation), IQR 4.5, k 1.5: [-3.5, 14.5].
    let iqr = Outliers {
        rule: OutlierRule::Iqr,
        k: Some(1.5),
        action: OutlierAction::Clip,
    };
    let s = check_numeric(
        &some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 100.0]),
        NumericRules {
            outliers: iqr,
            ..plain()
        },
        &some(&[100.0, -10.0, 5.0]),
        &[14.5, -3.5, 5.0],
    );
    let o = s.outliers.unwrap();
    assert!(
        (o.lower + 3.5).abs() < TOL && (o.upper - 14.5).abs() < TOL,
        "{o:?}"
    );

    // z-score: mean 5, population std 2, k 2: [1, 9].
    let z = Outliers {
        rule: OutlierRule::Zscore,
        k: Some(2.0),
        action: OutlierAction::Clip,
    };
    check_numeric(
        &some(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]),
        NumericRules {
            outliers: z,
            ..plain()
        },
        &some(&[0.0, 10.0, 5.0]),
        &[1.0, 9.0, 5.0],
    );

    // MAD: median 3, MAD 1, k 2: 3 ± 2 * 1.4826.
    let mad = Outliers {
        rule: OutlierRule::Mad,
        k: Some(2.0),
        action: OutlierAction::Clip,
    };
    check_numeric(
        &some(&[1.0, 2.0, 3.0, 4.0, 100.0]),
        NumericRules {
            outliers: mad,
            ..plain()
        },
        &some(&[100.0, -100.0, 3.5]),
        &[3.0 + 2.0 * MAD_TO_STD, 3.0 - 2.0 * MAD_TO_STD, 3.5],
    );

    // Default k per rule.
    assert_eq!(
        Outliers {
            rule: OutlierRule::Iqr,
            k: None,
            action: OutlierAction::Clip
        }
        .effective_k(),
        1.5
    );
    assert_eq!(
        Outliers {
            rule: OutlierRule::Zscore,
            k: None,
            action: OutlierAction::Clip
        }
        .effective_k(),
        3.0
    );
    assert_eq!(
        Outliers {
            rule: OutlierRule::Mad,
            k: None,
            action: OutlierAction::Clip
        }
        .effective_k(),
        3.5
    );
}

#[test]
fn drop_rule_removes_rows_everywhere_and_later_statistics_ignore_them() {
    let drop = Outliers {
        rule: OutlierRule::Iqr,
        k: Some(1.5),
        action: OutlierAction::Drop,
    };
    let mut recipe = Recipe::new(vec![
        ("x".into(), FeatureKind::Numeric),
        ("y".into(), FeatureKind::Numeric),
    ]);
    recipe.numeric = NumericRules {
        impute: Impute::Median,
        ..plain()
    };
    recipe.columns.insert(
        "x".into(),
        ColumnOverride {
            outliers: Some(drop),
            ..Default::default()
        },
    );
    let mut xs = some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 100.0]);
    xs.push(Some(200.0)); // a val row
    let ys: Vec<Option<f64>> = (0..11)
        .map(|i| {
            if i == 9 {
                Some(1000.0)
            } else if i == 0 {
                None
            } else {
                Some(i as f64)
            }
        })
        .collect();
    let mut splits = vec!["train"; 10];
    splits.push("val");
    let df = frame(vec![
        Column::new(
            "id".into(),
            (0..11).map(|i| format!("s{i}")).collect::<Vec<_>>(),
        ),
        split(&splits),
        num("x", &xs),
        num("y", &ys),
    ]);
    let state = fit(train_of(&df), &recipe).unwrap();
    assert_eq!((state.train_rows, state.train_rows_kept), (10, 9));
    // y's median comes from the kept train rows 1..=8 only (row 0 is missing, row 9 was dropped).
    assert!((numeric_state(&state, "y").fill - 4.5).abs() < TOL);

    let out = transform(df.clone().lazy(), &state)
        .unwrap()
        .collect()
        .unwrap();
    assert_eq!(out.height(), 9);
    let drops = dropped(df.lazy(), &state).unwrap().collect().unwrap();
    let ids: Vec<_> = drops
        .column("id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, ["s9", "s10"]);
    assert_eq!(
        drops.column(DROP_COLUMN).unwrap().str().unwrap().get(0),
        Some("x")
    );
    assert_eq!(
        drops.column(DROP_VALUE).unwrap().f64().unwrap().get(1),
        Some(200.0)
    );
}

#[test]
fn scaling_rules_match_hand_computed_values() {
    // (rule, train values, values to transform, expected outputs)
    type Case<'a> = (Scale, &'a [f64], &'a [f64], &'a [f64]);
    let cases: [Case<'_>; 3] = [
        // mean 2.5, population std sqrt(1.25)
        (
            Scale::Zscore,
            &[1.0, 2.0, 3.0, 4.0],
            &[2.5, 4.0],
            &[0.0, 1.5 / 1.25f64.sqrt()],
        ),
        (
            Scale::Minmax,
            &[2.0, 4.0, 6.0],
            &[2.0, 4.0, 8.0],
            &[0.0, 0.5, 1.5],
        ),
        // median 3, Q3 - Q1 = 4 - 2
        (
            Scale::Robust,
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[1.0, 5.0, 3.0],
            &[-1.0, 1.0, 0.0],
        ),
    ];
    for (scale, train, apply, expected) in cases {
        check_numeric(
            &some(train),
            NumericRules { scale, ..plain() },
            &some(apply),
            expected,
        );
    }
}

#[test]
fn scaling_is_fit_after_clipping_and_imputation() {
    // Median imputation adds two 3s before robust scaling: [1, 2, 3, 3, 3, 4, 5] has Q1 2.5, Q3 3.5.
    let rules = NumericRules {
        impute: Impute::Median,
        scale: Scale::Robust,
        ..plain()
    };
    let s = check_numeric(
        &[
            Some(1.0),
            Some(2.0),
            None,
            None,
            Some(3.0),
            Some(4.0),
            Some(5.0),
        ],
        rules,
        &[Some(4.0)],
        &[1.0],
    );
    assert!(
        (s.center - 3.0).abs() < TOL && (s.scale_by - 1.0).abs() < TOL,
        "{s:?}"
    );
}

fn categorical_recipe(rules: CategoricalRules) -> Recipe {
    let mut recipe = Recipe::new(vec![("c".into(), FeatureKind::Categorical)]);
    recipe.categorical = rules;
    recipe
}

fn encode(
    rules: CategoricalRules,
    train: &[Option<&str>],
    apply: &[Option<&str>],
) -> (TabularState, DataFrame) {
    let state = fit(
        frame(vec![cat("c", train)]).lazy(),
        &categorical_recipe(rules),
    )
    .unwrap();
    let out = transform(frame(vec![cat("c", apply)]).lazy(), &state)
        .unwrap()
        .collect()
        .unwrap();
    (state, out)
}

#[test]
fn ordinal_codes_reserve_missing_and_unseen() {
    let train = [Some("b"), Some("a"), Some("b"), None];
    let apply = [Some("a"), Some("b"), Some("zzz"), None];
    let (state, out) = encode(CategoricalRules::default(), &train, &apply);
    assert_eq!(
        u32s(&out, "c"),
        [Some(2), Some(3), Some(UNSEEN_CODE), Some(MISSING_CODE)]
    );
    assert_eq!(state.cardinalities(), [("c".to_owned(), 4)]);

    let ignore = CategoricalRules {
        unknown: Unknown::Ignore,
        ..CategoricalRules::default()
    };
    let (_, out) = encode(ignore, &train, &apply);
    assert_eq!(
        u32s(&out, "c"),
        [Some(2), Some(3), Some(MISSING_CODE), Some(MISSING_CODE)]
    );

    // Mode imputation: the missing value becomes "b"; a constant fill is a category even if train never had it.
    let mode = CategoricalRules {
        impute: Impute::Mode,
        ..CategoricalRules::default()
    };
    let (_, out) = encode(mode, &train, &apply);
    assert_eq!(
        u32s(&out, "c"),
        [Some(2), Some(3), Some(UNSEEN_CODE), Some(3)]
    );
    let constant = CategoricalRules {
        impute: Impute::Constant,
        fill_value: "zz".into(),
        ..CategoricalRules::default()
    };
    let (state, out) = encode(constant, &[Some("b"), Some("a")], &apply);
    assert_eq!(
        u32s(&out, "c"),
        [Some(2), Some(3), Some(UNSEEN_CODE), Some(4)]
    );
    let ColumnState::Categorical(c) = &state.columns[0] else {
        panic!()
    };
    assert_eq!(c.categories, ["a", "b", "zz"]);
}

#[test]
fn one_hot_has_explicit_missing_and_unseen_columns() {
    let rules = CategoricalRules {
        encode: Encode::OneHot,
        missing_indicators: true,
        ..CategoricalRules::default()
    };
    let (state, out) = encode(
        rules,
        &[Some("b"), Some("a"), None],
        &[Some("a"), Some("zzz"), None],
    );
    let names: Vec<String> = state.output_columns().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["c=a", "c=b", "c=__missing__", "c=__unseen__", "c__missing"]
    );
    assert_close(&f32s(&out, "c=a"), &[1.0, 0.0, 0.0], "a");
    assert_close(&f32s(&out, "c=b"), &[0.0, 0.0, 0.0], "b");
    assert_close(&f32s(&out, "c=__missing__"), &[0.0, 0.0, 1.0], "missing");
    assert_close(&f32s(&out, "c=__unseen__"), &[0.0, 1.0, 0.0], "unseen");
    assert_close(&f32s(&out, "c__missing"), &[0.0, 0.0, 1.0], "indicator");

    // scikit-learn's handle_unknown="ignore": unseen rows are all zeros, no extra columns.
    let rules = CategoricalRules {
        encode: Encode::OneHot,
        impute: Impute::Mode,
        unknown: Unknown::Ignore,
        ..CategoricalRules::default()
    };
    let (state, out) = encode(
        rules,
        &[Some("b"), Some("a"), Some("b"), None],
        &[Some("zzz"), None],
    );
    assert_eq!(state.output_columns().len(), 2);
    assert_close(&f32s(&out, "c=a"), &[0.0, 0.0], "a");
    assert_close(&f32s(&out, "c=b"), &[0.0, 1.0], "b");
}

#[test]
fn categorical_sentinels_and_numbers_compared_as_text() {
    let rules = CategoricalRules {
        sentinels: vec!["?".into()],
        ..CategoricalRules::default()
    };
    let (_, out) = encode(rules, &[Some("a"), Some("?")], &[Some("?"), Some("a")]);
    assert_eq!(u32s(&out, "c"), [Some(MISSING_CODE), Some(2)]);

    // A numeric column declared categorical: its values are categories.
    let mut recipe = Recipe::new(vec![("z".into(), FeatureKind::Numeric)]);
    recipe.columns.insert(
        "z".into(),
        ColumnOverride {
            kind: Some(FeatureKind::Categorical),
            ..Default::default()
        },
    );
    let state = fit(
        frame(vec![num("z", &some(&[10.0, 20.0, 10.0]))]).lazy(),
        &recipe,
    )
    .unwrap();
    let out = transform(frame(vec![num("z", &some(&[20.0, 30.0]))]).lazy(), &state)
        .unwrap()
        .collect()
        .unwrap();
    assert_eq!(u32s(&out, "z"), [Some(3), Some(UNSEEN_CODE)]);
}

/// A train/val/test frame; `shift` changes only the val and test values (numbers and categories).
fn three_splits(shift: f64) -> DataFrame {
    let splits = [
        "train", "train", "train", "train", "val", "val", "test", "test",
    ];
    let xs: Vec<Option<f64>> = splits
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if *s == "train" {
                Some(i as f64)
            } else {
                Some(1e6 * shift + i as f64)
            }
        })
        .collect();
    let cs: Vec<Option<String>> = splits
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Some(if *s == "train" {
                format!("t{}", i % 2)
            } else {
                format!("v{shift}")
            })
        })
        .collect();
    frame(vec![
        split(&splits),
        num("x", &xs),
        Column::new("c".into(), cs),
    ])
}

fn full_recipe() -> Recipe {
    let mut recipe = Recipe::new(vec![
        ("x".into(), FeatureKind::Numeric),
        ("c".into(), FeatureKind::Categorical),
    ]);
    recipe.numeric.sentinels = vec![-999.0];
    recipe.categorical.impute = Impute::Mode;
    recipe
}

#[test]
fn changing_val_and_test_never_changes_the_fitted_state() {
    let a = fit(train_of(&three_splits(0.0)), &full_recipe())
        .unwrap()
        .to_json()
        .unwrap();
    for shift in [1.0, -3.0, 1e9] {
        let b = fit(train_of(&three_splits(shift)), &full_recipe())
            .unwrap()
            .to_json()
            .unwrap();
        assert_eq!(a, b, "shift {shift}");
    }
    // And the state really depends on train: changing a train value changes it.
    let mut df = three_splits(0.0);
    df.replace(
        "x",
        num(
            "x",
            &[
                Some(50.0),
                Some(1.0),
                Some(2.0),
                Some(3.0),
                Some(4.0),
                Some(5.0),
                Some(6.0),
                Some(7.0),
            ],
        ),
    )
    .unwrap();
    assert_ne!(
        a,
        fit(train_of(&df), &full_recipe())
            .unwrap()
            .to_json()
            .unwrap()
    );
}

#[test]
fn fit_and_transform_are_deterministic_and_state_round_trips() {
    let df = three_splits(1.0);
    let s1 = fit(train_of(&df), &full_recipe()).unwrap();
    let s2 = fit(train_of(&df), &full_recipe()).unwrap();
    assert_eq!(s1.to_json().unwrap(), s2.to_json().unwrap());
    let o1 = transform(df.clone().lazy(), &s1)
        .unwrap()
        .collect()
        .unwrap();
    let o2 = transform(
        df.lazy(),
        &TabularState::from_json(&s1.to_json().unwrap()).unwrap(),
    )
    .unwrap()
    .collect()
    .unwrap();
    assert!(o1.equals_missing(&o2));
    let wrong = s1
        .to_json()
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    assert!(
        TabularState::from_json(&wrong)
            .unwrap_err()
            .to_string()
            .contains("version 99")
    );
}

fn all_finite(df: &DataFrame) -> bool {
    df.columns()
        .iter()
        .filter(|c| c.dtype() == &DataType::Float32)
        .all(|c| {
            c.f32()
                .unwrap()
                .iter()
                .all(|v| v.is_some_and(f32::is_finite))
        })
}

#[test]
fn all_null_and_constant_columns_fall_back_to_finite_outputs_with_warnings() {
    for scale in [Scale::Zscore, Scale::Minmax, Scale::Robust] {
        for impute in [Impute::Mean, Impute::Median, Impute::Mode] {
            let rules = NumericRules {
                impute,
                scale,
                outliers: Outliers::default(),
                ..NumericRules::default()
            };
            let mut recipe = Recipe::new(vec![
                ("empty".into(), FeatureKind::Numeric),
                ("flat".into(), FeatureKind::Numeric),
            ]);
            recipe.numeric = rules;
            let train = frame(vec![
                num("empty", &[None, None, None]),
                num("flat", &some(&[5.0, 5.0, 5.0])),
            ]);
            let state = fit(train.lazy(), &recipe).unwrap();
            let empty = numeric_state(&state, "empty");
            assert_eq!(
                (empty.fill, empty.center, empty.scale_by),
                (0.0, 0.0, 1.0),
                "{scale:?} {impute:?}"
            );
            assert!(
                empty
                    .warnings
                    .iter()
                    .any(|w| w.contains("all 3 train values are missing")),
                "{:?}",
                empty.warnings
            );
            let flat = numeric_state(&state, "flat");
            assert_eq!(flat.scale_by, 1.0);
            assert!(
                flat.outliers.is_none() && flat.warnings.iter().any(|w| w.contains("zero spread")),
                "{:?}",
                flat.warnings
            );
            let apply = frame(vec![
                num("empty", &[Some(1.0), None]),
                num("flat", &[Some(5.0), Some(1e300)]),
            ]);
            let out = transform(apply.lazy(), &state).unwrap().collect().unwrap();
            assert!(all_finite(&out), "{scale:?} {impute:?}: {out:?}");
            assert_close(
                &f32s(&out, "flat")[..1],
                &[0.0],
                "constant column centers to 0",
            );
        }
    }
    // A column of polars' Null type (no values at all) works as either kind.
    let recipe = Recipe::new(vec![
        ("n".into(), FeatureKind::Numeric),
        ("m".into(), FeatureKind::Categorical),
    ]);
    let nulls = frame(vec![
        Column::full_null("n".into(), 2, &DataType::Null),
        Column::full_null("m".into(), 2, &DataType::Null),
    ]);
    let state = fit(nulls.clone().lazy(), &recipe).unwrap();
    let out = transform(nulls.lazy(), &state).unwrap().collect().unwrap();
    assert!(all_finite(&out));
    assert_eq!(u32s(&out, "m"), [Some(MISSING_CODE), Some(MISSING_CODE)]);

    // An all-null categorical column: everything present is unseen, missing stays missing.
    let (state, out) = encode(
        CategoricalRules::default(),
        &[None, None],
        &[Some("a"), None],
    );
    assert_eq!(u32s(&out, "c"), [Some(UNSEEN_CODE), Some(MISSING_CODE)]);
    assert!(!state.columns[0].warnings().is_empty());
}

#[test]
fn bad_input_gets_clear_errors() {
    // A numeric column holding text.
    let df = frame(vec![split(&["train"]), cat("device", &[Some("dev_a")])]);
    let recipe = Recipe::new(vec![("device".into(), FeatureKind::Numeric)]);
    let err = fit(train_of(&df), &recipe).unwrap_err();
    assert!(matches!(err, Error::NotNumeric { .. }), "{err}");
    assert!(
        err.to_string().contains("\"device\"") && err.to_string().contains("str"),
        "{err}"
    );

    // An override naming a column that does not exist lists the features.
    let mut recipe = Recipe::new(vec![
        ("x".into(), FeatureKind::Numeric),
        ("c".into(), FeatureKind::Categorical),
    ]);
    recipe
        .columns
        .insert("batery".into(), ColumnOverride::default());
    let err = recipe.validate().unwrap_err().to_string();
    assert!(
        err.contains("columns.batery") && err.contains("x, c"),
        "{err}"
    );

    // A feature missing from the frame lists the frame's columns.
    let err = fit(
        train_of(&df),
        &Recipe::new(vec![("x".into(), FeatureKind::Numeric)]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"x\"") && err.contains("split, device"),
        "{err}"
    );

    // An empty train split.
    let df = frame(vec![split(&["val", "test"]), num("x", &some(&[1.0, 2.0]))]);
    let err = fit(
        train_of(&df),
        &Recipe::new(vec![("x".into(), FeatureKind::Numeric)]),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::EmptyTrain(_)) && err.to_string().contains("train split is empty"),
        "{err}"
    );

    // Drop rules that remove every train row.
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.numeric.outliers = Outliers {
        rule: OutlierRule::Zscore,
        k: Some(0.1),
        action: OutlierAction::Drop,
    };
    let err = fit(frame(vec![num("x", &some(&[0.0, 10.0]))]).lazy(), &recipe).unwrap_err();
    assert!(
        err.to_string().contains("removed all 2 train rows"),
        "{err}"
    );

    // Kind-specific settings on the wrong kind, and out-of-range values.
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.columns.insert(
        "x".into(),
        ColumnOverride {
            encode: Some(Encode::OneHot),
            ..Default::default()
        },
    );
    assert!(
        recipe
            .validate()
            .unwrap_err()
            .to_string()
            .contains("columns.x.encode")
    );
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.numeric.impute = Impute::Missing;
    assert!(
        recipe
            .validate()
            .unwrap_err()
            .to_string()
            .contains("numeric.impute")
    );
    let mut recipe = Recipe::new(vec![("c".into(), FeatureKind::Categorical)]);
    recipe.categorical.impute = Impute::Median;
    assert!(
        recipe
            .validate()
            .unwrap_err()
            .to_string()
            .contains("categorical.impute")
    );
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.numeric.outliers.k = Some(0.0);
    assert!(
        recipe
            .validate()
            .unwrap_err()
            .to_string()
            .contains("numeric.outliers.k")
    );
    let mut recipe = Recipe::new(vec![("x".into(), FeatureKind::Numeric)]);
    recipe.columns.insert(
        "x".into(),
        ColumnOverride {
            fill_value: Some(Value::Text("a".into())),
            ..Default::default()
        },
    );
    assert!(
        recipe
            .validate()
            .unwrap_err()
            .to_string()
            .contains("columns.x.fill_value")
    );

    // Output names must be unique.
    let recipe = Recipe::new(vec![
        ("a".into(), FeatureKind::Numeric),
        ("a__missing".into(), FeatureKind::Numeric),
    ]);
    let df = frame(vec![
        num("a", &some(&[1.0])),
        num("a__missing", &some(&[1.0])),
    ]);
    assert!(
        fit(df.lazy(), &recipe)
            .unwrap_err()
            .to_string()
            .contains("\"a__missing\"")
    );

    // Transform on data whose feature became text.
    let state = fit(
        frame(vec![num("x", &some(&[1.0, 2.0]))]).lazy(),
        &Recipe::new(vec![("x".into(), FeatureKind::Numeric)]),
    )
    .unwrap();
    let Err(err) = transform(frame(vec![cat("x", &[Some("1")])]).lazy(), &state) else {
        panic!("text accepted as numbers")
    };
    assert!(matches!(err, Error::NotNumeric { .. }), "{err}");
}

#[test]
fn quality_report_counts_per_split() {
    let splits = ["train", "train", "train", "train", "train", "val", "val"];
    let xs = [
        Some(1.0),
        Some(2.0),
        Some(-999.0),
        None,
        Some(3.0),
        Some(1000.0),
        None,
    ];
    let cs = [
        Some("a"),
        Some("b"),
        None,
        Some("a"),
        Some("b"),
        Some("new"),
        None,
    ];
    let df = frame(vec![split(&splits), num("x", &xs), cat("c", &cs)]);
    let mut recipe = Recipe::new(vec![
        ("x".into(), FeatureKind::Numeric),
        ("c".into(), FeatureKind::Categorical),
    ]);
    recipe.numeric.sentinels = vec![-999.0];
    let state = fit(train_of(&df), &recipe).unwrap();
    let report = quality(df.lazy(), &state, Some("split")).unwrap();
    let row = |column: &str, split: &str| {
        report
            .rows
            .iter()
            .find(|r| r.column == column && r.split == split)
            .unwrap()
            .clone()
    };
    let (xt, xv) = (row("x", "train"), row("x", "val"));
    assert_eq!(
        (
            xt.rows,
            xt.nulls_before,
            xt.sentinels,
            xt.imputed,
            xt.outliers,
            xt.nulls_after
        ),
        (5, 1, 1, 2, 0, 0)
    );
    assert_eq!(
        (
            xv.rows,
            xv.nulls_before,
            xv.outliers,
            xv.clipped,
            xv.imputed
        ),
        (2, 1, 1, 1, 1)
    );
    assert_eq!(xt.before.unwrap().median, Some(2.0));
    let (ct, cv) = (row("c", "train"), row("c", "val"));
    assert_eq!(
        (ct.nulls_before, ct.unseen, ct.nulls_after, ct.distinct),
        (1, 0, 1, Some(2))
    );
    assert_eq!((cv.nulls_before, cv.unseen, cv.nulls_after), (1, 1, 1));
    assert_eq!(
        report
            .rows
            .iter()
            .map(|r| r.split.as_str())
            .collect::<Vec<_>>(),
        ["train", "val", "train", "val"]
    );
    let batch = report.to_record_batch().unwrap();
    assert_eq!(batch.num_rows(), 4);
    let table = report.to_string();
    assert!(
        table.lines().count() == 3 && table.contains("sentinel"),
        "{table}"
    );
}

#[test]
fn a_constant_fill_outside_the_outlier_bounds_is_not_clipped() {
    // Bounds [-3.5, 14.5] (see above); the fill 1000 is a user constant, applied after clipping.
    let rules = NumericRules {
        impute: Impute::Constant,
        fill_value: 1000.0,
        outliers: Outliers {
            rule: OutlierRule::Iqr,
            k: Some(1.5),
            action: OutlierAction::Clip,
        },
        ..plain()
    };
    let train = some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 100.0]);
    check_numeric(&train, rules, &[None, Some(100.0)], &[1000.0, 14.5]);
}

#[test]
fn boolean_flags_keep_the_layout_with_one_bit_columns() {
    let mut recipe = full_recipe();
    recipe.categorical.encode = Encode::OneHot;
    recipe.flags = FlagType::Boolean;
    let df = three_splits(0.0);
    let state = fit(train_of(&df), &recipe).unwrap();
    let out = transform(df.lazy(), &state).unwrap().collect().unwrap();
    for (name, kind) in state.output_columns() {
        let dtype = out.column(&name).unwrap().dtype().clone();
        match kind {
            OutputType::Float32 => assert_eq!(dtype, DataType::Float32, "{name}"),
            OutputType::Boolean => assert_eq!(dtype, DataType::Boolean, "{name}"),
            OutputType::UInt32 => assert_eq!(dtype, DataType::UInt32, "{name}"),
        }
    }
    let hot: Vec<Option<bool>> = out.column("c=t0").unwrap().bool().unwrap().iter().collect();
    assert_eq!(
        hot,
        [
            Some(true),
            Some(false),
            Some(true),
            Some(false),
            Some(false),
            Some(false),
            Some(false),
            Some(false)
        ]
    );
    assert_eq!(
        out.column("x__missing").unwrap().dtype(),
        &DataType::Boolean
    );
}
