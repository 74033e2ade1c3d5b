//! `phiforge audit`: its outputs and the shape of `audit.json` (golden).

use crate::util::*;
use serde_json::{json, Value};

fn golden_input(dir: &Dir) {
    let gsm = item("gsm8k", "gsm8k/0");
    dir.write_jsonl(
        "input.jsonl",
        &[
            json!({"id": "leak", "text": format!("Practice problem. {}", gsm["question"].as_str().unwrap())}),
            json!({"id": "clean", "text": "Ducks are birds that swim in ponds and eat plants, insects and small fish."}),
            json!({"id": 3, "text": "Another clean document about the farmers market and its opening hours on weekends."}),
        ],
    );
}

/// `audit.json` with the values that change from run to run (timings) set to 0.
fn stable(mut v: Value) -> Value {
    v["totals"]["seconds"] = json!(0);
    v["totals"]["mb_per_s"] = json!(0);
    v
}

#[test]
fn audit_json_matches_golden() {
    let dir = Dir::new();
    golden_input(&dir);
    dir.ok(&["audit", "-b", "gsm8k", "-i", "input.jsonl", "-o", "out"]);
    let got = stable(
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap(),
    );
    let golden = root().join("tests/data/expected/audit.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    assert_json_eq(&got, &want);
}

#[test]
fn audit_writes_every_output() {
    let dir = Dir::new();
    golden_input(&dir);
    let stdout = dir.ok(&["audit", "-b", "gsm8k", "-i", "input.jsonl", "-o", "out"]);
    assert!(stdout.contains("3 documents"), "{stdout}");
    assert!(stdout.contains("1 contaminated"), "{stdout}");
    let samples = read_jsonl(&dir.path("out/samples.jsonl"));
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    for key in [
        "id",
        "verdict",
        "rule",
        "benchmark",
        "item_id",
        "ratio",
        "ngram",
        "span",
        "text",
        "source",
        "line",
    ] {
        assert!(s.get(key).is_some(), "samples.jsonl lacks {key}: {s}");
    }
    assert_eq!(s["id"], "leak");
    assert_eq!(s["item_id"], "gsm8k/0");
    assert_eq!(s["line"], 1);
    assert_eq!(
        s["span"],
        json!([
            18,
            18 + item("gsm8k", "gsm8k/0")["question"]
                .as_str()
                .unwrap()
                .chars()
                .count()
                - 1
        ])
    );

    // The same rows as a Parquet table.
    let rows = corpus::read_records(&dir.path("out/hits.parquet")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1["item_id"], "gsm8k/0");
    assert_eq!(rows[0].1["span_start"], 18);
    assert_eq!(rows[0].1["ngram"], s["ngram"]);

    let md = std::fs::read_to_string(dir.path("out/report.md")).unwrap();
    assert!(md.contains("| gsm8k | 1319 |"), "{md}");
    assert!(md.contains("gsm8k/0"), "{md}");
    assert!(dir.path("out/uncheckable.jsonl").exists());
    // Nothing but the outputs is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("phiforge-tmp")),
        "{names:?}"
    );
}

#[test]
fn a_sample_reports_every_item_it_touches() {
    let dir = Dir::new();
    let gsm = item("gsm8k", "gsm8k/3");
    let mbpp = item("mbpp", "mbpp/11");
    let q = |i: &Value| i["question"].as_str().unwrap().to_string();
    dir.write_jsonl(
        "input.jsonl",
        &[json!({"id": "two", "text": format!("First: {}\n\nThen: {}", q(&gsm), q(&mbpp))})],
    );
    dir.ok(&[
        "audit",
        "-b",
        "gsm8k",
        "mbpp",
        "-i",
        "input.jsonl",
        "-o",
        "out",
    ]);
    let samples = read_jsonl(&dir.path("out/samples.jsonl"));
    assert_eq!(samples.len(), 1);
    let items: Vec<&str> = samples[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item_id"].as_str().unwrap())
        .collect();
    assert!(
        items.contains(&"gsm8k/3") && items.contains(&"mbpp/11"),
        "{items:?}"
    );
    // The best item leads the list and is the sample's own fields.
    assert_eq!(samples[0]["item_id"], items[0]);
    // One row per item in hits.parquet, ranked; both benchmarks count the sample.
    let rows = corpus::read_records(&dir.path("out/hits.parquet")).unwrap();
    let ranked: Vec<(u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r.1["rank"].as_u64().unwrap(),
                r.1["item_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = items
        .iter()
        .enumerate()
        .map(|(k, i)| (k as u64, i.to_string()))
        .collect();
    assert_eq!(ranked, want);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap();
    for b in ["gsm8k", "mbpp"] {
        assert_eq!(report["benchmarks"][b]["samples_contaminated"], 1, "{b}");
        assert!(
            report["benchmarks"][b]["items_hit"].as_u64().unwrap() >= 1,
            "{b}"
        );
    }
    assert_eq!(report["totals"]["contaminated"], 1);
}

#[test]
fn allow_list_lines_are_not_evidence() {
    let dir = Dir::new();
    golden_input(&dir);
    dir.write(
        "allow.txt",
        format!(
            "{}\n",
            item("gsm8k", "gsm8k/0")["question"].as_str().unwrap()
        ),
    );
    dir.ok(&[
        "audit",
        "-b",
        "gsm8k",
        "-i",
        "input.jsonl",
        "-o",
        "out",
        "--allow-list",
        "allow.txt",
    ]);
    assert!(read_jsonl(&dir.path("out/samples.jsonl")).is_empty());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap();
    assert!(report["index"]["allowed_long_by_list"].as_u64().unwrap() > 0);
    assert!(report["settings"]["allow_list"]["sha256"].is_string());
}

#[test]
fn normalize_command_matches_golden() {
    let dir = Dir::new();
    let cases = std::fs::read_to_string(root().join("tests/data/normalize.tsv")).unwrap();
    for line in cases.lines().filter(|l| !l.starts_with('#')) {
        let (input, want) = line.split_once('\t').unwrap();
        let input = input.replace("\\n", "\n").replace("\\t", "\t");
        assert_eq!(
            dir.ok(&["normalize", &input]).trim_end_matches('\n'),
            want,
            "{input:?}"
        );
    }
}
