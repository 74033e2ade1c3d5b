//! The OpenAI-compatible backend against real HTTP servers on loopback that inject faults: every
//! request either succeeds after bounded retries or fails with a clear error; none is lost.

use engines::engine::{ChatRequest, Engine, EngineError, Message, Sampling};
use engines::openai::{Api, OpenAiConfig, OpenAiEngine};
use engines::testing::{Fault, FaultServer};
use std::time::{Duration, Instant};

fn request(k: usize) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::new("user", format!("question {k}"))],
        sampling: Sampling {
            max_tokens: 16,
            seed: Some(k as u64),
            ..Default::default()
        },
    }
}

fn fast(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        timeout_s: 0.5,
        backoff_s: 0.01,
        backoff_max_s: 0.05,
        max_retries: 8,
        max_concurrency: 16,
        ..OpenAiConfig::new(url, "test-model")
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_fault_kind_is_retried_and_every_request_answered() {
    let kinds = [
        Fault::TooManyRequests { retry_after_s: 0 },
        Fault::ServerError,
        Fault::Slow(Duration::from_secs(2)),
        Fault::Cut,
        Fault::BadJson,
    ];
    // The first 60 requests to arrive fail, cycling through every kind of fault.
    let server = FaultServer::start(move |n| {
        if n < 60 {
            kinds[n % kinds.len()]
        } else {
            Fault::Ok
        }
    })
    .unwrap();
    let engine = OpenAiEngine::new(fast(&server.url())).unwrap();
    let requests: Vec<ChatRequest> = (0..100).map(request).collect();
    let results = rt().block_on(engine.complete_batch(&requests));
    assert_eq!(results.len(), 100);
    for (k, r) in results.iter().enumerate() {
        let c = r.as_ref().unwrap_or_else(|e| panic!("request {k}: {e}"));
        assert_eq!(c.text, format!("echo: question {k}"));
        assert_eq!(c.completion_tokens, 3);
    }
    // Each failed attempt was followed by exactly one more.
    assert_eq!(server.requests(), 160);
}

#[test]
fn retries_are_bounded_and_the_error_says_why() {
    let server = FaultServer::start(|_| Fault::ServerError).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        max_retries: 3,
        ..fast(&server.url())
    })
    .unwrap();
    let err = rt().block_on(engine.complete(&request(0))).unwrap_err();
    assert!(
        matches!(err, EngineError::RetriesExhausted { attempts: 4, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("gave up after 4 attempts") && text.contains("HTTP 500"),
        "{text}"
    );
    assert!(text.contains(&server.url()), "{text}");
    assert_eq!(server.requests(), 4);
}

#[test]
fn client_errors_fail_at_once() {
    let server = FaultServer::start(|_| Fault::BadRequest).unwrap();
    let engine = OpenAiEngine::new(fast(&server.url())).unwrap();
    let err = rt().block_on(engine.complete(&request(0))).unwrap_err();
    assert!(
        matches!(err, EngineError::Status { status: 400, .. }),
        "{err}"
    );
    assert_eq!(server.requests(), 1);
}

#[test]
fn retry_after_is_honoured() {
    let server = FaultServer::start(|n| {
        if n == 0 {
            Fault::TooManyRequests { retry_after_s: 1 }
        } else {
            Fault::Ok
        }
    })
    .unwrap();
    let engine = OpenAiEngine::new(fast(&server.url())).unwrap();
    let t = Instant::now();
    rt().block_on(engine.complete(&request(0))).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "retried after {:?}",
        t.elapsed()
    );
    assert_eq!(server.requests(), 2);
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    let server = FaultServer::start(|n| {
        if n == 0 {
            Fault::TooManyRequestsUntil {
                seconds_from_now: 2,
            }
        } else {
            Fault::Ok
        }
    })
    .unwrap();
    let engine = OpenAiEngine::new(fast(&server.url())).unwrap();
    let t = Instant::now();
    rt().block_on(engine.complete(&request(0))).unwrap();
    // The date has whole seconds: two seconds from now is a wait of more than one.
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "retried after {:?}",
        t.elapsed()
    );
    assert_eq!(server.requests(), 2);
}

#[test]
fn a_request_in_back_off_holds_no_concurrency_permit() {
    let server = FaultServer::start(|n| {
        if n == 0 {
            Fault::TooManyRequests { retry_after_s: 2 }
        } else {
            Fault::Ok
        }
    })
    .unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        max_concurrency: 1,
        ..fast(&server.url())
    })
    .unwrap();
    rt().block_on(async {
        let t = Instant::now();
        let r0 = request(0);
        let first = engine.complete(&r0);
        let second = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = engine.complete(&request(1)).await;
            (r, t.elapsed())
        };
        let (a, (b, b_done)) = tokio::join!(first, second);
        assert_eq!(a.unwrap().text, "echo: question 0");
        assert_eq!(b.unwrap().text, "echo: question 1");
        // The second ran while the first waited out its two seconds, with the only permit free.
        assert!(
            b_done < Duration::from_millis(1500),
            "second done after {b_done:?}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            t.elapsed()
        );
    });
}

