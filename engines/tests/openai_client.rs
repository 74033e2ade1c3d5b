//! `phiforge serve` through the official `openai` Python client, as a new user would drive it:
//! chat and completions, `n` choices (streamed too), streaming with the usage, and refusals by name of what the
//! server cannot honour. The client is installed from PyPI into a virtual environment under
//! Cargo's target folder the first time (the package is pinned; it needs `python3` with `venv`).

use candle_core::{DType, Device};
use engines::engine::{ChatRequest, Engine, Message, Sampling};
use engines::local::LocalEngine;
use engines::phi3::Model;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The client's version the test was written against.
const OPENAI: &str = "openai==3.57.0";

fn local(slots: usize) -> LocalEngine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let model = Model::load(&dir, DType::F32, &Device::Cpu, slots, 512).unwrap();
    let codec = engines::tokenizer::for_model(&dir).unwrap();
    LocalEngine::new(model, codec.into(), "phi3-tiny")
}

/// A virtual environment with the client, made once.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(format!("{OPENAI}.installed"));
    if !ready.exists() {
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                out.status.success(),
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (the test needs python3 with venv)",
        );
        run(
            Command::new(&python).args(["-m", "pip", "install", "--quiet", OPENAI]),
            &format!("pip install {OPENAI} (the test needs PyPI)"),
        );
        std::fs::write(&ready, "").unwrap();
    }
    python
}

#[test]
fn the_official_openai_client_gets_what_the_engine_gives() {
    let python = python();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    rt.spawn(async move {
        axum::serve(listener, engines::serve::router(local(4), "phi3-tiny", 16)).await
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client/drive.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([url.as_str(), "phi3-tiny"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["models"], serde_json::json!(["phi3-tiny"]));
    // The engine's own greedy completion of the same chat, 8 tokens.
    let want = rt
        .block_on(local(1).complete(&ChatRequest {
            messages: vec![Message::new("user", "Tell me about the number 3.")],
            sampling: Sampling {
                temperature: 0.0,
                max_tokens: 8,
                ..Default::default()
            },
        }))
        .unwrap();
    let chat = &got["chat"];
    assert_eq!(chat["text"], want.text.as_str(), "{got}");
    let (p, c) = (want.prompt_tokens as u64, want.completion_tokens as u64);
    assert_eq!(chat["usage"], serde_json::json!([p, c, p + c]), "{got}");
    // Streaming adds up to the same text, and ends with the usage in a chunk without choices.
    let stream = &got["stream"];
    assert_eq!(stream["text"], chat["text"], "{got}");
    assert_eq!(stream["finish_reason"], chat["finish_reason"], "{got}");
    assert_eq!(stream["usage"], serde_json::json!([p, c]), "{got}");
    assert_eq!(stream["last_has_choices"], false, "{got}");
    // n = 3: three choices, the prompt counted once.
    let n = &got["n"];
    assert_eq!(n["indexes"], serde_json::json!([0, 1, 2]), "{got}");
    assert_eq!(n["usage"][0], p, "{got}");
    assert!(n["usage"][1].as_u64().unwrap() >= 3, "{got}");
    // Streamed, the same seeded choices.
    assert_eq!(n["streamed"], n["texts"], "{got}");
    assert!(got["completion"]["text"].is_string(), "{got}");
    // Each parameter it cannot honour: a 400 whose message names it.
    let refused = got["refused"].as_object().unwrap();
    assert_eq!(refused.len(), 6, "{got}");
    for (name, message) in refused {
        assert!(
            message.as_str().unwrap().contains(&format!("`{name}`")),
            "{name}: {message}"
        );
    }
}
