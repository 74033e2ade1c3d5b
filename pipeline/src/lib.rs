//! Recipes, the stage graph, the sample store, incremental builds and executors.
//!
//! Data flows through these modules in order:
//!
//! - [`recipe`] reads and checks a YAML recipe (positions from [`yaml`]), reporting every problem
//!   with file, line, column and field path;
//! - [`sample`] is the unit of data between stages: content id, class, text or messages, lineage;
//! - [`stage`] makes running stages from their configuration and fingerprints them;
//! - [`store`] keeps each stage's results by (fingerprint, input id) in SQLite, crash-safe;
//! - [`build`] plans and runs a build, recomputing only what changed, and writes the final samples;
//! - [`executor`] runs a stage's units on this machine or as a Slurm job array.
//!
//! ```no_run
//! use pipeline::build::{build, BuildOptions, NoProgress};
//! use pipeline::executor::Executor;
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
pub mod recipe;
pub mod sample;
pub mod stage;
pub mod store;
pub mod yaml;

pub use error::Error;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
