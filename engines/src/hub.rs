//! Models in the local Hugging Face cache: `microsoft/phi-4` (or `microsoft/phi-4@REVISION`) names
//! the snapshot folder `huggingface-cli download` (or any `huggingface_hub` user) left there, so the
//! local engine loads it offline. Nothing is downloaded.
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; a repository
//! `owner/name` lives in `models--owner--name/`, whose `refs/<revision>` file holds the commit of
//! the snapshot in `snapshots/<commit>/`.

use crate::engine::EngineError;
use std::path::{Path, PathBuf};

/// The cache folder the Hugging Face tools use on this machine.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// What `--model-dir` names: an existing file or folder as it is; otherwise a repository id
/// (`owner/name`, optionally `@revision`, default `main`) found in the cache.
pub fn resolve(spec: &str) -> Result<PathBuf, EngineError> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match cache_dir() {
        Some(cache) => resolve_in(spec, &cache),
        None => Err(EngineError::Config(format!(
            "{spec}: no such file or folder, and no Hugging Face cache to look in (set HF_HUB_CACHE)"
        ))),
    }
}

/// [`resolve`] for a repository id, in the cache folder `cache`.
pub fn resolve_in(spec: &str, cache: &Path) -> Result<PathBuf, EngineError> {
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(EngineError::Config(format!(
            "{spec}: no such file or folder (nor a Hugging Face repository id like owner/name)"
        )));
    }
    let root = cache.join(format!("models--{}--{}", parts[0], parts[1]));
    if !root.is_dir() {
        return Err(EngineError::Config(format!(
            "{spec}: no such file or folder, and not in the Hugging Face cache ({} is missing; \
             `huggingface-cli download {repo}` puts it there)",
            root.display()
        )));
    }
    // A revision is a ref (branch or tag) recorded in refs/, or a commit hash itself.
    let commit = match std::fs::read_to_string(root.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snapshot = root.join("snapshots").join(&commit);
    if commit.contains('/') || commit.contains("..") || !snapshot.is_dir() {
        return Err(EngineError::Config(format!(
            "{spec}: revision `{revision}` is not in the cache (no {})",
            snapshot.display()
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_ids_find_their_snapshot() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("models--microsoft--phi-4");
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/def456")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123\n").unwrap();
        let c = cache.path();
        assert_eq!(
            resolve_in("microsoft/phi-4", c).unwrap(),
            root.join("snapshots/abc123")
        );
        assert_eq!(
            resolve_in("microsoft/phi-4@def456", c).unwrap(),
            root.join("snapshots/def456")
        );
        let missing = resolve_in("microsoft/phi-5", c).unwrap_err().to_string();
        assert!(
            missing.contains("huggingface-cli download microsoft/phi-5"),
            "{missing}"
        );
        let rev = resolve_in("microsoft/phi-4@v2", c).unwrap_err().to_string();
        assert!(rev.contains("revision `v2`"), "{rev}");
        for bad in ["phi-4", "a/b/c", "../x", "microsoft/phi-4@../../etc"] {
            assert!(resolve_in(bad, c).is_err(), "{bad}");
        }
    }
}
