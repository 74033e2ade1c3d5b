//! `phiforge neardup`: near-duplicate removal (MinHash, LSH, exact Jaccard), kept and removed
//! documents in the input's own format.

use crate::corpus_args::CorpusArgs;
use anyhow::Result;
use clap::Args;
use dedup::neardup::{self, Progress, RunOptions, Settings};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Args)]
pub struct NeardupArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Output folder (written completely or not at all): kept/, removed/, clusters.jsonl,
    /// report.json.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Words (normalised tokens) per shingle.
    #[arg(long, default_value_t = Settings::default().shingle)]
    shingle: usize,
    /// LSH bands (FineWeb: 14).
    #[arg(long, default_value_t = Settings::default().bands)]
    bands: usize,
    /// Hash functions per band (FineWeb: 8).
    #[arg(long, default_value_t = Settings::default().rows)]
    rows: usize,
    /// Least exact Jaccard similarity of shingle sets for a candidate pair to be near-duplicates.
    #[arg(long, default_value_t = Settings::default().threshold)]
    threshold: f64,
    /// Treat every bucket collision as a near-duplicate, unchecked (as datatrove does).
    #[arg(long)]
    no_verify: bool,
    /// Seeds the hash functions.
    #[arg(long, default_value_t = Settings::default().seed)]
    seed: u64,
    /// Megabytes of records sorted in memory at once (more are sorted in runs on disk).
    #[arg(long, default_value_t = Settings::default().memory_mb)]
    memory_mb: usize,
}

/// A progress line: the pass, then documents, MB and MB/s of the reading and writing passes.
struct PassBar {
    bar: ProgressBar,
    stage: Mutex<(String, Instant)>,
    docs: AtomicU64,
    bytes: AtomicU64,
}

impl Progress for PassBar {
    fn stage(&self, stage: &str) {
        if let Ok(mut s) = self.stage.lock() {
            *s = (stage.to_string(), Instant::now());
        }
        self.docs.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.bar.set_prefix(stage.to_string());
        self.bar.set_message("");
    }
    fn file(&self, path: &Path) {
        if let Ok(s) = self.stage.lock() {
            self.bar.set_prefix(format!("{} {}", s.0, path.display()));
        }
    }
    fn advance(&self, docs: u64, bytes: u64) {
        let d = self.docs.fetch_add(docs, Ordering::Relaxed) + docs;
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let secs = match self.stage.lock() {
            Ok(s) => s.1.elapsed().as_secs_f64().max(1e-9),
            Err(_) => 1e-9,
        };
        self.bar.set_message(format!(
            "{d} docs, {:.1} MB, {:.1} MB/s",
            b as f64 / 1e6,
            b as f64 / 1e6 / secs
        ));
        self.bar.tick();
    }
}

pub fn neardup(a: NeardupArgs) -> Result<()> {
    let inputs = a.corpus.start()?;
    let opts = RunOptions {
        text: a.corpus.spec(),
        settings: Settings {
            shingle: a.shingle,
            bands: a.bands,
            rows: a.rows,
            threshold: a.threshold,
            verify: !a.no_verify,
            seed: a.seed,
            memory_mb: a.memory_mb,
        },
    };
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let progress = PassBar {
        bar,
        stage: Mutex::new((String::new(), Instant::now())),
        docs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    let report = neardup::run(&inputs, &a.out, &opts, &progress);
    progress.bar.finish_and_clear();
    let r = report?;
    let precision = match r.candidate_precision {
        Some(p) => format!(
            ", {:.1}% of them at Jaccard >= {}",
            p * 100.0,
            r.settings.threshold
        ),
        None => String::new(),
    };
    println!(
        "{} documents, {:.1} MB in {:.1} s ({:.1} MB/s): {} near-duplicates removed in {} clusters; {} candidate pairs{precision}{}",
        r.documents,
        r.text_bytes as f64 / 1e6,
        r.seconds,
        r.mb_per_s,
        r.removed,
        r.clusters,
        r.candidates,
        if r.settings.verify { "" } else { " (all joined: --no-verify)" },
    );
    println!("report: {}", a.out.join("report.json").display());
    Ok(())
}
