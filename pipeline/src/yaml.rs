//! YAML with positions: the recipe file is parsed into a tree whose every key and item remembers
//! its line and column, then converted to JSON values for typed deserialisation. Errors found later
//! (a wrong type, a dangling reference) are reported at the place in the file they come from.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl From<Marker> for Mark {
    fn from(m: Marker) -> Self {
        Mark {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// Where each value of a document is: JSON-style paths (`stages[2].inputs[0]`) to marks.
#[derive(Debug, Default, Clone)]
pub struct Marks(HashMap<String, Mark>);

impl Marks {
    /// The mark of `path`, or of its nearest enclosing value that has one.
    pub fn find(&self, path: &str) -> Mark {
        let mut p = path.to_string();
        loop {
            if let Some(m) = self.0.get(&p) {
                return *m;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return self.0.get("").copied().unwrap_or_default(),
            }
        }
    }
}

/// A YAML syntax problem, or a construct recipes do not use.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

enum Frame {
    Map {
        map: Map<String, Value>,
        mark: Mark,
        key: Option<(String, Mark)>,
    },
    Seq {
        items: Vec<Value>,
        mark: Mark,
    },
}

struct Builder {
    stack: Vec<Frame>,
    paths: Vec<String>,
    marks: Marks,
    root: Option<Value>,
    error: Option<SyntaxError>,
    documents: usize,
}

impl Builder {
    fn path(&self) -> String {
        self.paths.last().cloned().unwrap_or_default()
    }

    /// The path of the value about to be added to the innermost container.
    fn child_path(&self) -> Option<String> {
        let parent = self.path();
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { items, .. }) => Some(format!("{parent}[{}]", items.len())),
            Some(Frame::Map {
                key: Some((k, _)), ..
            }) => Some(if parent.is_empty() {
                k.clone()
            } else {
                format!("{parent}.{k}")
            }),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn fail(&mut self, mark: Mark, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                mark,
                message: message.into(),
            });
        }
    }

    /// Adds a finished value to the innermost container (or makes it the root).
    fn push(&mut self, value: Value, mark: Mark) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some((k, _)) => {
                    map.insert(k, value);
                }
                None => {
                    // This value is a key.
                    let k = match value {
                        Value::String(s) => s,
                        Value::Null => "null".into(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            self.fail(mark, "a mapping key must be a plain value");
                            return;
                        }
                    };
                    if map.contains_key(&k) {
                        self.fail(mark, format!("duplicate key `{k}`"));
                        return;
                    }
                    let first = map.is_empty();
                    *key = Some((k, mark));
                    if first {
                        // A block mapping is best located by its first key.
                        let own = self.path();
                        self.marks.0.insert(own, mark);
                    }
                    if let Some(p) = self.child_path() {
                        self.marks.0.insert(p, mark);
                    }
                }
            },
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

fn scalar(v: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(v);
    }
    match v.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = v.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = v.parse::<u64>() {
        return Value::Number(u.into());
    }
    let looks_numeric = v
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && v.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = v.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(v)
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        let mark = Mark::from(marker);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(mark, "a recipe is one YAML document; found a second `---`");
                }
            }
            Event::Alias(_) => {
                self.fail(mark, "YAML aliases (`*name`) are not supported in recipes")
            }
            Event::Scalar(v, style, anchor, _) => {
                if anchor != 0 {
                    self.fail(mark, "YAML anchors (`&name`) are not supported in recipes");
                    return;
                }
                let key_position = self.is_key_position();
                if !key_position {
                    if let Some(p) = self.child_path() {
                        self.marks.0.entry(p).or_insert(mark);
                    }
                }
                self.push(scalar(v, style), mark);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if anchor != 0 {
                    self.fail(mark, "YAML anchors (`&name`) are not supported in recipes");
                    return;
                }
                if self.is_key_position() {
                    self.fail(mark, "a mapping key must be a plain value");
                    return;
                }
                let path = self.child_path().unwrap_or_default();
                self.marks.0.entry(path.clone()).or_insert(mark);
                self.paths.push(path);
                self.stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq {
                        items: Vec::new(),
                        mark,
                    }
                } else {
                    Frame::Map {
                        map: Map::new(),
                        mark,
                        key: None,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.paths.pop();
                match self.stack.pop() {
                    Some(Frame::Seq { items, mark }) => self.push(Value::Array(items), mark),
                    Some(Frame::Map { map, mark, .. }) => self.push(Value::Object(map), mark),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// Parses one YAML document into a JSON value and the marks of its paths.
pub fn parse(text: &str) -> Result<(Value, Marks), SyntaxError> {
    let mut b = Builder {
        stack: Vec::new(),
        paths: Vec::new(),
        marks: Marks::default(),
        root: None,
        error: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, true).map_err(|e| SyntaxError {
        mark: Mark::from(*e.marker()),
        message: e.info().to_string(),
    })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok((b.root.unwrap_or(Value::Null), b.marks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_marks() {
        let text = "name: demo\nseed: 7\nratio: 0.5\nquoted: \"7\"\nempty:\nstages:\n  - name: a\n    inputs: [x, y]\n";
        let (v, marks) = parse(text).unwrap();
        assert_eq!(v["name"], "demo");
        assert_eq!(v["seed"], 7);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["quoted"], "7");
        assert!(v["empty"].is_null());
        assert_eq!(v["stages"][0]["inputs"][1], "y");
        assert_eq!(marks.find("seed"), Mark { line: 2, col: 1 });
        assert_eq!(marks.find("stages[0].name"), Mark { line: 7, col: 5 });
        assert_eq!(marks.find("stages[0].inputs[1]").line, 8);
        assert_eq!(
            marks.find("stages[0].nothing.deeper"),
            Mark { line: 7, col: 5 }
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.mark.line, e.message.as_str()), (2, "duplicate key `a`"));
        let e = parse("a: [1, 2\n").unwrap_err();
        assert!(e.mark.line >= 1, "{e:?}");
        let e = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert!(e.message.contains("anchors"), "{e:?}");
    }
}