#[test]
fn every_attempt_is_charged_to_the_rate_limit() {
    // 30 requests a minute: a bucket of 30, then one every two seconds. The first 30 attempts
    // fail, so the 31st waits for the bucket even though it is the same request.
    let server = FaultServer::start(|n| {
        if n < 30 {
            Fault::ServerError
        } else {
            Fault::Ok
        }
    })
    .unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        requests_per_minute: Some(30),
        backoff_s: 0.0,
        backoff_max_s: 0.0,
        max_retries: 40,
        ..fast(&server.url())
    })
    .unwrap();
    let t = Instant::now();
    rt().block_on(engine.complete(&request(0))).unwrap();
    assert_eq!(server.requests(), 31);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_retry_goes_to_another_endpoint_at_once_and_no_timeout_is_allowed() {
    let bad = FaultServer::start(|_| Fault::ServerError).unwrap();
    let good = FaultServer::start(|_| Fault::Ok).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        endpoints: vec![bad.url(), good.url()],
        backoff_s: 5.0,
        backoff_max_s: 5.0,
        // `--timeout inf`: no timeout at all (it once panicked).
        timeout_s: f64::INFINITY,
        ..fast(&bad.url())
    })
    .unwrap();
    let t = Instant::now();
    let c = rt().block_on(engine.complete(&request(0))).unwrap();
    assert_eq!(c.text, "echo: question 0");
    assert_eq!((bad.requests(), good.requests()), (1, 1));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn load_is_spread_over_endpoints_and_a_failing_one_loses_nothing() {
    let runtime = rt();
    // Two working endpoints share the load evenly.
    let one = FaultServer::start(|_| Fault::Ok).unwrap();
    let two = FaultServer::start(|_| Fault::Ok).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        endpoints: vec![one.url(), two.url()],
        ..fast(&one.url())
    })
    .unwrap();
    let requests: Vec<ChatRequest> = (0..20).map(request).collect();
    let results = runtime.block_on(engine.complete_batch(&requests));
    assert!(results.iter().all(Result::is_ok));
    assert_eq!((one.requests(), two.requests()), (10, 10));

    // With one endpoint failing, every request still ends on the other.
    let bad = FaultServer::start(|_| Fault::ServerError).unwrap();
    let good = FaultServer::start(|_| Fault::Ok).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        endpoints: vec![bad.url(), good.url()],
        ..fast(&bad.url())
    })
    .unwrap();
    let results = runtime.block_on(engine.complete_batch(&requests));
    for (k, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().text, format!("echo: question {k}"));
    }
    assert_eq!(good.requests(), 20);
    assert!(
        bad.requests() >= 1 && bad.requests() <= 20 * 8,
        "{}",
        bad.requests()
    );
}

#[test]
fn the_api_key_is_sent_and_never_shown() {
    std::env::set_var("PHIFORGE_TEST_API_KEY", "sk-test-secret-123");
    let server = FaultServer::start(|_| Fault::ServerError).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        api_key_env: Some("PHIFORGE_TEST_API_KEY".into()),
        max_retries: 1,
        ..fast(&server.url())
    })
    .unwrap();
    let err = rt().block_on(engine.complete(&request(0))).unwrap_err();
    assert_eq!(server.authorization(), ["Bearer sk-test-secret-123"; 2]);
    assert!(
        !format!("{err} {err:?} {engine:?}").contains("secret"),
        "{err:?}"
    );
    let missing = OpenAiEngine::new(OpenAiConfig {
        api_key_env: Some("PHIFORGE_TEST_NO_SUCH_KEY".into()),
        ..fast(&server.url())
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("`PHIFORGE_TEST_NO_SUCH_KEY`"),
        "{missing}"
    );
}

#[test]
fn the_completions_api_gets_phi4_chat_format() {
    let server = FaultServer::start(|_| Fault::Ok).unwrap();
    let engine = OpenAiEngine::new(OpenAiConfig {
        api: Api::Completions,
        ..fast(&server.url())
    })
    .unwrap();
    let c = rt().block_on(engine.complete(&request(7))).unwrap();
    assert_eq!(
        c.text,
        "echo: <|im_start|>user<|im_sep|>question 7<|im_end|><|im_start|>assistant<|im_sep|>"
    );
}

#[test]
fn requests_per_minute_are_limited() {
    let server = FaultServer::start(|_| Fault::Ok).unwrap();
    // 60 a minute: a full bucket of 60, then one a second.
    let engine = OpenAiEngine::new(OpenAiConfig {
        requests_per_minute: Some(60),
        ..fast(&server.url())
    })
    .unwrap();
    let requests: Vec<ChatRequest> = (0..62).map(request).collect();
    let t = Instant::now();
    let results = rt().block_on(engine.complete_batch(&requests));
    assert!(results.iter().all(Result::is_ok));
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
}
