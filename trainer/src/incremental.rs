//! Training as the last step of `phiforge build`: rerun only when the mix or the settings changed,
//! and continue a run a killed build left half done.
//!
//! The run's folder holds `run.json`: the fingerprint of what it trains on and with (the mix's
//! `manifest.json`, which names every shard's checksum, and the `train:` settings that change the
//! result) and whether it finished. A build then:
//!
//! - leaves a finished run with the same fingerprint alone ([`Outcome::UpToDate`]);
//! - continues an unfinished one with the same fingerprint from its latest checkpoint (the losses
//!   are those of an uninterrupted run, see [`crate::checkpoint`]);
//! - otherwise replaces the folder's run (a folder that holds anything but a run is refused).

use crate::run::{Progress, Summary};
use crate::{Error, Result, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record of a run in its folder.
pub const RUN_FILE: &str = "run.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunRecord {
    fingerprint: String,
    complete: bool,
}

/// What [`train`] did.
#[derive(Debug)]
pub enum Outcome {
    /// A finished run on the same mix with the same settings was there: its model folder.
    UpToDate(PathBuf),
    /// Trained (from scratch, or continued from a checkpoint at step `resumed_at`).
    Trained {
        summary: Summary,
        resumed_at: Option<u64>,
    },
}

/// The fingerprint of a run: the manifest's bytes and the settings that change what is trained
/// (not `threads`, `device` or `output`, which change where and how fast).
pub fn fingerprint(cfg: &TrainConfig, manifest: &Path) -> Result<String> {
    let bytes = std::fs::read(manifest).map_err(|e| Error::io(manifest, e))?;
    let settings = TrainConfig {
        threads: None,
        device: crate::config::DeviceChoice::Auto,
        output: None,
        ..cfg.clone()
    };
    let settings = serde_json::to_vec(&settings).map_err(|e| Error::Config(e.to_string()))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
    h.update(&settings);
    Ok(format!("{:032x}", h.digest128()))
}

fn read_record(out: &Path) -> Result<Option<RunRecord>> {
    let path = out.join(RUN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::checkpoint(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn write_record(out: &Path, r: &RunRecord) -> Result<()> {
    let body = serde_json::to_vec_pretty(r).map_err(|e| Error::Config(e.to_string()))?;
    corpus::atomic::write(&out.join(RUN_FILE), &body)?;
    Ok(())
}

/// Trains on the mix whose manifest is `manifest` into `out`, unless the run there is already
/// this one; see the module's notes.
pub fn train(
    cfg: &TrainConfig,
    manifest: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Outcome> {
    cfg.check()?;
    let manifest_file = if manifest.is_dir() {
        manifest.join(mixes::manifest::FILE_NAME)
    } else {
        manifest.to_path_buf()
    };
    let key = fingerprint(cfg, &manifest_file)?;
    let record = read_record(out)?;
    let model = out.join("model");
    let mut resume = false;
    match &record {
        Some(r) if r.fingerprint == key && r.complete && model.join("config.json").is_file() => {
            return Ok(Outcome::UpToDate(model));
        }
        Some(r) if r.fingerprint == key && crate::checkpoint::latest(out)?.is_some() => {
            resume = true;
        }
        Some(r) => {
            if r.fingerprint != key {
                tracing::info!(
                    "{}: the mix or the train settings changed, training again",
                    out.display()
                );
            }
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        None => {
            let empty = match std::fs::read_dir(out) {
                Ok(mut d) => d.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(Error::io(out, e)),
            };
            if !empty {
                return Err(Error::checkpoint(
                    out,
                    format!(
                        "the folder holds files but no {RUN_FILE}: not a run a build made; \
                         move it or set train.output"
                    ),
                ));
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_record(
        out,
        &RunRecord {
            fingerprint: key.clone(),
            complete: false,
        },
    )?;
    let mut t = Trainer::from_manifest(cfg, &manifest_file, out, resume)?;
    let resumed_at = resume.then(|| t.steps_done());
    let summary = t.run(progress)?;
    write_record(
        out,
        &RunRecord {
            fingerprint: key,
            complete: true,
        },
    )?;
    Ok(Outcome::Trained {
        summary,
        resumed_at,
    })
}
