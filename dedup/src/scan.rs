//! Classifying one sample against a [`BenchIndex`] with Phi-4's hybrid rule.
//!
//! 1. Any 13-gram shared with an item (and not boilerplate) makes the sample **contaminated**
//!    (rule `ngram13`).
//! 2. Otherwise, for each item and part, ratio = shared distinct 7-grams / min(sample's distinct
//!    7-grams, part's 7-grams); the item's ratio is its best part's. A best ratio at or above the
//!    contamination threshold is **contaminated** (`ngram7`); above the info threshold, **partial**.
//! 3. A short item's whole token run found in the sample is **contaminated** (`exact`).
//!
//! The scan hashes every 7-gram of the sample and looks it up once; a 13-gram is hashed and looked
//! up only where its first 7-gram matched (a shared 13-gram starts with a shared 7-gram), so clean
//! text costs one hash and one lookup per token.

use crate::index::{ngram_hash, BenchIndex, Range};
use crate::normalize::{Tokenizer, Tokens};
use std::collections::HashMap;

/// The outcome for a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Partial,
    Contaminated,
}

/// Which part of the rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Rule {
    #[serde(rename = "ngram13")]
    LongNgram,
    #[serde(rename = "ngram7")]
    ShortNgramRatio,
    #[serde(rename = "exact")]
    ExactShortItem,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Partial => "partial",
            Verdict::Contaminated => "contaminated",
        }
    }
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::LongNgram => "ngram13",
            Rule::ShortNgramRatio => "ngram7",
            Rule::ExactShortItem => "exact",
        }
    }
}

/// A flagged sample: the verdict, the best item and where the match is in the sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub verdict: Verdict,
    pub rule: Rule,
    /// Index into [`BenchIndex::items`].
    pub item: u32,
    /// The best item's 7-gram overlap ratio (1.0 for an exact short-item match).
    pub ratio: f64,
    /// Which part gave the ratio: 0 full, 1 question, 2 answer.
    pub part: usize,
    /// Shared distinct 7-grams with the best item.
    pub shared: u32,
    /// The longest matched token run, as a byte span of the sample.
    pub span: (usize, usize),
}

/// Reusable scratch for scanning samples on one thread.
pub struct Scanner<'a> {
    index: &'a BenchIndex,
    tokenizer: Tokenizer,
    tokens: Tokens,
    all: Vec<u64>,
    hits: Vec<(u32, u64, Range)>,
    long_hits: Vec<(u32, Range)>,
    exact_hits: Vec<(u32, usize, Range)>,
    counts: HashMap<u32, [u32; 3]>,
    distinct: Vec<(u64, Range)>,
}

impl<'a> Scanner<'a> {
    pub fn new(index: &'a BenchIndex) -> Self {
        Scanner {
            index,
            tokenizer: Tokenizer::default(),
            tokens: Tokens::default(),
            all: Vec::new(),
            hits: Vec::new(),
            long_hits: Vec::new(),
            exact_hits: Vec::new(),
            counts: HashMap::new(),
            distinct: Vec::new(),
        }
    }

    /// Classifies `text`; `None` means clean.
    pub fn scan(&mut self, text: &str) -> Option<Finding> {
        let idx = self.index;
        let s = &idx.settings;
        let (sn, ln) = (s.short_n, s.long_n);
        self.tokens.clear();
        self.tokenizer.run(text, &mut self.tokens);
        let toks = &self.tokens.hashes;
        let n = toks.len();
        self.all.clear();
        self.hits.clear();
        self.long_hits.clear();
        self.exact_hits.clear();

        if n >= sn {
            // Hash every 7-gram first, then look them up in a loop of independent reads of the
            // filter, which the CPU overlaps; only the filter's rare hits reach the maps.
            self.all.extend(toks.windows(sn).map(ngram_hash));
            for (i, &h) in self.all.iter().enumerate() {
                if !idx.short_filter.may_contain(h) {
                    continue;
                }
                if let Some(&r) = idx.short_map.get(h) {
                    self.hits.push((i as u32, h, r));
                    if i + ln <= n {
                        if let Some(&lr) = idx.long_map.get(ngram_hash(&toks[i..i + ln])) {
                            self.long_hits.push((i as u32, lr));
                        }
                    }
                }
            }
        }
        if !idx.exact_lens.is_empty() {
            for i in 0..n {
                let bit = (toks[i] & 0xffff) as usize;
                if idx.exact_first[bit / 64] & (1 << (bit % 64)) == 0 {
                    continue;
                }
                for &len in &idx.exact_lens {
                    if i + len <= n {
                        if let Some(&r) = idx.exact_map.get(ngram_hash(&toks[i..i + len])) {
                            self.exact_hits.push((i as u32, len, r));
                        }
                    }
                }
            }
        }
        // Clean unless some evidence was found: a 7-gram that is not boilerplate, a 13-gram (whose
        // 7-grams may all be boilerplate: the 13-gram still counts), or an exact short item.
        if self.hits.iter().all(|h| h.2.len == 0)
            && self.long_hits.is_empty()
            && self.exact_hits.is_empty()
        {
            return None;
        }
        self.decide()
    }

