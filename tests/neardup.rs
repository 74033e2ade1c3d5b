//! `phiforge neardup`: planted near-copies of real documents removed, naming the kept ones, in
//! the input's own format; bad input named by file and line.

use crate::util::*;
use serde_json::{json, Value};

/// `text` with every `step`-th whitespace-separated word replaced by a made-up one.
fn near_copy(text: &str, step: usize) -> String {
    text.split_whitespace()
        .enumerate()
        .map(|(k, w)| {
            if k % step == 1 {
                format!("qz{k}x")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The bundled Python documentation, then near-copies (one word in `step` changed) of four of
/// its long documents; returns (copy id, original id) pairs.
fn planted(dir: &Dir, name: &str, step: usize) -> Vec<(String, String)> {
    let mut docs = python_docs();
    let originals: Vec<Value> = docs
        .iter()
        .filter(|d| d["text"].as_str().unwrap().split_whitespace().count() >= 150)
        .step_by(7)
        .take(4)
        .cloned()
        .collect();
    let mut pairs = Vec::new();
    for d in originals {
        let id = d["id"].as_str().unwrap().to_string();
        let copy = format!("{id}~copy");
        docs.push(json!({"id": copy, "text": near_copy(d["text"].as_str().unwrap(), step)}));
        pairs.push((copy, id));
    }
    dir.write_jsonl(name, &docs);
    pairs
}

fn report(dir: &Dir, out: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.path(out).join("report.json")).unwrap())
        .unwrap()
}

#[test]
fn neardup_removes_planted_copies_naming_the_kept_document() {
    let dir = Dir::new();
    let pairs = planted(&dir, "docs.jsonl", 50);
    let stdout = dir.ok(&["neardup", "-i", "docs.jsonl", "-o", "out"]);
    assert!(stdout.contains("175 documents"), "{stdout}");
    assert!(stdout.contains("4 near-duplicates removed"), "{stdout}");
    let removed = read_jsonl(&dir.path("out/removed/docs.jsonl"));
    let got: Vec<(String, String)> = removed
        .iter()
        .map(|d| {
            assert_eq!(d["_phiforge"]["reason"], "near_duplicate");
            (
                d["id"].as_str().unwrap().to_string(),
                d["_phiforge"]["kept"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, pairs);
    // Kept documents are copied through unchanged, in input order.
    let kept = raw_lines(&dir.path("out/kept/docs.jsonl"));
    let input = raw_lines(&dir.path("docs.jsonl"));
    assert_eq!(kept, input[..171]);
    let clusters = read_jsonl(&dir.path("out/clusters.jsonl"));
    assert_eq!(clusters.len(), 4);
    assert_eq!(clusters[0]["kept"], pairs[0].1.as_str());
    assert_eq!(clusters[0]["dropped"], json!([pairs[0].0]));
    let r = report(&dir, "out");
    assert_eq!(r["documents"], 175);
    assert_eq!(r["removed"], 4);
    assert_eq!(r["settings"]["bands"], 14);
    assert_eq!(r["settings"]["rows"], 8);
    assert!(r["precision"].as_f64().unwrap() > 0.0);
}

#[test]
fn neardup_settings_reach_more_distant_copies_in_any_format() {
    let dir = Dir::new();
    // One word in ten changed: beyond FineWeb's bands, within 25 bands of 2 at Jaccard 0.3.
    let pairs = planted(&dir, "docs.jsonl", 10);
    let body = std::fs::read(dir.path("docs.jsonl")).unwrap();
    dir.write("docs.jsonl.gz", gzip(&body));
    dir.ok(&["neardup", "-i", "docs.jsonl.gz", "-o", "default"]);
    assert!(report(&dir, "default")["removed"].as_u64().unwrap() < 4);
    let stdout = dir.ok(&[
        "neardup",
        "-i",
        "docs.jsonl.gz",
        "-o",
        "tuned",
        "--bands",
        "25",
        "--rows",
        "2",
        "--threshold",
        "0.3",
        "--threads",
        "1",
    ]);
    assert!(stdout.contains("4 near-duplicates removed"), "{stdout}");
    let removed = read_jsonl(&dir.path("tuned/removed/docs.jsonl.gz"));
    let ids: Vec<&str> = removed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, pairs.iter().map(|p| p.0.as_str()).collect::<Vec<_>>());
    assert_eq!(report(&dir, "tuned")["settings"]["threshold"], 0.3);
}

#[test]
fn neardup_names_a_bad_record_and_refuses_bad_settings() {
    let dir = Dir::new();
    dir.write(
        "bad.jsonl",
        "{\"id\": \"a\", \"text\": \"one two three four five six\"}\n{\"id\": \"b\", \"text\": 7}\n",
    );
    let err = dir.fails(&["neardup", "-i", "bad.jsonl", "-o", "out"]);
    assert!(err.contains("bad.jsonl: line 2"), "{err}");
    assert!(!dir.path("out").exists());
    let err = dir.fails(&[
        "neardup",
        "-i",
        "bad.jsonl",
        "-o",
        "out",
        "--threshold",
        "2",
    ]);
    assert!(err.contains("threshold"), "{err}");
}
