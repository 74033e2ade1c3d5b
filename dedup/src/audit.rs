//! Audits and decontamination runs over whole corpora.
//!
//! [`run`] streams every input file in batches (a reader thread decompresses ahead), classifies
//! the documents of a batch on all cores, and hands the results, in input order, to the outputs:
//! the flagged-sample list (`samples.jsonl`, `hits.parquet`) and, when decontaminating, the kept
//! and removed documents in the input's own format. Memory is bounded by the benchmark index and a
//! few batches, not by the corpus. Everything is written into a staging folder that replaces the
//! output folder's entries only when the run completes.

use crate::index::{BenchIndex, PART_NAMES};
use crate::normalize::{normalize, NORMALIZATION_VERSION};
use crate::report::{self, AuditReport, BenchmarkTotals, InputTotals, SkippedRecord, Totals};
use crate::scan::{Finding, Match, Scanner, Verdict};
use crate::{Error, Result};
use corpus::{
    Batch, BatchReader, Column, ColumnKind, Compression, Format, FormatWriter, LineSink, StagedDir,
    TableWriter, TextSpec,
};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Reports progress to whoever shows it (a progress bar in the CLI).
pub trait Progress: Sync {
    /// A pass over the inputs starts (runs of several passes: near-duplicates).
    fn stage(&self, _stage: &str) {}
    /// A new input file starts.
    fn file(&self, _path: &Path) {}
    /// `docs` more documents and `bytes` more input bytes are done.
    fn advance(&self, _docs: u64, _bytes: u64) {}
}

/// Shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a run does besides auditing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Report only.
    Audit,
    /// Also write kept and removed documents; `remove_partial` removes partial matches too.
    Decontaminate { remove_partial: bool },
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub text: TextSpec,
    /// Turn malformed records into counted, reported skips instead of stopping.
    pub skip_bad_lines: bool,
    pub mode: Mode,
    /// The allow-list file, recorded in the report.
    pub allow_list: Option<(PathBuf, String)>,
}

/// One flagged sample, as written to `samples.jsonl`: its strongest item's match, and every item
/// it touches.
#[derive(Debug, Clone, Serialize)]
pub struct FlaggedSample {
    pub id: String,
    pub source: String,
    pub line: u64,
    pub verdict: Verdict,
    #[serde(flatten)]
    pub best: ItemHit,
    /// The longest matched run of the strongest item, normalised.
    pub ngram: String,
    /// The sample's original text over that run (cut at 2,000 bytes).
    pub text: String,
    /// Every item the sample touches above the info threshold, the strongest first.
    pub items: Vec<ItemHit>,
}

/// One item a flagged sample touches; a row of `hits.parquet`.
#[derive(Debug, Clone, Serialize)]
pub struct ItemHit {
    pub benchmark: String,
    pub item_id: String,
    /// This item's verdict: contaminated, edited or partial.
    #[serde(rename = "item_verdict")]
    pub verdict: Verdict,
    pub rule: &'static str,
    pub ratio: f64,
    /// The edit rule's alignment similarity (0 where no alignment was made).
    pub similarity: f64,
    /// The item part that gave the ratio (or the alignment): full, question or answer.
    pub part: &'static str,
    /// Distinct 7-grams shared with the item.
    pub shared_ngrams: u32,
    /// The matched run's character span `[start, end)` in the sample's text.
    pub span: [u64; 2],
    /// The matched run (normalised) and the sample's text over it, for `hits.parquet`.
    #[serde(skip)]
    pub ngram: String,
    #[serde(skip)]
    pub text: String,
}

const TEXT_EXCERPT_BYTES: usize = 2000;
const MAX_SKIPPED_LISTED: usize = 1000;
const EXAMPLES_KEPT: usize = 10;
const MOST_HIT_LISTED: usize = 20;

