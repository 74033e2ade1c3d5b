//! Running (or, for a plan, counting) a build.
//!
//! The build walks the plan's nodes in order. For each it lists the units its inputs call for
//! (sources: a unit per file; per-sample stages: a unit per input view; exact dedup: scans, then a
//! unit per view), asks the store which are done, takes in completion records a killed build or a
//! Slurm task left on disk, and hands the rest to the executor. The node's output views are its
//! units' views, in order; they are the next nodes' inputs. Then the final stages' output files are
//! units too, and the manifest, the report and the run record are written. A successful build
//! forgets (and deletes the files of) every unit it did not use.
//!
//! Memory holds unit records, never samples; a build with nothing to do reads the store once per
//! unit and `stat`s each file.

use crate::executor::{self, Batch, Executor, UnitCtx};
use crate::plan::{Graph, NodeKind};
use crate::recipe::{Recipe, StageConfig};
use crate::report::{Progress, Reason, RunReport, StageReport};
use crate::stages::{dedup_exact, source, Runner};
use crate::store::Store;
use crate::unit::{Done, Produced, UnitSpec, Work, WORK_DIR};
use crate::view::View;
use crate::{output, Error, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Options of a build.
pub struct BuildOptions<'a> {
    pub executor: Executor,
    /// Stages to redo, with everything downstream of them.
    pub force: Vec<String>,
    /// Only plan: count, run nothing, write nothing.
    pub dry_run: bool,
    pub progress: &'a dyn Progress,
}

/// The output folder of a recipe.
pub fn output_dir(recipe: &Recipe) -> PathBuf {
    recipe.resolve(&recipe.output.path)
}

/// The store of a recipe.
pub fn store_path(recipe: &Recipe) -> PathBuf {
    output_dir(recipe).join("store.sqlite")
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}")
}

/// Plans (`dry_run`) or runs a build of `recipe`.
pub fn build(recipe: &Recipe, recipe_path: &Path, opts: &BuildOptions) -> Result<RunReport> {
    let graph = Graph::new(recipe)?;
    let forced = graph.forced(&opts.force)?;
    let root = output_dir(recipe);
    let mut store = if opts.dry_run {
        match Store::open_existing(&store_path(recipe))? {
            Some(s) => s,
            None => Store::in_memory()?,
        }
    } else {
        Store::open(&store_path(recipe))?
    };
    store.check_source_classes(recipe)?;
    let mut b = Builder {
        recipe,
        recipe_path,
        graph: &graph,
        forced,
        root: &root,
        store: &mut store,
        opts,
        keep: HashSet::new(),
        runners: HashMap::new(),
    };
    if opts.dry_run {
        return b.run();
    }
    // The store is held exclusively: what temporary files lie in the output folder, a killed
    // process left.
    corpus::atomic::remove_stale_temporaries(&root)?;
    let run_id = b.store.start_run(&now())?;
    let result = b.run();
    match &result {
        Ok(report) => {
            let json = serde_json::to_string_pretty(report).unwrap_or_default();
            store.finish_run(run_id, &now(), "ok", &json)?;
        }
        Err(e) => store.finish_run(run_id, &now(), "failed", &e.to_string())?,
    }
    result
}

/// Units of one kind of a node, after the store and the executor had their say.
struct Phase {
    /// Every unit's record, in unit order (`None`: not done, in a plan).
    done: Vec<Option<Done>>,
    /// Which units ran in this build.
    fresh: Vec<bool>,
    /// Units done before this build.
    cached: usize,
    /// Units run (in a plan: to run).
    run: usize,
}

impl Phase {
    /// All records, when every unit is done.
    fn complete(&self) -> Option<Vec<&Done>> {
        self.done.iter().map(Option::as_ref).collect()
    }

    /// The views the units contribute, in order, when every unit is done.
    fn views(&self) -> Option<Vec<View>> {
        self.complete()
            .map(|d| d.iter().flat_map(|d| d.out.views.iter().cloned()).collect())
    }
}

struct Builder<'a> {
    recipe: &'a Recipe,
    recipe_path: &'a Path,
    graph: &'a Graph<'a>,
    forced: HashSet<usize>,
    root: &'a Path,
    store: &'a mut Store,
    opts: &'a BuildOptions<'a>,
    /// Keys of every unit this build uses.
    keep: HashSet<String>,
    /// Each node's runner, made once (so one-time set-up, such as a benchmark index, is shared
    /// by all its units).
    runners: HashMap<usize, Arc<Runner>>,
}

