//! Multi-agent prompting: named agents take turns over a shared transcript, as the recipe
//! declares them (role, system prompt, engine, sampling, what each sees), and the sample is
//! written from what they said.
//!
//! Each agent's reply is read by its `parse` rule into fields (asked again with a new seed up to
//! `max_attempts`, then the input is dropped: `unparsed_NAME`); later templates see them as
//! `{{ NAME.FIELD }}` and the whole reply as `{{ NAME.reply }}`. An agent may:
//! - draw its turn `n` times on independent seeds and keep the draw with the plurality value of
//!   its `vote` field: a conversation every draw answers alike is too easy (`too_easy`, unless
//!   `keep_unanimous`), one where no two draws agree, or the plurality is below `min_agreement`
//!   of the draws, too hard or ambiguous (`no_agreement`); the share is the `agreement` quality;
//! - `accept` only replies whose fields match regular expressions (`rejected_by_NAME`).
//!
//! Without declared agents the built-in pattern runs, after Phi-4's synthetic problems: an
//! `author` writes a question from the seed (`<question>` tags), `solvers` solvers answer it
//! (`Answer: ...`, voted on when several), and a `critic` checks the kept solution
//! (`Verdict: correct`); the question is the user's turn, the solution the assistant's.

mod config;

pub use config::*;

use crate::cache::RequestCache;
use crate::client::{CallError, Client, Place};
use crate::parse::Rule;
use crate::prompts::Prompts;
use crate::{Error, Flow, Generated, Output};
use corpus::sample::{Content, Turn};
use engines::engine::{Message, Sampling};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A final answer as compared between draws: trimmed, lowercased, without a trailing period,
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

/// An agent ready to run.
struct Agent {
    name: String,
    role: Option<String>,
    has_system: bool,
    client: Client,
    sampling: Sampling,
    sees: Sees,
    parse: Option<Rule>,
    n: u32,
    vote: Option<String>,
    min_agreement: f64,
    keep_unanimous: bool,
    accept: Vec<(String, regex::Regex)>,
}

/// The running flow.
pub struct MultiAgent {
    agents: Vec<Agent>,
    sample: Vec<String>,
    prompts: Prompts,
    client: Client,
    builtin: bool,
    voters: usize,
    max_attempts: u32,
    recipe_seed: u64,
}

/// What an agent's turn left: its kept reply and fields.
struct Said {
    reply: String,
    fields: Map<String, Value>,
}

