//! Self-revision (after Self-Refine, and Phi-4's critique-and-revise data): an author drafts from
//! the seed, a critic scores the draft against a rubric (one integer from 1 to 10 per criterion,
//! and feedback, as JSON), and the author revises with the whole history, round after round.
//!
//! It stops when the mean score reaches `threshold`, when a round does not beat the best score so
//! far, or after `max_rounds` critiques. The best-scoring draft is kept, not the last; an input
//! whose best draft is below the threshold is dropped (`below_threshold`), as is one whose
//! critiques never parse after `max_attempts` asks (`unparsed_critique`).

use crate::cache::RequestCache;
use crate::client::{CallError, Client, Place};
use crate::parse::Rule;
use crate::prompts::{self, Prompts};
use crate::{Error, Flow, Generated, Output};
use corpus::sample::{Content, Turn};
use engines::engine::{Message, Sampling};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The author's task (variable `text`, the seed).
pub const DEFAULT_TASK: &str = "\
Using the material below, write one self-contained teaching example for a student: a clear \
question about the material, then a complete, correct, step-by-step answer.

Material:
{{ text }}";

/// The critic's request (variables `rubric`, `task`, `draft`).
pub const DEFAULT_CRITIQUE: &str = "\
Review the response below against the rubric. For each criterion give an integer score from 1 \
(poor) to 10 (excellent), then concrete feedback on what to fix. Answer with only a JSON object: \
{\"scores\": {\"<criterion>\": <score>, ...}, \"feedback\": \"...\"}.

Rubric:
{% for c in rubric %}- {{ c.name }}: {{ c.description }}
{% endfor %}
Task:
{{ task }}

Response:
{{ draft }}";

/// The author's revision request, after the history (variables `scores`, `feedback`).
pub const DEFAULT_REVISE: &str = "\
A reviewer scored your answer {{ scores }} and wrote:
{{ feedback }}

Rewrite your answer to address every point. Reply with only the improved answer.";

/// One rubric criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    pub name: String,
    pub description: String,
}

/// Settings of the `self_revise` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfRevisionConfig {
    /// The author's engine (a name in the recipe's `engines`).
    pub engine: String,
    /// The critic's engine (default: the author's).
    #[serde(default)]
    pub critic_engine: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub critique: Option<String>,
    #[serde(default)]
    pub revise: Option<String>,
    #[serde(default = "default_rubric")]
    pub rubric: Vec<Criterion>,
    /// Mean score (1 to 10) at which a draft passes.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    #[serde(default = "default_critic_sampling")]
    pub critic_sampling: Sampling,
    /// Asks of the critic per round before the input is dropped (an unparsable critique is asked
    /// again with a new seed).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_rubric() -> Vec<Criterion> {
    [
        ("correctness", "every statement, step and result is correct"),
        ("clarity", "a student can follow it without rereading"),
        (
            "completeness",
            "the question is fully answered, nothing is skipped",
        ),
        (
            "self_contained",
            "it makes sense without the source material",
        ),
    ]
    .map(|(name, description)| Criterion {
        name: name.into(),
        description: description.into(),
    })
    .to_vec()
}
fn default_threshold() -> f64 {
    8.0
}
fn default_max_rounds() -> u32 {
    3
}
fn default_sampling() -> Sampling {
    Sampling {
        temperature: 0.7,
        max_tokens: 1024,
        ..Sampling::default()
    }
}
fn default_critic_sampling() -> Sampling {
    Sampling {
        temperature: 0.0,
        max_tokens: 512,
        ..Sampling::default()
    }
}
fn default_max_attempts() -> u32 {
    2
}

impl SelfRevisionConfig {
    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.rubric.is_empty() {
            p.push(("rubric", "needs at least one criterion".to_string()));
        }
        if !(1.0..=10.0).contains(&self.threshold) {
            p.push((
                "threshold",
                format!("must be from 1 to 10, got {}", self.threshold),
            ));
        }
        if self.max_rounds == 0 {
            p.push(("max_rounds", "must be at least 1".to_string()));
        }
        if self.max_attempts == 0 {
            p.push(("max_attempts", "must be at least 1".to_string()));
        }
        p.extend(prompts::problems(&[
            ("task", &self.task),
            ("critique", &self.critique),
            ("revise", &self.revise),
        ]));
        p
    }

    /// The prompt templates' texts, for fingerprints.
    pub fn prompts(&self) -> [&str; 3] {
        [
            self.task.as_deref().unwrap_or(DEFAULT_TASK),
            self.critique.as_deref().unwrap_or(DEFAULT_CRITIQUE),
            self.revise.as_deref().unwrap_or(DEFAULT_REVISE),
        ]
    }
}

/// The running flow.
pub struct SelfRevision {
    config: SelfRevisionConfig,
    author: Client,
    critic: Client,
    prompts: Prompts,
    recipe_seed: u64,
}

