//! Benchmark test sets: the bundled standard sets and user files in any schema.
//!
//! A benchmark item has a question, an answer and (for multiple choice) choices. Files in the
//! uniform schema (`benchmark`, `split`, `id`, `question`, `choices`, `answer`) load as they are;
//! other schemas name their fields with a [`FieldMap`]. Files may be JSON lines (plain, `.gz`,
//! `.zst`) or Parquet, or a folder of such files.

use crate::{Error, Result};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// The sets bundled in the binary (`--benchmarks standard`), with their licences. Their files and
/// licence notes are in `dedup/benchmarks/`.
pub const STANDARD: &[(&str, &str, &[u8])] = &[
    (
        "gsm8k",
        "MIT",
        include_bytes!("../benchmarks/gsm8k.jsonl.gz"),
    ),
    ("math", "MIT", include_bytes!("../benchmarks/math.jsonl.gz")),
    ("mmlu", "MIT", include_bytes!("../benchmarks/mmlu.jsonl.gz")),
    (
        "humaneval",
        "MIT",
        include_bytes!("../benchmarks/humaneval.jsonl.gz"),
    ),
    (
        "mbpp",
        "CC-BY-4.0",
        include_bytes!("../benchmarks/mbpp.jsonl.gz"),
    ),
    (
        "arc_challenge",
        "CC-BY-SA-4.0",
        include_bytes!("../benchmarks/arc_challenge.jsonl.gz"),
    ),
    (
        "arc_easy",
        "CC-BY-SA-4.0",
        include_bytes!("../benchmarks/arc_easy.jsonl.gz"),
    ),
];

/// Which record fields hold what. Defaults match the uniform schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldMap {
    pub question: String,
    pub answer: String,
    pub choices: String,
    pub id: String,
    pub benchmark: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            question: "question".into(),
            answer: "answer".into(),
            choices: "choices".into(),
            id: "id".into(),
            benchmark: "benchmark".into(),
        }
    }
}

impl FieldMap {
    /// Applies `role=field` pairs (`question=problem,answer=solution`) to the defaults.
    pub fn parse(spec: &str) -> Result<FieldMap> {
        let mut map = FieldMap::default();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, field) = pair.split_once('=').ok_or_else(|| Error::FieldMap {
                spec: spec.into(),
                message: format!("`{pair}` is not ROLE=FIELD"),
            })?;
            let slot = match role.trim() {
                "question" => &mut map.question,
                "answer" => &mut map.answer,
                "choices" => &mut map.choices,
                "id" => &mut map.id,
                "benchmark" => &mut map.benchmark,
                other => {
                    return Err(Error::FieldMap {
                        spec: spec.into(),
                        message: format!(
                            "unknown role `{other}` (expected question, answer, choices, id or benchmark)"
                        ),
                    })
                }
            };
            *slot = field.trim().to_string();
        }
        Ok(map)
    }
}

/// One test item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub benchmark: String,
    pub id: String,
    pub question: String,
    pub choices: Vec<String>,
    pub answer: String,
}

/// Where a group of items came from, for the report's provenance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceFile {
    /// `standard:NAME` for a bundled set, else the path as given.
    pub source: String,
    /// SHA-256 of the file's bytes as stored (compressed, if it is).
    pub sha256: String,
    pub items: usize,
    /// Licence of a bundled set; `null` for user files.
    pub licence: Option<String>,
}

/// All items to check against, with their sources.
#[derive(Debug, Clone, Default)]
pub struct BenchmarkSet {
    pub files: Vec<SourceFile>,
    pub items: Vec<Item>,
}

/// One place benchmark items come from, as a spec resolves to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchSource {
    /// A set bundled in the binary: its name, licence and gzipped JSON lines.
    Bundled {
        name: &'static str,
        licence: &'static str,
        bytes: &'static [u8],
    },
    /// A JSON-lines or Parquet file.
    File(PathBuf),
}

