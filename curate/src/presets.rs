//! The published filters as data: each a list of [`Rule`]s, a SQL condition over the
//! [`Signals`] columns that is true when the document is **kept**, and the reason datatrove 0.10
//! gives when it drops a document for that rule. Rules run in datatrove's order; the first rule a
//! document fails is its drop reason. Thresholds are datatrove 0.10's defaults.
//!
//! | preset | datatrove filters, in this order |
//! | --- | --- |
//! | `gopher_repetition` | `GopherRepetitionFilter()` |
//! | `gopher_quality` | `GopherQualityFilter()` |
//! | `gopher` | both, repetition first (as FineWeb's pipeline runs them) |
//! | `c4` | `C4QualityFilter()` (not `C4BadWordsFilter`) |
//! | `fineweb` | `FineWebQualityFilter()` |
//!
//! What follows datatrove and what does not:
//!
//! - **Words.** The rules read phiforge's words (no punctuation tokens), not spaCy's, in
//!   `gopher_quality` (`hash_to_word_ratio`, `ellipsis_to_word_ratio`, `alpha_words_ratio`),
//!   `gopher_repetition` (n-grams) and `fineweb` (`list_ratio`). datatrove counting every
//!   punctuation mark as a word makes its `gopher_below_alpha_threshold` drop most of Python's
//!   documentation (each `=` of an rST underline, each bracket of a code sample is a non-alphabetic
//!   "word"); phiforge keeps prose that a reader sees as prose. On punctuation-heavy text the
//!   ratios divide by fewer words here, so phiforge drops fewer documents than datatrove as
//!   `gopher_below_alpha_threshold` and more as `gopher_too_many_hashes`,
//!   `gopher_too_many_ellipsis` and `list_ratio` (same numerators, smaller denominators). On
//!   ordinary prose they mostly agree; the n-gram fractions differ a little everywhere, since
//!   datatrove's n-grams include punctuation tokens and spaCy splits contractions (`do n't`).
//! - **C4 decides only.** datatrove's C4 filter also rewrites a kept document: it removes lines
//!   without terminal punctuation, of fewer than 3 words, with a word over 1000 characters,
//!   mentioning javascript or a cookie/terms-of-use phrase, and Wikipedia citation marks. The `c4`
//!   preset keeps or drops the whole document as datatrove would (its `lorem_ipsum`,
//!   `curly_bracket` and `too_few_sentences` drops, judged on the lines datatrove would keep) and
//!   leaves the text unchanged. Its sentence count approximates spaCy's sentencizer (see
//!   [`Signals::c4_sentences`]). The bad-words filter is not part of it.
//! - **Empty documents** (datatrove raises `ZeroDivisionError` in Gopher): every ratio is 0, so
//!   `gopher` drops them as `gopher_short_doc`, `fineweb` as `empty`, `c4` as
//!   `too_few_sentences`.
//!
//! [`crate::sql::Filter::preset`] evaluates a preset with polars, one boolean column per rule.
//!
//! ```
//! use curate::{presets, signals, Filter, RowBatch};
//!
//! let rules = presets::preset("fineweb").expect("a preset");
//! assert_eq!(rules[0].reason, "empty");
//! let fineweb = Filter::preset("fineweb")?;
//! let rows = RowBatch::new(vec![signals::compute("a list\nof short\nlines\nwith no\nend")]);
//! assert_eq!(fineweb.decide(&rows)?, [Some("line_punct_ratio")]);
//! # Ok::<(), curate::Error>(())
//! ```

use serde::Serialize;

#[cfg(doc)]
use crate::signals::Signals;

/// One rule of a preset: the document is kept by it when `condition` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// datatrove's drop reason (`dropped_{reason}` in its stats).
    pub reason: &'static str,
    /// A SQL boolean expression over [`Signals`] columns, true when the document is kept.
    pub condition: &'static str,
}

const fn rule(reason: &'static str, condition: &'static str) -> Rule {
    Rule { reason, condition }
}

/// The names [`preset`] knows.
pub const PRESETS: [&str; 5] = [
    "gopher",
    "gopher_quality",
    "gopher_repetition",
    "c4",
    "fineweb",
];

