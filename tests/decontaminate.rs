//! `phiforge decontaminate`: kept and removed documents, unchanged, in the input's format.

use crate::util::*;
use serde_json::{json, Value};

fn corpus(dir: &Dir) -> Vec<String> {
    let gsm = item("gsm8k", "gsm8k/3");
    let mut docs = python_docs();
    docs.truncate(15);
    let host = docs[5]["text"].as_str().unwrap().to_string();
    docs[5] = json!({"id": "leak", "text": plant(&host, gsm["question"].as_str().unwrap()), "meta": {"keep": "me"}});
    let lines: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    dir.write(
        "in/docs.jsonl.gz",
        gzip((lines.join("\n") + "\n").as_bytes()),
    );
    lines
}

#[test]
fn kept_and_removed_partition_the_input_unchanged() {
    let dir = Dir::new();
    let lines = corpus(&dir);
    dir.ok(&[
        "decontaminate",
        "-b",
        "standard",
        "-i",
        "in/docs.jsonl.gz",
        "-o",
        "out",
    ]);
    let kept = raw_lines(&dir.path("out/kept/docs.jsonl.gz"));
    let removed = read_jsonl(&dir.path("out/removed/docs.jsonl.gz"));
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["id"], "leak");
    assert_eq!(removed[0]["meta"]["keep"], "me");
    assert_eq!(removed[0]["_phiforge"]["verdict"], "contaminated");
    assert_eq!(removed[0]["_phiforge"]["item_id"], "gsm8k/3");
    // Kept lines are the input lines, byte for byte and in order.
    let want: Vec<String> = lines
        .iter()
        .filter(|l| !l.contains("\"leak\""))
        .cloned()
        .collect();
    assert_eq!(kept, want);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap();
    assert_eq!(report["settings"]["mode"], "decontaminate");
}

#[test]
fn bad_lines_are_set_aside_not_lost() {
    let dir = Dir::new();
    let mut lines = corpus(&dir);
    lines.insert(3, "{broken".into());
    dir.write("in/docs.jsonl", lines.join("\n") + "\n");
    dir.ok(&[
        "decontaminate",
        "-b",
        "standard",
        "-i",
        "in/docs.jsonl",
        "-o",
        "out",
        "--skip-bad-lines",
    ]);
    let kept = raw_lines(&dir.path("out/kept/docs.jsonl"));
    let removed = raw_lines(&dir.path("out/removed/docs.jsonl"));
    let rejected = raw_lines(&dir.path("out/rejected/docs.jsonl"));
    assert_eq!(rejected, ["{broken"]);
    assert_eq!(kept.len() + removed.len() + rejected.len(), lines.len());
}

#[test]
fn parquet_and_text_folders_come_out_in_their_own_format() {
    let dir = Dir::new();
    let gsm = item("gsm8k", "gsm8k/3");
    let mut t = corpus::TableWriter::create(
        &dir.path("t.parquet"),
        &[
            ("id", corpus::ColumnKind::Utf8),
            ("text", corpus::ColumnKind::Utf8),
            ("n", corpus::ColumnKind::U64),
        ],
    )
    .unwrap();
    for (k, d) in python_docs().iter().take(20).enumerate() {
        let text = if k == 7 {
            gsm["question"].as_str().unwrap()
        } else {
            d["text"].as_str().unwrap()
        };
        t.push(vec![
            corpus::Column::Str(d["id"].as_str().unwrap().into()),
            corpus::Column::Str(text.into()),
            corpus::Column::U64(k as u64),
        ])
        .unwrap();
    }
    t.finish().unwrap();
    dir.ok(&[
        "decontaminate",
        "-b",
        "gsm8k",
        "-i",
        "t.parquet",
        "-o",
        "out",
    ]);
    let kept = corpus::read_records(&dir.path("out/kept/t.parquet")).unwrap();
    let removed = corpus::read_records(&dir.path("out/removed/t.parquet")).unwrap();
    assert_eq!(kept.len(), 19);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].1["n"], 7);
    assert!(removed[0].1["_phiforge"]
        .as_str()
        .unwrap()
        .contains("gsm8k/3"));

    dir.write(
        "txt/a.txt",
        "Nothing to see here, a plain note about gardening and compost.",
    );
    dir.write("txt/sub/b.txt", gsm["question"].as_str().unwrap());
    dir.ok(&["decontaminate", "-b", "gsm8k", "-i", "txt", "-o", "out2"]);
    assert!(dir.path("out2/kept/txt/a.txt").exists());
    assert!(dir.path("out2/removed/txt/sub/b.txt").exists());
    let notes = read_jsonl(&dir.path("out2/removed/txt/_phiforge.jsonl"));
    assert_eq!(notes[0]["file"], "sub/b.txt");
}

#[test]
fn a_single_text_file_comes_out_as_a_file() {
    let dir = Dir::new();
    let gsm = item("gsm8k", "gsm8k/3");
    dir.write(
        "clean.txt",
        "A plain note about gardening, compost and the weather in spring.",
    );
    dir.write("leak.md", gsm["question"].as_str().unwrap());
    dir.ok(&[
        "decontaminate",
        "-b",
        "gsm8k",
        "-i",
        "clean.txt",
        "leak.md",
        "-o",
        "out",
    ]);
    assert!(dir.path("out/kept/clean.txt").is_file());
    assert!(dir.path("out/removed/leak.md").is_file());
    let notes = read_jsonl(&dir.path("out/removed/leak.md._phiforge.jsonl"));
    assert_eq!(notes[0]["_phiforge"]["item_id"], "gsm8k/3");
}