impl SelfRevision {
    pub fn new(
        config: SelfRevisionConfig,
        author: Client,
        critic: Client,
        recipe_seed: u64,
    ) -> Result<Self, Error> {
        Error::first_problem(config.problems())?;
        let [task, critique, revise] = config.prompts();
        let prompts = Prompts::new(&[("task", task), ("critique", critique), ("revise", revise)])?;
        Ok(SelfRevision {
            config,
            author,
            critic,
            prompts,
            recipe_seed,
        })
    }

    /// Scores from a critique reply: every criterion, an integer from 1 to 10.
    fn scores(&self, reply: &str) -> Option<(BTreeMap<String, f64>, String)> {
        let rule = Rule::json(&["scores"]);
        let fields = rule.parse(reply).ok()?;
        let scores = fields.get("scores")?.as_object()?;
        let mut out = BTreeMap::new();
        for c in &self.config.rubric {
            let s = scores.get(&c.name)?.as_f64()?;
            if !(1.0..=10.0).contains(&s) {
                return None;
            }
            out.insert(c.name.clone(), s);
        }
        let feedback = fields
            .get("feedback")
            .and_then(|f| f.as_str())
            .unwrap_or("")
            .to_string();
        Some((out, feedback))
    }

    async fn revise_loop(
        &self,
        cache: &RequestCache,
        id: &str,
        text: &str,
    ) -> Result<Generated, CallError> {
        let c = &self.config;
        if text.trim().is_empty() {
            return Ok(Generated::Dropped("empty".into()));
        }
        let place = |agent, round, attempt| Place {
            recipe_seed: self.recipe_seed,
            sample: id,
            agent,
            round,
            attempt,
        };
        let task = self
            .prompts
            .render("task", minijinja::context! {text => text})?;
        let mut history = vec![Message::new("user", task.clone())];
        let mut turns: Vec<Turn> = Vec::new();
        let (draft, turn) = self
            .author
            .ask(cache, history.clone(), &c.sampling, place("author", 0, 0))
            .await?;
        turns.push(turn);
        let mut draft = draft.text.trim().to_string();
        let mut best: Option<(f64, String, BTreeMap<String, f64>)> = None;
        let mut rounds = 0;
        for round in 0..c.max_rounds {
            rounds = round + 1;
            // The critic, asked again (new seed) while its reply does not parse.
            let critique = self.prompts.render(
                "critique",
                minijinja::context! {rubric => c.rubric, task => task, draft => draft},
            )?;
            let parsed = self
                .critic
                .ask_until(
                    cache,
                    &[Message::new("user", critique)],
                    &c.critic_sampling,
                    place("critic", round, 0),
                    c.max_attempts,
                    &mut turns,
                    |reply| self.scores(reply).ok_or(()),
                )
                .await?;
            let Ok((scores, feedback)) = parsed else {
                return Ok(Generated::Dropped("unparsed_critique".into()));
            };
            let mean = scores.values().sum::<f64>() / scores.len() as f64;
            let improved = best.as_ref().is_none_or(|b| mean > b.0);
            if improved {
                best = Some((mean, draft.clone(), scores.clone()));
            }
            if mean >= c.threshold || !improved || round + 1 == c.max_rounds {
                break;
            }
            // Revise with the whole history: the task, the draft, the critique.
            history.push(Message::new("assistant", draft.clone()));
            let shown: Vec<String> = scores.iter().map(|(k, v)| format!("{k} {v}")).collect();
            history.push(Message::new(
                "user",
                self.prompts.render(
                    "revise",
                    minijinja::context! {scores => shown.join(", "), feedback => feedback},
                )?,
            ));
            let (revised, turn) = self
                .author
                .ask(
                    cache,
                    history.clone(),
                    &c.sampling,
                    place("author", round + 1, 0),
                )
                .await?;
            turns.push(turn);
            draft = revised.text.trim().to_string();
        }
        let Some((score, text, scores)) = best else {
            return Ok(Generated::Dropped("unparsed_critique".into()));
        };
        if score < c.threshold {
            return Ok(Generated::Dropped("below_threshold".into()));
        }
        let mut quality: BTreeMap<String, f64> = scores
            .into_iter()
            .map(|(k, v)| (format!("score_{k}"), v))
            .collect();
        quality.insert("score".into(), (score * 1000.0).round() / 1000.0);
        Ok(Generated::Samples(vec![Output {
            content: Content::Text { text },
            quality,
            turns,
            rounds: Some(rounds),
        }]))
    }
}

impl Flow for SelfRevision {
    fn run<'a>(
        &'a self,
        cache: &'a RequestCache,
        id: &'a str,
        input: &'a Content,
    ) -> futures::future::BoxFuture<'a, Result<Generated, CallError>> {
        Box::pin(async move { self.revise_loop(cache, id, &input.text()).await })
    }

    fn client(&self) -> &Client {
        &self.author
    }
}
