//! The store: an index of a build's units, in SQLite (no server), at `OUT/store.sqlite`.
//!
//! It holds no samples. It records which units are done (their completion records: files with
//! sizes and checksums, views, counts and drop reasons), under which fingerprint and in which slot;
//! which fingerprints each stage ran with; the content hashes of source files by size and
//! modification time; each stage's views as of the last successful build (for lineage); and a
//! record of every run. A rebuild with nothing to do reads it once per unit.
//!
//! Only the process that plans a build opens it (Slurm tasks never do), and it holds it exclusively
//! while open: SQLite's locking is not safe across hosts on shared file systems, so the store is
//! used from one process on one host, and a second build into the same folder is refused. With
//! exclusive locking SQLite's write-ahead log needs no shared memory, which shared file systems
//! do not provide either.

use crate::recipe::Recipe;
use crate::unit::Done;
use crate::view::View;
use crate::{Error, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Layout version of the store. 1 held samples; 2 indexes units. Others are refused.
pub const SCHEMA_VERSION: i64 = 2;

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Error::StoreBusy {
                path: path.to_path_buf(),
            }
        }
        _ => Error::Store {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS units(
        seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, stage TEXT NOT NULL,
        fingerprint TEXT NOT NULL, slot TEXT NOT NULL, record TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS units_by_slot ON units(stage, fingerprint, slot, seq);
    CREATE TABLE IF NOT EXISTS stages(
        name TEXT NOT NULL, fingerprint TEXT NOT NULL, PRIMARY KEY(name, fingerprint)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS sources(
        path TEXT PRIMARY KEY, signature TEXT NOT NULL, hash TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS views(
        stage TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, views TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS runs(
        id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, finished TEXT,
        status TEXT NOT NULL, report TEXT);";

impl Store {
    /// Opens (creating if needed) the store at `path`, exclusively.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open(path).map_err(sql(path))?;
        Store::init(conn, path)
    }

    /// Opens the store at `path` if there is one; creates nothing.
    pub fn open_existing(path: &Path) -> Result<Option<Store>> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path))?;
        Store::init(conn, path).map(Some)
    }

    /// An empty store in memory (what a plan uses where no build has run).
    pub fn in_memory() -> Result<Store> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(sql(path))?;
        Store::init(conn, path)
    }

    fn init(conn: Connection, path: &Path) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(sql(path))?;
        conn.execute_batch(
            "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        )
        .map_err(sql(path))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);",
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
            Some(v) if v < SCHEMA_VERSION => {
                return Err(Error::OlderStore {
                    path: path.to_path_buf(),
                    found: v,
                })
            }
            Some(_) => conn.execute_batch(SCHEMA).map_err(sql(path))?,
            None => {
                conn.execute_batch(SCHEMA).map_err(sql(path))?;
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

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql(&self.path))
    }

    /// Refuses a recipe that gives a built source another mix class (its samples in the build's
    /// shards carry the old one). Reads only.
    pub fn check_source_classes(&self, recipe: &Recipe) -> Result<()> {
        for (name, s) in &recipe.sources {
            if let Some(old) = self.meta(&format!("source_class:{name}"))? {
                if old != s.class.as_str() {
                    return Err(Error::SourceClassChanged {
                        name: name.clone(),
                        old,
                        new: s.class.as_str().into(),
                        store: self.path.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Records the class source `name` was built with (once something was built from it).
    pub fn record_source_class(&self, name: &str, class: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)",
                params![format!("source_class:{name}"), class],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Notes that stage `name` ran with fingerprint `fp`.
    pub fn note_stage(&self, name: &str, fp: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO stages(name, fingerprint) VALUES (?1, ?2)",
                params![name, fp],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Whether stage `name` ran before with fingerprint `fp` (`same`), or with another one.
    pub fn ran_before(&self, name: &str, fp: &str, same: bool) -> Result<bool> {
        let q = if same {
            "SELECT 1 FROM stages WHERE name = ?1 AND fingerprint = ?2"
        } else {
            "SELECT 1 FROM stages WHERE name = ?1 AND fingerprint != ?2"
        };
        self.conn
            .prepare_cached(q)
            .and_then(|mut s| s.exists(params![name, fp]))
            .map_err(sql(&self.path))
    }

    fn record(&self, body: String) -> Result<Done> {
        serde_json::from_str(&body).map_err(|e| Error::Store {
            path: self.path.clone(),
            message: format!("a unit record is unreadable: {e}"),
        })
    }

    /// The record of unit `key`, if it is done.
    pub fn unit(&self, key: &str) -> Result<Option<Done>> {
        let body: Option<String> = self
            .conn
            .prepare_cached("SELECT record FROM units WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(sql(&self.path))?;
        body.map(|b| self.record(b)).transpose()
    }

    /// The latest unit of stage `stage` under `fp` in `slot` other than `key`: the same stage's
    /// earlier results for this part of the data.
    pub fn last_in_slot(
        &self,
        stage: &str,
        fp: &str,
        slot: &str,
        key: &str,
    ) -> Result<Option<Done>> {
        let body: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT record FROM units WHERE stage = ?1 AND fingerprint = ?2 AND slot = ?3
                 AND key != ?4 ORDER BY seq DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![stage, fp, slot, key], |r| r.get(0))
                    .optional()
            })
            .map_err(sql(&self.path))?;
        body.map(|b| self.record(b)).transpose()
    }

    /// Records finished units, in one transaction.
    pub fn insert_units(&mut self, done: &[Done]) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM units WHERE key = ?1")
                .map_err(sql(&path))?;
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO units(key, stage, fingerprint, slot, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql(&path))?;
            for d in done {
                let body = serde_json::to_string(d).map_err(|e| Error::Store {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                del.execute(params![d.key]).map_err(sql(&path))?;
                ins.execute(params![d.key, d.stage, d.fingerprint, d.slot, body])
                    .map_err(sql(&path))?;
            }
        }
        tx.commit().map_err(sql(&path))
    }

    /// The content hash recorded for source file `path` when its signature was `signature`.
    pub fn source_hash(&self, path: &str, signature: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT hash FROM sources WHERE path = ?1 AND signature = ?2")
            .and_then(|mut s| {
                s.query_row(params![path, signature], |r| r.get(0))
                    .optional()
            })
            .map_err(sql(&self.path))
    }

    pub fn set_source_hash(&self, path: &str, signature: &str, hash: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sources(path, signature, hash) VALUES (?1, ?2, ?3)",
                params![path, signature, hash],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Records each stage's views as the last successful build left them.
    pub fn set_views(&mut self, stages: &[(String, String, Vec<View>)]) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        tx.execute("DELETE FROM views", []).map_err(sql(&path))?;
        for (name, fp, views) in stages {
            let body = serde_json::to_string(views).map_err(|e| Error::Store {
                path: path.clone(),
                message: e.to_string(),
            })?;
            tx.execute(
                "INSERT INTO views(stage, fingerprint, views) VALUES (?1, ?2, ?3)",
                params![name, fp, body],
            )
            .map_err(sql(&path))?;
        }
        tx.commit().map_err(sql(&path))
    }

    /// Each stage's views as of the last successful build, in build order.
    pub fn views(&self) -> Result<Vec<(String, Vec<View>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT stage, views FROM views ORDER BY rowid")
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (stage, body) = row.map_err(sql(&self.path))?;
            let views = serde_json::from_str(&body).map_err(|e| Error::Store {
                path: self.path.clone(),
                message: format!("recorded views are unreadable: {e}"),
            })?;
            out.push((stage, views));
        }
        Ok(out)
    }

    /// Forgets every unit not in `keep`; returns their records (whose files the caller removes).
    pub fn forget_units_except(&mut self, keep: &HashSet<String>) -> Result<Vec<Done>> {
        let mut stale = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, record FROM units")
                .map_err(sql(&self.path))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql(&self.path))?;
            for row in rows {
                let (key, body) = row.map_err(sql(&self.path))?;
                if !keep.contains(&key) {
                    stale.push(body);
                }
            }
        }
        let stale: Vec<Done> = stale
            .into_iter()
            .map(|b| self.record(b))
            .collect::<Result<_>>()?;
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        for d in &stale {
            tx.execute("DELETE FROM units WHERE key = ?1", params![d.key])
                .map_err(sql(&path))?;
        }
        tx.commit().map_err(sql(&path))?;
        Ok(stale)
    }

    /// Records a run's start; returns its id. Runs left `running` by a killed build are marked
    /// `interrupted` first (the store is held exclusively, so none of them is still running).
    pub fn start_run(&self, started: &str) -> Result<i64> {
        self.conn
            .execute(
                "UPDATE runs SET status = 'interrupted' WHERE status = 'running'",
                [],
            )
            .map_err(sql(&self.path))?;
        self.conn
            .execute(
                "INSERT INTO runs(started, status) VALUES (?1, 'running')",
                params![started],
            )
            .map_err(sql(&self.path))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a run's end: `ok` with its report, or `failed` with its error.
    pub fn finish_run(&self, id: i64, finished: &str, status: &str, report: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET finished = ?2, status = ?3, report = ?4 WHERE id = ?1",
                params![id, finished, status, report],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Every run: (id, status, report or error), oldest first.
    pub fn runs(&self) -> Result<Vec<(i64, String, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, status, report FROM runs ORDER BY id")
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql(&self.path))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn done(key: &str, slot: &str) -> Done {
        Done {
            key: key.into(),
            stage: "s".into(),
            fingerprint: "fp".into(),
            slot: slot.into(),
            out: crate::unit::Produced {
                rows_in: 3,
                rows_out: 2,
                run: 3,
                dropped: BTreeMap::from([("x".to_string(), 1)]),
                ..Default::default()
            },
            seconds: 0.1,
        }
    }

    #[test]
    fn units_round_trip_and_other_layouts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s/store.sqlite");
        assert!(Store::open_existing(&p).unwrap().is_none());
        assert!(!p.exists());
        let mut s = Store::open(&p).unwrap();
        s.insert_units(&[done("a", "f#0"), done("b", "f#0")])
            .unwrap();
        assert_eq!(s.unit("a").unwrap(), Some(done("a", "f#0")));
        assert_eq!(s.unit("c").unwrap(), None);
        assert_eq!(
            s.last_in_slot("s", "fp", "f#0", "c").unwrap().unwrap().key,
            "b"
        );
        assert_eq!(
            s.last_in_slot("s", "fp", "f#0", "b").unwrap().unwrap().key,
            "a"
        );
        assert!(s.last_in_slot("s", "fp", "f#1", "c").unwrap().is_none());
        let gone = s
            .forget_units_except(&HashSet::from(["a".to_string()]))
            .unwrap();
        assert_eq!(gone.len(), 1);
        assert!(s.unit("b").unwrap().is_none());
        let id = s.start_run("1").unwrap();
        s.start_run("2").unwrap();
        assert_eq!(s.runs().unwrap()[0], (id, "interrupted".to_string(), None));
        // The store is held while open.
        let e = Store::open(&p).err().unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
        s.conn
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        drop(s);
        let e = Store::open(&p).err().unwrap();
        assert!(e.to_string().contains("newer"), "{e}");
        let s = Store::open(&p);
        drop(s);
        let conn = Connection::open(&p).unwrap();
        conn.execute(
            "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let e = Store::open(&p).err().unwrap();
        assert!(e.to_string().contains("older phiforge"), "{e}");
    }
}
