//! Process-wide counts of what the flows did, for a person watching a build: requests sent to
//! engines, replies taken from the cache, completion tokens, samples kept and inputs dropped.
//! Progress displays read them; nothing else does.

use std::sync::atomic::{AtomicU64, Ordering};

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static CACHED: AtomicU64 = AtomicU64::new(0);
static TOKENS: AtomicU64 = AtomicU64::new(0);
static KEPT: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub cached: u64,
    pub completion_tokens: u64,
    pub kept: u64,
    pub dropped: u64,
}

pub fn snapshot() -> Stats {
    Stats {
        requests: REQUESTS.load(Ordering::Relaxed),
        cached: CACHED.load(Ordering::Relaxed),
        completion_tokens: TOKENS.load(Ordering::Relaxed),
        kept: KEPT.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
    }
}

pub(crate) fn reply(cached: bool, completion_tokens: u32) {
    if cached {
        CACHED.fetch_add(1, Ordering::Relaxed);
    } else {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        TOKENS.fetch_add(u64::from(completion_tokens), Ordering::Relaxed);
    }
}

/// Records what a flow made of one input.
pub fn outcome(generated: &crate::Generated) {
    match generated {
        crate::Generated::Samples(s) => KEPT.fetch_add(s.len() as u64, Ordering::Relaxed),
        crate::Generated::Dropped(_) => DROPPED.fetch_add(1, Ordering::Relaxed),
    };
}
