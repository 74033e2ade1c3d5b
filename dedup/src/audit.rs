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
    Batch, BatchReader, Column, ColumnKind, FormatWriter, StagedDir, TableWriter, TextSpec,
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
    let names = match opts.mode {
        Mode::Decontaminate { .. } => output_names(inputs)?,
        Mode::Audit => Vec::new(),
    };
    let staged = StagedDir::create(out)?;
    let mut samples =
        corpus::open_writer(&staged.path("samples.jsonl")?, corpus::Compression::None)?;
    let mut hits = TableWriter::create(&staged.path("hits.parquet")?, HIT_COLUMNS)?;

    let mut totals = Totals::default();
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
    let mut item_hits: HashMap<u32, (u64, String)> = HashMap::new();
    let mut skipped: Vec<SkippedRecord> = Vec::new();
    let mut examples: Vec<FlaggedSample> = Vec::new();
    let mut input_totals = Vec::new();

    for (k, path) in inputs.iter().enumerate() {
        progress.file(path);
        let format = corpus::Format::detect(path)?;
        let keep_all = matches!(opts.mode, Mode::Decontaminate { .. });
        let reader = BatchReader::open(path, &opts.text, keep_all)?;
        let mut writers = match opts.mode {
            Mode::Decontaminate { .. } => Some((
                FormatWriter::create(&staged.path(Path::new("kept").join(&names[k]))?, format)?,
                FormatWriter::create(&staged.path(Path::new("removed").join(&names[k]))?, format)?,
                None::<FormatWriter>,
            )),
            Mode::Audit => None,
        };
        let mut file_totals = InputTotals {
            path: path.display().to_string(),
            ..Default::default()
        };
        let result: Result<()> = std::thread::scope(|scope| {
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
                let mut kept = Vec::new();
                let mut removed = Vec::new();
                let mut notes = Vec::new();
                let mut rejected = Vec::new();
                for (i, (o, text_len)) in outcomes.into_iter().enumerate() {
                    totals.text_bytes += text_len as u64;
                    match o {
                        Outcome::Bad(e) if opts.skip_bad_lines && e.is_record_error() => {
                            totals.skipped_records += 1;
                            if skipped.len() < MAX_SKIPPED_LISTED {
                                skipped.push(SkippedRecord {
                                    file: path.display().to_string(),
                                    line: batch.line(i),
                                    reason: e.to_string(),
                                });
                            }
                            rejected.push(i);
                        }
                        Outcome::Bad(e) => return Err(e.into()),
                        Outcome::Clean => {
                            totals.clean += 1;
                            kept.push(i);
                        }
                        Outcome::Flagged(s, item) => {
                            let b = &mut per_bench[index.items[item as usize].benchmark as usize];
                            b.samples_flagged += 1;
                            match s.verdict {
                                Verdict::Contaminated => {
                                    totals.contaminated += 1;
                                    b.samples_contaminated += 1;
                                }
                                _ => {
                                    totals.partial += 1;
                                    b.samples_partial += 1;
                                }
                            }
                            let e = item_hits.entry(item).or_insert((0, s.id.clone()));
                            e.0 += 1;
                            samples.write_all(to_json("samples.jsonl", &*s)?.as_bytes())?;
                            samples.write_all(b"\n")?;
                            hits.push(hit_row(&s))?;
                            let remove = match opts.mode {
                                Mode::Decontaminate { remove_partial } => {
                                    s.verdict == Verdict::Contaminated || remove_partial
                                }
                                Mode::Audit => false,
                            };
                            if remove {
                                notes.push(to_json(
                                    "removed note",
                                    &serde_json::json!({
                                        "verdict": s.verdict, "rule": s.rule, "benchmark": s.benchmark,
                                        "item_id": s.item_id, "ratio": s.ratio, "ngram": s.ngram,
                                    }),
                                )?);
                                removed.push(i);
                            } else {
                                kept.push(i);
                            }
                            if examples.len() < EXAMPLES_KEPT {
                                examples.push(*s);
                            }
                        }
                    }
                }
                let docs = batch.len() as u64;
                file_totals.documents += docs - rejected.len() as u64;
                file_totals.bytes += batch.bytes();
                totals.blank_lines += batch.blank_lines();
                if let Some((kw, rw, rej)) = writers.as_mut() {
                    kw.write(&batch, &kept, None)?;
                    rw.write(&batch, &removed, Some(&notes))?;
                    if !rejected.is_empty() {
                        if rej.is_none() {
                            *rej = Some(FormatWriter::create(
                                &staged.path(Path::new("rejected").join(&names[k]))?,
                                format,
                            )?);
                        }
                        if let Some(w) = rej {
                            w.write(&batch, &rejected, None)?;
                        }
                    }
                }
                progress.advance(docs, batch.bytes());
            }
            Ok(())
        });
        result?;
        if let Some((kw, rw, rej)) = writers {
            kw.finish()?;
            rw.finish()?;
            if let Some(w) = rej {
                w.finish()?;
            }
        }
        totals.documents += file_totals.documents;
        totals.bytes += file_totals.bytes;
        input_totals.push(file_totals);
    }
    samples.finish()?;
    hits.finish()?;

    for (&item, _) in &item_hits {
        per_bench[index.items[item as usize].benchmark as usize].items_hit += 1;
    }
    totals.seconds = started.elapsed().as_secs_f64();
    totals.mb_per_s = if totals.seconds > 0.0 {
        totals.bytes as f64 / 1e6 / totals.seconds
    } else {
        0.0
    };
    let mut most_hit: Vec<(u32, u64, String)> =
        item_hits.into_iter().map(|(i, (n, s))| (i, n, s)).collect();
    most_hit.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    most_hit.truncate(20);

    let mut unch = corpus::open_writer(
        &staged.path("uncheckable.jsonl")?,
        corpus::Compression::None,
    )?;
    for u in &index.uncheckable {
        unch.write_all(to_json("uncheckable.jsonl", u)?.as_bytes())?;
        unch.write_all(b"\n")?;
    }
    unch.finish()?;

    let report = AuditReport::new(
        index,
        benchmark_files,
        opts,
        NORMALIZATION_VERSION,
        input_totals,
        totals,
        per_bench,
        skipped,
        most_hit
            .into_iter()
            .map(|(i, n, s)| report::ItemHits {
                benchmark: index.benchmarks[index.items[i as usize].benchmark as usize].clone(),
                item_id: index.items[i as usize].id.clone(),
                samples: n,
                first_sample: s,
            })
            .collect(),
        examples,
    );
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
