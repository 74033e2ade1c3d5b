//! The benchmark n-gram index: every item's 13-grams and 7-grams as seeded 64-bit hashes, with the
//! items (and item parts) behind each 7-gram.
//!
//! Each item is indexed as three parts, so that a copy of the question alone, the answer alone or
//! the whole item is caught:
//!
//! - `full`: question, then choices, then answer, as one token run;
//! - `question` and `answer` on their own (used for the ratio only when the part has at least
//!   [`Settings::min_part_ngrams`] 7-grams, so that a short answer alone is no evidence).
//!
//! Items with fewer than 7 tokens in all are matched as a whole token run (question then answer)
//! when that run has at least [`Settings::short_item_min_words`] distinct words; the rest are
//! reported as [`Uncheckable`].
//!
//! N-grams that occur in [`Settings::allow_min_items`] or more items (answer-option boilerplate,
//! shared instructions), and those of a user allow-list, are not evidence: such 13-grams are
//! dropped, and such 7-grams count neither as shared nor in an item's size.

use crate::benchmark::{BenchmarkSet, Item};
use crate::edit::ItemTexts;
use crate::normalize::{tokenize, TokenSink, Tokenizer, Tokens};
use crate::table::{SortedTable, WordFilter};
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::HashSet;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seeds of the n-gram hashes ("phiforge" xor n), fixed so results are reproducible.
const SEED: u64 = 0x7068_6966_6f72_6765;

/// Item parts: bit 0 the full item, bit 1 the question, bit 2 the answer.
pub const PART_FULL: u8 = 1;
pub const PART_QUESTION: u8 = 2;
pub const PART_ANSWER: u8 = 4;
pub const PART_NAMES: [&str; 3] = ["full", "question", "answer"];

/// Decontamination settings, with Phi-4-style defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    /// Any shared n-gram of this length makes a sample contaminated (default 13).
    pub long_n: usize,
    /// N-gram length of the overlap ratio (default 7).
    pub short_n: usize,
    /// A best ratio above this makes a sample partial (default 0.25).
    pub info_threshold: f64,
    /// A best ratio at or above this makes a sample contaminated (default 0.5).
    pub contamination_threshold: f64,
    /// Items shorter than `short_n` tokens need this many distinct words to be checked (default 4).
    pub short_item_min_words: usize,
    /// An n-gram found in this many distinct items or more is boilerplate (default 5).
    pub allow_min_items: usize,
    /// A question or answer on its own counts once it has this many 7-grams (default 4).
    pub min_part_ngrams: usize,
    /// The edit rule ([`crate::edit`]): items copied with words changed, reported as `edited`
    /// (default on).
    pub edit_rule: bool,
    /// An alignment at least this similar (1 - edits / words) is an edited copy (default 0.75).
    pub edit_threshold: f64,
    /// Items (or questions, or answers) of fewer words are not aligned (default 12).
    pub edit_min_tokens: usize,
    /// Shared 7-grams that make an item a candidate for alignment (default 2).
    pub edit_min_shared: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            long_n: 13,
            short_n: 7,
            info_threshold: 0.25,
            contamination_threshold: 0.5,
            short_item_min_words: 4,
            allow_min_items: 5,
            min_part_ngrams: 4,
            edit_rule: true,
            edit_threshold: 0.75,
            edit_min_tokens: 12,
            edit_min_shared: 2,
        }
    }
}

