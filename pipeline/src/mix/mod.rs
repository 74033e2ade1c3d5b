//! The mix: after a build, the final stages' samples mixed at the recipe's weights (by tokens),
//! written as the trainer's token shards, Parquet document shards and Megatron-LM's indexed
//! dataset, with a manifest of every file (`OUT/mix/manifest.json`).
//!
//! The data flows in two passes, neither holding a class in memory:
//! 1. every final sample is tokenized (in parallel, in order; [`encode`]) and appended to its
//!    class's files on disk ([`spill`]), which counts each class's unique tokens;
//! 2. the plan (`mixes::plan`) sets each class's target from those counts and its policy, and the
//!    interleaving (`mixes::interleave`, largest deficit first, seeded epochs) walks the mix's
//!    order twice: once reading only token counts, which fixes each shard's size (a new shard
//!    every `mix.shard_tokens` tokens), then reading the documents back, streamed into the
//!    shards. Memory holds a shard's document index and mask bits, never its tokens.
//!
//! The mix is written into `OUT/mix.partial/` and renamed to `OUT/mix/` when complete, so a
//! killed mix leaves the previous one whole. Its fingerprint hashes the final samples' files, the
//! mix settings and the seed: a build whose mix would not change leaves it alone.

pub mod encode;
pub mod spill;

