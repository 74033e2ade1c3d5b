//! Per-document quality signals: one struct of named columns, computed in one pass over the
//! document's lines and words, so that filters (a SQL `where`, or the [`crate::presets`]) can read
//! them without looking at the text again.
//!
//! Definitions follow datatrove 0.10 (`gopher_quality_filter.py`, `gopher_repetition_filter.py`,
//! `c4_filters.py`, `fineweb_quality_filter.py`) except for what a *word* is:
//!
//! - **Words** are phiforge's ([`crate::text::words`]): whitespace-separated tokens with leading
//!   and trailing punctuation stripped, tokens made only of punctuation not counted. datatrove
//!   tokenizes with spaCy, which makes each punctuation mark a token, and uses those tokens as the
//!   denominators of its Gopher ratios (hash and ellipsis per word, alphabetic words) and of
//!   FineWeb's `list_ratio`. So an rST underline of 40 `=` is 40 datatrove words and no phiforge
//!   word; a line of code has far fewer words here. Counting punctuation as words makes datatrove's
//!   `gopher_below_alpha_threshold` drop most technical documentation; phiforge's ratios measure
//!   the words a reader sees.
//! - **Lines.** "Lines" are the text split at `\n`, with a `\r` before the `\n` removed, and no
//!   final empty line after a trailing `\n` (Python's `splitlines` for `\n` and `\r\n` text; its
//!   other separators, `\r` alone, `\v`, `\f`, `\x1c`-`\x1e`, `\x85`, U+2028/9, are not line breaks
//!   here). FineWeb's and Gopher-repetition's line measures use their own splits, said per column.
//! - **Characters** are Unicode scalar values (Python's `len`).
//! - A ratio whose denominator is 0 is 0.0 (datatrove raises `ZeroDivisionError` there).
//!
//! ```
//! let s = curate::signals::compute("The cat sat on the mat. It was happy with that.");
//! assert_eq!(s.words, 11);
//! assert_eq!(s.stop_words, 3); // "the", "with", "that"
//! assert_eq!(s.get("words"), Some(curate::Value::Int(11)));
//! ```

use serde::{Deserialize, Serialize};

use crate::c4::{Outcome, C4};
use crate::repetition::Ngrams;
use crate::text::{
    self, char_len, count_non_overlapping, find_duplicates, hash, is_terminal, ratio, HashSet64,
};

/// The type of a signal column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    /// A 64-bit integer (counts; 0/1 for yes/no signals).
    Int,
    /// A 64-bit float (ratios, means).
    Float,
    /// A string.
    Str,
}

/// One signal's value, borrowed from a [`Signals`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl<'a> From<&'a i64> for Value<'a> {
    fn from(v: &'a i64) -> Self {
        Value::Int(*v)
    }
}
impl<'a> From<&'a f64> for Value<'a> {
    fn from(v: &'a f64) -> Self {
        Value::Float(*v)
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Str(v)
    }
}

macro_rules! column_type {
    (Int) => {
        i64
    };
    (Float) => {
        f64
    };
    (Str) => {
        String
    };
}

/// Declares [`Signals`] once: its fields, [`Signals::columns`], [`Signals::get`] and
/// [`Signals::value_at`] stay in step.
macro_rules! signals {
    ($( $(#[$doc:meta])* $name:ident : $kind:ident, )*) => {
        /// The quality signals of one document. Column names are the field names.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Signals {
            $( $(#[$doc])* pub $name: column_type!($kind), )*
        }

        impl Signals {
            /// Every column's name and type, in field order.
            pub fn columns() -> &'static [(&'static str, ColumnType)] {
                &[ $( (stringify!($name), ColumnType::$kind), )* ]
            }

            /// The value of the column called `name`, if there is one.
            pub fn get(&self, name: &str) -> Option<Value<'_>> {
                match name {
                    $( stringify!($name) => Some(Value::from(&self.$name)), )*
                    _ => None,
                }
            }

            /// The value of the column at `index` in [`Signals::columns`].
            pub fn value_at(&self, index: usize) -> Option<Value<'_>> {
                let mut i = 0usize;
                $(
                    if i == index {
                        return Some(Value::from(&self.$name));
                    }
                    i += 1;
                )*
                let _ = i;
                None
            }
        }
    };
}

