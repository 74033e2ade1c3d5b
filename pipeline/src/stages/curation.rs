//! The curation stages, over the `curate` crate:
//!
//! - `signals` (a transform): each sample goes on with its quality signals
//!   ([`curate::Signals`]) stored beside it, in the shards' `signals` column, so the filters after
//!   it read them instead of computing them again.
//! - `filter` (a filter): keeps the samples for which every rule holds: the rules of its
//!   `presets` in order, then its `where` condition (SQL over the signal columns and the fields
//!   [`FIELDS`]), evaluated by polars on a whole batch at once. A dropped sample's reason is its
//!   first failing rule (`gopher_short_doc`, `where`, ...). A sample without stored signals (no
//!   `signals` stage before, or signals of another version) has them computed for the decision.
//! - `pii` (a transform): e-mail addresses, IP addresses and phone numbers replaced with
//!   placeholders in texts and message contents; each kind can be turned off. A sample with
//!   nothing to replace goes on unchanged; a changed one is new content (a new id, its parent
//!   named in its lineage, no signals: they described the old text). The report counts the
//!   replacements by kind (`changed: 3 pii_email`).
//!
//! Every stage reads its inputs' lineage, so what goes on unchanged keeps it.

use super::{Kind, Outcome, Stage, UnitPlace};
use crate::recipe::{FilterStage, PiiStage};
use crate::sample::{Content, Lineage, Message, Sample};
use crate::{Error, Result};
use curate::sql::Values;
use curate::{ColumnType, Filter, PiiSettings, RowBatch, Scrubber, SignalComputer, Signals};
use rayon::prelude::*;
use serde_json::json;

/// Fields a `filter` condition reads besides the signals: `id`, `class` and `bytes` (UTF-8
/// bytes of the text, or of the messages' contents) of [`curate::sql::DOC_FIELDS`], and these.
pub const FIELDS: [(&str, ColumnType); 2] = [
    // The stage or source that made the sample's content.
    ("stage", ColumnType::Str),
    // Messages of a chat sample (0 for a text).
    ("messages", ColumnType::Int),
];

const SIGNALS_VERSION: u32 = 1;
const FILTER_VERSION: u32 = 1;
const PII_VERSION: u32 = 1;

/// What a `signals` stage's output depends on besides its configuration.
pub(super) fn signals_implementation() -> serde_json::Value {
    json!({"version": SIGNALS_VERSION, "signals": curate::signals::VERSION})
}

/// What a `filter` stage's decisions depend on besides its configuration.
pub(super) fn filter_implementation() -> serde_json::Value {
    json!({"version": FILTER_VERSION, "signals": curate::signals::VERSION})
}

/// What a `pii` stage's output depends on besides its configuration.
pub(super) fn pii_implementation() -> serde_json::Value {
    json!({"version": PII_VERSION})
}

/// The stored signals of `s`, or computed ones.
fn signals_of(computer: &mut SignalComputer, s: &Sample) -> Signals {
    s.signals
        .as_ref()
        .and_then(Signals::from_json)
        .unwrap_or_else(|| computer.compute(&s.content.text()))
}

/// The running `signals` stage.
pub struct ComputeSignals;

impl Stage for ComputeSignals {
    fn kind(&self) -> Kind {
        Kind::Transform
    }

    fn reads_lineage(&self) -> bool {
        true
    }

    fn process(&self, input: &Sample) -> Result<Outcome> {
        self.process_batch(&[input])
            .map(|mut v| v.pop().unwrap_or(Outcome::Keep))
    }

    fn process_batch(&self, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        let mut computer = SignalComputer::new();
        Ok(inputs
            .iter()
            .map(|s| {
                let signals = computer.compute(&s.content.text());
                let mut out = (*s).clone();
                out.signals = Some(signals.to_json());
                Outcome::Emit(vec![out])
            })
            .collect())
    }
}

/// The running `filter` stage.
pub struct SqlFilter {
    name: String,
    filter: Filter,
}

impl SqlFilter {
    pub fn new(f: &FilterStage) -> Result<SqlFilter> {
        let filter = Filter::of(&FIELDS, &f.presets, f.condition.as_deref())
            .map_err(|e| Error::stage(&f.name, e))?;
        Ok(SqlFilter {
            name: f.name.clone(),
            filter,
        })
    }
}

