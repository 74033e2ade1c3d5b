//! The settings of the `multi_agent` stage: agents declared in the recipe, or the built-in
//! pattern (author, solvers, critic) spelled as the same agents.

use crate::parse::Rule;
use engines::engine::Sampling;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The author's request (variable `text`, the seed).
pub const DEFAULT_AUTHOR: &str = "\
Write one challenging but solvable question for a student, based on the material below. It must \
be self-contained and have a single correct final answer (a number, a word or a short phrase). \
Put the question, and nothing else, between <question> and </question>.

Material:
{{ text }}";

/// A solver's request (variable `question`).
pub const DEFAULT_SOLVER: &str = "\
Solve the question step by step. End with a last line of the form \"Answer: <final answer>\".

Question:
{{ question }}";

/// The critic's request (variables `question`, `solution`).
pub const DEFAULT_CRITIC: &str = "\
Check the solution below: every step and the final answer. End with a last line \"Verdict: \
correct\" or \"Verdict: incorrect\".

Question:
{{ question }}

Solution:
{{ solution }}";

/// The solvers' final answers.
pub const ANSWER_PATTERN: &str = r"(?m)^\s*\**Answer:?\**:?\s*(?P<answer>.+?)\s*$";
/// The critic's verdict.
pub const VERDICT_PATTERN: &str = r"(?im)^\s*\**verdict:?\**:?\s*(?P<verdict>correct|incorrect)\b";

/// Names an agent may not take: they are template variables already.
const RESERVED: [&str; 5] = ["text", "transcript", "question", "solution", "loop"];

/// Settings of the `multi_agent` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiAgentConfig {
    /// The engine of every agent that names none (a name in the recipe's `engines`).
    pub engine: String,
    /// The agents, in the order they take turns. Empty: the built-in pattern below.
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
    /// The sample written: chat turns as templates over the conversation. Default (built-in
    /// pattern): the author's question as the user's turn, the solution as the assistant's.
    #[serde(default)]
    pub sample: Vec<SampleTurn>,
    /// Built-in pattern: the author's, solvers' and critic's request templates.
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub solver: Option<String>,
    #[serde(default)]
    pub critic: Option<String>,
    /// Built-in pattern: independent solvers per question.
    #[serde(default = "default_solvers")]
    pub solvers: u32,
    /// Built-in pattern: whether the critic checks the kept solution.
    #[serde(default = "default_true")]
    pub use_critic: bool,
    /// Share of an agent's draws the plurality answer needs (agents with `n` > 1); an agent may
    /// set its own.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    /// Keep conversations in which every draw answers alike (dropped as too easy by default).
    #[serde(default)]
    pub keep_unanimous: bool,
    /// Every agent's sampling, unless it sets its own.
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    /// Asks of an agent while its reply does not follow its `parse` rule.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// What an agent sees of the conversation when it takes its turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sees {
    /// Every earlier turn (its own as the assistant's, the others' as the user's, each headed
    /// with the agent's name), then its request.
    #[default]
    Transcript,
    /// Only its request (which names what it needs of earlier turns).
    Prompt,
}

/// One agent, as a recipe declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Its name: in templates (`{{ author.question }}`), seeds, lineage and drop reasons.
    pub name: String,
    /// What it is ("a strict examiner"); the system prompt says so when `system` is not given.
    #[serde(default)]
    pub role: Option<String>,
    /// Its system prompt (a template).
    #[serde(default)]
    pub system: Option<String>,
    /// Its request on its turn (a template).
    pub prompt: String,
    /// Its engine (default: the stage's).
    #[serde(default)]
    pub engine: Option<String>,
    /// Its sampling (default: the stage's).
    #[serde(default)]
    pub sampling: Option<Sampling>,
    #[serde(default)]
    pub sees: Sees,
    /// How its reply is read into fields; a reply that does not follow it is asked again, then
    /// the input is dropped (`unparsed_NAME`).
    #[serde(default)]
    pub parse: Option<Rule>,
    /// Independent draws of its turn (each on its own seed, none seeing the others).
    #[serde(default = "default_one")]
    pub n: u32,
    /// With `n` > 1: the field whose plurality value decides which draw is kept.
    #[serde(default)]
    pub vote: Option<String>,
    #[serde(default)]
    pub min_agreement: Option<f64>,
    #[serde(default)]
    pub keep_unanimous: Option<bool>,
    /// Fields that must match these regular expressions, else the input is dropped
    /// (`rejected_by_NAME`).
    #[serde(default)]
    pub accept: BTreeMap<String, String>,
}

