//! Executors: where a batch of units runs.
//!
//! - [`Executor::Local`]: on this machine, a unit per core at a time (so memory is bounded by the
//!   number of cores times what one unit holds), each unit spreading its samples over the cores.
//! - [`Executor::Slurm`]: as Slurm job arrays ([`slurm`]). Tasks never open the store: each writes
//!   its unit's files and completion record into the (shared) output folder, and the submitting
//!   process checks them and records them.
//!
//! Either way a batch returns, per unit, its completion record or why it failed; the build records
//! the successes even when some failed, so a rerun does only what is missing.

mod local;
pub mod slurm;

use crate::recipe::SlurmConfig;
use crate::report::Progress;
use crate::unit::{Done, UnitCtx, UnitSpec};
use crate::Result;
use std::path::Path;

/// Where units run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    Local,
    Slurm,
}

impl Executor {
    pub fn name(self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Slurm => "slurm",
        }
    }
}

/// Units of one stage to run together.
pub struct Batch<'a> {
    pub stage: &'a str,
    pub fingerprint: &'a str,
    /// Which of the stage's kinds of unit (`units`, `scan`, `apply`, `output`): names the Slurm
    /// manifest and logs.
    pub phase: &'a str,
    pub units: &'a [UnitSpec],
}

/// Runs a batch; per unit, its record or the reason it failed.
pub fn run(
    executor: Executor,
    batch: &Batch,
    ctx: &UnitCtx,
    recipe_path: &Path,
    slurm: &SlurmConfig,
    progress: &dyn Progress,
) -> Result<Vec<std::result::Result<Done, String>>> {
    match executor {
        Executor::Local => Ok(local::run(batch.units, ctx, progress)),
        Executor::Slurm => slurm::run(batch, ctx.root, recipe_path, slurm, progress),
    }
}
