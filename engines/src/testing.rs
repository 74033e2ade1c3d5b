//! A fault-injecting OpenAI-compatible server on 127.0.0.1, for tests (feature `test-server`).
//!
//! Each request gets the [`Fault`] a plan gives for its number: a normal reply, 429 with
//! `Retry-After` (seconds or an HTTP date), 500, a reply slower than the client's timeout, a connection cut before any reply,
//! or a 200 whose body is not JSON. A normal reply echoes the last message, so tests can check
//! which request it answers. The server serves until dropped.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server does with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Ok,
    TooManyRequests {
        retry_after_s: u32,
    },
    /// 429 with `Retry-After` as an HTTP date this many seconds from now.
    TooManyRequestsUntil {
        seconds_from_now: u64,
    },
    ServerError,
    Slow(Duration),
    Cut,
    BadJson,
    BadRequest,
}

/// A scripted reply: this text as the completion, or a fault.
pub type Answer = Result<String, Fault>;

type Plan = Arc<dyn Fn(usize, &Value) -> Answer + Send + Sync>;

/// A running server; stops when dropped.
pub struct FaultServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    authorization: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultServer {
    /// Starts a server on its own thread; `plan(n)` decides request `n` (from 0).
    pub fn start(
        plan: impl Fn(usize) -> Fault + Send + Sync + 'static,
    ) -> std::io::Result<FaultServer> {
        FaultServer::scripted(move |n, _| Err(plan(n)))
    }

    /// Starts a server whose replies a script writes: `script(n, body)` sees request `n`'s JSON
    /// body and answers a completion text, or a [`Fault`] (`Fault::Ok` echoes as [`start`] does).
    ///
    /// [`start`]: FaultServer::start
    pub fn scripted(
        script: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static,
    ) -> std::io::Result<FaultServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let authorization = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let plan: Plan = Arc::new(script);
        let (r, a) = (requests.clone(), authorization.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let (plan, r, a) = (plan.clone(), r.clone(), a.clone());
                            tokio::spawn(async move { serve(socket, plan, r, a).await });
                        }
                    }
                }
            });
        });
        Ok(FaultServer {
            addr,
            requests,
            authorization,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The base URL (`http://127.0.0.1:PORT/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `Authorization` headers received.
    pub fn authorization(&self) -> Vec<String> {
        self.authorization
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    plan: Plan,
    requests: Arc<AtomicUsize>,
    authorization: Arc<Mutex<Vec<String>>>,
) {
    // Read the head, then the body by Content-Length (bounded).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut length = 0usize;
    for line in head.lines() {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            if let Ok(mut a) = authorization.lock() {
                a.push(line["authorization:".len()..].trim().to_string());
            }
        }
    }
    while buf.len() < head_end + length.min(16 << 20) {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let n = requests.fetch_add(1, Ordering::SeqCst);
    let fault = match plan(n, &body) {
        Ok(text) => {
            let response = reply_with(&body, text);
            let head = format!(
                "HTTP/1.1 200 X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                response.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
            return;
        }
        Err(f) => f,
    };
    let (status, extra, text) = match fault {
        Fault::Ok => (200, String::new(), reply(&body)),
        Fault::TooManyRequests { retry_after_s } => (
            429,
            format!("Retry-After: {retry_after_s}\r\n"),
            r#"{"error":"rate limited"}"#.to_string(),
        ),
        Fault::TooManyRequestsUntil { seconds_from_now } => (
            429,
            format!(
                "Retry-After: {}\r\n",
                httpdate::fmt_http_date(
                    std::time::SystemTime::now() + Duration::from_secs(seconds_from_now)
                )
            ),
            r#"{"error":"rate limited"}"#.to_string(),
        ),
        Fault::ServerError => (500, String::new(), r#"{"error":"boom"}"#.to_string()),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            (200, String::new(), reply(&body))
        }
        Fault::Cut => return,
        Fault::BadJson => (200, String::new(), "{\"choices\": [".to_string()),
        Fault::BadRequest => (400, String::new(), r#"{"error":"bad request"}"#.to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{text}",
        text.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A completion echoing the request's last message (chat) or prompt (completions).
fn reply(body: &Value) -> String {
    let last = last_message(body);
    reply_with(body, format!("echo: {last}"))
}

/// The request's last message (chat) or prompt (completions).
pub fn last_message(body: &Value) -> &str {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .or_else(|| body.get("prompt").and_then(Value::as_str))
        .unwrap_or("")
}

/// A completion of `text` for the request `body`.
fn reply_with(body: &Value, text: String) -> String {
    let last = last_message(body);
    let words = text.split_whitespace().count();
    let choice = if body.get("prompt").is_some() {
        json!({"index": 0, "text": text, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
    };
    json!({
        "id": "test", "object": "chat.completion", "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": last.split_whitespace().count(), "completion_tokens": words},
    })
    .to_string()
}
