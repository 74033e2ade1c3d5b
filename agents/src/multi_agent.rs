//! Multi-agent prompting, after Phi-4's synthetic problems: an author writes a question from the
//! seed, solvers answer it, a critic checks the answer. The result is a chat sample (the question
//! as the user's turn, the kept solution as the assistant's).
//!
//! - With one solver (`author -> solver -> critic`): the critic's verdict decides (`rejected`).
//! - With several (`solvers: N`, for verifiable answers): each solver answers on its own draw, the
//!   final answers (`Answer: ...`) are compared, and the plurality answer's first solution is
//!   kept. A question that every solver answers alike is too easy (`too_easy`, unless
//!   `keep_unanimous`), one on which no two agree, or whose plurality is below `min_agreement` of
//!   the solvers, is too hard or ambiguous (`no_agreement`). The critic, when enabled, then checks
//!   the kept solution.
//!
//! Replies that do not follow their format (`<question>` tags, an `Answer:` line, a `Verdict:`
//! line) are asked again with a new seed up to `max_attempts`, then the input is dropped
//! (`unparsed_question`, `unparsed_answer`, `unparsed_verdict`).

use crate::cache::RequestCache;
use crate::client::{CallError, Client, Place};
use crate::parse::Rule;
use crate::prompts::{self, Prompts};
use crate::{Error, Flow, Generated, Output};
use corpus::sample::{Content, Turn};
use engines::engine::{Message, Sampling};
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

/// Settings of the `multi_agent` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiAgentConfig {
    /// The engine of every agent (a name in the recipe's `engines`).
    pub engine: String,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub solver: Option<String>,
    #[serde(default)]
    pub critic: Option<String>,
    /// Independent solvers per question.
    #[serde(default = "default_solvers")]
    pub solvers: u32,
    /// Share of the solvers the plurality answer needs (with several solvers).
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    /// Keep questions every solver answers alike (dropped as too easy by default).
    #[serde(default)]
    pub keep_unanimous: bool,
    /// Whether the critic checks the kept solution.
    #[serde(default = "default_true")]
    pub use_critic: bool,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_solvers() -> u32 {
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
    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(1..=64).contains(&self.solvers) {
            p.push((
                "solvers",
                format!("must be from 1 to 64, got {}", self.solvers),
            ));
        }
        if !(self.min_agreement > 0.0 && self.min_agreement <= 1.0) {
            p.push((
                "min_agreement",
                format!(
                    "must be more than 0 and at most 1, got {}",
                    self.min_agreement
                ),
            ));
        }
        if self.max_attempts == 0 {
            p.push(("max_attempts", "must be at least 1".to_string()));
        }
        p.extend(prompts::problems(&[
            ("author", &self.author),
            ("solver", &self.solver),
            ("critic", &self.critic),
        ]));
        p
    }

    /// The prompt templates' texts, for fingerprints.
    pub fn prompts(&self) -> [&str; 3] {
        [
            self.author.as_deref().unwrap_or(DEFAULT_AUTHOR),
            self.solver.as_deref().unwrap_or(DEFAULT_SOLVER),
            self.critic.as_deref().unwrap_or(DEFAULT_CRITIC),
        ]
    }
}

/// A final answer as compared between solvers: trimmed, lowercased, without a trailing period,
/// `$`, `,` thousands separators or surrounding `**`.
pub fn normalize_answer(a: &str) -> String {
    let a = a
        .trim()
        .trim_matches('*')
        .trim()
        .trim_end_matches('.')
        .trim();
    a.trim_start_matches('$').replace(',', "").to_lowercase()
}

/// The running flow.
pub struct MultiAgent {
    config: MultiAgentConfig,
    client: Client,
    prompts: Prompts,
    recipe_seed: u64,
}

impl MultiAgent {
    pub fn new(config: MultiAgentConfig, client: Client, recipe_seed: u64) -> Result<Self, Error> {
        Error::first_problem(config.problems())?;
        let [author, solver, critic] = config.prompts();
        let prompts = Prompts::new(&[("author", author), ("solver", solver), ("critic", critic)])?;
        Ok(MultiAgent {
            config,
            client,
            prompts,
            recipe_seed,
        })
    }

    /// Asks `prompt` as `agent` until `rule` reads the reply (at most `max_attempts` asks);
    /// returns the reply and its fields, or `None`.
    async fn ask_parsed(
        &self,
        cache: &RequestCache,
        id: &str,
        agent: &str,
        prompt: &str,
        rule: &Rule,
        turns: &mut Vec<Turn>,
    ) -> Result<Option<(String, serde_json::Map<String, serde_json::Value>)>, CallError> {
        let place = Place {
            recipe_seed: self.recipe_seed,
            sample: id,
            agent,
            round: 0,
            attempt: 0,
        };
        let parsed = self
            .client
            .ask_until(
                cache,
                &[Message::new("user", prompt)],
                &self.config.sampling,
                place,
                self.config.max_attempts,
                turns,
                |reply| rule.parse(reply).map(|f| (reply.to_string(), f)),
            )
            .await?;
        Ok(parsed.ok())
    }

