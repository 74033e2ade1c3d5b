//! Generation stages in real builds, against a scripted OpenAI-compatible server on loopback that
//! counts the requests it answers.

use crate::build::report;
use crate::util::*;
use engines::testing::{last_message, FaultServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Replies "Rewritten passage: TEXT IN CAPITALS", one at a time, after `delay`; refuses documents
/// that ask to be refused.
fn rewriter(delay: Duration) -> FaultServer {
    FaultServer::scripted(move |_, body| {
        std::thread::sleep(delay);
        let text = last_message(body).rsplit("Text:\n").next().unwrap_or("");
        if text.contains("Please refuse") {
            return Ok("I'm sorry, I can't rewrite this.".into());
        }
        Ok(format!("Rewritten passage: {}", text.to_uppercase()))
    })
    .unwrap()
}

fn recipe(url: &str, max_ratio: f64) -> String {
    format!(
        r#"name: rewrites
seed: 11
sources:
  web: {{path: web.jsonl, class: web}}
engines:
  pool: {{kind: openai, model: test-model, endpoints: ["{url}"], max_concurrency: 4, backoff_s: 0.01}}
stages:
  - name: rewritten
    type: web_rewrite
    inputs: [web]
    engine: pool
    max_ratio: {max_ratio}
output: {{path: out, format: jsonl}}
"#
    )
}

fn docs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|k| {
            let ask = if k % 10 == 3 { " Please refuse." } else { "" };
            json!({"id": format!("d{k}"), "text": format!("Document {k} explains how river {k} floods each spring.{ask}")})
        })
        .collect()
}

fn rows(dir: &Dir) -> Vec<Value> {
    let mut rows = Vec::new();
    for e in std::fs::read_dir(dir.path("out/rewritten")).unwrap() {
        rows.extend(read_jsonl(&e.unwrap().path()));
    }
    rows.sort_by_key(|r| r["text"].as_str().unwrap().to_string());
    rows
}

#[test]
fn a_killed_rewrite_build_resumes_without_sending_a_finished_request_again() {
    let n = 40;
    // Each document is one request; a refused one is asked three times.
    let work = n - n / 10 + 3 * (n / 10);
    let server = rewriter(Duration::from_millis(15));
    let dir = Dir::new();
    dir.write("recipe.yaml", recipe(&server.url(), 3.0));
    dir.write_jsonl("web.jsonl", &docs(n));
    dir.ok(&["validate", "recipe.yaml"]);

    // Killed once a quarter of the requests are answered.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phiforge"))
        .args(["build", "recipe.yaml"])
        .current_dir(dir.path(""))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.requests() < work / 4 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = server.requests();
    assert!(
        at_kill < work,
        "the build finished before the kill ({at_kill} requests)"
    );

    dir.ok(&["build", "recipe.yaml"]);
    // Every request once, plus at most what was in flight when the build was killed (the
    // engine's concurrency of 4).
    let sent = server.requests();
    assert!(
        sent >= work && sent <= work + 4,
        "{sent} requests for {work} (killed at {at_kill})"
    );

    let out = rows(&dir);
    assert_eq!(out.len(), n - n / 10);
    let first = &out[0];
    assert_eq!(first["class"], "web_rewrite");
    assert!(
        first["text"].as_str().unwrap().starts_with("DOCUMENT "),
        "{first}"
    );
    let r = report(&dir);
    let rewritten = stage(&r, "rewritten");
    assert_eq!(
        rewritten["dropped"]["refusal"],
        n as u64 / 10,
        "{rewritten}"
    );

    // Nothing changed: nothing is sent. A changed check reruns the stage from the cached replies.
    dir.ok(&["build", "recipe.yaml"]);
    assert_eq!(server.requests(), sent);
    dir.write("recipe.yaml", recipe(&server.url(), 2.5));
    dir.ok(&["build", "recipe.yaml"]);
    assert_eq!(server.requests(), sent);
    let r = report(&dir);
    assert_eq!(stage(&r, "rewritten")["run"], n as u64, "{r}");
    // The same rewrites (their lineage names the new fingerprint).
    let texts = |rows: &[Value]| rows.iter().map(|r| r["text"].clone()).collect::<Vec<_>>();
    assert_eq!(texts(&rows(&dir)), texts(&out));
}

