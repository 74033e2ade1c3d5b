//! The local engine's paged KV cache: every layer's keys and values live in one pool of blocks,
//! (blocks, KV heads, block size, head size), and each sequence reads and writes them through its
//! block table, the numbers of the blocks holding its positions `0..block`, `block..2 block`, ...
//! in order. A block can sit in several tables at once: requests that share a prompt prefix (a
//! flow's system prompt and transcript, one document under several instructions, `n` samples of
//! one prompt) read the same blocks, by reference, as vLLM's PagedAttention does; only blocks a
//! sequence writes are its own.
//!
//! [`BlockPool`] counts the references to each block (the sequences whose tables hold it, and the
//! [prefix cache](crate::prefix)) and frees it when the last goes. [`rows`], [`write`] and
//! [`gather`] (one copy of the blocks attended to) are the candle operations over the layout, for prompts and for the decode step's
//! fallbacks; the CUDA kernels (`kernels/decode.cu`) read the tables themselves.

use candle_core::{Result, Tensor};

/// Which blocks are free, and how many references each of the others has.
#[derive(Debug, Clone)]
pub struct BlockPool {
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl BlockPool {
    /// A pool of `n` free blocks, numbered `0..n`.
    pub fn new(n: usize) -> BlockPool {
        BlockPool {
            refs: vec![0; n],
            // Lowest numbers first out (popped from the back).
            free: (0..n as u32).rev().collect(),
        }
    }

    /// A free block, with one reference (the caller's); none when every block is in use.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more reference to block `b`, which is in use.
    pub fn share(&mut self, b: u32) {
        if let Some(r) = self.refs.get_mut(b as usize) {
            debug_assert!(*r > 0, "sharing free block {b}");
            *r += 1;
        }
    }

    /// Drops a reference to block `b`; the last one frees it.
    pub fn release(&mut self, b: u32) {
        if let Some(r) = self.refs.get_mut(b as usize) {
            debug_assert!(*r > 0, "releasing free block {b}");
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.free.push(b);
            }
        }
    }

    /// References to block `b` now.
    pub fn refs(&self, b: u32) -> u32 {
        self.refs.get(b as usize).copied().unwrap_or(0)
    }

    /// Blocks in the pool.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Blocks in use (referenced at least once).
    pub fn used(&self) -> usize {
        self.refs.len() - self.free.len()
    }
}

/// For each new token (its row of `tables`, its position), the rows of a pool viewed as
/// (blocks × KV heads × block, head size) that its key (or value) takes, one per KV head:
/// `tokens.len() × kvh` indices, token by token. `tables` is row-major, `width` blocks a row.
/// Fails for a position past its table or a block past the pool's `blocks`.
pub fn rows(
    tables: &[u32],
    width: usize,
    tokens: impl IntoIterator<Item = (usize, usize)>,
    kvh: usize,
    block: usize,
    blocks: usize,
) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for (row, p) in tokens {
        let b = match tables.get(row * width + p / block) {
            Some(&b) if p / block < width && (b as usize) < blocks => b as usize,
            _ => candle_core::bail!(
                "KV cache: position {p} of sequence {row} is not in its block table (or the \
                 block is past the pool of {blocks})"
            ),
        };
        for g in 0..kvh {
            out.push(((b * kvh + g) * block + p % block) as u32);
        }
    }
    Ok(out)
}

/// Writes `src` (n, KV heads, head size) into `pool` (blocks, KV heads, block, head size) at
/// `rows` (n × KV heads, u32 on the pool's device; see [`rows`]), in place.
pub fn write(pool: &Tensor, rows: &Tensor, src: &Tensor) -> Result<()> {
    let (blocks, kvh, block, hd) = pool.dims4()?;
    let n = rows.dim(0)?;
    let at = rows.reshape((n, 1))?.broadcast_as((n, hd))?.contiguous()?;
    // A reshape of a contiguous tensor shares its storage: the scatter writes the pool.
    pool.reshape((blocks * kvh * block, hd))?
        .scatter_set(&at, &src.reshape((n, hd))?, 0)
}

