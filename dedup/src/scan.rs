//! Classifying one sample against a [`BenchIndex`] with Phi-4's hybrid rule, and the edit rule.
//!
//! 1. Any 13-gram shared with an item (and not boilerplate) makes the sample **contaminated**
//!    (rule `ngram13`).
//! 2. Otherwise, for each item and part, ratio = shared distinct 7-grams / min(sample's distinct
//!    7-grams, part's 7-grams); the item's ratio is its best part's. A ratio at or above the
//!    contamination threshold is **contaminated** (`ngram7`); above the info threshold, **partial**.
//! 3. A short item's whole token run found in the sample is **contaminated** (`exact`).
//! 4. Beyond Phi-4's rule: an item that shares a few 7-grams and is not contaminated by 1-3 is
//!    aligned word by word with the sample ([`crate::edit`]); a close alignment is an **edited**
//!    copy (`edit`). Rules 1-3 decide exactly as Phi-4's rule does whatever rule 4 finds.
//!
//! Every item a sample touches above the info threshold is reported ([`Finding::matches`]), the
//! strongest first; the sample's verdict is the strongest item's.
//!
//! The scan hashes every 7-gram of the sample and looks it up once; a 13-gram is hashed and looked
//! up only where its first 7-gram matched (a shared 13-gram starts with a shared 7-gram), so clean
//! text costs one hash and one lookup per token.

use crate::edit::Aligner;
use crate::index::{ngram_hash, BenchIndex, Range};
use crate::normalize::{Tokenizer, Tokens};
use std::collections::HashMap;

/// The outcome for a sample, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Partial,
    /// Not contaminated by Phi-4's rule, but an edited copy of an item (the edit rule).
    Edited,
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
    #[serde(rename = "edit")]
    EditAlignment,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Partial => "partial",
            Verdict::Edited => "edited",
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
            Rule::EditAlignment => "edit",
        }
    }
}

/// One item a flagged sample touches, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// Index into [`BenchIndex::items`].
    pub item: u32,
    pub verdict: Verdict,
    pub rule: Rule,
    /// The item's 7-gram overlap ratio (1.0 for an exact short-item match).
    pub ratio: f64,
    /// Which part gave the ratio (or, for the edit rule, the alignment): 0 full, 1 question,
    /// 2 answer.
    pub part: usize,
    /// Shared distinct 7-grams with the item.
    pub shared: u32,
    /// The edit rule's alignment similarity (1 - edits / words); 0 where no alignment was made.
    pub similarity: f64,
    /// The longest matched token run (for the edit rule, the aligned run), as a byte span of
    /// the sample.
    pub span: (usize, usize),
}

/// A flagged sample: its verdict and every item it touches above the info threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The strongest item's verdict.
    pub verdict: Verdict,
    /// The items, strongest first: by verdict, then rule (13-gram, 7-gram ratio, exact run,
    /// edit), then ratio (or similarity), then item order.
    pub matches: Vec<Match>,
}

impl Finding {
    /// The strongest item.
    pub fn best(&self) -> &Match {
        &self.matches[0]
    }
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
    /// Per item behind the shared 7-grams: where they are ([`Scanner::note_runs`]).
    runs: HashMap<u32, ItemRun>,
    aligner: Aligner,
}

/// Where an item's shared 7-grams are in a sample, as token positions.
#[derive(Debug, Clone, Copy)]
struct ItemRun {
    /// The longest run of overlapping or touching 7-grams, as a token range.
    best: (usize, usize),
    /// The run being extended: its first and last 7-gram's start.
    run: (usize, usize),
    first: usize,
    last: usize,
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
            runs: HashMap::new(),
            aligner: Aligner::default(),
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
        self.note_runs();
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
        let mut matches = Vec::new();
        let mut push = |item, verdict, rule, (ratio, part, shared), similarity, run| {
            matches.push((
                Match {
                    item,
                    verdict,
                    rule,
                    ratio,
                    part,
                    shared,
                    similarity,
                    span: (0, 0),
                },
                run,
            ))
        };

