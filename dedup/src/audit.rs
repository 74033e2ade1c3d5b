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
use crate::scan::{Finding, Scanner, Verdict};
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

/// One flagged sample, as written to `samples.jsonl` and `hits.parquet`.
#[derive(Debug, Clone, Serialize)]
pub struct FlaggedSample {
    pub id: String,
    pub source: String,
    pub line: u64,
    pub verdict: Verdict,
    pub rule: &'static str,
    pub benchmark: String,
    pub item_id: String,
    pub ratio: f64,
    /// The item part that gave the ratio: full, question or answer.
    pub part: &'static str,
    /// Distinct 7-grams shared with the item.
    pub shared_ngrams: u32,
    /// The longest matched run, normalised.
    pub ngram: String,
    /// That run's character span `[start, end)` in the sample's text.
    pub span: [u64; 2],
    /// The sample's original text over the span (cut at 2,000 bytes).
    pub text: String,
}

const TEXT_EXCERPT_BYTES: usize = 2000;
const MAX_SKIPPED_LISTED: usize = 1000;
const EXAMPLES_KEPT: usize = 10;
const MOST_HIT_LISTED: usize = 20;

fn flagged(
    index: &BenchIndex,
    f: &Finding,
    id: &str,
    source: &Path,
    line: u64,
    text: &str,
) -> FlaggedSample {
    let item = &index.items[f.item as usize];
    let (bs, be) = f.span;
    let start = text[..bs].chars().count() as u64;
    let len = text[bs..be].chars().count() as u64;
    let mut cut = be.min(bs + TEXT_EXCERPT_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    FlaggedSample {
        id: id.to_string(),
        source: source.display().to_string(),
        line,
        verdict: f.verdict,
        rule: f.rule.as_str(),
        benchmark: index.benchmarks[item.benchmark as usize].clone(),
        item_id: item.id.clone(),
        ratio: (f.ratio * 1e6).round() / 1e6,
        part: PART_NAMES[f.part],
        shared_ngrams: f.shared,
        ngram: normalize(&text[bs..be]),
        span: [start, start + len],
        text: text[bs..cut].to_string(),
    }
}

/// The result for one record of a batch.
enum Outcome {
    Clean,
    Flagged(Box<FlaggedSample>, u32),
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
                            f.item,
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
    ("rule", ColumnKind::Utf8),
    ("benchmark", ColumnKind::Utf8),
    ("item_id", ColumnKind::Utf8),
    ("ratio", ColumnKind::F64),
    ("part", ColumnKind::Utf8),
    ("shared_ngrams", ColumnKind::U64),
    ("ngram", ColumnKind::Utf8),
    ("span_start", ColumnKind::U64),
    ("span_end", ColumnKind::U64),
    ("text", ColumnKind::Utf8),
];

fn hit_row(s: &FlaggedSample) -> Vec<Column> {
    vec![
        Column::Str(s.id.clone()),
        Column::Str(s.source.clone()),
        Column::U64(s.line),
        Column::Str(s.verdict.as_str().into()),
        Column::Str(s.rule.into()),
        Column::Str(s.benchmark.clone()),
        Column::Str(s.item_id.clone()),
        Column::F64(s.ratio),
        Column::Str(s.part.into()),
        Column::U64(s.shared_ngrams as u64),
        Column::Str(s.ngram.clone()),
        Column::U64(s.span[0]),
        Column::U64(s.span[1]),
        Column::Str(s.text.clone()),
    ]
}

fn to_json<T: Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Serialize {
        what: what.into(),
        message: e.to_string(),
    })
}

/// Output names of decontaminated files: the input's file name, which must be unique.
fn output_names(inputs: &[PathBuf]) -> Result<Vec<String>> {
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
                Outcome::Flagged(s, item) => {
                    self.flagged(&s, item)?;
                    let remove = match opts.mode {
                        Mode::Decontaminate { remove_partial } => {
                            s.verdict == Verdict::Contaminated || remove_partial
                        }
                        Mode::Audit => false,
                    };
                    if remove {
                        let note = serde_json::json!({
                            "verdict": s.verdict, "rule": s.rule, "benchmark": s.benchmark,
                            "item_id": s.item_id, "ratio": s.ratio, "ngram": s.ngram,
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

    fn flagged(&mut self, s: &FlaggedSample, item: u32) -> Result<()> {
        let b = &mut self.per_bench[self.index.items[item as usize].benchmark as usize];
        b.samples_flagged += 1;
        if s.verdict == Verdict::Contaminated {
            self.totals.contaminated += 1;
            b.samples_contaminated += 1;
        } else {
            self.totals.partial += 1;
            b.samples_partial += 1;
        }
        self.item_hits.entry(item).or_insert((0, s.id.clone())).0 += 1;
        self.samples
            .write_all(to_json("samples.jsonl", s)?.as_bytes())?;
        self.samples.write_all(b"\n")?;
        self.hits.push(hit_row(s))?;
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
        // A reader thread decompresses and splits ahead while the pool classifies.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<corpus::Result<Batch>>(2);
            scope.spawn(move || {
                for b in reader {
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            });
            for batch in rx {
                let batch = batch?;
                let outcomes = classify(index, &batch, &opts.text);
                let routed = tally.batch(&batch, outcomes, opts)?;
                if let Some(f) = &mut filtered {
                    f.write(&batch, &routed)?;
                }
                file.documents += (batch.len() - routed.rejected.len()) as u64;
                file.bytes += batch.bytes();
                progress.advance(batch.len() as u64, batch.bytes());
            }
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
