//! Recipes, the plan, the stages, the unit index (store), executors and builds.
//!
//! Data flows through these modules in order:
//!
//! - [`recipe`] reads and checks a YAML recipe (positions from [`yaml`]), reporting every problem
//!   with file, line, column and field path;
//! - [`plan`] orders the recipe's sources and stages and fingerprints each from the recipe alone;
//! - [`stages`] are what each stage type does: sources read files into parts, per-sample stages
//!   (filters, transforms) behind one small trait, exact dedup by hash partition;
//! - [`view`] is what a unit reads: a shard of samples ([`sample`], in `corpus::shard` files) seen
//!   through the decisions of the filters after it;
//! - [`unit`] describes a unit of work and its completion record; [`executor`] runs units on this
//!   machine or as Slurm job arrays;
//! - [`store`] indexes done units in SQLite (never samples);
//! - [`build`] runs a build node by node, recomputing only units whose inputs or fingerprint
//!   changed, then [`output`] writes the final files and the manifest, and [`report`] says what
//!   happened; [`lineage`] answers where a sample came from;
//! - [`mix`] mixes the final samples at the recipe's weights into token shards, document shards
//!   and Megatron-LM's indexed dataset, with a manifest the trainer checks.
//!
//! Samples move between stages as Parquet files on disk, never all in memory: a unit holds one
//! batch of its view at a time, so memory is set by the number of cores, not the corpus.
//!
//! ```no_run
//! use pipeline::build::{build, BuildOptions};
//! use pipeline::executor::Executor;
//! use pipeline::report::NoProgress;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let recipe = pipeline::recipe::Recipe::load("examples/recipe.yaml".as_ref())?;
//! let opts = BuildOptions { executor: Executor::Local, force: vec![], dry_run: false, progress: &NoProgress };
//! let report = build(&recipe, "examples/recipe.yaml".as_ref(), &opts)?;
//! println!("did work: {}", report.did_work);
//! # Ok(()) }
//! ```

pub mod build;
mod error;
pub mod executor;
pub mod lineage;
pub mod mix;
pub mod output;
pub mod plan;
pub mod recipe;
pub mod report;
pub mod sample;
pub mod stages;
pub mod store;
pub mod unit;
pub mod view;
pub mod yaml;

pub use error::Error;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