        // Rule 1: every item behind a shared 13-gram.
        let mut long: Vec<u32> = self
            .long_hits
            .iter()
            .flat_map(|&(_, r)| &idx.long_postings[r.start as usize..(r.start + r.len) as usize])
            .copied()
            .collect();
        long.sort_unstable();
        long.dedup();
        for &item in &long {
            let ratio = self
                .counts
                .get(&item)
                .map(|c| ratio_of(item, c))
                .unwrap_or((0.0, 0, 0));
            let run = self.run_of(item, Rule::LongNgram);
            push(
                item,
                Verdict::Contaminated,
                Rule::LongNgram,
                ratio,
                0.0,
                run,
            );
        }
        // Rules 2 and 4: every other item with shared 7-grams.
        let mut items: Vec<(u32, [u32; 3])> = self
            .counts
            .iter()
            .filter(|(item, _)| long.binary_search(item).is_err())
            .map(|(&item, &c)| (item, c))
            .collect();
        items.sort_unstable_by_key(|e| e.0);
        for (item, c) in items {
            let ratio = ratio_of(item, &c);
            if ratio.0 >= s.contamination_threshold {
                let run = self.run_of(item, Rule::ShortNgramRatio);
                push(
                    item,
                    Verdict::Contaminated,
                    Rule::ShortNgramRatio,
                    ratio,
                    0.0,
                    run,
                );
                continue;
            }
            let aligned = match c.iter().max() {
                Some(&shared) if s.edit_rule && shared >= s.edit_min_shared => self.align(item),
                _ => None,
            };
            match aligned {
                Some(a) if a.similarity >= s.edit_threshold => {
                    let ratio = (ratio.0, a.part, ratio.2);
                    push(
                        item,
                        Verdict::Edited,
                        Rule::EditAlignment,
                        ratio,
                        a.similarity,
                        a.run,
                    )
                }
                _ if ratio.0 > s.info_threshold => {
                    let run = self.run_of(item, Rule::ShortNgramRatio);
                    push(
                        item,
                        Verdict::Partial,
                        Rule::ShortNgramRatio,
                        ratio,
                        0.0,
                        run,
                    )
                }
                _ => {}
            }
        }
        // Rule 3: short items found as a whole run.
        let mut exact: Vec<u32> = self
            .exact_hits
            .iter()
            .flat_map(|&(_, _, r)| {
                &idx.exact_postings[r.start as usize..(r.start + r.len) as usize]
            })
            .copied()
            .collect();
        exact.sort_unstable();
        exact.dedup();
        for item in exact {
            let run = self.run_of(item, Rule::ExactShortItem);
            let ratio = (1.0, 0, 0);
            push(
                item,
                Verdict::Contaminated,
                Rule::ExactShortItem,
                ratio,
                0.0,
                run,
            );
        }
        if matches.is_empty() {
            return None;
        }
        let rank = |r: Rule| match r {
            Rule::LongNgram => 0,
            Rule::ShortNgramRatio => 1,
            Rule::ExactShortItem => 2,
            Rule::EditAlignment => 3,
        };
        let score = |m: &Match| match m.rule {
            Rule::EditAlignment => m.similarity,
            _ => m.ratio,
        };
        matches.sort_by(|(a, _), (b, _)| {
            b.verdict
                .cmp(&a.verdict)
                .then(rank(a.rule).cmp(&rank(b.rule)))
                .then(score(b).total_cmp(&score(a)))
                .then(a.item.cmp(&b.item))
        });
        let spans = &self.tokens.spans;
        let matches: Vec<Match> = matches
            .into_iter()
            .map(|(mut m, (a, b))| {
                if b > a {
                    m.span = (spans[a].0, spans[b - 1].1);
                }
                m
            })
            .collect();
        Some(Finding {
            verdict: matches[0].verdict,
            matches,
        })
    }

    /// For every item behind the shared 7-grams, in one pass over them: the longest run of its
    /// 7-grams that overlap or touch, and the first and last of them.
    fn note_runs(&mut self) {
        let idx = self.index;
        let sn = idx.settings.short_n;
        self.runs.clear();
        for &(pos, _, r) in &self.hits {
            let pos = pos as usize;
            for &p in &idx.short_postings[r.start as usize..(r.start + r.len) as usize] {
                let e = self.runs.entry(p >> 3).or_insert(ItemRun {
                    best: (pos, pos + sn),
                    run: (pos, pos),
                    first: pos,
                    last: pos,
                });
                e.run = if pos <= e.run.1 + 1 {
                    (e.run.0, pos)
                } else {
                    (pos, pos)
                };
                if e.run.1 + sn - e.run.0 > e.best.1 - e.best.0 {
                    e.best = (e.run.0, e.run.1 + sn);
                }
                e.last = pos;
            }
        }
    }

    /// The token run that shows `item`'s match under `rule`.
    fn run_of(&self, item: u32, rule: Rule) -> (usize, usize) {
        let idx = self.index;
        if rule == Rule::ExactShortItem {
            for &(pos, len, r) in &self.exact_hits {
                if idx.exact_postings[r.start as usize..(r.start + r.len) as usize].contains(&item)
                {
                    return (pos as usize, pos as usize + len);
                }
            }
        }
        if let Some(r) = self.runs.get(&item) {
            return r.best;
        }
        // The item's 7-grams here are all boilerplate: show the 13-gram that matched.
        let ln = idx.settings.long_n;
        for &(pos, r) in &self.long_hits {
            if idx.long_postings[r.start as usize..(r.start + r.len) as usize].contains(&item) {
                return (pos as usize, pos as usize + ln);
            }
        }
        (0, 0)
    }

    /// The edit rule's alignment of `item` with the sample around its shared 7-grams.
    fn align(&mut self, item: u32) -> Option<crate::edit::Alignment> {
        let idx = self.index;
        let s = &idx.settings;
        let r = *self.runs.get(&item)?;
        let parts = idx.texts.parts(item);
        let m = parts[0].len();
        let n = self.tokens.hashes.len();
        let start = r.first.saturating_sub(m);
        // Shared 7-grams spread far apart are not one copy: the window is at most 8 items long.
        let end = (r.last + s.short_n + m).min(n).min(start + 8 * m.max(1));
        self.aligner.best_alignment(
            parts,
            &self.tokens.hashes,
            (start, end),
            s.edit_min_tokens,
            s.edit_threshold,
        )
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
        let m = f.best();
        assert_eq!(
            (f.verdict, m.rule),
            (Verdict::Contaminated, Rule::LongNgram)
        );
        assert_eq!(index.items[m.item as usize].id, "a");
        assert_eq!(&sample[m.span.0..m.span.1], w.join(" "));
        // The 7-grams alone (no 13-gram) stay boilerplate: clean.
        let apart = format!("{} and then {}", w[..7].join(" "), w[6..].join(" "));
        assert!(scanner.scan(&apart).is_none());
    }
}
