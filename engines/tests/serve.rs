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

/// Serves `engine` on a free loopback port (as model `phi3-tiny`, at most `max_pending` requests
/// at once); returns the API's base URL.
async fn start(engine: LocalEngine, max_pending: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            engines::serve::router(engine, "phi3-tiny", max_pending),
        )
        .await
    });
    url
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// POSTs `body` to `url` + `path` (`/completions`, `/chat/completions`); the reply, any status.
async fn post(url: &str, path: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The same, for a reply that must be a 200 with a JSON body.
async fn post_json(url: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let r = post(url, path, body).await;
    assert_eq!(r.status(), 200, "{path}: {body}");
    r.json().await.unwrap()
}

/// The same, for a streamed reply: its body as text.
async fn post_text(url: &str, path: &str, body: &serde_json::Value) -> String {
    let r = post(url, path, body).await;
    assert_eq!(r.status(), 200, "{path}: {body}");
    r.text().await.unwrap()
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
    runtime().block_on(async {
        let url = start(local(4), 64).await;

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
        let text = post_text(&url, "/chat/completions", &body).await;
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
    runtime().block_on(async {
        let url = start(local(2), 2).await;
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
    runtime().block_on(async {
        let url = start(local(2), 8).await;
        let base = serde_json::json!({"model": "phi3-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0.0});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for (name, value) in [
            ("best_of", serde_json::json!(2)),
            ("n", serde_json::json!(0)),
            ("presence_penalty", serde_json::json!(0.5)),
            ("frequency_penalty", serde_json::json!(-1.0)),
            ("logit_bias", serde_json::json!({"50256": -100})),
            ("tools", serde_json::json!([{"type": "function", "function": {"name": "f"}}])),
            ("response_format", serde_json::json!({"type": "json_object"})),
        ] {
            let r = post(&url, "/chat/completions", &with(name, value)).await;
            assert_eq!(r.status(), 400, "{name}");
            let e: serde_json::Value = r.json().await.unwrap();
            assert!(e["error"]["message"].as_str().unwrap().contains(&format!("`{name}`")), "{name}: {e}");
        }
        // The values that change nothing are accepted.
        for (name, value) in [("n", serde_json::json!(1)), ("presence_penalty", serde_json::json!(0.0)), ("response_format", serde_json::json!({"type": "text"}))] {
            post_json(&url, "/chat/completions", &with(name, value)).await;
        }
        // Streaming with the usage: a last chunk without choices, with the usage, before [DONE].
        let mut body = with("stream", serde_json::json!(true));
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let text = post_text(&url, "/chat/completions", &body).await;
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        let last: serde_json::Value = serde_json::from_str(data[data.len() - 2]).unwrap();
        assert_eq!(last["choices"], serde_json::json!([]), "{text}");
        let u = &last["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 0, "{text}");
        assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());
        // Without it, no usage chunk.
        let text = post_text(&url, "/chat/completions", &with("stream", serde_json::json!(true))).await;
        assert!(!text.contains("\"usage\""), "{text}");
    });
}

/// `n` choices of one prompt share its prefill through the prefix cache; `/metrics` reports the
/// engine's figures in Prometheus' text format.
#[test]
fn n_choices_share_the_prompt_and_metrics_are_reported() {
    runtime().block_on(async {
        let url = start(local(4), 8).await;
        let prompt = "A prompt long enough to fill a few blocks of the prefix cache. ".repeat(8);
        let body = serde_json::json!({"model": "phi3-tiny", "prompt": prompt, "max_tokens": 5,
                                      "temperature": 1.0, "seed": 7, "n": 3});
        let r = post_json(&url, "/completions", &body).await;
        let choices = r["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3, "{r}");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i, "{r}");
        }
        // Seeded `seed + i`: the same request gives the same choices.
        let again = post_json(&url, "/completions", &body).await;
        assert_eq!(again["choices"], r["choices"]);
        let u = &r["usage"];
        let tokens: u64 = choices
            .iter()
            .map(|c| c["text"].as_str().unwrap().len() as u64)
            .sum();
        assert!(u["completion_tokens"].as_u64().unwrap() >= 3, "{u}");
        assert!(tokens > 0);
        let metrics = reqwest::Client::new()
            .get(format!("{}/metrics", url.trim_end_matches("/v1")))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .parse()
                .unwrap()
        };
        // Six requests of one prompt: the first computes its whole blocks, the other five find
        // them.
        let prompt_tokens = value("phiforge_engine_prompt_tokens_total");
        let hit = value("phiforge_engine_prefix_cache_hit_tokens_total");
        assert_eq!(
            prompt_tokens,
            6.0 * u["prompt_tokens"].as_f64().unwrap(),
            "{text}"
        );
        assert!(
            hit >= 5.0 * (u["prompt_tokens"].as_f64().unwrap() - 64.0),
            "{text}"
        );
        assert!(
            value("phiforge_engine_prefix_cache_hit_rate") > 0.8,
            "{text}"
        );
        assert_eq!(value("phiforge_engine_queue_depth"), 0.0, "{text}");
        assert!(
            value("phiforge_engine_generated_tokens_total") >= 6.0,
            "{text}"
        );
        assert!(
            text.contains("# TYPE phiforge_engine_generated_tokens_per_second gauge"),
            "{text}"
        );
    });
}
