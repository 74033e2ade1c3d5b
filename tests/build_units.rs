//! The build's core: Parquet outputs and their manifest, units of any size giving the same bytes,
//! sources of every kind, benchmark folders, and what plans, failed builds and Slurm tasks leave.

use crate::build::{outputs, report, seeds, setup, RECIPE, SMALL_UNITS};
use crate::util::*;
use corpus::shard::{Projection, ShardReader};
use serde_json::{json, Value};
use std::path::Path;

/// The samples of a Parquet output file.
fn parquet_samples(path: &Path) -> Vec<corpus::sample::Sample> {
    let mut r = ShardReader::open(path, Projection::Full).unwrap();
    let mut out = Vec::new();
    while let Some(entries) = r.next_entries().unwrap() {
        out.extend(entries.into_iter().map(|e| e.sample.unwrap()));
    }
    out
}

fn manifest(dir: &Dir) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap()).unwrap()
}

#[test]
fn outputs_are_parquet_by_default_with_a_manifest_of_every_file() {
    let dir = Dir::new();
    setup(&dir, 60);
    dir.write("recipe.yaml", RECIPE.replace("  format: jsonl\n", ""));
    dir.ok(&["build", "recipe.yaml"]);
    let m = manifest(&dir);
    assert_eq!(m["recipe"], "test-build");
    assert_eq!(m["format"], "parquet");
    assert_eq!(m["recipe_fingerprint"], report(&dir)["recipe_fingerprint"]);
    let stages = m["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0]["name"], "shout");
    let files = stages[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let mut rows = 0;
    for f in files {
        let path = dir.path(&format!("out/{}", f["path"].as_str().unwrap()));
        assert!(path.to_string_lossy().ends_with(".parquet"), "{f}");
        let sum = corpus::atomic::hash_file(&path).unwrap();
        assert_eq!(f["bytes"], sum.bytes, "{f}");
        assert_eq!(f["checksum"], sum.checksum(), "{f}");
        let samples = parquet_samples(&path);
        assert_eq!(f["rows"], samples.len() as u64, "{f}");
        rows += samples.len();
        for s in &samples {
            assert_eq!(s.lineage.stage, "shout");
            assert_eq!(s.id, s.content.id());
        }
    }
    // 60 documents and a duplicate and a leak: 60 remain, split evenly.
    assert_eq!(rows, 60);
    assert_eq!(files[0]["rows"], 30);
    // JSON lines on request: the same samples, and the Parquet files are gone.
    dir.write("recipe.yaml", RECIPE);
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("wrote 2 output files"), "{out}");
    let names: Vec<String> = outputs(dir.tmp.path()).into_iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    );
    assert_eq!(manifest(&dir)["format"], "jsonl");
}

/// The stage tester: one unit per stage, or dozens (tiny units, dedup in 5 partitions), give the
/// same bytes.
#[test]
fn unit_sizes_and_partitions_do_not_change_the_outputs() {
    let one = Dir::new();
    setup(&one, 300);
    one.ok(&["build", "recipe.yaml"]);
    let many = Dir::new();
    setup(&many, 300);
    many.write("recipe.yaml", format!("{RECIPE}{SMALL_UNITS}"));
    many.ok(&["build", "recipe.yaml"]);
    let r = report(&many);
    let units = |name: &str| stage(&r, name)["units_run"].as_u64().unwrap();
    assert!(units("clean") >= 5, "{r}");
    assert!(units("unique") >= 8 + 6, "scans and applies: {r}");
    assert_eq!(outputs(many.tmp.path()), outputs(one.tmp.path()));
}

#[test]
fn plan_writes_nothing() {
    let dir = Dir::new();
    setup(&dir, 10);
    let plan = dir.ok(&["plan", "recipe.yaml"]);
    assert!(plan.contains("first run"), "{plan}");
    assert!(
        !dir.path("out").exists(),
        "a plan created the output folder"
    );
    // Nothing was built, so nothing holds the source to its old class.
    dir.write("recipe.yaml", RECIPE.replace("class: web", "class: code"));
    dir.ok(&["build", "recipe.yaml"]);
}