    fn decide(&mut self) -> Option<Finding> {
        let idx = self.index;
        let s = &idx.settings;
        // Distinct 7-grams of the sample, and distinct shared ones.
        self.all.sort_unstable();
        self.all.dedup();
        let sample_ngrams = self.all.len() as u32;
        self.distinct.clear();
        self.distinct
            .extend(self.hits.iter().filter(|h| h.2.len > 0).map(|h| (h.1, h.2)));
        self.distinct.sort_unstable_by_key(|d| d.0);
        self.distinct.dedup_by_key(|d| d.0);
        self.counts.clear();
        for &(_, r) in &self.distinct {
            for &p in &idx.short_postings[r.start as usize..(r.start + r.len) as usize] {
                let c = self.counts.entry(p >> 3).or_insert([0; 3]);
                for (bit, slot) in c.iter_mut().enumerate() {
                    if p & (1 << bit) != 0 {
                        *slot += 1;
                    }
                }
            }
        }
        let ratio_of = |item: u32, c: &[u32; 3]| -> (f64, usize, u32) {
            let info = &idx.items[item as usize];
            let mut best = (0.0, 0, 0);
            for (part, (&size, &shared)) in info.part_ngrams.iter().zip(c).enumerate() {
                if size == 0 || (part > 0 && (size as usize) < s.min_part_ngrams) {
                    continue;
                }
                let r = shared as f64 / size.min(sample_ngrams).max(1) as f64;
                if r > best.0 {
                    best = (r, part, shared);
                }
            }
            best
        };
        let better = |a: (f64, u32), b: (f64, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);

        // Rule 1: a shared 13-gram; the best of the items behind it by ratio.
        let mut long_best: Option<(f64, u32, usize, u32)> = None;
        for &(_, r) in &self.long_hits {
            for &item in &idx.long_postings[r.start as usize..(r.start + r.len) as usize] {
                let (ratio, part, shared) = self
                    .counts
                    .get(&item)
                    .map(|c| ratio_of(item, c))
                    .unwrap_or((0.0, 0, 0));
                if long_best.is_none_or(|b| better((ratio, item), (b.0, b.1))) {
                    long_best = Some((ratio, item, part, shared));
                }
            }
        }
        let (verdict, rule, item, ratio, part, shared) = if let Some((ratio, item, part, shared)) =
            long_best
        {
            (
                Verdict::Contaminated,
                Rule::LongNgram,
                item,
                ratio,
                part,
                shared,
            )
        } else {
            let mut best: Option<(f64, u32, usize, u32)> = None;
            for (&item, c) in &self.counts {
                let (ratio, part, shared) = ratio_of(item, c);
                if best.is_none_or(|b| better((ratio, item), (b.0, b.1))) {
                    best = Some((ratio, item, part, shared));
                }
            }
            let exact = self
                .exact_hits
                .iter()
                .flat_map(|&(_, _, r)| {
                    &idx.exact_postings[r.start as usize..(r.start + r.len) as usize]
                })
                .min()
                .copied();
            match (best, exact) {
                (Some((ratio, item, part, shared)), _) if ratio >= s.contamination_threshold => (
                    Verdict::Contaminated,
                    Rule::ShortNgramRatio,
                    item,
                    ratio,
                    part,
                    shared,
                ),
                (_, Some(item)) => (Verdict::Contaminated, Rule::ExactShortItem, item, 1.0, 0, 0),
                (Some((ratio, item, part, shared)), _) if ratio > s.info_threshold => (
                    Verdict::Partial,
                    Rule::ShortNgramRatio,
                    item,
                    ratio,
                    part,
                    shared,
                ),
                _ => return None,
            }
        };
        let (a, b) = self.matched_run(item, rule);
        let span = if b > a {
            (self.tokens.spans[a].0, self.tokens.spans[b - 1].1)
        } else {
            (0, 0)
        };
        Some(Finding {
            verdict,
            rule,
            item,
            ratio,
            part,
            shared,
            span,
        })
    }

