//! What eval derives from the data instead of reading it from params: the classical baselines' question
//! words (data without a `qtype` column), which question types need which modality, and the check that a
//! `cross_modal` entry names a question type the data has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use mmrl_artifact::sample::Split;
use mmrl_eval::EvalConfig;
use mmrl_eval::baselines::{Baselines, ClassicalSettings};
use mmrl_eval::metrics::Scored;
use mmrl_eval::needs::{Rule, measure};
use mmrl_model::data::{Dataset, InputPaths};

fn settings(question_words: usize) -> Option<ClassicalSettings> {
    Some(ClassicalSettings {
        pool: 2,
        logistic_alpha: 0.1,
        logistic_max_iterations: 100,
        tree_max_depth: 6,
        question_words,
    })
}

/// Test exact match of every baseline on `data`, by name.
fn test_scores(data: &Dataset, question_words: usize) -> Vec<(String, f64)> {
    let fitted = Baselines::fit(data, settings(question_words)).unwrap();
    let test = data.split(Split::Test);
    fitted
        .predict(data, &test)
        .into_iter()
        .map(|(name, answers)| {
            let hits = answers
                .iter()
                .zip(&test)
                .filter(|((a, _), i)| *a == data.samples[**i].answer)
                .count();
            (name, hits as f64 / test.len() as f64)
        })
        .collect()
}

#[test]
fn classical_baselines_read_the_question_words_when_the_data_has_no_qtype() {
    // No qtype, no media, no features: the answer is in the question's words alone (three templates with
    // three answers, so the majority answer is right a third of the time).
    let templates = [
        ("what colour is the sky", "blue"),
        ("what colour is fresh grass", "green"),
        ("what colour is the snow", "white"),
    ];
    let rows: Vec<common::PlainRow> = (0..150)
        .map(|i| {
            let (q, a) = templates[i % 3];
            let split = if i % 5 == 4 { "test" } else { "train" };
            (format!("r{i:03}"), split, q.to_owned(), a.to_owned())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let data = Dataset::load(&InputPaths {
        samples: common::write_samples_without_qtype(dir.path(), &rows),
        ..Default::default()
    })
    .unwrap();
    assert!(data.samples.iter().all(|s| s.qtype.is_empty()));

    let with_words = test_scores(&data, 50);
    let score = |all: &[(String, f64)], name: &str| all.iter().find(|(n, _)| n == name).unwrap().1;
    let majority = score(&with_words, "majority");
    assert!((majority - 1.0 / 3.0).abs() < 0.05, "majority {majority}");
    for name in ["logistic", "tree"] {
        let em = score(&with_words, name);
        assert!(em > 0.95, "{name}: {em} with the question's words");
    }
    // Without the words nothing tells the rows apart: the classical models fall back to one answer.
    let without = test_scores(&data, 0);
    for name in ["logistic", "tree"] {
        let em = score(&without, name);
        assert!(em < 0.4, "{name}: {em} without the question's words");
    }
    // The vocabulary comes from train questions only: a word only test rows use is not a feature.
    let fitted = Baselines::fit(&data, settings(50)).unwrap();
    assert!(fitted.features.words.contains(&"sky".to_owned()));
    assert!(fitted.features.names.contains(&"word=grass".to_owned()));
}

/// Rows of one question type: `n` rows, the first `right` of them answered correctly.
fn rows(n: usize, right: usize) -> Vec<Scored> {
    (0..n)
        .map(|i| Scored::new(if i < right { "yes" } else { "no" }, "yes", None))
        .collect()
}

#[test]
fn a_question_type_needs_the_modalities_whose_masking_costs_it() {
    let rule = Rule {
        threshold: 0.05,
        samples: 500,
        level: 0.95,
        seed: 3,
    };
    // Per type: (rows, ours right, right without image, right without audio, expected label).
    let cases = [
        ("image_q", 40, 38, 10, 38, "image"),
        ("audio_q", 40, 36, 36, 12, "audio"),
        ("both_q", 40, 36, 20, 18, "image + audio"),
        ("question_q", 40, 30, 30, 30, "none"),
        // A 2-point drop is below the threshold.
        ("small_q", 50, 40, 39, 40, "none"),
        // A 0.5 drop on two rows: its interval reaches zero.
        ("few_q", 2, 1, 0, 1, "none"),
    ];
    let (mut qtypes, mut ours, mut no_image, mut no_audio) = (vec![], vec![], vec![], vec![]);
    for (q, n, o, i, a, _) in cases {
        qtypes.extend(std::iter::repeat_n(q, n));
        ours.extend(rows(n, o));
        no_image.extend(rows(n, i));
        no_audio.extend(rows(n, a));
    }
    let needs = measure(
        &qtypes,
        &ours,
        &[("image", no_image), ("audio", no_audio)],
        rule,
    );
    for (q, n, o, i, _, label) in cases {
        let got = &needs[q];
        assert_eq!(got.label(), label, "{q}: {got:?}");
        assert_eq!(got.samples, n, "{q}");
        assert_eq!(got.is_cross_modal(), label.contains('+'), "{q}");
        let cost = got.costs["image"];
        assert!(
            (cost.drop - (o - i) as f64 / n as f64).abs() < 1e-12,
            "{q}: {cost:?}"
        );
        assert!(cost.ci.lo <= cost.drop && cost.drop <= cost.ci.hi, "{q}");
    }
    assert!(needs["few_q"].costs["image"].ci.lo <= 0.0);
    // The same inputs and seed: the same intervals.
    let again = measure(
        &qtypes,
        &ours,
        &[
            ("image", {
                let mut v = vec![];
                for (_, n, _, i, _, _) in cases {
                    v.extend(rows(n, i));
                }
                v
            }),
            ("audio", {
                let mut v = vec![];
                for (_, n, _, _, a, _) in cases {
                    v.extend(rows(n, a));
                }
                v
            }),
        ],
        rule,
    );
    assert_eq!(again, needs);
}

#[test]
fn a_cross_modal_entry_the_data_lacks_is_an_error_listing_its_question_types() {
    let have = ["colour".to_owned(), "level".to_owned()];
    let check = |listed: Option<Vec<&str>>, have: &[String], needles: &[&str]| {
        let config = EvalConfig {
            cross_modal: listed.map(|l| l.into_iter().map(str::to_owned).collect()),
            ..Default::default()
        };
        config.validate().unwrap();
        match config.check_against(have) {
            Ok(()) => assert!(needles.is_empty(), "accepted, expected {needles:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(!needles.is_empty(), "refused: {msg}");
                for n in needles {
                    assert!(msg.contains(n), "{msg} lacks {n:?}");
                }
            }
        }
    };
    check(None, &have, &[]);
    check(Some(vec![]), &have, &[]);
    check(Some(vec!["level"]), &have, &[]);
    check(
        Some(vec!["level", "digit_and_count"]),
        &have,
        &[
            "cross_modal",
            "\"digit_and_count\"",
            "\"colour\", \"level\"",
        ],
    );
    // Data without question types says so.
    check(
        Some(vec!["both"]),
        &[String::new()],
        &["\"both\"", "no qtype column"],
    );
    // And a blank entry is refused before any data is read.
    let blank = EvalConfig {
        cross_modal: Some(vec![" ".into()]),
        ..Default::default()
    };
    assert!(
        blank
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cross_modal")
    );
}