impl Settings {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, message: String| Err(Error::Setting { name, message });
        if self.short_n < 2 || self.short_n >= self.long_n || self.long_n > 64 {
            return bad(
                "long_n/short_n",
                format!(
                    "need 2 <= short_n < long_n <= 64, got {} and {}",
                    self.short_n, self.long_n
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.info_threshold)
            || !(0.0..=1.0).contains(&self.contamination_threshold)
            || self.info_threshold > self.contamination_threshold
        {
            return bad(
                "thresholds",
                format!(
                    "need 0 <= info ({}) <= contamination ({}) <= 1",
                    self.info_threshold, self.contamination_threshold
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.edit_threshold) || self.edit_threshold <= 0.5 {
            return bad(
                "edit_threshold",
                format!(
                    "need 0.5 < edit_threshold <= 1, got {}",
                    self.edit_threshold
                ),
            );
        }
        if self.edit_min_tokens < self.short_n || self.edit_min_shared < 1 {
            return bad(
                "edit_min_tokens/edit_min_shared",
                format!(
                    "need edit_min_tokens >= short_n ({}) and edit_min_shared >= 1, got {} and {}",
                    self.short_n, self.edit_min_tokens, self.edit_min_shared
                ),
            );
        }
        if self.allow_min_items < 2 {
            return bad("allow_min_items", "must be at least 2".into());
        }
        Ok(())
    }
}

/// Hash of the n-gram made of `tokens` (token hashes); `n` is `tokens.len()`.
#[inline]
pub fn ngram_hash(tokens: &[u64]) -> u64 {
    // SAFETY: u64 has no padding and u8 has alignment 1, so the bytes of the slice are valid.
    let bytes = unsafe {
        std::slice::from_raw_parts(tokens.as_ptr().cast::<u8>(), std::mem::size_of_val(tokens))
    };
    xxh3_64_with_seed(bytes, SEED ^ tokens.len() as u64)
}

/// A benchmark item that cannot be checked, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Uncheckable {
    pub benchmark: String,
    pub item_id: String,
    pub reason: String,
}

/// What the index knows of one item.
#[derive(Debug, Clone)]
pub struct ItemInfo {
    pub benchmark: u16,
    pub id: String,
    /// Distinct non-boilerplate 7-grams of each part (full, question, answer).
    pub part_ngrams: [u32; 3],
}

/// Range into a postings array; `len == 0` marks a boilerplate 7-gram, kept only so that the
/// 13-gram check (which looks only where a 7-gram matched) still sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    pub start: u32,
    pub len: u32,
}

/// Counts of what the index holds, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IndexStats {
    pub items: usize,
    pub ngrams_long: usize,
    pub ngrams_short: usize,
    pub short_items: usize,
    pub allowed_long_by_frequency: usize,
    pub allowed_long_by_list: usize,
    pub boilerplate_short: usize,
}

/// The n-gram index over a [`BenchmarkSet`].
pub struct BenchIndex {
    pub settings: Settings,
    pub benchmarks: Vec<String>,
    pub items: Vec<ItemInfo>,
    pub uncheckable: Vec<Uncheckable>,
    pub stats: IndexStats,
    pub(crate) short_map: SortedTable<Range>,
    /// Every key of `short_map`, in a filter small enough for the CPU's caches: clean text (nearly
    /// every 7-gram of a scan) is answered without the map.
    pub(crate) short_filter: WordFilter,
    /// (item << 3) | part mask, grouped by 7-gram.
    pub(crate) short_postings: Vec<u32>,
    pub(crate) long_map: SortedTable<Range>,
    pub(crate) long_postings: Vec<u32>,
    /// Whole-run hashes of items shorter than `short_n`, by run length.
    pub(crate) exact_map: SortedTable<Range>,
    pub(crate) exact_postings: Vec<u32>,
    pub(crate) exact_lens: Vec<usize>,
    /// One bit per low 16 bits of a token hash that starts an exact run.
    pub(crate) exact_first: Vec<u64>,
    /// Every item's words, for the edit rule's alignments (empty when the rule is off).
    pub(crate) texts: ItemTexts,
}

struct ItemGrams {
    /// The full item's token hashes, with its question's and answer's lengths (edit rule).
    words: (Vec<u64>, usize, usize),
    short: Vec<(u64, u8)>,
    long: Vec<u64>,
    exact: Option<u64>,
    exact_len: usize,
    exact_first: u64,
    uncheckable: Option<String>,
}

/// Token hashes of an item's text, with whether each token is a number (`2024`, `3`).
#[derive(Default, Clone)]
struct ItemTokens {
    hashes: Vec<u64>,
    number: Vec<bool>,
}

