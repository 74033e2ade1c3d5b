//! Recipes: one YAML file that declares a dataset build.
//!
//! The declared configuration (these serde types, strict: unknown keys are errors) is separate from
//! the running stages made from it. [`Recipe::load`] checks everything it can without running —
//! types, unknown keys, dangling references, cycles, bad values, missing source files — and reports
//! every problem at once, each with file, line, column and field path. The format is documented
//! field by field in `docs/recipe.md`.

use crate::yaml::{self, Marks};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

pub use corpus::sample::MixClass;

/// Formats a source may declare (else told from the file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    Jsonl,
    Parquet,
    Text,
}

/// Documents read into the build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A file, folder or glob, relative to the recipe's folder.
    pub path: String,
    /// The format; by default told from each file's name.
    #[serde(default)]
    pub format: Option<SourceFormat>,
    /// The text field (a chat `messages` array is kept as messages).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// The id field, kept as the sample's `source_id`.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// The mix class of every document of this source.
    pub class: MixClass,
}

fn default_text_field() -> String {
    "text".into()
}
fn default_id_field() -> String {
    "id".into()
}

/// An LLM engine, used by the generation stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Engine {
    /// Any OpenAI-compatible server (vLLM, SGLang, llama.cpp).
    Openai {
        model: String,
        endpoints: Vec<String>,
        /// Name of the environment variable holding the API key (never the key itself).
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default)]
        max_concurrency: Option<u32>,
    },
    /// The built-in candle engine on a local model folder or GGUF file.
    Local {
        model: String,
        #[serde(default)]
        device: Option<String>,
    },
}

/// Decontamination settings (the defaults are the `dedup` crate's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecontaminateConfig {
    /// `standard`, bundled names, or files/folders relative to the recipe.
    #[serde(default = "default_benchmarks")]
    pub benchmarks: Vec<String>,
    #[serde(default)]
    pub info_threshold: Option<f64>,
    #[serde(default)]
    pub contamination_threshold: Option<f64>,
    #[serde(default)]
    pub allow_min_items: Option<usize>,
    /// Remove partial matches too (default: only contaminated samples are dropped).
    #[serde(default)]
    pub remove_partial: bool,
}

fn default_benchmarks() -> Vec<String> {
    vec!["standard".into()]
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        DecontaminateConfig {
            benchmarks: default_benchmarks(),
            info_threshold: None,
            contamination_threshold: None,
            allow_min_items: None,
            remove_partial: false,
        }
    }
}

impl DecontaminateConfig {
    /// The rule settings these fields make.
    pub fn settings(&self) -> dedup::index::Settings {
        let d = dedup::index::Settings::default();
        dedup::index::Settings {
            info_threshold: self.info_threshold.unwrap_or(d.info_threshold),
            contamination_threshold: self
                .contamination_threshold
                .unwrap_or(d.contamination_threshold),
            allow_min_items: self.allow_min_items.unwrap_or(d.allow_min_items),
            ..d
        }
    }
}

/// Mixing: weights by class (by tokens) and the target size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    #[serde(default = "default_weights")]
    pub weights: BTreeMap<MixClass, f64>,
    #[serde(default)]
    pub target_tokens: Option<u64>,
}

fn default_weights() -> BTreeMap<MixClass, f64> {
    MixClass::ALL
        .iter()
        .map(|c| (*c, c.default_weight()))
        .collect()
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            weights: default_weights(),
            target_tokens: None,
        }
    }
}

/// The file format of a build's final outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Parquet, zstd-compressed: `id`, `class`, `text`, `messages`, `lineage` (JSON).
    #[default]
    Parquet,
    /// JSON lines, one sample per line.
    Jsonl,
}

impl OutputFormat {
    /// The output files' extension.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Jsonl => "jsonl",
        }
    }
}

/// Where the build writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The output folder, relative to the recipe (the store lives in `PATH/store.sqlite`).
    pub path: String,
    /// Output shards: each final stage's samples are split into this many files.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// The final outputs' format.
    #[serde(default)]
    pub format: OutputFormat,
}

fn default_shards() -> usize {
    1
}

