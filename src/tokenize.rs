//! `phiforge tokenize`: documents to token shards (docs/token-shards.md), and optionally to
//! Megatron-LM's indexed dataset.
//!
//! Each document's text is encoded with special tokens written in it taken as text (training data
//! can contain `<|endoftext|>` as text), then the end-of-text token is appended. Documents are
//! never split: a shard is closed before the document that would take it past `--shard-tokens`
//! (a document longer than that gets a shard of its own). With `--threads` above 1 the documents
//! of each read batch are encoded in parallel and written in input order, so the shards are the
//! same bytes whatever the thread count.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mixes::megatron::MegatronWriter;
use mixes::tokshard::ShardWriter;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokens::Codec;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Documents: JSON lines (plain, .gz, .zst), Parquet, text files, folders or globs.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Folder for the shards (`shard-00000.tok`, ...) and `tokenize.json` (what was written).
    #[arg(long)]
    out: PathBuf,
    /// A Hugging Face tokenizer.json instead of Phi-4's tokenizer (cl100k_base and Phi-4's
    /// special tokens, built in).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The most tokens in a shard (a document longer than this gets a shard of its own).
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: u64,
    /// Also write Megatron-LM's indexed dataset, `PREFIX.bin` and `PREFIX.idx`.
    #[arg(long)]
    megatron: Option<PathBuf>,
    /// Threads that encode (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Where time went, for the benchmark (benches/tokenize.sh): reading (decompressing and parsing
/// JSON or Parquet), encoding (tokenizing and filling shards) and writing shard files.
#[derive(Default)]
struct Times {
    read: Duration,
    encode: Duration,
    write: Duration,
}

/// The shards being filled and the files written so far.
struct Output {
    dir: PathBuf,
    vocab: u32,
    shard_tokens: u64,
    shard: ShardWriter,
    written: Vec<serde_json::Value>,
    megatron: Option<MegatronWriter>,
}

impl Output {
    fn push(&mut self, ids: &[u32], times: &mut Times) -> Result<()> {
        if self.shard.documents() > 0 && self.shard.tokens() + ids.len() as u64 > self.shard_tokens
        {
            self.flush(times)?;
        }
        self.shard
            .push(ids, None)
            .map_err(|e| anyhow::anyhow!("shard {}: {e}", self.written.len()))?;
        if let Some(m) = &mut self.megatron {
            m.push(ids)?;
        }
        Ok(())
    }

    /// Writes the shard being filled, if it holds anything.
    fn flush(&mut self, times: &mut Times) -> Result<()> {
        if self.shard.documents() == 0 {
            return Ok(());
        }
        let t = Instant::now();
        let shard = std::mem::replace(&mut self.shard, ShardWriter::new(self.vocab, false));
        let name = format!("shard-{:05}.tok", self.written.len());
        let (tokens, documents) = (shard.tokens(), shard.documents());
        let w = shard.write(&self.dir.join(&name))?;
        self.written.push(serde_json::json!({
            "file": name, "tokens": tokens, "documents": documents,
            "bytes": w.bytes, "checksum": w.checksum(),
        }));
        times.write += t.elapsed();
        Ok(())
    }
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    if a.shard_tokens == 0 {
        bail!("--shard-tokens must be at least 1");
    }
    let started = Instant::now();
    let codec: Box<dyn Codec> = match &a.tokenizer {
        Some(path) => Box::new(tokens::HfTokenizer::from_file(path)?),
        None => Box::new(tokens::Phi4Tokenizer::new()?),
    };
    let eot = codec.end_of_text().with_context(|| {
        format!(
            "{}: no end-of-text token (<|endoftext|>, </s>, <|end_of_text|> or <eos>)",
            a.tokenizer.as_deref().unwrap_or(Path::new("")).display()
        )
    })?;
    // The encoder's tables are built before the clock of the encoding starts.
    codec.encode_ordinary("warm up")?;
    let load_s = started.elapsed().as_secs_f64();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()
        .context("starting the encoding threads")?;
    let threads = pool.current_num_threads();

