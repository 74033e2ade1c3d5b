//! `phiforge serve` on loopback: the OpenAI-compatible backend talks to the local engine through
//! it, and gets what the engine gives directly; streaming replies add up to the same text.

use candle_core::{DType, Device};
use engines::engine::{ChatRequest, Engine, Message, Sampling};
use engines::local::LocalEngine;
use engines::openai::{Api, OpenAiConfig, OpenAiEngine};
use engines::phi3::Model;
use std::path::Path;

fn local(slots: usize) -> LocalEngine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let model = Model::load(&dir, DType::F32, &Device::Cpu, slots, 512).unwrap();
    let codec = engines::tokenizer::for_model(&dir).unwrap();
    LocalEngine::new(model, codec.into(), "phi3-tiny")
}

fn request(k: usize) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::new(
            "user",
            format!("Tell me about the number {k}."),
        )],
        sampling: Sampling {
            temperature: 0.0,
            max_tokens: 6 + k as u32 % 5,
            ..Default::default()
        },
    }
}

#[test]
fn the_backend_gets_through_the_server_what_the_engine_gives() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, engines::serve::router(local(4), "phi3-tiny", 64)).await });

        let direct = local(1);
        let client = OpenAiEngine::new(OpenAiConfig::new(&url, "phi3-tiny")).unwrap();
        let requests: Vec<ChatRequest> = (0..12).map(request).collect();
        let served = client.complete_batch(&requests).await;
        for (k, (r, got)) in requests.iter().zip(served).enumerate() {
            let got = got.unwrap_or_else(|e| panic!("request {k}: {e}"));
            let want = direct.complete(r).await.unwrap();
            assert_eq!((got.text, got.completion_tokens, got.finish_reason), (want.text, want.completion_tokens, want.finish_reason), "request {k}");
        }

        // The completions API with Phi-4's chat format rendered gives the same.
        let completions = OpenAiEngine::new(OpenAiConfig { api: Api::Completions, ..OpenAiConfig::new(&url, "phi3-tiny") }).unwrap();
        let c = completions.complete(&requests[3]).await.unwrap();
        assert_eq!(c.text, direct.complete(&requests[3]).await.unwrap().text);

        // Streaming: the deltas add up to the whole text, then a finish reason, then [DONE].
        let body = serde_json::json!({"model": "phi3-tiny", "messages": requests[5].messages, "temperature": 0.0, "max_tokens": 10, "stream": true});
        let text = reqwest::Client::new()
            .post(format!("{url}/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        let chunks: Vec<serde_json::Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        let mut whole = requests[5].clone();
        whole.sampling.max_tokens = 10;
        assert_eq!(streamed, direct.complete(&whole).await.unwrap().text);
        assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

        let models: serde_json::Value = reqwest::get(format!("{url}/models")).await.unwrap().json().await.unwrap();
        assert_eq!(models["data"][0]["id"], "phi3-tiny");
    });
}

#[test]
fn past_its_bound_the_server_answers_429_at_once_and_clients_retry() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, engines::serve::router(local(2), "phi3-tiny", 2)).await });
        // Eight at once against a bound of two: some are refused with Retry-After, none waits.
        let body = |k: usize| serde_json::json!({"model": "phi3-tiny", "prompt": format!("Count to {k}."), "temperature": 0.0, "max_tokens": 40});
        let http = reqwest::Client::new();
        let replies = futures::future::join_all((0..8).map(|k| http.post(format!("{url}/completions")).json(&body(k)).send())).await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
        assert!(statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
        assert!(statuses.contains(&429) && statuses.contains(&200), "{statuses:?}");
        let busy = replies.iter().flatten().find(|r| r.status() == 429).unwrap();
        assert_eq!(busy.headers()["retry-after"], "1");
        // The OpenAI backend honours it: every request of a batch ends answered.
        let client = OpenAiEngine::new(OpenAiConfig::new(&url, "phi3-tiny")).unwrap();
        let requests: Vec<ChatRequest> = (0..6).map(request).collect();
        for (k, r) in client.complete_batch(&requests).await.into_iter().enumerate() {
            r.unwrap_or_else(|e| panic!("request {k}: {e}"));
        }
    });
}

/// What the server cannot honour it refuses with a 400 naming the parameter, instead of
/// answering as if it had; `stream_options.include_usage` gets a usage chunk before `[DONE]`.
#[test]
fn unsupported_parameters_are_refused_by_name_and_usage_is_streamed_on_request() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, engines::serve::router(local(2), "phi3-tiny", 8)).await });
        let client = reqwest::Client::new();
        let base = serde_json::json!({"model": "phi3-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0.0});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for (name, value) in [
            ("n", serde_json::json!(2)),
            ("presence_penalty", serde_json::json!(0.5)),
            ("frequency_penalty", serde_json::json!(-1.0)),
            ("logit_bias", serde_json::json!({"50256": -100})),
            ("tools", serde_json::json!([{"type": "function", "function": {"name": "f"}}])),
            ("response_format", serde_json::json!({"type": "json_object"})),
        ] {
            let r = client.post(format!("{url}/chat/completions")).json(&with(name, value)).send().await.unwrap();
            assert_eq!(r.status(), 400, "{name}");
            let e: serde_json::Value = r.json().await.unwrap();
            assert!(e["error"]["message"].as_str().unwrap().contains(&format!("`{name}`")), "{name}: {e}");
        }
        // The values that change nothing are accepted.
        for (name, value) in [("n", serde_json::json!(1)), ("presence_penalty", serde_json::json!(0.0)), ("response_format", serde_json::json!({"type": "text"}))] {
            let r = client.post(format!("{url}/chat/completions")).json(&with(name, value)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name}");
        }
        // Streaming with the usage: a last chunk without choices, with the usage, before [DONE].
        let mut body = with("stream", serde_json::json!(true));
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let text = client.post(format!("{url}/chat/completions")).json(&body).send().await.unwrap().text().await.unwrap();
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        let last: serde_json::Value = serde_json::from_str(data[data.len() - 2]).unwrap();
        assert_eq!(last["choices"], serde_json::json!([]), "{text}");
        let u = &last["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 0, "{text}");
        assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());
        // Without it, no usage chunk.
        let text = client.post(format!("{url}/chat/completions")).json(&with("stream", serde_json::json!(true))).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains("\"usage\""), "{text}");
    });
}
