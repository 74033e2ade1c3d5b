//! The training data: the mix's token shards checked against the manifest, documents packed into
//! sequences, a seeded order, and the held-out evaluation sequences.
//!
//! Packing concatenates every document of every token shard in the manifest's order (each document
//! already ends with the tokenizer's end-of-text token) and cuts the stream into sequences of
//! `sequence_length + 1` tokens that overlap by one: sequence `k` reads tokens
//! `[k·T, (k+1)·T + 1)`, its inputs are the first `T` and its targets the last `T`, so every token
//! after the first is a target exactly once and nothing is padded (only the tail shorter than a
//! sequence is left out). This is how llm.c and nanoGPT read their shards, so the benchmark's
//! shard feeds the same predictions to both trainers.
//!
//! With evaluation on, the last `eval_batches × batch_size` sequences are held out; the others are
//! read in a seeded permutation per epoch (or in order with `shuffle: false`), so the `i`-th
//! sequence a run reads depends on the seed and `i` alone, and resuming needs only `i`.

use crate::{Error, Result, TrainConfig};
use mixes::manifest::Manifest;
use std::path::Path;

/// Tokens in reading order, with the loss mask (true: the token counts as a target).
#[derive(Debug, Clone, Default)]
pub struct TokenData {
    pub tokens: Vec<u32>,
    pub mask: Option<Vec<bool>>,
    pub vocab: u32,
}

/// Checks every file of the mix against the manifest (before any work), refuses a class the mix
/// planned for that came out empty, and reads the token shards in order.
pub fn load_manifest(manifest: &Manifest, dir: &Path) -> Result<TokenData> {
    manifest.verify(dir)?;
    for (class, got) in &manifest.report.classes {
        if got.target_share > 0.0 && got.tokens == 0 {
            return Err(Error::EmptyClass {
                class: class.as_str().to_string(),
                target_share: got.target_share,
            });
        }
    }
    if manifest.token_shards.is_empty() {
        return Err(Error::NoData(format!(
            "{}: the mix has no token shards",
            dir.display()
        )));
    }
    let mut data = TokenData {
        vocab: manifest.tokenizer.vocab,
        mask: manifest.loss_mask.then(Vec::new),
        ..TokenData::default()
    };
    for k in 0..manifest.token_shards.len() {
        let shard = manifest.open_token_shard(dir, k)?;
        if let Some(mask) = &mut data.mask {
            match &shard.mask {
                Some(m) => mask.extend_from_slice(m),
                None => mask.extend(std::iter::repeat_n(true, shard.tokens.len())),
            }
        }
        data.tokens.extend_from_slice(&shard.tokens);
    }
    Ok(data)
}

/// llm.c's uint32 token shard (the peers' format): a header of 256 little-endian int32 (magic
/// 20240801, version 7, token count), then the tokens as uint32. Returns the first `need`
/// tokens (all when `None`), each taken modulo `vocab`.
pub fn read_llmc_shard(path: &Path, need: Option<usize>, vocab: u32) -> Result<TokenData> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::NoData(format!("{}: {m}", path.display()));
    if bytes.len() < 1024 {
        return Err(bad("shorter than llm.c's 1024-byte header".into()));
    }
    let word = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    if word(0) != 20_240_801 || word(1) != 7 {
        return Err(bad(format!(
            "not an llm.c uint32 shard (magic {}, version {})",
            word(0),
            word(1)
        )));
    }
    let count = word(2).max(0) as usize;
    if bytes.len() < 1024 + 4 * count {
        return Err(bad(format!(
            "the header says {count} tokens, the file is shorter"
        )));
    }
    let n = need.unwrap_or(count);
    if n > count {
        return Err(bad(format!("{count} tokens, the run needs {n}")));
    }
    let tokens = bytes[1024..1024 + 4 * n]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % vocab)
        .collect();
    Ok(TokenData {
        tokens,
        mask: None,
        vocab,
    })
}

/// One micro-batch: `b` rows of `l` inputs and targets, with target weights (1 or 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Batch {
    /// Targets that count in the loss.
    pub fn counted(&self) -> f32 {
        self.weights.iter().sum()
    }
}

/// The packed sequences and their order.
#[derive(Debug)]
pub struct Loader {
    data: TokenData,
    seq: usize,
    batch: usize,
    train: u64,
    eval: u64,
    shuffle: bool,
    seed: u64,
    /// The permutation of the current epoch (cached).
    perm: Option<(u64, Vec<u32>)>,
}

impl Loader {
    /// Packs `data` for `cfg`; refuses data too small for one batch of training (plus the
    /// held-out batches when evaluation is on).
    pub fn new(data: TokenData, cfg: &TrainConfig) -> Result<Loader> {
        let seq = cfg.sequence_length as usize;
        let total = if data.tokens.len() > seq {
            ((data.tokens.len() - 1) / seq) as u64
        } else {
            0
        };
        let batch = cfg.batch_size as usize;
        let eval = if cfg.eval_every > 0 {
            cfg.eval_batches as u64 * batch as u64
        } else {
            0
        };
        if total < eval + batch as u64 {
            return Err(Error::NoData(format!(
                "{} tokens make {total} sequences of {seq}+1; one batch needs {batch} and \
                 evaluation holds out {eval}",
                data.tokens.len()
            )));
        }
        if let Some(t) = data.tokens.iter().find(|&&t| t >= data.vocab) {
            return Err(Error::NoData(format!(
                "token {t} is outside the vocabulary of {}",
                data.vocab
            )));
        }
        Ok(Loader {
            data,
            seq,
            batch,
            train: total - eval,
            eval,
            shuffle: cfg.shuffle,
            seed: cfg.seed,
            perm: None,
        })
    }

