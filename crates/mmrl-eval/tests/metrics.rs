//! Every metric pinned to scikit-learn / numpy on shared fixtures (`fixtures/sklearn_metrics.json`, made by
//! `fixtures/sklearn_metrics.py`), plus bootstrap determinism.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mmrl_eval::bootstrap::{bootstrap_ci, derive_seed, paired_bootstrap, quantile};
use mmrl_eval::metrics::{
    Average, AverageF1, ClassReport, ExactMatch, Metric, Scored, abstention, calibration,
    confusion_matrix, evaluate, mae, mean_token_f1, risk_coverage, standard_metrics,
};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixtures() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sklearn_metrics.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL,
        "{name}: got {got}, sklearn {want}"
    );
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rows(f: &Value) -> Vec<Scored> {
    let a = f["answers"].as_array().unwrap();
    let r = f["references"].as_array().unwrap();
    let c = floats(&f["confidences"]);
    a.iter()
        .zip(r)
        .zip(c)
        .map(|((a, r), c)| Scored::new(a.as_str().unwrap(), r.as_str().unwrap(), Some(c)))
        .collect()
}

/// Checks one fixture against every expected figure.
fn check(f: &Value, bins: usize, abstain: &str) {
    let name = f["name"].as_str().unwrap();
    let rows = rows(f);
    close(
        &format!("{name} exact_match"),
        ExactMatch.compute(&rows).unwrap(),
        f["exact_match"].as_f64().unwrap(),
    );
    let report = ClassReport::new(&rows);
    let labels: Vec<String> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(report.labels, labels, "{name}: labels");
    for (k, key) in ["precision", "recall", "f1"].iter().enumerate() {
        for (i, want) in floats(&f[key]).into_iter().enumerate() {
            let c = &report.per_class[i];
            let got = [c.precision, c.recall, c.f1][k];
            close(&format!("{name} {key}[{}]", labels[i]), got, want);
        }
    }
    let support: Vec<u64> = f["support"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        report
            .per_class
            .iter()
            .map(|c| c.support)
            .collect::<Vec<_>>(),
        support,
        "{name}: support"
    );
    for (avg, got, metric) in [
        ("macro", report.macro_avg, Average::Macro),
        ("micro", report.micro_avg, Average::Micro),
        ("weighted", report.weighted_avg, Average::Weighted),
    ] {
        let want = &f["average"][avg];
        close(
            &format!("{name} {avg} precision"),
            got.precision,
            want["precision"].as_f64().unwrap(),
        );
        close(
            &format!("{name} {avg} recall"),
            got.recall,
            want["recall"].as_f64().unwrap(),
        );
        close(
            &format!("{name} {avg} f1"),
            got.f1,
            want["f1"].as_f64().unwrap(),
        );
        close(
            &format!("{name} {avg} f1 metric"),
            AverageF1(metric).compute(&rows).unwrap(),
            want["f1"].as_f64().unwrap(),
        );
    }
    let cm: Vec<Vec<u64>> = serde_json::from_value(f["confusion"].clone()).unwrap();
    assert_eq!(confusion_matrix(&rows, &labels), cm, "{name}: confusion");
    close(
        &format!("{name} token_f1"),
        mean_token_f1(&rows),
        f["token_f1"].as_f64().unwrap(),
    );
    match (mae(&rows), f["mae"].as_f64()) {
        (Some(m), Some(want)) => {
            close(&format!("{name} mae"), m.mae, want);
            assert_eq!(
                m.values as u64,
                f["mae_values"].as_u64().unwrap(),
                "{name}: mae values"
            );
            assert_eq!(
                m.skipped_rows as u64,
                f["mae_skipped_rows"].as_u64().unwrap(),
                "{name}: mae skipped"
            );
        }
        (None, None) => {}
        (got, want) => panic!("{name}: mae {got:?} vs {want:?}"),
    }
    let cal = calibration(&rows, bins).unwrap();
    close(&format!("{name} ece"), cal.ece, f["ece"].as_f64().unwrap());
    let nonempty: Vec<_> = cal.bins.iter().filter(|b| b.count > 0).collect();
    let (pt, pp) = (
        floats(&f["calibration_prob_true"]),
        floats(&f["calibration_prob_pred"]),
    );
    assert_eq!(nonempty.len(), pt.len(), "{name}: non-empty bins");
    for (i, b) in nonempty.iter().enumerate() {
        close(&format!("{name} prob_true[{i}]"), b.accuracy, pt[i]);
        close(&format!("{name} prob_pred[{i}]"), b.confidence, pp[i]);
        assert_eq!(
            b.count,
            f["calibration_counts"][i].as_u64().unwrap(),
            "{name}: bin {i} count"
        );
    }
    let ab = abstention(&rows, abstain);
    close(
        &format!("{name} abstention"),
        ab.rate,
        f["abstention_rate"].as_f64().unwrap(),
    );
    close(
        &format!("{name} selective risk"),
        ab.selective_risk,
        f["selective_risk"].as_f64().unwrap(),
    );
    let rc = risk_coverage(&rows).unwrap();
    let want = f["risk_coverage"].as_array().unwrap();
    assert_eq!(rc.points.len(), want.len(), "{name}: risk-coverage points");
    for (p, w) in rc.points.iter().zip(want) {
        close(
            &format!("{name} rc threshold"),
            p.threshold,
            w["threshold"].as_f64().unwrap(),
        );
        close(
            &format!("{name} rc coverage"),
            p.coverage,
            w["coverage"].as_f64().unwrap(),
        );
        close(
            &format!("{name} rc risk"),
            p.risk,
            w["risk"].as_f64().unwrap(),
        );
    }
    close(
        &format!("{name} aurc"),
        rc.aurc,
        f["aurc"].as_f64().unwrap(),
    );
    // The Metric trait gives the same numbers as the functions.
    let all = evaluate(&rows, &standard_metrics(bins, abstain));
    close(
        &format!("{name} trait ece"),
        all["ece"].unwrap(),
        f["ece"].as_f64().unwrap(),
    );
    close(
        &format!("{name} trait aurc"),
        all["aurc"].unwrap(),
        f["aurc"].as_f64().unwrap(),
    );
    close(
        &format!("{name} trait token_f1"),
        all["token_f1"].unwrap(),
        f["token_f1"].as_f64().unwrap(),
    );
}

