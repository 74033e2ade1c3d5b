//! SQL over documents, evaluated by polars: [`Filter`] keeps the documents of a [`RowBatch`] for
//! which SQL conditions hold (a `where` clause, or a published preset's rules), and [`query`] runs
//! a whole `SELECT` over [`Table`]s.
//!
//! - A [`RowBatch`] is many documents' [`Signals`] plus per-document fields ([`DOC_FIELDS`]: `id`,
//!   `class`, `bytes`, `tokens`; and any other string or number column) as one polars DataFrame.
//! - A [`Filter`] is a list of rules, each a SQL boolean expression (polars' `sql_expr`) with the
//!   reason a document fails it. [`Filter::new`] makes one rule of a `where` clause; [`Filter::preset`]
//!   one per rule of a [`crate::presets`] preset, in datatrove's order. Conditions are checked when
//!   the filter is made: a column that is neither a signal nor a declared field is an
//!   [`Error::UnknownColumn`] naming it, a type error (`words = 'many'`) or a condition that is not
//!   boolean an [`Error::Sql`]. [`Filter::decide`] evaluates every rule as one boolean column over
//!   the batch and gives each document the reason of its **first** failing rule, as datatrove
//!   does; [`Filter::keep`] only says keep or drop.
//! - SQL's NULL: a rule that is NULL for a document (it reads a field the batch leaves empty, such
//!   as `tokens` in a corpus that has none) does not hold, so the document fails it.
//! - [`query`] registers tables under names (`samples`) in a polars `SQLContext` and runs any
//!   query polars' SQL reads; [`Table`] converts from JSON records, prints with polars' `Display`
//!   and hands its columns back for writing.
//!
//! ```
//! use curate::sql::{Filter, RowBatch, Values};
//! use curate::signals::compute;
//!
//! let texts = ["The cat sat on the mat. It was happy with that.", "ok"];
//! let rows = RowBatch::new(texts.iter().map(|t| compute(t)).collect())
//!     .with_field("id", Values::Str(vec![Some("a".into()), Some("b".into())]))?;
//! let filter = Filter::new("words >= 5 AND id <> 'z'")?;
//! assert_eq!(filter.keep(&rows)?, [true, false]);
//!
//! let gopher = Filter::preset("gopher_quality")?;
//! assert_eq!(gopher.decide(&rows)?, [Some("gopher_short_doc"), Some("gopher_short_doc")]);
//! assert!(matches!(Filter::new("wordz > 3"), Err(curate::Error::UnknownColumn { .. })));
//! # Ok::<(), curate::Error>(())
//! ```

use std::fmt;

use polars::prelude::*;
use polars::sql::{sql_expr, SQLContext};

use crate::presets::{self, Rule};
use crate::signals::{ColumnType, Signals, Value};
use crate::Error;

/// Per-document fields that every [`RowBatch`] has (NULL when not given) and that
/// [`Filter::new`] accepts besides the [`Signals`] columns.
pub const DOC_FIELDS: [(&str, ColumnType); 4] = [
    // The document's id.
    ("id", ColumnType::Str),
    // Its class (web, code, ...), where known.
    ("class", ColumnType::Str),
    // UTF-8 bytes of its text.
    ("bytes", ColumnType::Int),
    // Its tokens, where a tokenizer counted them.
    ("tokens", ColumnType::Int),
];

/// The reason of the rule [`Filter::new`] and [`Filter::and_where`] make.
pub const WHERE_REASON: &str = "where";

