//! Any OpenAI-compatible server (vLLM, SGLang, llama.cpp, `phiforge serve`) as an [`Engine`].
//!
//! - `/v1/chat/completions`, or `/v1/completions` with Phi-4's chat format rendered into the prompt;
//! - one or many endpoints: requests go round-robin, and an endpoint that just failed is skipped
//!   until its back-off ends (unless all are failing);
//! - a concurrency limit, held only while an attempt is in flight (never through a back-off), and
//!   requests-per-minute and tokens-per-minute limits (token buckets) charged for every attempt;
//! - retries with exponential back-off and jitter on 429, 5xx, timeouts, dropped connections and
//!   malformed replies, waiting at least what `Retry-After` asks (seconds or an HTTP date); a
//!   retry goes at once to another endpoint that is up, and waits only when none is; other errors
//!   fail at once;
//! - a request timeout (`inf`: none);
//! - the API key is read from the environment variable the configuration names, sent only in the
//!   `Authorization` header, and never logged, reported or stored.

use crate::engine::{
    phi4_prompt, ChatRequest, Completion, Engine, EngineError, EngineIdentity, FinishReason,
    TokenLogprob, PHI4_STOP,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Which OpenAI API to call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    #[default]
    Chat,
    Completions,
}

/// Settings of an OpenAI-compatible engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URLs, e.g. `http://gpu-1:8000/v1`.
    pub endpoints: Vec<String>,
    pub model: String,
    /// Name of the environment variable with the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api: Api,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First back-off; it doubles per attempt, up to `backoff_max_s`, times a jitter of 0.5 to 1.5.
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_s: f64,
}

fn default_concurrency() -> usize {
    64
}
fn default_timeout() -> f64 {
    120.0
}
fn default_retries() -> u32 {
    6
}
fn default_backoff() -> f64 {
    0.5
}
fn default_backoff_max() -> f64 {
    30.0
}

impl OpenAiConfig {
    /// A configuration with defaults for one endpoint.
    pub fn new(endpoint: &str, model: &str) -> OpenAiConfig {
        OpenAiConfig {
            endpoints: vec![endpoint.to_string()],
            model: model.to_string(),
            api_key_env: None,
            api: Api::Chat,
            max_concurrency: default_concurrency(),
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout_s: default_timeout(),
            max_retries: default_retries(),
            backoff_s: default_backoff(),
            backoff_max_s: default_backoff_max(),
        }
    }
}

