//! The sample store: an embedded SQLite database (no server) holding every stage's results, keyed
//! by (stage fingerprint, input id), and a record of each run.
//!
//! A unit of work commits all its items in one transaction, so a build killed at any moment leaves
//! only whole units behind; the next build finds them and runs the rest. Items are idempotent:
//! committing the same (fingerprint, input) twice replaces it with the same result.

use crate::recipe::{MixClass, Recipe};
use crate::sample::Sample;
use crate::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Layout version of the store; a store written by a newer phiforge is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The result of one input of a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    /// The samples made from (or kept for) the input.
    Keep(Vec<Sample>),
    /// The input was dropped, for this reason.
    Drop(String),
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open(path).map_err(sql(path))?;
        conn.busy_timeout(std::time::Duration::from_secs(120))
            .map_err(sql(path))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS items(
                 stage_fp TEXT NOT NULL, input_id TEXT NOT NULL, outputs INTEGER NOT NULL,
                 dropped TEXT, PRIMARY KEY(stage_fp, input_id)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS samples(
                 stage_fp TEXT NOT NULL, input_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 sample_id TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY(stage_fp, input_id, seq)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS samples_by_id ON samples(sample_id);
             CREATE TABLE IF NOT EXISTS stages(
                 name TEXT NOT NULL, stage_fp TEXT NOT NULL, PRIMARY KEY(name, stage_fp)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS runs(
                 id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, finished TEXT,
                 status TEXT NOT NULL, report TEXT);",
        )
        .map_err(sql(path))?;
        let found: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(path))?;
        match found.map(|v| v.parse::<i64>().unwrap_or(i64::MAX)) {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::NewerStore {
                    path: path.to_path_buf(),
                    found: v,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(sql(path))?;
            }
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a recipe that gives an existing source another mix class (its samples in the store
    /// carry the old one); records the classes of new sources.
    pub fn check_source_classes(&self, recipe: &Recipe) -> Result<()> {
        for (name, s) in &recipe.sources {
            let key = format!("source_class:{name}");
            let old: Option<String> = self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql(&self.path))?;
            match old {
                Some(old) if old != s.class.as_str() => {
                    return Err(Error::SourceClassChanged {
                        name: name.clone(),
                        old,
                        new: s.class.as_str().into(),
                        store: self.path.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    self.conn
                        .execute(
                            "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                            params![key, s.class.as_str()],
                        )
                        .map_err(sql(&self.path))?;
                }
            }
        }
        Ok(())
    }

    /// The class a source was first built with, if any.
    pub fn source_class(&self, name: &str) -> Result<Option<MixClass>> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![format!("source_class:{name}")],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(&self.path))?;
        Ok(v.and_then(|v| serde_json::from_value(serde_json::Value::String(v)).ok()))
    }

    /// Notes that stage `name` ran with fingerprint `fp`.
    pub fn note_stage(&self, name: &str, fp: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO stages(name, stage_fp) VALUES (?1, ?2)",
                params![name, fp],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Whether stage `name` has run before with fingerprint `fp`.
    pub fn ran_with(&self, name: &str, fp: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM stages WHERE name = ?1 AND stage_fp = ?2")
            .and_then(|mut s| s.exists(params![name, fp]))
            .map_err(sql(&self.path))
    }

    /// Whether stage `name` has run before with a fingerprint other than `fp`.
    pub fn ran_with_other_fingerprint(&self, name: &str, fp: &str) -> Result<bool> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM stages WHERE name = ?1 AND stage_fp != ?2",
                params![name, fp],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))?;
        Ok(n > 0)
    }

    /// Which of `ids` have a committed result under `fp`.
    pub fn cached(&self, fp: &str, ids: &[&str]) -> Result<HashSet<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM items WHERE stage_fp = ?1 AND input_id = ?2")
            .map_err(sql(&self.path))?;
        let mut out = HashSet::new();
        for id in ids {
            if stmt.exists(params![fp, id]).map_err(sql(&self.path))? {
                out.insert(id.to_string());
            }
        }
        Ok(out)
    }

    /// The committed result of input `id` under `fp`.
    pub fn result(&self, fp: &str, id: &str) -> Result<Option<ItemResult>> {
        let row: Option<(i64, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT outputs, dropped FROM items WHERE stage_fp = ?1 AND input_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![fp, id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(sql(&self.path))?;
        let Some((n, dropped)) = row else {
            return Ok(None);
        };
        if let Some(reason) = dropped {
            return Ok(Some(ItemResult::Drop(reason)));
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT body FROM samples WHERE stage_fp = ?1 AND input_id = ?2 ORDER BY seq",
            )
            .map_err(sql(&self.path))?;
        let bodies = stmt
            .query_map(params![fp, id], |r| r.get::<_, String>(0))
            .map_err(sql(&self.path))?;
        let mut samples = Vec::with_capacity(n as usize);
        for b in bodies {
            let b = b.map_err(sql(&self.path))?;
            samples.push(serde_json::from_str(&b).map_err(|e| Error::Store {
                path: self.path.clone(),
                message: format!("a stored sample is unreadable: {e}"),
            })?);
        }
        Ok(Some(ItemResult::Keep(samples)))
    }

    /// Commits the results of one unit in one transaction.
    pub fn commit(&mut self, fp: &str, results: &[(String, ItemResult)]) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM samples WHERE stage_fp = ?1 AND input_id = ?2")
                .map_err(sql(&path))?;
            let mut item = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO items(stage_fp, input_id, outputs, dropped) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql(&path))?;
            let mut sample = tx
                .prepare_cached(
                    "INSERT INTO samples(stage_fp, input_id, seq, sample_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql(&path))?;
            for (id, r) in results {
                del.execute(params![fp, id]).map_err(sql(&path))?;
                match r {
                    ItemResult::Drop(reason) => {
                        item.execute(params![fp, id, 0, reason])
                            .map_err(sql(&path))?;
                    }
                    ItemResult::Keep(samples) => {
                        item.execute(params![
                            fp,
                            id,
                            samples.len() as i64,
                            Option::<String>::None
                        ])
                        .map_err(sql(&path))?;
                        for (k, s) in samples.iter().enumerate() {
                            let body = serde_json::to_string(s).map_err(|e| Error::Store {
                                path: path.clone(),
                                message: e.to_string(),
                            })?;
                            sample
                                .execute(params![fp, id, k as i64, s.id, body])
                                .map_err(sql(&path))?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(sql(&path))
    }

    /// A stored sample with content id `id` (the first found, if several stages kept it).
    pub fn find_sample(&self, id: &str) -> Result<Option<Sample>> {
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM samples WHERE sample_id = ?1 LIMIT 1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(&self.path))?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| Error::Store {
                path: self.path.clone(),
                message: format!("a stored sample is unreadable: {e}"),
            })
        })
        .transpose()
    }

    /// A sample and its ancestors, following `parents` through the store (closest first).
    pub fn lineage(&self, id: &str) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([id.to_string()]);
        let mut seen = HashSet::new();
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(s) = self.find_sample(&id)? {
                queue.extend(s.lineage.parents.iter().cloned());
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Forgets every result under `fp` (for `--force`).
    pub fn forget(&mut self, fp: &str) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        tx.execute("DELETE FROM samples WHERE stage_fp = ?1", params![fp])
            .map_err(sql(&path))?;
        tx.execute("DELETE FROM items WHERE stage_fp = ?1", params![fp])
            .map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))
    }

    /// Records a run's start; returns its id.
    pub fn start_run(&self, started: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO runs(started, status) VALUES (?1, 'running')",
                params![started],
            )
            .map_err(sql(&self.path))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a run's end and report.
    pub fn finish_run(&self, id: i64, finished: &str, status: &str, report: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET finished = ?2, status = ?3, report = ?4 WHERE id = ?1",
                params![id, finished, status, report],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Content, Lineage};

    #[test]
    fn results_round_trip_and_newer_stores_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s/store.sqlite");
        let mut s = Store::open(&p).unwrap();
        let sample = Sample::new(
            MixClass::Web,
            Content::Text { text: "x".into() },
            Lineage::default(),
        );
        s.commit(
            "fp",
            &[
                ("a".into(), ItemResult::Keep(vec![sample.clone()])),
                ("b".into(), ItemResult::Drop("contaminated".into())),
            ],
        )
        .unwrap();
        assert_eq!(s.cached("fp", &["a", "b", "c"]).unwrap().len(), 2);
        assert_eq!(
            s.result("fp", "a").unwrap(),
            Some(ItemResult::Keep(vec![sample]))
        );
        assert_eq!(
            s.result("fp", "b").unwrap(),
            Some(ItemResult::Drop("contaminated".into()))
        );
        assert_eq!(s.result("other", "a").unwrap(), None);
        s.forget("fp").unwrap();
        assert!(s.cached("fp", &["a"]).unwrap().is_empty());
        s.conn
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        drop(s);
        let e = Store::open(&p).err().unwrap();
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
