//! Quality gates: checks every generation stage applies to what its flow made, after the flow's
//! own checks, with thresholds in the recipe (`gates:`). A sample that fails one is dropped with
//! the gate's reason:
//!
//! - `below_min_chars`, `above_max_chars`: length bounds on the sample's text (every turn of a
//!   chat);
//! - `refusal`: a turn that opens by refusing ("I'm sorry, but I can't ...", "As an AI ...");
//! - `boilerplate`: assistant chatter or leftovers that do not belong in training data ("I hope
//!   this helps", "Sure, here is", an unrendered `{{ placeholder }}`, "lorem ipsum"), plus the
//!   recipe's own phrases;
//! - `duplicate`, `near_duplicate`: the same text (after normalisation), or one whose MinHash
//!   estimate of word 5-gram Jaccard similarity reaches `near_threshold`, as a sample already kept
//!   in this unit of work. Inputs are checked in their order, so the first is kept and a rebuild
//!   keeps the same ones. Units run apart: duplicates across units are left to a `dedup_exact`
//!   stage after the generation.

use dedup::minhash::{MinHashSettings, NearIndex};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use xxhash_rust::xxh3::xxh3_128;

/// Openings of replies that refuse (lowercased).
pub const REFUSALS: &[&str] = &[
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "as an ai",
    "i apologize",
    "i'm unable",
    "i am unable",
];

/// Phrases of assistant chatter and leftovers (lowercased, matched anywhere).
pub const BOILERPLATE: &[&str] = &[
    "as an ai language model",
    "i hope this helps",
    "let me know if you",
    "feel free to ask",
    "sure, here is",
    "sure, here's",
    "sure! here",
    "certainly! here",
    "here is the rewritten",
    "here's the rewritten",
    "lorem ipsum",
    "{{",
    "}}",
    "[insert ",
];

/// Which duplicates of kept samples are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duplicates {
    Off,
    /// The same normalised text.
    Exact,
    /// Exact, and near (MinHash, `near_threshold`).
    Near,
}

/// The gates' settings (`gates:` in a generation stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(default)]
    pub min_chars: usize,
    #[serde(default)]
    pub max_chars: Option<usize>,
    #[serde(default = "yes")]
    pub refusals: bool,
    #[serde(default = "yes")]
    pub boilerplate: bool,
    /// More boilerplate phrases (matched case-insensitively anywhere).
    #[serde(default)]
    pub boilerplate_phrases: Vec<String>,
    #[serde(default = "near")]
    pub duplicates: Duplicates,
    #[serde(default = "threshold")]
    pub near_threshold: f64,
}

fn yes() -> bool {
    true
}
fn near() -> Duplicates {
    Duplicates::Near
}
fn threshold() -> f64 {
    0.8
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_chars: 0,
            max_chars: None,
            refusals: true,
            boilerplate: true,
            boilerplate_phrases: Vec::new(),
            duplicates: near(),
            near_threshold: threshold(),
        }
    }
}

impl Gates {
    /// Problems with the settings, by field (under `gates.`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(max) = self.max_chars {
            if max < self.min_chars.max(1) {
                p.push((
                    "gates.max_chars".into(),
                    format!(
                        "must be at least min_chars ({}) and 1, got {max}",
                        self.min_chars
                    ),
                ));
            }
        }
        if !(self.near_threshold > 0.0 && self.near_threshold <= 1.0) {
            p.push((
                "gates.near_threshold".into(),
                format!(
                    "must be more than 0 and at most 1, got {}",
                    self.near_threshold
                ),
            ));
        }
        if let Some(k) = self
            .boilerplate_phrases
            .iter()
            .position(|s| s.trim().is_empty())
        {
            p.push((
                format!("gates.boilerplate_phrases[{k}]"),
                "an empty phrase would match every sample".into(),
            ));
        }
        p
    }

    /// A gate keeper for one unit of work.
    pub fn keeper(&self) -> Keeper {
        Keeper {
            gates: self.clone(),
            phrases: self
                .boilerplate_phrases
                .iter()
                .map(|p| p.to_lowercase())
                .collect(),
            exact: HashSet::new(),
            near: NearIndex::new(MinHashSettings::default(), self.near_threshold),
        }
    }
}