signals! {
    /// Number of phiforge words (see the module docs). datatrove's `gopher_short_doc` and
    /// `gopher_long_doc` count spaCy tokens that are not only punctuation: close to this, but
    /// spaCy splits `don't` into `do` and `n't` and `3.11.2,` stays one word here.
    words: Int,
    /// Number of characters of the whole text.
    chars: Int,
    /// Number of lines (see the module docs).
    lines: Int,
    /// Number of lines (the text split at `\n`, as FineWeb splits it) that are not empty or
    /// whitespace only.
    nonblank_lines: Int,
    /// Mean characters per word (0 with no words). Gopher: 3 to 10.
    mean_word_length: Float,
    /// Number of `#` in the text per word. Gopher: at most 0.1 (datatrove divides by all spaCy
    /// tokens, punctuation included).
    hash_to_word_ratio: Float,
    /// Number of `...` (non-overlapping) and `…` in the text per word. Gopher: at most 0.1.
    ellipsis_to_word_ratio: Float,
    /// `hash_to_word_ratio + ellipsis_to_word_ratio`: Gopher's "symbol-to-word ratio" as one
    /// number (its rule applies 0.1 to each symbol separately).
    symbol_to_word_ratio: Float,
    /// Fraction of words with at least one alphabetic character. Gopher: at least 0.8
    /// (datatrove divides by all spaCy tokens, so each punctuation mark lowers it).
    alpha_words_ratio: Float,
    /// Number of *distinct* Gopher stop words (`the`, `be`, `to`, `of`, `and`, `that`, `have`,
    /// `with`, matched case-sensitively, as datatrove 0.10 does) among the words. Gopher: at
    /// least 2.
    stop_words: Int,
    /// Fraction of lines whose first non-whitespace character is `•` or `-` (datatrove 0.10).
    /// Gopher: at most 0.9.
    bullet_lines_ratio: Float,
    /// Fraction of lines ending (before trailing whitespace) in `...` or `…`. Gopher: at most
    /// 0.3.
    ellipsis_lines_ratio: Float,
    /// FineWeb's `line_punct_ratio`: of the non-blank `\n`-split lines, the fraction whose last
    /// character (no stripping) is in datatrove's `TERMINAL_PUNCTUATION` (`.`, `!`, `?`, `。`,
    /// ...; no quotes). FineWeb: at least 0.12.
    lines_ending_punct_ratio: Float,
    /// FineWeb's `short_line_ratio`: of the non-blank `\n`-split lines, the fraction of at most
    /// 30 characters. FineWeb: at most 0.67.
    short_lines_ratio: Float,
    /// FineWeb's `char_dup_ratio`: characters of the non-blank `\n`-split lines that repeat an
    /// earlier line, over the characters of the text without its `\n`s. FineWeb: at most 0.01.
    char_dup_ratio: Float,
    /// FineWeb's `list_ratio`: number of `\n` per word (datatrove: per spaCy token, punctuation
    /// included, so its value is lower for the same text). FineWeb: at most 0.3.
    list_ratio: Float,
    /// Gopher's duplicate line fraction over the text split at runs of `\n` (datatrove's
    /// `re.split("\n+")`: lines are not stripped, an empty first or last element is kept): the
    /// fraction of elements equal to an earlier one. Gopher: at most 0.3.
    dup_line_frac: Float,
    /// Characters of those repeated lines over the characters of the text. Gopher: at most 0.2.
    dup_line_char_frac: Float,
    /// Gopher's duplicate paragraph fraction over the stripped text split at runs of two or more
    /// `\n` (datatrove's `re.split(r"\n{2,}", text.strip())`). Gopher: at most 0.3.
    dup_para_frac: Float,
    /// Characters of those repeated paragraphs over the characters of the text. Gopher: at most
    /// 0.2.
    dup_para_char_frac: Float,
    /// Characters of the most frequent word 2-gram (words joined by one space) times its count,
    /// over the characters of the text; ties go to the 2-gram seen first, so a text whose 2-grams
    /// are all unique scores its first 2-gram. Gopher: at most 0.2.
    top_2gram_char_frac: Float,
    /// As `top_2gram_char_frac` for 3-grams. Gopher: at most 0.18.
    top_3gram_char_frac: Float,
    /// As `top_2gram_char_frac` for 4-grams. Gopher: at most 0.16.
    top_4gram_char_frac: Float,
    /// datatrove's duplicated 5-gram measure over the characters of the text: walking the
    /// 5-grams, one seen before adds its characters (words joined without separator) and skips
    /// 5 words ahead. Gopher: at most 0.15.
    dup_5gram_char_frac: Float,
    /// As `dup_5gram_char_frac` for 6-grams. Gopher: at most 0.14.
    dup_6gram_char_frac: Float,
    /// As `dup_5gram_char_frac` for 7-grams. Gopher: at most 0.13.
    dup_7gram_char_frac: Float,
    /// As `dup_5gram_char_frac` for 8-grams. Gopher: at most 0.12.
    dup_8gram_char_frac: Float,
    /// As `dup_5gram_char_frac` for 9-grams. Gopher: at most 0.11.
    dup_9gram_char_frac: Float,
    /// As `dup_5gram_char_frac` for 10-grams. Gopher: at most 0.10.
    dup_10gram_char_frac: Float,
    /// 1 if any line contains "lorem ipsum" (ASCII case-insensitive), else 0: the C4 paper's
    /// page-level rule.
    has_lorem_ipsum: Int,
    /// 1 if the text contains `{`, else 0: the C4 paper's page-level rule.
    has_curly_bracket: Int,
    /// Number of lines containing "javascript" (ASCII case-insensitive). C4 removes these lines.
    lines_with_javascript: Int,
    /// Number of lines of fewer than 3 whitespace-separated words. C4 removes these lines.
    c4_lines_too_short: Int,
    /// Number of lines that, stripped and without Wikipedia citations, do not end in `.`, `?`,
    /// `!`, `"` or `'`, or end in `...`. C4 removes these lines.
    lines_not_ending_terminal: Int,
    /// Sentences in the lines datatrove's C4 filter keeps: spaCy's sentencizer approximated (a
    /// sentence ends at a token ending in `.`, `!` or `?` that is no abbreviation, and at the end
    /// of the line). C4: at least 5.
    c4_sentences: Int,
    /// 1 if datatrove's C4 filter drops the document as `lorem_ipsum`: of the lines that pass
    /// its word-length, terminal-punctuation and 3-word rules, the first that contains either
    /// "lorem ipsum" or (without "javascript") `{` contains "lorem ipsum". A "lorem ipsum" on a
    /// line those rules skip drops nothing.
    c4_lorem_ipsum: Int,
    /// 1 if datatrove's C4 filter drops the document as `curly_bracket` (as `c4_lorem_ipsum`,
    /// for `{`).
    c4_curly_bracket: Int,
    /// The language whatlang identifies in the first 1 KiB of the text, as an ISO 639-3 code
    /// (`eng`, `deu`, `cmn`, ...), or `und` when it identifies none.
    language: Str,
    /// whatlang's confidence in `language`, 0 to 1 (0 for `und`).
    lang_score: Float,
    /// Characters of the longest line.
    max_line_length: Int,
    /// Mean characters per line (line breaks not counted; 0 with no lines).
    mean_line_length: Float,
    /// Fraction of the text's characters that are alphanumeric (Unicode).
    alnum_frac: Float,
    /// 1 if one of the first 10 lines contains (ASCII case-insensitive) "auto-generated",
    /// "autogenerated", "automatically generated", "@generated", "code generated", "generated
    /// by" or "do not edit", else 0: the marks of a generated source file ("generated by" also
    /// matches prose such as "power generated by wind").
    generated_marker: Int,
}