use crate::recipe::{MixConfig, Recipe};
use crate::report::Progress;
use crate::view::View;
use crate::{Error, Result};
use corpus::mixdoc::MixDocWriter;
use corpus::sample::MixClass;
use corpus::shard::Projection;
use encode::Encoder;
use mixes::interleave::Interleaver;
use mixes::manifest::{ClassCount, FileEntry, Manifest, TokenizerInfo, MANIFEST_VERSION};
use mixes::megatron::MegatronWriter;
use mixes::plan::{MixReport, MixSettings};
use mixes::tokshard::ShardWriter;
use rayon::prelude::*;
use serde::Serialize;
use spill::{SpillReader, SpillWriter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The mix's folder in the output folder.
pub const DIR: &str = "mix";

/// What a build's mix did.
#[derive(Debug, Clone, Serialize)]
pub struct MixSummary {
    /// The mix was already there for these inputs and settings.
    pub up_to_date: bool,
    pub tokens: u64,
    pub documents: u64,
    pub token_shards: usize,
    pub report: MixReport,
    pub seconds: f64,
}

impl MixSummary {
    fn of(m: &Manifest, up_to_date: bool, seconds: f64) -> MixSummary {
        MixSummary {
            up_to_date,
            tokens: m.token_shards.iter().map(|s| s.tokens).sum(),
            documents: m.token_shards.iter().map(|s| s.documents).sum(),
            token_shards: m.token_shards.len(),
            report: m.report.clone(),
            seconds,
        }
    }
}

/// The mix's fingerprint: the final samples' files, the mix settings, the seed and the version.
pub fn fingerprint(recipe: &Recipe, mix: &MixConfig, inputs: &[(String, Vec<View>)]) -> String {
    let views: Vec<(&str, Vec<String>)> = inputs
        .iter()
        .map(|(n, v)| (n.as_str(), v.iter().map(View::key).collect()))
        .collect();
    crate::stages::fingerprint(&serde_json::json!({
        "mix": mix, "seed": recipe.seed, "views": views,
        "version": env!("CARGO_PKG_VERSION"),
        "interleave": mixes::interleave::VERSION,
    }))
}

/// Whether the mix in `dir` is complete for fingerprint `fp` (its files there, of their sizes).
fn up_to_date(dir: &Path, fp: &str) -> Option<Manifest> {
    let m = Manifest::read(&dir.join(mixes::manifest::FILE_NAME)).ok()?;
    let files = m.token_shards.iter().chain(&m.document_shards);
    let whole = files
        .chain(&m.megatron)
        .all(|f| std::fs::metadata(dir.join(&f.path)).is_ok_and(|x| x.len() == f.bytes));
    (m.mix_fingerprint == fp && whole).then_some(m)
}

/// Mixes `inputs` (the final stages' views, by stage) into `root/mix`.
pub fn run(
    root: &Path,
    recipe: &Recipe,
    mix: &MixConfig,
    recipe_fp: &str,
    inputs: &[(String, Vec<View>)],
    progress: &dyn Progress,
) -> Result<MixSummary> {
    let started = Instant::now();
    let fp = fingerprint(recipe, mix, inputs);
    let out = root.join(DIR);
    if let Some(m) = up_to_date(&out, &fp) {
        return Ok(MixSummary::of(&m, true, 0.0));
    }
    let partial = root.join(format!("{DIR}.partial"));
    remove_dir(&partial)?;
    let mixed = mix_into(&partial, root, recipe, mix, recipe_fp, inputs, fp, progress);
    if mixed.is_err() {
        // Nothing of a failed mix is kept (the previous mix, if any, is untouched).
        let _ = remove_dir(&partial);
    }
    let manifest = mixed?;
    remove_dir(&out)?;
    std::fs::rename(&partial, &out).map_err(|e| Error::io(&out, e))?;
    Ok(MixSummary::of(
        &manifest,
        false,
        started.elapsed().as_secs_f64(),
    ))
}

/// Writes the whole mix into `partial`; returns its manifest.
#[allow(clippy::too_many_arguments)]
fn mix_into(
    partial: &Path,
    root: &Path,
    recipe: &Recipe,
    mix: &MixConfig,
    recipe_fp: &str,
    inputs: &[(String, Vec<View>)],
    fp: String,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let spill_dir = partial.join(".spill");
    std::fs::create_dir_all(&spill_dir).map_err(|e| Error::io(&spill_dir, e))?;
    let enc = Encoder::new(&mix.tokenizer, &recipe.dir)?;

    // Pass 1: tokenize every final sample into its class's spill files.
    let views: usize = inputs.iter().map(|(_, v)| v.len()).sum();
    progress.stage("mix (tokenize)", views);
    let mut spills: BTreeMap<MixClass, SpillWriter> = BTreeMap::new();
    let mut chats = false;
    for (stage, vs) in inputs {
        for v in vs {
            let mut reader = v.open(root, Projection::Full)?;
            while let Some(entries) = reader.next_entries()? {
                let samples: Vec<_> = entries.into_iter().filter_map(|e| e.sample).collect();
                let encoded: Vec<_> = samples
                    .par_iter()
                    .map(|s| {
                        enc.encode(&s.content).map_err(|e| {
                            Error::stage("mix", format!("stage `{stage}`, sample {}: {e}", s.id))
                        })
                    })
                    .collect::<Result<_>>()?;
                for (s, (ids, mask)) in samples.iter().zip(encoded) {
                    chats |= mask.is_some();
                    let w = match spills.entry(s.class) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(SpillWriter::create(&spill_dir, s.class.as_str())?)
                        }
                    };
                    w.push(s, &ids, mask.as_deref())?;
                }
            }
            progress.unit_done();
        }
    }
    progress.stage_done();
    let mut supply = BTreeMap::new();
    let mut docs = BTreeMap::new();
    for (class, w) in spills {
        supply.insert(class, w.tokens());
        docs.insert(class, w.documents);
        w.finish()?;
    }

    // The plan, before any mix file is written.
    let settings = MixSettings {
        weights: mix.weights.clone(),
        target_tokens: mix.target_tokens,
        policies: mix.policies.clone(),
    };
    let plan = mixes::plan::plan(&supply, &settings).map_err(|e| Error::stage("mix", e))?;
    // Each shard's counts first (its header comes before its tokens), from a walk of the same
    // order that reads only the documents' token counts.
    let mut counter = Counter::open(&spill_dir, &docs)?;
    let mut sizes = Vec::new();
    let (mut tokens, mut documents) = (0, 0);
    for pick in Interleaver::new(plan.clone(), &docs, recipe.seed, |c, k| {
        counter.tokens(c, k)
    }) {
        tokens += pick.tokens;
        documents += 1;
        if tokens >= mix.shard_tokens {
            sizes.push((tokens, documents));
            (tokens, documents) = (0, 0);
        }
    }
    if documents > 0 {
        sizes.push((tokens, documents));
    }
    counter.check()?;

    // Pass 2: the documents in the mix's order, streamed into the shards.
    progress.stage("mix (write)", sizes.len());
    let mut readers = BTreeMap::new();
    for (&c, &n) in &docs {
        readers.insert(c, SpillReader::open(&spill_dir, c.as_str(), n)?);
    }
    let mut counter = Counter::open(&spill_dir, &docs)?;
    let mut picks = Interleaver::new(plan, &docs, recipe.seed, |c, k| counter.tokens(c, k));
    let mut shards = Shards::new(partial, enc.vocab, chats, mix, sizes)?;
    for pick in picks.by_ref() {
        let Some(r) = readers.get_mut(&pick.class) else {
            continue;
        };
        let d = r.get(pick.doc)?;
        shards.push(&d, pick.epoch, progress)?;
    }
    let report = picks.report();
    drop(picks);
    counter.check()?;
    let (token_shards, document_shards, megatron) = shards.finish(progress)?;
    progress.stage_done();
    remove_dir(&spill_dir)?;

    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        phiforge_version: env!("CARGO_PKG_VERSION").into(),
        recipe: recipe.name.clone(),
        recipe_fingerprint: recipe_fp.into(),
        mix_fingerprint: fp,
        seed: recipe.seed,
        tokenizer: TokenizerInfo {
            name: enc.name.clone(),
            vocab: enc.vocab,
            eos: enc.eos,
        },
        loss_mask: chats,
        report,
        token_shards,
        document_shards,
        megatron,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::stage("mix", e))?;
    corpus::atomic::write(&partial.join(mixes::manifest::FILE_NAME), &json)?;
    corpus::atomic::write(&partial.join("report.txt"), summary(&manifest).as_bytes())?;
    Ok(manifest)
}