/// The gates with what one unit kept so far.
pub struct Keeper {
    gates: Gates,
    phrases: Vec<String>,
    exact: HashSet<u128>,
    near: NearIndex,
}

impl Keeper {
    /// Checks a sample given as its turns' texts; keeps it (for the duplicate gates) when it
    /// passes, else says which gate dropped it.
    pub fn check(&mut self, turns: &[&str]) -> Result<(), &'static str> {
        let g = &self.gates;
        let chars: usize = turns.iter().map(|t| t.chars().count()).sum();
        if chars < g.min_chars {
            return Err("below_min_chars");
        }
        if g.max_chars.is_some_and(|m| chars > m) {
            return Err("above_max_chars");
        }
        let lower: Vec<String> = turns.iter().map(|t| t.to_lowercase()).collect();
        if g.refusals
            && lower
                .iter()
                .any(|t| REFUSALS.iter().any(|r| t.trim_start().starts_with(r)))
        {
            return Err("refusal");
        }
        if g.boilerplate
            && lower.iter().any(|t| {
                BOILERPLATE.iter().any(|p| t.contains(p))
                    || self.phrases.iter().any(|p| t.contains(p.as_str()))
            })
        {
            return Err("boilerplate");
        }
        if g.duplicates == Duplicates::Off {
            return Ok(());
        }
        let text = turns.join("\n");
        let key = xxh3_128(dedup::normalize::normalize(&text).as_bytes());
        if self.exact.contains(&key) {
            return Err("duplicate");
        }
        if g.duplicates == Duplicates::Near && self.near.check_and_keep(&text).is_some() {
            return Err("near_duplicate");
        }
        self.exact.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gate_drops_with_its_reason_and_the_first_of_duplicates_is_kept() {
        let gates = Gates {
            min_chars: 10,
            max_chars: Some(2000),
            boilerplate_phrases: vec!["In This Essay".into()],
            ..Gates::default()
        };
        assert!(gates.problems().is_empty());
        let mut k = gates.keeper();
        let long: String = (0..120).map(|i| format!("word{i} ")).collect();
        assert_eq!(k.check(&["short"]), Err("below_min_chars"));
        assert_eq!(k.check(&[&long.repeat(3)]), Err("above_max_chars"));
        assert_eq!(
            k.check(&["What is 2+2?", "I'm sorry, but I can't help."]),
            Err("refusal")
        );
        assert_eq!(
            k.check(&["Sorting is stable. I hope this helps!"]),
            Err("boilerplate")
        );
        assert_eq!(
            k.check(&["in this essay we look at sorting"]),
            Err("boilerplate")
        );
        assert_eq!(k.check(&["Explain {{ topic }} to me"]), Err("boilerplate"));
        assert_eq!(k.check(&[&long]), Ok(()));
        assert_eq!(k.check(&[&long.to_uppercase()]), Err("duplicate"));
        let near = long.replacen("word60 ", "other ", 1);
        assert_eq!(k.check(&[&near]), Err("near_duplicate"));
        let other: String = (0..120).map(|i| format!("term{i} ")).collect();
        assert_eq!(k.check(&[&other]), Ok(()));

        let off = Gates {
            duplicates: Duplicates::Off,
            ..Gates::default()
        };
        let mut k = off.keeper();
        assert_eq!((k.check(&[&long]), k.check(&[&long])), (Ok(()), Ok(())));
        let bad = Gates {
            min_chars: 5,
            max_chars: Some(4),
            near_threshold: 0.0,
            boilerplate_phrases: vec![" ".into()],
            ..Gates::default()
        };
        let fields: Vec<String> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            [
                "gates.max_chars",
                "gates.near_threshold",
                "gates.boilerplate_phrases[0]"
            ]
        );
    }
}