    /// The longest run of tokens matched with `item`, as a token range.
    fn matched_run(&self, item: u32, rule: Rule) -> (usize, usize) {
        let idx = self.index;
        if rule == Rule::ExactShortItem {
            for &(pos, len, r) in &self.exact_hits {
                if idx.exact_postings[r.start as usize..(r.start + r.len) as usize].contains(&item)
                {
                    return (pos as usize, pos as usize + len);
                }
            }
        }
        let sn = idx.settings.short_n;
        let mut best = (0usize, 0usize);
        let mut run: Option<(usize, usize)> = None;
        for &(pos, _, r) in &self.hits {
            let has = idx.short_postings[r.start as usize..(r.start + r.len) as usize]
                .iter()
                .any(|&p| p >> 3 == item);
            if !has {
                continue;
            }
            let pos = pos as usize;
            run = match run {
                Some((a, b)) if pos <= b + 1 => Some((a, pos)),
                _ => Some((pos, pos)),
            };
            if let Some((a, b)) = run {
                if b + sn - a > best.1 - best.0 {
                    best = (a, b + sn);
                }
            }
        }
        if best.1 == best.0 {
            // The item's 7-grams here are all boilerplate: show the 13-gram that matched.
            let ln = idx.settings.long_n;
            for &(pos, r) in &self.long_hits {
                if idx.long_postings[r.start as usize..(r.start + r.len) as usize].contains(&item) {
                    return (pos as usize, pos as usize + ln);
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmark::{BenchmarkSet, Item};
    use crate::index::Settings;

    fn item(id: &str, question: String) -> Item {
        Item {
            benchmark: "test".into(),
            id: id.into(),
            question,
            choices: Vec::new(),
            answer: String::new(),
        }
    }

    #[test]
    fn a_13_gram_counts_when_all_its_7_grams_are_boilerplate() {
        let w: Vec<&str> =
            "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike"
                .split(' ')
                .collect();
        // Item `a` holds the 13-gram; five others hold each of its 7-grams apart, so every 7-gram is
        // in six items (boilerplate at five) while the 13-gram is in one.
        let mut items = vec![item(
            "a",
            format!(
                "{} then nothing else of note happened across the quiet northern valley that long winter",
                w.join(" ")
            ),
        )];
        for k in 0..5 {
            let parts: Vec<String> = (0..7)
                .map(|i| format!("{} sep{k}x{i}", w[i..i + 7].join(" ")))
                .collect();
            items.push(item(&format!("b{k}"), parts.join(" ")));
        }
        let set = BenchmarkSet {
            files: Vec::new(),
            items,
        };
        let index = BenchIndex::build(&set, Settings::default(), &[]).unwrap();
        let mut scanner = Scanner::new(&index);
        let sample = format!(
            "We walked to the market in the morning and wrote down {} before going home for dinner.",
            w.join(" ")
        );
        let f = scanner
            .scan(&sample)
            .expect("the shared 13-gram is evidence");
        assert_eq!(
            (f.verdict, f.rule),
            (Verdict::Contaminated, Rule::LongNgram)
        );
        assert_eq!(index.items[f.item as usize].id, "a");
        assert_eq!(&sample[f.span.0..f.span.1], w.join(" "));
        // The 7-grams alone (no 13-gram) stay boilerplate: clean.
        let apart = format!("{} and then {}", w[..7].join(" "), w[6..].join(" "));
        assert!(scanner.scan(&apart).is_none());
    }
}
