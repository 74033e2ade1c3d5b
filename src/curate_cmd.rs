//! `phiforge filter` (quality signals and SQL rules over a corpus, kept and removed documents in
//! the input's own format) and `phiforge query` (SQL over a build's output shards).

use crate::corpus_args::CorpusArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use corpus::{
    Batch, BatchReader, Column, ColumnKind, Compression, Format, FormatWriter, StagedDir,
};
use curate::sql::{Filter, RowBatch, Values};
use curate::{ColumnType, SignalComputer, Signals, Value};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct FilterArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Output folder (written completely or not at all): kept/, removed/, decisions.jsonl,
    /// signals.parquet, report.json.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Published rules, run in this order: gopher (repetition, then quality), gopher_quality,
    /// gopher_repetition, c4, fineweb (datatrove 0.10's defaults; see docs/curation.md).
    #[arg(long, value_delimiter = ',')]
    preset: Vec<String>,
    /// A SQL condition a kept document satisfies, over the signal columns, id, bytes and the
    /// `--field`s (e.g. "words >= 50 AND symbol_to_word_ratio < 0.1 AND language = 'eng'");
    /// runs after presets.
    #[arg(long = "where")]
    where_sql: Option<String>,
    /// A field of the records that `--where` may read, as NAME:TYPE (TYPE: str, int or float),
    /// e.g. `--field lang:str --field score:float`; repeat for more. Missing or null: SQL NULL.
    #[arg(long = "field", value_name = "NAME:TYPE")]
    fields: Vec<curate::fields::Field>,
}