/// Version of what [`SignalComputer::compute`] gives: bump when a signal's definition changes, so
/// that signals stored by an earlier version are computed again.
pub const VERSION: u32 = 1;

impl Signals {
    /// Signals stored as a JSON object of these columns ([`Signals::to_json`]), or `None` when
    /// `value` is not that (another layout, from another version): compute them again then.
    pub fn from_json(value: &serde_json::Value) -> Option<Signals> {
        Signals::deserialize(value).ok()
    }

    /// The signals as a JSON object, one member per column.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            Signals::columns()
                .iter()
                .enumerate()
                .filter_map(|(i, (name, _))| {
                    let v = match self.value_at(i)? {
                        Value::Int(x) => serde_json::Value::from(x),
                        Value::Float(x) => serde_json::Value::from(x),
                        Value::Str(x) => serde_json::Value::from(x),
                    };
                    Some((name.to_string(), v))
                })
                .collect(),
        )
    }
}

/// Gopher's stop words.
const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];

/// Markers of generated files, lowercase.
const GENERATED_MARKERS: [&str; 7] = [
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "@generated",
    "code generated",
    "generated by",
    "do not edit",
];

/// Language identification reads at most this many bytes of the text.
const LANG_PREFIX_BYTES: usize = 1024;

/// Computes [`Signals`], reusing its scratch buffers between documents. One per thread.
#[derive(Default)]
pub struct SignalComputer {
    ngrams: Ngrams,
    c4: C4,
    rep_lines: HashSet64,
    fineweb_lines: HashSet64,
    para_seen: HashSet64,
    lower: String,
}

