//! The generation stages: an `agents` flow run over each input (`web_rewrite`: documents
//! rewritten into textbook-like passages; `self_revise`: drafted, critiqued and revised;
//! `multi_agent`: questions written, solved by agreeing solvers and checked, as chats;
//! `instruction_reversal`: instructions for existing code or documents, checked by regenerating
//! them). A
//! transform: its units write the generated samples, each with its input's id, and a tombstone
//! with the reason for each input dropped.
//!
//! A unit runs its inputs concurrently (the engines' own limits decide how many requests are in
//! flight) on one async runtime the stage shares between units, and asks through the unit's
//! request cache, `.phiforge/requests/STAGE/SLOT.jsonl`: named by the unit's slot, not its key,
//! so a changed check or threshold reruns the stage from cached replies instead of the model. An
//! engine that fails after its retries stops the unit with the error (the finished requests stay
//! cached); it never drops a sample.

use super::{Kind, Outcome, Stage, UnitPlace};
use crate::recipe::{Recipe, StageConfig};
use crate::sample::{Lineage, MixClass, Sample};
use crate::unit::WORK_DIR;
use crate::{Error, Result};
use agents::cache::RequestCache;
use agents::client::Client;
use agents::{Flow, Generated};
use corpus::sample::Content;
use engines::config::EngineConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use xxhash_rust::xxh3::xxh3_128;

const VERSION: u32 = 1;

/// Inputs of a unit in flight at once (the engines' concurrency and rate limits apply below it):
/// enough to keep a server pool busy while each input waits on its turns one after another.
const IN_FLIGHT: usize = 2048;

/// Inputs a unit is handed at once: all of them (a unit is bounded, about 16 MB of text), so that
/// in-flight requests do not drain at the end of every read batch, and the quality gates see the
/// whole unit's kept samples.
const AT_ONCE: usize = usize::MAX;

/// The engine names a generation stage uses, first the one named in lineage.
fn engine_names(config: &StageConfig) -> Vec<&str> {
    match config {
        StageConfig::WebRewrite(w) => vec![w.flow.engine.as_str()],
        StageConfig::SelfRevise(s) => {
            let mut v = vec![s.flow.engine.as_str()];
            v.extend(s.flow.critic_engine.as_deref());
            v
        }
        StageConfig::MultiAgent(m) => m.flow.engines(),
        StageConfig::InstructionReversal(r) => vec![r.flow.engine.as_str()],
        _ => Vec::new(),
    }
}

/// The prompts a stage sends, hashed.
fn prompt_hash(config: &StageConfig) -> String {
    let text = match config {
        StageConfig::WebRewrite(w) => {
            let system = w
                .flow
                .system
                .as_deref()
                .unwrap_or(agents::web_rewrite::DEFAULT_SYSTEM);
            let prompt = agents::web_rewrite::WebRewrite::prompt_text(&w.flow);
            format!("{system}\n{prompt}")
        }
        StageConfig::SelfRevise(s) => s.flow.prompts().join("\n"),
        StageConfig::MultiAgent(m) => m.flow.prompts().join("\n"),
        StageConfig::InstructionReversal(r) => r.flow.prompts().join("\n"),
        _ => String::new(),
    };
    format!("{:032x}", xxh3_128(text.as_bytes()))
}

/// What besides the declared settings decides what a stage generates: its prompts, the models
/// of its engines and the recipe's seed.
pub(super) fn implementation(recipe: &Recipe, config: &StageConfig) -> serde_json::Value {
    let engines: BTreeMap<&str, serde_json::Value> = engine_names(config)
        .into_iter()
        .map(|n| (n, json!(recipe.engines.get(n).map(|e| e.identity()))))
        .collect();
    json!({"version": VERSION, "prompt_hash": prompt_hash(config), "engines": engines, "seed": recipe.seed})
}