/// One turn of the written sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleTurn {
    pub role: String,
    pub content: String,
}

fn default_solvers() -> u32 {
    1
}
fn default_one() -> u32 {
    1
}
fn default_min_agreement() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_sampling() -> Sampling {
    Sampling {
        temperature: 0.8,
        max_tokens: 1024,
        ..Sampling::default()
    }
}
fn default_max_attempts() -> u32 {
    2
}

impl MultiAgentConfig {
    /// Whether the built-in pattern runs (no agents declared).
    pub fn builtin(&self) -> bool {
        self.agents.is_empty()
    }

    /// The agents in turn order: the declared ones, or the built-in pattern's.
    pub fn agents(&self) -> Vec<AgentSpec> {
        if !self.builtin() {
            return self.agents.clone();
        }
        let agent = |name: &str, prompt: &Option<String>, default: &str, parse: Rule| AgentSpec {
            name: name.into(),
            role: None,
            system: None,
            prompt: prompt.clone().unwrap_or_else(|| default.to_string()),
            engine: None,
            sampling: None,
            sees: Sees::Prompt,
            parse: Some(parse),
            n: 1,
            vote: None,
            min_agreement: None,
            keep_unanimous: None,
            accept: BTreeMap::new(),
        };
        let mut v = vec![
            agent(
                "author",
                &self.author,
                DEFAULT_AUTHOR,
                Rule::Tags(vec!["question".into()]),
            ),
            AgentSpec {
                n: self.solvers,
                vote: (self.solvers > 1).then(|| "answer".into()),
                ..agent(
                    "solver",
                    &self.solver,
                    DEFAULT_SOLVER,
                    Rule::Regex(ANSWER_PATTERN.into()),
                )
            },
        ];
        if self.use_critic {
            v.push(AgentSpec {
                accept: [("verdict".to_string(), "(?i)^correct$".to_string())].into(),
                ..agent(
                    "critic",
                    &self.critic,
                    DEFAULT_CRITIC,
                    Rule::Regex(VERDICT_PATTERN.into()),
                )
            });
        }
        v
    }

    /// The sample's turns: the declared ones, or the built-in pattern's.
    pub fn sample_turns(&self) -> Vec<SampleTurn> {
        if !self.sample.is_empty() {
            return self.sample.clone();
        }
        let turn = |role: &str, content: &str| SampleTurn {
            role: role.into(),
            content: content.into(),
        };
        vec![
            turn("user", "{{ author.question }}"),
            turn("assistant", "{{ solver.reply }}"),
        ]
    }

    /// The engines the agents use, the stage's first.
    pub fn engines(&self) -> Vec<&str> {
        let mut v = vec![self.engine.as_str()];
        for a in &self.agents {
            if let Some(e) = &a.engine {
                if !v.contains(&e.as_str()) {
                    v.push(e);
                }
            }
        }
        v
    }

