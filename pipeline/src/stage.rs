//! Running stages, made from their declared configuration, and their fingerprints.
//!
//! A stage is small: [`Stage::process`] turns one input sample into its outputs (or a drop with a
//! reason); a stage that must see all its inputs at once (exact dedup, and later mixing) is
//! [`Shape::WholeSet`] and implements [`Stage::process_set`]. New stage types (generation, mixing,
//! training) plug in by implementing this trait and adding a variant to
//! [`crate::recipe::StageConfig`].
//!
//! A stage's fingerprint hashes its canonical configuration, its implementation version, what it
//! reads besides samples (templates, benchmark files) and its inputs' fingerprints; never runtime
//! knobs. Results are cached under (fingerprint, input id), and input ids are content hashes, so a
//! stage reruns exactly for new content and after a change to itself or to anything upstream.

use crate::recipe::{DecontaminateConfig, Recipe, Source, StageConfig};
use crate::sample::{Content, Lineage, Sample, SourceRef};
use crate::store::ItemResult;
use crate::{Error, Result};
use dedup::benchmark::{BenchmarkSet, FieldMap};
use dedup::index::BenchIndex;
use dedup::scan::{Scanner, Verdict};
use serde_json::json;
use std::collections::HashSet;
use std::sync::OnceLock;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// How a stage consumes its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Each input on its own: cached and run per input, spread over units.
    PerItem,
    /// All inputs together: cached and run as one unit.
    WholeSet,
}

/// A running stage.
pub trait Stage: Send + Sync {
    fn shape(&self) -> Shape {
        Shape::PerItem
    }
    /// The outputs of one input.
    fn process(&self, input: &Sample) -> Result<ItemResult>;
    /// The result of each input, for [`Shape::WholeSet`] stages.
    fn process_set(&self, inputs: &[Sample]) -> Result<Vec<ItemResult>> {
        inputs.iter().map(|s| self.process(s)).collect()
    }
}

/// Hex xxh3-128 of a canonical JSON value.
pub fn fingerprint(value: &serde_json::Value) -> String {
    format!("{:032x}", xxh3_128(value.to_string().as_bytes()))
}

/// Version of each stage's implementation: bump when a stage's output for the same input changes.
const SOURCE_VERSION: u32 = 1;
const DEDUP_EXACT_VERSION: u32 = 1;
const DECONTAMINATE_VERSION: u32 = 1;
const TEMPLATE_VERSION: u32 = 1;

/// The fingerprint of reading `source`.
pub fn source_fingerprint(name: &str, source: &Source) -> String {
    fingerprint(&json!({
        "type": "source", "version": SOURCE_VERSION, "name": name,
        "class": source.class, "format": source.format,
        "text_field": source.text_field, "id_field": source.id_field,
    }))
}