impl Builder<'_> {
    /// The runner of node `i` for `work` (output files have their own).
    fn runner(&mut self, i: usize, work: &Work) -> Result<Arc<Runner>> {
        if matches!(work, Work::Output { .. }) {
            return Ok(Arc::new(Runner::Output));
        }
        if let Some(r) = self.runners.get(&i) {
            return Ok(r.clone());
        }
        let r = Arc::new(self.graph.runner(self.recipe, i, work)?);
        self.runners.insert(i, r.clone());
        Ok(r)
    }

    fn run(&mut self) -> Result<RunReport> {
        let started = Instant::now();
        let n = self.graph.nodes.len();
        let mut views: Vec<Option<Vec<View>>> = vec![None; n];
        let mut reports = Vec::with_capacity(n);
        for i in 0..n {
            let t0 = Instant::now();
            let node = &self.graph.nodes[i];
            let mut rep = StageReport::new(&node.name, node.type_name(), &node.fingerprint);
            let inputs = self.inputs(i, &views);
            let out = match (node.kind, inputs) {
                (NodeKind::Source(_), _) => self.source(i, &mut rep)?,
                (NodeKind::Stage(_), None) => {
                    rep.reason = Reason::AfterUpstream;
                    rep.run = None;
                    None
                }
                (
                    NodeKind::Stage(StageConfig::DedupExact(_) | StageConfig::NearDup(_)),
                    Some(inputs),
                ) => self.dedup(i, inputs, &mut rep)?,
                (NodeKind::Stage(_), Some(inputs)) => self.per_sample(i, inputs, &mut rep)?,
            };
            if let Some(v) = &out {
                rep.samples_out = v.iter().map(|v| v.rows).sum();
            }
            if rep.reason != Reason::AfterUpstream && rep.units_run > 0 {
                rep.reason = self.reason(i)?;
            }
            if !self.opts.dry_run {
                self.store.note_stage(&node.name, &node.fingerprint)?;
            }
            rep.seconds = t0.elapsed().as_secs_f64();
            views[i] = out;
            reports.push(rep);
            self.opts.progress.stage_done();
        }
        let mut report = RunReport {
            recipe: self.recipe.name.clone(),
            recipe_fingerprint: self.graph.recipe_fingerprint(self.recipe),
            executor: self.opts.executor.name().into(),
            did_work: reports.iter().any(|r| r.reason != Reason::UpToDate),
            stages: reports,
            outputs: Vec::new(),
            outputs_unchanged: 0,
            mix: None,
            seconds: 0.0,
        };
        if !self.opts.dry_run {
            self.outputs(&views, &mut report)?;
            // A mix that fails (a class short of its share) loses none of the build: the report,
            // the views and the store are written first, the error is returned last.
            let mixed = self.mix(&views, &mut report);
            report.seconds = started.elapsed().as_secs_f64();
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            corpus::atomic::write(
                &self.root.join("report.json"),
                format!("{json}\n").as_bytes(),
            )?;
            let mut summary = report.summary();
            if let Err(e) = &mixed {
                summary.push_str(&format!("mix failed: {e}\n"));
            }
            corpus::atomic::write(&self.root.join("report.txt"), summary.as_bytes())?;
            let named: Vec<(String, String, Vec<View>)> = self
                .graph
                .nodes
                .iter()
                .zip(views)
                .map(|(n, v)| (n.name.clone(), n.fingerprint.clone(), v.unwrap_or_default()))
                .collect();
            self.store.set_views(&named)?;
            self.collect_garbage()?;
            mixed?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Why node `i` has work.
    fn reason(&self, i: usize) -> Result<Reason> {
        let node = &self.graph.nodes[i];
        Ok(if self.forced.contains(&i) {
            Reason::Forced
        } else if self.store.ran_before(&node.name, &node.fingerprint, true)? {
            Reason::NewInputs
        } else if self
            .store
            .ran_before(&node.name, &node.fingerprint, false)?
        {
            Reason::ChangedConfig
        } else {
            Reason::FirstRun
        })
    }

    /// The views node `i` reads, in order, or `None` while one of its inputs is not known. Where a
    /// node has several inputs, slots are prefixed with the input's name.
    fn inputs(&self, i: usize, views: &[Option<Vec<View>>]) -> Option<Vec<View>> {
        let node = &self.graph.nodes[i];
        let several = node.inputs.len() > 1;
        let mut out = Vec::new();
        for &j in &node.inputs {
            for v in views[j].as_ref()? {
                out.push(if several {
                    v.in_slot(format!("{}/{}", self.graph.nodes[j].name, v.slot))
                } else {
                    v.clone()
                });
            }
        }
        Some(out)
    }

    fn source(&mut self, i: usize, rep: &mut StageReport) -> Result<Option<Vec<View>>> {
        let node = &self.graph.nodes[i];
        let mut units = Vec::new();
        for file in source::files(self.recipe, &node.name)? {
            let rel = source::relative(self.recipe, &file);
            let abs = std::fs::canonicalize(&file).map_err(|e| Error::io(&file, e))?;
            let abs = abs.to_string_lossy();
            let sig = source::signature(&file)?;
            let hash = match self.store.source_hash(&abs, &sig)? {
                Some(h) => h,
                None => {
                    let h = source::content_hash(&file)?;
                    if !self.opts.dry_run {
                        self.store.set_source_hash(&abs, &sig, &h)?;
                    }
                    h
                }
            };
            units.push(UnitSpec::new(
                &node.name,
                &node.fingerprint,
                rel.clone(),
                Work::Source { file: rel, hash },
            ));
        }
        let phase = self.run_units(i, units, "units")?;
        rep.cached = phase.cached as u64;
        rep.run = Some(phase.run as u64);
        rep.units_cached = phase.cached;
        rep.units_run = phase.run;
        let views = phase.views();
        if let (NodeKind::Source(s), Some(_), false) = (node.kind, &views, self.opts.dry_run) {
            self.store
                .record_source_class(&node.name, s.class.as_str())?;
        }
        rep.samples_in = views.iter().flatten().map(|v| v.rows).sum();
        Ok(views)
    }

    fn per_sample(
        &mut self,
        i: usize,
        inputs: Vec<View>,
        rep: &mut StageReport,
    ) -> Result<Option<Vec<View>>> {
        let node = &self.graph.nodes[i];
        let rows: Vec<u64> = inputs.iter().map(|v| v.rows).collect();
        rep.samples_in = rows.iter().sum();
        let units: Vec<UnitSpec> = inputs
            .into_iter()
            .map(|view| {
                UnitSpec::new(
                    &node.name,
                    &node.fingerprint,
                    view.slot.clone(),
                    Work::PerSample { view, memo: None },
                )
            })
            .collect();
        let phase = self.run_units(i, units, "units")?;
        self.count(&phase, rep, |k| rows[k]);
        Ok(phase.views())
    }

    fn dedup(
        &mut self,
        i: usize,
        inputs: Vec<View>,
        rep: &mut StageReport,
    ) -> Result<Option<Vec<View>>> {
        let node = &self.graph.nodes[i];
        let rows: u64 = inputs.iter().map(|v| v.rows).sum();
        rep.samples_in = rows;
        let near = matches!(node.kind, NodeKind::Stage(StageConfig::NearDup(_)));
        let per_part = self.recipe.execution.dedup_partition_rows;
        let scans = dedup_exact::scan_units(&node.name, &node.fingerprint, &inputs, near, per_part);
        let scanned = self.run_units(i, scans, "scan")?;
        let Some(scan_files) = scanned
            .complete()
            .map(|d| dedup_exact::dups_files(d.iter().flat_map(|d| &d.out.files)))
        else {
            rep.run = Some(rows);
            rep.units_run = scanned.run;
            return Ok(None);
        };
        let applies: Vec<UnitSpec> = inputs
            .into_iter()
            .enumerate()
            .map(|(index, view)| {
                UnitSpec::new(
                    &node.name,
                    &node.fingerprint,
                    view.slot.clone(),
                    Work::DedupApply {
                        view,
                        index: index as u32,
                        scans: scan_files.clone(),
                    },
                )
            })
            .collect();
        let applied = self.run_units(i, applies, "apply")?;
        // Dedup compares every input with every other: a change anywhere re-examines them all.
        let ran = scanned.run + applied.run > 0;
        rep.cached = if ran { 0 } else { rows };
        rep.run = Some(if ran { rows } else { 0 });
        rep.units_cached = scanned.cached + applied.cached;
        rep.units_run = scanned.run + applied.run;
        rep.dropped = counts(&applied, |p| &p.dropped);
        Ok(applied.views())
    }

    /// Fills a per-sample stage's counts from its units: `pending(k)` gives unit `k`'s inputs,
    /// counted as to run in a plan.
    fn count(&self, phase: &Phase, rep: &mut StageReport, pending: impl Fn(usize) -> u64) {
        let (mut cached, mut run) = (0, 0);
        for (k, d) in phase.done.iter().enumerate() {
            match d {
                Some(d) if !phase.fresh[k] => cached += d.out.rows_in,
                Some(d) => {
                    cached += d.out.cached;
                    run += d.out.run;
                }
                None => run += pending(k),
            }
        }
        rep.cached = cached;
        rep.run = Some(run);
        rep.units_cached = phase.cached;
        rep.units_run = phase.run;
        rep.dropped = counts(phase, |p| &p.dropped);
        rep.changed = counts(phase, |p| &p.changed);
    }

    /// Runs what is not done of `units` (all of node `i`, one kind): records in the store whose
    /// files are present count as done, records left on disk are checked and taken in, and the
    /// executor runs the rest. In a plan, nothing runs.
    fn run_units(&mut self, i: usize, mut units: Vec<UnitSpec>, phase: &str) -> Result<Phase> {
        let node = &self.graph.nodes[i];
        let forced = self.forced.contains(&i);
        let mut done: Vec<Option<Done>> = vec![None; units.len()];
        let mut todo = Vec::new();
        for (k, u) in units.iter().enumerate() {
            self.keep.insert(u.key.clone());
            if !forced {
                if let Some(d) = self.store.unit(&u.key)? {
                    if d.files_present(self.root) {
                        done[k] = Some(d);
                        continue;
                    }
                }
            }
            todo.push(k);
        }
        let mut fresh = vec![false; units.len()];
        if self.opts.dry_run {
            let cached = units.len() - todo.len();
            return Ok(Phase {
                done,
                fresh,
                cached,
                run: todo.len(),
            });
        }
        if !forced {
            // What a killed build or a Slurm task finished, but the store has not recorded.
            let mut recovered = Vec::new();
            for &k in &todo {
                if let Some(d) = Done::read_verified(self.root, &units[k])? {
                    recovered.push(d.clone());
                    done[k] = Some(d);
                }
            }
            self.store.insert_units(&recovered)?;
            todo.retain(|&k| done[k].is_none());
        }
        let cached = units.len() - todo.len();
        if todo.is_empty() {
            return Ok(Phase {
                done,
                fresh,
                cached,
                run: 0,
            });
        }
        if !forced {
            // Inputs this stage has seen in the same slot take their earlier results.
            for &k in &todo {
                let u = &mut units[k];
                if let Work::PerSample { memo, .. } = &mut u.work {
                    if let Some(d) =
                        self.store
                            .last_in_slot(&u.stage, &u.fingerprint, &u.slot, &u.key)?
                    {
                        if d.files_present(self.root) {
                            *memo = d.out.files.first().cloned();
                        }
                    }
                }
            }
        }
        // A record left from before (a forced unit's, or one whose files no longer match) must
        // not pass for the new run's.
        for &k in &todo {
            let path = Done::path(self.root, &units[k].stage, &units[k].key);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&path, e))
                }
                _ => {}
            }
        }
        let batch_units: Vec<UnitSpec> = todo.iter().map(|&k| units[k].clone()).collect();
        self.opts.progress.stage(&node.name, batch_units.len());
        let work = &batch_units[0].work;
        let runner = self.runner(i, work)?;
        let fingerprint = self.graph.unit_fingerprint(self.recipe, i, work);
        if self.opts.executor == Executor::Local {
            runner.prepare()?;
        }
        let ctx = UnitCtx {
            root: self.root,
            recipe: self.recipe,
            runner: &runner,
        };
        let batch = Batch {
            stage: &node.name,
            fingerprint: &fingerprint,
            phase,
            units: &batch_units,
        };
        let results = executor::run(
            self.opts.executor,
            &batch,
            &ctx,
            self.recipe_path,
            &self.recipe.execution.slurm,
            self.opts.progress,
        )?;
        let mut ok = Vec::new();
        let mut failures = Vec::new();
        for (&k, r) in todo.iter().zip(results) {
            match r {
                Ok(d) => {
                    ok.push(d.clone());
                    done[k] = Some(d);
                    fresh[k] = true;
                }
                Err(e) => failures.push(e),
            }
        }
        // The units that finished are kept even when others failed.
        self.store.insert_units(&ok)?;
        if let Some(first) = failures.first() {
            return Err(Error::UnitsFailed {
                stage: node.name.clone(),
                failed: failures.len(),
                total: todo.len(),
                first: first.clone(),
            });
        }
        Ok(Phase {
            done,
            fresh,
            cached,
            run: todo.len(),
        })
    }

    /// Writes the final stages' output files (units too) and the manifest.
    fn outputs(&mut self, views: &[Option<Vec<View>>], report: &mut RunReport) -> Result<()> {
        let format = self.recipe.output.format;
        let shards = self.recipe.output.shards;
        let mut stages = Vec::new();
        let mut wrote = false;
        for i in self.graph.finals() {
            let node = &self.graph.nodes[i];
            let Some(v) = &views[i] else { continue };
            let fp = output::fingerprint(&node.fingerprint, format, shards);
            let units = output::units(&node.name, &fp, v, shards, format);
            let phase = self.run_units(i, units, "output")?;
            let done: Vec<Done> = phase.done.into_iter().flatten().collect();
            let mut names = Vec::new();
            for (d, fresh) in done.iter().zip(&phase.fresh) {
                for f in &d.out.files {
                    let name = f.path.to_string_lossy().into_owned();
                    if *fresh {
                        report.outputs.push(name.clone());
                    } else {
                        report.outputs_unchanged += 1;
                    }
                    names.push(name);
                }
            }
            wrote |= phase.run > 0;
            report.did_work |= phase.run > 0;
            output::remove_stale_parts(self.root, &node.name, &names)?;
            stages.push((node.name.clone(), node.fingerprint.clone(), done));
        }
        if wrote || !self.root.join("manifest.json").exists() {
            output::write_manifest(
                self.root,
                &self.recipe.name,
                &report.recipe_fingerprint,
                format,
                &stages,
            )?;
        }
        Ok(())
    }

    /// Mixes the final stages' samples, when the recipe has a `mix` section.
    fn mix(&mut self, views: &[Option<Vec<View>>], report: &mut RunReport) -> Result<()> {
        let Some(mix) = &self.recipe.mix else {
            return Ok(());
        };
        let inputs: Vec<(String, Vec<View>)> = self
            .graph
            .finals()
            .into_iter()
            .filter_map(|i| Some((self.graph.nodes[i].name.clone(), views[i].clone()?)))
            .collect();
        let summary = crate::mix::run(
            self.root,
            self.recipe,
            mix,
            &report.recipe_fingerprint,
            &inputs,
            self.opts.progress,
        )?;
        report.did_work |= !summary.up_to_date;
        report.mix = Some(summary);
        Ok(())
    }

    /// Forgets the units this build did not use and deletes their files.
    fn collect_garbage(&mut self) -> Result<()> {
        let stale = self.store.forget_units_except(&self.keep)?;
        let units = self.root.join(WORK_DIR).join("units");
        let Ok(stages) = std::fs::read_dir(&units) else {
            return Ok(());
        };
        let mut removed = 0;
        for stage in stages.flatten() {
            let Ok(files) = std::fs::read_dir(stage.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let key = name.get(..32).unwrap_or_default();
                if !self.keep.contains(key) {
                    std::fs::remove_file(f.path()).map_err(|e| Error::io(f.path(), e))?;
                    removed += 1;
                }
            }
        }
        tracing::debug!("forgot {} units, removed {removed} files", stale.len());
        Ok(())
    }
}

/// Drops by reason over a phase's units.
/// The units' counts of one kind (drops by reason, changes by kind), added up.
fn counts(
    phase: &Phase,
    of: impl Fn(&Produced) -> &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for d in phase.done.iter().flatten() {
        for (reason, n) in of(&d.out) {
            *out.entry(reason.clone()).or_insert(0) += n;
        }
    }
    out
}
