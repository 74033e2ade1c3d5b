//! A flow's prompt templates (MiniJinja), by name: checked when a recipe is, compiled once, and
//! rendered per request.

use crate::client::CallError;
use crate::Error;

/// Compiled templates.
pub(crate) struct Prompts {
    env: minijinja::Environment<'static>,
}

impl Prompts {
    /// Compiles `(name, text)` templates.
    pub(crate) fn new(templates: &[(&str, &str)]) -> Result<Prompts, Error> {
        let mut env = minijinja::Environment::new();
        for (name, text) in templates {
            env.add_template_owned(name.to_string(), text.to_string())
                .map_err(|e| Error::Template {
                    name: name.to_string(),
                    message: e.to_string(),
                })?;
        }
        Ok(Prompts { env })
    }

    /// Renders template `name` with `ctx`.
    pub(crate) fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, CallError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| {
                CallError::Cache(Error::Template {
                    name: name.into(),
                    message: e.to_string(),
                })
            })
    }
}

/// Syntax errors of the templates a recipe overrides, by field.
pub(crate) fn problems(
    overrides: &[(&'static str, &Option<String>)],
) -> Vec<(&'static str, String)> {
    let env = minijinja::Environment::new();
    overrides
        .iter()
        .filter_map(|(field, t)| {
            let t = t.as_ref()?;
            env.template_from_str(t)
                .err()
                .map(|e| (*field, e.to_string()))
        })
        .collect()
}