/// One column's values, NULL where `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Str(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Bool(v) => v.len(),
        }
    }

    /// True with no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `row` as text (empty for NULL), for CSV and the like.
    pub fn text(&self, row: usize) -> Option<String> {
        match self {
            Values::Str(v) => v.get(row)?.clone(),
            Values::Int(v) => v.get(row)?.map(|x| x.to_string()),
            Values::Float(v) => v.get(row)?.map(|x| x.to_string()),
            Values::Bool(v) => v.get(row)?.map(|x| x.to_string()),
        }
    }

    fn into_column(self, name: &str) -> Column {
        let name = PlSmallStr::from_str(name);
        match self {
            Values::Str(v) => Series::new(name, v),
            Values::Int(v) => Series::new(name, v),
            Values::Float(v) => Series::new(name, v),
            Values::Bool(v) => Series::new(name, v),
        }
        .into_column()
    }

    fn nulls(kind: ColumnType, len: usize) -> Values {
        match kind {
            ColumnType::Str => Values::Str(vec![None; len]),
            ColumnType::Int => Values::Int(vec![None; len]),
            ColumnType::Float => Values::Float(vec![None; len]),
        }
    }
}

fn dtype(kind: ColumnType) -> DataType {
    match kind {
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Str => DataType::String,
    }
}

/// Many documents' [`Signals`] and per-document fields, to be filtered together.
#[derive(Debug, Clone, Default)]
pub struct RowBatch {
    signals: Vec<Signals>,
    fields: Vec<(String, Values)>,
}

impl RowBatch {
    /// A batch of these documents' signals, with every [`DOC_FIELDS`] column NULL.
    pub fn new(signals: Vec<Signals>) -> RowBatch {
        RowBatch {
            signals,
            fields: Vec::new(),
        }
    }

    /// Sets the field `name` (one of [`DOC_FIELDS`] or any other name) to `values`, one per
    /// document. A name of a signal column, or a number of values other than the batch's, is an
    /// error.
    pub fn with_field(mut self, name: &str, values: Values) -> Result<RowBatch, Error> {
        if values.len() != self.len() {
            return Err(Error::FieldLength {
                field: name.to_string(),
                values: values.len(),
                rows: self.len(),
            });
        }
        if Signals::columns().iter().any(|(c, _)| *c == name) {
            return Err(Error::FieldClash {
                field: name.to_string(),
            });
        }
        self.fields.retain(|(n, _)| n != name);
        self.fields.push((name.to_string(), values));
        Ok(self)
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.signals.len()
    }

    /// True with no documents.
    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    /// The documents' signals.
    pub fn signals(&self) -> &[Signals] {
        &self.signals
    }

    /// The batch as a DataFrame: signal columns, then fields.
    fn frame(&self) -> Result<DataFrame, Error> {
        let n = self.len();
        let mut columns = Vec::with_capacity(Signals::columns().len() + self.fields.len() + 4);
        for (i, (name, kind)) in Signals::columns().iter().enumerate() {
            let values = match kind {
                ColumnType::Int => Values::Int(self.collect(i, |v| match v {
                    Value::Int(x) => Some(x),
                    _ => None,
                })),
                ColumnType::Float => Values::Float(self.collect(i, |v| match v {
                    Value::Float(x) => Some(x),
                    _ => None,
                })),
                ColumnType::Str => Values::Str(self.collect(i, |v| match v {
                    Value::Str(x) => Some(x.to_string()),
                    _ => None,
                })),
            };
            columns.push(values.into_column(name));
        }
        for (name, kind) in DOC_FIELDS {
            if !self.fields.iter().any(|(n, _)| n == name) {
                columns.push(Values::nulls(kind, n).into_column(name));
            }
        }
        for (name, values) in &self.fields {
            columns.push(values.clone().into_column(name));
        }
        DataFrame::new(n, columns).map_err(|e| sql_error("the batch", e))
    }

    fn collect<T>(&self, index: usize, f: impl Fn(Value<'_>) -> Option<T>) -> Vec<Option<T>> {
        self.signals
            .iter()
            .map(|s| s.value_at(index).and_then(&f))
            .collect()
    }
}

/// One rule of a [`Filter`].
#[derive(Debug, Clone)]
struct Compiled {
    reason: String,
    condition: String,
    expr: Expr,
}

/// SQL conditions over a [`RowBatch`], each with a drop reason; see the module docs.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Vec<Compiled>,
    /// The columns conditions may read: signals, [`DOC_FIELDS`] and declared fields.
    schema: Vec<(String, ColumnType)>,
}

