//! How a flow calls a model: through the request cache, with a seed derived from where the call
//! is in the recipe, and with a [`Turn`] of lineage for every call.
//!
//! The seed of a call is a hash of (recipe seed, sample id, agent, round, attempt): a rebuild sends
//! the same requests (so the cache answers them), and two samples, two agents or two rounds never
//! share a draw.

use crate::cache::{self, RequestCache};
use crate::Error;
use corpus::sample::Turn;
use engines::engine::{ChatRequest, Completion, Engine, EngineError, EngineIdentity, FinishReason};
use engines::engine::{Message, Sampling};
use serde_json::json;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// An engine as a flow uses it: its name in the recipe, and what it is.
#[derive(Clone)]
pub struct Client {
    pub name: String,
    engine: Arc<dyn Engine>,
    identity: EngineIdentity,
}

/// Where a call sits, which decides its seed.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub recipe_seed: u64,
    pub sample: &'a str,
    pub agent: &'a str,
    pub round: u32,
    /// Re-asks of the same question (after an unusable reply) get new draws.
    pub attempt: u32,
}

impl Place<'_> {
    pub fn seed(&self) -> u64 {
        let canonical = json!([
            self.recipe_seed,
            self.sample,
            self.agent,
            self.round,
            self.attempt
        ]);
        xxh3_64(canonical.to_string().as_bytes())
    }
}

/// Why a call failed: the engine gave up after its retries, or the cache could not be written.
/// Either stops the unit (its finished calls stay cached); neither drops a sample.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Cache(#[from] Error),
}

impl From<engines::tokenizer::Error> for CallError {
    fn from(e: engines::tokenizer::Error) -> Self {
        CallError::Engine(e.into())
    }
}

impl Client {
    pub fn new(name: &str, engine: Arc<dyn Engine>) -> Client {
        let identity = engine.identity();
        Client {
            name: name.to_string(),
            engine,
            identity,
        }
    }

    pub fn identity(&self) -> &EngineIdentity {
        &self.identity
    }

    /// Asks `messages` with `sampling` (its seed set from `place`), from the cache when it holds
    /// the reply; returns the completion and its lineage turn.
    pub async fn ask(
        &self,
        cache: &RequestCache,
        messages: Vec<Message>,
        sampling: &Sampling,
        place: Place<'_>,
    ) -> Result<(Completion, Turn), CallError> {
        let seed = place.seed();
        let request = ChatRequest {
            messages,
            sampling: Sampling {
                seed: Some(seed),
                ..sampling.clone()
            },
        };
        let key = cache::key(&self.identity, &request);
        let completion = match cache.get(&key) {
            Some(entry) => {
                crate::stats::reply(true, 0);
                entry.completion()
            }
            None => {
                let c = self.engine.complete(&request).await?;
                cache.put(&key, &c)?;
                crate::stats::reply(false, c.completion_tokens);
                c
            }
        };
        let turn = Turn {
            agent: place.agent.to_string(),
            engine: self.name.clone(),
            model: self.identity.model.clone(),
            prompt_hash: key,
            seed,
            round: place.round,
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
            finish_reason: match &completion.finish_reason {
                FinishReason::Stop => "stop".into(),
                FinishReason::Length => "length".into(),
                FinishReason::Other(o) => o.clone(),
            },
        };
        Ok((completion, turn))
    }

    /// Asks until `accept` takes a reply: at most `attempts` times, each with the next attempt's
    /// seed (from `place.attempt` on). Every call's turn goes to `turns`. Returns what `accept`
    /// made of the first reply it took, or its last refusal.
    #[allow(clippy::too_many_arguments)]
    pub async fn ask_until<T, E>(
        &self,
        cache: &RequestCache,
        messages: &[Message],
        sampling: &Sampling,
        place: Place<'_>,
        attempts: u32,
        turns: &mut Vec<Turn>,
        mut accept: impl FnMut(&str) -> Result<T, E>,
    ) -> Result<Result<T, E>, CallError> {
        let mut k = 0;
        loop {
            let at = Place {
                attempt: place.attempt + k,
                ..place
            };
            let (reply, turn) = self.ask(cache, messages.to_vec(), sampling, at).await?;
            turns.push(turn);
            match accept(&reply.text) {
                Ok(v) => return Ok(Ok(v)),
                Err(e) if k + 1 >= attempts => return Ok(Err(e)),
                Err(_) => k += 1,
            }
        }
    }
}