/// How a build splits and runs its work. None of it changes what a build writes, so none of it is
/// part of a fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Megabytes of text per unit of work: a source file is cut into parts of this size, and each
    /// part is one unit of every per-sample stage after it.
    #[serde(default = "default_unit_mb")]
    pub unit_mb: f64,
    /// Rows whose ids one exact-dedup task holds at once; more rows are split by id hash into
    /// partitions of this size, one task each.
    #[serde(default = "default_partition_rows")]
    pub dedup_partition_rows: u64,
    /// Settings of `--executor slurm`.
    #[serde(default)]
    pub slurm: SlurmConfig,
}

fn default_unit_mb() -> f64 {
    16.0
}
fn default_partition_rows() -> u64 {
    4_000_000
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            unit_mb: default_unit_mb(),
            dedup_partition_rows: default_partition_rows(),
            slurm: SlurmConfig::default(),
        }
    }
}

impl ExecutionConfig {
    /// Text bytes per unit.
    pub fn unit_bytes(&self) -> u64 {
        ((self.unit_mb * 1e6) as u64).max(1)
    }
}

/// Settings of the Slurm executor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// Tasks per job array (default: the cluster's `MaxArraySize` less one, from `scontrol`).
    #[serde(default)]
    pub max_array_size: Option<u32>,
    /// Extra `sbatch` arguments (`--partition=cpu`, `--time=2:00:00`, `--mem=8G`, ...).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
}

/// Training on the mixed shards (used by the trainer; checked here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub sequence_length: Option<u32>,
    #[serde(default)]
    pub learning_rate: Option<f64>,
}

/// Exact deduplication by content id: the first sample of each content is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupExactStage {
    pub name: String,
    pub inputs: Vec<String>,
}

/// Drops samples that overlap benchmarks (settings default to the recipe's `decontaminate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecontaminateStage {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(default)]
    pub benchmarks: Option<Vec<String>>,
    #[serde(default)]
    pub remove_partial: Option<bool>,
}

/// Rewrites each sample's text with a MiniJinja template (`{{ text }}`, `{{ id }}`, `{{ class }}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateStage {
    pub name: String,
    pub inputs: Vec<String>,
    pub template: String,
}

/// A stage of the build, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageConfig {
    DedupExact(DedupExactStage),
    Decontaminate(DecontaminateStage),
    Template(TemplateStage),
}

impl StageConfig {
    pub fn name(&self) -> &str {
        match self {
            StageConfig::DedupExact(s) => &s.name,
            StageConfig::Decontaminate(s) => &s.name,
            StageConfig::Template(s) => &s.name,
        }
    }

    pub fn inputs(&self) -> &[String] {
        match self {
            StageConfig::DedupExact(s) => &s.inputs,
            StageConfig::Decontaminate(s) => &s.inputs,
            StageConfig::Template(s) => &s.inputs,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            StageConfig::DedupExact(_) => "dedup_exact",
            StageConfig::Decontaminate(_) => "decontaminate",
            StageConfig::Template(_) => "template",
        }
    }
}

/// A whole recipe, as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub seed: u64,
    pub sources: BTreeMap<String, Source>,
    pub engines: BTreeMap<String, Engine>,
    pub stages: Vec<StageConfig>,
    pub decontaminate: DecontaminateConfig,
    pub mix: MixConfig,
    pub output: OutputConfig,
    pub train: Option<TrainConfig>,
    pub execution: ExecutionConfig,
    /// The recipe file's folder: relative paths are resolved against it.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The field path (`stages[1].inputs[0]`); empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a recipe, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the recipe:",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.0 {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

const TOP_LEVEL: &[&str] = &[
    "name",
    "seed",
    "sources",
    "engines",
    "stages",
    "decontaminate",
    "mix",
    "output",
    "train",
    "execution",
];