#[derive(Args)]
pub struct QueryArgs {
    /// A build's output folder (its mix's document shards if it has a mix, else the stage outputs
    /// of its manifest.json, with a `stage` column), or a Parquet or JSON-lines file.
    out: PathBuf,
    /// The query; the table is `samples`, e.g.
    /// "SELECT class, count(*), sum(tokens) FROM samples GROUP BY class".
    sql: String,
    /// Write the result to this .parquet or .csv file instead of printing it.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

/// The signal columns as Parquet columns of `signals.parquet`, after `id`, `keep`, `reason`.
fn signal_columns() -> Vec<(&'static str, ColumnKind)> {
    let mut cols = vec![
        ("id", ColumnKind::Utf8),
        ("keep", ColumnKind::Bool),
        ("reason", ColumnKind::Utf8),
        ("bytes", ColumnKind::I64),
    ];
    cols.extend(Signals::columns().iter().map(|(n, k)| {
        let kind = match k {
            ColumnType::Int => ColumnKind::I64,
            ColumnType::Float => ColumnKind::F64,
            ColumnType::Str => ColumnKind::Utf8,
        };
        (*n, kind)
    }));
    cols
}

fn signal_row(id: &str, reason: Option<&str>, bytes: usize, s: &Signals) -> Vec<Column> {
    let mut row = vec![
        Column::Str(id.to_string()),
        Column::Bool(reason.is_none()),
        reason.map_or(Column::Null, |r| Column::Str(r.to_string())),
        Column::I64(bytes as i64),
    ];
    row.extend((0..Signals::columns().len()).map(|i| match s.value_at(i) {
        Some(Value::Int(v)) => Column::I64(v),
        Some(Value::Float(v)) => Column::F64(v),
        Some(Value::Str(v)) => Column::Str(v.to_string()),
        None => Column::Null,
    }));
    row
}

/// Counts of a run, for report.json.
#[derive(Default)]
struct Counts {
    documents: u64,
    kept: u64,
    bytes: u64,
    text_bytes: u64,
    reasons: HashMap<String, u64>,
}

/// Signals, ids and text lengths of a batch's documents, with the declared fields' values, on
/// all cores (a JSON line is parsed once for its text and its fields).
fn signals_of(
    batch: &Batch,
    spec: &corpus::TextSpec,
    declared: &[curate::fields::Field],
) -> Result<(RowBatch, Vec<String>, Vec<usize>)> {
    let names: Vec<&str> = declared.iter().map(|f| f.name.as_str()).collect();
    let fields = batch.fields(&names)?;
    type Parsed = (String, usize, Signals, Vec<serde_json::Value>);
    let docs: Vec<corpus::Result<Parsed>> = (0..batch.len())
        .into_par_iter()
        .map_init(SignalComputer::new, |computer, i| -> corpus::Result<_> {
            let (doc, values) = batch.doc_with(i, spec, &fields)?;
            Ok((
                doc.id.into_owned(),
                doc.text.len(),
                computer.compute(&doc.text),
                values,
            ))
        })
        .collect();
    let mut ids = Vec::with_capacity(docs.len());
    let mut lens = Vec::with_capacity(docs.len());
    let mut signals = Vec::with_capacity(docs.len());
    let mut json = vec![Vec::with_capacity(docs.len()); names.len()];
    for d in docs {
        let (id, len, s, values) = d?;
        ids.push(id);
        lens.push(len);
        signals.push(s);
        for (column, v) in json.iter_mut().zip(values) {
            column.push(v);
        }
    }
    let mut rows = RowBatch::new(signals)
        .with_field("id", Values::Str(ids.iter().cloned().map(Some).collect()))?
        .with_field(
            "bytes",
            Values::Int(lens.iter().map(|&n| Some(n as i64)).collect()),
        )?;
    for (f, json) in declared.iter().zip(json) {
        let values = f.values(json).map_err(|bad| {
            anyhow::anyhow!(
                "{}: line {}: {}",
                batch.path().display(),
                batch.line(bad.record),
                bad.reason
            )
        })?;
        rows = rows.with_field(&f.name, values)?;
    }
    Ok((rows, ids, lens))
}

pub fn filter(a: FilterArgs) -> Result<()> {
    if a.preset.is_empty() && a.where_sql.is_none() {
        bail!("give --preset, --where or both");
    }
    if let Some(f) = a
        .fields
        .iter()
        .find(|f| f.name == "id" || f.name == "bytes")
    {
        bail!(
            "--field {f}: `{}` is the document's own column already",
            f.name
        );
    }
    let declared: Vec<(&str, ColumnType)> =
        a.fields.iter().map(|f| (f.name.as_str(), f.kind)).collect();
    let filter = Filter::of(&declared, &a.preset, a.where_sql.as_deref()).map_err(|e| {
        let hint = matches!(e, curate::Error::UnknownColumn { .. })
            .then_some(" (a field of the records needs `--field NAME:TYPE`)")
            .unwrap_or_default();
        anyhow::anyhow!("{e}{hint}")
    })?;
    let inputs = a.corpus.start()?;
    let names = dedup::audit::output_names(&inputs)?;
    let spec = a.corpus.spec();
    let started = Instant::now();
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let staged = StagedDir::create(&a.out)?;
    let mut decisions = corpus::open_writer(&staged.path("decisions.jsonl")?, Compression::None)?;
    let mut table =
        corpus::TableWriter::create(&staged.path("signals.parquet")?, &signal_columns())?;
    let mut counts = Counts::default();
    let mut per_input = Vec::new();
    for (path, name) in inputs.iter().zip(&names) {
        bar.set_prefix(path.display().to_string());
        let format = Format::detect(path)?;
        let reader = BatchReader::open(path, &spec, true)?;
        let mut kept = FormatWriter::create(&staged.path(Path::new("kept").join(name))?, format)?;
        let mut removed =
            FormatWriter::create(&staged.path(Path::new("removed").join(name))?, format)?;
        let (mut docs, mut kept_here) = (0u64, 0u64);
        // The reader decompresses and splits ahead while the pool computes signals.
        reader.read_ahead(|batch| -> Result<()> {
            let (rows, ids, lens) = signals_of(&batch, &spec, &a.fields)?;
            let decided = filter.decide(&rows)?;
            let (mut keep_rows, mut drop_rows, mut notes) = (Vec::new(), Vec::new(), Vec::new());
            for (i, reason) in decided.iter().enumerate() {
                let line = json!({"id": ids[i], "keep": reason.is_none(), "reason": reason});
                decisions.write_all(format!("{line}\n").as_bytes())?;
                table.push(signal_row(&ids[i], *reason, lens[i], &rows.signals()[i]))?;
                match reason {
                    None => keep_rows.push(i),
                    Some(r) => {
                        drop_rows.push(i);
                        notes.push(json!({"filter": "quality", "reason": r}).to_string());
                        *counts.reasons.entry(r.to_string()).or_default() += 1;
                    }
                }
            }
            kept.write(&batch, &keep_rows, None)?;
            removed.write(&batch, &drop_rows, Some(&notes))?;
            docs += batch.len() as u64;
            kept_here += keep_rows.len() as u64;
            counts.bytes += batch.bytes();
            counts.text_bytes += lens.iter().map(|&n| n as u64).sum::<u64>();
            counts.documents += batch.len() as u64;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} docs, {:.1} MB, {:.1} MB/s",
                counts.documents,
                counts.bytes as f64 / 1e6,
                counts.bytes as f64 / 1e6 / secs
            ));
            bar.tick();
            Ok(())
        })?;
        kept.finish()?;
        removed.finish()?;
        counts.kept += kept_here;
        per_input.push(
            json!({"path": path.display().to_string(), "documents": docs, "kept": kept_here}),
        );
    }
    decisions.finish()?;
    table.finish()?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let threads = rayon::current_num_threads();
    // Reasons in rule order, then counts.
    let reasons: serde_json::Map<String, serde_json::Value> = filter
        .rules()
        .filter_map(|(r, _)| counts.reasons.get(r).map(|n| (r.to_string(), json!(n))))
        .collect();
    let mb_per_s = counts.text_bytes as f64 / 1e6 / seconds.max(1e-9);
    let report = json!({
        "presets": a.preset,
        "where": a.where_sql,
        "fields": a.fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        "rules": filter.rules().map(|(r, c)| json!({"reason": r, "condition": c})).collect::<Vec<_>>(),
        "inputs": per_input,
        "documents": counts.documents,
        "kept": counts.kept,
        "removed": counts.documents - counts.kept,
        "reasons": reasons,
        "input_bytes": counts.bytes,
        "text_bytes": counts.text_bytes,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "threads": threads,
        "mb_per_s": (mb_per_s * 100.0).round() / 100.0,
        "mb_per_s_per_core": (mb_per_s / threads as f64 * 100.0).round() / 100.0,
    });
    corpus::atomic::write(
        &staged.path("report.json")?,
        format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
    )?;
    staged.commit(Some("report.json"))?;
    println!(
        "{} documents, {:.1} MB of text in {:.1} s ({:.1} MB/s): {} kept, {} removed{}",
        counts.documents,
        counts.text_bytes as f64 / 1e6,
        seconds,
        mb_per_s,
        counts.kept,
        counts.documents - counts.kept,
        if reasons.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
            format!(" ({})", list.join(", "))
        }
    );
    println!("report: {}", a.out.join("report.json").display());
    Ok(())
}