impl TokenSink for ItemTokens {
    fn token(&mut self, bytes: &[u8], _: usize, _: usize) {
        self.hashes.push(xxhash_rust::xxh3::xxh3_64(bytes));
        self.number.push(bytes.iter().all(u8::is_ascii_digit));
    }
}

impl ItemTokens {
    fn of(text: &str) -> ItemTokens {
        let mut t = ItemTokens::default();
        Tokenizer::default().run(text, &mut t);
        t
    }

    fn append(&mut self, other: &ItemTokens) {
        self.hashes.extend_from_slice(&other.hashes);
        self.number.extend_from_slice(&other.number);
    }

    /// For each window of `n` tokens, whether it is numbers with at most one word; `words` is
    /// scratch for the running count of words.
    fn numbers_only<'w>(
        &self,
        n: usize,
        words: &'w mut Vec<u32>,
    ) -> impl Iterator<Item = bool> + 'w {
        words.clear();
        words.push(0);
        let mut count = 0;
        for &number in &self.number {
            count += u32::from(!number);
            words.push(count);
        }
        let words = &*words;
        (0..words.len().saturating_sub(n)).map(move |a| words[a + n] - words[a] < 2)
    }
}

fn grams(item: &Item, s: &Settings) -> ItemGrams {
    let question = ItemTokens::of(&item.question);
    let answer = ItemTokens::of(&item.answer);
    let mut full = question.clone();
    for c in &item.choices {
        full.append(&ItemTokens::of(c));
    }
    full.append(&answer);
    // An n-gram of numbers with at most one word (a run of integers, a table of values, `primes =
    // [2, 3, 5, ...`) is no evidence: such runs are everywhere in code and documents.
    let mut words = Vec::new();
    let mut out = ItemGrams {
        words: (Vec::new(), 0, 0),
        short: Vec::new(),
        long: Vec::new(),
        exact: None,
        exact_len: 0,
        exact_first: 0,
        uncheckable: None,
    };
    if full.hashes.is_empty() {
        out.uncheckable = Some("empty: no words in question, choices or answer".into());
        return out;
    }
    if full.hashes.len() < s.short_n {
        let mut run = question.hashes;
        run.extend_from_slice(&answer.hashes);
        let distinct: HashSet<u64> = run.iter().copied().collect();
        if distinct.len() >= s.short_item_min_words {
            out.exact = Some(ngram_hash(&run));
            out.exact_len = run.len();
            out.exact_first = run[0];
        } else {
            out.uncheckable = Some(format!(
                "too short: {} tokens, {} distinct words (needs {} tokens, or {} distinct words)",
                full.hashes.len(),
                distinct.len(),
                s.short_n,
                s.short_item_min_words
            ));
        }
        return out;
    }
    for (part, toks) in [
        (PART_FULL, &full),
        (PART_QUESTION, &question),
        (PART_ANSWER, &answer),
    ] {
        let hashes = &toks.hashes;
        if hashes.len() >= s.short_n {
            let numbers = toks.numbers_only(s.short_n, &mut words);
            out.short
                .extend(hashes.windows(s.short_n).zip(numbers).map(|(w, numbers)| {
                    // Numbers-only 7-grams stay in the index as boilerplate (part 0), so the 13-gram
                    // check still looks where they start.
                    (ngram_hash(w), if numbers { 0 } else { part })
                }));
        }
        if hashes.len() >= s.long_n {
            let numbers = toks.numbers_only(s.long_n, &mut words);
            out.long.extend(
                hashes
                    .windows(s.long_n)
                    .zip(numbers)
                    .filter(|(_, numbers)| !numbers)
                    .map(|(w, _)| ngram_hash(w)),
            );
        }
    }
    if s.edit_rule {
        out.words = (
            full.hashes.clone(),
            question.hashes.len(),
            answer.hashes.len(),
        );
    }
    // Merge parts per 7-gram.
    out.short.sort_unstable();
    let mut merged: Vec<(u64, u8)> = Vec::with_capacity(out.short.len());
    for (h, p) in out.short.drain(..) {
        match merged.last_mut() {
            Some((lh, lp)) if *lh == h => *lp |= p,
            _ => merged.push((h, p)),
        }
    }
    out.short = merged;
    out.long.sort_unstable();
    out.long.dedup();
    out
}

