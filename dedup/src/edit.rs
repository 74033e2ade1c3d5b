//! The edit rule: benchmark items copied with words changed, which Phi-4's n-gram rule misses.
//!
//! With one word in eight replaced, the changes fall inside almost every 7-gram: the overlap ratio
//! stays near 1/8 to 1/4 and the 13/7-gram rule calls the copy clean. A few 7-grams survive
//! between the changes, though, and they are found by the scan anyway. So an item that shares at
//! least [`Settings::edit_min_shared`](crate::index::Settings::edit_min_shared) 7-grams with a
//! sample, without Phi-4's rule calling it contaminated, is a *candidate*; the item's tokens are
//! then aligned with the sample around those 7-grams ([`best_alignment`]). The similarity is
//! `1 - d / m`, where `d` is the fewest word insertions, deletions and replacements that turn the
//! item (or its question, or its answer) of `m` words into some run of the sample's words:
//! approximate matching, Sellers' dynamic programme. One word in eight changed gives 0.875; an
//! unrelated text that shares two phrases with the item stays far below the threshold.
//!
//! Items are kept as 32-bit token hashes (the low half of the scan's 64-bit ones), all items in
//! one array.

/// The token hashes of every item's full text (question, choices, answer), with where each item's
/// question and answer are in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ItemTexts {
    tokens: Vec<u32>,
    /// Per item: start in `tokens`, length, question length (a prefix), answer length (a suffix).
    spans: Vec<[u32; 4]>,
}

impl ItemTexts {
    pub(crate) fn push(&mut self, full: &[u64], question: usize, answer: usize) {
        let start = self.tokens.len() as u32;
        self.tokens.extend(full.iter().map(|&h| h as u32));
        self.spans
            .push([start, full.len() as u32, question as u32, answer as u32]);
    }

    /// The item's parts as token runs: full, question, answer.
    pub(crate) fn parts(&self, item: u32) -> [&[u32]; 3] {
        let [start, len, q, a] = self.spans[item as usize];
        let full = &self.tokens[start as usize..(start + len) as usize];
        [full, &full[..q as usize], &full[(len - a) as usize..]]
    }
}

/// Reusable scratch for [`best_alignment`].
#[derive(Default)]
pub(crate) struct Aligner {
    row: Vec<u32>,
    window: Vec<u32>,
    /// The window's words, sorted and deduplicated.
    words: Vec<u32>,
}

/// The best alignment of an item part with a run of the sample's words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Alignment {
    /// `1 - edits / part length`.
    pub similarity: f64,
    /// Which part: 0 full, 1 question, 2 answer.
    pub part: usize,
    /// The matched run, as a token range of the sample.
    pub run: (usize, usize),
}

impl Aligner {
    /// Aligns each part of at least `min_tokens` words with `sample[window]`, and returns the most
    /// similar part; a part that cannot reach `floor` similarity is not aligned.
    pub(crate) fn best_alignment(
        &mut self,
        parts: [&[u32]; 3],
        sample: &[u64],
        window: (usize, usize),
        min_tokens: usize,
        floor: f64,
    ) -> Option<Alignment> {
        self.window.clear();
        self.window
            .extend(sample[window.0..window.1].iter().map(|&h| h as u32));
        self.words.clear();
        self.words.extend_from_slice(&self.window);
        self.words.sort_unstable();
        self.words.dedup();
        let mut best: Option<Alignment> = None;
        for (part, p) in parts.iter().enumerate() {
            // The question or answer alone only when it is not the whole item.
            if p.len() < min_tokens || (part > 0 && p.len() == parts[0].len()) {
                continue;
            }
            if self.bound(p) < floor {
                continue;
            }
            let (edits, end) = self.search(p);
            let similarity = 1.0 - edits as f64 / p.len() as f64;
            if best.is_none_or(|b| similarity > b.similarity) {
                let start = self.start_of(p, end);
                best = Some(Alignment {
                    similarity,
                    part,
                    run: (window.0 + start, window.0 + end),
                });
            }
        }
        best
    }

    /// An upper bound of the similarity `1 - edits / m` of `pattern` (`m` words) to any run of the
    /// window, in linear time: each of the pattern's words is matched, replaced or deleted, so
    /// `edits >= m - matched`, and a matched word occurs in the window.
    fn bound(&self, pattern: &[u32]) -> f64 {
        let present = pattern
            .iter()
            .filter(|w| self.words.binary_search(w).is_ok())
            .count();
        present as f64 / pattern.len().max(1) as f64
    }

