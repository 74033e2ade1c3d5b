//! `phiforge filter` (quality presets and SQL conditions over a real corpus) and `phiforge query`
//! (SQL over filter outputs and a build's mix).

use crate::util::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Python's documentation, one document per section, copied into `dir`.
fn docs(dir: &Dir) -> usize {
    let bytes = std::fs::read(root().join("examples/corpus/python-docs.jsonl.gz")).unwrap();
    dir.write("docs.jsonl.gz", bytes);
    python_docs().len()
}

fn report(dir: &Dir, out: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.path(&format!("{out}/report.json"))).unwrap())
        .unwrap()
}

#[test]
fn gopher_keeps_pythons_documentation_and_says_why_it_drops() {
    let dir = Dir::new();
    let n = docs(&dir);
    let stdout = dir.ok(&[
        "filter",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "out",
        "--preset",
        "gopher",
    ]);
    assert!(stdout.contains(&format!("{n} documents")), "{stdout}");
    let r = report(&dir, "out");
    assert_eq!(r["documents"], json!(n));
    let kept = r["kept"].as_u64().unwrap() as usize;
    let removed = r["removed"].as_u64().unwrap() as usize;
    assert_eq!(kept + removed, n);
    // Prose with rST markup and code samples: phiforge's words leave punctuation out, so the
    // alphabetic-words rule drops few sections (datatrove's drops most; docs/curation.md).
    let alpha = r["reasons"]["gopher_below_alpha_threshold"]
        .as_u64()
        .unwrap_or(0) as usize;
    assert!(alpha * 10 < n, "{alpha} of {n}: {r}");
    assert!(kept * 2 > n, "{kept} of {n} kept: {r}");
    let counted: u64 = r["reasons"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, removed);

    // One decision per document, in input order, in the peer's shape.
    let decisions = read_jsonl(&dir.path("out/decisions.jsonl"));
    assert_eq!(decisions.len(), n);
    let input = python_docs();
    let mut reason_of = HashMap::new();
    for (d, doc) in decisions.iter().zip(&input) {
        assert_eq!(d["id"], doc["id"]);
        assert_eq!(d["keep"].as_bool().unwrap(), d["reason"].is_null(), "{d}");
        reason_of.insert(d["id"].as_str().unwrap().to_string(), d["reason"].clone());
    }
    // Kept and removed documents, unchanged but for the reason the removed carry.
    let kept_docs = read_jsonl(&dir.path("out/kept/docs.jsonl.gz"));
    let removed_docs = read_jsonl(&dir.path("out/removed/docs.jsonl.gz"));
    assert_eq!((kept_docs.len(), removed_docs.len()), (kept, removed));
    for d in &kept_docs {
        assert!(reason_of[d["id"].as_str().unwrap()].is_null());
    }
    for d in &removed_docs {
        let want = &reason_of[d["id"].as_str().unwrap()];
        assert_eq!(&d["_phiforge"]["reason"], want, "{}", d["id"]);
    }

    // signals.parquet holds every signal, and query reads it: the decisions' reasons again.
    let csv = dir.path("reasons.csv");
    dir.ok(&[
        "query",
        "out/signals.parquet",
        "SELECT reason, count(*) AS n FROM samples WHERE NOT keep GROUP BY reason ORDER BY n DESC, reason",
        "--output",
        csv.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("reason,n"));
    let from_query: HashMap<String, u64> = lines
        .map(|l| {
            let (r, n) = l.split_once(',').unwrap();
            (r.to_string(), n.parse().unwrap())
        })
        .collect();
    let from_report: HashMap<String, u64> = r["reasons"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(from_query, from_report);
}

#[test]
fn a_where_clause_keeps_what_it_says_and_query_counts_the_same() {
    let dir = Dir::new();
    docs(&dir);
    let cond = "words >= 200 AND language = 'eng' AND symbol_to_word_ratio < 0.1";
    dir.ok(&[
        "filter",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "out",
        "--where",
        cond,
    ]);
    let r = report(&dir, "out");
    let kept = r["kept"].as_u64().unwrap();
    assert!(kept > 0 && r["removed"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["reasons"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["where"]
    );
    // The same condition as a query over the signals.
    let csv = dir.path("n.csv");
    let sql = format!("SELECT count(*) AS n FROM samples WHERE {cond}");
    dir.ok(&[
        "query",
        "out/signals.parquet",
        &sql,
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        format!("n\n{kept}\n")
    );
    // A preset and a where clause: the preset's rules first.
    dir.ok(&[
        "filter",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "both",
        "--preset",
        "fineweb",
        "--where",
        "id <> ''",
    ]);
    let rules = report(&dir, "both")["rules"].clone();
    assert_eq!(rules[0]["reason"], "empty");
    assert_eq!(
        rules[5],
        json!({"reason": "where", "condition": "id <> ''"})
    );
}

#[test]
fn where_reads_the_records_own_fields_when_declared() {
    let dir = Dir::new();
    let n = docs(&dir) as u64;
    let filter = |out: &str, cond: &str, field: &str| {
        let mut args = vec!["filter", "-i", "docs.jsonl.gz", "-o", out, "--where", cond];
        if !field.is_empty() {
            args.extend(["--field", field]);
        }
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| dir.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Every section of Python's docs has `source`: python3.11-doc.
    run(filter("words", "words >= 200", ""));
    run(filter(
        "both",
        "words >= 200 AND source = 'python3.11-doc'",
        "source:str",
    ));
    run(filter("none", "source <> 'python3.11-doc'", "source:str"));
    let kept = report(&dir, "words")["kept"].as_u64().unwrap();
    assert!(kept > 0 && kept < n, "{kept} of {n}");
    assert_eq!(report(&dir, "both")["kept"], kept);
    assert_eq!(report(&dir, "both")["fields"], json!(["source:str"]));
    assert_eq!(report(&dir, "none")["kept"], 0);
    // A missing field is NULL, and a rule that is NULL does not hold.
    run(filter("null", "lang IS NULL", "lang:str"));
    assert_eq!(report(&dir, "null")["kept"], n);
    // Undeclared: refused before reading, with the way to declare it.
    let args = filter("undeclared", "source = 'x'", "");
    let err = dir.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("unknown column `source`") && err.contains("--field NAME:TYPE"),
        "{err}"
    );
    // Of another type than declared: the file and line, and no output.
    let args = filter("wrong", "source > 1", "source:int");
    let err = dir.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("docs.jsonl.gz: line 1: field `source` is a string, not an integer"),
        "{err}"
    );
    let args = filter("own", "id <> ''", "id:str");
    let err = dir.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("the document's own column"), "{err}");
    assert!(!dir.path("wrong").exists() && !dir.path("undeclared").exists());
}

#[test]
fn bad_conditions_fail_before_reading_anything() {
    let dir = Dir::new();
    docs(&dir);
    let err = dir.fails(&[
        "filter",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "out",
        "--where",
        "words >= 50 AND symbol_ratio < 0.1",
    ]);
    assert!(err.contains("unknown column `symbol_ratio`"), "{err}");
    let err = dir.fails(&[
        "filter",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "out",
        "--preset",
        "dolma",
    ]);
    assert!(err.contains("unknown preset `dolma`"), "{err}");
    let err = dir.fails(&["filter", "-i", "docs.jsonl.gz", "-o", "out"]);
    assert!(err.contains("--preset, --where"), "{err}");
    let err = dir.fails(&[
        "filter",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "out",
        "--where",
        "words",
    ]);
    assert!(err.contains("not a boolean condition"), "{err}");
    assert!(!dir.path("out").exists());
    let err = dir.fails(&["query", "docs.jsonl.gz", "SELECT nope FROM samples"]);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn query_reads_a_builds_mix() {
    let dir = Dir::new();
    let docs: Vec<Value> = python_docs()
        .into_iter()
        .take(300)
        .map(|d| json!({"id": d["id"], "text": d["text"]}))
        .collect();
    let code: Vec<Value> = python_code()
        .into_iter()
        .take(60)
        .map(|d| json!({"id": d["id"], "text": d["text"]}))
        .collect();
    dir.write_jsonl("docs.jsonl", &docs);
    dir.write_jsonl("code.jsonl", &code);
    dir.write(
        "recipe.yaml",
        r#"
name: q
seed: 1
sources:
  docs: {path: docs.jsonl, class: web}
  code: {path: code.jsonl, class: code}
stages:
  - name: unique
    type: dedup_exact
    inputs: [docs, code]
output:
  path: out
mix:
  weights: {web: 0.7, code: 0.3}
  target_tokens: 100000
  shard_tokens: 40000
  policies: {web: {repeat: {max_epochs: 4}}, code: {repeat: {max_epochs: 4}}}
"#,
    );
    dir.ok(&["build", "recipe.yaml"]);
    let sql = "SELECT class, count(*) AS docs, sum(tokens) AS tokens FROM samples GROUP BY class ORDER BY class";
    let shown = dir.ok(&["query", "out", sql]);
    assert!(
        shown.contains("class") && shown.contains("web") && shown.contains("code"),
        "{shown}"
    );
    let out = dir.path("classes.parquet");
    dir.ok(&["query", "out", sql, "--output", out.to_str().unwrap()]);
    let rows = read_jsonl_or_parquet(&out);
    assert_eq!(rows.len(), 2);
    let tokens: u64 = rows.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
    let m = mixes::manifest::Manifest::read(&dir.path("out/mix")).unwrap();
    assert_eq!(tokens, m.report.achieved_tokens);
}

/// The records of a Parquet file, through `phiforge query` itself as CSV would lose types: read
/// with the corpus crate.
fn read_jsonl_or_parquet(path: &std::path::Path) -> Vec<Value> {
    corpus::read_records(path)
        .unwrap()
        .into_iter()
        .map(|(_, r)| Value::Object(r))
        .collect()
}

/// The curation stages in a build: `pii`, `signals`, `filter` and `near_dup`, each counted in the
/// report, the signals stored with the samples, and a second build doing nothing.
#[test]
fn curation_stages_run_in_a_recipe() {
    let dir = Dir::new();
    let recipe = r#"
name: curation
seed: 1
sources:
  docs:
    path: docs.jsonl
    class: web
stages:
  - name: scrub
    type: pii
    inputs: [docs]
    ip: false
  - name: measured
    type: signals
    inputs: [scrub]
  - name: quality
    type: filter
    inputs: [measured]
    where: "words >= 20 AND class = 'web' AND language = 'eng'"
  - name: unique
    type: near_dup
    inputs: [quality]
    minhash: {bands: 25, rows: 2, threshold: 0.3}
output:
  path: out
  shards: 1
  format: jsonl
"#;
    dir.write("recipe.yaml", recipe);
    // Sections of Python's documentation with 40 words or more, a few altered.
    let long: Vec<Value> = python_docs()
        .into_iter()
        .filter(|d| d["text"].as_str().unwrap().split_whitespace().count() >= 40)
        .take(61)
        .map(|d| json!({"id": d["id"], "text": d["text"]}))
        .collect();
    let mut docs = long[..60].to_vec();
    let original = docs[7]["text"].as_str().unwrap().to_string();
    let words: Vec<&str> = original.split(' ').collect();
    for k in 0..3 {
        // One word in twenty changed, a different one in each copy.
        let copy: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i % 20 == k {
                    format!("changed{i}")
                } else {
                    w.to_string()
                }
            })
            .collect();
        docs.push(json!({"id": format!("copy{k}"), "text": copy.join(" ")}));
    }
    docs.push(json!({"id": "short", "text": "Too short to keep."}));
    docs.push(json!({"id": "contact", "text": format!("Write to bob@mail.example.com or call 212-555-0134 from 8.8.8.8. {}", long[60]["text"].as_str().unwrap())}));
    dir.write_jsonl("docs.jsonl", &docs);

    dir.ok(&["build", "recipe.yaml"]);
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.path("out/report.json")).unwrap()).unwrap();
    let scrub = stage(&r, "scrub");
    assert!(scrub["changed"]["pii_email"].as_u64() >= Some(1), "{scrub}");
    assert!(scrub["changed"]["pii_phone"].as_u64() >= Some(1), "{scrub}");
    assert!(
        scrub["changed"].get("pii_ip").is_none(),
        "ip is off: {scrub}"
    );
    assert_eq!(scrub["samples_out"], json!(docs.len()));
    let quality = stage(&r, "quality");
    assert!(quality["dropped"]["where"].as_u64() >= Some(1), "{quality}");
    let unique = stage(&r, "unique");
    assert!(
        unique["dropped"]["near_duplicate"].as_u64().unwrap() >= 3,
        "{unique}"
    );
    let summary = std::fs::read_to_string(dir.path("out/report.txt")).unwrap();
    assert!(
        summary.contains(" pii_email, ") && summary.contains(" pii_phone"),
        "{summary}"
    );

    // The kept samples carry their signals; the copies went, their original stayed.
    let out: Vec<Value> = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| read_jsonl(&dir.path(&format!("out/{}", p.as_str().unwrap()))))
        .collect();
    assert_eq!(
        out.len() as u64,
        stage(&r, "unique")["samples_out"].as_u64().unwrap()
    );
    let source_id = |s: &Value| s["lineage"]["source"]["id"].as_str().map(str::to_string);
    let ids: Vec<Option<String>> = out.iter().map(source_id).collect();
    assert!(ids.contains(&docs[7]["id"].as_str().map(str::to_string)));
    for k in 0..3 {
        assert!(!ids.contains(&Some(format!("copy{k}"))), "copy{k} kept");
    }
    assert!(!ids.contains(&Some("short".into())));
    for s in &out {
        assert!(s["signals"]["words"].as_u64().unwrap() >= 20, "{s}");
    }
    let scrubbed = out
        .iter()
        .find(|s| s["text"].as_str().unwrap().starts_with("Write to"))
        .unwrap();
    assert!(scrubbed["text"]
        .as_str()
        .unwrap()
        .starts_with("Write to |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER||| from 8.8.8.8."));
    // The clusters name the kept sample.
    let clusters: Vec<Value> = walk(&dir.path("out"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".clusters.jsonl"))
        .flat_map(|p| read_jsonl(&p))
        .collect();
    assert!(
        clusters.iter().any(|c| c["size"].as_u64() >= Some(4)),
        "{clusters:?}"
    );

    // Nothing changed: nothing runs.
    let again = dir.ok(&["build", "recipe.yaml"]);
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.path("out/report.json")).unwrap()).unwrap();
    assert_eq!(r["did_work"], json!(false), "{again}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_bad_curation_stage_is_refused_naming_its_field() {
    let dir = Dir::new();
    dir.write_jsonl("docs.jsonl", &[json!({"id": "a", "text": "some text"})]);
    let recipe = |stage: &str| {
        format!(
            "name: bad\nseed: 1\nsources:\n  docs:\n    path: docs.jsonl\n    class: web\nstages:\n{stage}\noutput:\n  path: out\n"
        )
    };
    for (stage, want) in [
        (
            "  - {name: q, type: filter, inputs: [docs], where: \"wordz > 3\"}",
            "stages[0].where",
        ),
        (
            "  - {name: q, type: filter, inputs: [docs], presets: [gofer]}",
            "stages[0].presets[0]",
        ),
        ("  - {name: q, type: filter, inputs: [docs]}", "stages[0]"),
        (
            "  - {name: p, type: pii, inputs: [docs], email: false, ip: false, phone: false}",
            "stages[0]",
        ),
        (
            "  - {name: n, type: near_dup, inputs: [docs], minhash: {bands: 0}}",
            "stages[0].minhash",
        ),
    ] {
        dir.write("recipe.yaml", recipe(stage));
        let err = dir.fails(&["validate", "recipe.yaml"]);
        assert!(err.contains(want), "{stage}: {err}");
        assert!(!dir.path("out").exists());
    }
}
