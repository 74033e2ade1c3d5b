//! Text primitives shared by the signals: punctuation tables, the word tokenizer, line splitting
//! and a hash set keyed by precomputed hashes.
//!
//! The word tokenizer is phiforge's, not datatrove's: a *word* is a whitespace-separated token with
//! leading and trailing punctuation stripped; a token made only of punctuation is no word. datatrove
//! (0.10) tokenizes English with spaCy, which makes every punctuation mark its own token, so each `=`
//! of an rST underline or each `(`, `)` and `,` of a code sample counts as a word in its ratios. See
//! [`crate::signals`] for what this changes in each column.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

pub(crate) use crate::punct_table::{NON_ASCII_PUNCTUATION, TERMINAL_PUNCTUATION};

/// True for punctuation as datatrove's `PUNCTUATION_SET` has it (every ASCII punctuation mark,
/// the ASCII and C1 control characters that are not whitespace, and its non-ASCII marks such as
/// `…`, `—`, `“`, `。`, `«`), plus `‘‚‛‟‹›‐‑‒―†‡•′″·¡¿§¶`.
#[inline]
pub fn is_punct(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation() || (c.is_ascii_control() && !c.is_ascii_whitespace())
    } else {
        NON_ASCII_PUNCTUATION.binary_search(&c).is_ok()
    }
}

/// True for one of datatrove's `TERMINAL_PUNCTUATION` marks (`.`, `!`, `?`, `。`, `।`, `؟`, ...;
/// no quotes).
#[inline]
pub fn is_terminal(c: char) -> bool {
    match c {
        '.' | '!' | '?' => true,
        c if c.is_ascii() => false,
        c => TERMINAL_PUNCTUATION.binary_search(&c).is_ok(),
    }
}

/// phiforge's words of `text`: whitespace-separated tokens, each with its leading and trailing
/// punctuation ([`is_punct`]) stripped; tokens left empty are skipped. `"(hello),"` is `hello`,
/// `"don't"` stays `don't`, `"3.11.2"` stays `3.11.2`, `"====="` is no word.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace().filter_map(|token| {
        let word = token.trim_matches(is_punct);
        (!word.is_empty()).then_some(word)
    })
}

/// The number of characters (Unicode scalar values, as Python's `len` counts them).
#[inline]
pub(crate) fn char_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Python's `str.count(needle)`: non-overlapping occurrences.
#[inline]
pub(crate) fn count_non_overlapping(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Writes `line` lowercased (ASCII letters only) into `buf`, replacing what it held.
#[inline]
pub(crate) fn ascii_lower_into(line: &str, buf: &mut String) {
    buf.clear();
    buf.push_str(line);
    buf.make_ascii_lowercase();
}

/// A 64-bit hash of `bytes` (xxh3, unseeded, so signals are reproducible).
#[inline]
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A [`Hasher`] for keys that already are good 64-bit hashes.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in case a caller hashes other keys.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A set of precomputed 64-bit hashes.
pub(crate) type HashSet64 = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

/// datatrove's `find_duplicates` over elements given as `(hash, chars)`: how many elements repeat
/// one seen before, and the characters of those repeats. `seen` is scratch space.
pub(crate) fn find_duplicates(
    elements: impl Iterator<Item = (u64, usize)>,
    seen: &mut HashSet64,
) -> (usize, usize) {
    seen.clear();
    let (mut dup, mut dup_chars) = (0, 0);
    for (h, chars) in elements {
        if !seen.insert(h) {
            dup += 1;
            dup_chars += chars;
        }
    }
    (dup, dup_chars)
}

/// `a / b`, or 0 when `b` is 0.
#[inline]
pub(crate) fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(NON_ASCII_PUNCTUATION.windows(2).all(|w| w[0] < w[1]));
        assert!(TERMINAL_PUNCTUATION.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(TERMINAL_PUNCTUATION.len(), 159);
    }

    #[test]
    fn punctuation_and_terminal_marks() {
        for c in [
            '.', ',', '#', '=', '`', '…', '—', '“', '”', '‘', '’', '«', '。', '\u{7f}',
        ] {
            assert!(is_punct(c), "{c:?}");
        }
        for c in ['a', 'é', '1', ' ', '\n', 'ß', '中'] {
            assert!(!is_punct(c), "{c:?}");
        }
        for c in ['.', '!', '?', '。', '？', '।', '؟'] {
            assert!(is_terminal(c), "{c:?}");
        }
        for c in ['"', '\'', ',', ':', ';', '…', 'a'] {
            assert!(!is_terminal(c), "{c:?}");
        }
    }

    #[test]
    fn words_strip_punctuation_and_skip_symbol_tokens() {
        let got: Vec<&str> =
            words("(Hello), world! ===== don't 3.11.2 **kwargs -- #include <a>").collect();
        assert_eq!(
            got,
            ["Hello", "world", "don't", "3.11.2", "kwargs", "include", "a"]
        );
        assert_eq!(words("").count(), 0);
        assert_eq!(words(" \n\t ... ").count(), 0);
    }

    #[test]
    fn helpers() {
        assert_eq!(char_len("héllo"), 5);
        assert_eq!(count_non_overlapping("a.....b...", "..."), 2);
        let (dup, chars) = find_duplicates(
            [(1, 3), (2, 4), (1, 3), (1, 3), (3, 0)].into_iter(),
            &mut HashSet64::default(),
        );
        assert_eq!((dup, chars), (2, 6));
        assert_eq!(ratio(1, 0), 0.0);
        assert_eq!(ratio(1, 4), 0.25);
    }
}
