//! `template`: rewrites each sample's text with a MiniJinja template (variables `text`, `id`,
//! `class`). A transform: its units write the new samples, each with its parent's id.

use super::{Kind, Outcome, Stage};
use crate::recipe::TemplateStage;
use crate::sample::{Content, Lineage, Sample};
use crate::{Error, Result};
use serde_json::json;
use xxhash_rust::xxh3::xxh3_128;

const VERSION: u32 = 1;

fn template_hash(t: &TemplateStage) -> String {
    format!("{:032x}", xxh3_128(t.template.as_bytes()))
}

pub(super) fn implementation(t: &TemplateStage) -> serde_json::Value {
    json!({"version": VERSION, "template_hash": template_hash(t)})
}

/// The running stage.
pub struct Template {
    name: String,
    fp: String,
    template_hash: String,
    env: minijinja::Environment<'static>,
}

impl Template {
    pub fn new(t: &TemplateStage, fp: &str) -> Result<Template> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned("t", t.template.clone())
            .map_err(|e| Error::stage(&t.name, format!("template: {e}")))?;
        Ok(Template {
            name: t.name.clone(),
            fp: fp.to_string(),
            template_hash: template_hash(t),
            env,
        })
    }
}

impl Stage for Template {
    fn kind(&self) -> Kind {
        Kind::Transform
    }

    fn process(&self, input: &Sample) -> Result<Outcome> {
        let t = self
            .env
            .get_template("t")
            .map_err(|e| Error::stage(&self.name, e))?;
        let text = t
            .render(json!({"text": input.content.text(), "id": input.id, "class": input.class}))
            .map_err(|e| Error::stage(&self.name, format!("sample {}: {e}", input.id)))?;
        Ok(Outcome::Emit(vec![Sample::new(
            input.class,
            Content::Text { text },
            Lineage {
                stage: self.name.clone(),
                stage_fingerprint: self.fp.clone(),
                parents: vec![input.id.clone()],
                template_hash: Some(self.template_hash.clone()),
                ..Default::default()
            },
        )]))
    }
}
