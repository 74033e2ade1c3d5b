//! Planning and running builds.
//!
//! A build walks the stage graph in order. Sources are read file by file (a file whose bytes have
//! not changed is not read again); each stage's inputs are its upstream outputs, and only inputs
//! without a committed result under the stage's fingerprint run. They are split into units with a
//! fixed assignment (by input id); each unit's results are committed in one transaction, so a build
//! killed at any moment and run again finishes with the same outputs. The final samples (those of
//! stages no other stage reads) are written sorted by id, to temporary names renamed into place.

use crate::executor::{run_units, Executor, Unit};
use crate::recipe::{Recipe, StageConfig};
use crate::sample::Sample;
use crate::stage::{build_stage, source_fingerprint, source_sample, stage_fingerprint, Shape};
use crate::store::{ItemResult, Store};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// Inputs per unit of a per-item stage.
pub const UNIT_ITEMS: usize = 64;

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

/// What one stage did (or, in a plan, will do).
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
    pub reason: Reason,
    /// Inputs with a committed result before this build.
    pub cached: usize,
    /// Inputs run (in a plan: to run; `None` when not known before upstream runs).
    pub run: Option<usize>,
    pub units_run: usize,
    pub units_failed: usize,
    pub samples_in: usize,
    pub samples_out: usize,
    /// Dropped inputs by reason.
    pub dropped: BTreeMap<String, usize>,
    pub seconds: f64,
}

