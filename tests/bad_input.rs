//! Bad input: a clear error naming file and line, and no partial output; or, with
//! `--skip-bad-lines`, counted and reported skips.

use crate::util::*;
use serde_json::Value;

const GOOD: &str = "{\"id\": 1, \"text\": \"a clean line of text about nothing in particular\"}\n";

fn audit_fails(dir: &Dir, input: &str) -> String {
    let err = dir.fails(&["audit", "-b", "gsm8k", "-i", input, "-o", "out"]);
    assert!(!dir.path("out").exists(), "partial output left for {input}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("phiforge-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "staging folder left for {input}");
    err
}

#[test]
fn malformed_records_name_file_and_line() {
    let dir = Dir::new();
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "json.jsonl",
            format!("{GOOD}{GOOD}{{\"text\": \"unterminated\n").into_bytes(),
            "json.jsonl: line 3: invalid JSON",
        ),
        (
            "utf8.jsonl",
            [GOOD.as_bytes(), b"{\"text\": \"caf\xe9\"}\n"].concat(),
            "utf8.jsonl: line 2: invalid UTF-8",
        ),
        (
            "field.jsonl",
            format!("{GOOD}{{\"body\": \"no text here\"}}\n").into_bytes(),
            "field.jsonl: line 2: missing text field `text`",
        ),
        (
            "type.jsonl",
            b"{\"text\": [1, 2]}\n".to_vec(),
            "type.jsonl: line 1:",
        ),
        ("empty.jsonl", Vec::new(), "empty.jsonl: the file is empty"),
        (
            "blank.jsonl",
            b"\n \n".to_vec(),
            "blank.jsonl: the file is empty",
        ),
    ];
    for (name, body, want) in cases {
        dir.write(name, body);
        let err = audit_fails(&dir, name);
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn corrupt_gzip_is_an_error() {
    let dir = Dir::new();
    let body: String = (0..5000)
        .map(|i| format!("{{\"text\": \"document {i} with a few words\"}}\n"))
        .collect();
    let mut gz = gzip(body.as_bytes());
    let n = gz.len();
    gz.truncate(n * 2 / 3);
    dir.write("cut.jsonl.gz", gz);
    let err = audit_fails(&dir, "cut.jsonl.gz");
    assert!(err.contains("cut.jsonl.gz: line"), "{err}");
}

#[test]
fn unknown_benchmarks_and_missing_inputs_are_errors() {
    let dir = Dir::new();
    dir.write("c.jsonl", GOOD);
    let err = dir.fails(&["audit", "-b", "gsm9k", "-i", "c.jsonl", "-o", "out"]);
    assert!(
        err.contains("unknown benchmark `gsm9k`") && err.contains("gsm8k"),
        "{err}"
    );
    let err = dir.fails(&["audit", "-b", "gsm8k", "-i", "nope/*.jsonl", "-o", "out"]);
    assert!(err.contains("`nope/*.jsonl` matches no file"), "{err}");
    let err = dir.fails(&["audit", "-b", "gsm8k", "-i", "c.csv", "-o", "out"]);
    assert!(err.contains("c.csv"), "{err}");
    dir.write("b.jsonl", "{\"question\": \"q\"}\n");
    let err = dir.fails(&["audit", "-b", "b.jsonl", "-i", "c.jsonl", "-o", "out"]);
    assert!(
        err.contains("b.jsonl: no record has the field `answer`"),
        "{err}"
    );
    let err = dir.fails(&[
        "audit",
        "-b",
        "gsm8k",
        "-i",
        "c.jsonl",
        "-o",
        "out",
        "--info-threshold",
        "0.9",
    ]);
    assert!(err.contains("thresholds"), "{err}");
    assert!(!dir.path("out").exists());
}

#[test]
fn a_failed_run_leaves_an_earlier_report_untouched() {
    let dir = Dir::new();
    dir.write("good.jsonl", GOOD);
    dir.ok(&["audit", "-b", "gsm8k", "-i", "good.jsonl", "-o", "out"]);
    let before = std::fs::read(dir.path("out/audit.json")).unwrap();
    dir.write("bad.jsonl", format!("{GOOD}not json\n"));
    dir.fails(&["audit", "-b", "gsm8k", "-i", "bad.jsonl", "-o", "out"]);
    assert_eq!(std::fs::read(dir.path("out/audit.json")).unwrap(), before);
}

#[test]
fn skip_bad_lines_counts_and_reports_skips() {
    let dir = Dir::new();
    dir.write(
        "mixed.jsonl",
        format!("{GOOD}not json\n{GOOD}{{\"body\": 1}}\n{GOOD}"),
    );
    let stdout = dir.ok(&[
        "audit",
        "-b",
        "gsm8k",
        "-i",
        "mixed.jsonl",
        "-o",
        "out",
        "--skip-bad-lines",
    ]);
    assert!(stdout.contains("2 malformed records skipped"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap();
    assert_eq!(report["totals"]["skipped_records"], 2);
    assert_eq!(report["totals"]["documents"], 3);
    let lines: Vec<u64> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 4]);
    assert!(std::fs::read_to_string(dir.path("out/report.md"))
        .unwrap()
        .contains("2 malformed records were skipped"));
}
