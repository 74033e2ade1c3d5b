//! The mix's manifest (`MIX/manifest.json`): every file the mix wrote, with its size, token and
//! document counts, per-class counts and xxh3 checksum, plus the recipe's fingerprint, the seed,
//! the tokenizer and the mix report. A reader checks a shard against its entry before using it.

use crate::plan::MixReport;
use crate::tokshard::{Shard, ShardError};
use crate::MixClass;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST_VERSION: u32 = 1;
pub const FILE_NAME: &str = "manifest.json";

/// Documents and tokens of one class in one file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    pub documents: u64,
    pub tokens: u64,
}

/// One file of the mix, its path relative to the manifest's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub tokens: u64,
    pub documents: u64,
    pub classes: BTreeMap<MixClass, ClassCount>,
    /// `xxh3:` and 16 hex digits of the whole file.
    pub checksum: String,
}

impl FileEntry {
    /// The checksum's 64-bit value.
    pub fn xxh3(&self) -> Option<u64> {
        let hex = self.checksum.strip_prefix("xxh3:")?;
        u64::from_str_radix(hex, 16).ok()
    }
}

/// The tokenizer that made the token shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `phi4`, or the path of a `tokenizer.json`.
    pub name: String,
    pub vocab: u32,
    /// The token that ends each document (appended to every document).
    pub eos: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub phiforge_version: String,
    pub recipe: String,
    pub recipe_fingerprint: String,
    /// The fingerprint of the mix's inputs and settings: a mix with the same one is not redone.
    pub mix_fingerprint: String,
    pub seed: u64,
    pub tokenizer: TokenizerInfo,
    /// Whether the token shards carry loss masks (the mix has chat samples).
    pub loss_mask: bool,
    pub report: MixReport,
    /// Token shards (the trainer's input), in the mix's order.
    pub token_shards: Vec<FileEntry>,
    /// Parquet document shards (id, class, text, messages, tokens, lineage), in the mix's order.
    pub document_shards: Vec<FileEntry>,
    /// Megatron-LM's indexed dataset: `.bin` then `.idx`.
    pub megatron: Vec<FileEntry>,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error(transparent)]
    Shard(#[from] ShardError),
}

impl Manifest {
    /// Reads `path` (a manifest, or the folder holding one).
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let path = if path.is_dir() {
            path.join(FILE_NAME)
        } else {
            path.to_path_buf()
        };
        let bad = |message: String| ManifestError::Bad {
            path: path.clone(),
            message,
        };
        let body = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let m: Manifest = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        if m.manifest_version != MANIFEST_VERSION {
            return Err(bad(format!(
                "manifest_version {} (this phiforge reads {MANIFEST_VERSION})",
                m.manifest_version
            )));
        }
        Ok(m)
    }

    /// Opens token shard `k` of the manifest in `dir`, checking its size, checksum, header and
    /// counts against its entry.
    pub fn open_token_shard(&self, dir: &Path, k: usize) -> Result<Shard, ManifestError> {
        let e = self.token_shards.get(k).ok_or_else(|| ManifestError::Bad {
            path: dir.join(FILE_NAME),
            message: format!("no token shard {k}"),
        })?;
        let path = dir.join(&e.path);
        let bad = |message: String| ManifestError::Bad {
            path: path.clone(),
            message,
        };
        let meta = std::fs::metadata(&path).map_err(|err| bad(err.to_string()))?;
        if meta.len() != e.bytes {
            return Err(bad(format!(
                "{} bytes, the manifest says {}",
                meta.len(),
                e.bytes
            )));
        }
        let sum = e.xxh3().ok_or_else(|| {
            bad(format!(
                "the manifest's checksum `{}` is not xxh3",
                e.checksum
            ))
        })?;
        let shard = Shard::read(&path, Some(sum))?;
        let docs = shard.index.len() as u64 - 1;
        if shard.tokens.len() as u64 != e.tokens || docs != e.documents {
            return Err(bad(format!(
                "{} tokens in {} documents, the manifest says {} in {}",
                shard.tokens.len(),
                docs,
                e.tokens,
                e.documents
            )));
        }
        if shard.vocab != self.tokenizer.vocab {
            return Err(bad(format!(
                "vocabulary {}, the manifest's tokenizer has {}",
                shard.vocab, self.tokenizer.vocab
            )));
        }
        Ok(shard)
    }

    /// Checks every file's size and checksum against its entry (the token shards' headers too),
    /// before any work is done.
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        for k in 0..self.token_shards.len() {
            self.open_token_shard(dir, k)?;
        }
        for e in self.document_shards.iter().chain(&self.megatron) {
            let path = dir.join(&e.path);
            let bad = |message: String| ManifestError::Bad {
                path: path.clone(),
                message,
            };
            let body = std::fs::read(&path).map_err(|err| bad(err.to_string()))?;
            if body.len() as u64 != e.bytes {
                return Err(bad(format!(
                    "{} bytes, the manifest says {}",
                    body.len(),
                    e.bytes
                )));
            }
            let sum = format!("xxh3:{:016x}", xxhash_rust::xxh3::xxh3_64(&body));
            if sum != e.checksum {
                return Err(bad(format!(
                    "checksum {sum}, the manifest says {}",
                    e.checksum
                )));
            }
        }
        Ok(())
    }
}
