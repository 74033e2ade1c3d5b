//! Fields of a document's record that filter conditions may read besides the signals
//! (`phiforge filter --field lang:str --where "lang = 'en'"`): their declaration, `NAME:TYPE`,
//! and their [`Values`] from the records' JSON values.
//!
//! ```
//! use curate::fields::Field;
//! use serde_json::json;
//!
//! let f: Field = "score:float".parse()?;
//! let v = f.values(vec![json!(0.5), json!(2), json!(null)]).unwrap();
//! assert_eq!(v, curate::Values::Float(vec![Some(0.5), Some(2.0), None]));
//! let bad = f.values(vec![json!("high")]).unwrap_err();
//! assert_eq!((bad.record, bad.reason.as_str()), (0, "field `score` is a string, not a float"));
//! # Ok::<(), String>(())
//! ```

use crate::signals::ColumnType;
use crate::sql::Values;
use serde_json::Value;

/// One declared field: its name in the records and the type conditions see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: ColumnType,
}

/// A record whose value does not fit its field's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The record's index among the values given.
    pub record: usize,
    pub reason: String,
}

/// The types a field may be declared as, by name.
const TYPES: [(&str, ColumnType); 3] = [
    ("str", ColumnType::Str),
    ("int", ColumnType::Int),
    ("float", ColumnType::Float),
];

impl std::str::FromStr for Field {
    type Err = String;

    /// `NAME:TYPE`, TYPE one of `str`, `int`, `float`.
    fn from_str(spec: &str) -> Result<Field, String> {
        let (name, kind) = spec
            .rsplit_once(':')
            .ok_or_else(|| format!("`{spec}`: give NAME:TYPE (TYPE: str, int or float)"))?;
        let (_, kind) = TYPES
            .into_iter()
            .find(|(n, _)| *n == kind)
            .ok_or_else(|| format!("`{spec}`: type `{kind}` is none of str, int, float"))?;
        if name.is_empty() {
            return Err(format!("`{spec}`: the field's name is empty"));
        }
        Ok(Field {
            name: name.to_string(),
            kind,
        })
    }
}

impl std::fmt::Display for Field {
    /// As declared: `NAME:TYPE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = TYPES
            .iter()
            .find(|(_, k)| *k == self.kind)
            .map_or("?", |(n, _)| n);
        write!(f, "{}:{kind}", self.name)
    }
}

impl Field {
    /// The column of `values` (one per record; null or missing: NULL). A string field takes
    /// strings; an int field integers and booleans (1 and 0, as the yes/no signals); a float
    /// field any number. Anything else is the first record's [`BadValue`].
    pub fn values(&self, values: Vec<Value>) -> Result<Values, BadValue> {
        Ok(match self.kind {
            ColumnType::Str => {
                Values::Str(self.column(&values, "a string", |v| v.as_str().map(String::from))?)
            }
            ColumnType::Int => Values::Int(self.column(&values, "an integer", |v| {
                v.as_i64().or_else(|| v.as_bool().map(i64::from))
            })?),
            ColumnType::Float => Values::Float(self.column(&values, "a float", Value::as_f64)?),
        })
    }

    /// Each of `values` through `cell` (NULL for null), or the first that `cell` refuses.
    fn column<T>(
        &self,
        values: &[Value],
        wanted: &str,
        cell: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<Option<T>>, BadValue> {
        values
            .iter()
            .enumerate()
            .map(|(record, v)| match v {
                Value::Null => Ok(None),
                v => cell(v).map(Some).ok_or_else(|| BadValue {
                    record,
                    reason: format!("field `{}` is {}, not {wanted}", self.name, what(v)),
                }),
            })
            .collect()
    }
}

/// What a JSON value is, for errors.
fn what(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declarations() {
        let f: Field = "meta:lang:str".parse().unwrap();
        assert_eq!((f.name.as_str(), f.kind), ("meta:lang", ColumnType::Str));
        assert_eq!(f.to_string(), "meta:lang:str");
        assert!("lang".parse::<Field>().unwrap_err().contains("NAME:TYPE"));
        assert!("lang:bool".parse::<Field>().unwrap_err().contains("`bool`"));
        assert!(":int".parse::<Field>().unwrap_err().contains("empty"));
    }

    #[test]
    fn values_by_type() {
        let int: Field = "year:int".parse().unwrap();
        assert_eq!(
            int.values(vec![json!(2001), json!(true), json!(null)]),
            Ok(Values::Int(vec![Some(2001), Some(1), None]))
        );
        let e = int.values(vec![json!(1), json!(2.5)]).unwrap_err();
        assert_eq!(e.record, 1);
        assert_eq!(e.reason, "field `year` is the number 2.5, not an integer");
        let s: Field = "lang:str".parse().unwrap();
        assert_eq!(
            s.values(vec![json!("en"), json!(null)]),
            Ok(Values::Str(vec![Some("en".into()), None]))
        );
        assert_eq!(
            s.values(vec![json!(["en"])]).unwrap_err().reason,
            "field `lang` is an array, not a string"
        );
    }
}
