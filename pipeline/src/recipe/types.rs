//! The recipe's declared types (serde, strict: unknown keys are errors), one per section, and
//! the diagnostics that report problems in them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// An LLM engine, used by the generation stages: the same settings `phiforge generate` takes.
pub use engines::config::EngineConfig;

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
    /// The edit rule: items copied with words changed, found by word alignment, are dropped as
    /// `edited` (default on).
    #[serde(default)]
    pub edit_rule: Option<bool>,
    /// Alignment similarity (1 - edits / words) at or above which a copy is edited (default 0.75).
    #[serde(default)]
    pub edit_threshold: Option<f64>,
    /// Remove partial matches too (default: only contaminated and edited samples are dropped).
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
            edit_rule: None,
            edit_threshold: None,
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
            edit_rule: self.edit_rule.unwrap_or(d.edit_rule),
            edit_threshold: self.edit_threshold.unwrap_or(d.edit_threshold),
            ..d
        }
    }
}

/// Mixing: weights by class (by tokens), the target size, what a short class does, and the token
/// shards' tokenizer and size. A recipe with a `mix` section mixes its final stages' samples after
/// every build (see `crate::mix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    #[serde(default = "default_weights")]
    pub weights: BTreeMap<MixClass, f64>,
    #[serde(default)]
    pub target_tokens: Option<u64>,
    /// Per class: `{repeat: {max_epochs: N}}`, `fail` or `renormalise` (default: synthetic repeats
    /// up to 14 epochs, the other classes fail).
    #[serde(default)]
    pub policies: BTreeMap<MixClass, mixes::plan::Policy>,
    /// `phi4` (Phi-4's tokenizer, offline), or the path of a `tokenizer.json`.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// Tokens per token shard (a shard is held in memory while it is written).
    #[serde(default = "default_shard_tokens")]
    pub shard_tokens: u64,
    /// Also write Megatron-LM's indexed dataset (`megatron.bin` + `megatron.idx`).
    #[serde(default = "yes")]
    pub megatron: bool,
}

fn default_weights() -> BTreeMap<MixClass, f64> {
    MixClass::ALL
        .iter()
        .map(|c| (*c, c.default_weight()))
        .collect()
}

fn default_tokenizer() -> String {
    "phi4".into()
}

fn default_shard_tokens() -> u64 {
    1 << 26
}

fn yes() -> bool {
    true
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            weights: default_weights(),
            target_tokens: None,
            policies: BTreeMap::new(),
            tokenizer: default_tokenizer(),
            shard_tokens: default_shard_tokens(),
            megatron: true,
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

/// Training on the mixed shards: the trainer's own settings (see docs/training.md).
pub use trainer::TrainConfig;

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

/// Computes each sample's quality signals and stores them with it (docs/curation.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsStage {
    pub name: String,
    pub inputs: Vec<String>,
}

/// Keeps the samples for which every rule holds: the rules of `presets` in order, then the SQL
/// condition `where` over the signal columns and the sample's fields (docs/curation.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStage {
    pub name: String,
    pub inputs: Vec<String>,
    /// Published rule sets: `gopher`, `gopher_quality`, `gopher_repetition`, `c4`, `fineweb`.
    #[serde(default)]
    pub presets: Vec<String>,
    /// A SQL condition the kept samples meet.
    #[serde(default, rename = "where")]
    pub condition: Option<String>,
}

/// Replaces e-mail addresses, IP addresses and phone numbers with placeholders; each kind can
/// be turned off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiStage {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(default = "yes")]
    pub email: bool,
    #[serde(default = "yes")]
    pub ip: bool,
    #[serde(default = "yes")]
    pub phone: bool,
}

/// Near-duplicate removal across all its inputs (MinHash, LSH, exact Jaccard, clusters): the
/// first sample of each cluster is kept (docs/curation.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearDupStage {
    pub name: String,
    pub inputs: Vec<String>,
    /// `shingle`, `bands`, `rows`, `threshold`, `verify`, `seed`, `memory_mb`: FineWeb's
    /// setting (5-word shingles, 14 bands of 8) verified at Jaccard 0.5 by default.
    #[serde(default)]
    pub minhash: dedup::neardup::Settings,
}

/// Rewrites each sample's text with a MiniJinja template (`{{ text }}`, `{{ id }}`, `{{ class }}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateStage {
    pub name: String,
    pub inputs: Vec<String>,
    pub template: String,
}

/// Rewrites organic documents into textbook-like passages with an LLM (the `agents` crate's
/// web-rewrite flow); its settings sit beside `name` and `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebRewriteStage {
    pub name: String,
    pub inputs: Vec<String>,
    /// The class of the rewrites (default `web_rewrite`).
    #[serde(default = "web_rewrite_class")]
    pub class: MixClass,
    /// Quality gates on what the flow made (length, refusals, boilerplate, duplicates).
    #[serde(default)]
    pub gates: agents::gates::Gates,
    #[serde(flatten)]
    pub flow: agents::web_rewrite::WebRewriteConfig,
    /// Keys neither the stage nor the flow knows (reported as unknown fields).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