/// Collects diagnostics while reading a recipe.
struct Checker<'a> {
    file: &'a Path,
    marks: &'a Marks,
    found: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
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
    fn typed<T: serde::de::DeserializeOwned>(&mut self, path: &str, value: &Value) -> Option<T> {
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
    fn section<T: serde::de::DeserializeOwned + Default>(&mut self, root: &Value, key: &str) -> T {
        match root.get(key) {
            None | Some(Value::Null) => T::default(),
            Some(v) => self.typed(key, v).unwrap_or_default(),
        }
    }

    /// Reads a map section entry by entry, so each bad entry is reported.
    fn map<T: serde::de::DeserializeOwned>(
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

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                path: String::new(),
                message: format!("cannot read the recipe: {e}"),
            }])
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Recipe::parse(&text, path, &dir)
    }

    /// Checks recipe `text`; `file` names it in diagnostics and `dir` resolves its paths.
    pub fn parse(text: &str, file: &Path, dir: &Path) -> Result<Recipe, Diagnostics> {
        let (root, marks) = yaml::parse(text).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: file.to_path_buf(),
                line: e.mark.line,
                col: e.mark.col,
                path: String::new(),
                message: format!("YAML: {}", e.message),
            }])
        })?;
        let mut c = Checker {
            file,
            marks: &marks,
            found: Vec::new(),
        };
        let Value::Object(top) = &root else {
            c.error(
                "",
                "a recipe is a mapping with `name`, `sources`, `stages`, `output`, ...",
            );
            return Err(Diagnostics(c.found));
        };
        for key in top.keys() {
            if !TOP_LEVEL.contains(&key.as_str()) {
                c.error(
                    key,
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        TOP_LEVEL.join(", ")
                    ),
                );
            }
        }
        let name = match top.get("name") {
            Some(v) => c.typed::<String>("name", v).unwrap_or_default(),
            None => {
                c.error("", "missing field `name`");
                String::new()
            }
        };
        let seed = match top.get("seed") {
            None => 0,
            Some(v) => c.typed::<u64>("seed", v).unwrap_or_default(),
        };
        let sources: BTreeMap<String, Source> = c.map(&root, "sources");
        let engines: BTreeMap<String, Engine> = c.map(&root, "engines");
        let mut stages = Vec::new();
        match top.get("stages") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    if let Some(s) = c.typed::<StageConfig>(&format!("stages[{i}]"), v) {
                        stages.push((i, s));
                    }
                }
            }
            Some(_) => c.error("stages", "expected a list of stages"),
        }
        let decontaminate: DecontaminateConfig = c.section(&root, "decontaminate");
        let mix: MixConfig = c.section(&root, "mix");
        let execution: ExecutionConfig = c.section(&root, "execution");
        let output = match top.get("output") {
            Some(v) => c.typed::<OutputConfig>("output", v),
            None => {
                c.error("", "missing field `output` (where the build writes)");
                None
            }
        };
        let train = match top.get("train") {
            None | Some(Value::Null) => None,
            Some(v) => c.typed::<TrainConfig>("train", v),
        };

        check_sources(&mut c, &root, dir);
        // References are checked against every declared source name, even one that failed to
        // parse, so one mistake is reported once.
        let source_names: Vec<String> = match top.get("sources") {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        check_names(&mut c, &source_names, &stages);
        check_stages(&mut c, &source_names, &stages);
        check_values(&mut c, &decontaminate, &mix, output.as_ref(), &stages, dir);
        if !(execution.unit_mb.is_finite() && execution.unit_mb > 0.0) {
            c.error("execution.unit_mb", "must be more than 0");
        }
        if execution.dedup_partition_rows == 0 {
            c.error("execution.dedup_partition_rows", "must be at least 1");
        }
        if execution.slurm.max_array_size == Some(0) {
            c.error("execution.slurm.max_array_size", "must be at least 1");
        }

        if !c.found.is_empty() {
            let mut found = c.found;
            found.sort_by_key(|d| (d.line, d.col));
            found.dedup();
            return Err(Diagnostics(found));
        }
        Ok(Recipe {
            name,
            seed,
            sources,
            engines,
            stages: stages.into_iter().map(|(_, s)| s).collect(),
            decontaminate,
            mix,
            output: output.unwrap_or(OutputConfig {
                path: String::new(),
                shards: 1,
                format: OutputFormat::Parquet,
            }),
            train,
            execution,
            dir: dir.to_path_buf(),
        })
    }

    /// `rel` resolved against the recipe's folder.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        resolve(&self.dir, rel)
    }
}

