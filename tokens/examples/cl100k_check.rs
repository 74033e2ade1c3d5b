//! Checks `tokens::cl100k` against tiktoken-rs on whole corpora, and times the encoders on one
//! thread (benches/tokenize-check.sh runs it in release).
//!
//! usage: cargo run --release -p tokens --example cl100k_check -- [--no-check] [--unicode] CORPUS.jsonl[.gz]...
//!
//! Prints one JSON line per corpus: documents, bytes, tokens, mismatching documents (the first is
//! printed to stderr), and MB/s of tokens::cl100k, bpe-openai and tiktoken-rs on one core.
//! `--unicode`: first, every Unicode scalar value in contexts where each of the regex's
//! alternatives can start, end or take it (after an apostrophe, a space, a letter, a digit, a line
//! break, doubled, at the end of the text), compared with tiktoken-rs.

use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

fn texts(path: &str) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let reader: Box<dyn Read> = if path.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    BufReader::new(reader)
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let line = line.unwrap_or_else(|e| panic!("{path}:{}: {e}", n + 1));
            if line.trim().is_empty() {
                return None;
            }
            let doc: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{path}:{}: {e}", n + 1));
            Some(doc["text"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn time<F: FnMut(&str) -> usize>(texts: &[String], mut f: F) -> (f64, usize) {
    let t = Instant::now();
    let n: usize = texts.iter().map(|s| f(s)).sum();
    (t.elapsed().as_secs_f64(), n)
}

fn main() {
    let mut check = true;
    let mut unicode = false;
    let mut paths = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--no-check" => check = false,
            "--unicode" => unicode = true,
            _ => paths.push(a),
        }
    }
    let enc = tokens::cl100k::Cl100k::get();
    let t = Instant::now();
    let tiktoken = tiktoken_rs::cl100k_base().expect("tiktoken-rs cl100k_base");
    let tiktoken_load = t.elapsed().as_secs_f64();
    let bpe = bpe_openai::cl100k_base();
    let mut failed = false;
    if unicode {
        let mut checked = 0u64;
        let mut mismatches = 0u64;
        for c in (0..=0x10_FFFFu32).filter_map(char::from_u32) {
            let text = format!("'{c}x {c}a{c}1{c}{c}\n{c} {c}\t{c}.{c}{c}'{c}{c}");
            checked += 1;
            if enc.encode(&text) != tiktoken.encode_ordinary(&text) {
                if mismatches < 5 {
                    eprintln!("U+{:04X}: {text:?} differs", c as u32);
                }
                mismatches += 1;
            }
        }
        println!("{{\"unicode_scalars_checked\":{checked},\"mismatching\":{mismatches}}}");
        failed |= mismatches > 0;
    }
    for path in &paths {
        let texts = texts(path);
        let bytes: usize = texts.iter().map(|s| s.len()).sum();
        let mut mismatches = 0;
        if check {
            for (k, s) in texts.iter().enumerate() {
                let ours = enc.encode(s);
                let theirs = tiktoken.encode_ordinary(s);
                if ours != theirs {
                    if mismatches == 0 {
                        let at = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
                        eprintln!(
                            "{path}: document {k} differs at token {at}: ours {:?} tiktoken {:?}",
                            &ours[at..(at + 8).min(ours.len())],
                            &theirs[at..(at + 8).min(theirs.len())]
                        );
                    }
                    mismatches += 1;
                }
            }
        }
        failed |= mismatches > 0;
        let mb = bytes as f64 / 1e6;
        let (ours_s, tokens) = time(&texts, |s| enc.encode(s).len());
        let (bpe_s, _) = time(&texts, |s| bpe.encode(s).len());
        let (tt_s, _) = time(&texts, |s| tiktoken.encode_ordinary(s).len());
        println!(
            "{{\"corpus\":{:?},\"docs\":{},\"bytes\":{},\"tokens\":{},\"checked\":{},\"mismatching_docs\":{},\
             \"mb_per_s\":{{\"tokens::cl100k\":{:.2},\"bpe-openai\":{:.2},\"tiktoken-rs\":{:.2}}},\"tiktoken_rs_load_s\":{:.3}}}",
            path,
            texts.len(),
            bytes,
            tokens,
            check,
            mismatches,
            mb / ours_s,
            mb / bpe_s,
            mb / tt_s,
            tiktoken_load
        );
    }
    if failed {
        std::process::exit(1);
    }
}
