//! `phiforge tokenize`: the example corpus to token shards and Megatron-LM's indexed dataset, read
//! back; the same bytes on one thread and on several; a bad record named by file and line.

use crate::util::*;
use mixes::tokshard::Shard;
use tokens::Codec;

/// The example corpus's JSON-lines files, in the order the CLI reads them.
fn corpus_files() -> Vec<String> {
    [
        "doc-sections.jsonl",
        "python-docs.jsonl.gz",
        "python-stdlib.jsonl.gz",
        "stdlib-functions.jsonl",
    ]
    .iter()
    .map(|f| root().join("examples/corpus").join(f).display().to_string())
    .collect()
}

fn shards(dir: &Dir, out: &str) -> Vec<(String, Shard)> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path(out))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tok"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let s = Shard::read(&dir.path(out).join(&n), None).unwrap();
            (n, s)
        })
        .collect()
}

#[test]
fn the_example_corpus_reads_back_document_by_document() {
    let dir = Dir::new();
    let files = corpus_files();
    let mut args = vec![
        "tokenize",
        "--out",
        "one",
        "--threads",
        "1",
        "--shard-tokens",
        "50000",
    ];
    args.extend(["--megatron", "mega/corpus", "--input"]);
    args.extend(files.iter().map(|s| s.as_str()));
    let summary: serde_json::Value = serde_json::from_str(dir.ok(&args).trim()).unwrap();

    let texts: Vec<String> = files
        .iter()
        .flat_map(|f| read_jsonl(std::path::Path::new(f)))
        .map(|d| d["text"].as_str().unwrap().to_string())
        .collect();
    let phi4 = tokens::Phi4Tokenizer::new().unwrap();
    let got = shards(&dir, "one");
    assert!(got.len() > 2, "{} shards", got.len());
    let mut k = 0;
    for (name, shard) in &got {
        assert_eq!(shard.vocab, 100_352);
        assert!(
            shard.tokens.len() <= 50_000 || shard.index.len() == 2,
            "{name}"
        );
        for d in 0..shard.index.len() - 1 {
            let doc = shard.document(d);
            let want = phi4.encode_ordinary(&texts[k]).unwrap();
            assert_eq!(
                doc.last(),
                Some(&100_257),
                "{name}: document {d} ends with <|endoftext|>"
            );
            assert_eq!(&doc[..doc.len() - 1], &want[..], "{name}: document {d}");
            assert_eq!(phi4.decode(doc).unwrap(), texts[k]);
            k += 1;
        }
    }
    assert_eq!(k, texts.len());
    assert_eq!(summary["docs"], texts.len());
    let total: usize = got.iter().map(|(_, s)| s.tokens.len()).sum();
    assert_eq!(summary["tokens"], total);

    // Megatron's index: its document count and the .bin's size (int32 tokens for this vocabulary).
    let idx = std::fs::read(dir.path("mega/corpus.idx")).unwrap();
    assert_eq!(&idx[..9], b"MMIDIDX\x00\x00");
    let docs = u64::from_le_bytes(idx[18..26].try_into().unwrap());
    assert_eq!(docs as usize, texts.len());
    let bin = std::fs::metadata(dir.path("mega/corpus.bin"))
        .unwrap()
        .len();
    assert_eq!(bin as usize, total * 4);

    // Two threads: the same shards, byte for byte.
    let mut args = vec![
        "tokenize",
        "--out",
        "two",
        "--threads",
        "2",
        "--shard-tokens",
        "50000",
    ];
    args.push("--input");
    args.extend(files.iter().map(|s| s.as_str()));
    dir.ok(&args);
    for ((a, _), (b, _)) in got.iter().zip(shards(&dir, "two")) {
        assert_eq!(a, &b);
        assert_eq!(
            std::fs::read(dir.path("one").join(a)).unwrap(),
            std::fs::read(dir.path("two").join(&b)).unwrap(),
            "{a}"
        );
    }
}

#[test]
fn a_bad_record_is_named_by_file_and_line() {
    let dir = Dir::new();
    dir.write("in.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"broken\n");
    let err = dir.fails(&["tokenize", "--input", "in.jsonl", "--out", "out"]);
    assert!(err.contains("in.jsonl") && err.contains("line 2"), "{err}");
}
