//! Fields of a batch's records besides id and text (`phiforge filter --field`).

use super::{json_values, Batch, Kind};
use crate::{Error, Result};
use arrow_array::Array;
use arrow_schema::DataType;

impl Batch {
    /// The values of the fields `names` in every record, `[field][record]`: a field a record
    /// lacks (or a text file, which has no fields) is null. A JSON line that is not an object,
    /// and a Parquet column whose type is not a string, number or boolean, is an error naming
    /// file and line.
    pub fn fields(&self, names: &[&str]) -> Result<Vec<Vec<serde_json::Value>>> {
        use serde_json::Value;
        let n = self.len();
        let mut out = vec![Vec::with_capacity(n); names.len()];
        match &self.kind {
            Kind::Lines { buf, lines } => {
                for &(line, s, e) in lines {
                    let mut record: serde_json::Map<String, Value> =
                        serde_json::from_slice(&buf[s..e]).map_err(|e| Error::BadRecord {
                            path: self.path.to_path_buf(),
                            line,
                            reason: format!("not a JSON object: {e}"),
                        })?;
                    for (values, name) in out.iter_mut().zip(names) {
                        values.push(record.remove(*name).unwrap_or(Value::Null));
                    }
                }
            }
            Kind::Rows {
                batch, first_row, ..
            } => {
                for (values, name) in out.iter_mut().zip(names) {
                    let Some(col) = batch.column_by_name(name) else {
                        *values = vec![Value::Null; n];
                        continue;
                    };
                    let t = col.data_type();
                    // The types `json_values` converts (it makes any other null).
                    let convertible = matches!(
                        t,
                        DataType::Utf8
                            | DataType::LargeUtf8
                            | DataType::Utf8View
                            | DataType::Boolean
                    ) || t.is_integer()
                        || matches!(t, DataType::Float32 | DataType::Float64);
                    if !convertible {
                        return Err(Error::BadRecord {
                            path: self.path.to_path_buf(),
                            line: *first_row,
                            reason: format!(
                                "column `{name}` is of type {t}, not a string, number or boolean"
                            ),
                        });
                    }
                    *values = json_values(col.as_ref());
                }
            }
            Kind::Files { .. } => out.iter_mut().for_each(|v| *v = vec![Value::Null; n]),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::{BatchReader, TextSpec};
    use serde_json::{json, Value};
    use std::path::Path;

    fn fields(path: &Path, names: &[&str]) -> crate::Result<Vec<Vec<Value>>> {
        let mut out = vec![Vec::new(); names.len()];
        for b in BatchReader::open(path, &TextSpec::default(), true)? {
            for (all, these) in out.iter_mut().zip(b?.fields(names)?) {
                all.extend(these);
            }
        }
        Ok(out)
    }

    #[test]
    fn json_lines_fields_missing_ones_null() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"a\", \"lang\": \"en\", \"score\": 0.5}\n\n{\"text\": \"b\", \"lang\": null}\n",
        )
        .unwrap();
        let got = fields(&p, &["lang", "score"]).unwrap();
        assert_eq!(got[0], vec![json!("en"), Value::Null]);
        assert_eq!(got[1], vec![json!(0.5), Value::Null]);
        std::fs::write(&p, "{\"text\": \"a\"}\n[1, 2]\n").unwrap();
        let e = fields(&p, &["lang"]).unwrap_err().to_string();
        assert!(e.contains("a.jsonl: line 2: not a JSON object"), "{e}");
    }

    #[test]
    fn parquet_columns_and_unconvertible_types() {
        use arrow_array::{BinaryArray, Int64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.parquet");
        let batch = RecordBatch::try_from_iter([
            ("text", Arc::new(StringArray::from(vec!["a", "b"])) as _),
            (
                "year",
                Arc::new(Int64Array::from(vec![Some(2001), None])) as _,
            ),
            (
                "blob",
                Arc::new(BinaryArray::from_vec(vec![b"x", b"y"])) as _,
            ),
        ])
        .unwrap();
        let file = std::fs::File::create(&p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let got = fields(&p, &["year", "lang"]).unwrap();
        assert_eq!(got[0], vec![json!(2001), Value::Null]);
        assert_eq!(got[1], vec![Value::Null, Value::Null]);
        let e = fields(&p, &["blob"]).unwrap_err().to_string();
        assert!(
            e.contains("a.parquet: line 1: column `blob` is of type Binary"),
            "{e}"
        );
    }
}