impl Stage for SqlFilter {
    fn kind(&self) -> Kind {
        Kind::Filter
    }

    fn reads_lineage(&self) -> bool {
        true
    }

    fn process(&self, input: &Sample) -> Result<Outcome> {
        self.process_batch(&[input])
            .map(|mut v| v.pop().unwrap_or(Outcome::Keep))
    }

    /// Signals on all cores, then every rule over the whole batch at once.
    fn process_unit(&self, _unit: &UnitPlace, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        self.process_batch(inputs)
    }

    fn process_batch(&self, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        let signals: Vec<Signals> = inputs
            .par_iter()
            .map_init(SignalComputer::new, |c, s| signals_of(c, s))
            .collect();
        let str_field = |f: &dyn Fn(&Sample) -> String| {
            Values::Str(inputs.iter().map(|s| Some(f(s))).collect())
        };
        let int_field = |f: &dyn Fn(&Sample) -> usize| {
            Values::Int(inputs.iter().map(|s| Some(f(s) as i64)).collect())
        };
        let rows = RowBatch::new(signals)
            .with_field("id", str_field(&|s| s.id.clone()))
            .and_then(|r| r.with_field("class", str_field(&|s| s.class.as_str().to_string())))
            .and_then(|r| r.with_field("stage", str_field(&|s| s.lineage.stage.clone())))
            .and_then(|r| r.with_field("bytes", int_field(&|s| s.content.text_bytes())))
            .and_then(|r| {
                r.with_field(
                    "messages",
                    int_field(&|s| match &s.content {
                        Content::Text { .. } => 0,
                        Content::Messages { messages } => messages.len(),
                    }),
                )
            })
            .map_err(|e| Error::stage(&self.name, e))?;
        let decided = self
            .filter
            .decide(&rows)
            .map_err(|e| Error::stage(&self.name, e))?;
        Ok(decided
            .into_iter()
            .map(|d| match d {
                None => Outcome::Keep,
                Some(reason) => Outcome::Drop(reason.to_string()),
            })
            .collect())
    }
}

/// The running `pii` stage.
pub struct Pii {
    name: String,
    fp: String,
    scrubber: Scrubber,
}

/// Report keys of the kinds replaced, with the placeholder each leaves.
const KINDS: [(&str, &str); 3] = [
    ("pii_email", curate::pii::EMAIL_PLACEHOLDER),
    ("pii_ip", curate::pii::IP_PLACEHOLDER),
    ("pii_phone", curate::pii::PHONE_PLACEHOLDER),
];

impl Pii {
    pub fn new(p: &PiiStage, fp: &str) -> Result<Pii> {
        let settings = PiiSettings {
            email: p.email,
            ip: p.ip,
            phone: p.phone,
        };
        Ok(Pii {
            name: p.name.clone(),
            fp: fp.to_string(),
            scrubber: Scrubber::new(settings).map_err(|e| Error::stage(&p.name, e))?,
        })
    }

    /// `text` scrubbed, or `None` when nothing in it was replaced.
    fn scrub(&self, text: &str) -> Option<String> {
        let (out, counts) = self.scrubber.scrub(text);
        (counts.total() > 0).then(|| out.into_owned())
    }
}

impl Stage for Pii {
    fn kind(&self) -> Kind {
        Kind::Transform
    }

    fn reads_lineage(&self) -> bool {
        true
    }

    fn process(&self, input: &Sample) -> Result<Outcome> {
        let content = match &input.content {
            Content::Text { text } => match self.scrub(text) {
                Some(text) => Content::Text { text },
                None => return Ok(Outcome::Keep),
            },
            Content::Messages { messages } => {
                let scrubbed: Vec<Option<String>> =
                    messages.iter().map(|m| self.scrub(&m.content)).collect();
                if scrubbed.iter().all(Option::is_none) {
                    return Ok(Outcome::Keep);
                }
                Content::Messages {
                    messages: messages
                        .iter()
                        .zip(scrubbed)
                        .map(|(m, s)| Message {
                            role: m.role.clone(),
                            content: s.unwrap_or_else(|| m.content.clone()),
                        })
                        .collect(),
                }
            }
        };
        Ok(Outcome::Emit(vec![Sample::new(
            input.class,
            content,
            Lineage {
                stage: self.name.clone(),
                stage_fingerprint: self.fp.clone(),
                parents: vec![input.id.clone()],
                ..Default::default()
            },
        )]))
    }

