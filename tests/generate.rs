//! `phiforge generate` against a real HTTP server on loopback (with injected faults).

use crate::util::*;
use engines::testing::{Fault, FaultServer};
use serde_json::json;

#[test]
fn prompts_in_completions_out_through_faults() {
    let server = FaultServer::start(|n| match n {
        0 => Fault::ServerError,
        1 => Fault::TooManyRequests { retry_after_s: 0 },
        2 => Fault::BadJson,
        _ => Fault::Ok,
    })
    .unwrap();
    let dir = Dir::new();
    dir.write_jsonl(
        "prompts.jsonl",
        &[
            json!({"id": "a", "prompt": "Name a prime."}),
            json!({"messages": [{"role": "user", "content": "Name a colour."}]}),
            json!({"id": 3, "prompt": "Name a river."}),
        ],
    );
    let url = server.url();
    dir.ok(&[
        "generate",
        "--endpoint",
        &url,
        "--model",
        "m",
        "--input",
        "prompts.jsonl",
        "-o",
        "out.jsonl",
        "--seed",
        "1",
    ]);
    // Lines come as requests finish; sorted by id here.
    let mut out = read_jsonl(&dir.path("out.jsonl"));
    out.sort_by_key(|l| l["id"].as_str().unwrap().to_string());
    let got: Vec<(String, String)> = out
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_string(),
                l["completion"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("2", "echo: Name a colour."),
            ("3", "echo: Name a river."),
            ("a", "echo: Name a prime.")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(out[0]["engine"]["kind"], "openai");
    assert_eq!(server.requests(), 6);

    let one = dir.ok(&[
        "generate",
        "--endpoint",
        &url,
        "--model",
        "m",
        "--prompt",
        "Hello there",
    ]);
    assert!(
        one.contains("\"completion\":\"echo: Hello there\""),
        "{one}"
    );
}

#[test]
fn an_interrupted_run_resumes_without_sending_a_finished_request_again() {
    let server = FaultServer::start(|_| Fault::Ok).unwrap();
    let url = server.url();
    let dir = Dir::new();
    let prompts: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| json!({"id": id, "prompt": format!("Say {id}.")}))
        .collect();
    // A first run finished two prompts, and was killed while writing a third line.
    dir.write_jsonl("first.jsonl", &prompts[..2]);
    let run = |input: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--endpoint",
            &url,
            "--model",
            "m",
            "--input",
            input,
            "-o",
            "o.jsonl",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let args = run("first.jsonl", &[]);
    dir.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut cut = std::fs::read(dir.path("o.jsonl")).unwrap();
    cut.extend_from_slice(b"{\"id\": \"c\", \"messages\": [{\"ro");
    std::fs::write(dir.path("o.jsonl"), &cut).unwrap();
    assert_eq!(server.requests(), 2);

    dir.write_jsonl("all.jsonl", &prompts);
    let args = run("all.jsonl", &[]);
    let out = dir.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("2 of 4 prompts already have a completion"),
        "{said}"
    );
    assert_eq!(server.requests(), 4, "only c and d were sent");
    let mut ids: Vec<String> = read_jsonl(&dir.path("o.jsonl"))
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c", "d"]);

    // Other sampling settings are not mixed into the same file.
    let args = run("all.jsonl", &["--temperature", "0.2"]);
    let err = dir.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("o.jsonl: line 1: written with another engine or other sampling settings"),
        "{err}"
    );
    assert_eq!(server.requests(), 4);

    // Ids must be unique for a run to be resumable.
    dir.write(
        "dup.jsonl",
        "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"a\", \"prompt\": \"y\"}\n",
    );
    let err = dir.fails(&[
        "generate",
        "--endpoint",
        &url,
        "--model",
        "m",
        "--input",
        "dup.jsonl",
    ]);
    assert!(
        err.contains("dup.jsonl: line 2: id `a` is already the id of line 1"),
        "{err}"
    );
}

#[test]
fn failures_are_reported_not_lost() {
    let server = FaultServer::start(|_| Fault::ServerError).unwrap();
    let dir = Dir::new();
    dir.write_jsonl("p.jsonl", &[json!({"prompt": "x"}), json!({"prompt": "y"})]);
    let url = server.url();
    let err = dir.fails(&[
        "generate",
        "--endpoint",
        &url,
        "--model",
        "m",
        "--input",
        "p.jsonl",
        "-o",
        "o.jsonl",
        "--retries",
        "1",
    ]);
    assert!(err.contains("2 of 2 requests failed"), "{err}");
    let out = read_jsonl(&dir.path("o.jsonl"));
    assert_eq!(out.len(), 2);
    assert!(
        out[0]["error"].as_str().unwrap().contains("HTTP 500"),
        "{}",
        out[0]
    );
    // A rerun into the same file retries the failed prompts (the server works now) and leaves
    // one line per prompt.
    let good = FaultServer::start(|_| Fault::Ok).unwrap();
    let good_url = good.url();
    dir.ok(&[
        "generate",
        "--endpoint",
        &good_url,
        "--model",
        "m",
        "--input",
        "p.jsonl",
        "-o",
        "o.jsonl",
    ]);
    let out = read_jsonl(&dir.path("o.jsonl"));
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|l| l.get("error").is_none()), "{out:?}");
    assert_eq!(good.requests(), 2);

    dir.write(
        "bad.jsonl",
        "{\"prompt\": \"ok\"}\n{\"text\": \"no prompt\"}\n",
    );
    let err = dir.fails(&[
        "generate",
        "--endpoint",
        &url,
        "--model",
        "m",
        "--input",
        "bad.jsonl",
    ]);
    assert!(
        err.contains("bad.jsonl: line 2: needs a `prompt` string or a `messages` list"),
        "{err}"
    );
}