    async fn converse(
        &self,
        cache: &RequestCache,
        id: &str,
        text: &str,
    ) -> Result<Generated, CallError> {
        let c = &self.config;
        if text.trim().is_empty() {
            return Ok(Generated::Dropped("empty".into()));
        }
        let mut turns = Vec::new();
        let tags = Rule::Tags {
            tags: vec!["question".into()],
        };
        let prompt = self
            .prompts
            .render("author", minijinja::context! {text => text})?;
        let Some((_, q)) = self
            .ask_parsed(cache, id, "author", &prompt, &tags, &mut turns)
            .await?
        else {
            return Ok(Generated::Dropped("unparsed_question".into()));
        };
        let question = q["question"].as_str().unwrap_or_default().to_string();
        if question.is_empty() {
            return Ok(Generated::Dropped("unparsed_question".into()));
        }

        // Solvers, each on its own draw, concurrently.
        let answer_rule = Rule::Regex {
            pattern: r"(?m)^\s*\**Answer:?\**:?\s*(?P<answer>.+?)\s*$".into(),
        };
        let prompt = self
            .prompts
            .render("solver", minijinja::context! {question => question})?;
        let agents: Vec<String> = (0..c.solvers)
            .map(|k| {
                if c.solvers == 1 {
                    "solver".to_string()
                } else {
                    format!("solver-{k}")
                }
            })
            .collect();
        let solved = futures::future::join_all(agents.iter().map(|agent| {
            let (prompt, rule) = (&prompt, &answer_rule);
            async move {
                let mut t = Vec::new();
                let r = self
                    .ask_parsed(cache, id, agent, prompt, rule, &mut t)
                    .await;
                (r, t)
            }
        }))
        .await;
        let mut solutions: Vec<(String, String)> = Vec::new();
        for (r, t) in solved {
            turns.extend(t);
            if let Some((reply, fields)) = r? {
                let answer = fields["answer"].as_str().unwrap_or_default();
                solutions.push((reply, normalize_answer(answer)));
            }
        }
        if solutions.is_empty() {
            return Ok(Generated::Dropped("unparsed_answer".into()));
        }
        let mut quality = BTreeMap::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, a) in &solutions {
            *counts.entry(a.as_str()).or_insert(0) += 1;
        }
        // The plurality answer (ties: the one reached first).
        let best = solutions.iter().map(|(_, a)| (counts[a.as_str()], a)).fold(
            None::<(usize, &String)>,
            |b, x| match b {
                Some(b) if b.0 >= x.0 => Some(b),
                _ => Some(x),
            },
        );
        let (votes, answer) = best.map(|(v, a)| (v, a.clone())).unwrap_or_default();
        if c.solvers > 1 {
            let n = c.solvers as usize;
            let share = votes as f64 / n as f64;
            quality.insert("agreement".to_string(), (share * 1000.0).round() / 1000.0);
            if votes == n && !c.keep_unanimous {
                return Ok(Generated::Dropped("too_easy".into()));
            }
            if votes < 2 || share < c.min_agreement {
                return Ok(Generated::Dropped("no_agreement".into()));
            }
        }
        let solution = solutions
            .iter()
            .find(|(_, a)| *a == answer)
            .map(|(s, _)| s.trim().to_string())
            .unwrap_or_default();

        if c.use_critic {
            let verdict_rule = Rule::Regex {
                pattern: r"(?im)^\s*\**verdict:?\**:?\s*(?P<verdict>correct|incorrect)\b".into(),
            };
            let prompt = self.prompts.render(
                "critic",
                minijinja::context! {question => question, solution => solution},
            )?;
            let Some((_, v)) = self
                .ask_parsed(cache, id, "critic", &prompt, &verdict_rule, &mut turns)
                .await?
            else {
                return Ok(Generated::Dropped("unparsed_verdict".into()));
            };
            if !v["verdict"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("correct")
            {
                return Ok(Generated::Dropped("rejected".into()));
            }
        }
        Ok(Generated::Samples(vec![Output::chat(
            question, solution, quality, turns,
        )]))
    }
}

impl Flow for MultiAgent {
    fn run<'a>(
        &'a self,
        cache: &'a RequestCache,
        id: &'a str,
        input: &'a Content,
    ) -> futures::future::BoxFuture<'a, Result<Generated, CallError>> {
        Box::pin(async move { self.converse(cache, id, &input.text()).await })
    }

    fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_compare_after_normalising() {
        assert_eq!(normalize_answer(" **$1,200.** "), "1200");
        assert_eq!(normalize_answer("Paris"), normalize_answer("paris."));
        assert_ne!(normalize_answer("12"), normalize_answer("13"));
    }
}