#[test]
fn rewrites_carry_their_turns_and_bad_stages_are_refused_where_they_are() {
    let server = rewriter(Duration::ZERO);
    let dir = Dir::new();
    dir.write("recipe.yaml", recipe(&server.url(), 3.0));
    dir.write_jsonl("web.jsonl", &docs(3));
    dir.ok(&["build", "recipe.yaml"]);
    let out = rows(&dir);
    assert_eq!(out.len(), 3);
    let lineage = &out[0]["lineage"];
    assert_eq!(lineage["engine"], "pool");
    assert_eq!(lineage["model"], "test-model");
    assert_eq!(lineage["turns"][0]["agent"], "rewriter");
    assert!(lineage["turns"][0]["seed"].as_u64().is_some(), "{lineage}");
    assert!(
        lineage["quality"]["length_ratio"].as_f64().is_some(),
        "{lineage}"
    );

    let bad = recipe(&server.url(), 3.0).replace(
        "engine: pool",
        "engine: nowhere\n    colour: blue\n    min_ratio: 9",
    );
    dir.write("bad.yaml", bad);
    let err = dir.fails(&["validate", "bad.yaml"]);
    assert!(
        err.contains("bad.yaml:13:") && err.contains("unknown engine `nowhere`"),
        "{err}"
    );
    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(err.contains("needs 0 <= min_ratio < max_ratio"), "{err}");
}

#[test]
fn the_web_rewrite_example_builds_on_the_local_engine() {
    let example = root().join("examples/web-rewrite.yaml");
    let dir = Dir::new();
    dir.ok(&["validate", example.to_str().unwrap()]);
    // Built in a folder of its own: the same recipe with its paths made absolute.
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace(
            "corpus/doc-sections.jsonl",
            root()
                .join("examples/corpus/doc-sections.jsonl")
                .to_str()
                .unwrap(),
        )
        .replace(
            "../engines/tests/data/phi3-tiny",
            root()
                .join("engines/tests/data/phi3-tiny")
                .to_str()
                .unwrap(),
        )
        .replace("../out/web-rewrite", "out");
    dir.write("recipe.yaml", text);
    dir.ok(&["build", "recipe.yaml"]);
    let out = rows(&dir);
    assert_eq!(out.len(), 4);
    for r in &out {
        let turn = &r["lineage"]["turns"][0];
        assert_eq!(turn["model"], "phi3-tiny", "{r}");
        let tokens = turn["completion_tokens"].as_u64().unwrap();
        assert!((1..=48).contains(&tokens), "{r}");
    }
    // Rebuilt: nothing runs.
    dir.ok(&["build", "recipe.yaml"]);
    assert_eq!(stage(&report(&dir), "rewritten")["run"], 0);
}

