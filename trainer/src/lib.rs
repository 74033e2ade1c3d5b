//! The built-in trainer: trains a Phi-3-architecture model (Phi-4's) from random initialisation on
//! the token shards a mix wrote, with the very model code the local engine serves
//! ([`engines::phi3::Model`], through its training pass), so a trained checkpoint loads in
//! `engines` unchanged.
//!
//! Roles:
//! - [`config`]: [`TrainConfig`], the recipe's `train:` section (settings and the model's shape);
//! - [`data`]: the manifest's shards checked and read, documents packed into sequences, a seeded
//!   order, the held-out evaluation sequences, and the llm.c shard format the benchmark reads;
//! - [`loss`]: cross-entropy with the loss mask (candle's has no ignore index), fused on the CPU;
//! - [`optim`]: AdamW with f32 moments, warmup then cosine decay, clipping by global norm;
//! - [`memory`]: refusing a run that cannot fit, before any work;
//! - [`checkpoint`]: model (Hugging Face names), optimizer state and data position, written
//!   atomically; resume reproduces an uninterrupted run's losses exactly;
//! - [`run`]: the loop ([`Trainer`]), with `metrics.jsonl`, `loss.svg` ([`plot`]), a progress bar
//!   and the final model folder;
//! - [`incremental`]: training as a build's last step, skipped when the mix and settings are
//!   unchanged and continued from its checkpoint after a killed build.
//!
//! ```no_run
//! use trainer::{TrainConfig, Trainer};
//! # fn main() -> Result<(), trainer::Error> {
//! let cfg = TrainConfig { steps: 100, ..TrainConfig::default() };
//! let mut t = Trainer::from_manifest(&cfg, "out/mix".as_ref(), "out/train".as_ref(), false)?;
//! let summary = t.run(&trainer::run::NoProgress)?;
//! println!("final loss {}", summary.last_loss);
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod incremental;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod plot;
pub mod run;

pub use config::TrainConfig;
pub use error::Error;
pub use run::Trainer;

pub type Result<T, E = Error> = std::result::Result<T, E>;
