//! Decontamination: does training text overlap benchmark test sets?
//!
//! `dedup` implements Phi-4's hybrid n-gram rule (technical report, appendix B, algorithm 1) and
//! the audits built on it. The data flows through these modules in order:
//!
//! - [`normalize`]: one versioned normalisation for benchmark items and samples alike (NFKC,
//!   lowercase, punctuation to spaces, word tokens, one token per CJK character);
//! - [`benchmark`]: test sets, bundled (`standard`) or from files in any schema;
//! - [`index`]: every item's 13-grams and 7-grams as seeded xxh3 hashes, with the items behind
//!   each 7-gram, minus boilerplate n-grams;
//! - [`scan`]: the verdict for one sample (clean, partial, edited or contaminated, and why), with
//!   every item it touches;
//! - [`edit`]: the edit rule's word alignment, for copies with words changed;
//! - [`minhash`]: near-duplicates by MinHash signatures and LSH buckets (generation's quality
//!   gates);
//! - [`neardup`]: near-duplicate removal over whole corpora of any size (MinHash, LSH buckets on
//!   disk, candidates verified by exact Jaccard, union-find clusters), into kept and removed
//!   documents;
//! - [`audit`]: whole corpora, streamed on all cores, into `audit.json`, `samples.jsonl`,
//!   `hits.parquet` and `report.md`, and, when decontaminating, kept and removed documents.
//!
//! ```
//! use dedup::{benchmark::{BenchmarkSet, FieldMap}, index::{BenchIndex, Settings}, scan::{Scanner, Verdict}};
//! let set = BenchmarkSet::load(&["gsm8k"], &FieldMap::default()).unwrap();
//! let index = BenchIndex::build(&set, Settings::default(), &[]).unwrap();
//! let mut scanner = Scanner::new(&index);
//! let leaked = format!("Homework: {}", set.items[0].question);
//! assert_eq!(scanner.scan(&leaked).unwrap().verdict, Verdict::Contaminated);
//! assert!(scanner.scan("A clean sentence about ducks and eggs.").is_none());
//! ```

pub mod audit;
pub mod benchmark;
pub mod edit;
mod error;
pub mod index;
pub mod minhash;
pub mod neardup;
pub mod normalize;
pub mod report;
pub mod scan;
mod table;

pub use error::Error;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
