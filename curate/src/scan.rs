//! SQL over records read on demand ([`query_records`]): a table too big to hold (a build's every
//! shard) is read twice, record by record, and only what the query needs is kept. The first pass
//! finds the columns and their types ([`Schema`]); polars then plans the query over a scan of that
//! schema and tells the scan which columns it reads (projection pushdown), so
//! `SELECT class, count(*) FROM samples GROUP BY class` holds one string per record, not the
//! texts. Only a query that reads every column (`SELECT *`) holds the whole table.
//!
//! Types are those of [`crate::sql::Table::from_records`]: a key whose values are all strings is
//! text, all integers (that fit in i64) 64-bit integers, all numbers floats, all booleans
//! booleans; anything else (arrays, objects, mixed types) is its JSON text. A key a record lacks,
//! and JSON `null`, are NULL.

use crate::sql::{Table, Values};
use crate::Error;
use polars::prelude::*;
use serde_json::{Map, Value as J};
use std::sync::Arc;

/// Records to query, in a fixed order: [`Records::visit`] may be called more than once and must
/// give the same records each time.
pub trait Records: Send + Sync {
    /// Calls `each` with every record; an error (naming the file and line) stops the visit.
    fn visit(&self, each: &mut dyn FnMut(&Map<String, J>)) -> Result<(), String>;
}

/// The type of a column of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// Mixed or nested values, held as their JSON text.
    Json,
}

/// What the non-null values of one key seen so far could all be.
#[derive(Debug, Clone, Copy)]
struct Seen {
    strings: bool,
    ints: bool,
    numbers: bool,
    bools: bool,
}

impl Seen {
    const ANY: Seen = Seen {
        strings: true,
        ints: true,
        numbers: true,
        bools: true,
    };

    fn add(&mut self, v: &J) {
        self.strings &= v.is_string();
        self.ints &= v.is_i64();
        self.numbers &= v.is_number();
        self.bools &= v.is_boolean();
    }

    /// The first of text, integer, float, boolean that every value is (a key only ever null is
    /// text).
    fn kind(&self) -> Kind {
        match *self {
            Seen { strings: true, .. } => Kind::Str,
            Seen { ints: true, .. } => Kind::Int,
            Seen { numbers: true, .. } => Kind::Float,
            Seen { bools: true, .. } => Kind::Bool,
            _ => Kind::Json,
        }
    }
}

/// The columns of some records, in order of first appearance, and their types.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    columns: Vec<(String, Seen)>,
}

impl Schema {
    /// Takes in one record's keys and values.
    pub fn add(&mut self, record: &Map<String, J>) {
        for (k, v) in record {
            let seen = match self.columns.iter_mut().find(|(n, _)| n == k) {
                Some((_, s)) => s,
                None => {
                    self.columns.push((k.clone(), Seen::ANY));
                    &mut self.columns.last_mut().expect("just pushed").1
                }
            };
            if !v.is_null() {
                seen.add(v);
            }
        }
    }