#[test]
fn the_local_engine_generates_from_a_model_folder() {
    let dir = Dir::new();
    let model = root().join("engines/tests/data/phi3-tiny");
    dir.write_jsonl(
        "p.jsonl",
        &[
            json!({"id": "x", "prompt": "Say hi"}),
            json!({"id": "y", "prompt": "Count to three"}),
        ],
    );
    let args = [
        "generate",
        "--model-dir",
        model.to_str().unwrap(),
        "--input",
        "p.jsonl",
        "-o",
        "o.jsonl",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ];
    dir.ok(&args);
    fn by_id(path: &std::path::Path) -> Vec<serde_json::Value> {
        let mut lines = read_jsonl(path);
        lines.sort_by_key(|l| l["id"].as_str().unwrap().to_string());
        lines
    }
    let first = by_id(&dir.path("o.jsonl"));
    let out = read_jsonl(&dir.path("o.jsonl"));
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0]["engine"],
        json!({"kind": "local", "model": "phi3-tiny"})
    );
    assert!(out[0]["completion_tokens"].as_u64().unwrap() >= 1);
    // Greedy decoding is deterministic.
    std::fs::remove_file(dir.path("o.jsonl")).unwrap();
    dir.ok(&args);
    assert_eq!(by_id(&dir.path("o.jsonl")), first);
}

#[test]
fn bench_engine_prints_a_record_per_batch_size() {
    let dir = Dir::new();
    let out = dir.ok(&[
        "bench-engine",
        "--device",
        "cpu",
        "--shape",
        "tiny",
        "--layers",
        "2",
        "--batch",
        "1,3",
        "--prompt-len",
        "12",
        "--gen-len",
        "5",
    ]);
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{out}");
    for (r, b) in records.iter().zip([1, 3]) {
        assert_eq!(r["engine"], "phiforge");
        assert_eq!(r["batch"], b);
        assert_eq!(r["prompt_len"], 12);
        assert_eq!(r["decode_steps"], 4);
        assert_eq!(r["device"], "cpu");
        for k in ["prefill_tok_s", "decode_tok_s", "ms_per_step"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
        }
    }
    let err = dir.fails(&["bench-engine", "--device", "cpu", "--batch", "0"]);
    assert!(err.contains("--batch"), "{err}");
}

/// `bench-load` replays one load per prefix cache setting and can write the load's requests out,
/// so a peer is fed the same ones.
#[test]
fn bench_load_replays_the_requests_it_writes() {
    let dir = Dir::new();
    let reqs = dir.path("requests.jsonl");
    let out = dir.ok(&[
        "bench-load",
        "--device",
        "cpu",
        "--layers",
        "1",
        "--requests",
        "5",
        "--rate",
        "0",
        "--prompt-len",
        "40,90",
        "--output-len",
        "2,6",
        "--slots",
        "2",
        "--write-requests",
        reqs.to_str().unwrap(),
    ]);
    let written = read_jsonl(&reqs);
    assert_eq!(written.len(), 5);
    let outputs: u64 = written.iter().map(|r| r["output"].as_u64().unwrap()).sum();
    let prompts: u64 = written
        .iter()
        .map(|r| r["prompt"].as_array().unwrap().len() as u64)
        .sum();
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{out}");
    for (r, on) in records.iter().zip([true, false]) {
        assert_eq!(r["prefix_cache"], on, "{r}");
        let res = &r["result"];
        assert_eq!(res["requests"], 5, "{r}");
        assert_eq!(res["output_tokens"], outputs, "{r}");
        assert_eq!(res["prompt_tokens"], prompts, "{r}");
    }
    assert_eq!(records[1]["result"]["cached_prompt_tokens"], 0);
}

#[test]
fn the_local_engine_finds_a_model_in_the_hugging_face_cache() {
    let dir = Dir::new();
    // The cache layout huggingface_hub leaves: refs/main names the snapshot.
    let repo = dir.path("hub/models--tiny--phi3");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in std::fs::read_dir(root().join("engines/tests/data/phi3-tiny")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, snapshot.join(f.file_name().unwrap())).unwrap();
    }
    let run = |model: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_phiforge"))
            .args(["generate", "--model-dir", model, "--prompt", "Say hi"])
            .args(["--max-tokens", "4", "--temperature", "0"])
            .env("HF_HUB_CACHE", dir.path("hub"))
            .output()
            .unwrap()
    };
    let out = run("tiny/phi3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        line["engine"],
        json!({"kind": "local", "model": "tiny/phi3"})
    );
    // A repository that is not there says where it looked and how to get it.
    let out = run("tiny/phi9");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("huggingface-cli download tiny/phi9"), "{err}");
}