#[test]
fn text_folders_and_several_sources_build() {
    let dir = Dir::new();
    let docs = seeds(6);
    for (k, d) in docs.iter().take(5).enumerate() {
        dir.write(
            &format!("notes/{}/{k}.txt", if k % 2 == 0 { "a" } else { "b" }),
            d["text"].as_str().unwrap(),
        );
    }
    dir.write("notes/skip.csv", "not a text file");
    dir.write_jsonl("more.jsonl", &docs[3..6]);
    dir.write(
        "recipe.yaml",
        r#"
name: folders
sources:
  notes: {path: notes, class: web}
  more: {path: more.jsonl, class: code}
stages:
  - {name: unique, type: dedup_exact, inputs: [notes, more]}
output: {path: out, format: jsonl}
"#,
    );
    dir.ok(&["validate", "recipe.yaml"]);
    let out = dir.ok(&["build", "recipe.yaml"]);
    // Documents 3 and 4 are in both sources: the folder's copies come first and are kept.
    assert!(out.contains("dropped: 2 duplicate"), "{out}");
    let rows: Vec<Value> = raw_lines(&dir.path("out/unique/part-00000-of-00001.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let files: Vec<&str> = rows
        .iter()
        .map(|r| r["lineage"]["source"]["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        ["notes", "notes", "notes", "notes", "notes", "more.jsonl"]
    );
    assert_eq!(rows[0]["lineage"]["source"]["id"], "a/0.txt");
    assert_eq!(rows[5]["class"], "code");
    // A changed file in the folder is new input; an unchanged folder is not.
    assert!(dir.ok(&["build", "recipe.yaml"]).contains("nothing to do"));
    dir.write(
        "notes/b/9.txt",
        "A new note about the tides, long enough to be a document.",
    );
    let plan = dir.ok(&["plan", "recipe.yaml"]);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("notes") && l.ends_with("new inputs")),
        "{plan}"
    );
}

/// A benchmark named like a bundled set, with a folder of that name beside the recipe: the folder
/// is what the stage reads and what its fingerprint hashes.
#[test]
fn a_benchmark_folder_beside_the_recipe_wins_over_the_bundled_set() {
    let dir = Dir::new();
    setup(&dir, 20);
    let docs = seeds(20);
    let own = json!({"question": docs[7]["text"], "answer": "", "id": "mine-1"});
    dir.write_jsonl("gsm8k/items.jsonl", &[own]);
    dir.write("gsm8k/README.md", "our own items");
    let out = dir.ok(&["build", "recipe.yaml"]);
    // The folder's item (document 7) is found; GSM8K's real item 9 (bundled) is not looked for.
    assert!(
        out.contains("dropped: 1 contaminated (exact, items)")
            || out.contains("dropped: 1 contaminated (ngram13, items)"),
        "{out}"
    );
    let kept: Vec<String> = outputs(dir.tmp.path())
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(kept.len(), 20, "19 documents and the GSM8K question");
    // Editing the folder's file changes the stage's fingerprint.
    let changed = json!({"question": docs[8]["text"], "answer": "", "id": "mine-2"});
    dir.write_jsonl("gsm8k/items.jsonl", &[changed]);
    let plan = dir.ok(&["plan", "recipe.yaml"]);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("clean") && l.contains("changed configuration")),
        "{plan}"
    );
    // A folder inside it is refused, by validate and by build, naming it.
    std::fs::create_dir_all(dir.path("gsm8k/old")).unwrap();
    for cmd in ["validate", "build"] {
        let err = dir.fails(&[cmd, "recipe.yaml"]);
        assert!(err.contains("stages[1].benchmarks[0]"), "{err}");
        assert!(
            err.contains("holds the folder") && err.contains("old"),
            "{err}"
        );
    }
}

