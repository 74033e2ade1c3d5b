//! JSON-lines records: only the text and id fields (and any fields a caller names, such as
//! `phiforge filter --field`'s) are materialised, the rest skipped, in one pass (serde visitors
//! over borrowed input, so a line without escapes is not copied).

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Which fields hold a document's text and id.
#[derive(Debug, Clone)]
pub struct TextSpec {
    /// The text field. Its value is a string, or a chat `messages` array whose contents are joined
    /// with newlines. With the default (`text`), a record without `text` but with `messages` uses
    /// `messages`.
    pub text_field: String,
    /// The id field (string or integer). Records without one get `FILE:LINE`.
    pub id_field: String,
}

impl Default for TextSpec {
    fn default() -> Self {
        TextSpec {
            text_field: "text".into(),
            id_field: "id".into(),
        }
    }
}

impl TextSpec {
    pub(crate) fn falls_back_to_messages(&self) -> bool {
        self.text_field == "text"
    }
}

pub(crate) struct Extracted<'a> {
    pub(crate) text: Option<TextValue<'a>>,
    pub(crate) messages: Option<TextValue<'a>>,
    pub(crate) id: Option<Cow<'a, str>>,
    /// The values of the named fields, in the order named; null where the record has none.
    pub(crate) fields: Vec<serde_json::Value>,
}

/// Parses one JSON line for its text, its id and the values of the fields `names`.
pub(crate) fn parse_line<'a>(
    line: &'a str,
    spec: &TextSpec,
    names: &[&str],
) -> serde_json::Result<Extracted<'a>> {
    let mut de = serde_json::Deserializer::from_str(line);
    let v = Extract { spec, names }.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Extract<'s> {
    spec: &'s TextSpec,
    names: &'s [&'s str],
}

impl<'de> DeserializeSeed<'de> for Extract<'_> {
    type Value = Extracted<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Extract<'_> {
    type Value = Extracted<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Extracted {
            text: None,
            messages: None,
            id: None,
            fields: vec![serde_json::Value::Null; self.names.len()],
        };
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let key = key.0;
            if let Some(j) = self.names.iter().position(|n| *n == key) {
                // A named field may also be the text or the id: both are read from its value.
                let value: serde_json::Value = map.next_value()?;
                if key == self.spec.text_field {
                    out.text =
                        Some(TextValue::deserialize(value.clone()).map_err(de::Error::custom)?);
                } else if key == self.spec.id_field {
                    out.id = IdValue::deserialize(value.clone())
                        .map_err(de::Error::custom)?
                        .0;
                } else if key == "messages" && self.spec.falls_back_to_messages() {
                    out.messages =
                        Some(TextValue::deserialize(value.clone()).map_err(de::Error::custom)?);
                }
                out.fields[j] = value;
            } else if key == self.spec.text_field {
                out.text = Some(map.next_value()?);
            } else if key == self.spec.id_field {
                out.id = map.next_value::<IdValue<'de>>()?.0;
            } else if key == "messages" && self.spec.falls_back_to_messages() {
                out.messages = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// An id: a string or a number; `null` counts as absent.
struct IdValue<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for IdValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or number id")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(IdValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The text field's value: a string, a chat `messages` array, or something unusable (kept so the
/// error can say what it was).
pub(crate) enum TextValue<'a> {
    Text(Cow<'a, str>),
    Messages(Vec<String>),
    Other(&'static str),
}

impl<'a> TextValue<'a> {
    pub(crate) fn into_text(self) -> std::result::Result<Cow<'a, str>, String> {
        match self {
            TextValue::Text(t) => Ok(t),
            TextValue::Messages(m) => Ok(Cow::Owned(m.join("\n"))),
            TextValue::Other(what) => {
                Err(format!("is {what}, not a string or a chat messages array"))
            }
        }
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<MessagePart>),
}

#[derive(Deserialize)]
struct MessagePart {
    #[serde(default)]
    pub(crate) text: Option<String>,
}

impl<'de> Deserialize<'de> for TextValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a messages array")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TextValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextValue::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(TextValue::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(m) = seq.next_element::<Message>()? {
                    match m.content {
                        Some(MessageContent::Text(t)) => parts.push(t),
                        Some(MessageContent::Parts(ps)) => {
                            parts.extend(ps.into_iter().filter_map(|p| p.text))
                        }
                        None => {}
                    }
                }
                Ok(TextValue::Messages(parts))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TextValue::Other("an object"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TextValue::Other("null"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TextValue::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TextValue::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TextValue::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TextValue::Other("a number"))
            }
        }
        d.deserialize_any(V)
    }
}
