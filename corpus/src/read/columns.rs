//! Arrow columns as owned strings (a Parquet file's text and id columns) or as JSON values (its
//! other columns, for `--field` and for whole records).

use crate::{Error, Result};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use std::path::Path;

/// Reads a column of string (or integer, for ids) type as owned strings.
pub(super) fn string_column(
    path: &Path,
    rb: &RecordBatch,
    name: &str,
) -> Result<Vec<Option<String>>> {
    let col = rb
        .column_by_name(name)
        .ok_or_else(|| Error::ParquetColumn {
            path: path.to_path_buf(),
            column: name.into(),
            message: "no such column".into(),
        })?;
    if let Some(strings) = utf8_values(col.as_ref()) {
        return Ok(strings);
    }
    let out = match col.data_type() {
        DataType::Int64 | DataType::Int32 | DataType::UInt64 | DataType::UInt32 => {
            let values = json_values(col.as_ref());
            values
                .into_iter()
                .map(|v| (!v.is_null()).then(|| v.to_string()))
                .collect()
        }
        other => {
            return Err(Error::ParquetColumn {
                path: path.to_path_buf(),
                column: name.into(),
                message: format!("type {other} is not supported here (need a string column)"),
            })
        }
    };
    Ok(out)
}

/// The values of a string column (any of Arrow's three string layouts); `None` for other types.
fn utf8_values(col: &dyn Array) -> Option<Vec<Option<String>>> {
    use arrow_array::cast::AsArray;
    let owned = |v: Option<&str>| v.map(String::from);
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().iter().map(owned).collect()),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().iter().map(owned).collect()),
        DataType::Utf8View => Some(col.as_string_view().iter().map(owned).collect()),
        _ => None,
    }
}

/// Converts the common Arrow types to JSON values (others become null).
pub(super) fn json_values(col: &dyn Array) -> Vec<serde_json::Value> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use serde_json::Value;
    let n = col.len();
    macro_rules! prim {
        ($t:ty) => {{
            let a = col.as_primitive::<$t>();
            (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        serde_json::json!(a.value(i))
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }};
    }
    match col.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = utf8_values(col).unwrap_or_default();
            strings
                .into_iter()
                .map(|s| s.map(Value::String).unwrap_or(Value::Null))
                .collect()
        }
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Boolean => {
            let a = col.as_boolean();
            (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        Value::Bool(a.value(i))
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
        DataType::List(_) | DataType::LargeList(_) => (0..n)
            .map(|i| {
                if !col.is_valid(i) {
                    return Value::Null;
                }
                let inner = match col.data_type() {
                    DataType::List(_) => col.as_list::<i32>().value(i),
                    _ => col.as_list::<i64>().value(i),
                };
                Value::Array(json_values(inner.as_ref()))
            })
            .collect(),
        _ => vec![Value::Null; n],
    }
}