#[test]
fn a_failed_build_is_recorded_as_failed() {
    let dir = Dir::new();
    setup(&dir, 10);
    dir.ok(&["build", "recipe.yaml"]);
    let mut lines = std::fs::read_to_string(dir.path("seeds.jsonl")).unwrap();
    lines.push_str("{\"text\": broken\n");
    dir.write("seeds.jsonl", lines);
    let err = dir.fails(&["build", "recipe.yaml"]);
    assert!(err.contains("line 13: invalid JSON"), "{err}");
    let conn = rusqlite::Connection::open(dir.path("out/store.sqlite")).unwrap();
    let runs: Vec<(String, String)> = conn
        .prepare("SELECT status, report FROM runs ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].0, "ok");
    assert_eq!(runs[1].0, "failed");
    assert!(runs[1].1.contains("line 13: invalid JSON"), "{}", runs[1].1);
}

#[test]
fn the_folder_a_build_starts_from_does_not_matter() {
    let dir = Dir::new();
    let sub = Dir {
        tmp: tempfile::tempdir_in(dir.tmp.path()).unwrap(),
    };
    setup(&sub, 10);
    sub.ok(&["build", "recipe.yaml"]);
    let name = sub
        .tmp
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let out = dir.ok(&["build", &format!("{name}/recipe.yaml")]);
    assert!(out.contains("nothing to do"), "{out}");
}

/// Per-sample stages keep every row they are given: a duplicate is dropped only by a dedup stage,
/// and counted there.
#[test]
fn only_dedup_stages_drop_duplicates() {
    let dir = Dir::new();
    setup(&dir, 10);
    dir.write(
        "recipe.yaml",
        r#"
name: no-dedup
sources:
  seeds: {path: seeds.jsonl, class: web}
stages:
  - {name: shout, type: template, inputs: [seeds], template: "{{ text | upper }}"}
output: {path: out, format: jsonl}
"#,
    );
    let out = dir.ok(&["build", "recipe.yaml"]);
    let r = report(&dir);
    let shout = stage(&r, "shout");
    assert_eq!(shout["samples_in"], 12, "{out}");
    assert_eq!(shout["samples_out"], 12, "{out}");
}

/// A Slurm task whose recipe changed after submission refuses to run (no cluster needed: the task
/// is run by hand, as Slurm would).
#[test]
fn a_task_refuses_a_recipe_changed_since_submission() {
    let dir = Dir::new();
    setup(&dir, 10);
    dir.ok(&["build", "recipe.yaml"]);
    let r = report(&dir);
    let clean = stage(&r, "clean");
    let fp = clean["fingerprint"].as_str().unwrap();
    // The manifest a submission would write, made from the build's own records.
    let conn = rusqlite::Connection::open(dir.path("out/store.sqlite")).unwrap();
    let record: String = conn
        .query_row(
            "SELECT record FROM units WHERE stage = 'clean' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    let done: Value = serde_json::from_str(&record).unwrap();
    let view = done["views"][0].clone();
    let mut input = view.clone();
    input["filters"].as_array_mut().unwrap().pop();
    input["rows"] = json!(done["rows_in"]);
    let unit = json!({"key": done["key"], "stage": "clean", "fingerprint": fp, "slot": done["slot"],
        "work": {"work": "per_sample", "view": input}});
    let manifest = json!({"recipe": dir.path("recipe.yaml"), "stage": "clean", "fingerprint": fp,
        "root": dir.path("out"), "units": [unit]});
    dir.write("m.json", manifest.to_string());
    // Unchanged, the task runs (and writes the same record).
    dir.ok(&["run-unit", "m.json", "--unit", "0"]);
    dir.write(
        "recipe.yaml",
        RECIPE.replace("benchmarks: [gsm8k]", "benchmarks: [math]"),
    );
    let err = dir.fails(&["run-unit", "m.json", "--unit", "0"]);
    assert!(
        err.contains("changed since this job was submitted"),
        "{err}"
    );
}