/// The files of `out` that make the `samples` table, each with the stage it came from (for stage
/// outputs).
fn sample_files(out: &Path) -> Result<Vec<(PathBuf, Option<String>)>> {
    if out.is_file() {
        return Ok(vec![(out.to_path_buf(), None)]);
    }
    let docs = out.join("mix").join("documents");
    if docs.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&docs)
            .with_context(|| format!("reading {}", docs.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        if !files.is_empty() {
            return Ok(files.into_iter().map(|p| (p, None)).collect());
        }
    }
    let manifest = out.join("manifest.json");
    if !manifest.is_file() {
        bail!(
            "{} is neither a build's output folder (no mix/documents/ and no manifest.json) nor a file",
            out.display()
        );
    }
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let m: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let mut files = Vec::new();
    for stage in m["stages"].as_array().into_iter().flatten() {
        let name = stage["name"].as_str().unwrap_or_default().to_string();
        for f in stage["files"].as_array().into_iter().flatten() {
            if f["rows"].as_u64() == Some(0) {
                continue;
            }
            if let Some(p) = f["path"].as_str() {
                files.push((out.join(p), Some(name.clone())));
            }
        }
    }
    Ok(files)
}

/// A build's sample files as one table's records, a file at a time (its stage as a column, its
/// stored signals spread into columns).
struct SampleFiles(Vec<(PathBuf, Option<String>)>);

