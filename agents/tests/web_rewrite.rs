//! The web-rewrite flow against a scripted OpenAI-compatible server on loopback: checks, re-asks
//! with new seeds, drops with reasons, lineage turns, and the request cache answering a rerun.

use agents::cache::RequestCache;
use agents::client::Client;
use agents::web_rewrite::{WebRewrite, WebRewriteConfig};
use agents::Generated;
use engines::openai::{OpenAiConfig, OpenAiEngine};
use engines::testing::{last_message, FaultServer};
use std::sync::{Arc, Mutex};

fn config() -> WebRewriteConfig {
    serde_json::from_value(serde_json::json!({"engine": "pool", "max_input_tokens": 40})).unwrap()
}

#[test]
fn documents_are_rewritten_checked_and_cached() {
    let seeds = Arc::new(Mutex::new(Vec::new()));
    let seen = seeds.clone();
    let server = FaultServer::scripted(move |_, body| {
        seen.lock().unwrap().push(body["seed"].as_u64().unwrap());
        let prompt = last_message(body);
        let text = prompt.rsplit("Text:\n").next().unwrap_or("").to_string();
        if text.contains("stubborn") {
            // Never follows the format: dropped after max_attempts.
            return Ok(format!("Sure! {text}"));
        }
        if text.contains("shy") && seen.lock().unwrap().len() < 3 {
            return Ok("I'm sorry, I cannot help with that.".into());
        }
        Ok(format!("Rewritten passage: {}", text.to_uppercase()))
    })
    .unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        backoff_s: 0.01,
        backoff_max_s: 0.02,
        ..OpenAiConfig::new(&server.url(), "test-model")
    })
    .unwrap();
    let client = Client::new("pool", Arc::new(engine));
    let flow = WebRewrite::new(config(), client, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |id: &str, text: &str| {
        let cache = RequestCache::open(&dir.path().join("unit.jsonl")).unwrap();
        rt.block_on(flow.rewrite(&cache, id, text)).unwrap()
    };

    let Generated::Samples(out) = run("s1", "Ducks lay eggs. The shy duck lays 16 eggs a day.")
    else {
        panic!("dropped")
    };
    assert_eq!(
        out[0].content.text(),
        "DUCKS LAY EGGS. THE SHY DUCK LAYS 16 EGGS A DAY."
    );
    // Two refusals, then a rewrite: three turns, each with its own seed.
    let turns = &out[0].turns;
    assert_eq!(turns.len(), 3, "{turns:?}");
    assert!(turns
        .iter()
        .all(|t| t.agent == "rewriter" && t.engine == "pool" && t.model == "test-model"));
    let mut s: Vec<u64> = turns.iter().map(|t| t.seed).collect();
    s.dedup();
    assert_eq!(s.len(), 3);
    assert_eq!(out[0].quality["length_ratio"], 1.0);

    assert_eq!(
        run("s2", "A stubborn page."),
        Generated::Dropped("no_prefix".into())
    );
    assert_eq!(run("s3", "   "), Generated::Dropped("empty".into()));

    // A long document goes in parts of at most 40 tokens, rewritten one by one and joined.
    let long: String = (0..12)
        .map(|k| format!("Fact {k}: the river is {k} miles long and flows north."))
        .collect::<Vec<_>>()
        .join("\n\n");
    let Generated::Samples(out) = run("s4", &long) else {
        panic!("dropped")
    };
    assert!(out[0].turns.len() >= 3, "{}", out[0].turns.len());
    assert_eq!(out[0].content.text(), long.to_uppercase());

    // A rerun asks the cache, not the server.
    let sent = server.requests();
    let again = run("s4", &long);
    assert_eq!(again, Generated::Samples(out));
    assert_eq!(server.requests(), sent);
    // Another recipe seed is another draw: new requests.
    let engine = OpenAiEngine::new(OpenAiConfig::new(&server.url(), "test-model")).unwrap();
    let other = WebRewrite::new(config(), Client::new("pool", Arc::new(engine)), 8).unwrap();
    let cache = RequestCache::open(&dir.path().join("unit.jsonl")).unwrap();
    rt.block_on(other.rewrite(&cache, "s1", "Ducks lay eggs."))
        .unwrap();
    assert!(server.requests() > sent);
    assert!(seeds.lock().unwrap().len() >= server.requests() - 1);
}

#[test]
fn bad_settings_are_refused_by_field() {
    let mut c = config();
    c.min_ratio = 4.0;
    c.prompt = Some("{{ text ".into());
    let fields: Vec<&str> = c.problems().iter().map(|p| p.0).collect();
    assert_eq!(fields, ["min_ratio", "prompt"]);
}