/// Hashes of what a decontamination stage reads: bundled sets by content, files by bytes.
fn benchmark_hashes(recipe: &Recipe, benchmarks: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for b in benchmarks {
        let hashes: Vec<(&str, &[u8])> = if b == "standard" {
            dedup::benchmark::STANDARD
                .iter()
                .map(|s| (s.0, s.2))
                .collect()
        } else if let Some(s) = dedup::benchmark::STANDARD.iter().find(|s| s.0 == b) {
            vec![(s.0, s.2)]
        } else {
            let path = recipe.resolve(b);
            let mut files = vec![path.clone()];
            if path.is_dir() {
                files = std::fs::read_dir(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                files.sort();
            }
            for f in files {
                let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
                out.push(format!("{}:{:016x}", f.display(), xxh3_64(&bytes)));
            }
            continue;
        };
        out.extend(
            hashes
                .iter()
                .map(|(n, bytes)| format!("standard:{n}:{:016x}", xxh3_64(bytes))),
        );
    }
    Ok(out)
}

fn effective_decont(
    recipe: &Recipe,
    stage: &crate::recipe::DecontaminateStage,
) -> DecontaminateConfig {
    let mut c = recipe.decontaminate.clone();
    if let Some(b) = &stage.benchmarks {
        c.benchmarks = b.clone();
    }
    if let Some(r) = stage.remove_partial {
        c.remove_partial = r;
    }
    c
}

/// The fingerprint of a stage, given its inputs' fingerprints (in declared order).
pub fn stage_fingerprint(
    recipe: &Recipe,
    config: &StageConfig,
    inputs: &[String],
) -> Result<String> {
    let extra = match config {
        StageConfig::DedupExact(_) => json!({"version": DEDUP_EXACT_VERSION}),
        StageConfig::Decontaminate(d) => {
            let c = effective_decont(recipe, d);
            json!({
                "version": DECONTAMINATE_VERSION,
                "settings": c.settings(),
                "remove_partial": c.remove_partial,
                "benchmarks": benchmark_hashes(recipe, &c.benchmarks)?,
                "normalization": dedup::normalize::NORMALIZATION_VERSION,
            })
        }
        StageConfig::Template(t) => json!({
            "version": TEMPLATE_VERSION,
            "template_hash": format!("{:032x}", xxh3_128(t.template.as_bytes())),
        }),
    };
    Ok(fingerprint(&json!({
        "config": config,
        "implementation": extra,
        "inputs": inputs,
    })))
}

/// Makes the running stage for `config`.
pub fn build_stage(recipe: &Recipe, config: &StageConfig, fp: &str) -> Result<Box<dyn Stage>> {
    let name = config.name().to_string();
    Ok(match config {
        StageConfig::DedupExact(_) => Box::new(DedupExact),
        StageConfig::Decontaminate(d) => Box::new(Decontaminate {
            name,
            config: effective_decont(recipe, d),
            dir: recipe.dir.clone(),
            index: OnceLock::new(),
        }),
        StageConfig::Template(t) => {
            let mut env = minijinja::Environment::new();
            env.add_template_owned("t", t.template.clone())
                .map_err(|e| Error::Stage {
                    stage: name.clone(),
                    message: format!("template: {e}"),
                })?;
            Box::new(Template {
                name,
                fp: fp.to_string(),
                template_hash: format!("{:032x}", xxh3_128(t.template.as_bytes())),
                env,
            })
        }
    })
}

/// Reads one source document into a sample.
pub fn source_sample(
    name: &str,
    source: &Source,
    fp: &str,
    file: &str,
    line: u64,
    id: &str,
    text: &str,
) -> Sample {
    Sample::new(
        source.class,
        Content::Text {
            text: text.to_string(),
        },
        Lineage {
            stage: format!("source:{name}"),
            stage_fingerprint: fp.to_string(),
            source: Some(SourceRef {
                source: name.to_string(),
                file: file.to_string(),
                line,
                id: id.to_string(),
            }),
            ..Default::default()
        },
    )
}

/// Keeps the first sample of each content id.
struct DedupExact;

impl Stage for DedupExact {
    fn shape(&self) -> Shape {
        Shape::WholeSet
    }
    fn process(&self, input: &Sample) -> Result<ItemResult> {
        Ok(ItemResult::Keep(vec![input.clone()]))
    }
    fn process_set(&self, inputs: &[Sample]) -> Result<Vec<ItemResult>> {
        let mut seen = HashSet::new();
        Ok(inputs
            .iter()
            .map(|s| {
                if seen.insert(s.id.as_str()) {
                    ItemResult::Keep(vec![s.clone()])
                } else {
                    ItemResult::Drop("duplicate".into())
                }
            })
            .collect())
    }
}

/// Drops samples that overlap benchmarks; the index is built on first use.
struct Decontaminate {
    name: String,
    config: DecontaminateConfig,
    dir: std::path::PathBuf,
    index: OnceLock<std::result::Result<BenchIndex, String>>,
}

impl Decontaminate {
    fn index(&self) -> Result<&BenchIndex> {
        let built = self.index.get_or_init(|| {
            let specs: Vec<String> = self
                .config
                .benchmarks
                .iter()
                .map(|b| {
                    let p = self.dir.join(b);
                    if p.exists() {
                        p.to_string_lossy().into_owned()
                    } else {
                        b.clone()
                    }
                })
                .collect();
            BenchmarkSet::load(&specs, &FieldMap::default())
                .and_then(|set| BenchIndex::build(&set, self.config.settings(), &[]))
                .map_err(|e| e.to_string())
        });
        built.as_ref().map_err(|m| Error::Stage {
            stage: self.name.clone(),
            message: m.clone(),
        })
    }
}

impl Stage for Decontaminate {
    fn process(&self, input: &Sample) -> Result<ItemResult> {
        let index = self.index()?;
        let mut scanner = Scanner::new(index);
        Ok(match scanner.scan(&input.content.text()) {
            Some(f) if f.verdict == Verdict::Contaminated || self.config.remove_partial => {
                let item = &index.items[f.item as usize];
                ItemResult::Drop(format!(
                    "{} ({}, {})",
                    f.verdict.as_str(),
                    f.rule.as_str(),
                    index.benchmarks[item.benchmark as usize]
                ))
            }
            _ => ItemResult::Keep(vec![input.clone()]),
        })
    }
}

/// Rewrites text with a MiniJinja template.
struct Template {
    name: String,
    fp: String,
    template_hash: String,
    env: minijinja::Environment<'static>,
}

impl Stage for Template {
    fn process(&self, input: &Sample) -> Result<ItemResult> {
        let t = self.env.get_template("t").map_err(|e| Error::Stage {
            stage: self.name.clone(),
            message: e.to_string(),
        })?;
        let text = t
            .render(json!({"text": input.content.text(), "id": input.id, "class": input.class}))
            .map_err(|e| Error::Stage {
                stage: self.name.clone(),
                message: format!("sample {}: {e}", input.id),
            })?;
        Ok(ItemResult::Keep(vec![Sample::new(
            input.class,
            Content::Text { text },
            Lineage {
                stage: self.name.clone(),
                stage_fingerprint: self.fp.clone(),
                parents: vec![input.id.clone()],
                template_hash: Some(self.template_hash.clone()),
                ..Default::default()
            },
        )]))
    }
}
