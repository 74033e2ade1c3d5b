//! Checks of a recipe beyond its types: names, references, cycles, values, source files and
//! benchmarks. Each problem is recorded with its place; all are reported at once.

use super::types::*;
use crate::yaml::Marks;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub(super) struct Checker<'a> {
    pub(super) file: &'a Path,
    pub(super) marks: &'a Marks,
    pub(super) found: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        let m = self.marks.find(path);
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: m.line,
            col: m.col,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Deserialises `value` (found at `path`) as `T`, recording a failure where it happened.
    pub(super) fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        value: &Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match (path, inner.as_str()) {
                    (p, ".") | (p, "") => p.to_string(),
                    ("", i) => i.to_string(),
                    (p, i) if i.starts_with('[') => format!("{p}{i}"),
                    (p, i) => format!("{p}.{i}"),
                };
                self.error(&full, e.into_inner().to_string());
                None
            }
        }
    }

    /// Reads an optional section, defaulting when absent.
    pub(super) fn section<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        root: &Value,
        key: &str,
    ) -> T {
        match root.get(key) {
            None | Some(Value::Null) => T::default(),
            Some(v) => self.typed(key, v).unwrap_or_default(),
        }
    }

    /// Reads a map section entry by entry, so each bad entry is reported.
    pub(super) fn map<T: serde::de::DeserializeOwned>(
        &mut self,
        root: &Value,
        key: &str,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        match root.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, v) in m {
                    if let Some(t) = self.typed(&format!("{key}.{name}"), v) {
                        out.insert(name.clone(), t);
                    }
                }
            }
            Some(_) => self.error(key, "expected a mapping of names to definitions"),
        }
        out
    }
}