    /// Sellers' algorithm: the fewest edits that turn `pattern` into some run of the window, and
    /// where the best such run ends (exclusive). One column of the table is kept.
    fn search(&mut self, pattern: &[u32]) -> (u32, usize) {
        let m = pattern.len();
        self.row.clear();
        self.row.extend(0..=m as u32);
        let (mut best, mut best_end) = (m as u32, 0);
        for (j, &w) in self.window.iter().enumerate() {
            // A run may start anywhere: the top cell stays 0.
            let mut diag = 0u32;
            for i in 1..=m {
                let up = self.row[i];
                let cost = diag + u32::from(pattern[i - 1] != w);
                let v = cost.min(up + 1).min(self.row[i - 1] + 1);
                diag = up;
                self.row[i] = v;
            }
            if self.row[m] < best {
                best = self.row[m];
                best_end = j + 1;
            }
        }
        (best, best_end)
    }

    /// Where the best run ending at `end` starts: the same search over the reversed pattern and
    /// window prefix.
    fn start_of(&mut self, pattern: &[u32], end: usize) -> usize {
        let m = pattern.len();
        self.row.clear();
        self.row.extend(0..=m as u32);
        let (mut best, mut best_len) = (m as u32, 0);
        for (j, &w) in self.window[..end].iter().rev().enumerate() {
            let mut diag = 0u32;
            for i in 1..=m {
                let up = self.row[i];
                let cost = diag + u32::from(pattern[m - i] != w);
                let v = cost.min(up + 1).min(self.row[i - 1] + 1);
                diag = up;
                self.row[i] = v;
            }
            if self.row[m] < best {
                best = self.row[m];
                best_len = j + 1;
            }
        }
        end - best_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<u64> {
        s.split(' ')
            .map(|w| xxhash_rust::xxh3::xxh3_64(w.as_bytes()))
            .collect()
    }

    #[test]
    fn one_word_in_eight_changed_is_seven_eighths_similar() {
        let item = words("a b c d e f g h i j k l m n o p");
        let sample = words("x y z a b c d e f g Q i j k l m n o X z z");
        let mut texts = ItemTexts::default();
        texts.push(&item, 16, 0);
        let mut a = Aligner::default();
        let got = a
            .best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.0)
            .unwrap();
        assert_eq!(got.part, 0);
        assert_eq!(got.similarity, 1.0 - 2.0 / 16.0);
        // The earliest end of the fewest edits: `p` deleted rather than replaced by `X`.
        assert_eq!(got.run, (3, 18));
        // A dropped and an inserted word are one edit each.
        let sample = words("a b c d e f h i j k l NEW m n o p");
        let got = a
            .best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.0)
            .unwrap();
        assert_eq!(got.similarity, 1.0 - 2.0 / 16.0);
        assert_eq!(got.run, (0, sample.len()));
    }

    #[test]
    fn the_question_alone_is_aligned_and_short_parts_are_not() {
        let question = "what is the sum of the first ten positive whole numbers please";
        let item = words(&format!("{question} the answer is fifty five"));
        let mut texts = ItemTexts::default();
        texts.push(&item, 12, 5);
        let sample = words(&format!(
            "intro words then {question} and more unrelated text"
        ));
        let mut a = Aligner::default();
        let got = a
            .best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.0)
            .unwrap();
        assert_eq!((got.part, got.similarity), (1, 1.0));
        assert_eq!(got.run, (3, 15));
        // The answer (5 words) is below the minimum, the full item aligns less well.
        assert!(
            a.best_alignment(texts.parts(0), &sample, (0, sample.len()), 13, 0.0)
                .unwrap()
                .similarity
                < 0.71
        );
    }

    #[test]
    fn a_part_that_cannot_reach_the_floor_is_not_aligned() {
        let item = words("a b c d e f g h i j k l m n o p");
        let mut texts = ItemTexts::default();
        texts.push(&item, 16, 0);
        let mut a = Aligner::default();
        // Half the item's words occur in the window: at most 0.5 similar, below a 0.75 floor.
        let sample = words("a b c d e f g h x y z x y z x y z x y z");
        let full = a.best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.0);
        assert!(full.unwrap().similarity <= 0.5);
        assert_eq!(
            a.best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.75),
            None
        );
        // A copy with one word in eight changed is above it, and found the same with the floor.
        let sample = words("x y z a b c d e f g Q i j k l m n o X z z");
        let with = a.best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.75);
        let without = a.best_alignment(texts.parts(0), &sample, (0, sample.len()), 8, 0.0);
        assert_eq!(with, without);
        assert!(with.is_some());
    }
}
