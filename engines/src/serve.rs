//! `phiforge serve`: the local engine behind an OpenAI-compatible HTTP API (axum), so one GPU box
//! serves many pipeline workers.
//!
//! - `POST /v1/chat/completions` (Phi-4's chat format) and `POST /v1/completions` (raw prompt),
//!   with `stream: true` as server-sent events (`data: {chunk}` ... `data: [DONE]`);
//! - `GET /v1/models`;
//! - `GET /metrics`: the engine's figures in Prometheus' text format (queue depth, prefix cache
//!   hit rate, tokens generated per second, ...; see [`crate::metrics::Metrics`]).
//!
//! `n` above 1 gives `n` choices of one prompt, which share its keys and values through the
//! engine's prefix cache (with a `seed`, choice `i` is seeded `seed + i`). A parameter the server
//! cannot honour is refused with a 400 naming it, never accepted and ignored: `best_of` above 1, non-zero `presence_penalty` or `frequency_penalty`, a
//! `logit_bias`, `tools` or `functions` (and a `tool_choice` or `function_call` other than
//! `none`/`auto`), `top_logprobs` above 0 (or a completion's `logprobs` above 1: only the chosen
//! token's log-probability is given), `audio` or `modalities` other than text, a
//! `response_format` other than text. `max_completion_tokens` is read as `max_tokens` is.
//! `stream_options.include_usage` is honoured: a last chunk with no choices and the usage, before
//! `[DONE]`. Fields that cannot change the text (`user`, `store`, `metadata`, ...) are ignored.
//!
//! Requests from all clients share the engine's continuous batching. At most `max_pending` are
//! taken at once (being generated or waiting for a slot); past that the server answers 429 with
//! `Retry-After: 1` at once, so a flood of clients queues on their side, with back-off, instead of
//! in this process's memory.

use crate::engine::{phi4_prompt, Completion, EngineError, FinishReason, Message, Sampling};
use crate::local::LocalEngine;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most choices one request may ask for.
const MAX_N: u32 = 64;

struct App {
    engine: LocalEngine,
    model: String,
    next_id: AtomicU64,
    /// One permit per request taken; none left means busy.
    pending: Arc<tokio::sync::Semaphore>,
    max_pending: usize,
    /// The engine's metrics, for `/metrics`.
    registry: prometheus_client::registry::Registry,
}

/// An OpenAI request body: the fields this server reads or refuses (see the module docs); others
/// (`user`, `model`, ...) change nothing and are ignored.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    best_of: Option<u32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logit_bias: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    /// The newer name of `max_tokens` (the official clients send it).
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    audio: Option<Value>,
    #[serde(default)]
    modalities: Option<Value>,
    #[serde(default)]
    min_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Body {
    /// The first parameter set to something this server does not do, with why.
    fn unsupported(&self) -> Option<String> {
        let empty = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        match self.n {
            Some(0) => return Some("`n`: must be at least 1".into()),
            Some(n) if n > MAX_N => return Some(format!("`n`: at most {MAX_N}")),
            _ => {}
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Some("`best_of`: only 1 is supported".into());
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Some(format!("`{name}`: penalties are not supported (only 0)"));
            }
        }
        if !empty(&self.logit_bias) {
            return Some("`logit_bias` is not supported".into());
        }
        for (name, v) in [("tools", &self.tools), ("functions", &self.functions)] {
            if !empty(v) {
                return Some(format!("`{name}`: tool calls are not supported"));
            }
        }
        for (name, v) in [
            ("tool_choice", &self.tool_choice),
            ("function_call", &self.function_call),
        ] {
            if !matches!(v, None | Some(Value::Null))
                && !matches!(v, Some(Value::String(s)) if s == "none" || s == "auto")
            {
                return Some(format!("`{name}`: tool calls are not supported"));
            }
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return Some(
                "`top_logprobs`: only the chosen token's log-probability is given (0)".into(),
            );
        }
        if matches!(&self.logprobs, Some(Value::Number(n)) if n.as_u64().is_none_or(|n| n > 1)) {
            return Some(
                "`logprobs`: only the chosen token's log-probability is given (0 or 1)".into(),
            );
        }
        if !matches!(&self.audio, None | Some(Value::Null)) {
            return Some("`audio`: text output only".into());
        }
        if let Some(Value::Array(m)) = &self.modalities {
            if m.iter().any(|v| v.as_str() != Some("text")) {
                return Some("`modalities`: text output only".into());
            }
        }
        match &self.response_format {
            None | Some(Value::Null) => {}
            Some(f) if f.get("type").and_then(Value::as_str) == Some("text") => {}
            Some(_) => return Some("`response_format`: only {\"type\": \"text\"}".into()),
        }
        None
    }

    fn sampling(&self) -> Sampling {
        let d = Sampling::default();
        let stop = match &self.stop {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        Sampling {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k,
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(d.max_tokens),
            stop,
            min_tokens: self.min_tokens.unwrap_or(0),
            seed: self.seed,
            logprobs: matches!(
                self.logprobs,
                Some(Value::Bool(true)) | Some(Value::Number(_))
            ),
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

fn finish(r: &FinishReason) -> &str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Other(o) => o.as_str(),
    }
}

/// Builds the router for `engine`, answering as model `model`, taking at most `max_pending`
/// requests at once.
pub fn router(engine: LocalEngine, model: &str, max_pending: usize) -> Router {
    let max_pending = max_pending.max(1);
    let mut registry = prometheus_client::registry::Registry::default();
    engine.metrics().register(&mut registry);
    let app = Arc::new(App {
        registry,
        engine,
        model: model.to_string(),
        next_id: AtomicU64::new(1),
        pending: Arc::new(tokio::sync::Semaphore::new(max_pending)),
        max_pending,
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &app.registry) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")),
    }
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": app.model, "object": "model", "owned_by": "phiforge"}]}),
    )
}

