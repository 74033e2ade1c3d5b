//! Running units as Slurm job arrays.
//!
//! The submitting process writes a manifest (`OUT/slurm/FINGERPRINT/PHASE.json`: the recipe's
//! path, the stage and its fingerprint, the output folder and the units, described by their input
//! files; no samples) and submits one array task per unit with `sbatch --array --wait`, in as many
//! arrays as the cluster's `MaxArraySize` needs. Every task runs the same `phiforge` binary as
//! `phiforge run-unit MANIFEST --offset N` (its unit: `N + SLURM_ARRAY_TASK_ID`). A task recomputes
//! its stage's fingerprint from the recipe and refuses to run if the recipe changed since
//! submission; otherwise it writes its unit's files and completion record into the output folder,
//! which must be on a file system the nodes share, and never opens the store.
//!
//! When the arrays end, the submitter checks each unit's record against its files' checksums.
//! Units without a good record are submitted once more; those still missing are failures, reported
//! with the end of their task's log.

use super::{run_unit, UnitCtx};
use crate::plan::Graph;
use crate::recipe::{Recipe, SlurmConfig};
use crate::report::Progress;
use crate::unit::{Done, UnitSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a task needs to run its unit.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub recipe: PathBuf,
    pub stage: String,
    pub fingerprint: String,
    /// The output folder, absolute.
    pub root: PathBuf,
    pub units: Vec<UnitSpec>,
}

/// `MaxArraySize` of the cluster (task ids go up to one less), from `scontrol show config`.
fn cluster_max_array_size() -> Option<u32> {
    let out = Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "MaxArraySize")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// `0-3,5,7-9`: task ids as Slurm's `--array` takes them.
fn array_spec(ids: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut k = 0;
    while k < ids.len() {
        let mut j = k;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if j == k {
            ids[k].to_string()
        } else {
            format!("{}-{}", ids[k], ids[j])
        });
        k = j + 1;
    }
    parts.join(",")
}

/// The last lines of a task's log, for the failure report.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
            format!("{}: {tail}", path.display())
        }
        Err(_) => format!("{}: no log", path.display()),
    }
}