/// A token bucket: `rate` per second, holding at most a minute's worth.
struct Bucket {
    rate: f64,
    capacity: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Bucket {
    fn per_minute(n: u32) -> Bucket {
        let capacity = n.max(1) as f64;
        Bucket {
            rate: capacity / 60.0,
            capacity,
            state: tokio::sync::Mutex::new((capacity, Instant::now())),
        }
    }

    async fn take(&self, n: f64) {
        let n = n.min(self.capacity);
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.capacity);
                s.1 = now;
                if s.0 >= n {
                    s.0 -= n;
                    return;
                }
                (n - s.0) / self.rate
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// An OpenAI-compatible engine.
pub struct OpenAiEngine {
    cfg: OpenAiConfig,
    client: reqwest::Client,
    key: Option<String>,
    permits: Semaphore,
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    next: AtomicUsize,
    /// Per endpoint: skip until this instant (after a failure).
    down_until: Vec<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for OpenAiEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key here, ever.
        f.debug_struct("OpenAiEngine")
            .field("endpoints", &self.cfg.endpoints)
            .field("model", &self.cfg.model)
            .finish()
    }
}

impl OpenAiEngine {
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAiEngine, EngineError> {
        if cfg.endpoints.is_empty() {
            return Err(EngineError::Config("no endpoints".into()));
        }
        if cfg.max_concurrency == 0 || cfg.timeout_s.is_nan() || cfg.timeout_s <= 0.0 {
            return Err(EngineError::Config(
                "max_concurrency and timeout_s must be more than 0".into(),
            ));
        }
        let key = match &cfg.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                EngineError::Config(format!(
                    "the environment variable `{var}` (api_key_env) is not set"
                ))
            })?),
        };
        let mut client = reqwest::Client::builder().pool_max_idle_per_host(cfg.max_concurrency);
        // `inf`: no timeout.
        if let Ok(timeout) = Duration::try_from_secs_f64(cfg.timeout_s) {
            client = client.timeout(timeout);
        }
        let client = client
            .build()
            .map_err(|e| EngineError::Config(format!("HTTP client: {e}")))?;
        Ok(OpenAiEngine {
            permits: Semaphore::new(cfg.max_concurrency),
            rpm: cfg.requests_per_minute.map(Bucket::per_minute),
            tpm: cfg.tokens_per_minute.map(Bucket::per_minute),
            next: AtomicUsize::new(0),
            down_until: cfg.endpoints.iter().map(|_| Mutex::new(None)).collect(),
            key,
            client,
            cfg,
        })
    }

    /// The next endpoint round-robin, skipping ones in back-off unless all are (then the one back
    /// soonest).
    fn pick(&self) -> usize {
        let n = self.cfg.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut soonest = (start % n, None::<Instant>);
        for k in 0..n {
            let i = (start + k) % n;
            match self.down(i, now) {
                Some(t) => {
                    if soonest.1.is_none_or(|s| t < s) {
                        soonest = (i, Some(t));
                    }
                }
                None => return i,
            }
        }
        soonest.0
    }

    /// Until when endpoint `i` is in back-off, if it is at `now`.
    fn down(&self, i: usize, now: Instant) -> Option<Instant> {
        let until = self.down_until[i].lock().map(|g| *g).unwrap_or(None);
        until.filter(|&t| t > now)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.backoff_s * 2f64.powi(attempt.saturating_sub(1) as i32);
        let jitter = 0.5 + fastrand::f64();
        Duration::from_secs_f64((base.min(self.cfg.backoff_max_s) * jitter).clamp(0.0, 3600.0))
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let s = &req.sampling;
        let mut body = json!({
            "model": self.cfg.model,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        });
        match self.cfg.api {
            Api::Chat => {
                body["messages"] = json!(req.messages);
                if !s.stop.is_empty() {
                    body["stop"] = json!(s.stop);
                }
                if s.logprobs {
                    body["logprobs"] = json!(true);
                }
            }
            Api::Completions => {
                body["prompt"] = json!(phi4_prompt(&req.messages));
                let mut stop: Vec<String> = PHI4_STOP.iter().map(|s| s.to_string()).collect();
                stop.extend(s.stop.iter().cloned());
                body["stop"] = json!(stop);
                if s.logprobs {
                    body["logprobs"] = json!(1);
                }
            }
        }
        if let Some(seed) = s.seed {
            body["seed"] = json!(seed);
        }
        if let Some(k) = s.top_k {
            body["top_k"] = json!(k);
        }
        if s.min_tokens > 0 {
            body["min_tokens"] = json!(s.min_tokens);
        }
        body
    }

    /// One attempt at one endpoint; on failure also what `Retry-After` asked for.
    async fn send(
        &self,
        endpoint: &str,
        req: &ChatRequest,
    ) -> Result<Completion, (EngineError, Option<Duration>)> {
        let path = match self.cfg.api {
            Api::Chat => "chat/completions",
            Api::Completions => "completions",
        };
        let url = format!("{}/{path}", endpoint.trim_end_matches('/'));
        let mut http = self.client.post(&url).json(&self.body(req));
        if let Some(key) = &self.key {
            http = http.bearer_auth(key);
        }
        let reply = http
            .send()
            .await
            .map_err(|e| (self.transport_error(endpoint, e), None))?;
        let status = reply.status();
        let retry_after = reply
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let text = reply
            .text()
            .await
            .map_err(|e| (self.transport_error(endpoint, e), None))?;
        if !status.is_success() {
            let body: String = text.chars().take(300).collect();
            return Err((
                EngineError::Status {
                    endpoint: endpoint.to_string(),
                    status: status.as_u16(),
                    body,
                },
                retry_after,
            ));
        }
        parse_reply(&text, self.cfg.api).map_err(|message| {
            (
                EngineError::Malformed {
                    endpoint: endpoint.to_string(),
                    message,
                },
                None,
            )
        })
    }

    fn transport_error(&self, endpoint: &str, e: reqwest::Error) -> EngineError {
        if e.is_timeout() {
            EngineError::Timeout {
                endpoint: endpoint.to_string(),
                seconds: self.cfg.timeout_s,
            }
        } else {
            // reqwest's message names the URL, never the headers.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            EngineError::Connection {
                endpoint: endpoint.to_string(),
                message,
            }
        }
    }

    async fn complete_one(&self, req: &ChatRequest) -> Result<Completion, EngineError> {
        let mut attempt = 0;
        loop {
            let i = self.pick();
            let endpoint = &self.cfg.endpoints[i];
            let sent = {
                // Every attempt is charged to the rate limits: a retry costs the server again.
                if let Some(b) = &self.rpm {
                    b.take(1.0).await;
                }
                if let Some(b) = &self.tpm {
                    let prompt: usize = req.messages.iter().map(|m| m.content.len()).sum();
                    b.take((prompt / 4) as f64 + req.sampling.max_tokens as f64)
                        .await;
                }
                // The permit is held for the attempt only, never through a back-off.
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| EngineError::Config("engine shut down".into()))?;
                self.send(endpoint, req).await
            };
            match sent {
                Ok(c) => {
                    if let Ok(mut g) = self.down_until[i].lock() {
                        *g = None;
                    }
                    return Ok(c);
                }
                Err((e, retry_after)) => {
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    attempt += 1;
                    if attempt > self.cfg.max_retries {
                        return Err(EngineError::RetriesExhausted {
                            attempts: attempt,
                            last: Box::new(e),
                        });
                    }
                    let wait = self.backoff(attempt).max(retry_after.unwrap_or_default());
                    let now = Instant::now();
                    if let Ok(mut g) = self.down_until[i].lock() {
                        *g = Some(now + wait);
                    }
                    // Another endpoint that is up takes the retry at once; with none up, this
                    // request waits out its back-off.
                    let other_up = (0..self.cfg.endpoints.len())
                        .any(|j| j != i && self.down(j, now).is_none());
                    tracing::warn!(
                        attempt,
                        wait_s = if other_up { 0.0 } else { wait.as_secs_f64() },
                        "retrying: {e}"
                    );
                    if !other_up {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110), as a wait of at most an hour.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let seconds = match v.parse::<f64>() {
        Ok(s) if s.is_finite() => s,
        Ok(_) => return None,
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(std::time::SystemTime::now())
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        }
    };
    Some(Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)))
}

