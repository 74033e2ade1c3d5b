//! Near-duplicates by MinHash: a text's word shingles (of the normalised tokens) summarised by
//! `bands x rows` minimum hashes, whose agreement between two texts estimates the Jaccard
//! similarity of their shingle sets; locality-sensitive hashing puts texts that agree on every
//! row of some band in one bucket, so candidates are found without comparing all pairs. FineWeb's
//! settings are the default: 5-word shingles, 14 bands of 8 rows.
//!
//! [`NearIndex`] keeps the signatures of texts kept so far and answers, for a new text, which
//! kept text it nearly duplicates (estimated Jaccard at least the threshold), if any.

use crate::normalize::{tokenize, Tokens};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// MinHash settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinHashSettings {
    /// Words per shingle.
    pub shingle: usize,
    pub bands: usize,
    pub rows: usize,
    pub seed: u64,
}

impl Default for MinHashSettings {
    fn default() -> Self {
        MinHashSettings {
            shingle: 5,
            bands: 14,
            rows: 8,
            seed: 0x5eed,
        }
    }
}

/// Computes signatures.
pub struct MinHasher {
    settings: MinHashSettings,
    /// Per hash function, the multiplier and the addend applied to a shingle's hash (two
    /// arrays, so the loop over hash functions vectorises).
    mul: Vec<u64>,
    add: Vec<u64>,
    tokens: Tokens,
}

impl MinHasher {
    pub fn new(settings: MinHashSettings) -> MinHasher {
        let n = (settings.bands * settings.rows) as u64;
        let mul = (0..n)
            .map(|k| xxh3_64_with_seed(&k.to_le_bytes(), settings.seed) | 1)
            .collect();
        let add = (0..n)
            .map(|k| xxh3_64_with_seed(&k.to_le_bytes(), settings.seed ^ 0xb))
            .collect();
        MinHasher {
            settings,
            mul,
            add,
            tokens: Tokens::default(),
        }
    }

    pub fn settings(&self) -> MinHashSettings {
        self.settings
    }

    /// The signature of `text`: per hash function, the least hash of its shingles (a text
    /// shorter than a shingle is one shingle). `None` for a text without words.
    pub fn signature(&mut self, text: &str) -> Option<Vec<u64>> {
        let mut shingles = Vec::new();
        self.shingles(text, &mut shingles);
        self.signature_of(&shingles)
    }

    /// The hashes of `text`'s shingles (of its normalised tokens) into `out` (cleared first), in
    /// text order, repeats included; a text shorter than a shingle is one shingle, a text without
    /// words none. Two texts' shingle sets give their exact Jaccard similarity.
    pub fn shingles(&mut self, text: &str, out: &mut Vec<u64>) {
        out.clear();
        tokenize(text, &mut self.tokens);
        let h = &self.tokens.hashes;
        if h.is_empty() {
            return;
        }
        let k = self.settings.shingle.clamp(1, h.len());
        out.extend(h.windows(k).map(|w| {
            let mut x = self.settings.seed;
            for t in w {
                x = x.rotate_left(17) ^ t.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            x
        }));
    }

    /// The signature of shingle hashes from [`MinHasher::shingles`] (repeats change nothing);
    /// `None` for no shingles.
    pub fn signature_of(&self, shingles: &[u64]) -> Option<Vec<u64>> {
        if shingles.is_empty() {
            return None;
        }
        let mut sig = vec![u64::MAX; self.mul.len()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { min_hashes_avx2(&mut sig, &self.mul, &self.add, shingles) };
            return Some(sig);
        }
        min_hashes(&mut sig, &self.mul, &self.add, shingles);
        Some(sig)
    }

    /// The bucket key of each band of `sig`.
    pub fn band_keys(&self, sig: &[u64]) -> Vec<u64> {
        sig.chunks(self.settings.rows)
            .enumerate()
            .map(|(band, rows)| {
                let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
                xxh3_64_with_seed(&bytes, band as u64)
            })
            .collect()
    }
}

/// Lowers each `sig[j]` to the least `x * mul[j] + add[j]` over the shingle hashes `x`: the
/// hot loop of a signature (most of a near-duplicate run's time), written so it vectorises.
#[inline(always)]
fn min_hashes(sig: &mut [u64], mul: &[u64], add: &[u64], shingles: &[u64]) {
    for &x in shingles {
        for ((s, m), a) in sig.iter_mut().zip(mul).zip(add) {
            *s = (*s).min(x.wrapping_mul(*m).wrapping_add(*a));
        }
    }
}

/// [`min_hashes`] compiled for AVX2 (four lanes instead of SSE2's two): the same results,
/// about twice as fast.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn min_hashes_avx2(sig: &mut [u64], mul: &[u64], add: &[u64], shingles: &[u64]) {
    min_hashes(sig, mul, add, shingles)
}

/// The share of hash functions on which two signatures agree: an estimate of the Jaccard
/// similarity of the two shingle sets.
pub fn similarity(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// The texts kept so far, by signature and band bucket.
pub struct NearIndex {
    hasher: MinHasher,
    threshold: f64,
    signatures: Vec<Vec<u64>>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

impl NearIndex {
    pub fn new(settings: MinHashSettings, threshold: f64) -> NearIndex {
        NearIndex {
            hasher: MinHasher::new(settings),
            threshold,
            signatures: Vec::new(),
            buckets: HashMap::new(),
        }
    }

    /// The kept text (by the order it was kept in) that `text` nearly duplicates; otherwise
    /// `text` is kept and `None` returned. A text without words is neither kept nor a duplicate.
    pub fn check_and_keep(&mut self, text: &str) -> Option<usize> {
        let sig = self.hasher.signature(text)?;
        let keys = self.hasher.band_keys(&sig);
        for (band, key) in keys.iter().enumerate() {
            for &k in self.buckets.get(&(band, *key)).into_iter().flatten() {
                if similarity(&sig, &self.signatures[k]) >= self.threshold {
                    return Some(k);
                }
            }
        }
        let id = self.signatures.len();
        for (band, key) in keys.into_iter().enumerate() {
            self.buckets.entry((band, key)).or_default().push(id);
        }
        self.signatures.push(sig);
        None
    }

    /// Texts kept.
    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, salt: &str) -> Vec<String> {
        (0..n).map(|k| format!("w{k}{salt}")).collect()
    }

    #[test]
    fn near_copies_are_found_and_different_texts_are_not() {
        let base = words(200, "");
        let mut index = NearIndex::new(MinHashSettings::default(), 0.7);
        assert_eq!(index.check_and_keep(&base.join(" ")), None);
        // One word in fifty changed: the shingle sets' Jaccard is about 0.82.
        let mut near = base.clone();
        for k in (0..200).step_by(50) {
            near[k] = format!("changed{k}");
        }
        assert_eq!(index.check_and_keep(&near.join(" ")), Some(0));
        // Case and punctuation do not matter (the normalised tokens are shingled).
        assert_eq!(
            index.check_and_keep(&base.join(", ").to_uppercase()),
            Some(0)
        );
        assert_eq!(index.check_and_keep(&words(200, "x").join(" ")), None);
        assert_eq!(index.len(), 2);
        assert_eq!(index.check_and_keep(" ... "), None);
        assert_eq!(index.len(), 2);
        // The estimate tracks the true Jaccard.
        let mut h = MinHasher::new(MinHashSettings::default());
        let (a, b) = (
            h.signature(&base.join(" ")).unwrap(),
            h.signature(&base[..100].join(" ")).unwrap(),
        );
        let s = similarity(&a, &b);
        assert!((0.35..0.65).contains(&s), "{s}");
    }
}