fn web_rewrite_class() -> MixClass {
    MixClass::WebRewrite
}

/// Drafts, critiques and revises with an LLM (the `agents` crate's self-revision flow); its
/// settings sit beside `name` and `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfReviseStage {
    pub name: String,
    pub inputs: Vec<String>,
    /// The class of the kept drafts (default `synthetic`).
    #[serde(default = "synthetic_class")]
    pub class: MixClass,
    /// Quality gates on what the flow made (length, refusals, boilerplate, duplicates).
    #[serde(default)]
    pub gates: agents::gates::Gates,
    #[serde(flatten)]
    pub flow: agents::self_revision::SelfRevisionConfig,
    /// Keys neither the stage nor the flow knows (reported as unknown fields).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Questions written, solved and checked by several LLM agents (the `agents` crate's multi-agent
/// flow); its settings sit beside `name` and `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiAgentStage {
    pub name: String,
    pub inputs: Vec<String>,
    /// The class of the kept samples (default `synthetic`).
    #[serde(default = "synthetic_class")]
    pub class: MixClass,
    /// Quality gates on what the flow made (length, refusals, boilerplate, duplicates).
    #[serde(default)]
    pub gates: agents::gates::Gates,
    #[serde(flatten)]
    pub flow: agents::multi_agent::MultiAgentConfig,
    /// Keys neither the stage nor the flow knows (reported as unknown fields).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Instructions written for existing outputs and checked by regenerating them (the `agents`
/// crate's instruction-reversal flow); its settings sit beside `name` and `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionReversalStage {
    pub name: String,
    pub inputs: Vec<String>,
    /// The class of the kept pairs (default `synthetic`).
    #[serde(default = "synthetic_class")]
    pub class: MixClass,
    /// Quality gates on what the flow made (length, refusals, boilerplate, duplicates).
    #[serde(default)]
    pub gates: agents::gates::Gates,
    #[serde(flatten)]
    pub flow: agents::instruction_reversal::InstructionReversalConfig,
    /// Keys neither the stage nor the flow knows (reported as unknown fields).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

fn synthetic_class() -> MixClass {
    MixClass::Synthetic
}

/// A stage of the build, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageConfig {
    DedupExact(DedupExactStage),
    #[serde(rename = "near_dup")]
    NearDup(NearDupStage),
    Decontaminate(DecontaminateStage),
    Signals(SignalsStage),
    Filter(FilterStage),
    Pii(PiiStage),
    Template(TemplateStage),
    WebRewrite(WebRewriteStage),
    SelfRevise(SelfReviseStage),
    MultiAgent(MultiAgentStage),
    InstructionReversal(InstructionReversalStage),
}

impl StageConfig {
    pub fn name(&self) -> &str {
        match self {
            StageConfig::DedupExact(s) => &s.name,
            StageConfig::NearDup(s) => &s.name,
            StageConfig::Decontaminate(s) => &s.name,
            StageConfig::Signals(s) => &s.name,
            StageConfig::Filter(s) => &s.name,
            StageConfig::Pii(s) => &s.name,
            StageConfig::Template(s) => &s.name,
            StageConfig::WebRewrite(s) => &s.name,
            StageConfig::SelfRevise(s) => &s.name,
            StageConfig::MultiAgent(s) => &s.name,
            StageConfig::InstructionReversal(s) => &s.name,
        }
    }

    pub fn inputs(&self) -> &[String] {
        match self {
            StageConfig::DedupExact(s) => &s.inputs,
            StageConfig::NearDup(s) => &s.inputs,
            StageConfig::Decontaminate(s) => &s.inputs,
            StageConfig::Signals(s) => &s.inputs,
            StageConfig::Filter(s) => &s.inputs,
            StageConfig::Pii(s) => &s.inputs,
            StageConfig::Template(s) => &s.inputs,
            StageConfig::WebRewrite(s) => &s.inputs,
            StageConfig::SelfRevise(s) => &s.inputs,
            StageConfig::MultiAgent(s) => &s.inputs,
            StageConfig::InstructionReversal(s) => &s.inputs,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            StageConfig::DedupExact(_) => "dedup_exact",
            StageConfig::NearDup(_) => "near_dup",
            StageConfig::Decontaminate(_) => "decontaminate",
            StageConfig::Signals(_) => "signals",
            StageConfig::Filter(_) => "filter",
            StageConfig::Pii(_) => "pii",
            StageConfig::Template(_) => "template",
            StageConfig::WebRewrite(_) => "web_rewrite",
            StageConfig::SelfRevise(_) => "self_revise",
            StageConfig::MultiAgent(_) => "multi_agent",
            StageConfig::InstructionReversal(_) => "instruction_reversal",
        }
    }
}

/// A whole recipe, as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub seed: u64,
    pub sources: BTreeMap<String, Source>,
    pub engines: BTreeMap<String, EngineConfig>,
    pub stages: Vec<StageConfig>,
    pub decontaminate: DecontaminateConfig,
    /// Absent: the build does not mix.
    pub mix: Option<MixConfig>,
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

pub(crate) fn resolve(dir: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() || dir.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}