fn hit(index: &BenchIndex, m: &Match, text: &str) -> ItemHit {
    let item = &index.items[m.item as usize];
    let (bs, be) = m.span;
    let start = text[..bs].chars().count() as u64;
    let len = text[bs..be].chars().count() as u64;
    let mut cut = be.min(bs + TEXT_EXCERPT_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let round = |x: f64| (x * 1e6).round() / 1e6;
    ItemHit {
        benchmark: index.benchmarks[item.benchmark as usize].clone(),
        item_id: item.id.clone(),
        verdict: m.verdict,
        rule: m.rule.as_str(),
        ratio: round(m.ratio),
        similarity: round(m.similarity),
        part: PART_NAMES[m.part],
        shared_ngrams: m.shared,
        span: [start, start + len],
        ngram: normalize(&text[bs..be]),
        text: text[bs..cut].to_string(),
    }
}

fn flagged(
    index: &BenchIndex,
    f: &Finding,
    id: &str,
    source: &Path,
    line: u64,
    text: &str,
) -> FlaggedSample {
    let items: Vec<ItemHit> = f.matches.iter().map(|m| hit(index, m, text)).collect();
    let best = items[0].clone();
    FlaggedSample {
        id: id.to_string(),
        source: source.display().to_string(),
        line,
        verdict: f.verdict,
        ngram: best.ngram.clone(),
        text: best.text.clone(),
        best,
        items,
    }
}

/// The result for one record of a batch.
enum Outcome {
    Clean,
    /// With the items touched.
    Flagged(Box<FlaggedSample>, Vec<u32>),
    Bad(corpus::Error),
}

/// Classifies every record of `batch` on all cores; also returns each document's text length.
fn classify(index: &BenchIndex, batch: &Batch, spec: &TextSpec) -> Vec<(Outcome, usize)> {
    (0..batch.len())
        .into_par_iter()
        .map_init(
            || Scanner::new(index),
            |scanner, i| match batch.doc(i, spec) {
                Err(e) => (Outcome::Bad(e), 0),
                Ok(doc) => {
                    let outcome = match scanner.scan(&doc.text) {
                        None => Outcome::Clean,
                        Some(f) => Outcome::Flagged(
                            Box::new(flagged(
                                index,
                                &f,
                                &doc.id,
                                batch.path(),
                                doc.line,
                                &doc.text,
                            )),
                            f.matches.iter().map(|m| m.item).collect(),
                        ),
                    };
                    (outcome, doc.text.len())
                }
            },
        )
        .collect()
}

const HIT_COLUMNS: &[(&str, ColumnKind)] = &[
    ("id", ColumnKind::Utf8),
    ("source", ColumnKind::Utf8),
    ("line", ColumnKind::U64),
    ("verdict", ColumnKind::Utf8),
    ("rank", ColumnKind::U64),
    ("item_verdict", ColumnKind::Utf8),
    ("rule", ColumnKind::Utf8),
    ("benchmark", ColumnKind::Utf8),
    ("item_id", ColumnKind::Utf8),
    ("ratio", ColumnKind::F64),
    ("similarity", ColumnKind::F64),
    ("part", ColumnKind::Utf8),
    ("shared_ngrams", ColumnKind::U64),
    ("ngram", ColumnKind::Utf8),
    ("span_start", ColumnKind::U64),
    ("span_end", ColumnKind::U64),
    ("text", ColumnKind::Utf8),
];

/// A row of `hits.parquet`: the sample, then the `rank`-th item it touches (0: the strongest).
fn hit_row(s: &FlaggedSample, rank: usize, h: &ItemHit) -> Vec<Column> {
    vec![
        Column::Str(s.id.clone()),
        Column::Str(s.source.clone()),
        Column::U64(s.line),
        Column::Str(s.verdict.as_str().into()),
        Column::U64(rank as u64),
        Column::Str(h.verdict.as_str().into()),
        Column::Str(h.rule.into()),
        Column::Str(h.benchmark.clone()),
        Column::Str(h.item_id.clone()),
        Column::F64(h.ratio),
        Column::F64(h.similarity),
        Column::Str(h.part.into()),
        Column::U64(h.shared_ngrams as u64),
        Column::Str(h.ngram.clone()),
        Column::U64(h.span[0]),
        Column::U64(h.span[1]),
        Column::Str(h.text.clone()),
    ]
}

fn to_json<T: Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Serialize {
        what: what.into(),
        message: e.to_string(),
    })
}