type BodyResult = Result<Json<Body>, axum::extract::rejection::JsonRejection>;

async fn chat(State(app): State<Arc<App>>, body: BodyResult) -> Response {
    answer(app, body, true).await
}

async fn completions(State(app): State<Arc<App>>, body: BodyResult) -> Response {
    answer(app, body, false).await
}

/// Reads a request into a prompt (a chat rendered in Phi-4's chat format, a completion's prompt as
/// it is) and answers it.
async fn answer(app: Arc<App>, body: BodyResult, chat: bool) -> Response {
    let kind = if chat { "chat" } else { "completions" };
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the body is not a valid {kind} request"),
        );
    };
    if let Some(why) = body.unsupported() {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let usage = body
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let prompt = match (chat, &body.messages, &body.prompt) {
        (true, Some(messages), _) => phi4_prompt(messages),
        (false, _, Some(prompt)) => prompt.clone(),
        (true, None, _) => return error(StatusCode::BAD_REQUEST, "`messages` is required".into()),
        (false, _, None) => return error(StatusCode::BAD_REQUEST, "`prompt` is required".into()),
    };
    let stream = body.stream.then_some(Streaming { usage });
    let n = body.n.unwrap_or(1).max(1) as usize;
    respond(app, stream, chat, prompt, body.sampling(), n).await
}

/// How to stream a reply.
struct Streaming {
    /// A last chunk with the usage (`stream_options.include_usage`).
    usage: bool,
}

/// A reply's usage: the prompt counts once, whatever `n`.
fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// Choice `i` of a reply.
fn choice(i: usize, c: &Completion, chat: bool) -> Value {
    if chat {
        json!({"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": finish(&c.finish_reason),
               "logprobs": c.logprobs.as_ref().map(|l| json!({"content": l}))})
    } else {
        json!({"index": i, "text": c.text, "finish_reason": finish(&c.finish_reason),
               "logprobs": c.logprobs.as_ref().map(|l| json!({
                   "tokens": l.iter().map(|t| &t.token).collect::<Vec<_>>(),
                   "token_logprobs": l.iter().map(|t| t.logprob).collect::<Vec<_>>()}))})
    }
}