    /// Placeholders in `output` that `input` did not have, by kind.
    fn changes(&self, input: &Sample, output: &Sample) -> Vec<(&'static str, u64)> {
        let (before, after) = (input.content.text(), output.content.text());
        KINDS
            .iter()
            .map(|(kind, placeholder)| {
                let n = after.matches(placeholder).count();
                let m = before.matches(placeholder).count();
                (*kind, n.saturating_sub(m) as u64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::MixClass;

    fn text(t: &str) -> Sample {
        Sample::new(
            MixClass::Web,
            Content::Text { text: t.into() },
            Lineage::default(),
        )
    }

    fn filter(presets: &[&str], condition: Option<&str>) -> SqlFilter {
        SqlFilter::new(&FilterStage {
            name: "f".into(),
            inputs: vec![],
            presets: presets.iter().map(|p| p.to_string()).collect(),
            condition: condition.map(str::to_string),
        })
        .unwrap()
    }

    #[test]
    fn signals_go_on_with_the_sample_and_the_filter_reads_them() {
        let s = text("The cat sat on the mat. It was happy with that.");
        let Outcome::Emit(out) = ComputeSignals.process(&s).unwrap() else {
            panic!("signals is a transform")
        };
        assert_eq!(out[0].id, s.id);
        let stored = out[0].signals.clone().unwrap();
        assert_eq!(stored["words"], 11);
        // Stored signals are what the filter reads: doctor them and the decision follows.
        let mut doctored = out[0].clone();
        doctored.signals.as_mut().unwrap()["words"] = json!(1000);
        let f = filter(&[], Some("words > 100"));
        assert_eq!(f.process(&out[0]).unwrap(), Outcome::Drop("where".into()));
        assert_eq!(f.process(&doctored).unwrap(), Outcome::Keep);
        // Without stored signals they are computed.
        assert_eq!(f.process(&s).unwrap(), Outcome::Drop("where".into()));
    }

    #[test]
    fn the_filter_reads_fields_and_presets_in_order() {
        let f = filter(&["gopher_quality"], Some("class = 'code'"));
        let short = text("Too short to be a document.");
        assert_eq!(
            f.process(&short).unwrap(),
            Outcome::Drop("gopher_short_doc".into())
        );
        let f = filter(&[], Some("class = 'web' AND stage = '' AND messages = 0"));
        assert_eq!(f.process(&short).unwrap(), Outcome::Keep);
        let e = SqlFilter::new(&FilterStage {
            name: "bad".into(),
            inputs: vec![],
            presets: vec![],
            condition: Some("wordz > 3".into()),
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("bad") && e.contains("wordz"), "{e}");
    }

    #[test]
    fn pii_replaces_counts_and_keeps_what_has_none() {
        let p = Pii::new(
            &PiiStage {
                name: "pii".into(),
                inputs: vec![],
                email: true,
                ip: false,
                phone: true,
            },
            "fp",
        )
        .unwrap();
        let clean = text("nothing to see here");
        assert_eq!(p.process(&clean).unwrap(), Outcome::Keep);
        let dirty = text("mail bob@mail.example.com or ann@example.org from 8.8.8.8");
        let Outcome::Emit(out) = p.process(&dirty).unwrap() else {
            panic!("a changed sample is new content")
        };
        assert_eq!(
            out[0].content.text(),
            "mail |||EMAIL_ADDRESS||| or |||EMAIL_ADDRESS||| from 8.8.8.8"
        );
        assert_eq!(out[0].lineage.parents, [dirty.id.as_str()]);
        assert_ne!(out[0].id, dirty.id);
        let changes = p.changes(&dirty, &out[0]);
        assert!(changes.contains(&("pii_email", 2)), "{changes:?}");
        assert!(changes.contains(&("pii_ip", 0)), "{changes:?}");
    }
}
