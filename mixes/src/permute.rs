//! A seeded permutation of `0..n` that needs no memory per element: a Feistel network over the
//! smallest even-bit domain that holds `n`, walked until it lands inside `0..n` (a bijection on the
//! domain restricted to `0..n` stays one). Each (seed, epoch) gives its own order.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Rounds of the network (4 make a good pseudo-random permutation).
const ROUNDS: u64 = 4;

#[derive(Debug, Clone)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    key: u64,
}

impl Permutation {
    /// A permutation of `0..n` for `key` (for a class's epoch: a hash of seed, class and epoch).
    pub fn new(n: u64, key: u64) -> Permutation {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        Permutation {
            n,
            half_bits: bits.div_ceil(2).max(1),
            key,
        }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The element at position `i` (`i < n`).
    pub fn get(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = i;
        loop {
            x = self.round_trip(x);
            if x < self.n {
                return x;
            }
        }
    }

    fn round_trip(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for round in 0..ROUNDS {
            let f = xxh3_64_with_seed(&r.to_le_bytes(), self.key ^ round) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_is_a_permutation_and_keys_differ() {
        for n in [1u64, 2, 3, 5, 16, 17, 1000, 4097] {
            let p = Permutation::new(n, 7);
            let mut seen: Vec<u64> = (0..n).map(|i| p.get(i)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
        let (a, b) = (Permutation::new(1000, 1), Permutation::new(1000, 2));
        let same = (0..1000).filter(|&i| a.get(i) == b.get(i)).count();
        assert!(same < 20, "{same}");
        let moved = (0..1000).filter(|&i| a.get(i) != i).count();
        assert!(moved > 980, "{moved}");
    }
}
