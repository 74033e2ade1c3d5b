//! Instruction reversal (after Instruction Backtranslation and Phi-4's code data): from an
//! existing output (a function or file of code, a document), the reverser writes the instruction
//! that would produce it; a solver then answers that instruction afresh, and the answer is
//! compared with the original. The pair (instruction, original output) is kept, as a chat, when
//! the two agree: ROUGE-L F1 over word tokens at least `min_fidelity`, and, for code, the original
//! and the regenerated answer both parse (tree-sitter's Python grammar).
//!
//! Drop reasons: `unparsed_instruction` (no `<instruction>` section after `max_attempts` asks),
//! `low_fidelity`, `unparsable_original`, `unparsable_regenerated`, `too_long` (the output has
//! more than `max_words` words), `empty`.

use crate::cache::RequestCache;
use crate::client::{CallError, Client, Place};
use crate::parse::Rule;
use crate::prompts::{self, Prompts};
use crate::{Error, Flow, Generated, Output};
use corpus::sample::{Content, Turn};
use engines::engine::{Message, Sampling};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The reverser's request (variables `output`, `kind`).
pub const DEFAULT_REVERSE: &str = "\
Below is {{ kind }}. Write the instruction a user would give to get exactly this as the answer: \
say what it must do, its inputs, outputs and edge cases, without quoting it. Put the instruction, \
and nothing else, between <instruction> and </instruction>.

{{ output }}";

/// The solver's request (variable `instruction`).
pub const DEFAULT_REGENERATE: &str = "{{ instruction }}";

/// What the outputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Python code: both the original and the regenerated answer must parse.
    Python,
    /// Prose.
    Document,
}

/// Settings of the `instruction_reversal` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionReversalConfig {
    /// The engine (a name in the recipe's `engines`).
    pub engine: String,
    #[serde(default = "default_kind")]
    pub kind: OutputKind,
    #[serde(default)]
    pub reverse: Option<String>,
    #[serde(default)]
    pub regenerate: Option<String>,
    /// ROUGE-L F1 between the original and the regenerated answer needed to keep the pair.
    #[serde(default = "default_min_fidelity")]
    pub min_fidelity: f64,
    /// Outputs longer than this (in words) are dropped (`too_long`).
    #[serde(default = "default_max_words")]
    pub max_words: usize,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_kind() -> OutputKind {
    OutputKind::Python
}
fn default_min_fidelity() -> f64 {
    0.3
}
fn default_max_words() -> usize {
    1500
}
fn default_sampling() -> Sampling {
    Sampling {
        temperature: 0.2,
        max_tokens: 2048,
        ..Sampling::default()
    }
}
fn default_max_attempts() -> u32 {
    2
}

impl InstructionReversalConfig {
    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(0.0..=1.0).contains(&self.min_fidelity) {
            p.push((
                "min_fidelity",
                format!("must be from 0 to 1, got {}", self.min_fidelity),
            ));
        }
        if self.max_words == 0 {
            p.push(("max_words", "must be at least 1".to_string()));
        }
        if self.max_attempts == 0 {
            p.push(("max_attempts", "must be at least 1".to_string()));
        }
        p.extend(prompts::problems(&[
            ("reverse", &self.reverse),
            ("regenerate", &self.regenerate),
        ]));
        p
    }

    /// The prompt templates' texts, for fingerprints.
    pub fn prompts(&self) -> [&str; 2] {
        [
            self.reverse.as_deref().unwrap_or(DEFAULT_REVERSE),
            self.regenerate.as_deref().unwrap_or(DEFAULT_REGENERATE),
        ]
    }
}

