//! Running a per-sample stage over one view.
//!
//! The unit streams its view in batches, runs the stage on the batch's inputs across the cores,
//! and writes the results in input order: a filter one decision per input, a transform the new
//! samples (each with its input's id) and a tombstone per dropped input. Inputs the same stage has
//! already seen in this slot (an earlier unit of a file that has since grown) take their results
//! from that unit's output instead of running again: the same stage on the same input gives the
//! same result. Memory holds one batch (or what the stage asks for at once, at most a unit) and,
//! when reusing, the earlier unit's results.

use super::{Kind, Outcome, Stage, UnitPlace};
use crate::sample::Sample;
use crate::unit::{create_shard, finish_shard, Produced, UnitSpec};
use crate::view::{decisions, View};
use crate::{Error, Result};
use corpus::shard::{FileInfo, Projection, ShardReader, ShardWriter};
use std::collections::HashMap;
use std::path::Path;

/// One stored result row of a transform: a sample, or a drop.
enum Row {
    Sample(Box<Sample>),
    Dropped(String),
}

/// Results of an earlier unit of the same stage, by input id.
enum Memo {
    Decisions(HashMap<String, Option<String>>),
    Rows(HashMap<String, Vec<Row>>),
}

impl Memo {
    fn load(root: &Path, kind: Kind, file: &FileInfo) -> Result<Memo> {
        Ok(match kind {
            Kind::Filter => Memo::Decisions(
                decisions(root, file)?
                    .into_iter()
                    .filter_map(|(id, d)| id.map(|id| (id, d)))
                    .collect(),
            ),
            Kind::Transform => {
                let mut rows: HashMap<String, Vec<Row>> = HashMap::new();
                let mut r = ShardReader::open(&root.join(&file.path), Projection::Full)?;
                // An input's rows are contiguous; an input met again later (the same content
                // twice in the view) repeats them, and is not added twice.
                let mut last: Option<String> = None;
                while let Some(entries) = r.next_entries()? {
                    for e in entries {
                        let Some(input) = e.input else { continue };
                        let row = match (e.sample, e.dropped) {
                            (Some(s), _) => Row::Sample(Box::new(s)),
                            (None, Some(reason)) => Row::Dropped(reason),
                            (None, None) => continue,
                        };
                        let repeat = last.as_deref() != Some(&input) && rows.contains_key(&input);
                        if !repeat {
                            rows.entry(input.clone()).or_default().push(row);
                        }
                        last = Some(input);
                    }
                }
                Memo::Rows(rows)
            }
        })
    }

    fn has(&self, id: &str) -> bool {
        match self {
            Memo::Decisions(m) => m.contains_key(id),
            Memo::Rows(m) => m.contains_key(id),
        }
    }
}

/// Counts of one unit.
#[derive(Default)]
struct Tally {
    cached: u64,
    run: u64,
    out: u64,
    dropped: std::collections::BTreeMap<String, u64>,
    changed: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_insert(0) += 1;
    }

    fn changed(&mut self, stage: &dyn Stage, input: &Sample, output: &Sample) {
        for (kind, n) in stage.changes(input, output) {
            if n > 0 {
                *self.changed.entry(kind.to_string()).or_insert(0) += n;
            }
        }
    }
}