/// Computes the signals of `text` with fresh scratch buffers; [`SignalComputer`] reuses them.
pub fn compute(text: &str) -> Signals {
    SignalComputer::new().compute(text)
}

impl SignalComputer {
    /// A computer with empty scratch buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Computes the signals of `text`.
    pub fn compute(&mut self, text: &str) -> Signals {
        self.ngrams.clear();
        self.c4.clear();
        self.rep_lines.clear();
        self.fineweb_lines.clear();

        let chars = char_len(text);
        let newlines = text.bytes().filter(|&b| b == b'\n').count();
        let last_segment = newlines;

        let (mut words, mut word_chars, mut alpha_words, mut stop_mask) = (0usize, 0usize, 0, 0u8);
        let (mut lines, mut line_chars, mut max_line, mut alnum) = (0usize, 0usize, 0usize, 0usize);
        let (mut bullets, mut ellipsis_lines, mut generated) = (0usize, 0usize, false);
        let (mut nonblank, mut punct_end, mut short, mut fw_dup_chars) = (0usize, 0, 0, 0usize);
        let (mut rep_count, mut rep_dup, mut rep_dup_chars) = (0usize, 0usize, 0usize);

        for (i, segment) in text.split('\n').enumerate() {
            let is_last = i == last_segment;
            let seg_chars = char_len(segment);
            let seg_hash = hash(segment.as_bytes());
            // Gopher repetition: `re.split("\n+", text)`.
            if !segment.is_empty() || i == 0 || is_last {
                rep_count += 1;
                if !self.rep_lines.insert(seg_hash) {
                    rep_dup += 1;
                    rep_dup_chars += seg_chars;
                }
            }
            // FineWeb: `text.split("\n")`, blank lines dropped, no stripping.
            if !segment.trim().is_empty() {
                nonblank += 1;
                punct_end += usize::from(segment.chars().last().is_some_and(is_terminal));
                short += usize::from(seg_chars <= 30);
                if !self.fineweb_lines.insert(seg_hash) {
                    fw_dup_chars += seg_chars;
                }
            }
            // `splitlines`: no final empty line.
            if is_last && segment.is_empty() {
                break;
            }
            let line = segment.strip_suffix('\r').unwrap_or(segment);
            let this_line_chars = if line.len() == segment.len() {
                seg_chars
            } else {
                seg_chars - 1
            };
            lines += 1;
            line_chars += this_line_chars;
            max_line = max_line.max(this_line_chars);
            bullets += usize::from(line.trim_start().starts_with(['•', '-']));
            let end = line.trim_end();
            ellipsis_lines += usize::from(end.ends_with("...") || end.ends_with('…'));
            if lines <= 10 && !generated {
                text::ascii_lower_into(line, &mut self.lower);
                generated = GENERATED_MARKERS.iter().any(|m| self.lower.contains(m));
            }
            self.c4.line(line);
            alnum += line.chars().filter(|c| c.is_alphanumeric()).count();
            for word in text::words(line) {
                let n = char_len(word);
                words += 1;
                word_chars += n;
                alpha_words += usize::from(word.chars().any(char::is_alphabetic));
                if n <= 4 {
                    if let Some(k) = STOP_WORDS.iter().position(|s| *s == word) {
                        stop_mask |= 1 << k;
                    }
                }
                self.ngrams.push(hash(word.as_bytes()), n);
            }
        }

        let (para_count, para_dup, para_dup_chars) = self.paragraphs(text);
        let hashes = text.matches('#').count();
        let ellipses = count_non_overlapping(text, "...") + text.matches('…').count();
        let chars_no_newlines = chars - newlines;
        let frac = |n: u64| ratio(n as usize, chars);
        let (language, lang_score) = detect_language(text);

        Signals {
            words: words as i64,
            chars: chars as i64,
            lines: lines as i64,
            nonblank_lines: nonblank as i64,
            mean_word_length: ratio(word_chars, words),
            hash_to_word_ratio: ratio(hashes, words),
            ellipsis_to_word_ratio: ratio(ellipses, words),
            symbol_to_word_ratio: ratio(hashes + ellipses, words),
            alpha_words_ratio: ratio(alpha_words, words),
            stop_words: i64::from(stop_mask.count_ones()),
            bullet_lines_ratio: ratio(bullets, lines),
            ellipsis_lines_ratio: ratio(ellipsis_lines, lines),
            lines_ending_punct_ratio: ratio(punct_end, nonblank),
            short_lines_ratio: ratio(short, nonblank),
            char_dup_ratio: ratio(fw_dup_chars, chars_no_newlines),
            list_ratio: ratio(newlines, words),
            dup_line_frac: ratio(rep_dup, rep_count),
            dup_line_char_frac: ratio(rep_dup_chars, chars),
            dup_para_frac: ratio(para_dup, para_count),
            dup_para_char_frac: ratio(para_dup_chars, chars),
            top_2gram_char_frac: frac(self.ngrams.top_ngram_chars(2)),
            top_3gram_char_frac: frac(self.ngrams.top_ngram_chars(3)),
            top_4gram_char_frac: frac(self.ngrams.top_ngram_chars(4)),
            dup_5gram_char_frac: frac(self.ngrams.duplicate_ngram_chars(5)),
            dup_6gram_char_frac: frac(self.ngrams.duplicate_ngram_chars(6)),
            dup_7gram_char_frac: frac(self.ngrams.duplicate_ngram_chars(7)),
            dup_8gram_char_frac: frac(self.ngrams.duplicate_ngram_chars(8)),
            dup_9gram_char_frac: frac(self.ngrams.duplicate_ngram_chars(9)),
            dup_10gram_char_frac: frac(self.ngrams.duplicate_ngram_chars(10)),
            has_lorem_ipsum: i64::from(self.c4.lorem_ipsum > 0),
            has_curly_bracket: i64::from(text.contains('{')),
            lines_with_javascript: self.c4.javascript as i64,
            c4_lines_too_short: self.c4.too_short as i64,
            lines_not_ending_terminal: self.c4.not_terminal as i64,
            c4_sentences: self.c4.sentences as i64,
            c4_lorem_ipsum: i64::from(self.c4.outcome == Outcome::LoremIpsum),
            c4_curly_bracket: i64::from(self.c4.outcome == Outcome::CurlyBracket),
            language,
            lang_score,
            max_line_length: max_line as i64,
            mean_line_length: ratio(line_chars, lines),
            alnum_frac: ratio(alnum, chars),
            generated_marker: i64::from(generated),
        }
    }