    /// The schema of `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Map<String, J>>) -> Schema {
        let mut s = Schema::default();
        records.into_iter().for_each(|r| s.add(r));
        s
    }

    fn kind(&self, name: &str) -> Option<Kind> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.kind())
    }

    fn polars(&self) -> polars::prelude::Schema {
        self.columns
            .iter()
            .map(|(n, s)| {
                let t = match s.kind() {
                    Kind::Str | Kind::Json => DataType::String,
                    Kind::Int => DataType::Int64,
                    Kind::Float => DataType::Float64,
                    Kind::Bool => DataType::Boolean,
                };
                Field::new(n.as_str().into(), t)
            })
            .collect()
    }

    /// The columns `names` (all, in order, when `None`) of `records`, typed by this schema.
    pub fn table<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Map<String, J>>,
        names: Option<&[String]>,
    ) -> Result<Table, Error> {
        self.collect(names, |each| {
            records.into_iter().for_each(each);
            Ok(())
        })
    }

    /// The columns `names` (all when `None`) of the records `visit` hands to its argument.
    fn collect(
        &self,
        names: Option<&[String]>,
        visit: impl FnOnce(&mut dyn FnMut(&Map<String, J>)) -> Result<(), Error>,
    ) -> Result<Table, Error> {
        let mut columns = self.builders(names)?;
        let mut rows = 0;
        visit(&mut |r| {
            columns.iter_mut().for_each(|c| c.push(r));
            rows += 1;
        })?;
        finish(columns, rows)
    }

    fn builders(&self, names: Option<&[String]>) -> Result<Vec<Builder>, Error> {
        let all: Vec<String>;
        let names = match names {
            Some(n) => n,
            None => {
                all = self.columns.iter().map(|(n, _)| n.clone()).collect();
                &all
            }
        };
        names
            .iter()
            .map(|n| {
                let kind = self.kind(n).ok_or_else(|| Error::Sql {
                    what: "a scan".into(),
                    message: format!("no column `{n}`"),
                })?;
                Ok(Builder::new(n, kind))
            })
            .collect()
    }
}

/// One column's values as records go by.
struct Builder {
    name: String,
    values: Values,
    /// Mixed or nested values are kept as JSON text.
    json: bool,
}

impl Builder {
    fn new(name: &str, kind: Kind) -> Builder {
        let values = match kind {
            Kind::Str | Kind::Json => Values::Str(Vec::new()),
            Kind::Int => Values::Int(Vec::new()),
            Kind::Float => Values::Float(Vec::new()),
            Kind::Bool => Values::Bool(Vec::new()),
        };
        Builder {
            name: name.to_string(),
            values,
            json: kind == Kind::Json,
        }
    }

    fn push(&mut self, record: &Map<String, J>) {
        let v = record.get(&self.name).filter(|v| !v.is_null());
        match &mut self.values {
            Values::Str(s) if self.json => s.push(v.map(|v| v.to_string())),
            Values::Str(s) => s.push(v.and_then(J::as_str).map(Into::into)),
            Values::Int(s) => s.push(v.and_then(J::as_i64)),
            Values::Float(s) => s.push(v.and_then(J::as_f64)),
            Values::Bool(s) => s.push(v.and_then(J::as_bool)),
        }
    }
}

fn finish(columns: Vec<Builder>, rows: usize) -> Result<Table, Error> {
    Table::with_height(
        columns.into_iter().map(|c| (c.name, c.values)).collect(),
        rows,
    )
}

/// The scan polars runs: the records' columns it asks for, read by a new pass.
struct Scan {
    schema: Schema,
    records: Arc<dyn Records>,
    /// The columns each pass read (`None`: all), for the log and the tests.
    read: std::sync::Mutex<Vec<Option<Vec<String>>>>,
}

impl Scan {
    fn new(schema: Schema, records: Arc<dyn Records>) -> Arc<Scan> {
        Arc::new(Scan {
            schema,
            records,
            read: Default::default(),
        })
    }

    fn frame(self: &Arc<Scan>) -> Result<LazyFrame, Error> {
        LazyFrame::anonymous_scan(self.clone(), Default::default()).map_err(|e| Error::Sql {
            what: "a scan".into(),
            message: e.to_string(),
        })
    }
}

impl AnonymousScan for Scan {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn scan(&self, args: AnonymousScanArgs) -> PolarsResult<DataFrame> {
        let names: Option<Vec<String>> = args
            .with_columns
            .map(|c| c.iter().map(|n| n.to_string()).collect());
        tracing::debug!("scan: reading columns {names:?} (None: all)");
        if let Ok(mut read) = self.read.lock() {
            read.push(names.clone());
        }
        let table = self
            .schema
            .collect(names.as_deref(), |each| {
                self.records
                    .visit(each)
                    .map_err(|message| Error::Read { message })
            })
            .map_err(|e| polars_err!(ComputeError: "{e}"))?;
        Ok(table.into_frame())
    }

