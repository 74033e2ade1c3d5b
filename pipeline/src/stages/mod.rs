//! The stages: what each type of stage does, made from its declared configuration, and its
//! fingerprint.
//!
//! Most stages work one sample at a time behind the small [`Stage`] trait: a *filter* keeps or
//! drops each input (and writes only its decisions), a *transform* makes new samples from it. The
//! per-sample runner ([`per_sample`]) streams a unit's view through either, reusing what the same
//! stage already decided for inputs it has seen. Sources ([`source`]) and exact dedup
//! ([`dedup_exact`], which must see every input) have units of their own.
//!
//! A stage's fingerprint hashes its canonical configuration, its implementation version, what it
//! reads besides samples (template text, benchmark files) and its inputs' fingerprints; never
//! runtime knobs. New stage types (generation, curation) implement [`Stage`] and add a variant to
//! [`crate::recipe::StageConfig`].

pub mod curation;
pub mod decontaminate;
pub mod dedup_exact;
pub mod generate;
pub mod near_dup;
pub mod per_sample;
pub mod source;
pub mod template;

use crate::recipe::{Recipe, StageConfig};
use crate::sample::Sample;
use crate::Result;
use serde_json::json;
use xxhash_rust::xxh3::xxh3_128;

/// What a per-sample stage does with one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The input goes on unchanged (filters).
    Keep,
    /// The input is dropped, for this reason (counted in the report).
    Drop(String),
    /// These samples replace the input (transforms).
    Emit(Vec<Sample>),
}

/// How a per-sample stage's results are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keeps or drops: its unit writes one decision per input, not the samples again.
    Filter,
    /// Makes new samples: its unit writes a shard of them.
    Transform,
}

/// A stage that works one sample at a time.
pub trait Stage: Send + Sync {
    fn kind(&self) -> Kind;
    /// The outcome for one input. A filter returns [`Outcome::Keep`] or [`Outcome::Drop`].
    fn process(&self, input: &Sample) -> Result<Outcome>;
    /// Outcomes for several inputs at once, in order (override to share scratch space).
    fn process_batch(&self, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        inputs.iter().map(|s| self.process(s)).collect()
    }
    /// Whether [`Stage::process`] reads its inputs' lineage (else it arrives empty). A transform
    /// that passes inputs on (kept, or with fields added) reads it, so that it is not lost.
    fn reads_lineage(&self) -> bool {
        false
    }
    /// What a transform changed in `input` to make `output`, counted by kind for the report
    /// (`pii_email`: 2). Worked out from the two samples, so results reused from an earlier unit
    /// count as computed ones do.
    fn changes(&self, input: &Sample, output: &Sample) -> Vec<(&'static str, u64)> {
        let _ = (input, output);
        Vec::new()
    }
    /// Inputs handed to [`Stage::process_unit`] at once, at least: the runner gathers the view's
    /// batches up to this many (default: one batch). A stage that keeps many inputs in flight
    /// (generation) asks for more, so that in-flight work does not drain at every batch's end.
    fn inputs_at_once(&self) -> usize {
        1
    }
    /// One-time set-up (building an index), done before a batch of units runs.
    fn prepare(&self) -> Result<()> {
        Ok(())
    }
    /// Outcomes for a batch of one unit's inputs, in order. The default runs
    /// [`Stage::process_batch`] on chunks across the cores; a stage that keeps state per unit
    /// (generation's request cache) or runs its inputs concurrently itself overrides it.
    fn process_unit(&self, unit: &UnitPlace, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        let _ = unit;
        use rayon::prelude::*;
        Ok(inputs
            .par_chunks(PROCESS_CHUNK)
            .map(|c| self.process_batch(c))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect())
    }
}

/// Inputs handed to [`Stage::process_batch`] at once by the default [`Stage::process_unit`].
const PROCESS_CHUNK: usize = 32;