    /// Paragraphs as datatrove's `re.split(r"\n{2,}", text.strip())`: their number, how many
    /// repeat an earlier one, and the characters of those repeats.
    fn paragraphs(&mut self, text: &str) -> (usize, usize, usize) {
        let stripped = text.trim();
        if stripped.is_empty() {
            return (1, 0, 0);
        }
        let base = stripped.as_ptr() as usize;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut open: Option<(usize, usize)> = None;
        for segment in stripped.split('\n') {
            let start = segment.as_ptr() as usize - base;
            if segment.is_empty() {
                spans.extend(open.take());
            } else {
                let end = start + segment.len();
                open = Some(open.map_or((start, end), |(s, _)| (s, end)));
            }
        }
        spans.extend(open);
        let elements = spans.iter().map(|&(s, e)| {
            let p = &stripped[s..e];
            (hash(p.as_bytes()), char_len(p))
        });
        let (dup, dup_chars) = find_duplicates(elements, &mut self.para_seen);
        (spans.len(), dup, dup_chars)
    }
}

/// whatlang's language (ISO 639-3) and confidence for the first [`LANG_PREFIX_BYTES`] of `text`.
fn detect_language(text: &str) -> (String, f64) {
    let mut end = text.len().min(LANG_PREFIX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match whatlang::detect(&text[..end]) {
        Some(info) => (info.lang().code().to_string(), info.confidence()),
        None => ("und".to_string(), 0.0),
    }
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