#[test]
fn a_self_revise_stage_keeps_drafts_that_pass_and_counts_the_rest() {
    // The critic passes a draft once it has been revised, for documents that ask for it.
    let server = FaultServer::scripted(|_, body| {
        let messages = body["messages"].as_array().unwrap();
        let first = messages[0]["content"].as_str().unwrap();
        let last = last_message(body);
        if last.starts_with("Review the response") {
            let s = if first.contains("improvable") && last.contains("draft v2") { 9 } else { 4 };
            return Ok(json!({"scores": {"correctness": s, "clarity": s, "completeness": s, "self_contained": s}, "feedback": "More steps."}).to_string());
        }
        let version = messages.iter().filter(|m| m["role"] == "assistant").count() + 1;
        let seed = first.split(" is ").next().unwrap().rsplit(' ').next().unwrap();
        Ok(format!("A worked example for seed {seed}, draft v{version}."))
    })
    .unwrap();
    let dir = Dir::new();
    let recipe = format!(
        r#"name: revised
sources:
  seeds: {{path: seeds.jsonl, class: web}}
engines:
  author: {{kind: openai, model: test-model, endpoints: ["{}"]}}
stages:
  - name: revised
    type: self_revise
    inputs: [seeds]
    engine: author
    critic_engine: author
    max_rounds: 3
output: {{path: out, format: jsonl}}
"#,
        server.url()
    );
    dir.write("recipe.yaml", &recipe);
    let seeds: Vec<Value> = (0..6)
        .map(|k| {
            let kind = if k % 2 == 0 { "improvable" } else { "hopeless" };
            json!({"id": format!("s{k}"), "text": format!("Seed {k} is {kind}.")})
        })
        .collect();
    dir.write_jsonl("seeds.jsonl", &seeds);
    dir.ok(&["validate", "recipe.yaml"]);
    dir.ok(&["build", "recipe.yaml"]);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.path("out/revised")).unwrap() {
        out.extend(read_jsonl(&e.unwrap().path()));
    }
    assert_eq!(out.len(), 3);
    for r in &out {
        assert_eq!(r["class"], "synthetic");
        assert!(r["text"].as_str().unwrap().ends_with(", draft v2."), "{r}");
        assert_eq!(r["lineage"]["rounds"], 2);
        assert_eq!(r["lineage"]["quality"]["score"], 9.0);
        assert_eq!(r["lineage"]["turns"].as_array().unwrap().len(), 4);
    }
    let r = report(&dir);
    let revised = stage(&r, "revised");
    assert_eq!(revised["dropped"]["below_threshold"], 3, "{revised}");
    // Rebuilt: nothing is asked again.
    let sent = server.requests();
    dir.ok(&["build", "recipe.yaml"]);
    assert_eq!(server.requests(), sent);

    dir.write(
        "bad.yaml",
        recipe.replace("critic_engine: author", "critic_engine: judge"),
    );
    let err = dir.fails(&["validate", "bad.yaml"]);
    assert!(
        err.contains("stages[0].critic_engine") && err.contains("unknown engine `judge`"),
        "{err}"
    );
}

#[test]
fn a_multi_agent_stage_writes_chats_of_agreed_answers() {
    let seen = std::sync::Mutex::new(std::collections::HashMap::<u64, usize>::new());
    let server = FaultServer::scripted(move |_, body| {
        let last = last_message(body);
        if last.starts_with("Write one challenging") {
            let seed = last.rsplit("Material:\n").next().unwrap().trim();
            return Ok(format!("<question>From {seed}: what is 6 x 7?</question>"));
        }
        if last.starts_with("Solve the question") {
            // Three solvers: two agree, one (the first seed seen; a retry keeps its seed) does not.
            let mut seen = seen.lock().unwrap();
            let next = seen.len();
            let k = *seen.entry(body["seed"].as_u64().unwrap()).or_insert(next);
            let answer = if k == 0 { "41" } else { "42" };
            return Ok(format!("6 x 7 = 42.\nAnswer: {answer}"));
        }
        Ok("Verdict: correct".into())
    })
    .unwrap();
    let dir = Dir::new();
    dir.write(
        "recipe.yaml",
        format!(
            r#"name: problems
sources:
  seeds: {{path: seeds.jsonl, class: web}}
engines:
  pool: {{kind: openai, model: test-model, endpoints: ["{}"], max_concurrency: 1}}
stages:
  - name: problems
    type: multi_agent
    inputs: [seeds]
    engine: pool
    solvers: 3
    min_agreement: 0.6
output: {{path: out, format: jsonl}}
"#,
            server.url()
        ),
    );
    dir.write_jsonl("seeds.jsonl", &[json!({"text": "the times tables"})]);
    dir.ok(&["build", "recipe.yaml"]);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.path("out/problems")).unwrap() {
        out.extend(read_jsonl(&e.unwrap().path()));
    }
    assert_eq!(out.len(), 1, "{out:?}");
    let m = &out[0]["messages"];
    assert_eq!(m[0]["role"], "user");
    assert_eq!(m[0]["content"], "From the times tables: what is 6 x 7?");
    assert_eq!(m[1]["role"], "assistant");
    assert_eq!(out[0]["lineage"]["quality"]["agreement"], 0.667);
}