/// The running stage.
pub struct Generation {
    config: StageConfig,
    name: String,
    class: MixClass,
    gates: agents::gates::Gates,
    fp: String,
    prompt_hash: String,
    engines: BTreeMap<String, EngineConfig>,
    seed: u64,
    /// Built on first use: the runtime, and the flow over its engines.
    running: OnceLock<(tokio::runtime::Runtime, Arc<dyn Flow>)>,
}

impl Generation {
    pub fn new(recipe: &Recipe, config: &StageConfig, fp: &str) -> Result<Generation> {
        let name = config.name().to_string();
        let (class, gates) = match config {
            StageConfig::WebRewrite(w) => (w.class, &w.gates),
            StageConfig::SelfRevise(s) => (s.class, &s.gates),
            StageConfig::MultiAgent(m) => (m.class, &m.gates),
            StageConfig::InstructionReversal(r) => (r.class, &r.gates),
            _ => return Err(Error::stage(&name, "not a generation stage")),
        };
        let mut engines = BTreeMap::new();
        for n in engine_names(config) {
            let mut engine = recipe
                .engines
                .get(n)
                .ok_or_else(|| Error::stage(&name, format!("unknown engine `{n}`")))?
                .clone();
            // A local model named by a path is found beside the recipe (as sources are).
            if let EngineConfig::Local(l) = &mut engine {
                let beside = recipe.resolve(&l.model);
                if beside.exists() {
                    l.model = beside.to_string_lossy().into_owned();
                }
            }
            engines.insert(n.to_string(), engine);
        }
        Ok(Generation {
            config: config.clone(),
            name,
            class,
            gates: gates.clone(),
            fp: fp.to_string(),
            prompt_hash: prompt_hash(config),
            engines,
            seed: recipe.seed,
            running: OnceLock::new(),
        })
    }

    fn running(&self) -> Result<&(tokio::runtime::Runtime, Arc<dyn Flow>)> {
        if let Some(r) = self.running.get() {
            return Ok(r);
        }
        let name = &self.name;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::stage(name, format!("async runtime: {e}")))?;
        // Each engine once (an author and a critic may share one), built inside the runtime: an
        // HTTP client wants one around it.
        let mut clients: BTreeMap<String, Client> = BTreeMap::new();
        for (n, config) in &self.engines {
            let engine = runtime
                .block_on(async { config.build() })
                .map_err(|e| Error::stage(name, format!("engine `{n}`: {e}")))?;
            clients.insert(n.clone(), Client::new(n, engine));
        }
        let client = |n: &str| {
            clients
                .get(n)
                .cloned()
                .ok_or_else(|| Error::stage(name, format!("unknown engine `{n}`")))
        };
        let flow: Arc<dyn Flow> = match &self.config {
            StageConfig::WebRewrite(w) => Arc::new(
                agents::web_rewrite::WebRewrite::new(
                    w.flow.clone(),
                    client(&w.flow.engine)?,
                    self.seed,
                )
                .map_err(|e| Error::stage(name, e))?,
            ),
            StageConfig::SelfRevise(s) => {
                let author = client(&s.flow.engine)?;
                let critic = match &s.flow.critic_engine {
                    Some(c) => client(c)?,
                    None => author.clone(),
                };
                Arc::new(
                    agents::self_revision::SelfRevision::new(
                        s.flow.clone(),
                        author,
                        critic,
                        self.seed,
                    )
                    .map_err(|e| Error::stage(name, e))?,
                )
            }
            StageConfig::MultiAgent(m) => Arc::new(
                agents::multi_agent::MultiAgent::new(m.flow.clone(), &clients, self.seed)
                    .map_err(|e| Error::stage(name, e))?,
            ),
            StageConfig::InstructionReversal(r) => Arc::new(
                agents::instruction_reversal::InstructionReversal::new(
                    r.flow.clone(),
                    client(&r.flow.engine)?,
                    self.seed,
                )
                .map_err(|e| Error::stage(name, e))?,
            ),
            _ => return Err(Error::stage(name, "not a generation stage")),
        };
        let _ = self.running.set((runtime, flow));
        self.running
            .get()
            .ok_or_else(|| Error::stage(name, "the engine could not be kept"))
    }
}

