//! An OpenAI-compatible mock server for orchestration benchmarks, answering like
//! `../shared/peers/mock_openai.py` (after a fixed delay, one choice of the same fixed 32-word text,
//! a usage block; the same `/stats` counters, so that script's `ctl` reads it), but on one Rust
//! thread: on a 2-core machine the Python server's own CPU caps the request rate below the bound
//! that a benchmark at concurrency 256 and 50 ms is about (`wrk` measures both ceilings).
//!
//! usage: cargo bench --bench mock_openai -- [--port 18433] [--latency-ms 50] [--max-seconds 1800]

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const TEXT: &str = "The quick brown fox jumps over the lazy dog while a patient model writes thirty two words of fixed mock text so that every response body has the same size every time.";
const COMPLETION_TOKENS: u64 = 42;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    total: AtomicU64,
    inflight: AtomicU64,
    max_inflight: AtomicU64,
    seq: AtomicU64,
    /// first, last request time (unix s), the in-flight integral (s), its last change, CPU at reset.
    times: Mutex<(f64, f64, f64, Option<Instant>, f64)>,
}

struct App {
    delay: Duration,
    c: Counters,
}

fn unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This process's CPU seconds (user + system), from /proc.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |k: usize| {
        fields
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command: state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}

impl App {
    fn inflight_add(&self, delta: i64) {
        if let Ok(mut t) = self.c.times.lock() {
            let now = Instant::now();
            if let Some(last) = t.3 {
                t.2 += self.c.inflight.load(Ordering::Relaxed) as f64
                    * now.duration_since(last).as_secs_f64();
            }
            t.3 = Some(now);
        }
        if delta > 0 {
            let cur = self.c.inflight.fetch_add(1, Ordering::Relaxed) + 1;
            self.c.max_inflight.fetch_max(cur, Ordering::Relaxed);
        } else {
            self.c.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Value {
        let t = self.c.times.lock().map(|t| *t).unwrap_or_default();
        let requests = self.c.requests.load(Ordering::Relaxed);
        json!({
            "requests": requests,
            "total_requests": self.c.total.load(Ordering::Relaxed),
            "inflight": self.c.inflight.load(Ordering::Relaxed),
            "max_inflight": self.c.max_inflight.load(Ordering::Relaxed),
            "per_worker_requests": [requests],
            "first_t": t.0,
            "last_t": t.1,
            "cpu_s_since_reset": ((cpu_s() - t.4) * 1000.0).round() / 1000.0,
            "inflight_area_s": t.2,
            "body_wait_s": 0.0,
            "workers": 1,
        })
    }
}

/// Counts a request in flight until it is answered or its client goes away (the handler is
/// dropped then).
struct InFlight(Arc<App>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight_add(-1);
    }
}

async fn chat(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Json<Value> {
    app.inflight_add(1);
    let _inflight = InFlight(app.clone());
    if let Ok(mut t) = app.c.times.lock() {
        if t.0 == 0.0 {
            t.0 = unix();
        }
    }
    tokio::time::sleep(app.delay).await;
    let seq = app.c.seq.fetch_add(1, Ordering::Relaxed);
    let prompt_tokens = (body.to_string().len() as u64 / 4).max(1);
    let reply = json!({
        "id": format!("chatcmpl-0-{seq}"), "object": "chat.completion", "created": unix() as u64,
        "model": body.get("model").cloned().unwrap_or(json!("mock")),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": COMPLETION_TOKENS, "total_tokens": prompt_tokens + COMPLETION_TOKENS},
        "system_fingerprint": "mock",
    });
    app.c.requests.fetch_add(1, Ordering::Relaxed);
    app.c.total.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut t) = app.c.times.lock() {
        t.1 = unix();
    }
    Json(reply)
}

async fn stats(State(app): State<Arc<App>>) -> Json<Value> {
    Json(app.snapshot())
}

async fn reset(State(app): State<Arc<App>>) -> Json<Value> {
    app.c.requests.store(0, Ordering::Relaxed);
    app.c.max_inflight.store(0, Ordering::Relaxed);
    if let Ok(mut t) = app.c.times.lock() {
        *t = (0.0, 0.0, 0.0, None, cpu_s());
    }
    Json(app.snapshot())
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|k| args.get(k + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    // `cargo bench` passes `--bench`; only the named options are read.
    let port = arg("--port", 18433.0) as u16;
    let delay = Duration::from_secs_f64(arg("--latency-ms", 50.0) / 1000.0);
    let max = Duration::from_secs_f64(arg("--max-seconds", 1800.0));
    let app = Arc::new(App {
        delay,
        c: Counters::default(),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "mock", "object": "model"}]}))
            }),
        )
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset))
        .with_state(app.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("mock OpenAI server on http://127.0.0.1:{port}/v1, {delay:?} per request");
        let served = axum::serve(listener, router);
        let _ = tokio::time::timeout(max, served).await;
        eprintln!(
            "{}",
            json!({"event": "stopped", "requests": app.c.total.load(Ordering::Relaxed)})
        );
        Ok(())
    })
}