impl Filter {
    /// A filter of one rule, the `where` clause `where_sql` (reason [`WHERE_REASON`]), over the
    /// [`Signals`] columns and [`DOC_FIELDS`].
    pub fn new(where_sql: &str) -> Result<Filter, Error> {
        Filter::with_fields(&[])?.and_where(where_sql)
    }

    /// The rules of `presets`, in order, then the `where` condition (reason [`WHERE_REASON`]),
    /// as a recipe's `filter` stage and `phiforge filter` declare them; conditions may also read
    /// `fields`.
    pub fn of(
        fields: &[(&str, ColumnType)],
        presets: &[String],
        where_sql: Option<&str>,
    ) -> Result<Filter, Error> {
        let mut filter = Filter::with_fields(fields)?;
        for p in presets {
            let rules =
                presets::preset(p).ok_or_else(|| Error::UnknownPreset { name: p.clone() })?;
            filter = filter.and_rules(rules)?;
        }
        match where_sql {
            Some(w) => filter.and_where(w),
            None => Ok(filter),
        }
    }

    /// A filter with no rule yet (it keeps everything) whose conditions may also read `fields`.
    pub fn with_fields(fields: &[(&str, ColumnType)]) -> Result<Filter, Error> {
        let mut schema: Vec<(String, ColumnType)> = Signals::columns()
            .iter()
            .chain(DOC_FIELDS.iter())
            .map(|(n, k)| (n.to_string(), *k))
            .collect();
        for (name, kind) in fields {
            match schema.iter().find(|(n, _)| n == name) {
                Some((_, k)) if k == kind => {}
                Some(_) => {
                    return Err(Error::FieldClash {
                        field: name.to_string(),
                    })
                }
                None => schema.push((name.to_string(), *kind)),
            }
        }
        Ok(Filter {
            rules: Vec::new(),
            schema,
        })
    }

    /// The rules of the preset `name` ([`presets::PRESETS`]), in datatrove's order.
    pub fn preset(name: &str) -> Result<Filter, Error> {
        let rules = presets::preset(name).ok_or_else(|| Error::UnknownPreset {
            name: name.to_string(),
        })?;
        Filter::with_fields(&[])?.and_rules(rules)
    }

    /// Adds `rules` after the filter's own.
    pub fn and_rules(mut self, rules: &[Rule]) -> Result<Filter, Error> {
        for r in rules {
            self = self.and_rule(r.reason, r.condition)?;
        }
        Ok(self)
    }

    /// Adds the `where` clause `where_sql` as a last rule (reason [`WHERE_REASON`]).
    pub fn and_where(self, where_sql: &str) -> Result<Filter, Error> {
        self.and_rule(WHERE_REASON, where_sql)
    }

    /// Adds a rule: documents for which `condition` does not hold fail it with `reason`.
    pub fn and_rule(mut self, reason: &str, condition: &str) -> Result<Filter, Error> {
        let expr = sql_expr(condition).map_err(|e| sql_error(condition, e))?;
        for column in expr.clone().meta().root_names() {
            if !self.schema.iter().any(|(n, _)| n == column.as_str()) {
                return Err(Error::UnknownColumn {
                    condition: condition.to_string(),
                    column: column.to_string(),
                });
            }
        }
        // Types are checked on an empty frame of the schema.
        let empty = DataFrame::new(
            0,
            self.schema
                .iter()
                .map(|(n, k)| Column::new_empty(PlSmallStr::from_str(n), &dtype(*k)))
                .collect(),
        )
        .map_err(|e| sql_error(condition, e))?;
        let out = empty
            .lazy()
            .select([expr.clone().alias("keep")])
            .collect()
            .map_err(|e| sql_error(condition, e))?;
        let kind = out
            .columns()
            .first()
            .map(|c| c.dtype().clone())
            .unwrap_or(DataType::Null);
        if kind != DataType::Boolean {
            return Err(Error::NotBoolean {
                condition: condition.to_string(),
                found: kind.to_string(),
            });
        }
        self.rules.push(Compiled {
            reason: reason.to_string(),
            condition: condition.to_string(),
            expr,
        });
        Ok(self)
    }

