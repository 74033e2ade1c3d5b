//! Gopher's repetition measures over a document's words, as datatrove 0.10's
//! `gopher_repetition_filter.py` computes them, with n-grams identified by rolling hashes instead
//! of joined strings.
//!
//! An n-gram's identity is its sequence of words (a polynomial hash over the words' xxh3 hashes,
//! then mixed). datatrove's duplicated-n-gram measure joins the words with no separator, so there
//! `["ab", "c"]` equals `["a", "bc"]`; here they differ. Hash collisions between different n-grams
//! are possible in principle (64 bits) and ignored.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::text::{HashSet64, IdentityHasher};

/// The odd multiplier of the rolling hash.
const BASE: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finalizer: spreads a rolling hash over all 64 bits.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Prefix sums over a document's words that give any n-gram's hash and characters in O(1).
#[derive(Default)]
pub(crate) struct Ngrams {
    /// `hash_prefix[i]` is the rolling hash of words `0..i`.
    hash_prefix: Vec<u64>,
    /// `char_prefix[i]` is the characters of words `0..i`.
    char_prefix: Vec<u64>,
    /// `powers[n]` is `BASE^n`.
    powers: Vec<u64>,
    seen: HashSet64,
    counts: HashMap<u64, (u32, u32), BuildHasherDefault<IdentityHasher>>,
}

impl Ngrams {
    /// Forgets the previous document.
    pub(crate) fn clear(&mut self) {
        self.hash_prefix.clear();
        self.char_prefix.clear();
        self.hash_prefix.push(0);
        self.char_prefix.push(0);
    }

    /// Appends one word, given by its hash and its characters.
    #[inline]
    pub(crate) fn push(&mut self, word_hash: u64, chars: usize) {
        let h = self.hash_prefix.last().copied().unwrap_or(0);
        let c = self.char_prefix.last().copied().unwrap_or(0);
        self.hash_prefix
            .push(h.wrapping_mul(BASE).wrapping_add(word_hash));
        self.char_prefix.push(c + chars as u64);
    }

    /// The number of words pushed since [`Ngrams::clear`].
    pub(crate) fn len(&self) -> usize {
        self.hash_prefix.len().saturating_sub(1)
    }

    fn power(&mut self, n: usize) -> u64 {
        if self.powers.is_empty() {
            self.powers.push(1);
        }
        while self.powers.len() <= n {
            let last = self.powers[self.powers.len() - 1];
            self.powers.push(last.wrapping_mul(BASE));
        }
        self.powers[n]
    }

    #[inline]
    fn hash(&self, start: usize, n: usize, pow: u64) -> u64 {
        let h = self.hash_prefix[start + n].wrapping_sub(self.hash_prefix[start].wrapping_mul(pow));
        mix(h ^ n as u64)
    }

    #[inline]
    fn chars(&self, start: usize, n: usize) -> u64 {
        self.char_prefix[start + n] - self.char_prefix[start]
    }

    /// datatrove's `find_top_duplicate` over the n-grams joined with spaces: the characters of the
    /// most frequent n-gram times its count (on a tie, the n-gram seen first, as Python's
    /// `Counter.most_common(1)` picks). 0 when there are fewer than `n` words.
    pub(crate) fn top_ngram_chars(&mut self, n: usize) -> u64 {
        let len = self.len();
        if n == 0 || len < n {
            return 0;
        }
        let pow = self.power(n);
        let mut counts = std::mem::take(&mut self.counts);
        counts.clear();
        let mut best: (u32, u32) = (0, 0); // (count, first position)
        for start in 0..=len - n {
            let entry = counts
                .entry(self.hash(start, n, pow))
                .or_insert((0, start as u32));
            entry.0 += 1;
            let candidate = *entry;
            if candidate.0 > best.0 || (candidate.0 == best.0 && candidate.1 < best.1) {
                best = candidate;
            }
        }
        self.counts = counts;
        let (count, first) = best;
        (self.chars(first as usize, n) + (n as u64 - 1)) * u64::from(count)
    }

    /// datatrove's `find_all_duplicate`: walks the n-gram positions; an n-gram seen before adds its
    /// characters (words joined without separator) and jumps `n` words ahead without recording the
    /// n-grams it skips, any other n-gram is recorded and the walk moves one word.
    pub(crate) fn duplicate_ngram_chars(&mut self, n: usize) -> u64 {
        let len = self.len();
        if n == 0 || len < n {
            return 0;
        }
        let pow = self.power(n);
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        let (mut repeated, mut idx) = (0, 0);
        while idx + n <= len {
            if seen.insert(self.hash(idx, n, pow)) {
                idx += 1;
            } else {
                repeated += self.chars(idx, n);
                idx += n;
            }
        }
        self.seen = seen;
        repeated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{char_len, hash};

    fn load(words: &str) -> Ngrams {
        let mut ng = Ngrams::default();
        ng.clear();
        for w in words.split_whitespace() {
            ng.push(hash(w.as_bytes()), char_len(w));
        }
        ng
    }

    #[test]
    fn top_ngram_counts_the_most_frequent_and_breaks_ties_by_first_seen() {
        // bigrams: "a b" x3, "b a" x2 -> "a b" is 3 chars, 3 times.
        let mut ng = load("a b a b a b");
        assert_eq!(ng.top_ngram_chars(2), 9);
        // All unique: the first bigram "hello world" (11 chars) once.
        let mut ng = load("hello world and more");
        assert_eq!(ng.top_ngram_chars(2), 11);
        assert_eq!(ng.top_ngram_chars(5), 0);
        // Tie of counts 2: "x y" is seen before "y z".
        let mut ng = load("x y z x y zz y z");
        assert_eq!(ng.top_ngram_chars(2), 6);
    }

    #[test]
    fn duplicate_ngrams_follow_datatrove_walk() {
        // words: a b c d e a b c d e a b c d e (15), n = 5.
        // idx 0..4 record 5 new 5-grams; idx 5 "a b c d e" is seen -> +5 chars, idx 10;
        // idx 10 "a b c d e" is seen -> +5 chars, idx 15, stop.
        let mut ng = load("a b c d e a b c d e a b c d e");
        assert_eq!(ng.duplicate_ngram_chars(5), 10);
        // No repeats.
        let mut ng = load("one two three four five six seven");
        assert_eq!(ng.duplicate_ngram_chars(5), 0);
        assert_eq!(ng.duplicate_ngram_chars(10), 0);
    }

    #[test]
    fn ngram_identity_is_position_independent() {
        let mut ng = load("p q r s t p q r s t");
        // 5-grams at 0 and 5 are equal; 6-grams: p..p, q..q,... none repeat.
        assert_eq!(ng.duplicate_ngram_chars(5), 5);
        assert_eq!(ng.duplicate_ngram_chars(6), 0);
        assert_eq!(ng.len(), 10);
    }
}