#[test]
fn every_metric_matches_scikit_learn_on_every_fixture() {
    let fx = fixtures();
    assert!(
        fx["sklearn_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let bins = fx["ece_bins"].as_u64().unwrap() as usize;
    let abstain = fx["abstain"].as_str().unwrap();
    let list = fx["fixtures"].as_array().unwrap();
    assert!(list.len() >= 3);
    for f in list {
        check(f, bins, abstain);
    }
}

#[test]
fn quantile_matches_numpy_percentile() {
    let fx = fixtures();
    let p = &fx["percentile"];
    let mut values = floats(&p["values"]);
    values.sort_by(f64::total_cmp);
    for (q, want) in floats(&p["q"]).into_iter().zip(floats(&p["expected"])) {
        close(
            &format!("percentile {q}"),
            quantile(&values, q / 100.0).unwrap(),
            want,
        );
    }
    assert_eq!(quantile(&[], 0.5), None);
}

#[test]
fn bootstrap_is_deterministic_per_seed_and_brackets_the_estimate() {
    let fx = fixtures();
    let rows = rows(&fx["fixtures"][0]);
    let a = bootstrap_ci(&rows, &ExactMatch, 500, 0.95, 11).unwrap();
    let b = bootstrap_ci(&rows, &ExactMatch, 500, 0.95, 11).unwrap();
    let c = bootstrap_ci(&rows, &ExactMatch, 500, 0.95, 12).unwrap();
    assert_eq!(a, b, "same seed, same interval");
    assert_ne!(a, c, "another seed draws other resamples");
    let em = ExactMatch.compute(&rows).unwrap();
    assert!(a.lo < em && em < a.hi, "{a:?} around {em}");
    assert_ne!(derive_seed(1, "x"), derive_seed(1, "y"));
    assert_eq!(bootstrap_ci(&[], &ExactMatch, 10, 0.95, 1), None);
}

#[test]
fn paired_bootstrap_sees_no_difference_between_a_model_and_itself_and_a_clear_one_otherwise() {
    let fx = fixtures();
    let rows = rows(&fx["fixtures"][0]);
    let same = paired_bootstrap(&rows, &rows, &ExactMatch, 300, 0.95, 5).unwrap();
    assert_eq!(same.delta, 0.0);
    assert_eq!(same.p_value, 1.0);
    let perfect: Vec<Scored> = rows
        .iter()
        .map(|r| Scored::new(&r.reference, &r.reference, r.confidence))
        .collect();
    let t = paired_bootstrap(&perfect, &rows, &ExactMatch, 300, 0.95, 5).unwrap();
    close("delta", t.delta, 1.0 - ExactMatch.compute(&rows).unwrap());
    assert!(t.p_value < 0.01, "{t:?}");
    assert!(t.ci.lo > 0.0);
    let again = paired_bootstrap(&perfect, &rows, &ExactMatch, 300, 0.95, 5).unwrap();
    assert_eq!(t, again);
    assert!(paired_bootstrap(&rows, &rows[1..], &ExactMatch, 10, 0.95, 1).is_none());
}

#[test]
fn division_by_zero_follows_the_zero_division_convention() {
    // "b" is never predicted: precision 0/0 -> 0; "c" never a reference: recall 0/0 -> 0.
    let rows = vec![
        Scored::new("a", "a", None),
        Scored::new("a", "b", None),
        Scored::new("c", "a", None),
    ];
    let r = ClassReport::new(&rows);
    assert_eq!(r.labels, ["a", "b", "c"]);
    assert_eq!(r.per_class[1].precision, 0.0);
    assert_eq!(r.per_class[2].recall, 0.0);
    assert_eq!(r.per_class[2].f1, 0.0);
    // No confidences: calibration and risk-coverage are undefined rather than zero.
    assert!(calibration(&rows, 15).is_none());
    assert!(risk_coverage(&rows).is_none());
    assert!(mae(&rows).is_none());
}

#[test]
fn non_finite_confidences_are_ignored_by_calibration_and_risk_coverage() {
    // Before the fix a NaN confidence never advanced risk-coverage's grouping loop and gave a NaN ECE;
    // infinities were clamped into the end bins. Each is now left out, as if the row had no confidence.
    let fx = fixtures();
    let bins = fx["ece_bins"].as_u64().unwrap() as usize;
    let base = rows(&fx["fixtures"][0]);
    let want_cal = calibration(&base, bins).unwrap();
    let want_rc = risk_coverage(&base).unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut with_bad = base.clone();
        with_bad.insert(0, Scored::new("yes", "yes", Some(bad)));
        with_bad.push(Scored::new("no", "yes", Some(bad)));
        let cal = calibration(&with_bad, bins).unwrap();
        assert!(cal.ece.is_finite(), "{bad}: ECE {}", cal.ece);
        assert_eq!(cal, want_cal, "{bad}: calibration");
        assert_eq!(
            risk_coverage(&with_bad).unwrap(),
            want_rc,
            "{bad}: risk-coverage"
        );
        let only_bad = vec![Scored::new("yes", "yes", Some(bad))];
        assert!(calibration(&only_bad, bins).is_none(), "{bad}");
        assert!(risk_coverage(&only_bad).is_none(), "{bad}");
    }
}