impl curate::scan::Records for SampleFiles {
    fn visit(
        &self,
        each: &mut dyn FnMut(&serde_json::Map<String, serde_json::Value>),
    ) -> std::result::Result<(), String> {
        for (path, stage) in &self.0 {
            for (_, mut r) in corpus::read_records(path).map_err(|e| e.to_string())? {
                if let Some(s) = stage {
                    r.insert("stage".into(), json!(s));
                }
                spread_signals(&mut r);
                each(&r);
            }
        }
        Ok(())
    }
}

pub fn query(a: QueryArgs) -> Result<()> {
    // Read twice, a file at a time: the columns and their types, then what the query reads.
    let files = std::sync::Arc::new(SampleFiles(sample_files(&a.out)?));
    let result = curate::scan::query_records("samples", files, &a.sql)?;
    let Some(path) = a.output else {
        println!("{result}");
        return Ok(());
    };
    let name = path.to_string_lossy().to_lowercase();
    if name.ends_with(".csv") {
        let mut bytes = Vec::new();
        result.write_csv(&mut bytes)?;
        corpus::atomic::write(&path, &bytes)?;
    } else if name.ends_with(".parquet") {
        let columns = result.columns()?;
        let kinds: Vec<(&str, ColumnKind)> = columns
            .iter()
            .map(|(n, v)| {
                let k = match v {
                    Values::Str(_) => ColumnKind::Utf8,
                    Values::Int(_) => ColumnKind::I64,
                    Values::Float(_) => ColumnKind::F64,
                    Values::Bool(_) => ColumnKind::Bool,
                };
                (n.as_str(), k)
            })
            .collect();
        let mut w = corpus::TableWriter::create(&path, &kinds)?;
        for row in 0..result.height() {
            w.push(columns.iter().map(|(_, v)| cell(v, row)).collect())?;
        }
        w.finish()?;
    } else {
        bail!("--output {}: give a .parquet or .csv file", path.display());
    }
    println!("{} rows written to {}", result.height(), path.display());
    Ok(())
}

/// A `signals` stage's stored signals (a JSON object, as text in shards) as columns of their
/// own, so a query reads `words` or `language` as it reads `class`.
fn spread_signals(r: &mut serde_json::Map<String, serde_json::Value>) {
    let stored = match r.get("signals") {
        Some(serde_json::Value::String(s)) => serde_json::from_str(s).ok(),
        Some(serde_json::Value::Object(o)) => Some(serde_json::Value::Object(o.clone())),
        _ => None,
    };
    if let Some(serde_json::Value::Object(signals)) = stored {
        r.remove("signals");
        for (k, v) in signals {
            r.entry(k).or_insert(v);
        }
    }
}

fn cell(v: &Values, row: usize) -> Column {
    let c = match v {
        Values::Str(v) => v.get(row).cloned().flatten().map(Column::Str),
        Values::Int(v) => v.get(row).copied().flatten().map(Column::I64),
        Values::Float(v) => v.get(row).copied().flatten().map(Column::F64),
        Values::Bool(v) => v.get(row).copied().flatten().map(Column::Bool),
    };
    c.unwrap_or(Column::Null)
}
