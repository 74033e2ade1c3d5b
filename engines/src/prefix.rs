//! The local engine's prefix cache: the keys and values of prompt prefixes already computed, so
//! a request that starts like an earlier one (a flow's system prompt and transcript, one document
//! under several instructions, `n` samples of one prompt) feeds only what is new.
//!
//! Prompts are cut into blocks of `block` tokens. A block is known by a hash of its tokens and of
//! the block before it, so one entry stands for a whole prefix, and prefixes that diverge share
//! the blocks before they do, as in vLLM's automatic prefix caching. Every request that matches a
//! block shares the one entry: entries hold a count of their users (requests between lookup and
//! release) and of the entries that continue them, and only an entry with neither is evicted,
//! least recently used first, when the cache is full.
//!
//! The local engine caches block numbers of its [paged KV cache](crate::kv): a hit puts the
//! cached blocks in the new sequence's block table, read in place; the engine's block pool counts
//! the references, so an evicted entry's block lives on while a sequence still reads it
//! ([`PrefixCache::take_evicted`] hands evicted values back).

use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// One cached block: the keys and values of `block` positions, every layer's.
struct Entry<T> {
    tokens: Vec<u32>,
    parent: Option<u64>,
    kv: T,
    /// Requests holding this entry (from lookup to release).
    users: usize,
    /// Cached entries whose parent this is.
    children: usize,
    /// When last looked up or inserted (a counter, for least-recently-used eviction).
    used: u64,
}

/// What one lookup found: the block hashes of the longest cached prefix, first to last. Give it
/// back with [`PrefixCache::release`] once the blocks are copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hit {
    pub blocks: Vec<u64>,
    /// Prompt tokens it covers.
    pub tokens: usize,
}

/// Counts since the cache was made, for the engine's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Prompt tokens looked up (whole blocks only) and found.
    pub looked_up: u64,
    pub hit: u64,
    pub inserted: u64,
    pub evicted: u64,
}

/// A bounded cache of prefix blocks holding values of type `T` (a block's keys and values).
pub struct PrefixCache<T> {
    block: usize,
    capacity: usize,
    entries: HashMap<u64, Entry<T>>,
    clock: u64,
    counts: Counts,
    evicted: Vec<T>,
}

impl<T> PrefixCache<T> {
    /// A cache of at most `capacity` blocks of `block` tokens (at least 1 each).
    pub fn new(block: usize, capacity: usize) -> PrefixCache<T> {
        PrefixCache {
            block: block.max(1),
            capacity,
            entries: HashMap::new(),
            clock: 0,
            counts: Counts::default(),
            evicted: Vec::new(),
        }
    }

    /// Tokens per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The hashes of `tokens`' whole blocks, each chained to the one before.
    pub fn hashes(&self, tokens: &[u32]) -> Vec<u64> {
        let mut parent = 0u64;
        tokens
            .chunks_exact(self.block)
            .map(|b| {
                let bytes: Vec<u8> = b.iter().flat_map(|t| t.to_le_bytes()).collect();
                parent = xxh3_64_with_seed(&bytes, parent);
                parent
            })
            .collect()
    }

    /// The longest cached prefix of `prompt`, leaving at least one token to feed (the model needs
    /// one to give the next token's logits). Its blocks are held (not evicted) until released.
    pub fn lookup(&mut self, prompt: &[u32]) -> Hit {
        let usable = prompt.len().saturating_sub(1);
        let mut hit = Hit::default();
        if self.capacity == 0 {
            return hit;
        }
        self.clock += 1;
        let hashes = self.hashes(&prompt[..usable]);
        self.counts.looked_up += (hashes.len() * self.block) as u64;
        for (i, h) in hashes.into_iter().enumerate() {
            let tokens = &prompt[i * self.block..(i + 1) * self.block];
            match self.entries.get_mut(&h) {
                // The tokens are compared too: a hash collision is not a hit.
                Some(e) if e.tokens == tokens => {
                    e.users += 1;
                    e.used = self.clock;
                    hit.blocks.push(h);
                }
                _ => break,
            }
        }
        hit.tokens = hit.blocks.len() * self.block;
        self.counts.hit += hit.tokens as u64;
        hit
    }