impl MultiAgent {
    /// The flow over `clients` (every engine the agents name, by name).
    pub fn new(
        config: MultiAgentConfig,
        clients: &BTreeMap<String, Client>,
        recipe_seed: u64,
    ) -> Result<Self, Error> {
        Error::first_problem(config.problems())?;
        let client_of = |name: &str| {
            clients.get(name).cloned().ok_or_else(|| Error::Config {
                field: "engine".into(),
                message: format!("unknown engine `{name}`"),
            })
        };
        let specs = config.agents();
        let mut templates: Vec<(String, String)> = Vec::new();
        let mut agents = Vec::new();
        for a in &specs {
            templates.push((format!("{}.prompt", a.name), a.prompt.clone()));
            if let Some(s) = &a.system {
                templates.push((format!("{}.system", a.name), s.clone()));
            }
            let accept = a
                .accept
                .iter()
                .map(|(f, re)| {
                    regex::Regex::new(re)
                        .map(|r| (f.clone(), r))
                        .map_err(|e| Error::Config {
                            field: format!("{}.accept.{f}", a.name),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<_, _>>()?;
            agents.push(Agent {
                name: a.name.clone(),
                role: a.role.clone(),
                has_system: a.system.is_some(),
                client: client_of(a.engine.as_deref().unwrap_or(&config.engine))?,
                sampling: a
                    .sampling
                    .clone()
                    .unwrap_or_else(|| config.sampling.clone()),
                sees: a.sees,
                parse: a.parse.clone(),
                n: a.n,
                vote: a.vote.clone(),
                min_agreement: a.min_agreement.unwrap_or(config.min_agreement),
                keep_unanimous: a.keep_unanimous.unwrap_or(config.keep_unanimous),
                accept,
            });
        }
        let turns = config.sample_turns();
        for (k, t) in turns.iter().enumerate() {
            templates.push((format!("sample.{k}"), t.content.clone()));
        }
        let refs: Vec<(&str, &str)> = templates
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        Ok(MultiAgent {
            voters: agents.iter().filter(|a| a.n > 1).count(),
            agents,
            sample: turns.into_iter().map(|t| t.role).collect(),
            prompts: Prompts::new(&refs)?,
            client: client_of(&config.engine)?,
            builtin: config.builtin(),
            max_attempts: config.max_attempts,
            recipe_seed,
        })
    }

    /// The template variables after the turns so far.
    fn context(
        &self,
        text: &str,
        said: &[(String, Said)],
        quality: &BTreeMap<String, f64>,
    ) -> Value {
        let mut ctx = Map::new();
        ctx.insert("text".into(), json!(text));
        let transcript: Vec<Value> = said
            .iter()
            .map(|(n, s)| json!({"agent": n, "text": s.reply}))
            .collect();
        ctx.insert("transcript".into(), Value::Array(transcript));
        for (name, s) in said {
            let mut m = s.fields.clone();
            m.insert("reply".into(), json!(s.reply));
            if let Some(a) = quality.get(&format!("agreement.{name}")) {
                m.insert("agreement".into(), json!(a));
            }
            ctx.insert(name.clone(), Value::Object(m));
        }
        if self.builtin {
            // The built-in templates' own names (`question`, `solution`).
            let get = |agent: &str, field: &str| {
                said.iter()
                    .find(|(n, _)| n == agent)
                    .map(|(_, s)| match field {
                        "reply" => json!(s.reply),
                        f => s.fields.get(f).cloned().unwrap_or(Value::Null),
                    })
            };
            if let Some(q) = get("author", "question") {
                ctx.insert("question".into(), q);
            }
            if let Some(s) = get("solver", "reply") {
                ctx.insert("solution".into(), s);
            }
        }
        Value::Object(ctx)
    }

    /// The messages `agent` is sent: its system prompt, what it sees of the transcript, its
    /// request. Consecutive turns of one role are joined (some chat templates insist that
    /// user and assistant alternate).
    fn messages(
        &self,
        agent: &Agent,
        ctx: &Value,
        said: &[(String, Said)],
    ) -> Result<Vec<Message>, CallError> {
        let ctx = minijinja::Value::from_serialize(ctx);
        let mut out: Vec<Message> = Vec::new();
        if agent.has_system {
            out.push(Message::new(
                "system",
                self.prompts
                    .render(&format!("{}.system", agent.name), ctx.clone())?,
            ));
        } else if let Some(role) = &agent.role {
            out.push(Message::new("system", format!("You are {role}.")));
        }
        let mut push = |role: &str, text: String| match out.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&text);
            }
            _ => out.push(Message::new(role, text)),
        };
        if agent.sees == Sees::Transcript {
            for (name, s) in said {
                if *name == agent.name {
                    push("assistant", s.reply.clone());
                } else {
                    push("user", format!("[{name}]\n{}", s.reply));
                }
            }
        }
        push(
            "user",
            self.prompts
                .render(&format!("{}.prompt", agent.name), ctx)?,
        );
        Ok(out)
    }

    /// One draw of `agent`'s turn: asked until its reply parses (at most `max_attempts` asks).
    async fn draw(
        &self,
        cache: &RequestCache,
        id: &str,
        agent: &Agent,
        seed_name: &str,
        messages: &[Message],
        turns: &mut Vec<Turn>,
    ) -> Result<Option<Said>, CallError> {
        let place = Place {
            recipe_seed: self.recipe_seed,
            sample: id,
            agent: seed_name,
            round: 0,
            attempt: 0,
        };
        let parsed = agent
            .client
            .ask_until(
                cache,
                messages,
                &agent.sampling,
                place,
                self.max_attempts,
                turns,
                |reply| match &agent.parse {
                    Some(rule) => rule.parse(reply).map(|fields| Said {
                        reply: reply.trim().to_string(),
                        fields,
                    }),
                    None if reply.trim().is_empty() => {
                        Err(crate::parse::Unparsed("empty reply".into()))
                    }
                    None => Ok(Said {
                        reply: reply.trim().to_string(),
                        fields: Map::new(),
                    }),
                },
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
        if text.trim().is_empty() {
            return Ok(Generated::Dropped("empty".into()));
        }
        let mut turns = Vec::new();
        let mut said: Vec<(String, Said)> = Vec::new();
        let mut quality = BTreeMap::new();
        for agent in &self.agents {
            let ctx = self.context(text, &said, &quality);
            let messages = self.messages(agent, &ctx, &said)?;
            let names: Vec<String> = (0..agent.n)
                .map(|k| match agent.n {
                    1 => agent.name.clone(),
                    _ => format!("{}-{k}", agent.name),
                })
                .collect();
            // The draws run concurrently, each on its own seed.
            let drawn = futures::future::join_all(names.iter().map(|seed_name| {
                let messages = &messages;
                async move {
                    let mut t = Vec::new();
                    let r = self
                        .draw(cache, id, agent, seed_name, messages, &mut t)
                        .await;
                    (r, t)
                }
            }))
            .await;
            let mut draws = Vec::new();
            for (r, t) in drawn {
                turns.extend(t);
                draws.extend(r?);
            }
            if draws.is_empty() {
                return Ok(Generated::Dropped(format!("unparsed_{}", agent.name)));
            }
            let kept = match &agent.vote {
                Some(field) if agent.n > 1 => match self.vote(agent, field, draws, &mut quality) {
                    Ok(kept) => kept,
                    Err(reason) => return Ok(Generated::Dropped(reason)),
                },
                _ => draws.swap_remove(0),
            };
            for (field, re) in &agent.accept {
                let value = match kept.fields.get(field) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                if !re.is_match(&value) {
                    return Ok(Generated::Dropped(format!("rejected_by_{}", agent.name)));
                }
            }
            said.push((agent.name.clone(), kept));
        }
        let ctx = minijinja::Value::from_serialize(self.context(text, &said, &quality));
        let mut messages = Vec::new();
        for (k, role) in self.sample.iter().enumerate() {
            let content = self.prompts.render(&format!("sample.{k}"), ctx.clone())?;
            if content.trim().is_empty() {
                return Ok(Generated::Dropped("empty_sample".into()));
            }
            messages.push(corpus::sample::Message {
                role: role.clone(),
                content: content.trim().to_string(),
            });
        }
        // The agreement: `agreement` when one agent votes, `agreement.NAME` for each otherwise.
        if self.voters == 1 {
            let one = quality.values().next().copied();
            quality.clear();
            quality.extend(one.map(|a| ("agreement".to_string(), a)));
        }
        Ok(Generated::Samples(vec![Output {
            content: Content::Messages { messages },
            quality,
            turns,
            rounds: None,
        }]))
    }

    /// The draw with the plurality value of `field` (ties: the one reached first), or why the
    /// conversation is dropped.
    fn vote(
        &self,
        agent: &Agent,
        field: &str,
        mut draws: Vec<Said>,
        quality: &mut BTreeMap<String, f64>,
    ) -> Result<Said, String> {
        let values: Vec<String> = draws
            .iter()
            .map(|d| match d.fields.get(field) {
                Some(Value::String(s)) => normalize_answer(s),
                Some(v) => normalize_answer(&v.to_string()),
                None => String::new(),
            })
            .collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &values {
            *counts.entry(v.as_str()).or_insert(0) += 1;
        }
        let mut best = 0;
        for (k, v) in values.iter().enumerate() {
            if counts[v.as_str()] > counts[values[best].as_str()] {
                best = k;
            }
        }
        let votes = counts[values[best].as_str()];
        let n = agent.n as usize;
        let share = votes as f64 / n as f64;
        quality.insert(
            format!("agreement.{}", agent.name),
            (share * 1000.0).round() / 1000.0,
        );
        if votes == n && !agent.keep_unanimous {
            return Err("too_easy".into());
        }
        if votes < 2 || share < agent.min_agreement {
            return Err("no_agreement".into());
        }
        Ok(draws.swap_remove(best))
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

    fn parse(v: Value) -> MultiAgentConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn declared_agents_are_checked_field_by_field() {
        let c = parse(json!({
            "engine": "e",
            "agents": [
                {"name": "author", "prompt": "Ask about {{ text }}", "parse": {"tags": ["question"]}},
                {"name": "solver", "prompt": "{{ author.question }}", "n": 3,
                 "parse": {"regex": "Answer: (?P<answer>.+)"}},
                {"name": "text", "prompt": "{{ oops", "accept": {"verdict": "(?i)^yes$"}},
                {"name": "author", "prompt": "x", "n": 2, "vote": "answer", "parse": {"tags": ["q"]}},
            ],
            "solvers": 2,
        }));
        let p: Vec<String> = c.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            p,
            [
                "solvers",
                "sample",
                "agents[1].vote",
                "agents[2].name",
                "agents[2].prompt",
                "agents[2].accept.verdict",
                "agents[3].name",
                "agents[3].vote",
            ],
        );
        // The built-in pattern is the same machinery, and passes its own checks.
        let b = parse(json!({"engine": "e", "solvers": 4}));
        assert!(b.problems().is_empty(), "{:?}", b.problems());
        let names: Vec<String> = b.agents().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["author", "solver", "critic"]);
        assert_eq!(
            parse(json!({"engine": "e", "solvers": 0})).problems()[0].0,
            "solvers"
        );
        assert_eq!(
            parse(json!({"engine": "e", "author": "{{ x"})).problems()[0].0,
            "author"
        );
    }
}
