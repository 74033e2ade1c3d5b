//! Executors: where the units of a stage run.
//!
//! - [`Executor::Local`]: on all cores of this machine; the coordinating thread commits each unit's
//!   results as it arrives.
//! - [`Executor::Slurm`]: as a Slurm job array (`sbatch --array --wait`). Each task runs the same
//!   `phiforge` binary as `phiforge run-unit MANIFEST`, picks its unit from `SLURM_ARRAY_TASK_ID`
//!   and commits into the store itself. Units a failed task left are submitted once more; any still
//!   missing are reported as failed. Units are idempotent, so the result is the same as a local build.

use crate::build::Progress;
use crate::recipe::Recipe;
use crate::sample::Sample;
use crate::stage::{build_stage, Stage};
use crate::store::{ItemResult, Store};
use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

/// A unit of work: a fixed set of a stage's inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unit {
    pub index: usize,
    pub items: Vec<Sample>,
}

/// What a Slurm task needs to run its unit.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub recipe: PathBuf,
    pub stage: String,
    pub fingerprint: String,
    pub store: PathBuf,
    pub units: Vec<Unit>,
}

fn process_unit(stage: &dyn Stage, unit: &Unit) -> Result<Vec<(String, ItemResult)>> {
    unit.items
        .iter()
        .map(|s| Ok((s.id.clone(), stage.process(s)?)))
        .collect()
}

/// Runs `units` of stage `name`; returns (units run, units failed).
#[allow(clippy::too_many_arguments)]
pub fn run_units(
    executor: Executor,
    stage: &dyn Stage,
    name: &str,
    fp: &str,
    units: &[Unit],
    store: &mut Store,
    recipe_path: &Path,
    progress: &dyn Progress,
) -> Result<(usize, usize)> {
    match executor {
        Executor::Local => run_local(stage, name, fp, units, store, progress),
        Executor::Slurm => run_slurm(name, fp, units, store, recipe_path, progress),
    }
}

fn run_local(
    stage: &dyn Stage,
    name: &str,
    fp: &str,
    units: &[Unit],
    store: &mut Store,
    progress: &dyn Progress,
) -> Result<(usize, usize)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<(String, ItemResult)>>>(4);
    let mut run = 0;
    let mut failed = 0;
    let mut commit_error = None;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            units.par_iter().for_each_with(tx, |tx, u| {
                let _ = tx.send(process_unit(stage, u));
            });
        });
        for r in rx {
            match r {
                Ok(results) => {
                    if commit_error.is_none() {
                        match store.commit(fp, &results) {
                            Ok(()) => run += 1,
                            Err(e) => commit_error = Some(e),
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(stage = name, "unit failed: {e}");
                    failed += 1;
                }
            }
            progress.unit_done();
        }
    });
    match commit_error {
        Some(e) => Err(e),
        None => Ok((run, failed)),
    }
}

fn unit_done(store: &Store, fp: &str, unit: &Unit) -> Result<bool> {
    let ids: Vec<&str> = unit.items.iter().map(|s| s.id.as_str()).collect();
    Ok(store.cached(fp, &ids)?.len()
        == unit
            .items
            .iter()
            .map(|s| &s.id)
            .collect::<std::collections::HashSet<_>>()
            .len())
}

fn run_slurm(
    name: &str,
    fp: &str,
    units: &[Unit],
    store: &mut Store,
    recipe_path: &Path,
    progress: &dyn Progress,
) -> Result<(usize, usize)> {
    let dir = store
        .path()
        .parent()
        .unwrap_or(Path::new("."))
        .join("slurm")
        .join(fp);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let manifest_path = dir.join("manifest.json");
    let recipe = std::fs::canonicalize(recipe_path).map_err(|e| Error::io(recipe_path, e))?;
    let store_path = std::fs::canonicalize(store.path()).map_err(|e| Error::io(store.path(), e))?;
    let manifest = Manifest {
        recipe,
        stage: name.to_string(),
        fingerprint: fp.to_string(),
        store: store_path,
        units: units.to_vec(),
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| Error::Slurm(e.to_string()))?;
    crate::build::atomic_write(&manifest_path, &body)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("phiforge executable", e))?;

    let mut pending: Vec<usize> = (0..units.len()).collect();
    for attempt in 0..2 {
        if pending.is_empty() {
            break;
        }
        let array = pending
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let status = std::process::Command::new("sbatch")
            .arg("--parsable")
            .arg("--wait")
            .arg(format!("--array={array}"))
            .arg(format!("--job-name=phiforge-{name}"))
            .arg(format!(
                "--output={}/task-%a-attempt{attempt}.log",
                dir.display()
            ))
            .arg("--wrap")
            .arg(format!(
                "'{}' run-unit '{}'",
                exe.display(),
                manifest_path.display()
            ))
            .status()
            .map_err(|e| {
                Error::Slurm(format!(
                    "cannot run sbatch ({e}); is Slurm installed and running?"
                ))
            })?;
        if !status.success() {
            tracing::warn!(
                stage = name,
                "sbatch reported failed tasks ({status}); checking which units are done"
            );
        }
        let mut still = Vec::new();
        for &k in &pending {
            if !unit_done(store, fp, &units[k])? {
                still.push(k);
            }
        }
        pending = still;
    }
    for _ in units {
        progress.unit_done();
    }
    Ok((units.len() - pending.len(), pending.len()))
}

/// Runs one unit of a manifest (what each Slurm task does); `unit` defaults to
/// `SLURM_ARRAY_TASK_ID`.
pub fn run_unit(manifest_path: &Path, unit: Option<usize>) -> Result<()> {
    let body = std::fs::read(manifest_path).map_err(|e| Error::io(manifest_path, e))?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| Error::Slurm(format!("{}: {e}", manifest_path.display())))?;
    let k = match unit {
        Some(k) => k,
        None => std::env::var("SLURM_ARRAY_TASK_ID")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::Slurm("no unit given and SLURM_ARRAY_TASK_ID is not set".into())
            })?,
    };
    let unit = m
        .units
        .get(k)
        .ok_or_else(|| Error::Slurm(format!("unit {k} is not in {}", manifest_path.display())))?;
    let recipe = Recipe::load(&m.recipe)?;
    let config = recipe
        .stages
        .iter()
        .find(|s| s.name() == m.stage)
        .ok_or_else(|| Error::UnknownStage(m.stage.clone()))?;
    let stage = build_stage(&recipe, config, &m.fingerprint)?;
    let results = process_unit(&*stage, unit)?;
    let mut store = Store::open(&m.store)?;
    store.commit(&m.fingerprint, &results)
}
