//! Benchmark items planted into real documents must be found, with the right benchmark and item,
//! and the real documents around them must stay clean.

use crate::util::*;
use dedup::normalize::normalize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Normalised tokens of `text` with every `k`-th one replaced by a word no benchmark has.
fn break_every(text: &str, k: usize) -> String {
    normalize(text)
        .split(' ')
        .enumerate()
        .map(|(i, w)| if (i + 1) % k == 0 { "zzqx" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_long(name: &str, min_words: usize) -> Value {
    benchmark(name)
        .into_iter()
        .find(|i| {
            normalize(i["question"].as_str().unwrap())
                .split(' ')
                .count()
                >= min_words
        })
        .unwrap()
}

struct Case {
    id: &'static str,
    text: String,
    benchmark: &'static str,
    item: String,
    verdict: &'static str,
    rule: &'static str,
}

fn cases() -> Vec<Case> {
    let q = |i: &Value| i["question"].as_str().unwrap().to_string();
    let a = |i: &Value| i["answer"].as_str().unwrap().to_string();
    let id = |i: &Value| i["id"].as_str().unwrap().to_string();

    let gsm = item("gsm8k", "gsm8k/5");
    let mmlu = first_long("mmlu", 30);
    let math = item("math", "math/algebra/10");
    let gsm_half = item("gsm8k", "gsm8k/7");
    let heval = item("humaneval", "HumanEval/10");
    let arc = first_long("gsm8k", 50);
    let short_q = benchmark("arc_challenge")
        .into_iter()
        .find(|i| {
            (10..=12).contains(
                &normalize(i["question"].as_str().unwrap())
                    .split(' ')
                    .count(),
            )
        })
        .unwrap();
    let arc2 = benchmark("gsm8k")
        .into_iter()
        .filter(|i| {
            normalize(i["question"].as_str().unwrap())
                .split(' ')
                .count()
                >= 50
        })
        .nth(1)
        .unwrap();

    // Case and punctuation changed.
    let shouty: String = format!("{}\n{}", q(&mmlu), a(&mmlu))
        .to_uppercase()
        .replace(' ', "  ")
        .replace(['.', ','], " ;; ")
        .replace('?', "?!");
    // Three words changed, spread over the item.
    let words: Vec<String> = format!("{} {}", q(&math), a(&math))
        .split_whitespace()
        .map(String::from)
        .collect();
    let n = words.len();
    let edited: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if [n / 4, n / 2, 3 * n / 4].contains(&i) {
                "banana".into()
            } else {
                w.clone()
            }
        })
        .collect();
    // Half an item: the second half of a solution.
    let sol = a(&gsm_half);
    let mut half_at = sol.len() / 2;
    while !sol.is_char_boundary(half_at) {
        half_at += 1;
    }

    vec![
        Case {
            id: "planted/verbatim",
            text: format!("{}\n{}", q(&gsm), a(&gsm)),
            benchmark: "gsm8k",
            item: id(&gsm),
            verdict: "contaminated",
            rule: "ngram13",
        },
        Case {
            id: "planted/case-punctuation",
            text: shouty,
            benchmark: "mmlu",
            item: id(&mmlu),
            verdict: "contaminated",
            rule: "ngram13",
        },
        Case {
            id: "planted/words-changed",
            text: edited.join(" "),
            benchmark: "math",
            item: id(&math),
            verdict: "contaminated",
            rule: "ngram13",
        },
        Case {
            id: "planted/half-solution",
            text: sol[half_at..].to_string(),
            benchmark: "gsm8k",
            item: id(&gsm_half),
            verdict: "contaminated",
            rule: "ngram13",
        },
        Case {
            id: "planted/code",
            text: q(&heval),
            benchmark: "humaneval",
            item: id(&heval),
            verdict: "contaminated",
            rule: "ngram13",
        },
        // A question of 10 to 12 tokens copied alone: too short for a 13-gram, all its 7-grams.
        Case {
            id: "planted/short-question",
            text: format!("{} Discuss with a partner.", q(&short_q)),
            benchmark: "arc_challenge",
            item: id(&short_q),
            verdict: "contaminated",
            rule: "ngram7",
        },
        // Every 12th token changed: no 13-gram survives, 6 of every 13 7-grams do: partial by
        // Phi-4's rule, an edited copy by the alignment (11 of 12 words in place).
        Case {
            id: "planted/7gram-partial-12",
            text: break_every(&q(&arc), 12),
            benchmark: "gsm8k",
            item: id(&arc),
            verdict: "edited",
            rule: "edit",
        },
        // Every 10th token changed: 3 of every 10 7-grams survive.
        Case {
            id: "planted/7gram-partial",
            text: break_every(&q(&arc2), 10),
            benchmark: "gsm8k",
            item: id(&arc2),
            verdict: "edited",
            rule: "edit",
        },
    ]
}

/// The real documents with the cases planted into some of them (the planted ones renamed).
fn corpus(cases: &[Case]) -> Vec<Value> {
    let mut docs = python_docs();
    docs.extend(python_code());
    for (k, c) in cases.iter().enumerate() {
        // Spread over the corpus; the code case goes into a code document.
        let at = if c.id == "planted/code" {
            docs.len() - 1
        } else {
            3 + k * 20
        };
        let host = docs[at]["text"].as_str().unwrap().to_string();
        docs[at] = json!({"id": c.id, "text": plant(&host, &c.text)});
    }
    docs
}

/// A real overlap of the example corpus: Python's `collections` page states MBPP task 174.
const REAL_LEAK: (&str, &str) = ("pydoc/library/collections.rst.txt#4", "mbpp/174");

#[test]
fn planted_items_are_found_and_real_documents_stay_clean() {
    let dir = Dir::new();
    let cases = cases();
    let docs = corpus(&cases);
    dir.write_jsonl("corpus.jsonl", &docs);
    dir.ok(&["audit", "-b", "standard", "-i", "corpus.jsonl", "-o", "out"]);
    let flagged: BTreeMap<String, Value> = read_jsonl(&dir.path("out/samples.jsonl"))
        .into_iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect();

    for c in &cases {
        let s = flagged
            .get(c.id)
            .unwrap_or_else(|| panic!("{} was not found", c.id));
        assert_eq!(
            (
                s["benchmark"].as_str().unwrap(),
                s["item_id"].as_str().unwrap()
            ),
            (c.benchmark, c.item.as_str()),
            "{}",
            c.id
        );
        assert_eq!(s["verdict"], c.verdict, "{}: {s}", c.id);
        assert_eq!(s["rule"], c.rule, "{}: {s}", c.id);
        // The span points at planted text in the sample.
        let text = docs.iter().find(|d| d["id"] == c.id).unwrap()["text"]
            .as_str()
            .unwrap();
        let span: Vec<usize> = s["span"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let matched: String = text.chars().skip(span[0]).take(span[1] - span[0]).collect();
        assert_eq!(
            normalize(&matched),
            s["ngram"].as_str().unwrap(),
            "{}",
            c.id
        );
        // ... and lies (mostly: a match may run on into text around it) over the planted text.
        let at = text.find(&c.text).unwrap();
        let planted = (
            text[..at].chars().count(),
            text[..at].chars().count() + c.text.chars().count(),
        );
        let overlap = span[1]
            .min(planted.1)
            .saturating_sub(span[0].max(planted.0));
        assert!(
            overlap * 10 >= (span[1] - span[0]) * 9,
            "{}: span {span:?}, planted {planted:?}",
            c.id
        );
    }
    let leak = &flagged[REAL_LEAK.0];
    assert_eq!(leak["item_id"], REAL_LEAK.1);

    // Everything else is clean: no false positive on the real documents.
    let extra: Vec<&String> = flagged
        .keys()
        .filter(|k| !cases.iter().any(|c| c.id == k.as_str()) && k.as_str() != REAL_LEAK.0)
        .collect();
    assert!(extra.is_empty(), "false positives: {extra:?}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap();
    let t = &report["totals"];
    assert_eq!(t["documents"], docs.len());
    assert_eq!(t["partial"], 0);
    assert_eq!(t["edited"], 2);
    assert_eq!(t["contaminated"], cases.len() as u64 - 1);
    assert_eq!(report["benchmarks"]["gsm8k"]["items_hit"], 4);
    assert_eq!(report["benchmarks"]["arc_challenge"]["items_hit"], 1);
}

/// `text` with one word in each run of eight replaced by another real word, at a seeded place.
fn edit_one_in_eight(text: &str, seed: u64) -> String {
    const WORDS: &[&str] = &[
        "river", "garden", "yellow", "quietly", "market", "window", "seven", "travel", "bright",
        "honest",
    ];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut words: Vec<&str> = text.split_whitespace().collect();
    for block in (0..words.len()).step_by(8) {
        let at = block + next((words.len() - block).min(8));
        words[at] = WORDS[next(WORDS.len())];
    }
    words.join(" ")
}

/// Items of every bundled set, each copied whole (question, choices, answer) with one word in
/// eight replaced, planted into real documents: no 13-gram survives and the 7-gram ratio stays
/// near 1/8 to 1/4, so Phi-4's rule passes most as clean; the edit rule finds them.
#[test]
fn items_with_one_word_in_eight_changed_are_found_by_the_edit_rule() {
    let dir = Dir::new();
    let mut docs = python_docs();
    let mut planted = Vec::new();
    for name in [
        "gsm8k",
        "math",
        "mmlu",
        "humaneval",
        "mbpp",
        "arc_challenge",
        "arc_easy",
    ] {
        for item in benchmark(name).into_iter().step_by(151).take(8) {
            let mut text = item["question"].as_str().unwrap().to_string();
            for c in item["choices"].as_array().into_iter().flatten() {
                text = format!("{text}\n{}", c.as_str().unwrap());
            }
            text = format!("{text}\n{}", item["answer"].as_str().unwrap());
            let k = planted.len();
            let at = 5 + 3 * k;
            let host = docs[at]["text"].as_str().unwrap().to_string();
            let id = format!("edited/{k}");
            docs[at] = json!({"id": id, "text": plant(&host, &edit_one_in_eight(&text, k as u64))});
            planted.push((id, item["id"].as_str().unwrap().to_string()));
        }
    }
    dir.write_jsonl("corpus.jsonl", &docs);
    let found = |args: &[&str]| -> (usize, usize, Vec<String>) {
        dir.ok(&[
            &["audit", "-b", "standard", "-i", "corpus.jsonl", "-o", "out"],
            args,
        ]
        .concat());
        let flagged: BTreeMap<String, Value> = read_jsonl(&dir.path("out/samples.jsonl"))
            .into_iter()
            .map(|s| (s["id"].as_str().unwrap().to_string(), s))
            .collect();
        let (mut removed, mut edited) = (0, 0);
        for (id, item) in &planted {
            let Some(s) = flagged.get(id) else { continue };
            // The planted item is among the items the sample touches, with the verdict.
            let hit = s["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["item_id"] == *item);
            match hit.map(|h| h["item_verdict"].as_str().unwrap()) {
                Some("contaminated") => removed += 1,
                Some("edited") => {
                    removed += 1;
                    edited += 1;
                }
                _ => {}
            }
        }
        let extra = flagged
            .keys()
            .filter(|k| !k.starts_with("edited/") && k.as_str() != REAL_LEAK.0)
            .cloned()
            .collect();
        (removed, edited, extra)
    };
    let (phi4, none, extra) = found(&["--no-edit-rule"]);
    assert_eq!(none, 0);
    assert!(extra.is_empty(), "false positives: {extra:?}");
    let (both, edited, extra) = found(&[]);
    assert!(extra.is_empty(), "false positives: {extra:?}");
    eprintln!(
        "of {} items edited one word in eight: Phi-4's rule finds {phi4}, with the edit rule {both} ({edited} as edited)",
        planted.len()
    );
    assert!(
        both * 10 >= planted.len() * 6,
        "{both} of {}",
        planted.len()
    );
    assert!(both > phi4 && edited > 0);
}

#[test]
fn short_items_match_as_a_whole_run_or_are_reported_uncheckable() {
    let dir = Dir::new();
    dir.write_jsonl(
        "mine.jsonl",
        &[
            json!({"id": "q1", "question": "Who wrote Hamlet?", "answer": "William Shakespeare"}),
            json!({"id": "q2", "question": "Yes?", "answer": "no"}),
            json!({"id": "q3", "question": "", "answer": ""}),
        ],
    );
    let docs = python_docs();
    let host = docs[10]["text"].as_str().unwrap();
    dir.write_jsonl(
        "c.jsonl",
        &[
            json!({"id": "leak", "text": plant(host, "Quiz: who wrote Hamlet? William Shakespeare, of course.")}),
            json!({"id": "near", "text": "William Shakespeare wrote many plays; who wrote Hamlet is no mystery."}),
            json!({"id": "yes", "text": "Yes? No."}),
        ],
    );
    dir.ok(&["audit", "-b", "mine.jsonl", "-i", "c.jsonl", "-o", "out"]);
    let flagged = read_jsonl(&dir.path("out/samples.jsonl"));
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0]["id"], "leak");
    assert_eq!(flagged[0]["rule"], "exact");
    assert_eq!(flagged[0]["ngram"], "who wrote hamlet william shakespeare");
    let unch = read_jsonl(&dir.path("out/uncheckable.jsonl"));
    let ids: Vec<&str> = unch
        .iter()
        .map(|u| u["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q2", "q3"]);
    assert!(unch[0]["reason"].as_str().unwrap().starts_with("too short"));
    assert!(unch[1]["reason"].as_str().unwrap().starts_with("empty"));
}

#[test]
fn the_same_corpus_in_every_format_gives_the_same_findings() {
    let dir = Dir::new();
    let cases = cases();
    let docs: Vec<Value> = corpus(&cases).into_iter().take(60).collect();
    let mut body = String::new();
    for d in &docs {
        body.push_str(&d.to_string());
        body.push('\n');
    }
    dir.write("f/plain.jsonl", &body);
    dir.write("f/gz.jsonl.gz", gzip(body.as_bytes()));
    dir.write(
        "f/zst.jsonl.zst",
        zstd::encode_all(body.as_bytes(), 3).unwrap(),
    );
    // Chat records: the text as a user message.
    let chat: Vec<Value> = docs
        .iter()
        .map(|d| json!({"id": d["id"], "messages": [{"role": "user", "content": d["text"]}]}))
        .collect();
    dir.write_jsonl("f/chat.jsonl", &chat);
    let mut file_ids = std::collections::HashMap::new();
    for (k, d) in docs.iter().enumerate() {
        let name = format!("doc{k:03}.txt");
        dir.write(&format!("txt/{name}"), d["text"].as_str().unwrap());
        file_ids.insert(name, d["id"].as_str().unwrap().to_string());
    }
    // Parquet, written with the corpus crate's table writer.
    let mut t = corpus::TableWriter::create(
        &dir.path("f/table.parquet"),
        &[
            ("id", corpus::ColumnKind::Utf8),
            ("text", corpus::ColumnKind::Utf8),
        ],
    )
    .unwrap();
    for d in &docs {
        t.push(vec![
            corpus::Column::Str(d["id"].as_str().unwrap().into()),
            corpus::Column::Str(d["text"].as_str().unwrap().into()),
        ])
        .unwrap();
    }
    t.finish().unwrap();

    let findings = |input: &str| -> Vec<(String, String)> {
        let out = format!("out-{}", input.replace('/', "-"));
        dir.ok(&["audit", "-b", "standard", "-i", input, "-o", &out]);
        let mut v: Vec<(String, String)> = read_jsonl(&dir.path(&format!("{out}/samples.jsonl")))
            .iter()
            .map(|s| {
                let id = s["id"].as_str().unwrap();
                let id = file_ids.get(id).cloned().unwrap_or_else(|| id.to_string());
                (id, s["item_id"].as_str().unwrap().to_string())
            })
            .collect();
        v.sort();
        v
    };
    let want = findings("f/plain.jsonl");
    assert!(want.len() >= 3, "{want:?}");
    for input in [
        "f/gz.jsonl.gz",
        "f/zst.jsonl.zst",
        "f/chat.jsonl",
        "f/table.parquet",
        "txt",
    ] {
        assert_eq!(findings(input), want, "{input}");
    }
}

#[test]
fn boilerplate_shared_by_many_items_is_not_evidence() {
    let dir = Dir::new();
    let instruction = "Read the passage below carefully and answer the question that follows using only the passage.";
    let topics = [
        "volcanoes",
        "glaciers",
        "rivers",
        "deserts",
        "forests",
        "oceans",
    ];
    let items: Vec<Value> = topics
        .iter()
        .enumerate()
        .map(|(k, t)| {
            json!({"id": format!("b{k}"), "question": format!("{instruction} Passage: {t} shape the land in ways that scientists study for many years across the world. Why do {t} matter?"), "answer": format!("Because {t} change landscapes.")})
        })
        .collect();
    dir.write_jsonl("bench.jsonl", &items);
    dir.write_jsonl(
        "c.jsonl",
        &[
            json!({"id": "instruction-only", "text": format!("Exam tips. {instruction} Good luck to all of you.")}),
            json!({"id": "mmlu-options", "text": "Which hold? A) I only B) II only C) III only D) II and III. Answer: D) II and III"}),
            json!({"id": "real", "text": format!("Notes: passage: glaciers shape the land in ways that scientists study for many years across the world.")}),
        ],
    );
    dir.ok(&[
        "audit",
        "-b",
        "bench.jsonl",
        "mmlu",
        "-i",
        "c.jsonl",
        "-o",
        "out",
    ]);
    let flagged = read_jsonl(&dir.path("out/samples.jsonl"));
    let ids: Vec<&str> = flagged.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["real"], "{flagged:?}");
    assert_eq!(flagged[0]["item_id"], "b1");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/audit.json")).unwrap())
            .unwrap();
    assert!(
        report["index"]["allowed_long_by_frequency"]
            .as_u64()
            .unwrap()
            > 0
    );
}
