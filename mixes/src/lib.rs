//! Mixing: how many tokens of each class a training mix takes, and in which order its documents
//! go, so that the same inputs and seed give the same bytes.
//!
//! The data flows through these modules in order:
//! - [`plan`]: per class, the target tokens from the weights (by tokens; Phi-4's 40% synthetic,
//!   15% web rewrites, 15% web, 20% code, 10% targeted by default) and a target total, and what a
//!   class short of its share does by its policy: repeat (up to a number of epochs), fail, or
//!   renormalise (the total shrinks so the class fits, and the plan says so);
//! - [`permute`]: each epoch of a class in its own order, a seeded permutation of the documents'
//!   indices that needs no memory per document;
//! - [`interleave`]: the mix's documents in order, by largest deficit first (as Megatron-LM's
//!   blended datasets), with each class's epochs, until the class's target is met;
//! - the plan's [`plan::MixReport`]: target against achieved share per class, epochs per class;
//! - [`tokshard`]: token shards, the trainer's input (tokens, document boundaries, loss masks), in
//!   the format `docs/token-shards.md` documents;
//! - [`manifest`]: every file of the mix with its counts and checksum, checked by readers;
//! - [`megatron`]: the same documents as Megatron-LM's indexed dataset (`.bin` + `.idx`).

pub mod interleave;
pub mod manifest;
pub mod megatron;
pub mod permute;
pub mod plan;
pub mod tokshard;

pub use corpus::sample::MixClass;

/// What is wrong with a mix, before any work is done.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("mix.weights: {0}")]
    Weights(String),
    #[error("mix.target_tokens: {0}")]
    Target(String),
    #[error("class `{class}` has a weight of {weight} but no data")]
    EmptyClass { class: &'static str, weight: f64 },
    #[error("class `{class}` has {have} unique tokens, fewer than its share of {need} (policy `fail`; set `repeat` or `renormalise` to allow it)")]
    Short {
        class: &'static str,
        have: u64,
        need: u64,
    },
    #[error("class `{class}` would need {epochs:.2} epochs of its {have} unique tokens, more than its `max_epochs` of {max}")]
    TooManyEpochs {
        class: &'static str,
        have: u64,
        epochs: f64,
        max: f64,
    },
}