/// Groups `(hash, posting)` pairs (sorted by hash) into ranges over a postings array, in hash
/// order. A run that `keep` refuses gets an empty range (boilerplate).
fn group(
    pairs: &[(u64, u32)],
    mut keep: impl FnMut(u64, &[(u64, u32)]) -> bool,
) -> (Vec<(u64, Range)>, Vec<u32>) {
    let distinct = pairs.chunk_by(|a, b| a.0 == b.0).count();
    let mut ranges = Vec::with_capacity(distinct);
    let mut postings = Vec::with_capacity(pairs.len());
    for run in pairs.chunk_by(|a, b| a.0 == b.0) {
        let h = run[0].0;
        let range = if keep(h, run) {
            let start = postings.len() as u32;
            postings.extend(run.iter().map(|p| p.1));
            Range {
                start,
                len: run.len() as u32,
            }
        } else {
            Range { start: 0, len: 0 }
        };
        ranges.push((h, range));
    }
    (ranges, postings)
}

/// A user's allow-list: texts (one per line) whose n-grams are not evidence, and what the
/// report records of the file (its path and SHA-256).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    pub texts: Vec<String>,
    pub file: Option<(std::path::PathBuf, String)>,
}

impl AllowList {
    /// Reads `path`: its non-empty lines, and the file's SHA-256.
    pub fn read(path: &std::path::Path) -> Result<AllowList> {
        use sha2::Digest;
        let io = |source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let text = String::from_utf8(bytes).map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the allow-list is not UTF-8: {e}"),
            ))
        })?;
        Ok(AllowList {
            texts: text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect(),
            file: Some((path.to_path_buf(), sha256)),
        })
    }
}