/// Per class, a reader of its documents' token counts for the interleaving, which cannot take an
/// error from its callback: the first one is kept for [`Counter::check`].
struct Counter {
    readers: BTreeMap<MixClass, SpillReader>,
    failed: Option<Error>,
}

impl Counter {
    fn open(dir: &Path, docs: &BTreeMap<MixClass, u64>) -> Result<Counter> {
        let mut readers = BTreeMap::new();
        for (&c, &n) in docs {
            readers.insert(c, SpillReader::open(dir, c.as_str(), n)?);
        }
        Ok(Counter {
            readers,
            failed: None,
        })
    }

    fn tokens(&mut self, c: MixClass, k: u64) -> u64 {
        match self.readers.get_mut(&c).map(|r| r.tokens_of(k)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.failed.get_or_insert(e);
                0
            }
            None => 0,
        }
    }

    fn check(self) -> Result<()> {
        self.failed.map_or(Ok(()), Err)
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dir, e)),
        _ => Ok(()),
    }
}

/// The shards being written: a token shard and its document shard at a time (each streamed), and
/// the Megatron files for the whole mix.
struct Shards<'a> {
    dir: &'a Path,
    vocab: u32,
    masked: bool,
    /// Each shard's tokens and documents, in order.
    sizes: Vec<(u64, u64)>,
    tokens: Option<ShardWriter>,
    docs: Option<MixDocWriter>,
    classes: BTreeMap<MixClass, ClassCount>,
    megatron: Option<MegatronWriter>,
    all: BTreeMap<MixClass, ClassCount>,
    token_entries: Vec<FileEntry>,
    doc_entries: Vec<FileEntry>,
}

