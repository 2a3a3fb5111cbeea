//! Word-level vocabularies of questions and answers, fit on the train split only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Padding id in both vocabularies.
pub const PAD: u32 = 0;
/// Unknown word id in both vocabularies.
pub const UNK: u32 = 1;
/// Begin-of-answer id (answer vocabulary only): the first decoder input.
pub const BOS: u32 = 2;
/// End-of-answer id (answer vocabulary only): the last decoder target.
pub const EOS: u32 = 3;

/// The abstention answer: a model that says it is not sure rather than guessing.
pub const UNSURE: &str = "unsure";

/// The answer token between a rationale (intermediate tokens, see [`Vocab::with_separator`]) and the answer. It
/// is never a word of the data: [`words`] strips the angle brackets of anything a user writes.
pub const SEP: &str = "<sep>";

/// Special tokens of the question vocabulary, in id order.
pub const QUESTION_SPECIALS: [&str; 2] = ["<pad>", "<unk>"];
/// Special tokens of the answer vocabulary, in id order.
pub const ANSWER_SPECIALS: [&str; 4] = ["<pad>", "<unk>", "<bos>", "<eos>"];

/// Splits text into lowercase words, dropping punctuation around them.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The question and answer vocabularies (`vocab.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    /// Question words by id; ids 0 and 1 are `<pad>` and `<unk>`.
    pub question: Vec<String>,
    /// Answer tokens by id; ids 0 to 3 are `<pad>`, `<unk>`, `<bos>`, `<eos>`.
    pub answer: Vec<String>,
}