impl Stage for Generation {
    fn kind(&self) -> Kind {
        Kind::Transform
    }

    fn prepare(&self) -> Result<()> {
        self.running().map(|_| ())
    }

    fn inputs_at_once(&self) -> usize {
        AT_ONCE
    }

    fn process(&self, _input: &Sample) -> Result<Outcome> {
        Err(Error::stage(
            &self.name,
            "a generation stage runs whole units (process_unit)",
        ))
    }

    fn process_unit(&self, unit: &UnitPlace, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        let (runtime, flow) = self.running()?;
        let name = &self.name;
        let slot = format!("{:032x}", xxh3_128(unit.slot.as_bytes()));
        let path = unit
            .root
            .join(WORK_DIR)
            .join("requests")
            .join(unit.stage)
            .join(format!("{slot}.jsonl"));
        let cache = Arc::new(RequestCache::open(&path).map_err(|e| Error::stage(name, e))?);
        // Each input's flow is a task of the runtime (its workers poll the flows and the HTTP
        // connections alike, without waking this thread per reply), at most IN_FLIGHT at once,
        // each started as soon as another finishes; results are put back in input order.
        let mut generated: Vec<_> = runtime.block_on(async {
            let mut running = tokio::task::JoinSet::new();
            let mut done = Vec::with_capacity(inputs.len());
            let mut next = inputs.iter().enumerate();
            loop {
                while running.len() < IN_FLIGHT {
                    let Some((k, s)) = next.next() else { break };
                    let (cache, flow) = (cache.clone(), flow.clone());
                    let (id, content) = (s.id.clone(), s.content.clone());
                    running.spawn(async move { (k, flow.run(&cache, &id, &content).await) });
                }
                match running.join_next().await {
                    Some(Ok(r)) => done.push(r),
                    Some(Err(e)) => {
                        return Err(Error::stage(name, format!("a generation task failed: {e}")))
                    }
                    None => return Ok(done),
                }
            }
        })?;
        generated.sort_unstable_by_key(|(k, _)| *k);
        let client = flow.client();
        let model = client.identity().model.clone();
        // The gates, in input order: of two duplicates the earlier input's sample is kept.
        let mut keeper = self.gates.keeper();
        generated
            .into_iter()
            .zip(inputs)
            .map(|((_, r), s)| {
                let id = &s.id;
                let g = r.map_err(|e| Error::stage(name, format!("sample {id}: {e}")))?;
                let g = gate(&mut keeper, g);
                agents::stats::outcome(&g);
                Ok(match g {
                    Generated::Dropped(reason) => Outcome::Drop(reason),
                    Generated::Samples(outputs) => Outcome::Emit(
                        outputs
                            .into_iter()
                            .map(|o| {
                                let lineage = Lineage {
                                    stage: name.clone(),
                                    stage_fingerprint: self.fp.clone(),
                                    parents: vec![id.clone()],
                                    engine: Some(client.name.clone()),
                                    model: Some(model.clone()),
                                    template_hash: Some(self.prompt_hash.clone()),
                                    quality: o.quality,
                                    turns: o.turns,
                                    rounds: o.rounds,
                                    ..Default::default()
                                };
                                Sample::new(self.class, o.content, lineage)
                            })
                            .collect(),
                    ),
                })
            })
            .collect()
    }
}

/// What the gates leave of a flow's result: its samples, or the first gate one of them failed.
fn gate(keeper: &mut agents::gates::Keeper, g: Generated) -> Generated {
    let Generated::Samples(outputs) = g else {
        return g;
    };
    for o in &outputs {
        let turns: Vec<&str> = match &o.content {
            Content::Messages { messages } => messages.iter().map(|m| m.content.as_str()).collect(),
            Content::Text { text } => vec![text.as_str()],
        };
        if let Err(reason) = keeper.check(&turns) {
            return Generated::Dropped(reason.to_string());
        }
    }
    Generated::Samples(outputs)
}