/// Completes `prompt` and answers with one JSON reply, or with a stream of chunks.
async fn respond(
    app: Arc<App>,
    stream: Option<Streaming>,
    chat: bool,
    prompt: String,
    sampling: Sampling,
    n: usize,
) -> Response {
    if n > app.max_pending {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "`n`: at most {} on this server (its --max-pending)",
                app.max_pending
            ),
        );
    }
    // Held until the completion ends (in the streaming task when streaming); one per choice.
    let Ok(permit) = app.pending.clone().try_acquire_many_owned(n as u32) else {
        let mut busy = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "busy: {} requests are being served or wait for a slot; retry later",
                app.max_pending
            ),
        );
        busy.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return busy;
    };
    let id = format!("cmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let model = app.model.clone();
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let Some(streaming) = stream else {
        let completed: Result<Vec<Completion>, EngineError> = if n == 1 {
            app.engine
                .complete_text(&prompt, &sampling, None)
                .await
                .map(|c| vec![c])
        } else {
            app.engine
                .complete_text_n(&prompt, &sampling, n)
                .await
                .into_iter()
                .collect()
        };
        drop(permit);
        return match completed {
            Ok(cs) => {
                let choices: Vec<Value> = cs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| choice(i, c, chat))
                    .collect();
                let completion: u32 = cs.iter().map(|c| c.completion_tokens).sum();
                let prompt = cs.first().map_or(0, |c| c.prompt_tokens);
                Json(json!({
                    "id": id, "object": object, "model": model, "choices": choices,
                    "usage": usage(prompt, completion),
                }))
                .into_response()
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        };
    };
    // Streaming: every choice's deltas as they come (tagged with its index), then each finish
    // reason, the usage when asked for, then [DONE].
    use futures::StreamExt;
    let permit = Arc::new(permit);
    let mut deltas = Vec::with_capacity(n);
    let mut done = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sampling = Sampling {
            seed: sampling.seed.map(|s| s.wrapping_add(i as u64)),
            ..sampling.clone()
        };
        let (app, prompt, permit) = (app.clone(), prompt.clone(), permit.clone());
        done.push(tokio::spawn(async move {
            let completed = app.engine.complete_text(&prompt, &sampling, Some(tx)).await;
            drop(permit);
            completed
        }));
        deltas.push(
            futures::stream::unfold(rx, move |mut rx| async move {
                rx.recv().await.map(|d| ((i, d), rx))
            })
            .boxed(),
        );
    }
    drop(permit);
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let event = |v: Value| Event::default().data(v.to_string());
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |i: usize, delta: Option<&str>, reason: Option<&str>| -> Event {
            let choice = if chat {
                json!({"index": i, "delta": delta.map(|d| json!({"content": d})).unwrap_or(json!({})), "finish_reason": reason})
            } else {
                json!({"index": i, "text": delta.unwrap_or(""), "finish_reason": reason})
            };
            Event::default().data(
                json!({"id": id, "object": chunk_object, "model": model, "choices": [choice]})
                    .to_string(),
            )
        }
    };
    // What follows the deltas, once every choice is done.
    let include_usage = streaming.usage;
    let tail_chunk = chunk.clone();
    let tail = move |outcomes: Vec<Result<Completion, String>>| -> Vec<Event> {
        let mut events = Vec::new();
        let (mut prompt, mut completion) = (0, 0);
        for (i, o) in outcomes.iter().enumerate() {
            match o {
                Ok(c) => {
                    events.push(tail_chunk(i, None, Some(finish(&c.finish_reason))));
                    prompt = c.prompt_tokens;
                    completion += c.completion_tokens;
                }
                Err(e) => events.push(event(json!({"error": {"message": e}}))),
            }
        }
        if include_usage && outcomes.iter().all(Result::is_ok) {
            events.push(event(
                json!({"id": id, "object": chunk_object, "model": model, "choices": [],
                "usage": usage(prompt, completion)}),
            ));
        }
        events.push(Event::default().data("[DONE]"));
        events
    };
    let merged = futures::stream::select_all(deltas);
    let deltas =
        merged.map(move |(i, d)| Ok::<Event, std::convert::Infallible>(chunk(i, Some(&d), None)));
    let ending = futures::stream::once(async move {
        let mut outcomes = Vec::with_capacity(done.len());
        for d in done {
            outcomes.push(match d.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            });
        }
        futures::stream::iter(tail(outcomes).into_iter().map(Ok))
    })
    .flatten();
    Sse::new(deltas.chain(ending)).into_response()
}

/// Serves `engine` on `addr` until the process ends (see [`router`]).
pub async fn serve(
    engine: LocalEngine,
    model: &str,
    addr: std::net::SocketAddr,
    max_pending: usize,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("serving {model} on http://{}/v1", listener.local_addr()?);
    axum::serve(listener, router(engine, model, max_pending)).await
}