/// Output names of kept and removed files: the input's file name, which must be unique.
pub fn output_names(inputs: &[PathBuf]) -> Result<Vec<String>> {
    let mut seen: HashMap<String, &PathBuf> = HashMap::new();
    let mut names = Vec::new();
    for p in inputs {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into());
        if let Some(first) = seen.insert(name.clone(), p) {
            return Err(Error::OutputClash {
                first: first.clone(),
                second: p.clone(),
                name,
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// Where the records of one batch go.
#[derive(Default)]
struct Routed {
    kept: Vec<usize>,
    removed: Vec<usize>,
    /// The reason of each removed record, as a JSON object.
    notes: Vec<String>,
    /// Malformed records set aside under `--skip-bad-lines`.
    rejected: Vec<usize>,
}

/// What the run has found so far, and the flagged-sample outputs it writes as it goes.
struct Tally<'a> {
    index: &'a BenchIndex,
    totals: Totals,
    per_bench: Vec<BenchmarkTotals>,
    /// Per item: samples whose best match it was, and the first of them.
    item_hits: HashMap<u32, (u64, String)>,
    skipped: Vec<SkippedRecord>,
    examples: Vec<FlaggedSample>,
    samples: LineSink,
    hits: TableWriter,
}

impl<'a> Tally<'a> {
    fn new(index: &'a BenchIndex, staged: &StagedDir) -> Result<Self> {
        let mut per_bench: Vec<BenchmarkTotals> = index
            .items_per_benchmark()
            .into_iter()
            .map(|items| BenchmarkTotals {
                items,
                ..Default::default()
            })
            .collect();
        for u in &index.uncheckable {
            if let Some(b) = index.benchmarks.iter().position(|b| b == &u.benchmark) {
                per_bench[b].uncheckable += 1;
            }
        }
        Ok(Tally {
            index,
            totals: Totals::default(),
            per_bench,
            item_hits: HashMap::new(),
            skipped: Vec::new(),
            examples: Vec::new(),
            samples: corpus::open_writer(&staged.path("samples.jsonl")?, Compression::None)?,
            hits: TableWriter::create(&staged.path("hits.parquet")?, HIT_COLUMNS)?,
        })
    }

    /// Counts and writes the outcomes of one batch, and says where each record goes.
    fn batch(
        &mut self,
        batch: &Batch,
        outcomes: Vec<(Outcome, usize)>,
        opts: &RunOptions,
    ) -> Result<Routed> {
        let mut routed = Routed::default();
        for (i, (outcome, text_len)) in outcomes.into_iter().enumerate() {
            self.totals.text_bytes += text_len as u64;
            match outcome {
                Outcome::Bad(e) if opts.skip_bad_lines && e.is_record_error() => {
                    self.totals.skipped_records += 1;
                    if self.skipped.len() < MAX_SKIPPED_LISTED {
                        self.skipped.push(SkippedRecord {
                            file: batch.path().display().to_string(),
                            line: batch.line(i),
                            reason: e.to_string(),
                        });
                    }
                    routed.rejected.push(i);
                }
                Outcome::Bad(e) => return Err(e.into()),
                Outcome::Clean => {
                    self.totals.clean += 1;
                    routed.kept.push(i);
                }
                Outcome::Flagged(s, items) => {
                    self.flagged(&s, &items)?;
                    let remove = match opts.mode {
                        Mode::Decontaminate { remove_partial } => {
                            s.verdict != Verdict::Partial || remove_partial
                        }
                        Mode::Audit => false,
                    };
                    if remove {
                        let b = &s.best;
                        let note = serde_json::json!({
                            "verdict": s.verdict, "rule": b.rule, "benchmark": b.benchmark,
                            "item_id": b.item_id, "ratio": b.ratio, "similarity": b.similarity,
                            "ngram": s.ngram, "items": s.items.len(),
                        });
                        routed.notes.push(to_json("removed note", &note)?);
                        routed.removed.push(i);
                    } else {
                        routed.kept.push(i);
                    }
                    if self.examples.len() < EXAMPLES_KEPT {
                        self.examples.push(*s);
                    }
                }
            }
        }
        self.totals.blank_lines += batch.blank_lines();
        Ok(routed)
    }

    /// Counts a flagged sample: in the totals by its verdict, in each benchmark it touches by its
    /// strongest item there, and for each item; then writes it.
    fn flagged(&mut self, s: &FlaggedSample, items: &[u32]) -> Result<()> {
        match s.verdict {
            Verdict::Contaminated => self.totals.contaminated += 1,
            Verdict::Edited => self.totals.edited += 1,
            _ => self.totals.partial += 1,
        }
        let mut counted = Vec::new();
        for (&item, h) in items.iter().zip(&s.items) {
            let bench = self.index.items[item as usize].benchmark as usize;
            if !counted.contains(&bench) {
                counted.push(bench);
                let b = &mut self.per_bench[bench];
                b.samples_flagged += 1;
                match h.verdict {
                    Verdict::Contaminated => b.samples_contaminated += 1,
                    Verdict::Edited => b.samples_edited += 1,
                    _ => b.samples_partial += 1,
                }
            }
            self.item_hits.entry(item).or_insert((0, s.id.clone())).0 += 1;
        }
        self.samples
            .write_all(to_json("samples.jsonl", s)?.as_bytes())?;
        self.samples.write_all(b"\n")?;
        for (rank, h) in s.items.iter().enumerate() {
            self.hits.push(hit_row(s, rank, h))?;
        }
        Ok(())
    }

    /// Closes the sample outputs and assembles the report.
    fn finish(
        mut self,
        files: &[crate::benchmark::SourceFile],
        opts: &RunOptions,
        inputs: Vec<InputTotals>,
        seconds: f64,
    ) -> Result<AuditReport> {
        self.samples.finish()?;
        self.hits.finish()?;
        let index = self.index;
        for &item in self.item_hits.keys() {
            self.per_bench[index.items[item as usize].benchmark as usize].items_hit += 1;
        }
        self.totals.seconds = seconds;
        self.totals.mb_per_s = if seconds > 0.0 {
            self.totals.bytes as f64 / 1e6 / seconds
        } else {
            0.0
        };
        let mut most_hit: Vec<(u32, u64, String)> = self
            .item_hits
            .into_iter()
            .map(|(i, (n, s))| (i, n, s))
            .collect();
        most_hit.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        most_hit.truncate(MOST_HIT_LISTED);
        let most_hit = most_hit
            .into_iter()
            .map(|(i, n, s)| {
                let info = &index.items[i as usize];
                report::ItemHits {
                    benchmark: index.benchmarks[info.benchmark as usize].clone(),
                    item_id: info.id.clone(),
                    samples: n,
                    first_sample: s,
                }
            })
            .collect();
        Ok(AuditReport::new(
            index,
            files,
            opts,
            NORMALIZATION_VERSION,
            inputs,
            self.totals,
            self.per_bench,
            self.skipped,
            most_hit,
            self.examples,
        ))
    }
}

/// The kept, removed and (when needed) rejected outputs of one input file.
struct Filtered {
    kept: FormatWriter,
    removed: FormatWriter,
    rejected: Option<FormatWriter>,
    rejected_path: PathBuf,
    format: Format,
}

impl Filtered {
    fn create(staged: &StagedDir, name: &str, format: Format) -> Result<Self> {
        Ok(Filtered {
            kept: FormatWriter::create(&staged.path(Path::new("kept").join(name))?, format)?,
            removed: FormatWriter::create(&staged.path(Path::new("removed").join(name))?, format)?,
            rejected: None,
            rejected_path: staged.path(Path::new("rejected").join(name))?,
            format,
        })
    }

    fn write(&mut self, batch: &Batch, routed: &Routed) -> Result<()> {
        self.kept.write(batch, &routed.kept, None)?;
        self.removed
            .write(batch, &routed.removed, Some(&routed.notes))?;
        if !routed.rejected.is_empty() {
            if self.rejected.is_none() {
                self.rejected = Some(FormatWriter::create(&self.rejected_path, self.format)?);
            }
            if let Some(w) = &mut self.rejected {
                w.write(batch, &routed.rejected, None)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.kept.finish()?;
        self.removed.finish()?;
        if let Some(w) = self.rejected {
            w.finish()?;
        }
        Ok(())
    }
}

/// Audits (and, in [`Mode::Decontaminate`], filters) `inputs` against `index`, writing the
/// outputs into `out`. Returns the report that was written as `audit.json`.
pub fn run(
    index: &BenchIndex,
    benchmark_files: &[crate::benchmark::SourceFile],
    inputs: &[PathBuf],
    out: &Path,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<AuditReport> {
    let started = Instant::now();
    let decontaminate = matches!(opts.mode, Mode::Decontaminate { .. });
    let names = if decontaminate {
        output_names(inputs)?
    } else {
        Vec::new()
    };
    let staged = StagedDir::create(out)?;
    let mut tally = Tally::new(index, &staged)?;
    let mut input_totals = Vec::new();

    for (k, path) in inputs.iter().enumerate() {
        progress.file(path);
        let format = Format::detect(path)?;
        let reader = BatchReader::open(path, &opts.text, decontaminate)?;
        let mut filtered = match decontaminate {
            true => Some(Filtered::create(&staged, &names[k], format)?),
            false => None,
        };
        let mut file = InputTotals {
            path: path.display().to_string(),
            ..Default::default()
        };
        // The reader decompresses and splits ahead while the pool classifies.
        reader.read_ahead(|batch| -> Result<()> {
            let outcomes = classify(index, &batch, &opts.text);
            let routed = tally.batch(&batch, outcomes, opts)?;
            if let Some(f) = &mut filtered {
                f.write(&batch, &routed)?;
            }
            file.documents += (batch.len() - routed.rejected.len()) as u64;
            file.bytes += batch.bytes();
            progress.advance(batch.len() as u64, batch.bytes());
            Ok(())
        })?;
        if let Some(f) = filtered {
            f.finish()?;
        }
        tally.totals.documents += file.documents;
        tally.totals.bytes += file.bytes;
        input_totals.push(file);
    }

    let mut unch = corpus::open_writer(&staged.path("uncheckable.jsonl")?, Compression::None)?;
    for u in &index.uncheckable {
        unch.write_all(to_json("uncheckable.jsonl", u)?.as_bytes())?;
        unch.write_all(b"\n")?;
    }
    unch.finish()?;

    let report = tally.finish(
        benchmark_files,
        opts,
        input_totals,
        started.elapsed().as_secs_f64(),
    )?;
    std::fs::write(staged.path("report.md")?, report::markdown(&report))
        .map_err(|e| Error::io(out.join("report.md"), e))?;
    let json = serde_json::to_string_pretty(&report.json()).map_err(|e| Error::Serialize {
        what: "audit.json".into(),
        message: e.to_string(),
    })?;
    std::fs::write(staged.path("audit.json")?, json + "\n")
        .map_err(|e| Error::io(out.join("audit.json"), e))?;
    staged.commit(Some("audit.json"))?;
    Ok(report)
}
