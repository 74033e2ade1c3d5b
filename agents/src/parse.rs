//! Reading structured replies by a declared rule. A reply that does not follow its rule is an
//! [`Unparsed`] with the reason; flows ask again a bounded number of times, then drop the input.
//!
//! - `json`: the first JSON object in the reply (inside a code fence or not) with the required
//!   fields present: a list of names, or a schema of names and their JSON types
//!   (`{faithful: boolean, score: number}`);
//! - `tags`: `<name>...</name>` sections, each required;
//! - `regex`: a regular expression whose named groups are the fields.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a reply is read into fields; in a recipe `{json: [required, ...]}` (or
/// `{json: {field: type, ...}}`), `{tags: [name, ...]}` or `{regex: PATTERN}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// The first JSON object in the reply, with these fields present.
    Json(JsonFields),
    /// `<name>...</name>` sections, each required (and not empty).
    Tags(Vec<String>),
    /// A regular expression whose named groups are the fields.
    Regex(String),
}

/// The fields a JSON reply must have: names, or names with their types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonFields {
    Names(Vec<String>),
    Typed(std::collections::BTreeMap<String, JsonType>),
}

/// A JSON value's type, as JSON Schema names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonType {
    String,
    Number,
    Integer,
    Boolean,
    Array,
    Object,
}

impl JsonType {
    fn holds(self, v: &Value) -> bool {
        match self {
            JsonType::String => v.is_string(),
            JsonType::Number => v.is_number(),
            JsonType::Integer => v.is_i64() || v.is_u64(),
            JsonType::Boolean => v.is_boolean(),
            JsonType::Array => v.is_array(),
            JsonType::Object => v.is_object(),
        }
    }
}