fn resolve(dir: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() || dir.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Source paths must match files; read from the raw values, so a source with another problem
/// still has its path checked.
fn check_sources(c: &mut Checker, root: &Value, dir: &Path) {
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
fn check_names(c: &mut Checker, sources: &[String], stages: &[(usize, StageConfig)]) {
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

fn check_stages(c: &mut Checker, sources: &[String], stages: &[(usize, StageConfig)]) {
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

fn check_values(
    c: &mut Checker,
    decont: &DecontaminateConfig,
    mix: &MixConfig,
    output: Option<&OutputConfig>,
    stages: &[(usize, StageConfig)],
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
            StageConfig::DedupExact(_) => {}
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
    for (class, w) in &mix.weights {
        if !(w.is_finite() && *w >= 0.0) {
            c.error(
                &format!("mix.weights.{}", class.as_str()),
                format!("a weight must be 0 or more, got {w}"),
            );
        }
    }
    if mix.weights.values().all(|w| *w >= 0.0) && mix.weights.values().sum::<f64>() <= 0.0 {
        c.error("mix.weights", "the weights must not all be 0");
    }
    if mix.target_tokens == Some(0) {
        c.error("mix.target_tokens", "must be more than 0");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, Diagnostics> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Recipe::parse(text, Path::new("r.yaml"), &dir)
    }

    const GOOD: &str = r#"
name: demo
seed: 3
sources:
  docs:
    path: examples/corpus/python-docs.jsonl.gz
    class: web
stages:
  - name: unique
    type: dedup_exact
    inputs: [docs]
  - name: clean
    type: decontaminate
    inputs: [unique]
mix:
  weights: {web: 1.0}
output:
  path: out/demo
"#;

    #[test]
    fn a_good_recipe_loads_with_defaults() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.name, "demo");
        assert_eq!(r.sources["docs"].class, MixClass::Web);
        assert_eq!(r.sources["docs"].text_field, "text");
        assert_eq!(r.stages[1].inputs(), ["unique"]);
        assert_eq!(r.decontaminate.benchmarks, ["standard"]);
        assert_eq!(r.output.shards, 1);
        // A serde round trip keeps everything.
        let json = serde_json::to_value(&r).unwrap();
        let back: Recipe = serde_json::from_value(json).unwrap();
        assert_eq!(back.stages, r.stages);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_place() {
        let bad = r#"
name: demo
sources:
  docs:
    path: examples/corpus/python-docs.jsonl.gz
    class: webby
  more:
    path: nowhere/*.jsonl
    class: web
    colour: blue
stages:
  - name: a
    type: dedup_exact
    inputs: [b]
  - name: b
    type: dedup_exact
    inputs: [a, ghost]
  - name: c
    type: shuffle
    inputs: [a]
  - name: d
    type: template
    inputs: [a]
    template: "{{ text "
mix:
  weights: {web: -1}
output:
  path: out/x
  shards: 0
extra: 1
"#;
        let d = parse(bad).unwrap_err().0;
        let got: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.path.as_str())).collect();
        let want = [
            (6, "sources.docs.class"),
            (8, "sources.more.path"),
            (10, "sources.more.colour"),
            (14, "stages[0].inputs"),
            (17, "stages[1].inputs[1]"),
            (19, "stages[2].type"),
            (24, "stages[3].template"),
            (26, "mix.weights.web"),
            (29, "output.shards"),
            (30, "extra"),
        ];
        assert_eq!(got, want, "{}", Diagnostics(d.clone()));
        let text = Diagnostics(d).to_string();
        assert!(text.contains("r.yaml:17:"), "{text}");
        assert!(
            text.contains("cycle: a -> b -> a") || text.contains("cycle: b -> a -> b"),
            "{text}"
        );
        assert!(text.contains("unknown input `ghost`"), "{text}");
        assert!(text.contains("unknown variant `shuffle`"), "{text}");
    }
}
