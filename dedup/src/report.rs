//! The audit report: `audit.json` (machine-readable, with every setting and input hash needed to
//! reproduce the run) and `report.md` (for people).

use crate::audit::{FlaggedSample, Mode, RunOptions};
use crate::benchmark::SourceFile;
use crate::index::{BenchIndex, IndexStats, Settings};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Version of the `audit.json` layout.
/// 2: the edit rule's `edited` counts, every item a sample touches.
pub const REPORT_FORMAT: u32 = 2;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub documents: u64,
    /// Input bytes read (uncompressed; whole JSON lines or rows).
    pub bytes: u64,
    /// Bytes of document text checked.
    pub text_bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub clean: u64,
    pub partial: u64,
    /// Edited copies of items that Phi-4's rule does not call contaminated (the edit rule).
    pub edited: u64,
    pub contaminated: u64,
    /// Malformed records skipped under `--skip-bad-lines`.
    pub skipped_records: u64,
    /// Whitespace-only lines passed over.
    pub blank_lines: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InputTotals {
    pub path: String,
    pub documents: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchmarkTotals {
    pub items: usize,
    pub uncheckable: usize,
    /// Distinct items touched by at least one flagged sample.
    pub items_hit: usize,
    /// Samples touching this benchmark's items, each counted once, by its strongest item here.
    pub samples_flagged: u64,
    pub samples_contaminated: u64,
    pub samples_edited: u64,
    pub samples_partial: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedRecord {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemHits {
    pub benchmark: String,
    pub item_id: String,
    pub samples: u64,
    pub first_sample: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSettings {
    #[serde(flatten)]
    pub rule: Settings,
    pub normalization: String,
    pub text_field: String,
    pub id_field: String,
    pub skip_bad_lines: bool,
    pub mode: &'static str,
    pub remove_partial: bool,
    pub allow_list: Option<serde_json::Value>,
    pub benchmark_files: Vec<SourceFile>,
}

/// Everything an audit found; `audit.json` is its serialisation.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub format: u32,
    pub phiforge_version: &'static str,
    pub settings: ReportSettings,
    pub index: IndexStats,
    pub inputs: Vec<InputTotals>,
    pub totals: Totals,
    pub benchmarks: BTreeMap<String, BenchmarkTotals>,
    pub uncheckable_by_reason: BTreeMap<String, u64>,
    pub most_hit_items: Vec<ItemHits>,
    pub skipped: Vec<SkippedRecord>,
    #[serde(skip)]
    pub examples: Vec<FlaggedSample>,
}

impl AuditReport {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: &BenchIndex,
        files: &[SourceFile],
        opts: &RunOptions,
        normalization: &str,
        inputs: Vec<InputTotals>,
        totals: Totals,
        per_bench: Vec<BenchmarkTotals>,
        skipped: Vec<SkippedRecord>,
        most_hit_items: Vec<ItemHits>,
        examples: Vec<FlaggedSample>,
    ) -> AuditReport {
        let mut uncheckable_by_reason = BTreeMap::new();
        for u in &index.uncheckable {
            let kind = u.reason.split(':').next().unwrap_or("").to_string();
            *uncheckable_by_reason.entry(kind).or_insert(0) += 1;
        }
        let (mode, remove_partial) = match opts.mode {
            Mode::Audit => ("audit", false),
            Mode::Decontaminate { remove_partial } => ("decontaminate", remove_partial),
        };
        AuditReport {
            format: REPORT_FORMAT,
            phiforge_version: env!("CARGO_PKG_VERSION"),
            settings: ReportSettings {
                rule: index.settings.clone(),
                normalization: normalization.into(),
                text_field: opts.text.text_field.clone(),
                id_field: opts.text.id_field.clone(),
                skip_bad_lines: opts.skip_bad_lines,
                mode,
                remove_partial,
                allow_list: opts.allow_list.as_ref().map(
                    |(p, h)| serde_json::json!({"path": p.display().to_string(), "sha256": h}),
                ),
                benchmark_files: files.to_vec(),
            },
            index: index.stats.clone(),
            inputs,
            totals,
            benchmarks: index.benchmarks.iter().cloned().zip(per_bench).collect(),
            uncheckable_by_reason,
            most_hit_items,
            skipped,
            examples,
        }
    }

    /// The `audit.json` value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "0%".into()
    } else {
        format!("{:.3}%", 100.0 * n as f64 / d as f64)
    }
}

fn cell(s: &str, max: usize) -> String {
    let mut s: String = s
        .chars()
        .map(|c| if c == '\n' || c == '|' { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        s = s.chars().take(max).collect::<String>() + "…";
    }
    s
}

/// The human summary, `report.md`.
pub fn markdown(r: &AuditReport) -> String {
    let t = &r.totals;
    let s = &r.settings;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Decontamination {}\n",
        if s.mode == "audit" { "audit" } else { "run" }
    );
    let _ = writeln!(
        m,
        "{} documents ({:.1} MB) in {:.1} s ({:.1} MB/s): **{} contaminated** ({}), **{} edited** ({}), **{} partial** ({}), {} clean.",
        t.documents,
        t.bytes as f64 / 1e6,
        t.seconds,
        t.mb_per_s,
        t.contaminated,
        pct(t.contaminated, t.documents),
        t.edited,
        pct(t.edited, t.documents),
        t.partial,
        pct(t.partial, t.documents),
        t.clean
    );
    if t.skipped_records > 0 {
        let _ = writeln!(
            m,
            "\n{} malformed records were skipped (listed below).",
            t.skipped_records
        );
    }
    let _ = writeln!(
        m,
        "\nRule: any shared {}-gram → contaminated; else best {}-gram overlap ratio ≥ {} → contaminated, > {} → partial. Normalisation `{}`; n-grams in ≥ {} items are boilerplate.",
        s.rule.long_n, s.rule.short_n, s.rule.contamination_threshold, s.rule.info_threshold, s.normalization, s.rule.allow_min_items
    );
    if s.rule.edit_rule {
        let _ = writeln!(
            m,
            "Edit rule: an item sharing ≥ {} {}-grams, not contaminated, whose words align with the sample at similarity ≥ {} (items of ≥ {} words) → edited.",
            s.rule.edit_min_shared, s.rule.short_n, s.rule.edit_threshold, s.rule.edit_min_tokens
        );
    }
    let _ = writeln!(m);
    let _ = writeln!(m, "## Per benchmark\n");
    let _ = writeln!(m, "| benchmark | items | uncheckable | items hit | samples contaminated | samples edited | samples partial | flagged rate |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, b) in &r.benchmarks {
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            b.items,
            b.uncheckable,
            b.items_hit,
            pct(b.items_hit as u64, b.items as u64),
            b.samples_contaminated,
            b.samples_edited,
            b.samples_partial,
            pct(b.samples_flagged, t.documents)
        );
    }
    if !r.most_hit_items.is_empty() {
        let _ = writeln!(m, "\n## Most-hit items\n");
        let _ = writeln!(m, "| benchmark | item | samples | first sample |");
        let _ = writeln!(m, "|---|---|---:|---|");
        for h in &r.most_hit_items {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                h.benchmark,
                h.item_id,
                h.samples,
                cell(&h.first_sample, 60)
            );
        }
    }
    if !r.examples.is_empty() {
        let _ = writeln!(m, "\n## Examples\n");
        let _ = writeln!(
            m,
            "| sample | verdict | rule | item | ratio | similarity | items | matched text |"
        );
        let _ = writeln!(m, "|---|---|---|---|---:|---:|---:|---|");
        for e in &r.examples {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} |",
                cell(&e.id, 50),
                e.verdict.as_str(),
                e.best.rule,
                e.best.item_id,
                e.best.ratio,
                e.best.similarity,
                e.items.len(),
                cell(&e.text, 160)
            );
        }
    }
    if !r.uncheckable_by_reason.is_empty() {
        let _ = writeln!(m, "\n## Items that cannot be checked\n");
        for (reason, n) in &r.uncheckable_by_reason {
            let _ = writeln!(m, "- {reason}: {n}");
        }
        let _ = writeln!(m, "\nEach is listed in `uncheckable.jsonl`.");
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(m, "\n## Skipped records\n");
        for k in r.skipped.iter().take(50) {
            let _ = writeln!(m, "- {}", cell(&k.reason, 200));
        }
        if t.skipped_records > 50 {
            let _ = writeln!(m, "- … {} more (see `audit.json`)", t.skipped_records - 50);
        }
    }
    let _ = writeln!(m, "\n## Benchmark files\n");
    for f in &s.benchmark_files {
        let _ = writeln!(
            m,
            "- {}: {} items, sha256 `{}`",
            f.source, f.items, f.sha256
        );
    }
    m
}