/// Where a unit runs: the output folder, and the unit's stage and slot (stable across changes of
/// the stage's settings, unlike its key).
pub struct UnitPlace<'a> {
    pub root: &'a std::path::Path,
    pub stage: &'a str,
    pub slot: &'a str,
}

/// A node of the build, ready to run its units.
pub enum Runner {
    /// Reads a source's files.
    Source(String),
    /// A per-sample stage.
    PerSample(Box<dyn Stage>),
    /// Exact deduplication (whole-set).
    DedupExact,
    /// Near-duplicate removal (whole-set), with these settings.
    NearDup(dedup::neardup::Settings),
    /// Writes final output files.
    Output,
}

impl Runner {
    /// Does the set-up a runner needs once per process (the benchmark index), before units run.
    pub fn prepare(&self) -> Result<()> {
        match self {
            Runner::PerSample(s) => s.prepare(),
            _ => Ok(()),
        }
    }
}

/// Makes the running stage for `config`, whose fingerprint is `fp`.
pub fn build(recipe: &Recipe, config: &StageConfig, fp: &str) -> Result<Runner> {
    Ok(match config {
        StageConfig::DedupExact(_) => Runner::DedupExact,
        StageConfig::NearDup(n) => Runner::NearDup(n.minhash),
        StageConfig::Signals(_) => Runner::PerSample(Box::new(curation::ComputeSignals)),
        StageConfig::Filter(f) => Runner::PerSample(Box::new(curation::SqlFilter::new(f)?)),
        StageConfig::Pii(p) => Runner::PerSample(Box::new(curation::Pii::new(p, fp)?)),
        StageConfig::Decontaminate(d) => {
            Runner::PerSample(Box::new(decontaminate::Decontaminate::new(recipe, d)?))
        }
        StageConfig::Template(t) => Runner::PerSample(Box::new(template::Template::new(t, fp)?)),
        StageConfig::WebRewrite(_)
        | StageConfig::SelfRevise(_)
        | StageConfig::MultiAgent(_)
        | StageConfig::InstructionReversal(_) => {
            Runner::PerSample(Box::new(generate::Generation::new(recipe, config, fp)?))
        }
    })
}

/// Hex xxh3-128 of a canonical JSON value.
pub fn fingerprint(value: &serde_json::Value) -> String {
    format!("{:032x}", xxh3_128(value.to_string().as_bytes()))
}

/// Version of each stage's implementation: bump when a stage's output for the same input changes.
const DEDUP_EXACT_VERSION: u32 = 1;
const NEAR_DUP_VERSION: u32 = 1;

/// The fingerprint of a stage, given its inputs' fingerprints (in declared order).
pub fn stage_fingerprint(
    recipe: &Recipe,
    config: &StageConfig,
    inputs: &[String],
) -> Result<String> {
    let implementation = match config {
        StageConfig::DedupExact(_) => json!({"version": DEDUP_EXACT_VERSION}),
        StageConfig::NearDup(_) => json!({
            "version": NEAR_DUP_VERSION,
            "normalization": dedup::normalize::NORMALIZATION_VERSION,
        }),
        StageConfig::Signals(_) => curation::signals_implementation(),
        StageConfig::Filter(_) => curation::filter_implementation(),
        StageConfig::Pii(_) => curation::pii_implementation(),
        StageConfig::Decontaminate(d) => decontaminate::implementation(recipe, d)?,
        StageConfig::Template(t) => template::implementation(t),
        StageConfig::WebRewrite(_)
        | StageConfig::SelfRevise(_)
        | StageConfig::MultiAgent(_)
        | StageConfig::InstructionReversal(_) => generate::implementation(recipe, config),
    };
    let mut config = serde_json::to_value(config).unwrap_or_default();
    // The sort budget is a runtime knob: it changes no decision.
    if let Some(m) = config.get_mut("minhash").and_then(|m| m.as_object_mut()) {
        m.remove("memory_mb");
    }
    Ok(fingerprint(&json!({
        "config": config,
        "implementation": implementation,
        "inputs": inputs,
    })))
}