/// What `spec` names, with relative paths taken from `base` (the current folder when `None`):
/// a file or folder that exists there comes first, then `standard` and the bundled sets' names.
/// A folder yields its JSON-lines and Parquet files, sorted (other files, such as a README, are
/// not benchmarks); a folder inside it is refused, not passed over. Loading and fingerprinting
/// both resolve through here, so they always agree.
pub fn resolve(spec: &str, base: Option<&Path>) -> Result<Vec<BenchSource>> {
    let path = match base {
        Some(b) if !Path::new(spec).is_absolute() && !b.as_os_str().is_empty() => b.join(spec),
        _ => PathBuf::from(spec),
    };
    if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
            let p = entry.map_err(|e| Error::io(&path, e))?.path();
            if p.is_dir() {
                return Err(Error::BenchmarkSubfolder { path, sub: p });
            }
            if matches!(
                corpus::Format::detect(&p),
                Ok(corpus::Format::JsonLines(_) | corpus::Format::Parquet)
            ) {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::NoBenchmarkFiles { path });
        }
        return Ok(files.into_iter().map(BenchSource::File).collect());
    }
    if path.exists() {
        return Ok(vec![BenchSource::File(path)]);
    }
    let bundled = |&(name, licence, bytes): &(&'static str, &'static str, &'static [u8])| {
        BenchSource::Bundled {
            name,
            licence,
            bytes,
        }
    };
    if spec == "standard" {
        return Ok(STANDARD.iter().map(bundled).collect());
    }
    match STANDARD.iter().find(|s| s.0 == spec) {
        Some(s) => Ok(vec![bundled(s)]),
        None => Err(Error::UnknownBenchmark {
            spec: spec.into(),
            known: STANDARD.iter().map(|s| s.0).collect::<Vec<_>>().join(", "),
        }),
    }
}

impl BenchmarkSet {
    /// Loads each spec: `standard` (all bundled sets), a bundled set's name, a file or a folder
    /// (see [`resolve`]; relative paths from the current folder).
    pub fn load<S: AsRef<str>>(specs: &[S], fields: &FieldMap) -> Result<BenchmarkSet> {
        let mut sources = Vec::new();
        for spec in specs {
            sources.extend(resolve(spec.as_ref(), None)?);
        }
        BenchmarkSet::load_sources(&sources, fields)
    }

    /// Loads resolved sources, in order.
    pub fn load_sources(sources: &[BenchSource], fields: &FieldMap) -> Result<BenchmarkSet> {
        // Each source is read on its own core, then the sets are joined in the order given.
        let parts: Vec<BenchmarkSet> = sources
            .par_iter()
            .map(|s| {
                let mut set = BenchmarkSet::default();
                match s {
                    BenchSource::Bundled {
                        name,
                        licence,
                        bytes,
                    } => set.load_bundled(name, licence, bytes)?,
                    BenchSource::File(path) => set.load_file(path, fields)?,
                }
                Ok(set)
            })
            .collect::<Result<_>>()?;
        let mut set = BenchmarkSet::default();
        for part in parts {
            set.files.extend(part.files);
            set.items.extend(part.items);
        }
        Ok(set)
    }

    fn load_bundled(&mut self, name: &str, licence: &str, bytes: &[u8]) -> Result<()> {
        let label = PathBuf::from(format!("standard:{name}"));
        let reader = BufReader::new(flate2::read::GzDecoder::new(bytes));
        let records = corpus::read_json_records(reader, &label)?;
        let n = self.add_records(&label, name, records, &FieldMap::default())?;
        self.files.push(SourceFile {
            source: label.display().to_string(),
            sha256: hex::encode(Sha256::digest(bytes)),
            items: n,
            licence: Some(licence.into()),
        });
        Ok(())
    }

