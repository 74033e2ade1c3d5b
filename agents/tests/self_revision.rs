//! The self-revision flow against a scripted server whose critic scores drafts by their version:
//! a draft that improves passes, one that does not is dropped below the threshold, a critic that
//! never answers in JSON drops the input, and every call is a lineage turn.

use agents::cache::RequestCache;
use agents::client::Client;
use agents::self_revision::{SelfRevision, SelfRevisionConfig};
use agents::{Flow, Generated};
use corpus::sample::Content;
use engines::openai::{OpenAiConfig, OpenAiEngine};
use engines::testing::{last_message, FaultServer};
use serde_json::json;
use std::sync::Arc;

fn scores(s: u32) -> String {
    json!({"scores": {"correctness": s, "clarity": s, "completeness": s, "self_contained": s}, "feedback": "Show each step."}).to_string()
}

fn server() -> FaultServer {
    FaultServer::scripted(|_, body| {
        let messages = body["messages"].as_array().unwrap();
        let first = messages[0]["content"].as_str().unwrap();
        let last = last_message(body);
        if last.starts_with("Review the response") {
            let draft = last.rsplit("Response:\n").next().unwrap();
            return Ok(if first.contains("[garbled]") {
                "Looks fine to me!".to_string()
            } else if draft.contains("v2") && first.contains("[improves]") {
                format!("Here is my review: {}", scores(9))
            } else {
                scores(5)
            });
        }
        // The author: a first draft, then revisions that know their round.
        let version = messages.iter().filter(|m| m["role"] == "assistant").count() + 1;
        Ok(format!("Question and answer, draft v{version}."))
    })
    .unwrap()
}

fn flow(url: &str) -> SelfRevision {
    let config: SelfRevisionConfig = serde_json::from_value(json!({"engine": "pool"})).unwrap();
    let client = |url: &str| {
        let engine = OpenAiEngine::new(OpenAiConfig::new(url, "test-model")).unwrap();
        Client::new("pool", Arc::new(engine))
    };
    SelfRevision::new(config, client(url), client(url), 5).unwrap()
}

#[test]
fn drafts_are_revised_until_they_pass_and_the_others_are_dropped_with_a_reason() {
    let server = server();
    let flow = flow(&server.url());
    let dir = tempfile::tempdir().unwrap();
    let cache = RequestCache::open(&dir.path().join("c.jsonl")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |id: &str, text: &str| {
        let content = Content::Text { text: text.into() };
        rt.block_on(flow.run(&cache, id, &content)).unwrap()
    };

    let Generated::Samples(out) = run("a", "Sorting is stable. [improves]") else {
        panic!("dropped")
    };
    let o = &out[0];
    assert_eq!(o.content.text(), "Question and answer, draft v2.");
    assert_eq!(o.rounds, Some(2));
    assert_eq!(o.quality["score"], 9.0);
    assert_eq!(o.quality["score_clarity"], 9.0);
    let agents: Vec<&str> = o.turns.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(agents, ["author", "critic", "author", "critic"]);
    assert_eq!(o.turns[2].round, 1);

    // A draft that does not improve stops the rounds; below the threshold it is dropped.
    let sent = server.requests();
    assert_eq!(
        run("b", "Sorting is stable."),
        Generated::Dropped("below_threshold".into())
    );
    assert_eq!(
        server.requests() - sent,
        4,
        "draft, critique, revision, critique"
    );

    // A critic that never answers in JSON: asked twice, then the input is dropped.
    let sent = server.requests();
    assert_eq!(
        run("c", "Sorting. [garbled]"),
        Generated::Dropped("unparsed_critique".into())
    );
    assert_eq!(server.requests() - sent, 3, "draft, two critiques");

    // Everything again comes from the cache.
    let sent = server.requests();
    run("a", "Sorting is stable. [improves]");
    assert_eq!(server.requests(), sent);
}

#[test]
fn bad_settings_are_refused_by_field() {
    let c: SelfRevisionConfig = serde_json::from_value(
        json!({"engine": "pool", "rubric": [], "threshold": 11, "critique": "{{ draft "}),
    )
    .unwrap();
    let fields: Vec<&str> = c.problems().iter().map(|p| p.0).collect();
    assert_eq!(fields, ["rubric", "threshold", "critique"]);
}
