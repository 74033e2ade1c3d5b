//! The mix's documents in order: at each step the class furthest behind its share of the tokens
//! emitted so far (largest deficit first, as Megatron-LM's blended datasets pick), its next
//! document in its current epoch's seeded order, until every class has reached its target. A class
//! ends at the document boundary nearest its target: its last document is not taken when it would
//! overshoot the target by more than leaving it out falls short (a class always gets at least one
//! document), so each class misses its target by at most half a document, not a whole one. The
//! same plan, documents and seed give the same order.

use crate::permute::Permutation;
use crate::plan::{Achieved, MixPlan, MixReport};
use crate::MixClass;
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The interleaving's version, in a mix's fingerprint: raised whenever the same plan, documents
/// and seed would give another order (2: classes end at the boundary nearest their target).
pub const VERSION: u32 = 2;

/// One document of the mix: the `doc`-th of its class, in its class's epoch `epoch` (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub class: MixClass,
    pub doc: u64,
    pub epoch: u32,
    pub tokens: u64,
}

struct ClassState {
    class: MixClass,
    share: f64,
    target: u64,
    docs: u64,
    emitted: u64,
    picked: u64,
    order: Permutation,
    /// Ended at the boundary nearest its target.
    done: bool,
}

impl ClassState {
    /// The next document: its epoch and its index (reshuffling the order at an epoch's start).
    /// Called once per document picked: a class whose next document is left out ends there.
    fn next_doc(&mut self, seed: u64) -> (u64, u64) {
        let epoch = self.picked / self.docs;
        let at = self.picked % self.docs;
        if at == 0 && epoch > 0 {
            self.order = Permutation::new(self.docs, epoch_key(seed, self.class, epoch));
        }
        (epoch, self.order.get(at))
    }
}

/// Walks a plan; `tokens_of(class, doc)` gives a document's tokens.
pub struct Interleaver<F> {
    plan: MixPlan,
    classes: Vec<ClassState>,
    total: u64,
    seed: u64,
    tokens_of: F,
}

fn epoch_key(seed: u64, class: MixClass, epoch: u64) -> u64 {
    xxh3_64_with_seed(format!("{}:{epoch}", class.as_str()).as_bytes(), seed)
}

impl<F: FnMut(MixClass, u64) -> u64> Interleaver<F> {
    /// `docs`: documents per class (each class of the plan must have some).
    pub fn new(plan: MixPlan, docs: &BTreeMap<MixClass, u64>, seed: u64, tokens_of: F) -> Self {
        let total = plan.target_tokens.max(1) as f64;
        let classes = plan
            .classes
            .iter()
            .filter(|(_, p)| p.target_tokens > 0)
            .map(|(&class, p)| {
                let n = docs.get(&class).copied().unwrap_or(0);
                ClassState {
                    class,
                    share: p.target_tokens as f64 / total,
                    target: p.target_tokens,
                    docs: n,
                    emitted: 0,
                    picked: 0,
                    order: Permutation::new(n, epoch_key(seed, class, 0)),
                    done: false,
                }
            })
            .filter(|c| c.docs > 0)
            .collect();
        Interleaver {
            plan,
            classes,
            total: 0,
            seed,
            tokens_of,
        }
    }

    /// What the mix achieved so far against its plan.
    pub fn report(&self) -> MixReport {
        let total = self.total.max(1) as f64;
        let plan_total = self.plan.target_tokens.max(1) as f64;
        let classes = self
            .classes
            .iter()
            .map(|c| {
                let share = c.emitted as f64 / total;
                let target_share = c.target as f64 / plan_total;
                let round = |x: f64, d: f64| (x * d).round() / d;
                (
                    c.class,
                    Achieved {
                        tokens: c.emitted,
                        documents: c.picked,
                        share: round(share, 1e6),
                        target_share: round(target_share, 1e6),
                        error_pp: round((share - target_share) * 100.0, 1e4),
                        epochs: c.picked.div_ceil(c.docs.max(1)) as u32,
                    },
                )
            })
            .collect();
        MixReport {
            plan: self.plan.clone(),
            achieved_tokens: self.total,
            classes,
        }
    }
}

impl<F: FnMut(MixClass, u64) -> u64> Iterator for Interleaver<F> {
    type Item = Pick;

