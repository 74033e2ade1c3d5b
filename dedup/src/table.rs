//! A read-only map from 64-bit hashes to values, built from keys already sorted.
//!
//! The benchmark index's keys are xxh3 hashes, uniformly spread, and arrive sorted (the index
//! sorts its n-grams to group the items behind each). So the table is those keys in order, their
//! values beside them, and a directory of where each value of the keys' top bits starts: built in
//! one sequential pass (a hash map's inserts are a cache miss each, 17% of building the standard
//! index), 16 bytes per entry with no slack, and a lookup is one directory read and a short scan
//! of about one key.

/// Sorted keys, their values, and `dir[t]`: the first key whose top bits are `t` or more.
#[derive(Debug, Clone)]
pub(crate) struct SortedTable<V> {
    keys: Vec<u64>,
    values: Vec<V>,
    dir: Vec<u32>,
    shift: u32,
}

impl<V> SortedTable<V> {
    /// Builds the table from `entries` in increasing key order, each key once.
    pub(crate) fn from_sorted(entries: impl ExactSizeIterator<Item = (u64, V)>) -> Self {
        let (mut keys, mut values) = (
            Vec::with_capacity(entries.len()),
            Vec::with_capacity(entries.len()),
        );
        for (k, v) in entries {
            keys.push(k);
            values.push(v);
        }
        debug_assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "keys must be sorted and distinct"
        );
        // About one key per directory slot, at least 2 slots and at most 2^26.
        let bits = (usize::BITS - keys.len().leading_zeros()).clamp(1, 26);
        let shift = u64::BITS - bits;
        let slots = 1usize << bits;
        let mut dir = Vec::with_capacity(slots + 1);
        let mut at = 0usize;
        for t in 0..slots {
            while at < keys.len() && ((keys[at] >> shift) as usize) < t {
                at += 1;
            }
            dir.push(at as u32);
        }
        dir.push(keys.len() as u32);
        SortedTable {
            keys,
            values,
            dir,
            shift,
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        let t = (key >> self.shift) as usize;
        let (a, b) = (self.dir[t] as usize, self.dir[t + 1] as usize);
        let i = self.keys[a..b].iter().position(|&k| k == key)?;
        Some(&self.values[a + i])
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn keys(&self) -> &[u64] {
        &self.keys
    }

    pub(crate) fn values(&self) -> &[V] {
        &self.values
    }
}

/// A Bloom filter of 64-bit hashes in which a key's four bits share one 64-bit word, so that a
/// lookup is one memory read and a predictable branch. The scan looks up every 7-gram of a
/// sample in a tight loop of such reads, which the CPU overlaps; a general Bloom filter's probes
/// depend on each other (the second bit is read only when the first is set), and a hash map's
/// lookup is two reads of a table too large for any cache. Sized at 16 bits per key (4 MB for the
/// standard benchmarks' 1.8 M 7-grams), it answers about 0.2% false positives.
#[derive(Debug, Clone)]
pub(crate) struct WordFilter {
    words: Vec<u64>,
    shift: u32,
}

impl WordFilter {
    pub(crate) fn new(keys: &[u64]) -> Self {
        let bits = (usize::BITS - (keys.len() / 4).leading_zeros()).clamp(1, 32);
        let mut f = WordFilter {
            words: vec![0; 1 << bits],
            shift: u64::BITS - bits,
        };
        for &k in keys {
            let w = (k >> f.shift) as usize;
            f.words[w] |= Self::mask(k);
        }
        f
    }

    /// Four bits from the key's low bits (the word is chosen by its high bits).
    #[inline]
    fn mask(key: u64) -> u64 {
        let m = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        (1 << (m & 63)) | (1 << ((m >> 6) & 63)) | (1 << ((m >> 12) & 63)) | (1 << ((m >> 18) & 63))
    }

    /// False when `key` was certainly not given to [`WordFilter::new`].
    #[inline]
    pub(crate) fn may_contain(&self, key: u64) -> bool {
        let mask = Self::mask(key);
        self.words[(key >> self.shift) as usize] & mask == mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    #[test]
    fn finds_every_key_and_no_other() {
        for n in [0usize, 1, 2, 3, 100, 5000] {
            let mut keys: Vec<u64> = (0..n as u64).map(|i| xxh3_64(&i.to_le_bytes())).collect();
            // The extremes of the key space land in the first and last slots.
            if n > 2 {
                keys[0] = 0;
                keys[1] = u64::MAX;
            }
            keys.sort_unstable();
            keys.dedup();
            let table = SortedTable::from_sorted(keys.iter().map(|&k| (k, k.wrapping_mul(3))));
            assert_eq!(table.len(), keys.len());
            for &k in &keys {
                assert_eq!(table.get(k), Some(&k.wrapping_mul(3)), "n {n} key {k}");
            }
            let filter = WordFilter::new(&keys);
            assert!(keys.iter().all(|&k| filter.may_contain(k)));
            let absent = (n as u64..n as u64 + 100_000)
                .map(|i| xxh3_64(&i.to_le_bytes()))
                .filter(|&k| filter.may_contain(k))
                .count();
            assert!(absent < 1000, "{absent} false positives in 100,000 (n {n})");
            for i in n as u64..n as u64 + 1000 {
                let absent = xxh3_64(&i.to_le_bytes());
                if keys.binary_search(&absent).is_err() {
                    assert_eq!(table.get(absent), None);
                }
            }
        }
    }
}