/// Runs a batch as job arrays; per unit, its checked record or why it is missing.
pub fn run(
    batch: &super::Batch,
    root: &Path,
    recipe_path: &Path,
    config: &SlurmConfig,
    progress: &dyn Progress,
) -> Result<Vec<std::result::Result<Done, String>>> {
    let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let dir = root.join("slurm").join(batch.fingerprint);
    let manifest_path = dir.join(format!("{}.json", batch.phase));
    let manifest = Manifest {
        recipe: std::fs::canonicalize(recipe_path).map_err(|e| Error::io(recipe_path, e))?,
        stage: batch.stage.to_string(),
        fingerprint: batch.fingerprint.to_string(),
        root: root.clone(),
        units: batch.units.to_vec(),
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| Error::Slurm(e.to_string()))?;
    corpus::atomic::write(&manifest_path, &body)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("phiforge executable", e))?;
    // Task ids run from 0 to MaxArraySize - 1.
    let per_array = config
        .max_array_size
        .or_else(|| cluster_max_array_size().map(|m| m.saturating_sub(1)))
        .unwrap_or(1000)
        .max(1) as usize;

    let n = batch.units.len();
    let mut results: Vec<Option<Done>> = vec![None; n];
    let mut pending: Vec<usize> = (0..n).collect();
    let log = |offset: usize, task: &str, attempt: usize| {
        dir.join(format!(
            "{}-{offset}-{task}-attempt{attempt}.log",
            batch.phase
        ))
    };
    for attempt in 0..2 {
        if pending.is_empty() {
            break;
        }
        // One array per block of `per_array` units, all submitted at once.
        let mut blocks: Vec<(usize, Vec<usize>)> = Vec::new();
        for &k in &pending {
            let offset = k / per_array * per_array;
            match blocks.last_mut() {
                Some((o, ids)) if *o == offset => ids.push(k - offset),
                _ => blocks.push((offset, vec![k - offset])),
            }
        }
        let statuses: Vec<std::io::Result<std::process::ExitStatus>> = std::thread::scope(|s| {
            let handles: Vec<_> = blocks
                .iter()
                .map(|(offset, ids)| {
                    let mut cmd = Command::new("sbatch");
                    cmd.arg("--parsable")
                        .arg("--wait")
                        .arg(format!("--array={}", array_spec(ids)))
                        .arg(format!("--job-name=phiforge-{}", batch.stage))
                        .arg(format!(
                            "--output={}",
                            log(*offset, "%a", attempt).display()
                        ))
                        .args(&config.sbatch_args)
                        .arg("--wrap")
                        .arg(format!(
                            "'{}' run-unit '{}' --offset {offset}",
                            exe.display(),
                            manifest_path.display()
                        ))
                        .stdout(std::process::Stdio::null());
                    s.spawn(move || cmd.status())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("the sbatch thread panicked"))
                    })
                })
                .collect()
        });
        for st in statuses {
            match st {
                Err(e) => {
                    return Err(Error::Slurm(format!(
                        "cannot run sbatch ({e}); is Slurm installed and running?"
                    )))
                }
                Ok(s) if !s.success() => tracing::warn!(
                    stage = batch.stage,
                    "sbatch reported failed tasks ({s}); checking which units are done"
                ),
                Ok(_) => {}
            }
        }
        let mut still = Vec::new();
        for &k in &pending {
            match Done::read_verified(&root, &batch.units[k])? {
                Some(d) => {
                    results[k] = Some(d);
                    progress.unit_done();
                }
                None => still.push(k),
            }
        }
        pending = still;
    }
    Ok(results
        .into_iter()
        .enumerate()
        .map(|(k, r)| {
            r.ok_or_else(|| {
                let offset = k / per_array * per_array;
                format!(
                    "unit {} left no completion record after two submissions; {}",
                    batch.units[k].key,
                    log_tail(&log(offset, &(k - offset).to_string(), 1))
                )
            })
        })
        .collect())
}

/// What a task runs: unit `offset + index` of a manifest (`index` defaults to
/// `SLURM_ARRAY_TASK_ID`). Refuses if the recipe's fingerprint for the stage changed.
pub fn run_task(manifest_path: &Path, index: Option<usize>, offset: usize) -> Result<()> {
    let body = std::fs::read(manifest_path).map_err(|e| Error::io(manifest_path, e))?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| Error::Slurm(format!("{}: {e}", manifest_path.display())))?;
    let k = offset
        + match index {
            Some(k) => k,
            None => std::env::var("SLURM_ARRAY_TASK_ID")
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    Error::Slurm("no unit given and SLURM_ARRAY_TASK_ID is not set".into())
                })?,
        };
    let spec = m
        .units
        .get(k)
        .ok_or_else(|| Error::Slurm(format!("unit {k} is not in {}", manifest_path.display())))?;
    let recipe = Recipe::load(&m.recipe)?;
    let graph = Graph::new(&recipe)?;
    let node = graph
        .index(&m.stage)
        .ok_or_else(|| Error::UnknownStage(m.stage.clone()))?;
    let runner = graph.runner(&recipe, node, &spec.work)?;
    let now = graph.unit_fingerprint(&recipe, node, &spec.work);
    if now != m.fingerprint || spec.fingerprint != m.fingerprint {
        return Err(Error::Slurm(format!(
            "stage `{}`: the recipe {} changed since this job was submitted (fingerprint {} then, {now} now); not running, so no result of the old recipe is kept under the new one. Run the build again",
            m.stage,
            m.recipe.display(),
            m.fingerprint
        )));
    }
    run_unit(
        spec,
        &UnitCtx {
            root: &m.root,
            recipe: &recipe,
            runner: &runner,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_compress_runs() {
        assert_eq!(array_spec(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(array_spec(&[3]), "3");
    }
}