/// ROUGE-L F1 of two texts over whitespace-separated tokens (longest common subsequence).
pub fn rouge_l(a: &str, b: &str) -> f64 {
    let (x, y): (Vec<&str>, Vec<&str>) = (
        a.split_whitespace().collect(),
        b.split_whitespace().collect(),
    );
    if x.is_empty() || y.is_empty() {
        return 0.0;
    }
    // One row of the LCS table at a time.
    let mut prev = vec![0u32; y.len() + 1];
    let mut cur = vec![0u32; y.len() + 1];
    for xi in &x {
        for (j, yj) in y.iter().enumerate() {
            cur[j + 1] = if xi == yj {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let lcs = prev[y.len()] as f64;
    let (p, r) = (lcs / y.len() as f64, lcs / x.len() as f64);
    if lcs == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

/// Whether `code` parses as Python (no error node in tree-sitter's tree).
pub fn python_parses(code: &str) -> bool {
    let mut parser = tree_sitter::Parser::new();
    if parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .is_err()
    {
        return false;
    }
    parser
        .parse(code, None)
        .is_some_and(|t| !t.root_node().has_error())
}

/// The code in a reply: the first fenced block when there is one, else the whole reply.
fn code_of(reply: &str) -> &str {
    let Some(start) = reply.find("```") else {
        return reply.trim();
    };
    let body = &reply[start + 3..];
    let body = body.split_once('\n').map(|(_, b)| b).unwrap_or(body);
    body.split("```").next().unwrap_or(body).trim()
}

/// The running flow.
pub struct InstructionReversal {
    config: InstructionReversalConfig,
    client: Client,
    prompts: Prompts,
    recipe_seed: u64,
}

impl InstructionReversal {
    pub fn new(
        config: InstructionReversalConfig,
        client: Client,
        recipe_seed: u64,
    ) -> Result<Self, Error> {
        Error::first_problem(config.problems())?;
        let [reverse, regenerate] = config.prompts();
        let prompts = Prompts::new(&[("reverse", reverse), ("regenerate", regenerate)])?;
        Ok(InstructionReversal {
            config,
            client,
            prompts,
            recipe_seed,
        })
    }

    async fn reverse(
        &self,
        cache: &RequestCache,
        id: &str,
        output: &str,
    ) -> Result<Generated, CallError> {
        let c = &self.config;
        let output = output.trim();
        if output.is_empty() {
            return Ok(Generated::Dropped("empty".into()));
        }
        if output.split_whitespace().count() > c.max_words {
            return Ok(Generated::Dropped("too_long".into()));
        }
        let code = c.kind == OutputKind::Python;
        if code && !python_parses(output) {
            return Ok(Generated::Dropped("unparsable_original".into()));
        }
        let place = |agent, attempt| Place {
            recipe_seed: self.recipe_seed,
            sample: id,
            agent,
            round: 0,
            attempt,
        };
        let mut turns: Vec<Turn> = Vec::new();
        let kind = if code {
            "a piece of Python code"
        } else {
            "a document"
        };
        let prompt = self.prompts.render(
            "reverse",
            minijinja::context! {output => output, kind => kind},
        )?;
        let rule = Rule::Tags(vec!["instruction".into()]);
        let instruction = self
            .client
            .ask_until(
                cache,
                &[Message::new("user", prompt)],
                &c.sampling,
                place("reverser", 0),
                c.max_attempts,
                &mut turns,
                |reply| {
                    let f = rule.parse(reply).map_err(|_| ())?;
                    match f["instruction"].as_str() {
                        Some(t) if !t.is_empty() => Ok(t.to_string()),
                        _ => Err(()),
                    }
                },
            )
            .await?;
        let Ok(instruction) = instruction else {
            return Ok(Generated::Dropped("unparsed_instruction".into()));
        };
        let request = self.prompts.render(
            "regenerate",
            minijinja::context! {instruction => instruction},
        )?;
        let (regenerated, turn) = self
            .client
            .ask(
                cache,
                vec![Message::new("user", request)],
                &c.sampling,
                place("solver", 0),
            )
            .await?;
        turns.push(turn);
        let answer = if code {
            code_of(&regenerated.text)
        } else {
            regenerated.text.trim()
        };
        if code && !python_parses(answer) {
            return Ok(Generated::Dropped("unparsable_regenerated".into()));
        }
        let fidelity = rouge_l(output, answer);
        if fidelity < c.min_fidelity {
            return Ok(Generated::Dropped("low_fidelity".into()));
        }
        let mut quality = BTreeMap::new();
        quality.insert("fidelity".to_string(), (fidelity * 1000.0).round() / 1000.0);
        Ok(Generated::Samples(vec![Output::chat(
            instruction,
            output.to_string(),
            quality,
            turns,
        )]))
    }
}

impl Flow for InstructionReversal {
    fn run<'a>(
        &'a self,
        cache: &'a RequestCache,
        id: &'a str,
        input: &'a Content,
    ) -> futures::future::BoxFuture<'a, Result<Generated, CallError>> {
        Box::pin(async move { self.reverse(cache, id, &input.text()).await })
    }

    fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_and_the_python_check() {
        assert_eq!(rouge_l("a b c d", "a b c d"), 1.0);
        assert_eq!(rouge_l("a b c d", "x y"), 0.0);
        // LCS "a c d" of 4 and 4 tokens.
        assert!((rouge_l("a b c d", "a c d e") - 0.75).abs() < 1e-9);
        assert!(python_parses("def f(x):\n    return x + 1\n"));
        assert!(!python_parses("def f(x)\n    return x +\n"));
        assert_eq!(code_of("Here:\n```python\nx = 1\n```\nDone."), "x = 1");
        assert_eq!(code_of("x = 2"), "x = 2");
    }
}
