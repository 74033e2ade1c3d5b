//! What the local engine's scheduler reports while it runs, as Prometheus metrics: `serve`
//! exposes them on `/metrics`, `bench-load` reads them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

/// The scheduler's figures (shared: clones count into the same metrics).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Requests waiting for a slot or for KV cache blocks.
    pub queue_depth: Gauge,
    /// Sequences in slots (prefilling or decoding).
    pub running: Gauge,
    /// Prompt tokens of admitted requests, and those of them found in the prefix cache.
    pub prompt_tokens: Counter,
    pub prefix_cache_hit_tokens: Counter,
    /// Prompt tokens looked up in the prefix cache (its whole blocks) and found: the hit rate's
    /// terms.
    pub prefix_cache_lookup_tokens: Counter,
    pub prefix_cache_blocks: Gauge,
    pub prefix_cache_evictions: Counter,
    /// Blocks of the paged KV cache in use (by sequences or the prefix cache), and in all.
    pub kv_blocks_used: Gauge,
    pub kv_blocks: Gauge,
    /// Block references held by running sequences: over [`Metrics::kv_blocks_used`], what
    /// sharing saves.
    pub kv_block_refs: Gauge,
    /// Blocks the running sequences hold or may still take (their prompts and `max_tokens`):
    /// requests are admitted while this fits the sequences' budget.
    pub kv_blocks_committed: Gauge,
    pub generated_tokens: Counter,
    pub requests_finished: Counter,
    pub forward_passes: Counter,
    /// Tokens generated per second over the last ten seconds.
    pub generated_tokens_per_second: Gauge<f64, AtomicU64>,
    /// Prefix-cache hit tokens over lookup tokens, since the start.
    pub prefix_cache_hit_rate: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers every metric, prefixed `phiforge_engine_`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("phiforge_engine");
        r.register(
            "queue_depth",
            "Requests waiting for a slot or for KV cache blocks",
            self.queue_depth.clone(),
        );
        r.register("running", "Sequences in slots", self.running.clone());
        r.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            self.prompt_tokens.clone(),
        );
        r.register(
            "prefix_cache_hit_tokens",
            "Prompt tokens found in the prefix cache",
            self.prefix_cache_hit_tokens.clone(),
        );
        r.register(
            "prefix_cache_lookup_tokens",
            "Prompt tokens looked up in the prefix cache (whole blocks)",
            self.prefix_cache_lookup_tokens.clone(),
        );
        r.register(
            "prefix_cache_hit_rate",
            "Prefix cache hit tokens over lookup tokens",
            self.prefix_cache_hit_rate.clone(),
        );
        r.register(
            "prefix_cache_blocks",
            "Blocks in the prefix cache",
            self.prefix_cache_blocks.clone(),
        );
        r.register(
            "prefix_cache_evictions",
            "Prefix cache blocks evicted",
            self.prefix_cache_evictions.clone(),
        );
        r.register(
            "kv_blocks_used",
            "Blocks of the paged KV cache in use",
            self.kv_blocks_used.clone(),
        );
        r.register(
            "kv_blocks",
            "Blocks of the paged KV cache",
            self.kv_blocks.clone(),
        );
        r.register(
            "kv_block_refs",
            "KV cache blocks in running sequences' tables, shared ones counted once per sequence",
            self.kv_block_refs.clone(),
        );
        r.register(
            "kv_blocks_committed",
            "KV cache blocks running sequences hold or may still take; admission keeps it within the budget",
            self.kv_blocks_committed.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        r.register(
            "generated_tokens_per_second",
            "Tokens generated per second over the last ten seconds",
            self.generated_tokens_per_second.clone(),
        );
        r.register(
            "requests_finished",
            "Requests answered",
            self.requests_finished.clone(),
        );
        r.register(
            "forward_passes",
            "Forward passes of the model",
            self.forward_passes.clone(),
        );
    }
}