/// Runs `stage` over `view`, reusing `memo` (the slot's earlier output) where it can.
pub fn run(
    spec: &UnitSpec,
    root: &Path,
    stage: &dyn Stage,
    view: &View,
    memo: Option<&FileInfo>,
) -> Result<Produced> {
    let kind = stage.kind();
    let memo = match memo {
        Some(f) => Some(Memo::load(root, kind, f)?),
        None => None,
    };
    let projection = if stage.reads_lineage() {
        Projection::Full
    } else {
        Projection::Content
    };
    let mut reader = view.open(root, projection)?;
    let rel = spec.file(".parquet");
    let mut w = create_shard(root, &rel)?;
    let mut t = Tally::default();
    let at_once = stage.inputs_at_once();
    loop {
        let mut entries = Vec::new();
        while entries.len() < at_once {
            match reader.next_entries()? {
                Some(more) => entries.extend(more),
                None => break,
            }
        }
        if entries.is_empty() {
            break;
        }
        let inputs = view.samples(root, &entries)?;
        let todo: Vec<&Sample> = inputs
            .iter()
            .copied()
            .filter(|s| !memo.as_ref().is_some_and(|m| m.has(&s.id)))
            .collect();
        let place = UnitPlace {
            root,
            stage: &spec.stage,
            slot: &spec.slot,
        };
        let computed: Vec<Outcome> = stage.process_unit(&place, &todo)?;
        if computed.len() != todo.len() {
            return Err(Error::stage(
                &spec.stage,
                "the stage returned a different number of results than it was given inputs",
            ));
        }
        let mut computed = computed.into_iter();
        for s in inputs {
            let outcome = match &memo {
                Some(m) if m.has(&s.id) => {
                    t.cached += 1;
                    write_memo(&mut w, &mut t, stage, m, s)?;
                    continue;
                }
                _ => computed.next().unwrap_or(Outcome::Keep),
            };
            t.run += 1;
            write_outcome(&mut w, &mut t, stage, s, outcome, &spec.stage)?;
        }
    }
    let info = finish_shard(w, &rel)?;
    let out_view = match kind {
        Kind::Filter => view.filtered(info.clone(), t.out),
        Kind::Transform => View {
            slot: view.slot.clone(),
            base: info.clone(),
            filters: Vec::new(),
            rows: t.out,
        },
    };
    Ok(Produced {
        files: vec![info],
        views: vec![out_view],
        rows_in: view.rows,
        rows_out: t.out,
        cached: t.cached,
        run: t.run,
        dropped: t.dropped,
        changed: t.changed,
    })
}

fn write_outcome(
    w: &mut ShardWriter,
    t: &mut Tally,
    stage: &dyn Stage,
    s: &Sample,
    outcome: Outcome,
    name: &str,
) -> Result<()> {
    match (stage.kind(), outcome) {
        (Kind::Filter, Outcome::Keep) => {
            w.push_decision(&s.id, None)?;
            t.out += 1;
        }
        (Kind::Filter, Outcome::Drop(reason)) => {
            w.push_decision(&s.id, Some(&reason))?;
            t.drop(&reason);
        }
        (Kind::Filter, Outcome::Emit(_)) => {
            return Err(Error::stage(
                name,
                "a filter stage made new samples; it may only keep or drop",
            ))
        }
        (Kind::Transform, Outcome::Keep) => {
            w.push_sample(s, Some(&s.id))?;
            t.out += 1;
        }
        (Kind::Transform, Outcome::Emit(samples)) => {
            for out in &samples {
                w.push_sample(out, Some(&s.id))?;
                t.changed(stage, s, out);
            }
            t.out += samples.len() as u64;
        }
        (Kind::Transform, Outcome::Drop(reason)) => {
            w.push_tombstone(&s.id, &reason)?;
            t.drop(&reason);
        }
    }
    Ok(())
}

fn write_memo(
    w: &mut ShardWriter,
    t: &mut Tally,
    stage: &dyn Stage,
    memo: &Memo,
    s: &Sample,
) -> Result<()> {
    match memo {
        Memo::Decisions(m) => {
            let d = m.get(&s.id).and_then(|d| d.as_deref());
            w.push_decision(&s.id, d)?;
            match d {
                Some(reason) => t.drop(reason),
                None => t.out += 1,
            }
        }
        Memo::Rows(m) => {
            for row in m.get(&s.id).map(Vec::as_slice).unwrap_or_default() {
                match row {
                    Row::Sample(out) => {
                        w.push_sample(out, Some(&s.id))?;
                        t.changed(stage, s, out);
                        t.out += 1;
                    }
                    Row::Dropped(reason) => {
                        w.push_tombstone(&s.id, reason)?;
                        t.drop(reason);
                    }
                }
            }
        }
    }
    Ok(())
}