impl<'a> Shards<'a> {
    fn new(
        dir: &'a Path,
        vocab: u32,
        masked: bool,
        mix: &MixConfig,
        sizes: Vec<(u64, u64)>,
    ) -> Result<Shards<'a>> {
        let megatron = if mix.megatron {
            let prefix = dir.join("megatron").join("mix");
            Some(MegatronWriter::create(&prefix, vocab).map_err(|e| Error::stage("mix", e))?)
        } else {
            None
        };
        Ok(Shards {
            dir,
            vocab,
            masked,
            sizes,
            tokens: None,
            docs: None,
            classes: BTreeMap::new(),
            megatron,
            all: BTreeMap::new(),
            token_entries: Vec::new(),
            doc_entries: Vec::new(),
        })
    }

    fn names(&self) -> (String, String) {
        let k = self.token_entries.len();
        (
            format!("tokens/shard-{k:05}.tok"),
            format!("documents/shard-{k:05}.parquet"),
        )
    }

    fn push(&mut self, d: &spill::SpillDoc, epoch: u32, progress: &dyn Progress) -> Result<()> {
        let class = d.sample.class;
        let n = d.ids.len() as u64;
        let mask = self.masked.then_some(d.mask.as_slice());
        if self.docs.is_none() {
            let k = self.token_entries.len();
            let &(tokens, documents) = self.sizes.get(k).ok_or_else(|| {
                Error::stage("mix", format!("shard {k} is past the {} planned", k))
            })?;
            let (tok_name, doc_name) = self.names();
            let path = self.dir.join(tok_name);
            let w = ShardWriter::streaming(&path, self.vocab, self.masked, tokens, documents)
                .map_err(|e| Error::stage("mix", e))?;
            self.tokens = Some(w);
            self.docs = Some(MixDocWriter::create(&self.dir.join(doc_name))?);
        }
        let (Some(tokens), Some(docs)) = (&mut self.tokens, &mut self.docs) else {
            return Err(Error::stage("mix", "no shard open"));
        };
        tokens
            .push(&d.ids, mask)
            .map_err(|e| Error::stage("mix", format!("sample {}: {e}", d.sample.id)))?;
        docs.push(&d.sample, n, epoch)?;
        if let Some(m) = &mut self.megatron {
            m.push(&d.ids).map_err(|e| Error::stage("mix", e))?;
        }
        for counts in [&mut self.classes, &mut self.all] {
            let c = counts.entry(class).or_default();
            c.documents += 1;
            c.tokens += n;
        }
        let k = self.token_entries.len();
        if self.sizes.get(k).is_some_and(|s| tokens.documents() == s.1) {
            self.close()?;
            progress.unit_done();
        }
        Ok(())
    }

    /// Completes the shard being filled (if it has documents).
    fn close(&mut self) -> Result<()> {
        let (Some(w), Some(docs)) = (self.tokens.take(), self.docs.take()) else {
            return Ok(());
        };
        let (tok_name, _) = self.names();
        let (tokens, documents) = (w.tokens(), w.documents());
        let written = w.finish().map_err(|e| Error::stage("mix", e))?;
        let classes = std::mem::take(&mut self.classes);
        let info = docs.finish()?;
        let rel = |p: &Path| {
            p.strip_prefix(self.dir)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        };
        self.doc_entries.push(FileEntry {
            path: rel(&info.path),
            bytes: info.bytes,
            tokens,
            documents,
            classes: classes.clone(),
            checksum: info.checksum,
        });
        self.token_entries.push(FileEntry {
            path: tok_name,
            bytes: written.bytes,
            tokens,
            documents,
            classes,
            checksum: written.checksum(),
        });
        Ok(())
    }

    fn finish(
        mut self,
        progress: &dyn Progress,
    ) -> Result<(Vec<FileEntry>, Vec<FileEntry>, Vec<FileEntry>)> {
        if self.docs.is_some() {
            self.close()?;
            progress.unit_done();
        }
        if self.token_entries.len() != self.sizes.len() {
            return Err(Error::stage(
                "mix",
                format!(
                    "{} shards written where {} were planned",
                    self.token_entries.len(),
                    self.sizes.len()
                ),
            ));
        }
        let mut megatron = Vec::new();
        if let Some(m) = self.megatron.take() {
            let (bin, idx) = m.finish().map_err(|e| Error::stage("mix", e))?;
            let tokens = self.all.values().map(|c| c.tokens).sum();
            let documents = self.all.values().map(|c| c.documents).sum();
            for (ext, w) in [("bin", bin), ("idx", idx)] {
                megatron.push(FileEntry {
                    path: format!("megatron/mix.{ext}"),
                    bytes: w.bytes,
                    tokens,
                    documents,
                    classes: self.all.clone(),
                    checksum: w.checksum(),
                });
            }
        }
        Ok((self.token_entries, self.doc_entries, megatron))
    }
}

/// The mix's readable summary (`OUT/mix/report.txt`).
pub fn summary(m: &Manifest) -> String {
    let r = &m.report;
    let mut s = format!(
        "mix: {} tokens in {} token shards (target {}{}), tokenizer {}, seed {}\n",
        r.achieved_tokens,
        m.token_shards.len(),
        r.plan.target_tokens,
        r.plan
            .renormalised_from
            .map(|t| format!(", renormalised from {t}"))
            .unwrap_or_default(),
        m.tokenizer.name,
        m.seed,
    );
    s.push_str(&format!(
        "{:<12} {:>8} {:>9} {:>9} {:>7} {:>12} {:>10} {:>14}\n",
        "class", "target", "achieved", "error pp", "epochs", "tokens", "documents", "unique tokens"
    ));
    for (c, a) in &r.classes {
        let unique = r.plan.classes.get(c).map_or(0, |p| p.unique_tokens);
        s.push_str(&format!(
            "{:<12} {:>7.2}% {:>8.2}% {:>+9.3} {:>7} {:>12} {:>10} {:>14}\n",
            c.as_str(),
            a.target_share * 100.0,
            a.share * 100.0,
            a.error_pp,
            a.epochs,
            a.tokens,
            a.documents,
            unique,
        ));
    }
    for (k, e) in m.token_shards.iter().enumerate() {
        s.push_str(&format!(
            "shard {k}: {} tokens, {} documents ({})\n",
            e.tokens, e.documents, e.path
        ));
    }
    s
}

/// The manifest of the mix in `root`.
pub fn manifest_path(root: &Path) -> PathBuf {
    root.join(DIR).join(mixes::manifest::FILE_NAME)
}

#[cfg(test)]
mod tests;
