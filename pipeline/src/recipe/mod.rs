//! Recipes: one YAML file that declares a dataset build.
//!
//! The declared configuration (these serde types, strict: unknown keys are errors) is separate from
//! the running stages made from it. [`Recipe::load`] checks everything it can without running —
//! types, unknown keys, dangling references, cycles, bad values, missing source files — and reports
//! every problem at once, each with file, line, column and field path. The format is documented
//! field by field in `docs/recipe.md`.

mod check;
mod types;

pub use types::*;

use crate::yaml;
use check::{check_names, check_sources, check_stages, check_values, Checker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
        let engines: BTreeMap<String, EngineConfig> = c.map(&root, "engines");
        for (name, engine) in &engines {
            for p in engine.problems() {
                c.error(&format!("engines.{name}.{}", p.field), p.message);
            }
        }
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
        let mix = match top.get("mix") {
            None | Some(Value::Null) => None,
            Some(v) => c.typed::<MixConfig>("mix", v),
        };
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
        // Engines are referred to by every declared name, even one that failed to parse.
        let engine_names: Vec<String> = match top.get("engines") {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        check_values(
            &mut c,
            &decontaminate,
            mix.as_ref(),
            output.as_ref(),
            &stages,
            &engine_names,
            dir,
        );
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
    inputs: [a, ghost, a]
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
            (17, "stages[1].inputs[2]"),
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
        assert!(text.contains("`a` is listed twice"), "{text}");
        assert!(text.contains("unknown variant `shuffle`"), "{text}");
    }

    #[test]
    fn engines_are_checked_where_they_are_declared() {
        let recipe = r#"
name: demo
sources:
  docs: {path: examples/corpus/python-docs.jsonl.gz, class: web}
engines:
  pool:
    kind: openai
    model: phi-4
    endpoints: []
    api_key_env: PHIFORGE_TEST_KEY_THAT_IS_NOT_SET
  here:
    kind: local
    model: microsoft/phi-4
    device: tpu
  odd:
    kind: mainframe
  fine:
    kind: openai
    model: phi-4
    endpoints: [http://127.0.0.1:8000/v1]
output: {path: out/x}
"#;
        let d = parse(recipe).unwrap_err().0;
        let got: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.path.as_str())).collect();
        let want = [
            (9, "engines.pool.endpoints"),
            (10, "engines.pool.api_key_env"),
            (14, "engines.here.device"),
            (16, "engines.odd.kind"),
        ];
        assert_eq!(got, want, "{}", Diagnostics(d.clone()));
        let text = Diagnostics(d).to_string();
        assert!(
            text.contains("`PHIFORGE_TEST_KEY_THAT_IS_NOT_SET` is not set"),
            "{text}"
        );
        assert!(text.contains("unknown device `tpu`"), "{text}");
    }
}
