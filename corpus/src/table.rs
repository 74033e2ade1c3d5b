//! A small Parquet table writer for analysis outputs (hit lists and the like), so callers need not
//! know Arrow.

use crate::{Error, Result};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The type of a [`TableWriter`] column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Text, possibly null.
    Utf8,
    /// A float, possibly null.
    F64,
    /// An unsigned integer, possibly null.
    U64,
    /// A signed integer, possibly null.
    I64,
    /// True or false, possibly null.
    Bool,
}

/// One cell of a row, matching its column's [`ColumnKind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Str(String),
    F64(f64),
    U64(u64),
    I64(i64),
    Bool(bool),
    Null,
}

const FLUSH_ROWS: usize = 16 * 1024;

/// Writes rows to a Parquet file, buffering a bounded number of rows.
pub struct TableWriter {
    path: PathBuf,
    columns: Vec<(String, ColumnKind)>,
    rows: Vec<Vec<Column>>,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
}

impl TableWriter {
    /// Creates `path` with the given columns.
    pub fn create(path: &Path, columns: &[(&str, ColumnKind)]) -> Result<TableWriter> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, k)| {
                let t = match k {
                    ColumnKind::Utf8 => DataType::Utf8,
                    ColumnKind::F64 => DataType::Float64,
                    ColumnKind::U64 => DataType::UInt64,
                    ColumnKind::I64 => DataType::Int64,
                    ColumnKind::Bool => DataType::Boolean,
                };
                Field::new(*n, t, true)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), None)
            .map_err(|e| Error::parquet(path, e))?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            columns: columns.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
            rows: Vec::new(),
            writer,
            schema,
        })
    }

    /// Appends one row (one cell per column, in order).
    pub fn push(&mut self, row: Vec<Column>) -> Result<()> {
        if row.len() != self.columns.len() {
            return Err(Error::parquet(
                &self.path,
                format!(
                    "row has {} cells, table has {} columns",
                    row.len(),
                    self.columns.len()
                ),
            ));
        }
        self.rows.push(row);
        if self.rows.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, (_, kind))| -> ArrayRef {
                match kind {
                    ColumnKind::Utf8 => {
                        Arc::new(StringArray::from_iter(rows.iter().map(|r| match &r[c] {
                            Column::Str(s) => Some(s.as_str()),
                            _ => None,
                        })))
                    }
                    ColumnKind::F64 => {
                        Arc::new(Float64Array::from_iter(rows.iter().map(|r| match r[c] {
                            Column::F64(v) => Some(v),
                            _ => None,
                        })))
                    }
                    ColumnKind::U64 => {
                        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| match r[c] {
                            Column::U64(v) => Some(v),
                            _ => None,
                        })))
                    }
                    ColumnKind::I64 => {
                        Arc::new(Int64Array::from_iter(rows.iter().map(|r| match r[c] {
                            Column::I64(v) => Some(v),
                            _ => None,
                        })))
                    }
                    ColumnKind::Bool => {
                        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| match r[c] {
                            Column::Bool(v) => Some(v),
                            _ => None,
                        })))
                    }
                }
            })
            .collect();
        let rb = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::parquet(&self.path, e))?;
        self.writer
            .write(&rb)
            .map_err(|e| Error::parquet(&self.path, e))
    }

    /// Writes what is buffered and closes the file.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.writer
            .close()
            .map(|_| ())
            .map_err(|e| Error::parquet(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let mut t =
            TableWriter::create(&p, &[("id", ColumnKind::Utf8), ("r", ColumnKind::F64)]).unwrap();
        t.push(vec![Column::Str("a".into()), Column::F64(0.5)])
            .unwrap();
        t.push(vec![Column::Null, Column::Null]).unwrap();
        assert!(t.push(vec![Column::Null]).is_err());
        t.finish().unwrap();
        let recs = crate::read_records(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].1["id"], "a");
        assert_eq!(recs[0].1["r"], 0.5);
        assert!(recs[1].1["id"].is_null());
    }
}
