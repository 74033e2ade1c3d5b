//! Multi-agent prompting against a scripted server: an author, four solvers whose answers the
//! script sets per question, and a critic. Plurality answers are kept; too easy, too hard and
//! rejected questions are dropped with their reason.

use agents::cache::RequestCache;
use agents::client::Client;
use agents::multi_agent::{MultiAgent, MultiAgentConfig};
use agents::{Flow, Generated};
use corpus::sample::Content;
use engines::openai::{OpenAiConfig, OpenAiEngine};
use engines::testing::{last_message, FaultServer};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn server() -> FaultServer {
    // Each solver's answer is fixed by the order in which its seed was first seen for the
    // question, so a retried request (same seed) gets the same answer.
    let asked: Mutex<HashMap<String, HashMap<u64, usize>>> = Mutex::new(HashMap::new());
    FaultServer::scripted(move |_, body| {
        let last = last_message(body);
        if let Some(material) = last.strip_prefix("Write one challenging") {
            let mode = material.rsplit("Material:\n").next().unwrap().trim();
            if mode == "[garbled]" {
                return Ok("What is six times seven?".into());
            }
            return Ok(format!(
                "<question>What is six times seven? {mode}</question>"
            ));
        }
        if last.starts_with("Solve the question") {
            let answers: &[&str] = if last.contains("[easy]") {
                &["42", "42", "42", "42"]
            } else if last.contains("[hard]") {
                &["41", "42", "43", "44"]
            } else {
                &["42", "**42.**", "41", "40"]
            };
            let mut asked = asked.lock().unwrap();
            let seen = asked.entry(last.to_string()).or_default();
            let next = seen.len();
            let k = *seen.entry(body["seed"].as_u64().unwrap()).or_insert(next);
            let answer = answers[k % 4];
            return Ok(format!("Six sevens are forty-two.\nAnswer: {answer}"));
        }
        let verdict = if last.contains("[wrong]") {
            "incorrect"
        } else {
            "correct"
        };
        Ok(format!("Every step holds.\nVerdict: {verdict}"))
    })
    .unwrap()
}

#[test]
fn plurality_answers_are_kept_and_the_rest_dropped_with_a_reason() {
    let server = server();
    let config: MultiAgentConfig =
        serde_json::from_value(json!({"engine": "pool", "solvers": 4})).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig::new(&server.url(), "test-model")).unwrap();
    let flow = MultiAgent::new(config, Client::new("pool", Arc::new(engine)), 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = RequestCache::open(&dir.path().join("c.jsonl")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |id: &str, text: &str| {
        let content = Content::Text { text: text.into() };
        rt.block_on(flow.run(&cache, id, &content)).unwrap()
    };

    let Generated::Samples(out) = run("a", "[majority]") else {
        panic!("dropped")
    };
    let Content::Messages { messages } = &out[0].content else {
        panic!("not a chat")
    };
    assert_eq!(
        (messages[0].role.as_str(), messages[1].role.as_str()),
        ("user", "assistant")
    );
    assert_eq!(messages[0].content, "What is six times seven? [majority]");
    assert!(
        messages[1].content.ends_with("Answer: 42"),
        "{}",
        messages[1].content
    );
    assert_eq!(out[0].quality["agreement"], 0.5);
    let agents: Vec<&str> = out[0].turns.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(
        agents,
        ["author", "solver-0", "solver-1", "solver-2", "solver-3", "critic"]
    );

    assert_eq!(run("b", "[easy]"), Generated::Dropped("too_easy".into()));
    assert_eq!(
        run("c", "[hard]"),
        Generated::Dropped("no_agreement".into())
    );
    assert_eq!(run("d", "[wrong]"), Generated::Dropped("rejected".into()));
    let sent = server.requests();
    assert_eq!(
        run("e", "[garbled]"),
        Generated::Dropped("unparsed_question".into())
    );
    assert_eq!(server.requests() - sent, 2, "the author is asked twice");

    // Again: all from the cache.
    let sent = server.requests();
    assert!(matches!(run("a", "[majority]"), Generated::Samples(_)));
    assert_eq!(server.requests(), sent);
}

#[test]
fn bad_settings_are_refused_by_field() {
    let c: MultiAgentConfig = serde_json::from_value(
        json!({"engine": "pool", "solvers": 0, "min_agreement": 0, "solver": "{{ q "}),
    )
    .unwrap();
    let fields: Vec<&str> = c.problems().iter().map(|p| p.0).collect();
    assert_eq!(fields, ["solvers", "min_agreement", "solver"]);
}