    /// `(reason, condition)` of each rule, in order.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules
            .iter()
            .map(|r| (r.reason.as_str(), r.condition.as_str()))
    }

    /// For each document of `rows`: `None` when every rule holds, else the reason of the first
    /// rule that does not (NULL does not hold).
    pub fn decide(&self, rows: &RowBatch) -> Result<Vec<Option<&str>>, Error> {
        let mut out: Vec<Option<&str>> = vec![None; rows.len()];
        if self.rules.is_empty() || rows.is_empty() {
            return Ok(out);
        }
        let holds = self.evaluate(rows)?;
        for (rule, column) in self.rules.iter().zip(&holds) {
            for (slot, ok) in out.iter_mut().zip(column) {
                if slot.is_none() && *ok != Some(true) {
                    *slot = Some(rule.reason.as_str());
                }
            }
        }
        Ok(out)
    }

    /// For each document of `rows`: true when every rule holds.
    pub fn keep(&self, rows: &RowBatch) -> Result<Vec<bool>, Error> {
        Ok(self.decide(rows)?.iter().map(Option::is_none).collect())
    }

    /// Every rule as one boolean column over `rows`.
    fn evaluate(&self, rows: &RowBatch) -> Result<Vec<Vec<Option<bool>>>, Error> {
        let frame = rows.frame()?;
        let exprs: Vec<Expr> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.expr.clone().alias(format!("rule{i}")))
            .collect();
        let what = || {
            self.rules
                .iter()
                .map(|r| r.condition.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let out = frame
            .lazy()
            .select(exprs)
            .collect()
            .map_err(|e| sql_error(&what(), e))?;
        out.columns()
            .iter()
            .map(|c| {
                let b = c.bool().map_err(|e| sql_error(&what(), e))?;
                Ok(b.iter().collect())
            })
            .collect()
    }
}