    fn load_file(&mut self, path: &Path, fields: &FieldMap) -> Result<()> {
        let bytes = corpus::read_all(path)?;
        let records = corpus::read_records(path)?;
        let stem = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = stem.split('.').next().unwrap_or("benchmark").to_string();
        let n = self.add_records(path, &stem, records, fields)?;
        self.files.push(SourceFile {
            source: path.display().to_string(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            items: n,
            licence: None,
        });
        Ok(())
    }

    fn add_records(
        &mut self,
        path: &Path,
        default_name: &str,
        records: Vec<(u64, corpus::Record)>,
        fields: &FieldMap,
    ) -> Result<usize> {
        // A mapping that names a field no record has is a mistake, not a set of empty items.
        for role in [&fields.question, &fields.answer] {
            if !records.iter().any(|(_, r)| r.contains_key(role.as_str())) {
                return Err(Error::MissingBenchmarkField {
                    path: path.into(),
                    field: role.clone(),
                });
            }
        }
        let n = records.len();
        for (line, r) in records {
            let bad = |field: &str, what: &str| Error::BadBenchmarkRecord {
                path: path.into(),
                line,
                message: format!("field `{field}` {what}"),
            };
            let text = |field: &str| -> Result<String> {
                match r.get(field) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
                    Some(_) => Err(bad(field, "is not a string")),
                }
            };
            let benchmark = match r.get(&fields.benchmark) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => default_name.to_string(),
            };
            let id = match text(&fields.id)? {
                s if s.is_empty() => format!("{benchmark}/{line}"),
                s => s,
            };
            let choices = match r.get(&fields.choices) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
                        _ => Err(bad(&fields.choices, "holds a value that is not a string")),
                    })
                    .collect::<Result<_>>()?,
                Some(_) => return Err(bad(&fields.choices, "is not an array")),
            };
            self.items.push(Item {
                question: text(&fields.question)?,
                answer: text(&fields.answer)?,
                benchmark,
                id,
                choices,
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_sets_load_with_their_counts() {
        let set = BenchmarkSet::load(&["standard"], &FieldMap::default()).unwrap();
        let counts: Vec<(String, usize)> = set
            .files
            .iter()
            .map(|f| (f.source.clone(), f.items))
            .collect();
        assert_eq!(
            counts,
            [
                ("standard:gsm8k", 1319),
                ("standard:math", 5000),
                ("standard:mmlu", 14042),
                ("standard:humaneval", 164),
                ("standard:mbpp", 500),
                ("standard:arc_challenge", 1172),
                ("standard:arc_easy", 2376),
            ]
            .map(|(s, n)| (s.to_string(), n))
        );
        assert_eq!(set.items[0].id, "gsm8k/0");
        assert!(set.items[0].question.starts_with("Janet"));
    }

    #[test]
    fn folders_resolve_before_bundled_names_and_subfolders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gsm = dir.path().join("gsm8k");
        std::fs::create_dir(&gsm).unwrap();
        std::fs::write(
            gsm.join("b.jsonl"),
            "{\"question\": \"q\", \"answer\": \"a\"}\n",
        )
        .unwrap();
        std::fs::write(gsm.join("a.parquet"), "").unwrap();
        std::fs::write(gsm.join("README.md"), "not a benchmark").unwrap();
        // Beside `base`, `gsm8k` is the folder (its data files, sorted); elsewhere the bundled set.
        let got = resolve("gsm8k", Some(dir.path())).unwrap();
        assert_eq!(
            got,
            [
                BenchSource::File(gsm.join("a.parquet")),
                BenchSource::File(gsm.join("b.jsonl"))
            ]
        );
        assert!(matches!(
            resolve("gsm8k", Some(Path::new("/nonexistent"))).unwrap()[..],
            [BenchSource::Bundled { name: "gsm8k", .. }]
        ));
        assert_eq!(resolve("standard", None).unwrap().len(), STANDARD.len());
        std::fs::create_dir(gsm.join("more")).unwrap();
        let e = resolve("gsm8k", Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("holds the folder") && e.contains("more"), "{e}");
        let e = resolve("nothing", Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown benchmark `nothing`"), "{e}");
    }

    #[test]
    fn other_schemas_use_a_field_map() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mine.jsonl");
        std::fs::write(
            &p,
            "{\"problem\": \"What is two plus two?\", \"solution\": 4}\n",
        )
        .unwrap();
        let e = BenchmarkSet::load(&[p.to_str().unwrap()], &FieldMap::default()).unwrap_err();
        assert!(e.to_string().contains("field `question`"), "{e}");
        let map = FieldMap::parse("question=problem, answer=solution").unwrap();
        let set = BenchmarkSet::load(&[p.to_str().unwrap()], &map).unwrap();
        assert_eq!(set.items[0].benchmark, "mine");
        assert_eq!(set.items[0].id, "mine/1");
        assert_eq!(set.items[0].answer, "4");
        assert!(FieldMap::parse("quest=x").is_err());
    }

    #[test]
    fn parquet_sets_load_with_a_field_map() {
        use corpus::{Column, ColumnKind, TableWriter};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("evals.parquet");
        let mut t = TableWriter::create(
            &p,
            &[
                ("task_id", ColumnKind::Utf8),
                ("problem", ColumnKind::Utf8),
                ("solution", ColumnKind::Utf8),
            ],
        )
        .unwrap();
        t.push(vec![
            Column::Str("t-1".into()),
            Column::Str("Add the numbers from one to ten.".into()),
            Column::Str("55".into()),
        ])
        .unwrap();
        t.finish().unwrap();
        let map = FieldMap::parse("question=problem,answer=solution,id=task_id").unwrap();
        let set = BenchmarkSet::load(&[p.to_str().unwrap()], &map).unwrap();
        assert_eq!(set.items.len(), 1);
        assert_eq!(set.items[0].id, "t-1");
        assert_eq!(set.items[0].benchmark, "evals");
        assert_eq!(set.items[0].answer, "55");
        assert_eq!(set.files[0].sha256.len(), 64);
    }

    #[test]
    fn unknown_benchmark_names_the_known_ones() {
        let e = BenchmarkSet::load(&["gsm9k"], &FieldMap::default()).unwrap_err();
        assert!(
            e.to_string().contains("gsm9k") && e.to_string().contains("gsm8k"),
            "{e}"
        );
    }
}
