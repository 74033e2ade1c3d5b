//! Fields of a batch's records besides id and text (`phiforge filter --field`).

use super::{json_values, Batch, Kind};
use crate::{Error, Result};
use arrow_array::Array;
use arrow_schema::DataType;
use serde_json::Value;

/// Fields of a batch's records that a caller reads besides id and text, made by
/// [`Batch::fields`] and read record by record with [`Batch::doc_with`].
pub struct Fields<'n> {
    pub(super) names: Vec<&'n str>,
    /// Parquet: each named column's values, converted once per batch. JSON lines: none (each
    /// line's values come from the pass that parses its text).
    columns: Option<Vec<Vec<Value>>>,
}

impl Fields<'_> {
    /// No fields.
    pub fn none() -> Fields<'static> {
        Fields {
            names: Vec::new(),
            columns: None,
        }
    }

    /// The values of row `i` of a batch with columns (null where there is none).
    pub(super) fn row(&self, i: usize) -> Vec<Value> {
        match &self.columns {
            Some(columns) => columns.iter().map(|c| c[i].clone()).collect(),
            None => vec![Value::Null; self.names.len()],
        }
    }
}

impl Batch {
    /// Prepares reading the fields `names` of this batch's records with [`Batch::doc_with`]: a
    /// field a record lacks (or a text file, which has no fields) is null. A Parquet column
    /// whose type is not a string, number or boolean is an error naming file and row; a JSON
    /// line that is not an object is one when its record is read.
    pub fn fields<'n>(&self, names: &[&'n str]) -> Result<Fields<'n>> {
        let columns = match &self.kind {
            Kind::Lines { .. } => None,
            Kind::Rows {
                batch, first_row, ..
            } => {
                let mut columns = Vec::with_capacity(names.len());
                for name in names {
                    let Some(col) = batch.column_by_name(name) else {
                        columns.push(vec![Value::Null; self.len()]);
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
                    columns.push(json_values(col.as_ref()));
                }
                Some(columns)
            }
            Kind::Files { .. } => None,
        };
        Ok(Fields {
            names: names.to_vec(),
            columns,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{BatchReader, TextSpec};
    use serde_json::{json, Value};
    use std::path::Path;

    /// `[field][record]` over the whole file, and the texts.
    fn fields(path: &Path, names: &[&str]) -> crate::Result<Vec<Vec<Value>>> {
        Ok(texts_and_fields(path, &TextSpec::default(), names)?.1)
    }

    fn texts_and_fields(
        path: &Path,
        spec: &TextSpec,
        names: &[&str],
    ) -> crate::Result<(Vec<String>, Vec<Vec<Value>>)> {
        let (mut texts, mut out) = (Vec::new(), vec![Vec::new(); names.len()]);
        for b in BatchReader::open(path, spec, true)? {
            let b = b?;
            let fields = b.fields(names)?;
            for i in 0..b.len() {
                let (doc, values) = b.doc_with(i, spec, &fields)?;
                texts.push(doc.text.into_owned());
                for (all, v) in out.iter_mut().zip(values) {
                    all.push(v);
                }
            }
        }
        Ok((texts, out))
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
        assert!(
            e.contains("a.jsonl: line 2: invalid JSON") && e.contains("expected a JSON object"),
            "{e}"
        );
    }

    #[test]
    fn a_field_may_be_the_text_or_the_id_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(
            &p,
            "{\"id\": 7, \"text\": \"caf\\u00e9\", \"n\": 1}\n{\"text\": \"b\"}\n",
        )
        .unwrap();
        let spec = TextSpec::default();
        let (texts, got) = texts_and_fields(&p, &spec, &["text", "id", "n"]).unwrap();
        assert_eq!(texts, ["café", "b"]);
        assert_eq!(got[0], vec![json!("café"), json!("b")]);
        assert_eq!(got[1], vec![json!(7), Value::Null]);
        assert_eq!(got[2], vec![json!(1), Value::Null]);
        // The text is still checked when it is also a field.
        std::fs::write(&p, "{\"text\": 3}\n").unwrap();
        let e = texts_and_fields(&p, &spec, &["text"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: field `text` is a number"), "{e}");
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