    pub fn vocab(&self) -> u32 {
        self.data.vocab
    }

    /// Training sequences (not held out).
    pub fn train_sequences(&self) -> u64 {
        self.train
    }

    pub fn eval_sequences(&self) -> u64 {
        self.eval
    }

    /// The sequence the run reads `i`-th (counting from 0 over the whole run), and its epoch.
    pub fn sequence_at(&mut self, i: u64) -> (u64, u64) {
        let epoch = i / self.train;
        let k = i % self.train;
        if !self.shuffle {
            return (epoch, k);
        }
        if self.perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.perm = Some((epoch, permutation(self.train as usize, self.seed, epoch)));
        }
        let k = self.perm.as_ref().map_or(k, |(_, p)| p[k as usize] as u64);
        (epoch, k)
    }

    /// The micro-batch of sequences `first..first + batch` of the run's order.
    pub fn train_batch(&mut self, first: u64) -> Batch {
        let ids: Vec<u64> = (0..self.batch as u64)
            .map(|r| self.sequence_at(first + r).1)
            .collect();
        self.batch_of(&ids)
    }

    /// Held-out batch `j` (of `eval_batches`).
    pub fn eval_batch(&self, j: u64) -> Batch {
        let ids: Vec<u64> = (0..self.batch as u64)
            .map(|r| self.train + j * self.batch as u64 + r)
            .collect();
        self.batch_of(&ids)
    }

    fn batch_of(&self, ids: &[u64]) -> Batch {
        let (t, rows) = (self.seq, ids.len());
        let mut b = Batch {
            rows,
            len: t,
            inputs: Vec::with_capacity(rows * t),
            targets: Vec::with_capacity(rows * t),
            weights: Vec::with_capacity(rows * t),
        };
        for &k in ids {
            let start = k as usize * t;
            b.inputs
                .extend_from_slice(&self.data.tokens[start..start + t]);
            b.targets
                .extend_from_slice(&self.data.tokens[start + 1..start + t + 1]);
            match &self.data.mask {
                Some(m) => b
                    .weights
                    .extend(m[start + 1..start + t + 1].iter().map(|&x| x as u8 as f32)),
                None => b.weights.extend(std::iter::repeat_n(1.0, t)),
            }
        }
        b
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates on splitmix64), one per epoch.
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut state = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch.wrapping_mul(0xD1B5_4A32_D192_ED03))
        ^ 0x5851_F42D_4C95_7F2D;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seq: u32, batch: u32, eval: u32) -> TrainConfig {
        TrainConfig {
            sequence_length: seq,
            batch_size: batch,
            eval_every: u64::from(eval > 0),
            eval_batches: eval,
            ..TrainConfig::default()
        }
    }

    /// Sequences overlap by one token, targets are inputs shifted by one, the mask follows the
    /// targets, and the held-out sequences are the last ones.
    #[test]
    fn packing_and_holdout() {
        let data = TokenData {
            tokens: (0..41).collect(),
            mask: Some((0..41).map(|i| i % 3 != 0).collect()),
            vocab: 64,
        };
        let mut l = Loader::new(
            data,
            &TrainConfig {
                shuffle: false,
                ..cfg(4, 2, 1)
            },
        )
        .unwrap();
        assert_eq!((l.train_sequences(), l.eval_sequences()), (8, 2));
        let b = l.train_batch(0);
        assert_eq!(b.inputs, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(b.targets, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b.weights, vec![1., 1., 0., 1., 1., 0., 1., 1.]);
        let e = l.eval_batch(0);
        assert_eq!(e.inputs[..4], [32, 33, 34, 35]);
        assert_eq!(e.targets[4..], [37, 38, 39, 40]);
        // Epoch 2 starts over.
        assert_eq!(l.sequence_at(9), (1, 1));
    }

    #[test]
    fn order_is_a_seeded_permutation_per_epoch() {
        let data = TokenData {
            tokens: (0..1001).map(|i| i % 50).collect(),
            mask: None,
            vocab: 50,
        };
        let mut a = Loader::new(data.clone(), &cfg(10, 4, 0)).unwrap();
        let mut b = Loader::new(data.clone(), &cfg(10, 4, 0)).unwrap();
        let first: Vec<u64> = (0..100).map(|i| a.sequence_at(i).1).collect();
        let again: Vec<u64> = (0..100).map(|i| b.sequence_at(i).1).collect();
        assert_eq!(first, again);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let second: Vec<u64> = (100..200).map(|i| a.sequence_at(i).1).collect();
        assert_ne!(first, second);
        let mut c = Loader::new(
            data,
            &TrainConfig {
                seed: 1,
                ..cfg(10, 4, 0)
            },
        )
        .unwrap();
        assert_ne!(
            first,
            (0..100).map(|i| c.sequence_at(i).1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn too_little_data_is_refused() {
        let data = TokenData {
            tokens: (0..20).collect(),
            mask: None,
            vocab: 64,
        };
        let e = Loader::new(data, &cfg(4, 4, 1)).unwrap_err().to_string();
        assert!(
            e.contains("4 sequences") && e.contains("holds out 4"),
            "{e}"
        );
    }

    #[test]
    fn llmc_shard_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.bin");
        let mut bytes = vec![0u8; 1024];
        bytes[0..4].copy_from_slice(&20_240_801i32.to_le_bytes());
        bytes[4..8].copy_from_slice(&7i32.to_le_bytes());
        bytes[8..12].copy_from_slice(&3i32.to_le_bytes());
        for t in [5u32, 100_000, 7] {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let d = read_llmc_shard(&path, Some(3), 1000).unwrap();
        assert_eq!(d.tokens, vec![5, 0, 7]);
        assert!(read_llmc_shard(&path, Some(4), 1000).is_err());
    }
}