    /// Prompt tokens a lookup of `prompt` would find now (holding nothing).
    pub fn peek(&self, prompt: &[u32]) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        let usable = prompt.len().saturating_sub(1);
        let found = self
            .hashes(&prompt[..usable])
            .into_iter()
            .enumerate()
            .take_while(|(i, h)| {
                self.entries
                    .get(h)
                    .is_some_and(|e| e.tokens == prompt[i * self.block..(i + 1) * self.block])
            })
            .count();
        found * self.block
    }

    /// The cached values of a hit's blocks, in order.
    pub fn values<'a>(&'a self, hit: &'a Hit) -> impl Iterator<Item = &'a T> + 'a {
        hit.blocks
            .iter()
            .filter_map(|h| self.entries.get(h).map(|e| &e.kv))
    }

    /// Gives back what a lookup held.
    pub fn release(&mut self, hit: &Hit) {
        for h in &hit.blocks {
            if let Some(e) = self.entries.get_mut(h) {
                e.users = e.users.saturating_sub(1);
            }
        }
    }

    /// Caches the whole blocks of `tokens` not cached yet; `read(i)` gives block `i`'s values
    /// (positions `i * block..(i + 1) * block` of the sequence). Stops when the cache is full of
    /// blocks in use, or at `read`'s first error (what was inserted before stays). Returns the
    /// blocks inserted.
    pub fn insert<E>(
        &mut self,
        tokens: &[u32],
        mut read: impl FnMut(usize) -> Result<T, E>,
    ) -> Result<usize, E> {
        if self.capacity == 0 {
            return Ok(0);
        }
        self.clock += 1;
        let mut parent = None;
        let mut added = 0;
        for (i, h) in self.hashes(tokens).into_iter().enumerate() {
            let block = &tokens[i * self.block..(i + 1) * self.block];
            match self.entries.get_mut(&h) {
                Some(e) if e.tokens == block => {
                    e.used = self.clock;
                    parent = Some(h);
                    continue;
                }
                // A collision with another prefix: leave the cached one.
                Some(_) => break,
                None => {}
            }
            if self.entries.len() >= self.capacity && !self.evict_one(parent) {
                break;
            }
            let kv = read(i)?;
            if let Some(p) = parent.and_then(|p| self.entries.get_mut(&p)) {
                p.children += 1;
            }
            self.entries.insert(
                h,
                Entry {
                    tokens: block.to_vec(),
                    parent,
                    kv,
                    users: 0,
                    children: 0,
                    used: self.clock,
                },
            );
            parent = Some(h);
            added += 1;
        }
        self.counts.inserted += added as u64;
        Ok(added)
    }

    /// The values of the entries evicted since the last call.
    pub fn take_evicted(&mut self) -> Vec<T> {
        std::mem::take(&mut self.evicted)
    }

    /// Evicts the least recently used entry that no request holds and no entry continues (never
    /// `keep`, the block being extended). Returns whether one was evicted.
    fn evict_one(&mut self, keep: Option<u64>) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(h, e)| e.users == 0 && e.children == 0 && Some(**h) != keep)
            .min_by_key(|(h, e)| (e.used, **h))
            .map(|(h, _)| *h);
        let Some(h) = victim else {
            return false;
        };
        if let Some(e) = self.entries.remove(&h) {
            if let Some(p) = e.parent.and_then(|p| self.entries.get_mut(&p)) {
                p.children -= 1;
            }
            self.evicted.push(e.kv);
        }
        self.counts.evicted += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(i: usize) -> Result<usize, ()> {
        Ok(i)
    }

    #[test]
    fn prefixes_share_blocks_and_hits_leave_a_token_to_feed() {
        let mut c = PrefixCache::<usize>::new(4, 16);
        let a: Vec<u32> = (0..10).collect();
        assert_eq!(c.insert(&a, ok), Ok(2)); // two whole blocks of ten tokens
                                             // A prompt diverging in its second block shares the first.
        let mut b = a.clone();
        b[5] = 99;
        let hit = c.lookup(&b);
        assert_eq!(hit.tokens, 4);
        c.release(&hit);
        assert_eq!(c.insert(&b, ok), Ok(1));
        assert_eq!(c.len(), 3);
        // Exactly eight tokens: at most one block, the last token is left to feed.
        let hit = c.lookup(&a[..8]);
        assert_eq!(hit.tokens, 4);
        assert_eq!(c.values(&hit).copied().collect::<Vec<_>>(), vec![0]);
        c.release(&hit);
        let hit = c.lookup(&a);
        assert_eq!((hit.tokens, c.values(&hit).count()), (8, 2));
        c.release(&hit);
        // Another first block shares nothing.
        assert_eq!(c.lookup(&[7, 7, 7, 7, 7]).tokens, 0);
        let n = c.counts();
        assert_eq!((n.hit, n.inserted), (16, 3));
    }

    #[test]
    fn eviction_takes_the_least_recently_used_leaf_and_spares_held_blocks() {
        let mut c = PrefixCache::<usize>::new(2, 3);
        let a = [1, 1, 2, 2, 3];
        let b = [5, 5, 6];
        assert_eq!(c.insert(&a, ok), Ok(2));
        assert_eq!(c.insert(&b, ok), Ok(1));
        // Full. `a` is used again, so `b` is the least recently used leaf.
        let hit = c.lookup(&a);
        assert_eq!(hit.tokens, 4);
        assert_eq!(c.insert(&[8, 8, 9], ok), Ok(1));
        assert_eq!(c.lookup(&b).tokens, 0, "b was evicted");
        assert_eq!(
            c.insert(&[4, 4, 0], ok),
            Ok(1),
            "the unheld leaf [8, 8] goes"
        );
        // Every block is held or continued now: nothing can be evicted for a new one.
        let held = c.lookup(&[4, 4, 0]);
        assert_eq!(held.tokens, 2);
        assert_eq!(
            c.insert(&[6, 6, 0], ok),
            Ok(0),
            "only held blocks and their parents left"
        );
        c.release(&held);
        c.release(&hit);
        // Released: `a`'s leaf is the least recently used (its parent was no leaf until then).
        assert_eq!(c.insert(&[6, 6, 0], ok), Ok(1));
        let again = c.lookup(&a);
        assert_eq!(
            again.tokens, 2,
            "a's first block stays, its second was evicted"
        );
        assert_eq!(c.counts().evicted, 3);
        assert_eq!(
            c.take_evicted().len(),
            3,
            "each evicted value is handed back once"
        );
        assert!(c.take_evicted().is_empty());
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let mut c = PrefixCache::<usize>::new(2, 0);
        assert_eq!(c.insert(&[1, 2, 3, 4, 5], ok), Ok(0));
        assert_eq!(c.lookup(&[1, 2, 3, 4, 5]).tokens, 0);
    }
}