/// Source paths must match files; read from the raw values, so a source with another problem
/// still has its path checked.
pub(super) fn check_sources(c: &mut Checker, root: &Value, dir: &Path) {
    let Some(Value::Object(sources)) = root.get("sources") else {
        return;
    };
    for (name, s) in sources {
        let Some(Value::String(rel)) = s.get("path") else {
            continue;
        };
        let path = resolve(dir, rel);
        let pattern = path.to_string_lossy().into_owned();
        match corpus::expand_inputs(&[pattern]) {
            Err(e) => c.error(&format!("sources.{name}.path"), e.to_string()),
            Ok(files) => {
                // Every file must be of a kind phiforge reads, and of the declared format.
                let declared = s
                    .get("format")
                    .and_then(|f| serde_json::from_value::<SourceFormat>(f.clone()).ok());
                for f in &files {
                    match (corpus::Format::detect(f), declared) {
                        (Err(e), _) => {
                            c.error(&format!("sources.{name}.path"), e.to_string());
                            break;
                        }
                        (Ok(found), Some(want)) if !format_matches(found, want) => {
                            c.error(
                                &format!("sources.{name}.format"),
                                format!("`{}` is not {want:?} (told from its name)", f.display()),
                            );
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn format_matches(found: corpus::Format, want: SourceFormat) -> bool {
    matches!(
        (found, want),
        (corpus::Format::JsonLines(_), SourceFormat::Jsonl)
            | (corpus::Format::Parquet, SourceFormat::Parquet)
            | (
                corpus::Format::Text | corpus::Format::TextDir,
                SourceFormat::Text
            )
    )
}

/// Names the build writes to disk: output folders, unit folders.
const RESERVED: &[&str] = &[
    "slurm",
    "store.sqlite",
    "report.json",
    "report.txt",
    "manifest.json",
];

/// Source and stage names name folders, so they are kept to letters, digits, `_`, `-` and `.`.
pub(super) fn check_names(c: &mut Checker, sources: &[String], stages: &[(usize, StageConfig)]) {
    let bad = |name: &str| -> Option<String> {
        let ok = name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
        if name.is_empty() {
            None // reported as a missing name
        } else if !ok || name.starts_with(['.', '-']) {
            Some(format!("`{name}`: a name may hold letters, digits, `_`, `-` and `.`, and starts with a letter, digit or `_` (it names folders)"))
        } else if RESERVED.contains(&name) {
            Some(format!(
                "`{name}` is a name the build itself writes in the output folder; choose another"
            ))
        } else {
            None
        }
    };
    for name in sources {
        if let Some(m) = bad(name) {
            c.error(&format!("sources.{name}"), m);
        }
    }
    for (i, s) in stages {
        if let Some(m) = bad(s.name()) {
            c.error(&format!("stages[{i}].name"), m);
        }
    }
}

pub(super) fn check_stages(c: &mut Checker, sources: &[String], stages: &[(usize, StageConfig)]) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, s) in stages {
        let name = s.name();
        if name.is_empty() {
            c.error(&format!("stages[{i}].name"), "a stage needs a name");
        } else if sources.iter().any(|s| s == name) {
            c.error(
                &format!("stages[{i}].name"),
                format!("`{name}` is already a source's name"),
            );
        } else if let Some(first) = names.insert(name, *i) {
            c.error(
                &format!("stages[{i}].name"),
                format!("`{name}` is already the name of stages[{first}]"),
            );
        }
        if s.inputs().is_empty() {
            c.error(
                &format!("stages[{i}].inputs"),
                "a stage needs at least one input",
            );
        }
        for (j, input) in s.inputs().iter().enumerate() {
            if s.inputs()[..j].contains(input) {
                c.error(
                    &format!("stages[{i}].inputs[{j}]"),
                    format!("`{input}` is listed twice"),
                );
            }
        }
    }
    let known: Vec<&str> = sources
        .iter()
        .map(String::as_str)
        .chain(names.keys().copied())
        .collect();
    for (i, s) in stages {
        for (j, input) in s.inputs().iter().enumerate() {
            if !sources.contains(input) && !names.contains_key(input.as_str()) {
                let mut known = known.clone();
                known.sort_unstable();
                c.error(
                    &format!("stages[{i}].inputs[{j}]"),
                    format!(
                        "unknown input `{input}` (sources and stages: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    // Cycles among stages, reported once each with their path.
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(k, (_, s))| (s.name(), k))
        .collect();
    let mut state = vec![0u8; stages.len()]; // 0 new, 1 on the stack, 2 done
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        k: usize,
        stages: &[(usize, StageConfig)],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        state[k] = 1;
        stack.push(k);
        for input in stages[k].1.inputs() {
            if let Some(&d) = index.get(input.as_str()) {
                match state[d] {
                    0 => visit(d, stages, index, state, stack, cycles),
                    1 => {
                        let from = stack.iter().position(|&x| x == d).unwrap_or(0);
                        cycles.push(stack[from..].to_vec());
                    }
                    _ => {}
                }
            }
        }
        stack.pop();
        state[k] = 2;
    }
    let mut cycles = Vec::new();
    for k in 0..stages.len() {
        if state[k] == 0 {
            visit(k, stages, &index, &mut state, &mut stack, &mut cycles);
        }
    }
    for cycle in cycles {
        let mut names: Vec<&str> = cycle.iter().map(|&k| stages[k].1.name()).collect();
        names.reverse();
        names.push(names[0]);
        let first = cycle.iter().map(|&k| stages[k].0).min().unwrap_or(0);
        c.error(
            &format!("stages[{first}].inputs"),
            format!("cycle: {}", names.join(" -> ")),
        );
    }
}

pub(super) fn check_values(
    c: &mut Checker,
    decont: &DecontaminateConfig,
    mix: Option<&MixConfig>,
    output: Option<&OutputConfig>,
    stages: &[(usize, StageConfig)],
    engines: &[String],
    dir: &Path,
) {
    if let Err(e) = decont.settings().validate() {
        c.error("decontaminate", e.to_string());
    }
    let mut benchmark_lists = vec![("decontaminate.benchmarks".to_string(), &decont.benchmarks)];
    for (i, s) in stages {
        match s {
            StageConfig::Decontaminate(d) => {
                if let Some(b) = &d.benchmarks {
                    benchmark_lists.push((format!("stages[{i}].benchmarks"), b));
                }
            }
            StageConfig::Template(t) => {
                let env = minijinja::Environment::new();
                if let Err(e) = env.template_from_str(&t.template) {
                    c.error(&format!("stages[{i}].template"), format!("template: {e}"));
                }
            }
            StageConfig::WebRewrite(w) => {
                let refs = [("engine", Some(&w.flow.engine))];
                check_flow(
                    c,
                    *i,
                    &w.unknown,
                    &refs,
                    engines,
                    w.flow.problems(),
                    &w.gates,
                );
            }
            StageConfig::SelfRevise(w) => {
                let refs = [
                    ("engine", Some(&w.flow.engine)),
                    ("critic_engine", w.flow.critic_engine.as_ref()),
                ];
                check_flow(
                    c,
                    *i,
                    &w.unknown,
                    &refs,
                    engines,
                    w.flow.problems(),
                    &w.gates,
                );
            }
            StageConfig::MultiAgent(m) => {
                let refs: Vec<(String, Option<&String>)> = m
                    .flow
                    .engine_refs()
                    .into_iter()
                    .map(|(f, e)| (f, Some(e)))
                    .collect();
                check_flow(
                    c,
                    *i,
                    &m.unknown,
                    &refs,
                    engines,
                    m.flow.problems(),
                    &m.gates,
                );
            }
            StageConfig::InstructionReversal(r) => {
                let refs = [("engine", Some(&r.flow.engine))];
                check_flow(
                    c,
                    *i,
                    &r.unknown,
                    &refs,
                    engines,
                    r.flow.problems(),
                    &r.gates,
                );
            }
            StageConfig::Filter(f) => {
                if f.presets.is_empty() && f.condition.is_none() {
                    c.error(
                        &format!("stages[{i}]"),
                        "a filter needs `presets`, `where` or both",
                    );
                }
                for (j, p) in f.presets.iter().enumerate() {
                    if curate::presets::preset(p).is_none() {
                        let known = curate::presets::PRESETS.join(", ");
                        c.error(
                            &format!("stages[{i}].presets[{j}]"),
                            format!("unknown preset `{p}` (known: {known})"),
                        );
                    }
                }
                if let Some(w) = &f.condition {
                    let fields = crate::stages::curation::FIELDS;
                    if let Err(e) = curate::Filter::of(&fields, &[], Some(w)) {
                        c.error(&format!("stages[{i}].where"), e.to_string());
                    }
                }
            }
            StageConfig::Pii(p) => {
                if !(p.email || p.ip || p.phone) {
                    c.error(
                        &format!("stages[{i}]"),
                        "email, ip and phone are all off: the stage would change nothing",
                    );
                }
            }
            StageConfig::NearDup(n) => {
                if let Err(e) = n.minhash.check() {
                    c.error(&format!("stages[{i}].minhash"), e.to_string());
                }
            }
            StageConfig::DedupExact(_) | StageConfig::Signals(_) => {}
        }
    }
    for (path, list) in benchmark_lists {
        for (j, b) in list.iter().enumerate() {
            // Resolved as the stage resolves it: a file or folder beside the recipe, else a
            // bundled set.
            if let Err(e) = dedup::benchmark::resolve(b, Some(dir)) {
                c.error(&format!("{path}[{j}]"), e.to_string());
            }
        }
    }
    if let Some(mix) = mix {
        check_mix(c, mix, dir);
    }
    if let Some(o) = output {
        if o.path.trim().is_empty() {
            c.error("output.path", "must name a folder");
        }
        if o.shards == 0 {
            c.error("output.shards", "must be at least 1");
        }
    }
}

/// A generation stage's unknown keys, engine references and flow settings.
fn check_flow<R: std::fmt::Display, P: std::fmt::Display>(
    c: &mut Checker,
    i: usize,
    unknown: &std::collections::BTreeMap<String, serde_json::Value>,
    refs: &[(R, Option<&String>)],
    engines: &[String],
    problems: Vec<(P, String)>,
    gates: &agents::gates::Gates,
) {
    for key in unknown.keys() {
        c.error(
            &format!("stages[{i}].{key}"),
            format!("unknown field `{key}` of this stage type"),
        );
    }
    for (field, name) in refs {
        let Some(name) = name else { continue };
        if !engines.contains(name) {
            let declared = if engines.is_empty() {
                "none".to_string()
            } else {
                engines.join(", ")
            };
            c.error(
                &format!("stages[{i}].{field}"),
                format!("unknown engine `{name}`; the recipe's `engines` declares: {declared}"),
            );
        }
    }
    for (field, message) in problems {
        c.error(&format!("stages[{i}].{field}"), message);
    }
    for (field, message) in gates.problems() {
        c.error(&format!("stages[{i}].{field}"), message);
    }
}

fn check_mix(c: &mut Checker, mix: &MixConfig, dir: &Path) {
    for (class, w) in &mix.weights {
        if !(w.is_finite() && *w >= 0.0) {
            c.error(
                &format!("mix.weights.{}", class.as_str()),
                format!("a weight must be 0 or more, got {w}"),
            );
        }
    }
    let sum: f64 = mix.weights.values().sum();
    if mix.weights.values().all(|w| w.is_finite() && *w >= 0.0) && (sum - 1.0).abs() > 1e-6 {
        c.error(
            "mix.weights",
            format!("the weights must sum to 1; they sum to {sum}"),
        );
    }
    if mix.target_tokens == Some(0) {
        c.error("mix.target_tokens", "must be more than 0");
    }
    for (class, p) in &mix.policies {
        if let mixes::plan::Policy::Repeat { max_epochs } = p {
            if !(max_epochs.is_finite() && *max_epochs >= 1.0) {
                c.error(
                    &format!("mix.policies.{}.repeat.max_epochs", class.as_str()),
                    format!("must be at least 1, got {max_epochs}"),
                );
            }
        }
    }
    if mix.shard_tokens == 0 {
        c.error("mix.shard_tokens", "must be more than 0");
    }
    if mix.tokenizer != "phi4" && !resolve(dir, &mix.tokenizer).is_file() {
        c.error(
            "mix.tokenizer",
            format!(
                "`{}` is neither `phi4` nor a tokenizer.json file",
                mix.tokenizer
            ),
        );
    }
}