impl Rule {
    /// A JSON rule requiring `names`.
    pub fn json(names: &[&str]) -> Rule {
        Rule::Json(JsonFields::Names(
            names.iter().map(|n| n.to_string()).collect(),
        ))
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed(pub String);

impl Rule {
    /// The fields the rule gives when it reads a reply (a JSON reply may give more).
    pub fn fields(&self) -> Vec<String> {
        match self {
            Rule::Json(JsonFields::Names(f)) | Rule::Tags(f) => f.clone(),
            Rule::Json(JsonFields::Typed(f)) => f.keys().cloned().collect(),
            Rule::Regex(p) => Regex::new(p)
                .map(|r| r.capture_names().flatten().map(String::from).collect())
                .unwrap_or_default(),
        }
    }

    /// Checks the rule itself (a regex that compiles, with named groups).
    pub fn problem(&self) -> Option<String> {
        match self {
            Rule::Regex(pattern) => match Regex::new(pattern) {
                Err(e) => Some(format!("regex: {e}")),
                Ok(r) if r.capture_names().flatten().next().is_none() => {
                    Some("the regex needs named groups, e.g. (?P<answer>.+)".into())
                }
                Ok(_) => None,
            },
            Rule::Json(_) => None,
            Rule::Tags(tags) if tags.is_empty() => Some("name at least one tag".into()),
            Rule::Tags(_) => None,
        }
    }

    /// The fields of `reply`.
    pub fn parse(&self, reply: &str) -> Result<Map<String, Value>, Unparsed> {
        match self {
            Rule::Json(required) => {
                let v = first_json_object(reply)
                    .ok_or_else(|| Unparsed("no JSON object in the reply".into()))?;
                let wanted: Vec<(&String, Option<JsonType>)> = match required {
                    JsonFields::Names(n) => n.iter().map(|f| (f, None)).collect(),
                    JsonFields::Typed(t) => t.iter().map(|(f, ty)| (f, Some(*ty))).collect(),
                };
                for (f, ty) in wanted {
                    match (v.get(f), ty) {
                        (None, _) => return Err(Unparsed(format!("the JSON has no `{f}`"))),
                        (Some(x), Some(ty)) if !ty.holds(x) => {
                            let ty = serde_json::to_value(ty).unwrap_or_default();
                            return Err(Unparsed(format!(
                                "the JSON's `{f}` is not of type {}: {x}",
                                ty.as_str().unwrap_or("?")
                            )));
                        }
                        _ => {}
                    }
                }
                Ok(v)
            }
            Rule::Tags(tags) => {
                let mut out = Map::new();
                for t in tags {
                    let (open, close) = (format!("<{t}>"), format!("</{t}>"));
                    let start = reply
                        .find(&open)
                        .ok_or_else(|| Unparsed(format!("no <{t}> section")))?
                        + open.len();
                    let end = reply[start..]
                        .find(&close)
                        .ok_or_else(|| Unparsed(format!("<{t}> is not closed")))?;
                    let value = reply[start..start + end].trim();
                    if value.is_empty() {
                        return Err(Unparsed(format!("<{t}> is empty")));
                    }
                    out.insert(t.clone(), Value::String(value.to_string()));
                }
                Ok(out)
            }
            Rule::Regex(pattern) => {
                let re = Regex::new(pattern).map_err(|e| Unparsed(format!("regex: {e}")))?;
                let caps = re
                    .captures(reply)
                    .ok_or_else(|| Unparsed("the reply does not match the regex".into()))?;
                Ok(re
                    .capture_names()
                    .flatten()
                    .filter_map(|n| {
                        caps.name(n)
                            .map(|m| (n.to_string(), Value::String(m.as_str().trim().to_string())))
                    })
                    .collect())
            }
        }
    }
}

/// The first `{...}` in `text` that parses as a JSON object.
fn first_json_object(text: &str) -> Option<Map<String, Value>> {
    let mut from = 0;
    while let Some(k) = text[from..].find('{') {
        let start = from + k;
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(m))) = stream.next() {
            return Some(m);
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_reads_its_fields_or_says_why_not() {
        let json = Rule::json(&["scores"]);
        let reply = "Here you go:\n```json\n{\"scores\": {\"a\": 7}, \"feedback\": \"ok\"}\n```";
        assert_eq!(json.parse(reply).unwrap()["scores"]["a"], 7);
        assert_eq!(
            json.parse("{\"feedback\": 1}"),
            Err(Unparsed("the JSON has no `scores`".into()))
        );
        assert_eq!(
            json.parse("no braces {here"),
            Err(Unparsed("no JSON object in the reply".into()))
        );

        let tags = Rule::Tags(vec!["question".into(), "answer".into()]);
        let got = tags
            .parse("<question> 2+2? </question>\n<answer>4</answer>")
            .unwrap();
        assert_eq!(
            (got["question"].as_str(), got["answer"].as_str()),
            (Some("2+2?"), Some("4"))
        );
        assert_eq!(
            tags.parse("<question>x</question>"),
            Err(Unparsed("no <answer> section".into()))
        );

        let re = Rule::Regex(r"Answer:\s*(?P<answer>-?\d+)".into());
        assert_eq!(re.parse("so... Answer: 42").unwrap()["answer"], "42");
        assert!(re.parse("no idea").is_err());
        assert!(Rule::Regex("(a".into()).problem().is_some());
        assert!(Rule::Regex("a+".into()).problem().is_some());
        assert_eq!(
            tags.parse("<question> </question><answer>4</answer>"),
            Err(Unparsed("<question> is empty".into()))
        );
        let spec: Rule = serde_json::from_str(r#"{"tags": ["question"]}"#).unwrap();
        assert_eq!(spec, Rule::Tags(vec!["question".into()]));
        let typed: Rule =
            serde_json::from_str(r#"{"json": {"faithful": "boolean", "score": "integer"}}"#)
                .unwrap();
        assert_eq!(typed.fields(), ["faithful", "score"]);
        assert_eq!(
            typed.parse(r#"{"faithful": true, "score": 7}"#).unwrap()["score"],
            7
        );
        assert_eq!(
            typed.parse(r#"{"faithful": "yes", "score": 7}"#),
            Err(Unparsed(
                "the JSON's `faithful` is not of type boolean: \"yes\"".into()
            ))
        );
        assert!(typed.parse(r#"{"faithful": true, "score": 7.5}"#).is_err());
    }
}