impl BenchIndex {
    /// Builds the index. `allow_list` holds texts whose n-grams are not evidence.
    pub fn build(
        set: &BenchmarkSet,
        settings: Settings,
        allow_list: &[String],
    ) -> Result<BenchIndex> {
        settings.validate()?;
        let s = &settings;
        let per_item: Vec<ItemGrams> = set.items.par_iter().map(|it| grams(it, s)).collect();

        let mut allowed_long: HashSet<u64> = HashSet::new();
        let mut allowed_short: HashSet<u64> = HashSet::new();
        let mut t = Tokens::default();
        for text in allow_list {
            tokenize(text, &mut t);
            if t.len() >= s.long_n {
                allowed_long.extend(t.hashes.windows(s.long_n).map(ngram_hash));
            }
            if t.len() >= s.short_n {
                allowed_short.extend(t.hashes.windows(s.short_n).map(ngram_hash));
            }
        }

        let mut benchmarks: Vec<String> = Vec::new();
        let mut items = Vec::with_capacity(set.items.len());
        let mut uncheckable = Vec::new();
        let mut short_pairs: Vec<(u64, u32)> = Vec::new();
        let mut long_pairs: Vec<(u64, u32)> = Vec::new();
        let mut exact_pairs: Vec<(u64, u32)> = Vec::new();
        let mut exact_lens: Vec<usize> = Vec::new();
        let mut exact_first = vec![0u64; 1024];
        let mut texts = ItemTexts::default();
        // Items already reported uncheckable or matched as an exact run.
        let mut covered = Vec::with_capacity(set.items.len());
        for (k, (item, g)) in set.items.iter().zip(&per_item).enumerate() {
            let b = match benchmarks.iter().position(|b| b == &item.benchmark) {
                Some(b) => b,
                None => {
                    benchmarks.push(item.benchmark.clone());
                    benchmarks.len() - 1
                }
            };
            let k = k as u32;
            items.push(ItemInfo {
                benchmark: b as u16,
                id: item.id.clone(),
                part_ngrams: [0; 3],
            });
            covered.push(g.uncheckable.is_some() || g.exact.is_some());
            texts.push(&g.words.0, g.words.1, g.words.2);
            if let Some(reason) = &g.uncheckable {
                uncheckable.push(Uncheckable {
                    benchmark: item.benchmark.clone(),
                    item_id: item.id.clone(),
                    reason: reason.clone(),
                });
            }
            short_pairs.extend(g.short.iter().map(|&(h, p)| (h, (k << 3) | p as u32)));
            long_pairs.extend(g.long.iter().map(|&h| (h, k)));
            if let Some(h) = g.exact {
                exact_pairs.push((h, k));
                if !exact_lens.contains(&g.exact_len) {
                    exact_lens.push(g.exact_len);
                }
                let bit = (g.exact_first & 0xffff) as usize;
                exact_first[bit / 64] |= 1 << (bit % 64);
            }
        }
        drop(per_item);
        exact_pairs.sort_unstable();
        exact_lens.sort_unstable();
        let min_items = s.allow_min_items;
        // The 7-grams and the 13-grams are sorted and grouped side by side.
        let (
            (short_map, short_filter, short_postings, boilerplate_short),
            (long_map, long_postings, (allowed_long_by_frequency, allowed_long_by_list)),
        ) = rayon::join(
            || {
                short_pairs.par_sort_unstable();
                let mut boilerplate = 0;
                let (ranges, postings) = group(&short_pairs, |h, run| {
                    let keep = run.len() < min_items
                        && !allowed_short.contains(&h)
                        && run.iter().all(|p| p.1 & 7 != 0);
                    boilerplate += usize::from(!keep);
                    keep
                });
                let map = SortedTable::from_sorted(ranges.into_iter());
                let filter = WordFilter::new(map.keys());
                (map, filter, postings, boilerplate)
            },
            || {
                long_pairs.par_sort_unstable();
                let (mut by_frequency, mut by_list) = (0, 0);
                let (mut ranges, postings) = group(&long_pairs, |h, run| {
                    if run.len() >= min_items {
                        by_frequency += 1;
                        false
                    } else if allowed_long.contains(&h) {
                        by_list += 1;
                        false
                    } else {
                        true
                    }
                });
                ranges.retain(|e| e.1.len > 0);
                let map = SortedTable::from_sorted(ranges.into_iter());
                (map, postings, (by_frequency, by_list))
            },
        );
        drop((short_pairs, long_pairs));
        let (exact_ranges, exact_postings) = group(&exact_pairs, |_, _| true);
        let exact_map = SortedTable::from_sorted(exact_ranges.into_iter());
        let stats = IndexStats {
            items: items.len(),
            short_items: exact_pairs.len(),
            ngrams_short: short_map.len(),
            ngrams_long: long_map.len(),
            boilerplate_short,
            allowed_long_by_frequency,
            allowed_long_by_list,
        };

        for r in short_map.values().iter().filter(|r| r.len > 0) {
            for &p in &short_postings[r.start as usize..(r.start + r.len) as usize] {
                let info = &mut items[(p >> 3) as usize];
                for bit in 0..3 {
                    if p & (1 << bit) != 0 {
                        info.part_ngrams[bit] += 1;
                    }
                }
            }
        }
        // Items left with no evidence at all: every n-gram is boilerplate.
        let boilerplate_only: Vec<Uncheckable> = items
            .iter()
            .zip(&set.items)
            .zip(&covered)
            .filter(|((info, _), &covered)| !covered && info.part_ngrams == [0; 3])
            .map(|((_, item), _)| Uncheckable {
                benchmark: item.benchmark.clone(),
                item_id: item.id.clone(),
                reason: "only boilerplate n-grams (shared with many items or allow-listed)".into(),
            })
            .collect();
        uncheckable.extend(boilerplate_only);

        Ok(BenchIndex {
            settings,
            benchmarks,
            items,
            uncheckable,
            stats,
            short_map,
            short_filter,
            short_postings,
            long_map,
            long_postings,
            exact_map,
            exact_postings,
            exact_lens,
            exact_first,
            texts,
        })
    }

    /// Items per benchmark, in index order.
    pub fn items_per_benchmark(&self) -> Vec<usize> {
        let mut v = vec![0; self.benchmarks.len()];
        for it in &self.items {
            v[it.benchmark as usize] += 1;
        }
        v
    }
}
