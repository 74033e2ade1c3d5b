use super::*;
use serde_json::{json, Value};
use std::io::Read;

/// Real documents: the bundled Python documentation sample.
fn python_docs() -> Vec<Value> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corpus/python-docs.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `text` with about `frac` of its whitespace-separated words, picked at random (seeded by
/// `salt`), replaced by made-up words.
fn near_copy(text: &str, frac: f64, salt: u64) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .enumerate()
        .map(|(k, w)| {
            let r = xxhash_rust::xxh3::xxh3_64_with_seed(&(k as u64).to_le_bytes(), salt);
            if (r % 10_000) as f64 / 10_000.0 < frac {
                format!("qx{}z{k}", salt * 31 + k as u64)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_jsonl(path: &Path, docs: &[Value]) {
    let body: String = docs.iter().map(|d| d.to_string() + "\n").collect();
    std::fs::write(path, body).unwrap();
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The bundled documents, then a near-copy of every fifth one of at least 100 words with `frac`
/// of its words changed (ids `ORIGINAL~near`). Returns the copies' (copy id, original id).
fn planted(path: &Path, frac: f64) -> Vec<(String, String)> {
    let mut docs = python_docs();
    let originals: Vec<Value> = docs
        .iter()
        .filter(|d| d["text"].as_str().unwrap().split_whitespace().count() >= 100)
        .step_by(5)
        .cloned()
        .collect();
    let mut copies = Vec::new();
    for (k, d) in originals.iter().enumerate() {
        let id = format!("{}~near", d["id"].as_str().unwrap());
        let text = near_copy(d["text"].as_str().unwrap(), frac, k as u64);
        docs.push(json!({"id": id, "text": text}));
        copies.push((id, d["id"].as_str().unwrap().to_string()));
    }
    write_jsonl(path, &docs);
    copies
}

fn opts(settings: Settings) -> RunOptions {
    RunOptions {
        text: TextSpec::default(),
        settings,
    }
}

/// Checks that only copies were removed, each naming its original as the kept document, and
/// that at least `share` of the copies were.
fn assert_copies_removed(out: &Path, name: &str, copies: &[(String, String)], share: f64) {
    let removed = read_jsonl(&out.join("removed").join(name));
    for d in &removed {
        assert_eq!(d["_phiforge"]["reason"], "near_duplicate", "{d}");
        let pair = (
            d["id"].as_str().unwrap().to_string(),
            d["_phiforge"]["kept"].as_str().unwrap().to_string(),
        );
        assert!(copies.contains(&pair), "{pair:?} is not a planted copy");
    }
    let found = removed.len() as f64 / copies.len() as f64;
    assert!(
        found >= share,
        "found {} of {}",
        removed.len(),
        copies.len()
    );
}

#[test]
fn planted_near_copies_are_removed_and_distinct_documents_kept() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    // FineWeb's setting: copies with 2% of words changed (Jaccard about 0.8).
    let copies = planted(&input, 0.02);
    assert!(copies.len() >= 15, "{}", copies.len());
    let out = dir.path().join("out");
    let report = run(
        std::slice::from_ref(&input),
        &out,
        &opts(Settings::default()),
        &NoProgress,
    )
    .unwrap();
    // The LSH finds a pair at Jaccard 0.8 with probability 0.96: one copy of 31 is missed.
    assert_copies_removed(&out, "docs.jsonl", &copies, 0.95);
    assert_eq!(report.documents, 171 + copies.len() as u64);
    assert_eq!(report.kept + report.removed, report.documents);
    assert_eq!(report.clusters, report.removed);
    let kept = read_jsonl(&out.join("kept/docs.jsonl"));
    assert_eq!(kept.len() as u64, report.kept);
    assert!(kept[..171].iter().zip(python_docs()).all(|(k, d)| *k == d));
    // Verified: every pair joined is at or above the threshold.
    assert_eq!(report.precision, Some(1.0));
    assert_eq!(report.merged_pairs, report.similar_pairs);
    let p = report.candidate_precision.unwrap();
    assert!(report.candidates >= report.similar_pairs && p > 0.0 && p <= 1.0);
    assert_eq!(report.settings.threshold, 0.5);
    assert!((report.lsh_threshold - 0.685).abs() < 1e-3);
    // A cluster line names the kept document and the dropped ones, with their similarity.
    let clusters = read_jsonl(&out.join("clusters.jsonl"));
    assert_eq!(clusters.len() as u64, report.clusters);
    let c = clusters
        .iter()
        .find(|c| c["kept"] == copies[0].1.as_str())
        .unwrap();
    assert_eq!(c["size"], 2);
    assert_eq!(c["dropped"], json!([copies[0].0]));
    let j = c["jaccard"][0].as_f64().unwrap();
    assert!((0.7..1.0).contains(&j), "{j}");
    // The work folder is gone; the report is there.
    assert!(!out.join(".work").exists());
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["removed"], report.removed);
}

#[test]
fn more_shorter_bands_and_a_lower_threshold_catch_distant_copies() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    // 10% of words changed: Jaccard of 5-word shingles about 0.4; FineWeb's bands miss most.
    let copies = planted(&input, 0.10);
    let default = run(
        std::slice::from_ref(&input),
        &dir.path().join("default"),
        &opts(Settings::default()),
        &NoProgress,
    )
    .unwrap();
    assert!(default.removed < copies.len() as u64 / 2, "{default:?}");
    let tuned = Settings {
        bands: 25,
        rows: 2,
        threshold: 0.3,
        ..Settings::default()
    };
    let out = dir.path().join("tuned");
    let report = run(
        std::slice::from_ref(&input),
        &out,
        &opts(tuned),
        &NoProgress,
    )
    .unwrap();
    assert_copies_removed(&out, "docs.jsonl", &copies, 0.95);
    assert!(report.candidates > report.similar_pairs);
}

#[test]
fn without_verification_every_bucket_collision_counts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    let copies = planted(&input, 0.02);
    let settings = Settings {
        verify: false,
        ..Settings::default()
    };
    let out = dir.path().join("out");
    let report = run(
        std::slice::from_ref(&input),
        &out,
        &opts(settings),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(report.merged_pairs, report.candidates);
    assert_eq!(report.precision, report.candidate_precision);
    assert!(report.removed as f64 >= 0.95 * copies.len() as f64);
    let clusters = read_jsonl(&out.join("clusters.jsonl"));
    assert!(clusters.iter().all(|c| c["jaccard"].is_array()));
}

#[test]
fn output_is_the_same_on_any_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    planted(&input, 0.05);
    let settings = Settings {
        bands: 20,
        rows: 3,
        threshold: 0.4,
        ..Settings::default()
    };
    let outputs: Vec<Vec<Vec<u8>>> = [1, 3]
        .iter()
        .map(|&threads| {
            let out = dir.path().join(format!("out{threads}"));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                run(
                    std::slice::from_ref(&input),
                    &out,
                    &opts(settings),
                    &NoProgress,
                )
            })
            .unwrap();
            ["kept/docs.jsonl", "removed/docs.jsonl", "clusters.jsonl"]
                .iter()
                .map(|f| std::fs::read(out.join(f)).unwrap())
                .collect()
        })
        .collect();
    assert!(!outputs[0][1].is_empty());
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn a_bad_record_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"id\": 1, \"text\": \"one two three\"}\n{\"id\": 2, \"text\": \"four\"}\n{\"id\": 3, \"text\": \n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let e = run(&[input], &out, &opts(Settings::default()), &NoProgress).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.jsonl: line 3"), "{msg}");
    assert!(!out.exists());
    let missing = dir.path().join("nofield.jsonl");
    std::fs::write(&missing, "{\"id\": 1, \"body\": \"x\"}\n").unwrap();
    let e = run(&[missing], &out, &opts(Settings::default()), &NoProgress).unwrap_err();
    assert!(e.to_string().contains("nofield.jsonl: line 1"), "{e}");
}

#[test]
fn settings_are_checked_and_refuse_unknown_keys() {
    let bad = Settings {
        threshold: 1.5,
        ..Settings::default()
    };
    assert!(bad.check().unwrap_err().to_string().contains("threshold"));
    assert!(Settings {
        rows: 0,
        ..Settings::default()
    }
    .check()
    .is_err());
    let s: Settings = serde_json::from_str(r#"{"bands": 20, "rows": 4}"#).unwrap();
    assert_eq!((s.bands, s.rows, s.shingle), (20, 4, 5));
    let back: Settings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    assert!(serde_json::from_str::<Settings>(r#"{"band": 20}"#).is_err());
}