    fn schema(&self, _infer_schema_length: Option<usize>) -> PolarsResult<SchemaRef> {
        Ok(Arc::new(self.schema.polars()))
    }

    fn allows_projection_pushdown(&self) -> bool {
        true
    }
}

/// Runs `sql` over `records`, registered as the table `name`: one pass for the schema, one for
/// the columns the query reads. Errors of the records' reading come back as they were given.
pub fn query_records(name: &str, records: Arc<dyn Records>, sql: &str) -> Result<Table, Error> {
    let mut schema = Schema::default();
    records
        .visit(&mut |r| schema.add(r))
        .map_err(|message| Error::Read { message })?;
    let frame = Scan::new(schema, records).frame()?;
    crate::sql::query_frames(&[(name, frame)], sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Records held in memory, counting the passes over them.
    struct Held(Vec<Map<String, J>>, std::sync::atomic::AtomicUsize);

    impl Records for Held {
        fn visit(&self, each: &mut dyn FnMut(&Map<String, J>)) -> Result<(), String> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.iter().for_each(each);
            Ok(())
        }
    }

    fn held() -> Arc<Held> {
        let records = [
            json!({"id": "a", "class": "code", "tokens": 3, "text": "x = 1"}),
            json!({"id": "b", "class": "web", "tokens": 2.5, "text": "hello", "tags": ["t"]}),
            json!({"id": "c", "class": "code", "text": null, "ok": true}),
        ];
        let records = records
            .into_iter()
            .map(|r| r.as_object().cloned().unwrap())
            .collect();
        Arc::new(Held(records, Default::default()))
    }

    #[test]
    fn a_query_reads_only_the_columns_it_names() {
        let records = held();
        let schema = Schema::of(&records.0);
        let scan = Scan::new(schema, records.clone());
        let sql = "SELECT class, count(*) AS n FROM samples GROUP BY class ORDER BY class";
        let got = crate::sql::query_frames(&[("samples", scan.frame().unwrap())], sql).unwrap();
        assert_eq!(
            got.columns().unwrap(),
            [
                (
                    "class".into(),
                    Values::Str(vec![Some("code".into()), Some("web".into())])
                ),
                ("n".into(), Values::Int(vec![Some(2), Some(1)])),
            ]
        );
        assert_eq!(
            *scan.read.lock().unwrap(),
            [Some(vec!["class".to_string()])]
        );
        // `count(*)` alone reads no column, and still counts every record.
        let scan = Scan::new(Schema::of(&records.0), records.clone());
        let got = crate::sql::query_frames(
            &[("samples", scan.frame().unwrap())],
            "SELECT count(*) AS n FROM samples",
        )
        .unwrap();
        assert_eq!(got.columns().unwrap()[0].1, Values::Int(vec![Some(3)]));
        assert!(
            scan.read
                .lock()
                .unwrap()
                .iter()
                .all(|r| r.as_ref().is_some_and(|c| !c.contains(&"text".to_string()))),
            "{:?}",
            scan.read.lock().unwrap()
        );
    }

    #[test]
    fn types_as_from_records_and_two_passes() {
        let records = held();
        let all = query_records("samples", records.clone(), "SELECT * FROM samples").unwrap();
        assert_eq!(records.1.load(std::sync::atomic::Ordering::Relaxed), 2);
        // serde_json's maps give their keys sorted, record by record.
        assert_eq!(all.names(), ["class", "id", "text", "tokens", "tags", "ok"]);
        let cols = all.columns().unwrap();
        assert_eq!(cols[3].1, Values::Float(vec![Some(3.0), Some(2.5), None]));
        assert_eq!(
            cols[2].1,
            Values::Str(vec![Some("x = 1".into()), Some("hello".into()), None])
        );
        assert_eq!(
            cols[4].1,
            Values::Str(vec![None, Some("[\"t\"]".into()), None])
        );
        assert_eq!(cols[5].1, Values::Bool(vec![None, None, Some(true)]));
        assert_eq!(
            Table::from_records(&records.0).unwrap().columns().unwrap(),
            cols
        );
    }
}