    fn next(&mut self) -> Option<Pick> {
        loop {
            let total = self.total as f64;
            let mut best: Option<(usize, f64)> = None;
            for (k, c) in self.classes.iter().enumerate() {
                if c.done || c.emitted >= c.target {
                    continue;
                }
                let deficit = c.share * total - c.emitted as f64;
                if best.is_none_or(|(_, d)| deficit > d) {
                    best = Some((k, deficit));
                }
            }
            let (k, _) = best?;
            let seed = self.seed;
            let c = &mut self.classes[k];
            let (epoch, doc) = c.next_doc(seed);
            let class = c.class;
            let tokens = (self.tokens_of)(class, doc);
            let c = &mut self.classes[k];
            let short = c.target - c.emitted;
            if c.picked > 0 && tokens.saturating_sub(short) > short {
                c.done = true;
                continue;
            }
            c.picked += 1;
            c.emitted += tokens;
            self.total += tokens;
            return Some(Pick {
                class,
                doc,
                epoch: epoch as u32,
                tokens,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, MixSettings};

    #[test]
    fn shares_hold_within_half_a_point_and_the_order_is_deterministic() {
        // Documents of 50 to 149 tokens; synthetic is short (repeated), the rest are not.
        let len = |class: MixClass, doc: u64| 50 + (doc * 37 + class as u64 * 11) % 100;
        let docs: BTreeMap<MixClass, u64> = BTreeMap::from([
            (MixClass::Synthetic, 300),
            (MixClass::WebRewrite, 400),
            (MixClass::Web, 400),
            (MixClass::Code, 500),
            (MixClass::Targeted, 300),
        ]);
        let supply = docs
            .iter()
            .map(|(&c, &n)| (c, (0..n).map(|d| len(c, d)).sum()))
            .collect();
        let settings = MixSettings {
            weights: MixClass::ALL
                .iter()
                .map(|c| (*c, c.default_weight()))
                .collect(),
            target_tokens: Some(150_000),
            policies: BTreeMap::new(),
        };
        let p = plan(&supply, &settings).unwrap();
        let run = || {
            let mut it = Interleaver::new(p.clone(), &docs, 42, len);
            let picks: Vec<Pick> = it.by_ref().collect();
            (picks, it.report())
        };
        let (picks, report) = run();
        assert_eq!(run().0, picks, "same inputs and seed, same order");
        for (c, a) in &report.classes {
            assert!(a.error_pp.abs() < 0.5, "{c:?}: {a:?}");
        }
        // Synthetic: 60,000 tokens of its ~29,850: three epochs begun, each a permutation.
        let s = &report.classes[&MixClass::Synthetic];
        assert_eq!(s.epochs, 3, "{s:?}");
        let first: Vec<u64> = picks
            .iter()
            .filter(|p| p.class == MixClass::Synthetic && p.epoch == 0)
            .map(|p| p.doc)
            .collect();
        let second: Vec<u64> = picks
            .iter()
            .filter(|p| p.class == MixClass::Synthetic && p.epoch == 1)
            .map(|p| p.doc)
            .collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..300).collect::<Vec<_>>());
        assert_ne!(first, second, "each epoch is reshuffled");
        // Classes are interleaved from the start, not one after another.
        let head: std::collections::BTreeSet<MixClass> =
            picks[..20].iter().map(|p| p.class).collect();
        assert_eq!(head.len(), 5);
        // Another seed, another order.
        let other: Vec<Pick> = Interleaver::new(p, &docs, 43, len).collect();
        assert_ne!(other, picks);
    }

    #[test]
    fn a_class_of_large_documents_ends_at_the_boundary_nearest_its_target() {
        // Web: 1,000 documents of 10 tokens; code: 10 of 1,000. Code's target of 2,400 lies between
        // 2,000 (two documents, 400 short) and 3,000 (three, 600 over): it stops at two.
        let len = |class: MixClass, _doc: u64| if class == MixClass::Code { 1000 } else { 10 };
        let docs = BTreeMap::from([(MixClass::Web, 1000), (MixClass::Code, 10)]);
        let supply = BTreeMap::from([(MixClass::Web, 10_000), (MixClass::Code, 10_000)]);
        let settings = |target| MixSettings {
            weights: BTreeMap::from([(MixClass::Web, 0.5), (MixClass::Code, 0.5)]),
            target_tokens: Some(target),
            policies: BTreeMap::new(),
        };
        let tokens = |target| {
            let p = plan(&supply, &settings(target)).unwrap();
            let mut it = Interleaver::new(p, &docs, 1, len);
            it.by_ref().for_each(drop);
            let r = it.report();
            (
                r.classes[&MixClass::Web].tokens,
                r.classes[&MixClass::Code].tokens,
            )
        };
        assert_eq!(tokens(4_800), (2_400, 2_000));
        // 2,700: three documents overshoot by 300, less than two fall short (700).
        assert_eq!(tokens(5_400), (2_700, 3_000));
        // A class always gets a document, however small its target.
        assert_eq!(tokens(400), (200, 1_000));
    }
}
