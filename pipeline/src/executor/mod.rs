//! Executors: where a batch of units runs.
//!
//! - [`Executor::Local`]: on this machine, a unit per core at a time (so memory is bounded by the
//!   number of cores times what one unit holds), each unit spreading its samples over the cores.
//! - [`Executor::Slurm`]: as Slurm job arrays ([`slurm`]). Tasks never open the store: each writes
//!   its unit's files and completion record into the (shared) output folder, and the submitting
//!   process checks them and records them.
//!
//! Either way a unit runs through [`run_unit`], and a batch returns, per unit, its completion
//! record or why it failed; the build records the successes even when some failed, so a rerun
//! does only what is missing.

mod local;
pub mod slurm;

use crate::output;
use crate::recipe::{Recipe, SlurmConfig};
use crate::report::Progress;
use crate::stages::{dedup_exact, near_dup, per_sample, source, Runner};
use crate::unit::{Done, UnitSpec, Work};
use crate::{Error, Result};
use std::path::Path;
use std::time::Instant;

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

/// What every unit of one stage shares while it runs.
pub struct UnitCtx<'a> {
    /// The output folder (every path in specs and records is relative to it).
    pub root: &'a Path,
    pub recipe: &'a Recipe,
    pub runner: &'a Runner,
}

/// Runs one unit, writes its files and its completion record, and returns the record.
pub fn run_unit(spec: &UnitSpec, ctx: &UnitCtx) -> Result<Done> {
    let t0 = Instant::now();
    let p = match (&spec.work, ctx.runner) {
        (Work::Source { file, hash }, Runner::Source(name)) => {
            source::run(spec, ctx.root, ctx.recipe, name, file, hash)?
        }
        (Work::PerSample { view, memo }, Runner::PerSample(stage)) => {
            per_sample::run(spec, ctx.root, &**stage, view, memo.as_ref())?
        }
        (Work::DedupScan { views, part, parts }, Runner::DedupExact) => {
            dedup_exact::scan(spec, ctx.root, views, *part, *parts)?
        }
        (Work::DedupApply { view, index, scans }, Runner::DedupExact) => {
            dedup_exact::apply(spec, ctx.root, view, *index, scans, dedup_exact::DUPLICATE)?
        }
        (Work::NearDupScan { views }, Runner::NearDup(settings)) => {
            near_dup::scan(spec, ctx.root, views, settings)?
        }
        (Work::DedupApply { view, index, scans }, Runner::NearDup(_)) => dedup_exact::apply(
            spec,
            ctx.root,
            view,
            *index,
            scans,
            near_dup::NEAR_DUPLICATE,
        )?,
        (
            Work::Output {
                slices,
                dest,
                format,
            },
            _,
        ) => output::write_part(ctx.root, slices, dest, *format)?,
        _ => {
            return Err(Error::stage(
                &spec.stage,
                "this kind of unit does not belong to this stage",
            ))
        }
    };
    let done = Done {
        key: spec.key.clone(),
        stage: spec.stage.clone(),
        fingerprint: spec.fingerprint.clone(),
        slot: spec.slot.clone(),
        out: p,
        seconds: t0.elapsed().as_secs_f64(),
    };
    done.write(ctx.root)?;
    Ok(done)
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