/// Gopher repetition (the first 13) then Gopher quality (the last 10).
static GOPHER: [Rule; 23] = [
    rule("dup_para_frac", "dup_para_frac <= 0.3"),
    rule("dup_para_char_frac", "dup_para_char_frac <= 0.2"),
    rule("dup_line_frac", "dup_line_frac <= 0.3"),
    rule("dup_line_char_frac", "dup_line_char_frac <= 0.2"),
    rule("top_2_gram", "top_2gram_char_frac <= 0.2"),
    rule("top_3_gram", "top_3gram_char_frac <= 0.18"),
    rule("top_4_gram", "top_4gram_char_frac <= 0.16"),
    rule("duplicated_5_n_grams", "dup_5gram_char_frac <= 0.15"),
    rule("duplicated_6_n_grams", "dup_6gram_char_frac <= 0.14"),
    rule("duplicated_7_n_grams", "dup_7gram_char_frac <= 0.13"),
    rule("duplicated_8_n_grams", "dup_8gram_char_frac <= 0.12"),
    rule("duplicated_9_n_grams", "dup_9gram_char_frac <= 0.11"),
    rule("duplicated_10_n_grams", "dup_10gram_char_frac <= 0.1"),
    rule("gopher_short_doc", "words >= 50"),
    rule("gopher_long_doc", "words <= 100000"),
    rule("gopher_below_avg_threshold", "mean_word_length >= 3"),
    rule("gopher_above_avg_threshold", "mean_word_length <= 10"),
    rule("gopher_too_many_hashes", "hash_to_word_ratio <= 0.1"),
    rule("gopher_too_many_ellipsis", "ellipsis_to_word_ratio <= 0.1"),
    rule("gopher_too_many_bullets", "bullet_lines_ratio <= 0.9"),
    rule(
        "gopher_too_many_end_ellipsis",
        "ellipsis_lines_ratio <= 0.3",
    ),
    rule("gopher_below_alpha_threshold", "alpha_words_ratio >= 0.8"),
    rule("gopher_enough_stop_words", "stop_words >= 2"),
];

/// Where Gopher quality starts in [`GOPHER`].
const GOPHER_QUALITY_START: usize = 13;

static C4: [Rule; 3] = [
    rule("lorem_ipsum", "c4_lorem_ipsum = 0"),
    rule("curly_bracket", "c4_curly_bracket = 0"),
    rule("too_few_sentences", "c4_sentences >= 5"),
];

static FINEWEB: [Rule; 5] = [
    rule("empty", "nonblank_lines > 0"),
    rule("line_punct_ratio", "lines_ending_punct_ratio >= 0.12"),
    rule("short_line_ratio", "short_lines_ratio <= 0.67"),
    rule("char_dup_ratio", "char_dup_ratio <= 0.01"),
    rule("list_ratio", "list_ratio <= 0.3"),
];

