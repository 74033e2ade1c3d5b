//! What a build did (or, in a plan, will do): per stage, the work cached and run and why, drops by
//! reason; and the progress callbacks a front end shows while it waits.

use serde::Serialize;
use std::collections::BTreeMap;

/// Reports progress to whoever shows it.
pub trait Progress: Sync {
    fn stage(&self, _name: &str, _units: usize) {}
    fn unit_done(&self) {}
    fn stage_done(&self) {}
}

/// Shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Why a stage has work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    UpToDate,
    NewInputs,
    ChangedConfig,
    Forced,
    FirstRun,
    /// Upstream has work, so this stage's inputs are not known yet.
    AfterUpstream,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::UpToDate => "up to date",
            Reason::NewInputs => "new inputs",
            Reason::ChangedConfig => "changed configuration (its own or upstream)",
            Reason::Forced => "forced",
            Reason::FirstRun => "first run",
            Reason::AfterUpstream => "inputs known after upstream runs",
        }
    }
}

/// What one stage did (or, in a plan, will do). Sources count files; other stages count samples.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
    pub reason: Reason,
    /// Inputs whose result was reused: from units done before, or (for a unit that ran) from the
    /// same stage's earlier results for its slot.
    pub cached: u64,
    /// Inputs computed (in a plan: to compute; `None` when not known before upstream runs).
    pub run: Option<u64>,
    /// Units done before this build.
    pub units_cached: usize,
    /// Units run (in a plan: to run).
    pub units_run: usize,
    pub units_failed: usize,
    pub samples_in: u64,
    pub samples_out: u64,
    /// Dropped inputs by reason.
    pub dropped: BTreeMap<String, u64>,
    /// What a transform changed, by kind (PII replaced, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub changed: BTreeMap<String, u64>,
    pub seconds: f64,
}

impl StageReport {
    pub fn new(name: &str, kind: &str, fingerprint: &str) -> StageReport {
        StageReport {
            name: name.to_string(),
            kind: kind.to_string(),
            fingerprint: fingerprint.to_string(),
            reason: Reason::UpToDate,
            cached: 0,
            run: Some(0),
            units_cached: 0,
            units_run: 0,
            units_failed: 0,
            samples_in: 0,
            samples_out: 0,
            dropped: BTreeMap::new(),
            changed: BTreeMap::new(),
            seconds: 0.0,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub recipe: String,
    /// The recipe's fingerprint (every stage's, and the output settings), as in the manifest.
    pub recipe_fingerprint: String,
    pub executor: String,
    pub stages: Vec<StageReport>,
    /// Output files written (relative to the output folder); unchanged ones are not rewritten.
    pub outputs: Vec<String>,
    pub outputs_unchanged: usize,
    /// The mix, when the recipe has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<crate::mix::MixSummary>,
    pub did_work: bool,
    pub seconds: f64,
}

impl RunReport {
    /// The readable summary of a build: a line per stage, then what was written.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.stages {
            let dropped: Vec<String> = s.dropped.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let changed: Vec<String> = s.changed.iter().map(|(k, v)| format!("{v} {k}")).collect();
            out.push_str(&format!(
                "{:<16} {:<14} {:>7} cached {:>7} run {:>4} units {:>8} in {:>8} out  {:.1}s{}{}\n",
                s.name,
                s.kind,
                s.cached,
                s.run.unwrap_or(0),
                s.units_run,
                s.samples_in,
                s.samples_out,
                s.seconds,
                if dropped.is_empty() {
                    String::new()
                } else {
                    format!("  dropped: {}", dropped.join(", "))
                },
                if changed.is_empty() {
                    String::new()
                } else {
                    format!("  changed: {}", changed.join(", "))
                },
            ));
        }
        if let Some(m) = &self.mix {
            let classes: Vec<String> = m
                .report
                .classes
                .iter()
                .map(|(c, a)| {
                    format!(
                        "{} {:.2}% ({:+.3} pp, {} epochs)",
                        c.as_str(),
                        a.share * 100.0,
                        a.error_pp,
                        a.epochs
                    )
                })
                .collect();
            out.push_str(&format!(
                "mix{}: {} tokens, {} documents, {} token shards; {}\n",
                if m.up_to_date { " (up to date)" } else { "" },
                m.tokens,
                m.documents,
                m.token_shards,
                classes.join(", ")
            ));
        }
        if self.did_work {
            out.push_str(&format!(
                "built in {:.1}s; wrote {} output files ({} unchanged)\n",
                self.seconds,
                self.outputs.len(),
                self.outputs_unchanged
            ));
        } else {
            out.push_str(&format!(
                "nothing to do: every stage is up to date ({} output files unchanged)\n",
                self.outputs_unchanged
            ));
        }
        out
    }

    /// The readable form of a plan: per stage, inputs cached and to run, and why.
    pub fn plan_summary(&self) -> String {
        let mut out = format!(
            "{:<16} {:<14} {:>8} {:>8}  why\n",
            "stage", "type", "cached", "to run"
        );
        for s in &self.stages {
            let run = s.run.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            out.push_str(&format!(
                "{:<16} {:<14} {:>8} {:>8}  {}\n",
                s.name,
                s.kind,
                s.cached,
                run,
                s.reason.describe()
            ));
        }
        if !self.did_work {
            out.push_str("nothing to do: every stage is up to date\n");
        }
        out
    }
}
