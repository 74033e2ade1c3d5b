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
use std::collections::{BTreeMap, HashMap};
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
    let clients = BTreeMap::from([("pool".to_string(), Client::new("pool", Arc::new(engine)))]);
    let flow = MultiAgent::new(config, &clients, 3).unwrap();
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
    // The kept solution has the plurality answer (written `42` or `**42.**`: which solver got
    // which answer depends on the order their requests arrived in).
    assert!(
        messages[1].content.contains("Answer: 42")
            || messages[1].content.contains("Answer: **42.**"),
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
    assert_eq!(
        run("d", "[wrong]"),
        Generated::Dropped("rejected_by_critic".into())
    );
    let sent = server.requests();
    assert_eq!(
        run("e", "[garbled]"),
        Generated::Dropped("unparsed_author".into())
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
    let fields: Vec<String> = c.problems().into_iter().map(|p| p.0).collect();
    assert_eq!(fields, ["min_agreement", "solvers", "solver"]);
}

/// Declared agents: a teacher writes a problem as JSON, three students (on a second engine) each
/// see the transcript and answer, voted on their `answer` field, and an examiner (with its own
/// system prompt) sees only its request and must pass the plurality answer.
#[test]
fn declared_agents_take_turns_over_a_shared_transcript() {
    let sent: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = sent.clone();
    let order: Mutex<HashMap<u64, usize>> = Mutex::default();
    let server = FaultServer::scripted(move |_, body| {
        log.lock().unwrap().push(body.clone());
        let last = last_message(body);
        if last.starts_with("Pose a problem") {
            return Ok(r#"Here: {"problem": "2 + 2 = ?", "topic": "sums"}"#.into());
        }
        if last.ends_with("Answer it.") {
            // Two of three students agree (a retry keeps its seed, and so its answer).
            let mut order = order.lock().unwrap();
            let next = order.len();
            let k = *order.entry(body["seed"].as_u64().unwrap()).or_insert(next);
            let a = if k == 0 { "5" } else { "4" };
            return Ok(format!("I add them.\nANSWER={a}"));
        }
        Ok(if last.contains("answer 4") {
            "PASS"
        } else {
            "FAIL"
        }
        .into())
    })
    .unwrap();
    let config: MultiAgentConfig = serde_json::from_value(json!({
        "engine": "big",
        "agents": [
            {"name": "teacher", "role": "a mathematics teacher",
             "prompt": "Pose a problem about {{ text }} as JSON.",
             "parse": {"json": ["problem"]}},
            {"name": "student", "engine": "small", "n": 3, "vote": "answer",
             "sampling": {"temperature": 1.0, "max_tokens": 64},
             "prompt": "Answer it.", "parse": {"regex": "ANSWER=(?P<answer>\\d+)"}},
            {"name": "examiner", "sees": "prompt", "system": "You grade {{ teacher.topic }}.",
             "prompt": "Problem {{ teacher.problem }}, answer {{ student.answer }} ({{ student.agreement }}).",
             "parse": {"regex": "(?P<grade>PASS|FAIL)"}, "accept": {"grade": "^PASS$"}},
        ],
        "sample": [
            {"role": "user", "content": "{{ teacher.problem }}"},
            {"role": "assistant", "content": "{{ student.reply }}"},
        ],
    }))
    .unwrap();
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    assert_eq!(config.engines(), ["big", "small"]);
    let client = |name: &str, model: &str| {
        let engine = OpenAiEngine::new(OpenAiConfig::new(&server.url(), model)).unwrap();
        (name.to_string(), Client::new(name, Arc::new(engine)))
    };
    let clients = BTreeMap::from([client("big", "big-model"), client("small", "small-model")]);
    let flow = MultiAgent::new(config, &clients, 11).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = RequestCache::open(&dir.path().join("c.jsonl")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let content = Content::Text {
        text: "sums".into(),
    };
    let got = rt.block_on(flow.run(&cache, "s1", &content)).unwrap();
    let Generated::Samples(out) = got else {
        panic!("dropped: {got:?}")
    };
    let Content::Messages { messages } = &out[0].content else {
        panic!("not a chat")
    };
    assert_eq!(messages[0].content, "2 + 2 = ?");
    assert_eq!(messages[1].content, "I add them.\nANSWER=4");
    let turns: Vec<(&str, &str)> = out[0]
        .turns
        .iter()
        .map(|t| (t.agent.as_str(), t.engine.as_str()))
        .collect();
    assert_eq!(&turns[..2], [("teacher", "big"), ("student-0", "small")]);
    assert_eq!(turns.last(), Some(&("examiner", "big")));

    let sent = sent.lock().unwrap();
    let by = |part: &str| {
        sent.iter()
            .find(|b| last_message(b).contains(part))
            .unwrap()
            .clone()
    };
    // The teacher: its role as the system prompt.
    let teacher = by("Pose a problem");
    assert_eq!(
        teacher["messages"][0]["content"],
        "You are a mathematics teacher."
    );
    assert_eq!(teacher["model"], "big-model");
    // A student sees the teacher's turn, headed with its name, then its request (one user
    // message: consecutive turns of a role are joined); on its own engine and sampling.
    let student = by("Answer it");
    assert_eq!(student["model"], "small-model");
    assert_eq!(student["max_tokens"], 64);
    let m = student["messages"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["role"], "user");
    assert!(m[0]["content"]
        .as_str()
        .unwrap()
        .starts_with("[teacher]\nHere: {"));
    // The examiner sees only its request, which names what it needs, with its system prompt.
    let examiner = by("Problem");
    let m = examiner["messages"].as_array().unwrap();
    assert_eq!(m[0]["content"], "You grade sums.");
    assert_eq!(m[1]["content"], "Problem 2 + 2 = ?, answer 4 (0.667).");
    assert_eq!(m.len(), 2);
    assert_eq!(out[0].quality["agreement"], 0.667);
}