/// `b` sequences' positions gathered from `pool` into one contiguous tensor (b, KV heads, width ×
/// block, head size), in one copy: `ids` (u32, from [`gather_ids`]) names each (sequence, KV
/// head, block)'s rows of the pool.
pub fn gather(pool: &Tensor, ids: &Tensor, b: usize) -> Result<Tensor> {
    let (blocks, kvh, block, hd) = pool.dims4()?;
    let width = ids.dim(0)? / (b * kvh).max(1);
    // Viewed as (blocks × KV heads, block × head size): a (block, KV head) is one row.
    pool.reshape((blocks * kvh, block * hd))?
        .index_select(ids, 0)?
        .reshape((b, kvh, width * block, hd))
}

/// What [`gather`] takes for the first `width` blocks of each of `tables`' rows (`stride` blocks
/// a row, `kvh` KV heads): the pool row of every (sequence, KV head, block), in that order.
pub fn gather_ids(tables: &[u32], stride: usize, width: usize, kvh: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for t in tables.chunks(stride.max(1)) {
        let t = &t[..width.min(t.len())];
        for g in 0..kvh as u32 {
            out.extend(t.iter().map(|&b| b * kvh as u32 + g));
        }
    }
    out
}

/// Block tables of one `width` each, row-major (what the kernels and [`rows`] take): each table
/// padded with block 0, an entry never read (positions past a sequence's own are masked or
/// never reached), since the pool's blocks are all valid.
pub fn padded(tables: &[Vec<u32>], width: usize) -> Vec<u32> {
    tables
        .iter()
        .flat_map(|t| t.iter().copied().chain(std::iter::repeat(0)).take(width))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn blocks_are_freed_with_their_last_reference() {
        let mut p = BlockPool::new(3);
        let (a, b) = (p.alloc().unwrap(), p.alloc().unwrap());
        assert_eq!((a, b, p.used()), (0, 1, 2));
        p.share(a);
        p.release(a);
        assert_eq!(p.refs(a), 1, "still held once");
        p.release(a);
        assert_eq!((p.refs(a), p.used()), (0, 1));
        assert_eq!(p.alloc(), Some(0), "the freed block comes back first");
        assert_eq!(p.alloc(), Some(2));
        assert_eq!(p.alloc(), None);
    }

    #[test]
    fn writes_land_where_gathers_read_them() {
        let dev = Device::Cpu;
        // 4 blocks of 2 positions, 2 KV heads, head size 3.
        let pool = Tensor::zeros((4, 2, 2, 3), candle_core::DType::F32, &dev).unwrap();
        // Sequence 0's table is blocks [3, 1], sequence 1's [1, 0]: block 1 is shared.
        let tables = [3u32, 1, 1, 0];
        let tokens = [(0, 0), (0, 3), (1, 2)];
        let at = rows(&tables, 2, tokens, 2, 2, 4).unwrap();
        // (token, head): block 3 offset 0, block 1 offset 1, block 0 offset 0.
        assert_eq!(at, [12, 14, 5, 7, 0, 2]);
        let src: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let src = Tensor::from_vec(src, (3, 2, 3), &dev).unwrap();
        write(&pool, &Tensor::new(at.as_slice(), &dev).unwrap(), &src).unwrap();
        let ids = Tensor::new(gather_ids(&tables, 2, 2, 2).as_slice(), &dev).unwrap();
        let seqs = gather(&pool, &ids, 2).unwrap();
        assert_eq!(seqs.dims(), [2, 2, 4, 3]);
        let head = |s: usize, g: usize| {
            seqs.get(s)
                .and_then(|t| t.get(g))
                .and_then(|t| t.to_vec2::<f32>())
                .unwrap()
        };
        // Sequence 0, head 1: position 0 is token 0's head 1 (3..6), position 3 token 1's (9..12).
        let s0h1 = head(0, 1);
        assert_eq!(s0h1[0], [3.0, 4.0, 5.0]);
        assert_eq!(s0h1[3], [9.0, 10.0, 11.0]);
        assert_eq!(s0h1[1], [0.0; 3]);
        // Sequence 1 reads the shared block 1 first: token 1 at its position 1.
        let s1h0 = head(1, 0);
        assert_eq!(s1h0[1], [6.0, 7.0, 8.0]);
        assert_eq!(s1h0[2], [12.0, 13.0, 14.0], "token 2 in block 0");
        assert!(
            rows(&tables, 2, [(0, 4)], 2, 2, 4).is_err(),
            "past the table"
        );
        assert!(
            rows(&[9, 9], 2, [(0, 0)], 2, 2, 4).is_err(),
            "past the pool"
        );
    }
}