/// An example recipe in a folder of its own: its seeds' path made absolute, its engine pointed at
/// `url`, its output at `out`.
fn example(dir: &Dir, name: &str, seeds: &str, url: &str) {
    let text = std::fs::read_to_string(root().join("examples").join(name))
        .unwrap()
        .replace(
            &format!("corpus/{seeds}"),
            root().join("examples/corpus").join(seeds).to_str().unwrap(),
        )
        .replace("http://127.0.0.1:8000/v1", url);
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("output:") {
                "output: {path: out, format: jsonl}"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    dir.write("recipe.yaml", text);
}

fn stage_rows(dir: &Dir, stage: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.path(&format!("out/{stage}"))).unwrap() {
        out.extend(read_jsonl(&e.unwrap().path()));
    }
    out
}

#[test]
fn the_generation_examples_validate_and_build_on_real_seeds() {
    // One scripted model for the three flows: it writes, critiques, asks, solves and regenerates
    // plausibly, so that each example keeps samples.
    // A solver's answer is fixed by the order its seed was first seen for the question (a
    // retried request keeps its seed, and so its answer).
    let solved = std::sync::Mutex::new(std::collections::HashMap::<
        String,
        std::collections::HashMap<u64, usize>,
    >::new());
    let server = FaultServer::scripted(move |_, body| {
        let messages = body["messages"].as_array().unwrap();
        let last = last_message(body);
        if last.starts_with("Review the response") {
            let s = if last.contains("(revised)") { 9 } else { 6 };
            return Ok(json!({"scores": {"correctness": s, "clarity": s, "completeness": s, "self_contained": s}, "feedback": "Add a step."}).to_string());
        }
        if let Some(material) = last.strip_prefix("Using the material") {
            let words: Vec<&str> = material.split_whitespace().rev().take(6).collect();
            return Ok(format!("Question: what does \"{}\" say? Answer: stably.", words.join(" ")));
        }
        if last.starts_with("A reviewer scored") {
            let draft = messages[1]["content"].as_str().unwrap();
            return Ok(format!("{draft} (revised)"));
        }
        if let Some(material) = last.strip_prefix("Write one challenging") {
            let words: Vec<&str> = material.rsplit("Material:\n").next().unwrap().split_whitespace().take(4).collect();
            return Ok(format!("<question>After \"{}\": is Python's sort stable?</question>", words.join(" ")));
        }
        if last.starts_with("Solve the question") {
            // Three of the four solvers agree.
            let mut solved = solved.lock().unwrap();
            let seen = solved.entry(last.to_string()).or_default();
            let next = seen.len();
            let k = *seen.entry(body["seed"].as_u64().unwrap()).or_insert(next);
            return Ok(format!("Equal keys keep their order.\nAnswer: {}", if k == 0 { "no" } else { "yes" }));
        }
        // The declared agents of `declared-agents.yaml`.
        if last.starts_with("Read this passage") {
            let words: Vec<&str> = last.lines().last().unwrap().split_whitespace().take(3).collect();
            return Ok(format!("<question>What does \"{}\" mean?</question>", words.join(" ")));
        }
        if last.contains("Answer the student's question") {
            // The tutor sees the student's turn, headed with its name.
            assert!(last.starts_with("[student]\n<question>"), "{last}");
            return Ok("It means what the passage says, for example `sorted(xs)`.".into());
        }
        if last.starts_with("Is the answer below faithful") {
            return Ok(r#"{"faithful": true, "reason": "matches the passage"}"#.into());
        }
        if last.starts_with("Check the solution") {
            return Ok("Verdict: correct".into());
        }
        if let Some(code) = last.strip_prefix("Below is a piece of Python code.") {
            let code = code.rsplit("</instruction>.\n\n").next().unwrap().trim();
            let name = code.split('(').next().unwrap().trim_start_matches("def ");
            return Ok(format!("<instruction>Write the function {name} as the standard library has it.</instruction>"));
        }
        // The solver of a reversed instruction: the standard library's own function.
        let name = last.split_whitespace().nth(3).unwrap_or("");
        let functions = read_jsonl(&root().join("examples/corpus/stdlib-functions.jsonl"));
        let f = functions.iter().find(|f| f["text"].as_str().unwrap().starts_with(&format!("def {name}(")));
        Ok(match f {
            Some(f) => format!("```python\n{}```", f["text"].as_str().unwrap()),
            None => "pass".into(),
        })
    })
    .unwrap();
    for (file, seeds, stage, kept) in [
        ("self-revision.yaml", "doc-sections.jsonl", "examples", 4),
        ("multi-agent.yaml", "doc-sections.jsonl", "problems", 4),
        ("declared-agents.yaml", "doc-sections.jsonl", "tutoring", 4),
        (
            "instruction-reversal.yaml",
            "stdlib-functions.jsonl",
            "instructions",
            4,
        ),
    ] {
        let dir = Dir::new();
        dir.ok(&[
            "validate",
            root().join("examples").join(file).to_str().unwrap(),
        ]);
        example(&dir, file, seeds, &server.url());
        dir.ok(&["build", "recipe.yaml"]);
        let rows = stage_rows(&dir, stage);
        assert_eq!(rows.len(), kept, "{file}: {:?}", report(&dir)["stages"]);
        for r in &rows {
            assert!(
                !r["lineage"]["turns"].as_array().unwrap().is_empty(),
                "{file}: {r}"
            );
        }
    }
}

#[test]
fn quality_gates_drop_refusals_boilerplate_and_duplicates_of_kept_samples() {
    // One agent answers each seed; the seed's text decides what the model says.
    let server = FaultServer::scripted(|_, body| {
        let last = last_message(body);
        let topic = last.rsplit("Topic: ").next().unwrap().trim();
        let long = |t: &str| {
            format!("{t}: a long explanation of stable sorting, with keys, runs, merges and the guarantees the sort gives to equal elements in every case.")
        };
        Ok(match topic {
            "refuse" => "I'm sorry, but I can't help with that.".into(),
            "chatty" => format!("{} I hope this helps!", long("chatty")),
            "again" | "first" => long("first"),
            "near" => long("first").replace("every case", "all cases"),
            "tiny" => "Short.".into(),
            t => format!("{t}: heaps keep their least element on top, and pushing or popping costs time logarithmic in the heap's size."),
        })
    })
    .unwrap();
    let dir = Dir::new();
    dir.write(
        "recipe.yaml",
        format!(
            r#"name: gated
sources:
  seeds: {{path: seeds.jsonl, class: web}}
engines:
  pool: {{kind: openai, model: test-model, endpoints: ["{}"]}}
stages:
  - name: answers
    type: multi_agent
    inputs: [seeds]
    engine: pool
    agents:
      - {{name: writer, prompt: "Explain. Topic: {{{{ text }}}}"}}
    sample:
      - {{role: user, content: "Explain stable sorting."}}
      - {{role: assistant, content: "{{{{ writer.reply }}}}"}}
    gates: {{min_chars: 40, near_threshold: 0.5}}
output: {{path: out, format: jsonl}}
"#,
            server.url()
        ),
    );
    let topics = [
        "first", "refuse", "chatty", "again", "near", "tiny", "other",
    ];
    let seeds: Vec<Value> = topics.iter().map(|t| json!({"id": t, "text": t})).collect();
    dir.write_jsonl("seeds.jsonl", &seeds);
    dir.ok(&["build", "recipe.yaml"]);
    let kept: Vec<String> = stage_rows(&dir, "answers")
        .iter()
        .map(|r| r["messages"][1]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept[0].starts_with("first:") && kept[1].starts_with("other:"),
        "{kept:?}"
    );
    let stage = &report(&dir)["stages"][1];
    assert_eq!(
        stage["dropped"],
        json!({"refusal": 1, "boilerplate": 1, "duplicate": 1, "near_duplicate": 1, "below_min_chars": 1}),
        "{stage}"
    );

    // A gate's bad setting is refused where it is.
    let text = std::fs::read_to_string(dir.path("recipe.yaml")).unwrap();
    dir.write(
        "recipe.yaml",
        text.replace("near_threshold: 0.5", "near_threshold: 2"),
    );
    let err = dir.fails(&["validate", "recipe.yaml"]);
    assert!(
        err.contains("recipe.yaml:16:") && err.contains("stages[0].gates.near_threshold"),
        "{err}"
    );
}

/// The other generation examples on the local engine with the tiny test model (random weights):
/// each flow runs end to end, its replies come from the local model and are cached, every input
/// is accounted for (the random text rarely follows a flow's format, so most are dropped with the
/// flow's reason), and a rebuild sends nothing again.
#[test]
fn the_generation_examples_run_on_the_local_engine() {
    let tiny = root().join("engines/tests/data/phi3-tiny");
    let local = format!(
        "writer: {{kind: local, model: {}, device: cpu, slots: 4, context: 1024}}",
        tiny.to_str().unwrap()
    );
    for (file, seeds, stage) in [
        ("self-revision.yaml", "doc-sections.jsonl", "examples"),
        ("multi-agent.yaml", "doc-sections.jsonl", "problems"),
        ("declared-agents.yaml", "doc-sections.jsonl", "tutoring"),
        (
            "instruction-reversal.yaml",
            "stdlib-functions.jsonl",
            "instructions",
        ),
    ] {
        let dir = Dir::new();
        example(&dir, file, seeds, "unused");
        // The local engine, and short replies (the tiny model's context is 1,024 tokens).
        let text = std::fs::read_to_string(dir.path("recipe.yaml")).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("writer: {kind: openai") {
                    format!("  {local}")
                } else if l == "    engine: writer" {
                    let mut l = format!("{l}\n    sampling: {{temperature: 0.8, max_tokens: 24}}");
                    if file == "self-revision.yaml" {
                        l.push_str("\n    critic_sampling: {temperature: 0.0, max_tokens: 24}");
                    }
                    l
                } else {
                    l.replace("max_tokens: 768", "max_tokens: 24")
                        .replace("max_tokens: 256", "max_tokens: 24")
                }
            })
            .collect();
        dir.write("recipe.yaml", text.join("\n"));
        dir.ok(&["validate", "recipe.yaml"]);
        dir.ok(&["build", "recipe.yaml"]);
        let r = report(&dir);
        let st = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap()
            .clone();
        let dropped: u64 = st["dropped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(st["samples_in"], 4, "{file}: {st}");
        assert_eq!(
            st["samples_out"].as_u64().unwrap() + dropped,
            4,
            "{file}: every input is kept or dropped with a reason: {st}"
        );
        // The replies the flow got, from the local model, in the request cache.
        let (mut replies, mut tokens) = (0, 0);
        for e in std::fs::read_dir(dir.path(&format!("out/.phiforge/requests/{stage}"))).unwrap() {
            for line in read_jsonl(&e.unwrap().path()) {
                tokens += line["completion_tokens"].as_u64().unwrap();
                replies += 1;
            }
        }
        assert!(
            replies >= 4 && tokens > 0,
            "{file}: {replies} replies, {tokens} tokens cached"
        );
        for row in stage_rows(&dir, stage) {
            assert_eq!(
                row["lineage"]["turns"][0]["model"], "phi3-tiny",
                "{file}: {row}"
            );
        }
        // Rebuilt: nothing runs again.
        dir.ok(&["build", "recipe.yaml"]);
        let again = report(&dir);
        let st = again["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap();
        assert_eq!(st["run"], 0, "{file}: {st}");
    }
}