    let inputs = corpus::expand_inputs(&a.input)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // A rerun must not leave the shards of an earlier, longer run beside its own.
    for entry in
        std::fs::read_dir(&a.out).with_context(|| format!("reading {}", a.out.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && name.ends_with(".tok") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    let vocab = codec.vocab_size();
    let mut out = Output {
        dir: a.out.clone(),
        vocab,
        shard_tokens: a.shard_tokens,
        shard: ShardWriter::new(vocab, false),
        written: Vec::new(),
        megatron: match &a.megatron {
            Some(prefix) => Some(MegatronWriter::create(prefix, vocab)?),
            None => None,
        },
    };

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} {bytes} of text, {bytes_per_sec} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let spec = corpus::TextSpec::default();
    let mut times = Times::default();
    let (mut docs, mut bytes, mut total_tokens) = (0u64, 0u64, 0u64);
    for path in &inputs {
        let mut reader = corpus::BatchReader::open(path, &spec, false)?;
        loop {
            let t = Instant::now();
            let Some(batch) = reader.next_batch()? else {
                break;
            };
            let texts = (0..batch.len())
                .map(|i| batch.doc(i, &spec).map(|d| (d.text, d.line)))
                .collect::<corpus::Result<Vec<_>>>()?;
            times.read += t.elapsed();

            let t = Instant::now();
            let encode = |(text, line): &(std::borrow::Cow<'_, str>, u64)| {
                let mut ids = codec
                    .encode_ordinary(text)
                    .with_context(|| format!("{}:{line}", path.display()))?;
                ids.push(eot);
                Ok::<_, anyhow::Error>(ids)
            };
            let encoded: Vec<Result<Vec<u32>>> = if threads > 1 {
                pool.install(|| texts.par_iter().map(encode).collect())
            } else {
                texts.iter().map(encode).collect()
            };
            let write_before = times.write;
            for ((text, line), ids) in texts.iter().zip(encoded) {
                let ids = ids?;
                out.push(&ids, &mut times)
                    .with_context(|| format!("{}:{line}", path.display()))?;
                docs += 1;
                bytes += text.len() as u64;
                total_tokens += ids.len() as u64;
            }
            // Shard writes inside the loop are counted as writing, not encoding.
            times.encode += t.elapsed() - (times.write - write_before);
            bar.set_message(format!("{docs} documents, {total_tokens} tokens,"));
            bar.set_position(bytes);
        }
    }
    out.flush(&mut times)?;
    let megatron = match out.megatron.take() {
        Some(m) => {
            let t = Instant::now();
            let (bin, idx) = m.finish()?;
            times.write += t.elapsed();
            Some(serde_json::json!({"bin_bytes": bin.bytes, "idx_bytes": idx.bytes}))
        }
        None => None,
    };
    bar.finish_and_clear();

    let read_s = times.read.as_secs_f64();
    let seconds = (times.encode + times.write).as_secs_f64();
    let mb = bytes as f64 / 1e6;
    let summary = serde_json::json!({
        "tool": "phiforge tokenize",
        "tokenizer": a.tokenizer.as_ref().map_or("phi-4 (built in)".to_string(), |p| p.display().to_string()),
        "vocab": vocab, "eot": eot, "threads": threads,
        "docs": docs, "bytes": bytes, "tokens": total_tokens,
        "shards": out.written,
        "megatron": megatron,
        "seconds": round3(seconds), "encode_s": round3(times.encode.as_secs_f64()),
        "write_s": round3(times.write.as_secs_f64()),
        "mb_per_s": round3(mb / seconds),
        "mb_per_s_per_core": round3(mb / seconds / threads as f64),
        "read_json_s": round3(read_s),
        "seconds_with_json": round3(read_s + seconds),
        "mb_per_s_per_core_with_json": round3(mb / (read_s + seconds) / threads as f64),
        "tokens_per_s": (total_tokens as f64 / seconds).round(),
        "load_s": round3(load_s),
    });
    let text = serde_json::to_string_pretty(&summary)?;
    corpus::atomic::write(&a.out.join("tokenize.json"), text.as_bytes())?;
    println!("{summary}");
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