/// The rules of the preset called `name` (one of [`PRESETS`]).
pub fn preset(name: &str) -> Option<&'static [Rule]> {
    match name {
        "gopher" => Some(&GOPHER),
        "gopher_repetition" => Some(&GOPHER[..GOPHER_QUALITY_START]),
        "gopher_quality" => Some(&GOPHER[GOPHER_QUALITY_START..]),
        "c4" => Some(&C4),
        "fineweb" => Some(&FINEWEB),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{compute, Signals};
    use crate::sql::{Filter, RowBatch};

    /// A preset evaluated by polars, checking one document at a time.
    struct RuleSet(Filter);

    impl RuleSet {
        fn check(&self, s: &Signals) -> Result<(), &str> {
            let decided = self.0.decide(&RowBatch::new(vec![s.clone()]));
            match decided.unwrap_or_else(|e| panic!("{e}")).as_slice() {
                [None] => Ok(()),
                [Some(reason)] => Err(reason),
                other => panic!("{other:?}"),
            }
        }
    }

    fn compiled(name: &str) -> RuleSet {
        RuleSet(Filter::preset(name).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    #[test]
    fn every_rule_parses_and_reads_only_existing_columns() {
        for name in PRESETS {
            let rules = preset(name).unwrap_or_else(|| panic!("no preset {name}"));
            assert!(!rules.is_empty());
            // Filter::preset checks every column against Signals and every type.
            let filter = Filter::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(filter.rules().count(), rules.len());
            for rule in rules {
                assert!(
                    Filter::with_fields(&[])
                        .and_then(|f| f.and_rule(rule.reason, rule.condition))
                        .is_ok(),
                    "{}",
                    rule.condition
                );
            }
        }
        assert_eq!(
            preset("gopher_quality").map(|r| r[0].reason),
            Some("gopher_short_doc")
        );
        assert_eq!(preset("gopher_repetition").map(<[Rule]>::len), Some(13));
        assert!(preset("dolma").is_none());
    }

    /// One signal at a time just past each threshold: the rule (and only it) drops, with its
    /// reason; just at the threshold it keeps.
    #[test]
    fn thresholds_are_datatroves() {
        let base = Signals {
            words: 200,
            mean_word_length: 5.0,
            alpha_words_ratio: 1.0,
            stop_words: 4,
            nonblank_lines: 10,
            lines_ending_punct_ratio: 1.0,
            c4_sentences: 10,
            ..Signals::default()
        };
        let gopher = compiled("gopher");
        let fineweb = compiled("fineweb");
        let c4 = compiled("c4");
        assert_eq!(gopher.check(&base), Ok(()));
        assert_eq!(fineweb.check(&base), Ok(()));
        assert_eq!(c4.check(&base), Ok(()));
        type Set = fn(&mut Signals, bool);
        let cases: [(&RuleSet, &str, Set); 16] = [
            (&gopher, "gopher_short_doc", |s, past| {
                s.words = if past { 49 } else { 50 }
            }),
            (&gopher, "gopher_long_doc", |s, past| {
                s.words = if past { 100_001 } else { 100_000 }
            }),
            (&gopher, "gopher_below_avg_threshold", |s, p| {
                s.mean_word_length = if p { 2.99 } else { 3.0 }
            }),
            (&gopher, "gopher_above_avg_threshold", |s, p| {
                s.mean_word_length = if p { 10.01 } else { 10.0 }
            }),
            (&gopher, "gopher_too_many_hashes", |s, p| {
                s.hash_to_word_ratio = if p { 0.11 } else { 0.1 }
            }),
            (&gopher, "gopher_below_alpha_threshold", |s, p| {
                s.alpha_words_ratio = if p { 0.79 } else { 0.8 }
            }),
            (&gopher, "gopher_enough_stop_words", |s, p| {
                s.stop_words = if p { 1 } else { 2 }
            }),
            (&gopher, "dup_para_frac", |s, p| {
                s.dup_para_frac = if p { 0.31 } else { 0.3 }
            }),
            (&gopher, "top_3_gram", |s, p| {
                s.top_3gram_char_frac = if p { 0.181 } else { 0.18 }
            }),
            (&gopher, "duplicated_10_n_grams", |s, p| {
                s.dup_10gram_char_frac = if p { 0.101 } else { 0.1 }
            }),
            (&fineweb, "line_punct_ratio", |s, p| {
                s.lines_ending_punct_ratio = if p { 0.119 } else { 0.12 }
            }),
            (&fineweb, "short_line_ratio", |s, p| {
                s.short_lines_ratio = if p { 0.671 } else { 0.67 }
            }),
            (&fineweb, "char_dup_ratio", |s, p| {
                s.char_dup_ratio = if p { 0.0101 } else { 0.01 }
            }),
            (&fineweb, "list_ratio", |s, p| {
                s.list_ratio = if p { 0.301 } else { 0.3 }
            }),
            (&c4, "too_few_sentences", |s, p| {
                s.c4_sentences = if p { 4 } else { 5 }
            }),
            (&c4, "curly_bracket", |s, p| {
                s.c4_curly_bracket = i64::from(p)
            }),
        ];
        for (set, reason, change) in cases {
            let mut s = base.clone();
            change(&mut s, true);
            assert_eq!(set.check(&s), Err(reason));
            change(&mut s, false);
            assert_eq!(set.check(&s), Ok(()), "{reason} at its threshold");
        }
    }

    #[test]
    fn presets_on_real_text() {
        let prose = "The history of the city goes back to the Roman period, when a small fort \
                     was built on the river. Over the following centuries it grew into a market \
                     town with a church, a bridge and a busy harbour. Merchants came from the \
                     north and the south to trade wool, grain and salt. In the nineteenth century \
                     the railway arrived and the population doubled within thirty years, and new \
                     streets of brick houses were laid out to the east of the old walls.";
        let s = compute(prose);
        assert_eq!(compiled("gopher").check(&s), Ok(()));
        assert_eq!(compiled("fineweb").check(&s), Ok(()));
        assert_eq!(compiled("c4").check(&s), Err("too_few_sentences")); // 4 sentences

        // An rST heading and a code sample: datatrove's tokens would make the underline and the
        // brackets non-alphabetic words; phiforge's do not.
        let rst = format!("Lists\n=====\n\n{prose}\n\n    >>> sorted([3, 1, 2])\n    [1, 2, 3]\n");
        let s = compute(&rst);
        assert!(s.alpha_words_ratio > 0.9, "{}", s.alpha_words_ratio);
        assert_eq!(compiled("gopher").check(&s), Ok(()));

        let repeated = "Buy now and save big on all items.\n".repeat(30);
        assert_eq!(
            compiled("gopher").check(&compute(&repeated)),
            Err("dup_line_frac")
        );
        assert_eq!(
            compiled("fineweb").check(&compute(&repeated)),
            Err("char_dup_ratio")
        );
        assert_eq!(
            compiled("gopher").check(&compute("")),
            Err("gopher_short_doc")
        );
        assert_eq!(compiled("fineweb").check(&compute("")), Err("empty"));
        assert_eq!(compiled("c4").check(&compute("")), Err("too_few_sentences"));
    }
}
