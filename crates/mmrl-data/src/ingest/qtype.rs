//! Question types derived from the question text when the data has no `qtype` column.
//!
//! The finest rule that gives at most `max_derived_qtypes` distinct types wins:
//! 1. `template`: the question lowercased, every number (digits, with a decimal part if any) replaced by `#`,
//!    whitespace collapsed, trailing `?`, `.`, `!` dropped: "What is 3 + 4?" becomes "what is # + #".
//! 2. `first 3 words`, `first 2 words`, `first word` of that template.
//! 3. `first word, rest other`: the first word, the `max - 1` most frequent kept and the others `other`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// How the question types were obtained, for `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DerivedQtypes {
    /// The rule that was applied, in words.
    pub rule: String,
    /// Each derived type and its number of accepted rows, most rows first (ties by name).
    pub templates: Vec<TemplateCount>,
}

/// One derived question type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateCount {
    /// The type, as written to the `qtype` column.
    pub qtype: String,
    /// Accepted rows with it.
    pub rows: usize,
}

/// The finest template of a question (rule 1).
pub fn template(question: &str) -> String {
    let lower = question.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut out = String::with_capacity(lower.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (matches!(chars[i], '.' | ',')
                        && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            out.push('#');
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    let collapsed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.trim_end_matches(['?', '.', '!', ' ']).to_owned()
}

fn first_words(template: &str, n: usize) -> String {
    template.split(' ').take(n).collect::<Vec<_>>().join(" ")
}

/// Derives one question type per question with the finest rule that gives at most `max` types.
pub fn derive(questions: &[&str], max: usize) -> (Vec<String>, DerivedQtypes) {
    let templates: Vec<String> = questions.iter().map(|q| template(q)).collect();
    let levels: [(&str, Option<usize>); 4] = [
        ("template", None),
        ("first 3 words", Some(3)),
        ("first 2 words", Some(2)),
        ("first word", Some(1)),
    ];
    for (name, words) in levels {
        let types: Vec<String> = match words {
            None => templates.clone(),
            Some(n) => templates.iter().map(|t| first_words(t, n)).collect(),
        };
        let distinct = types.iter().collect::<std::collections::HashSet<_>>().len();
        if distinct <= max {
            let report = report(&types, describe(name, max));
            return (types, report);
        }
    }
    let first: Vec<String> = templates.iter().map(|t| first_words(t, 1)).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &first {
        *counts.entry(t).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let kept: std::collections::HashSet<&str> = ranked
        .iter()
        .take(max.saturating_sub(1))
        .map(|(t, _)| *t)
        .collect();
    let types: Vec<String> = first
        .iter()
        .map(|t| {
            if kept.contains(t.as_str()) {
                t.clone()
            } else {
                "other".to_owned()
            }
        })
        .collect();
    let report = report(&types, describe("first word, rest other", max));
    (types, report)
}

fn describe(level: &str, max: usize) -> String {
    format!(
        "{level}: no qtype column, so each question's type is derived from its text (lowercased, numbers as #, \
         trailing ?.! dropped), coarsened to its first words until at most max_derived_qtypes = {max} types remain"
    )
}

fn report(types: &[String], rule: String) -> DerivedQtypes {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in types {
        *counts.entry(t).or_default() += 1;
    }
    let mut templates: Vec<TemplateCount> = counts
        .into_iter()
        .map(|(qtype, rows)| TemplateCount {
            qtype: qtype.to_owned(),
            rows,
        })
        .collect();
    templates.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.qtype.cmp(&b.qtype)));
    DerivedQtypes { rule, templates }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_hide_numbers_case_and_punctuation() {
        let cases = [
            ("What is 3 + 4?", "what is # + #"),
            ("what is 12.5 plus 0,75 ?", "what is # plus #"),
            (
                "  Is the  SPOKEN digit larger than 7?! ",
                "is the spoken digit larger than #",
            ),
            ("Version 2.x?", "version #.x"),
            ("Pick 1, 2 or 3.", "pick #, # or #"),
            ("", ""),
        ];
        for (question, expected) in cases {
            assert_eq!(template(question), expected, "{question:?}");
        }
    }

    fn check(questions: &[&str], max: usize, types: &[&str], rule_starts: &str) {
        let (got, report) = derive(questions, max);
        assert_eq!(got, types);
        assert!(report.rule.starts_with(rule_starts), "{}", report.rule);
        assert_eq!(
            report.templates.iter().map(|t| t.rows).sum::<usize>(),
            questions.len()
        );
    }

    #[test]
    fn coarsens_until_few_enough_types() {
        let qs = [
            "What is 1 + 2?",
            "What is 5 + 9?",
            "What color is the square?",
            "What color is the circle?",
            "Is it loud?",
        ];
        check(
            &qs,
            10,
            &[
                "what is # + #",
                "what is # + #",
                "what color is the square",
                "what color is the circle",
                "is it loud",
            ],
            "template",
        );
        check(
            &qs,
            3,
            &[
                "what is #",
                "what is #",
                "what color is",
                "what color is",
                "is it loud",
            ],
            "first 3 words",
        );
        check(
            &qs,
            2,
            &["what", "what", "what", "what", "is"],
            "first word:",
        );
        check(
            &["Why a", "How b", "How c", "Who d"],
            2,
            &["other", "how", "how", "other"],
            "first word, rest other",
        );
    }

    #[test]
    fn report_counts_most_rows_first() {
        let (_, report) = derive(&["b 1", "a 2", "b 3"], 5);
        let got: Vec<(&str, usize)> = report
            .templates
            .iter()
            .map(|t| (t.qtype.as_str(), t.rows))
            .collect();
        assert_eq!(got, [("b #", 2), ("a #", 1)]);
    }
}
