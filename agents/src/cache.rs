//! The request cache: every reply a flow got, keyed by what decides it (the model, the sampling
//! settings with the seed, and the rendered messages), in an append-only JSON-lines file per unit
//! of work.
//!
//! A reply is written and flushed the moment it arrives, so a killed build resumes without sending
//! any finished request again (a last line cut off by the kill is cut from the file when it is
//! opened again). Replies are kept raw, before any parsing, so a changed parser or quality gate
//! re-reads them instead of calling the model.

use crate::Error;
use engines::engine::{ChatRequest, Completion, EngineIdentity, FinishReason};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use xxhash_rust::xxh3::xxh3_128;

/// A cached reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub text: String,
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Entry {
    pub fn completion(&self) -> Completion {
        Completion {
            text: self.text.clone(),
            finish_reason: match self.finish_reason.as_str() {
                "stop" => FinishReason::Stop,
                "length" => FinishReason::Length,
                other => FinishReason::Other(other.to_string()),
            },
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            logprobs: None,
        }
    }
}

/// The cache key of `request` to the model `identity`: 32 hex digits.
pub fn key(identity: &EngineIdentity, request: &ChatRequest) -> String {
    let canonical = serde_json::json!({"engine": identity, "request": request}).to_string();
    format!("{:032x}", xxh3_128(canonical.as_bytes()))
}

/// One unit's cache file, shared by the unit's concurrent requests.
pub struct RequestCache {
    path: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    file: Mutex<std::fs::File>,
}

impl RequestCache {
    /// Opens (or creates) the cache at `path`, reading what an earlier run wrote.
    pub fn open(path: &Path) -> Result<RequestCache, Error> {
        let err = |message: String| Error::Cache {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        let mut entries = HashMap::new();
        let mut good = 0u64;
        {
            let mut reader = std::io::BufReader::new(&mut file);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| err(e.to_string()))?;
                if n == 0 || buf.last() != Some(&b'\n') {
                    break;
                }
                let Ok(e) = serde_json::from_slice::<Entry>(&buf) else {
                    break;
                };
                good += n as u64;
                entries.insert(e.key.clone(), e);
            }
        }
        // Whatever follows the last whole entry was cut off by a kill: cut it, so the next entry
        // starts on a line of its own.
        if file.metadata().map_err(|e| err(e.to_string()))?.len() > good {
            file.set_len(good).map_err(|e| err(e.to_string()))?;
            file.seek(std::io::SeekFrom::End(0))
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(RequestCache {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
            file: Mutex::new(file),
        })
    }

    /// Replies cached so far.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.lock().ok()?.get(key).cloned()
    }

    /// Records a reply (written and flushed before this returns).
    pub fn put(&self, key: &str, c: &Completion) -> Result<(), Error> {
        let entry = Entry {
            key: key.to_string(),
            text: c.text.clone(),
            finish_reason: match &c.finish_reason {
                FinishReason::Stop => "stop".into(),
                FinishReason::Length => "length".into(),
                FinishReason::Other(o) => o.clone(),
            },
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| Error::Cache {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        {
            let mut f = self.file.lock().map_err(|_| Error::Cache {
                path: self.path.clone(),
                message: "a writer panicked".into(),
            })?;
            f.write_all(&line)
                .and_then(|_| f.flush())
                .map_err(|e| Error::Cache {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        }
        if let Ok(mut m) = self.entries.lock() {
            m.insert(entry.key.clone(), entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(text: &str) -> Completion {
        Completion {
            text: text.into(),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 3,
            completion_tokens: 2,
            logprobs: None,
        }
    }

    #[test]
    fn replies_survive_a_reopen_and_a_line_cut_off_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u/cache.jsonl");
        let c = RequestCache::open(&path).unwrap();
        c.put("a", &completion("one")).unwrap();
        c.put("b", &completion("two")).unwrap();
        drop(c);
        // A kill in the middle of a third line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"key\": \"c\", \"te").unwrap();
        drop(f);
        let c = RequestCache::open(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b").unwrap().completion(), completion("two"));
        c.put("c", &completion("three")).unwrap();
        drop(c);
        let c = RequestCache::open(&path).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("c").unwrap().text, "three");
    }
}
