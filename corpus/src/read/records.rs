//! Whole files as records (every field a JSON value), for small tables such as benchmark sets,
//! and whole files as bytes.

use super::{json_values, open_reader};
use crate::{Error, Format, Record, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::io::{BufRead, Read};
use std::path::Path;

pub(crate) fn read_records(path: &Path) -> Result<Vec<(u64, Record)>> {
    let mut out = Vec::new();
    match Format::detect(path)? {
        Format::JsonLines(c) => out = read_json_records(open_reader(path, c)?, path)?,
        Format::Parquet => {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| Error::parquet(path, e))?;
            let mut row = 0u64;
            for rb in reader {
                let rb = rb.map_err(|e| Error::parquet(path, e))?;
                let schema = rb.schema();
                let columns: Vec<Vec<serde_json::Value>> = rb
                    .columns()
                    .iter()
                    .map(|c| json_values(c.as_ref()))
                    .collect();
                for r in 0..rb.num_rows() {
                    row += 1;
                    let mut rec = Record::new();
                    for (f, col) in schema.fields().iter().zip(&columns) {
                        rec.insert(f.name().clone(), col[r].clone());
                    }
                    out.push((row, rec));
                }
            }
        }
        _ => {
            return Err(Error::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    }
    if out.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Reads JSON-lines records from any reader (`path` names it in errors). An empty input is an
/// error.
pub fn read_json_records(mut reader: impl BufRead, path: &Path) -> Result<Vec<(u64, Record)>> {
    let mut out = Vec::new();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| Error::Stream {
                path: path.to_path_buf(),
                line: line_no + 1,
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |reason: String| Error::BadRecord {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        let text = std::str::from_utf8(&buf)
            .map_err(|e| bad(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1)))?;
        let record: Record = serde_json::from_str(text)
            .map_err(|e| bad(format!("invalid JSON (expected one object per line): {e}")))?;
        out.push((line_no, record));
    }
    if out.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Reads a whole (possibly compressed) file, for callers that need its bytes (hashing).
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .map_err(|e| Error::io(path, e))?;
    Ok(v)
}