    /// The engine references, by field (for the recipe check).
    pub fn engine_refs(&self) -> Vec<(String, &String)> {
        let mut v = vec![("engine".to_string(), &self.engine)];
        for (k, a) in self.agents.iter().enumerate() {
            if let Some(e) = &a.engine {
                v.push((format!("agents[{k}].engine"), e));
            }
        }
        v
    }

    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut err = |f: &str, m: String| p.push((f.to_string(), m));
        if !(self.min_agreement > 0.0 && self.min_agreement <= 1.0) {
            err(
                "min_agreement",
                format!(
                    "must be more than 0 and at most 1, got {}",
                    self.min_agreement
                ),
            );
        }
        if self.max_attempts == 0 {
            err("max_attempts", "must be at least 1".into());
        }
        if !self.builtin() {
            let set = [
                ("author", self.author.is_some()),
                ("solver", self.solver.is_some()),
                ("critic", self.critic.is_some()),
                ("solvers", self.solvers != 1),
                ("use_critic", !self.use_critic),
            ];
            for (f, is_set) in set {
                if is_set {
                    err(f, "belongs to the built-in pattern, which declared `agents` replace; set it on an agent instead".into());
                }
            }
            if self.sample.is_empty() {
                err(
                    "sample",
                    "declared agents need `sample`: the chat turns written, e.g. [{role: user, content: \"{{ author.question }}\"}, {role: assistant, content: \"{{ solver.reply }}\"}]".into(),
                );
            }
        } else if !(1..=64).contains(&self.solvers) {
            err(
                "solvers",
                format!("must be from 1 to 64, got {}", self.solvers),
            );
        }
        let env = minijinja::Environment::new();
        let mut names: Vec<&str> = Vec::new();
        let agents = self.agents();
        for (k, a) in agents.iter().enumerate() {
            // The built-in pattern's problems are named by the stage's own fields.
            let field = |f: &str| {
                if self.builtin() {
                    match (a.name.as_str(), f) {
                        ("solver", "n") => "solvers".to_string(),
                        (name, "prompt") => name.to_string(),
                        (_, f) => f.to_string(),
                    }
                } else {
                    format!("agents[{k}].{f}")
                }
            };
            let valid_name = a
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && a.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                err(
                    &field("name"),
                    format!(
                        "`{}` is not a name templates can use: letters, digits and _, not starting with a digit",
                        a.name
                    ),
                );
            } else if RESERVED.contains(&a.name.as_str()) {
                err(
                    &field("name"),
                    format!("`{}` is a template variable already", a.name),
                );
            } else if names.contains(&a.name.as_str()) {
                err(&field("name"), format!("`{}` is declared twice", a.name));
            }
            names.push(&a.name);
            for (f, t) in [("prompt", Some(&a.prompt)), ("system", a.system.as_ref())] {
                if let Some(Err(e)) = t.map(|t| env.template_from_str(t)) {
                    err(&field(f), e.to_string());
                }
            }
            if !self.builtin() && !(1..=64).contains(&a.n) {
                err(&field("n"), format!("must be from 1 to 64, got {}", a.n));
            }
            if let Some(m) = a.min_agreement {
                if !(m > 0.0 && m <= 1.0) {
                    err(
                        &field("min_agreement"),
                        format!("must be more than 0 and at most 1, got {m}"),
                    );
                }
            }
            let fields = a.parse.as_ref().map(Rule::fields).unwrap_or_default();
            if let Some(problem) = a.parse.as_ref().and_then(Rule::problem) {
                err(&field("parse"), problem);
            }
            let known = |f: &str| fields.iter().any(|x| x == f);
            match (&a.vote, a.n > 1) {
                (None, true) => err(
                    &field("vote"),
                    "several draws (`n` > 1) need `vote`: the parsed field whose plurality value keeps a draw".into(),
                ),
                (Some(v), _) if !known(v) => err(
                    &field("vote"),
                    format!("`{v}` is not a field of the agent's `parse` rule (fields: {})", fields.join(", ")),
                ),
                _ => {}
            }
            for (f, re) in &a.accept {
                if !known(f) {
                    err(
                        &field(&format!("accept.{f}")),
                        format!(
                            "`{f}` is not a field of the agent's `parse` rule (fields: {})",
                            fields.join(", ")
                        ),
                    );
                } else if let Err(e) = regex::Regex::new(re) {
                    err(&field(&format!("accept.{f}")), format!("regex: {e}"));
                }
            }
        }
        for (k, t) in self.sample.iter().enumerate() {
            if !["system", "user", "assistant"].contains(&t.role.as_str()) {
                err(
                    &format!("sample[{k}].role"),
                    format!("must be system, user or assistant, got `{}`", t.role),
                );
            }
            if let Err(e) = env.template_from_str(&t.content) {
                err(&format!("sample[{k}].content"), e.to_string());
            }
        }
        p
    }

    /// The templates' texts and the agents' settings, for fingerprints.
    pub fn prompts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .agents()
            .iter()
            .map(|a| serde_json::to_string(a).unwrap_or_default())
            .collect();
        v.extend(
            self.sample_turns()
                .iter()
                .map(|t| format!("{}: {}", t.role, t.content)),
        );
        v
    }
}
