//! `web_rewrite`: each input document rewritten by an LLM into a textbook-like passage (the
//! `agents` crate's flow). A transform: its units write the rewrites, each with its input's id,
//! and a tombstone with the failed check for each document dropped.
//!
//! A unit runs its inputs concurrently (the engine's own limits decide how many are in flight)
//! on one async runtime the stage shares between units, and asks through the unit's request
//! cache, `.phiforge/requests/STAGE/SLOT.jsonl`: named by the unit's slot, not its key, so a
//! changed check or length bound reruns the stage from cached replies instead of the model. An
//! engine that fails after its retries stops the unit with the error (the finished requests stay
//! cached); it never drops a sample.

use super::{Kind, Outcome, Stage, UnitPlace};
use crate::recipe::{Recipe, WebRewriteStage};
use crate::sample::{Lineage, Sample};
use crate::unit::WORK_DIR;
use crate::{Error, Result};
use agents::cache::RequestCache;
use agents::client::Client;
use agents::Generated;
use futures::StreamExt;
use serde_json::json;
use std::sync::OnceLock;
use xxhash_rust::xxh3::xxh3_128;

const VERSION: u32 = 1;

/// Inputs of a unit in flight at once (the engine's concurrency and rate limits apply below it).
const IN_FLIGHT: usize = 512;

fn prompt_hash(w: &WebRewriteStage) -> String {
    let prompt = agents::web_rewrite::WebRewrite::prompt_text(&w.flow);
    let system = w
        .flow
        .system
        .as_deref()
        .unwrap_or(agents::web_rewrite::DEFAULT_SYSTEM);
    format!(
        "{:032x}",
        xxh3_128(format!("{system}\n{prompt}").as_bytes())
    )
}

/// What besides the declared settings decides the rewrites: the prompts, the engine's model and
/// the recipe's seed.
pub(super) fn implementation(recipe: &Recipe, w: &WebRewriteStage) -> serde_json::Value {
    let engine = recipe.engines.get(&w.flow.engine).map(|e| e.identity());
    json!({"version": VERSION, "prompt_hash": prompt_hash(w), "engine": engine, "seed": recipe.seed})
}

/// The running stage.
pub struct WebRewrite {
    stage: WebRewriteStage,
    fp: String,
    prompt_hash: String,
    engine: engines::config::EngineConfig,
    seed: u64,
    /// Built on first use: the runtime, and the flow over its engine.
    running: OnceLock<(tokio::runtime::Runtime, agents::web_rewrite::WebRewrite)>,
}

impl WebRewrite {
    pub fn new(recipe: &Recipe, w: &WebRewriteStage, fp: &str) -> Result<WebRewrite> {
        let engine = recipe
            .engines
            .get(&w.flow.engine)
            .ok_or_else(|| Error::stage(&w.name, format!("unknown engine `{}`", w.flow.engine)))?;
        // A local model named by a path is found beside the recipe (as sources are).
        let mut engine = engine.clone();
        if let engines::config::EngineConfig::Local(l) = &mut engine {
            let beside = recipe.resolve(&l.model);
            if beside.exists() {
                l.model = beside.to_string_lossy().into_owned();
            }
        }
        Ok(WebRewrite {
            stage: w.clone(),
            fp: fp.to_string(),
            prompt_hash: prompt_hash(w),
            engine,
            seed: recipe.seed,
            running: OnceLock::new(),
        })
    }

    fn running(&self) -> Result<&(tokio::runtime::Runtime, agents::web_rewrite::WebRewrite)> {
        if let Some(r) = self.running.get() {
            return Ok(r);
        }
        let name = &self.stage.name;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::stage(name, format!("async runtime: {e}")))?;
        // Built inside the runtime: an HTTP client wants one around it.
        let engine = runtime
            .block_on(async { self.engine.build() })
            .map_err(|e| Error::stage(name, format!("engine `{}`: {e}", self.stage.flow.engine)))?;
        let client = Client::new(&self.stage.flow.engine, engine);
        let flow = agents::web_rewrite::WebRewrite::new(self.stage.flow.clone(), client, self.seed)
            .map_err(|e| Error::stage(name, e))?;
        let _ = self.running.set((runtime, flow));
        self.running
            .get()
            .ok_or_else(|| Error::stage(name, "the engine could not be kept"))
    }
}

impl Stage for WebRewrite {
    fn kind(&self) -> Kind {
        Kind::Transform
    }

    fn prepare(&self) -> Result<()> {
        self.running().map(|_| ())
    }

    fn process(&self, _input: &Sample) -> Result<Outcome> {
        Err(Error::stage(
            &self.stage.name,
            "a generation stage runs whole units (process_unit)",
        ))
    }

    fn process_unit(&self, unit: &UnitPlace, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        let (runtime, flow) = self.running()?;
        let name = &self.stage.name;
        let slot = format!("{:032x}", xxh3_128(unit.slot.as_bytes()));
        let path = unit
            .root
            .join(WORK_DIR)
            .join("requests")
            .join(unit.stage)
            .join(format!("{slot}.jsonl"));
        let cache = RequestCache::open(&path).map_err(|e| Error::stage(name, e))?;
        let generated: Vec<(String, std::result::Result<Generated, _>)> = runtime.block_on(async {
            futures::stream::iter(inputs.iter())
                .map(|s| {
                    let (cache, id) = (&cache, s.id.clone());
                    let text = s.content.text().into_owned();
                    async move {
                        let r = flow.run(cache, &id, &text).await;
                        (id, r)
                    }
                })
                .buffered(IN_FLIGHT)
                .collect()
                .await
        });
        let model = flow.client().identity().model.clone();
        generated
            .into_iter()
            .map(|(id, r)| {
                let g = r.map_err(|e| Error::stage(name, format!("sample {id}: {e}")))?;
                Ok(match g {
                    Generated::Dropped(reason) => Outcome::Drop(reason),
                    Generated::Samples(outputs) => Outcome::Emit(
                        outputs
                            .into_iter()
                            .map(|o| {
                                Sample::new(
                                    self.stage.class,
                                    o.content,
                                    Lineage {
                                        stage: name.clone(),
                                        stage_fingerprint: self.fp.clone(),
                                        parents: vec![id.clone()],
                                        engine: Some(self.stage.flow.engine.clone()),
                                        model: Some(model.clone()),
                                        template_hash: Some(self.prompt_hash.clone()),
                                        quality: o.quality,
                                        turns: o.turns,
                                        rounds: o.rounds,
                                        ..Default::default()
                                    },
                                )
                            })
                            .collect(),
                    ),
                })
            })
            .collect()
    }
}