/// Reads a chat or completions reply.
fn parse_reply(text: &str, api: Api) -> Result<Completion, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("no choices[0]")?;
    let content = match api {
        Api::Chat => choice.get("message").and_then(|m| m.get("content")),
        Api::Completions => choice.get("text"),
    };
    let text = content
        .and_then(Value::as_str)
        .ok_or("no text in choices[0]")?
        .to_string();
    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") | Some("eos") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
        None => FinishReason::Other("unknown".into()),
    };
    let usage = |k: &str| {
        v.get("usage")
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32
    };
    let logprobs = match api {
        Api::Chat => choice
            .get("logprobs")
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|t| TokenLogprob {
                        token: t
                            .get("token")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        logprob: t.get("logprob").and_then(Value::as_f64).unwrap_or(f64::NAN)
                            as f32,
                    })
                    .collect()
            }),
        Api::Completions => choice.get("logprobs").and_then(|l| {
            let tokens = l.get("tokens")?.as_array()?;
            let lps = l.get("token_logprobs")?.as_array()?;
            Some(
                tokens
                    .iter()
                    .zip(lps)
                    .map(|(t, p)| TokenLogprob {
                        token: t.as_str().unwrap_or("").to_string(),
                        logprob: p.as_f64().unwrap_or(f64::NAN) as f32,
                    })
                    .collect(),
            )
        }),
    };
    Ok(Completion {
        text,
        finish_reason,
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
        logprobs,
    })
}

impl Engine for OpenAiEngine {
    fn identity(&self) -> EngineIdentity {
        EngineIdentity {
            kind: "openai".into(),
            model: self.cfg.model.clone(),
        }
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, EngineError>> {
        Box::pin(self.complete_one(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_both_apis_parse() {
        let chat = r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"length",
            "logprobs":{"content":[{"token":"hi","logprob":-0.5}]}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let c = parse_reply(chat, Api::Chat).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason, c.prompt_tokens),
            ("hi", FinishReason::Length, 3)
        );
        assert_eq!(c.logprobs.unwrap()[0].logprob, -0.5);
        let comp = r#"{"choices":[{"text":"yo","finish_reason":"stop"}]}"#;
        assert_eq!(parse_reply(comp, Api::Completions).unwrap().text, "yo");
        assert!(parse_reply("{", Api::Chat)
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_reply("{\"choices\": []}", Api::Chat).is_err());
    }
}
