//! Instruction reversal against a scripted server: the reverser writes an instruction, the solver
//! regenerates code from it, and the pair is kept only when the regenerated code parses and
//! agrees with the original.

use agents::cache::RequestCache;
use agents::client::Client;
use agents::instruction_reversal::{InstructionReversal, InstructionReversalConfig};
use agents::{Flow, Generated};
use corpus::sample::Content;
use engines::openai::{OpenAiConfig, OpenAiEngine};
use engines::testing::{last_message, FaultServer};
use serde_json::json;
use std::sync::Arc;

const ORIGINAL: &str = "def clamp(x, lo, hi):\n    \"\"\"Limit x to the range [lo, hi].\"\"\"\n    return max(lo, min(x, hi))\n";

#[test]
fn pairs_are_kept_when_the_regenerated_code_parses_and_agrees() {
    let server = FaultServer::scripted(|_, body| {
        let last = last_message(body);
        if last.starts_with("Below is") {
            let tag = if last.contains("# broken") {
                "broken"
            } else if last.contains("# drifts") {
                "drifts"
            } else {
                "good"
            };
            return Ok(format!(
                "<instruction>Write clamp(x, lo, hi) limiting x to [lo, hi]. ({tag})</instruction>"
            ));
        }
        Ok(if last.contains("(broken)") {
            "```python\ndef clamp(x, lo, hi)\n    return\n```".to_string()
        } else if last.contains("(drifts)") {
            "```python\nimport os\nprint(os.getcwd())\n```".to_string()
        } else {
            format!("Sure:\n```python\n{ORIGINAL}```")
        })
    })
    .unwrap();
    let config: InstructionReversalConfig =
        serde_json::from_value(json!({"engine": "pool"})).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig::new(&server.url(), "test-model")).unwrap();
    let flow = InstructionReversal::new(config, Client::new("pool", Arc::new(engine)), 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = RequestCache::open(&dir.path().join("c.jsonl")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |id: &str, text: &str| {
        let content = Content::Text { text: text.into() };
        rt.block_on(flow.run(&cache, id, &content)).unwrap()
    };

    let Generated::Samples(out) = run("a", ORIGINAL) else {
        panic!("dropped")
    };
    let Content::Messages { messages } = &out[0].content else {
        panic!("not a chat")
    };
    assert_eq!(
        messages[0].content,
        "Write clamp(x, lo, hi) limiting x to [lo, hi]. (good)"
    );
    assert_eq!(messages[1].content, ORIGINAL.trim());
    assert_eq!(out[0].quality["fidelity"], 1.0);
    let agents: Vec<&str> = out[0].turns.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(agents, ["reverser", "solver"]);

    let broken = format!("{ORIGINAL}# broken\n");
    assert_eq!(
        run("b", &broken),
        Generated::Dropped("unparsable_regenerated".into())
    );
    let drifts = format!("{ORIGINAL}# drifts\n");
    assert_eq!(run("c", &drifts), Generated::Dropped("low_fidelity".into()));
    assert_eq!(
        run("d", "def oops(:\n"),
        Generated::Dropped("unparsable_original".into())
    );
}