impl StageReport {
    /// Records how many inputs are cached and how many must run (and so that the stage has work).
    fn pending(&mut self, cached: usize, todo: usize, forced: bool) {
        self.cached = cached;
        self.run = Some(todo);
        if todo > 0 {
            self.reason = if forced {
                Reason::Forced
            } else {
                Reason::NewInputs
            };
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub recipe: String,
    pub executor: String,
    pub stages: Vec<StageReport>,
    /// Output files written (relative to the output folder); unchanged ones are not rewritten.
    pub outputs: Vec<String>,
    pub outputs_unchanged: usize,
    pub did_work: bool,
    pub seconds: f64,
}

impl RunReport {
    /// The readable summary of a build: a line per stage, then what was written.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.stages {
            let dropped: Vec<String> = s.dropped.iter().map(|(k, v)| format!("{v} {k}")).collect();
            out.push_str(&format!(
                "{:<16} {:<14} {:>6} cached {:>6} run {:>4} units {:>7} in {:>7} out  {:.1}s{}\n",
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

/// Options of a build.
pub struct BuildOptions<'a> {
    pub executor: Executor,
    /// Stages to redo, with everything downstream of them.
    pub force: Vec<String>,
    /// Only plan: count, run nothing, write nothing.
    pub dry_run: bool,
    pub progress: &'a dyn Progress,
}

/// The store of a recipe.
pub fn store_path(recipe: &Recipe) -> PathBuf {
    recipe.resolve(&recipe.output.path).join("store.sqlite")
}

/// A stage node: a source or a declared stage.
enum Node<'a> {
    Source(&'a str),
    Stage(&'a StageConfig),
}

/// Sources, then stages in dependency order.
fn order(recipe: &Recipe) -> Vec<Node<'_>> {
    let mut out: Vec<Node> = recipe.sources.keys().map(|k| Node::Source(k)).collect();
    let mut done: HashSet<&str> = recipe.sources.keys().map(String::as_str).collect();
    let mut left: Vec<&StageConfig> = recipe.stages.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|s| {
            if s.inputs().iter().all(|i| done.contains(i.as_str())) {
                done.insert(s.name());
                out.push(Node::Stage(s));
                false
            } else {
                true
            }
        });
        if left.len() == before {
            break; // a cycle: the recipe check reports it
        }
    }
    out
}

/// Names of `force` and every stage downstream of them.
fn forced_set(recipe: &Recipe, force: &[String]) -> Result<HashSet<String>> {
    let mut set: HashSet<String> = HashSet::new();
    for f in force {
        if !recipe.stages.iter().any(|s| s.name() == f) && !recipe.sources.contains_key(f) {
            return Err(Error::UnknownStage(f.clone()));
        }
        set.insert(f.clone());
    }
    loop {
        let before = set.len();
        for s in &recipe.stages {
            if s.inputs().iter().any(|i| set.contains(i)) {
                set.insert(s.name().to_string());
            }
        }
        if set.len() == before {
            return Ok(set);
        }
    }
}

/// Inputs with a committed result under `fp`; none for a forced stage (whose results a build
/// forgets first, and a plan counts as gone).
fn cached_inputs(store: &Store, fp: &str, ids: &[&str], forced: bool) -> Result<HashSet<String>> {
    if forced {
        return Ok(HashSet::new());
    }
    store.cached(fp, ids)
}

/// One source file: its input id is its path and the hash of its bytes.
fn file_input_id(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{}#{:016x}", path.display(), xxh3_64(&bytes)))
}

/// Plans (`dry_run`) or runs a build of `recipe`.
pub fn build(recipe: &Recipe, recipe_path: &Path, opts: &BuildOptions) -> Result<RunReport> {
    let started = Instant::now();
    let mut store = Store::open(&store_path(recipe))?;
    store.check_source_classes(recipe)?;
    let forced = forced_set(recipe, &opts.force)?;
    let run_id = if opts.dry_run {
        None
    } else {
        Some(store.start_run(&now())?)
    };

    let mut fps: HashMap<String, String> = HashMap::new();
    // Outputs of each node; `None` when not known (a plan whose upstream has work).
    let mut outputs: HashMap<String, Option<Vec<Sample>>> = HashMap::new();
    let mut reports = Vec::new();
    let mut consumed: HashSet<&str> = HashSet::new();
    for s in &recipe.stages {
        consumed.extend(s.inputs().iter().map(String::as_str));
    }

    for node in order(recipe) {
        let t0 = Instant::now();
        let (name, kind, fp) = match &node {
            Node::Source(n) => (
                n.to_string(),
                "source".to_string(),
                source_fingerprint(n, &recipe.sources[*n]),
            ),
            Node::Stage(s) => {
                let inputs: Vec<String> = s.inputs().iter().map(|i| fps[i].clone()).collect();
                (
                    s.name().to_string(),
                    s.type_name().to_string(),
                    stage_fingerprint(recipe, s, &inputs)?,
                )
            }
        };
        fps.insert(name.clone(), fp.clone());
        let is_forced = forced.contains(&name);
        if is_forced && !opts.dry_run {
            store.forget(&fp)?;
        }
        let changed = store.ran_with_other_fingerprint(&name, &fp)?;
        let ran_before = store.ran_with(&name, &fp)?;
        let mut report = StageReport {
            name: name.clone(),
            kind,
            fingerprint: fp.clone(),
            reason: Reason::UpToDate,
            cached: 0,
            run: Some(0),
            units_run: 0,
            units_failed: 0,
            samples_in: 0,
            samples_out: 0,
            dropped: BTreeMap::new(),
            seconds: 0.0,
        };

        // The inputs: source files, or upstream samples.
        let produced: Option<Vec<Sample>> = match &node {
            Node::Source(n) => {
                read_source(recipe, n, &fp, &mut store, opts, &mut report, is_forced)?
            }
            Node::Stage(s) => {
                let mut inputs = Vec::new();
                let mut known = true;
                for i in s.inputs() {
                    match outputs.get(i).and_then(|o| o.as_ref()) {
                        Some(v) => inputs.extend(v.iter().cloned()),
                        None => known = false,
                    }
                }
                if !known {
                    report.reason = Reason::AfterUpstream;
                    report.run = None;
                    None
                } else {
                    report.samples_in = inputs.len();
                    let stage = build_stage(recipe, s, &fp)?;
                    run_stage(
                        &*stage,
                        s,
                        &fp,
                        &inputs,
                        &mut store,
                        opts,
                        recipe_path,
                        &mut report,
                        is_forced,
                    )?
                }
            }
        };
        if report.reason != Reason::UpToDate && report.reason != Reason::AfterUpstream && !is_forced
        {
            report.reason = if ran_before {
                Reason::NewInputs
            } else if changed {
                Reason::ChangedConfig
            } else {
                Reason::FirstRun
            };
        }
        if let Some(p) = &produced {
            report.samples_out = p.len();
        }
        if !opts.dry_run {
            store.note_stage(&name, &fp)?;
        }
        report.seconds = t0.elapsed().as_secs_f64();
        outputs.insert(name, produced);
        reports.push(report);
        opts.progress.stage_done();
    }

    // Final samples: nodes no stage reads.
    let mut written = Vec::new();
    let mut unchanged = 0;
    if !opts.dry_run {
        let out_dir = recipe.resolve(&recipe.output.path);
        for r in &reports {
            if consumed.contains(r.name.as_str()) {
                continue;
            }
            let Some(Some(samples)) = outputs.get(&r.name) else {
                continue;
            };
            let (files, same) = write_outputs(&out_dir, &r.name, samples, recipe.output.shards)?;
            written.extend(files);
            unchanged += same;
        }
    }
    let did_work = reports.iter().any(|r| r.reason != Reason::UpToDate);
    let report = RunReport {
        recipe: recipe.name.clone(),
        executor: opts.executor.name().into(),
        stages: reports,
        outputs: written,
        outputs_unchanged: unchanged,
        did_work,
        seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(id) = run_id {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        let out_dir = recipe.resolve(&recipe.output.path);
        atomic_write(&out_dir.join("report.json"), format!("{json}\n").as_bytes())?;
        atomic_write(&out_dir.join("report.txt"), report.summary().as_bytes())?;
        store.finish_run(id, &now(), "ok", &json)?;
    }
    Ok(report)
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}")
}

/// Reads a source's files; a file already read with the same bytes comes from the store.
fn read_source(
    recipe: &Recipe,
    name: &str,
    fp: &str,
    store: &mut Store,
    opts: &BuildOptions,
    report: &mut StageReport,
    forced: bool,
) -> Result<Option<Vec<Sample>>> {
    let source = &recipe.sources[name];
    let pattern = recipe.resolve(&source.path).to_string_lossy().into_owned();
    let files = corpus::expand_inputs(&[pattern])?;
    let ids: Vec<String> = files
        .iter()
        .map(|f| file_input_id(f))
        .collect::<Result<_>>()?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cached = cached_inputs(store, fp, &id_refs, forced)?;
    let todo: Vec<usize> = (0..files.len())
        .filter(|&k| !cached.contains(&ids[k]))
        .collect();
    report.pending(cached.len(), todo.len(), forced);
    if opts.dry_run {
        return Ok(if todo.is_empty() {
            Some(load(store, fp, &ids, report)?)
        } else {
            None
        });
    }
    opts.progress.stage(&format!("source {name}"), todo.len());
    let spec = corpus::TextSpec {
        text_field: source.text_field.clone(),
        id_field: source.id_field.clone(),
    };
    for k in todo {
        let file = &files[k];
        let rel = file
            .strip_prefix(&recipe.dir)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned();
        let mut samples = Vec::new();
        for batch in corpus::BatchReader::open(file, &spec, false)? {
            let batch = batch?;
            for i in 0..batch.len() {
                let doc = batch.doc(i, &spec)?;
                samples.push(source_sample(
                    name, source, fp, &rel, doc.line, &doc.id, &doc.text,
                ));
            }
        }
        store.commit(fp, &[(ids[k].clone(), ItemResult::Keep(samples))])?;
        report.units_run += 1;
        opts.progress.unit_done();
    }
    Ok(Some(load(store, fp, &ids, report)?))
}

/// The outputs of `ids` under `fp`, in order, counting drops.
fn load(store: &Store, fp: &str, ids: &[String], report: &mut StageReport) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for id in ids {
        match store.result(fp, id)? {
            Some(ItemResult::Keep(s)) => out.extend(s),
            Some(ItemResult::Drop(reason)) => *report.dropped.entry(reason).or_insert(0) += 1,
            None => {
                return Err(Error::Stage {
                    stage: report.name.clone(),
                    message: format!("no result for input {id} after the run"),
                })
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    stage: &dyn crate::stage::Stage,
    config: &StageConfig,
    fp: &str,
    inputs: &[Sample],
    store: &mut Store,
    opts: &BuildOptions,
    recipe_path: &Path,
    report: &mut StageReport,
    forced: bool,
) -> Result<Option<Vec<Sample>>> {
    let name = config.name();
    match stage.shape() {
        Shape::WholeSet => {
            let mut h = Vec::new();
            for s in inputs {
                h.extend_from_slice(s.id.as_bytes());
                h.push(b'\n');
            }
            let key = format!("set:{:032x}", xxh3_128(&h));
            let ids = vec![key.clone()];
            let cached = cached_inputs(store, fp, &[key.as_str()], forced)?;
            let todo = if cached.is_empty() { inputs.len() } else { 0 };
            report.pending(cached.len(), todo, forced);
            if cached.is_empty() {
                if opts.dry_run {
                    return Ok(None);
                }
                opts.progress.stage(name, 1);
                let results = stage.process_set(inputs)?;
                let mut kept = Vec::new();
                let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
                for r in results {
                    match r {
                        ItemResult::Keep(s) => kept.extend(s),
                        ItemResult::Drop(reason) => *dropped.entry(reason).or_insert(0) += 1,
                    }
                }
                // A whole-set result is stored as its kept samples plus its drop counts.
                let summary = serde_json::to_string(&dropped).unwrap_or_default();
                store.commit(
                    fp,
                    &[
                        (key.clone(), ItemResult::Keep(kept)),
                        (format!("{key}:dropped"), ItemResult::Drop(summary)),
                    ],
                )?;
                report.units_run = 1;
                opts.progress.unit_done();
            }
            if let Some(ItemResult::Drop(summary)) = store.result(fp, &format!("{key}:dropped"))? {
                let counts: BTreeMap<String, usize> =
                    serde_json::from_str(&summary).unwrap_or_default();
                report.dropped = counts;
            }
            Ok(Some(load(store, fp, &ids, report)?))
        }
        Shape::PerItem => {
            // Distinct inputs, in order.
            let mut seen = HashSet::new();
            let distinct: Vec<&Sample> = inputs
                .iter()
                .filter(|s| seen.insert(s.id.as_str()))
                .collect();
            let ids: Vec<&str> = distinct.iter().map(|s| s.id.as_str()).collect();
            let cached = cached_inputs(store, fp, &ids, forced)?;
            let todo: Vec<&Sample> = distinct
                .iter()
                .copied()
                .filter(|s| !cached.contains(&s.id))
                .collect();
            report.pending(cached.len(), todo.len(), forced);
            if opts.dry_run {
                if !todo.is_empty() {
                    return Ok(None);
                }
            } else if !todo.is_empty() {
                let units = make_units(&todo);
                opts.progress.stage(name, units.len());
                let (run, failed) = run_units(
                    opts.executor,
                    stage,
                    name,
                    fp,
                    &units,
                    store,
                    recipe_path,
                    opts.progress,
                )?;
                report.units_run = run;
                report.units_failed = failed;
                if failed > 0 {
                    return Err(Error::Stage {
                        stage: name.to_string(),
                        message: format!("{failed} of {} units failed; the others are kept, run the build again to retry", units.len()),
                    });
                }
            }
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            Ok(Some(load(store, fp, &ids, report)?))
        }
    }
}

/// Splits inputs into units with a fixed assignment: by input id, so the same inputs always land in
/// the same unit for the same set of work.
fn make_units(todo: &[&Sample]) -> Vec<Unit> {
    let n = todo.len().div_ceil(UNIT_ITEMS).max(1);
    let mut units: Vec<Unit> = (0..n)
        .map(|k| Unit {
            index: k,
            items: Vec::new(),
        })
        .collect();
    let mut sorted: Vec<&Sample> = todo.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for (k, s) in sorted.into_iter().enumerate() {
        units[k * n / todo.len().max(1)].items.push(s.clone());
    }
    units.retain(|u| !u.items.is_empty());
    units
}

/// Writes `data` to `path` through a temporary name.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::write(&tmp, data)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        // A full disk or a failed rename leaves nothing half-written behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes a final stage's samples, sorted by id, as `NAME/part-K-of-N.jsonl`; a file whose bytes
/// would not change is left alone. Returns the files written and the number left unchanged.
fn write_outputs(
    out_dir: &Path,
    name: &str,
    samples: &[Sample],
    shards: usize,
) -> Result<(Vec<String>, usize)> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted.dedup_by(|a, b| a.id == b.id);
    let dir = out_dir.join(name);
    let mut written = Vec::new();
    let mut unchanged = 0;
    let mut keep = HashSet::new();
    for k in 0..shards {
        let file = format!("part-{k:05}-of-{shards:05}.jsonl");
        let mut body = Vec::new();
        for s in sorted.iter().skip(k).step_by(shards) {
            serde_json::to_writer(&mut body, s).map_err(|e| Error::Stage {
                stage: name.to_string(),
                message: e.to_string(),
            })?;
            body.push(b'\n');
        }
        let path = dir.join(&file);
        keep.insert(file.clone());
        if std::fs::read(&path).ok().as_deref() == Some(body.as_slice()) {
            unchanged += 1;
            continue;
        }
        atomic_write(&path, &body)?;
        written.push(format!("{name}/{file}"));
    }
    // Parts of an earlier shard count are stale.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("part-") && !keep.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok((written, unchanged))
}