impl Vocab {
    /// Builds both vocabularies from (question, answer) pairs of the train split. Words are ordered by
    /// descending count, then alphabetically, so the ids do not depend on row order.
    pub fn fit<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut q_counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut a_counts: BTreeMap<String, u64> = BTreeMap::new();
        for (q, a) in pairs {
            for w in words(q) {
                *q_counts.entry(w).or_default() += 1;
            }
            for w in words(a) {
                *a_counts.entry(w).or_default() += 1;
            }
        }
        let order = |counts: BTreeMap<String, u64>| {
            let mut v: Vec<(String, u64)> = counts.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.into_iter().map(|(w, _)| w)
        };
        let mut question: Vec<String> = QUESTION_SPECIALS.iter().map(|s| (*s).to_owned()).collect();
        question.extend(order(q_counts));
        let mut answer: Vec<String> = ANSWER_SPECIALS.iter().map(|s| (*s).to_owned()).collect();
        answer.extend(order(a_counts));
        Self { question, answer }
    }

    /// Adds [`SEP`] as the last answer token (a no-op when present): targets may then hold intermediate tokens
    /// before the answer, and decoding keeps what follows the last separator.
    #[must_use]
    pub fn with_separator(mut self) -> Self {
        if self.separator().is_none() {
            self.answer.push(SEP.to_owned());
        }
        self
    }

    /// The id of [`SEP`], when the vocabulary has one.
    pub fn separator(&self) -> Option<u32> {
        self.answer.iter().position(|w| w == SEP).map(|i| i as u32)
    }

    /// A decoder target of at most `max_len` tokens: the rationale's ids, [`SEP`], then the answer's, when all of
    /// it fits; otherwise (or without a rationale, or without a separator in the vocabulary) just the answer.
    pub fn encode_target(&self, rationale: Option<&str>, answer: &str, max_len: usize) -> Vec<u32> {
        let answer = self.encode_answer(answer, max_len);
        if let (Some(r), Some(sep)) = (rationale, self.separator()) {
            let mut ids = self.encode_answer(r, max_len);
            if ids.len() + 1 + answer.len() <= max_len {
                ids.push(sep);
                ids.extend(answer);
                return ids;
            }
        }
        answer
    }

    fn lookup(table: &[String], specials: usize, word: &str) -> u32 {
        // Linear scan over a few dozen words is cheaper than keeping a map in sync with the serialized form.
        table
            .iter()
            .skip(specials)
            .position(|w| w == word)
            .map_or(UNK, |i| (i + specials) as u32)
    }

    /// Question ids, truncated to `max_len` words (at least one id: `<unk>` for an empty question).
    pub fn encode_question(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = words(text)
            .iter()
            .take(max_len)
            .map(|w| Self::lookup(&self.question, QUESTION_SPECIALS.len(), w))
            .collect();
        if ids.is_empty() {
            ids.push(UNK);
        }
        ids
    }

    /// Answer ids without `<bos>`/`<eos>`, truncated to `max_len` tokens.
    pub fn encode_answer(&self, text: &str, max_len: usize) -> Vec<u32> {
        words(text)
            .iter()
            .take(max_len)
            .map(|w| Self::lookup(&self.answer, ANSWER_SPECIALS.len(), w))
            .collect()
    }

    /// The answer text of generated ids (special tokens other than `<unk>` are skipped). Intermediate tokens
    /// up to the last [`SEP`] are not part of the answer. `unsure` is a whole answer: ids that contain the
    /// [`UNSURE`] token (an answer word, or the `<unk>` slot an rl artifact names so) decode to just `unsure`,
    /// whatever greedy decoding emitted around it.
    pub fn decode_answer(&self, ids: &[u32]) -> String {
        let ids = match self.separator() {
            Some(sep) => ids
                .iter()
                .rposition(|&i| i == sep)
                .map_or(ids, |p| &ids[p + 1..]),
            None => ids,
        };
        if ids
            .iter()
            .any(|&i| self.answer.get(i as usize).is_some_and(|w| w == UNSURE))
        {
            return UNSURE.to_owned();
        }
        ids.iter()
            .filter(|&&i| {
                (i == UNK || i as usize >= ANSWER_SPECIALS.len()) && Some(i) != self.separator()
            })
            .map(|&i| self.answer.get(i as usize).map_or("<unk>", String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Normalizes an answer for exact-match comparison: lowercase words joined by single spaces.
pub fn normalize_answer(text: &str) -> String {
    words(text).join(" ")
}

/// SQuAD-style F1 of an answer on whitespace tokens: the multiset overlap's harmonic mean of precision and
/// recall; 1 when both are empty, 0 when exactly one is. rl's token-F1 reward and eval's metric.
pub fn token_f1(answer: &str, reference: &str) -> f64 {
    let a: Vec<&str> = answer.split_whitespace().collect();
    let r: Vec<&str> = reference.split_whitespace().collect();
    if a.is_empty() || r.is_empty() {
        return if a.len() == r.len() { 1.0 } else { 0.0 };
    }
    let mut pool: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &r {
        *pool.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &a {
        if let Some(c) = pool.get_mut(w)
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / a.len() as f64;
    let rc = common as f64 / r.len() as f64;
    2.0 * p * rc / (p + rc)
}

/// The numbers of an answer when every whitespace token is a finite number (`None` otherwise, or when
/// it is empty): rl's numeric reward and eval's MAE.
pub fn numbers(text: &str) -> Option<Vec<f64>> {
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|t| t.parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect::<Option<_>>()?;
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_orders_by_count_then_word_and_maps_unknowns() {
        let v = Vocab::fit([
            ("Is there a circle?", "yes"),
            ("is there a square", "no"),
            ("how many", "1 2"),
        ]);
        assert_eq!(&v.question[2..5], ["a", "is", "there"]);
        assert_eq!(v.encode_question("is there a dragon", 10), [3, 4, 2, UNK]);
        assert_eq!(v.encode_question("", 10), [UNK]);
        assert_eq!(v.encode_question("is is is", 2).len(), 2);
        let ids = v.encode_answer("1 2", 4);
        assert_eq!(v.decode_answer(&ids), "1 2");
        assert_eq!(v.encode_answer("maybe", 4), [UNK]);
        assert_eq!(normalize_answer("  Yes "), "yes");
    }

    #[test]
    fn targets_carry_a_rationale_before_the_separator_and_decoding_drops_it() {
        let v = Vocab::fit([("sum?", "8"), ("", "3 5")]);
        // Without a separator, a rationale is ignored: the target is the answer.
        assert_eq!(
            v.encode_target(Some("3 5"), "8", 4),
            v.encode_answer("8", 4)
        );
        let v = v.with_separator();
        let sep = v.separator().unwrap();
        assert_eq!(v.answer[sep as usize], SEP);
        assert_eq!(v.clone().with_separator(), v, "adding it twice is a no-op");
        let target = v.encode_target(Some("3 5"), "8", 4);
        assert_eq!(target.len(), 4);
        // A rationale that does not fit leaves the answer alone, never a truncated answer.
        assert_eq!(
            v.encode_target(Some("3 5"), "8", 3),
            v.encode_answer("8", 3)
        );
        assert_eq!(target[2], sep);
        assert_eq!(v.decode_answer(&target), "8");
        // Only what follows the last separator is the answer; without one, everything is.
        let (three, eight) = (v.encode_answer("3", 1)[0], v.encode_answer("8", 1)[0]);
        assert_eq!(v.decode_answer(&[three, sep, three, sep, eight]), "8");
        assert_eq!(v.decode_answer(&[three, eight]), "3 8");
        assert_eq!(v.decode_answer(&[three, sep]), "");
        // The separator is no word a user can write.
        assert_eq!(words("<sep>"), ["sep"]);
    }

    #[test]
    fn an_answer_containing_unsure_decodes_to_unsure() {
        let mut v = Vocab::fit([("how many", "7 3"), ("which", "unsure")]);
        let unsure = v.encode_answer("unsure", 1)[0];
        let seven = v.encode_answer("7", 1)[0];
        assert_eq!(v.decode_answer(&[unsure, seven]), "unsure");
        assert_eq!(v.decode_answer(&[seven, unsure]), "unsure");
        assert_eq!(v.decode_answer(&[seven]), "7");
        // Without an `unsure` word, `<unk>` stays `<unk>` and does not swallow the answer.
        let plain = Vocab::fit([("how many", "7 3")]);
        assert_eq!(plain.decode_answer(&[UNK, seven]), "<unk> 7");
        // An rl artifact names the `<unk>` slot `unsure`.
        v.answer[UNK as usize] = UNSURE.to_owned();
        assert_eq!(v.decode_answer(&[seven, UNK, seven]), "unsure");
    }
}
