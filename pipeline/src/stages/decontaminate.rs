//! `decontaminate`: drops samples that overlap benchmark items (Phi-4's 13/7-gram rule and the
//! edit rule, from the `dedup` crate). A filter: its units write decisions, each drop with verdict, rule and benchmark.

use super::{Kind, Outcome, Stage};
use crate::recipe::{DecontaminateConfig, DecontaminateStage, Recipe};
use crate::sample::Sample;
use crate::{Error, Result};
use dedup::benchmark::{self, BenchSource, BenchmarkSet, FieldMap};
use dedup::index::BenchIndex;
use dedup::scan::{Scanner, Verdict};
use serde_json::json;
use std::sync::OnceLock;
use xxhash_rust::xxh3::xxh3_64;

/// 2: the edit rule.
const VERSION: u32 = 2;

/// The stage's settings: its own, else the recipe's `decontaminate` section.
fn effective(recipe: &Recipe, stage: &DecontaminateStage) -> DecontaminateConfig {
    let mut c = recipe.decontaminate.clone();
    if let Some(b) = &stage.benchmarks {
        c.benchmarks = b.clone();
    }
    if let Some(r) = stage.remove_partial {
        c.remove_partial = r;
    }
    c
}

/// Where the benchmark items come from: each spec resolved from the recipe's folder, the same way
/// for the fingerprint and for the index.
fn sources(recipe: &Recipe, config: &DecontaminateConfig) -> Result<Vec<BenchSource>> {
    let mut out = Vec::new();
    for spec in &config.benchmarks {
        out.extend(benchmark::resolve(spec, Some(&recipe.dir))?);
    }
    Ok(out)
}

/// What the fingerprint hashes besides the configuration: the rule's settings and the content of
/// every benchmark file (named relative to the recipe's folder, so the build's working folder does
/// not matter).
pub(super) fn implementation(
    recipe: &Recipe,
    stage: &DecontaminateStage,
) -> Result<serde_json::Value> {
    let c = effective(recipe, stage);
    let mut hashes = Vec::new();
    for s in sources(recipe, &c)? {
        hashes.push(match s {
            BenchSource::Bundled { name, bytes, .. } => {
                format!("standard:{name}:{:016x}", xxh3_64(bytes))
            }
            BenchSource::File(path) => {
                let name = path.strip_prefix(&recipe.dir).unwrap_or(&path);
                let hash = corpus::atomic::hash_file(&path)?;
                format!("{}:{:016x}", name.display(), hash.xxh3)
            }
        });
    }
    Ok(json!({
        "version": VERSION,
        "settings": c.settings(),
        "remove_partial": c.remove_partial,
        "benchmarks": hashes,
        "normalization": dedup::normalize::NORMALIZATION_VERSION,
    }))
}

/// The running stage; the benchmark index is built on first use, once per process.
pub struct Decontaminate {
    config: DecontaminateConfig,
    sources: Vec<BenchSource>,
    index: OnceLock<std::result::Result<BenchIndex, String>>,
}

impl Decontaminate {
    pub fn new(recipe: &Recipe, stage: &DecontaminateStage) -> Result<Decontaminate> {
        let config = effective(recipe, stage);
        Ok(Decontaminate {
            sources: sources(recipe, &config)?,
            config,
            index: OnceLock::new(),
        })
    }

    fn index(&self) -> Result<&BenchIndex> {
        let built = self.index.get_or_init(|| {
            BenchmarkSet::load_sources(&self.sources, &FieldMap::default())
                .and_then(|set| BenchIndex::build(&set, self.config.settings(), &[]))
                .map_err(|e| e.to_string())
        });
        built
            .as_ref()
            .map_err(|m| Error::stage("decontaminate", format!("benchmark index: {m}")))
    }
}

impl Stage for Decontaminate {
    fn prepare(&self) -> Result<()> {
        self.index().map(|_| ())
    }

    fn kind(&self) -> Kind {
        Kind::Filter
    }

    fn process(&self, input: &Sample) -> Result<Outcome> {
        Ok(self.process_batch(&[input])?.remove(0))
    }

    fn process_batch(&self, inputs: &[&Sample]) -> Result<Vec<Outcome>> {
        let index = self.index()?;
        let mut scanner = Scanner::new(index);
        Ok(inputs
            .iter()
            .map(|s| match scanner.scan(&s.content.text()) {
                Some(f) if f.verdict != Verdict::Partial || self.config.remove_partial => {
                    let best = f.best();
                    let item = &index.items[best.item as usize];
                    Outcome::Drop(format!(
                        "{} ({}, {})",
                        f.verdict.as_str(),
                        best.rule.as_str(),
                        index.benchmarks[item.benchmark as usize]
                    ))
                }
                _ => Outcome::Keep,
            })
            .collect())
    }
}