fn sql_error(what: &str, e: PolarsError) -> Error {
    Error::Sql {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// A table of query input or output, held by polars.
#[derive(Clone, Default)]
pub struct Table {
    frame: DataFrame,
}

impl Table {
    /// A table of these named columns, all of one length.
    pub fn from_columns(columns: Vec<(String, Values)>) -> Result<Table, Error> {
        let height = columns.first().map_or(0, |(_, v)| v.len());
        Table::with_height(columns, height)
    }

    /// As [`Table::from_columns`], with the height given (a table may have rows and no column:
    /// a scan for `count(*)`).
    pub(crate) fn with_height(
        columns: Vec<(String, Values)>,
        height: usize,
    ) -> Result<Table, Error> {
        if let Some((name, v)) = columns.iter().find(|(_, v)| v.len() != height) {
            return Err(Error::FieldLength {
                field: name.clone(),
                values: v.len(),
                rows: height,
            });
        }
        let columns = columns
            .into_iter()
            .map(|(n, v)| v.into_column(&n))
            .collect();
        let frame = DataFrame::new(height, columns).map_err(|e| sql_error("a table", e))?;
        Ok(Table { frame })
    }

    pub(crate) fn into_frame(self) -> DataFrame {
        self.frame
    }

    /// A table of JSON records, typed as [`crate::scan`] says: a column per key, in order of
    /// first appearance.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = &'a serde_json::Map<String, serde_json::Value>> + Clone,
    ) -> Result<Table, Error> {
        crate::scan::Schema::of(records.clone()).table(records, None)
    }

    /// Appends the rows of `other`, whose columns must have the same names and types.
    pub fn append(&mut self, other: Table) -> Result<(), Error> {
        if self.frame.width() == 0 {
            self.frame = other.frame;
            return Ok(());
        }
        self.frame
            .vstack_mut_owned(other.frame)
            .map_err(|e| sql_error("appending rows", e))?;
        Ok(())
    }

    /// Number of rows.
    pub fn height(&self) -> usize {
        self.frame.height()
    }

    /// The column names, in order.
    pub fn names(&self) -> Vec<String> {
        self.frame
            .get_column_names()
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// The columns: integers as [`Values::Int`] (unsigned ones past i64 as floats), floats as
    /// [`Values::Float`], booleans as [`Values::Bool`], everything else as its text.
    pub fn columns(&self) -> Result<Vec<(String, Values)>, Error> {
        let err = |e| sql_error("reading a result", e);
        self.frame
            .columns()
            .iter()
            .map(|c| {
                let t = c.dtype();
                let values = if t.is_bool() {
                    Values::Bool(c.bool().map_err(err)?.iter().collect())
                } else if t.is_integer() && *t != DataType::UInt64 {
                    let c = c.cast(&DataType::Int64).map_err(err)?;
                    Values::Int(c.i64().map_err(err)?.iter().collect())
                } else if t.is_primitive_numeric() {
                    let c = c.cast(&DataType::Float64).map_err(err)?;
                    Values::Float(c.f64().map_err(err)?.iter().collect())
                } else if *t == DataType::String {
                    let s = c.str().map_err(err)?;
                    Values::Str(s.iter().map(|v| v.map(Into::into)).collect())
                } else {
                    Values::Str(
                        (0..c.len())
                            .map(|i| match c.get(i) {
                                Ok(AnyValue::Null) | Err(_) => None,
                                Ok(v) => Some(v.to_string()),
                            })
                            .collect(),
                    )
                };
                Ok((c.name().to_string(), values))
            })
            .collect()
    }

    /// Writes the table as CSV (RFC 4180: a header line, fields with `,`, `"` or a line break
    /// quoted, NULL empty).
    pub fn write_csv(&self, out: &mut dyn std::io::Write) -> Result<(), Error> {
        let columns = self.columns()?;
        let io = |e: std::io::Error| Error::Io {
            what: "writing CSV".into(),
            source: e,
        };
        let field = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let header: Vec<String> = columns.iter().map(|(n, _)| field(n)).collect();
        writeln!(out, "{}", header.join(",")).map_err(io)?;
        for row in 0..self.height() {
            let line: Vec<String> = columns
                .iter()
                .map(|(_, v)| v.text(row).map(|s| field(&s)).unwrap_or_default())
                .collect();
            writeln!(out, "{}", line.join(",")).map_err(io)?;
        }
        Ok(())
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.frame, f)
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.frame, f)
    }
}

/// Runs the SQL query `sql` over `tables`, each registered under its name (`FROM samples`).
pub fn query(tables: &[(&str, &Table)], sql: &str) -> Result<Table, Error> {
    let frames: Vec<(&str, LazyFrame)> = tables
        .iter()
        .map(|(n, t)| (*n, t.frame.clone().lazy()))
        .collect();
    query_frames(&frames, sql)
}

/// [`query`] over lazy frames (a scan, [`crate::scan::query_records`]).
pub(crate) fn query_frames(tables: &[(&str, LazyFrame)], sql: &str) -> Result<Table, Error> {
    let mut ctx = SQLContext::new();
    for (name, frame) in tables {
        ctx.register(name, frame.clone());
    }
    let frame = ctx
        .execute(sql)
        .and_then(|lf| lf.collect())
        .map_err(|e| sql_error(sql, e))?;
    Ok(Table { frame })
}

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
