//! The local engine's scheduler on a tiny Phi-3 model: continuous batching gives each request the
//! same completion as running it alone, seeds make sampling reproducible, and limits are kept.

use candle_core::{DType, Device};
use engines::engine::{ChatRequest, Completion, Engine, FinishReason, Message, Sampling};
use engines::local::LocalEngine;
use engines::phi3::Model;
use engines::tokenizer::Codec;
use std::sync::Arc;

/// A byte-level codec for the tiny model's 96-token vocabulary (a test fake: real models use
/// `tokenizer.json` or Phi-4's tokenizer).
struct Bytes;

const SPECIAL: [(&str, u32); 3] = [("<|im_start|>", 93), ("<|im_sep|>", 94), ("<|im_end|>", 95)];

impl Codec for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<u32>, engines::tokenizer::Error> {
        let mut ids = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (s, id) in SPECIAL {
                if let Some(r) = rest.strip_prefix(s) {
                    ids.push(id);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap();
            ids.push(3 + (c as u32) % 90);
            rest = &rest[c.len_utf8()..];
        }
        Ok(ids)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, engines::tokenizer::Error> {
        Ok(ids
            .iter()
            .filter(|&&i| i < 93)
            .map(|&i| (b'!' + (i % 90) as u8) as char)
            .collect())
    }
    fn stop_ids(&self) -> Vec<u32> {
        vec![95]
    }
    fn vocab_size(&self) -> u32 {
        96
    }
    fn end_of_text(&self) -> Option<u32> {
        None
    }
}

fn engine(slots: usize) -> LocalEngine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let model = Model::load(&dir, DType::F32, &Device::Cpu, slots, 512).unwrap();
    LocalEngine::new(model, Arc::new(Bytes), "phi3-tiny")
}

fn request(k: usize, temperature: f32, max_tokens: u32, seed: u64) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::new(
            "user",
            format!("Question number {k}: {}", "why? ".repeat(k)),
        )],
        sampling: Sampling {
            temperature,
            max_tokens,
            seed: Some(seed),
            ..Default::default()
        },
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn continuous_batching_gives_each_request_its_own_completion() {
    // Nine requests of different lengths through three slots: they join and leave mid-batch.
    let requests: Vec<ChatRequest> = (0..9)
        .map(|k| request(k, 0.0, 3 + (k as u32 * 5) % 17, 1))
        .collect();
    let batched = rt().block_on(engine(3).complete_batch(&requests));
    let alone = engine(1);
    let runtime = rt();
    for (k, (r, got)) in requests.iter().zip(&batched).enumerate() {
        let got = got.as_ref().unwrap();
        let want = runtime.block_on(alone.complete(r)).unwrap();
        assert_eq!(got, &want, "request {k}");
        assert!(got.completion_tokens >= 1 && got.completion_tokens <= r.sampling.max_tokens);
        assert_eq!(
            got.prompt_tokens as usize,
            Bytes
                .encode(&engines::engine::phi4_prompt(&r.messages))
                .unwrap()
                .len()
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_limits_hold() {
    let e = engine(4);
    let runtime = rt();
    let r = request(2, 1.0, 24, 42);
    let a = runtime.block_on(e.complete(&r)).unwrap();
    let b = runtime.block_on(e.complete(&r)).unwrap();
    assert_eq!(a, b);
    let others: Vec<String> = (43..48)
        .map(|seed| {
            runtime
                .block_on(e.complete(&request(2, 1.0, 24, seed)))
                .unwrap()
                .text
        })
        .collect();
    assert!(
        others.iter().any(|t| t != &a.text),
        "different seeds gave the same text"
    );
    if a.finish_reason == FinishReason::Length {
        assert_eq!(a.completion_tokens, 24);
    }
    // Unseeded requests at temperature 1 are not all the same draw (they once all used seed 0).
    let mut unseeded = request(2, 1.0, 24, 0);
    unseeded.sampling.seed = None;
    let texts: Vec<String> = (0..5)
        .map(|_| runtime.block_on(e.complete(&unseeded)).unwrap().text)
        .collect();
    assert!(
        texts.iter().any(|t| t != &texts[0]),
        "five unseeded requests gave the same text: {texts:?}"
    );
    // Log-probabilities on request.
    let mut lp = request(1, 0.0, 5, 1);
    lp.sampling.logprobs = true;
    let c = runtime.block_on(e.complete(&lp)).unwrap();
    let lps = c.logprobs.unwrap();
    assert_eq!(lps.len() as u32, c.completion_tokens);
    assert!(lps.iter().all(|t| t.logprob <= 0.0));
    // A prompt longer than the cache is refused with a clear error.
    let long = ChatRequest {
        messages: vec![Message::new("user", "x".repeat(600))],
        sampling: Sampling::default(),
    };
    let err = runtime.block_on(e.complete(&long)).unwrap_err();
    assert!(
        err.to_string().contains("does not fit the context"),
        "{err}"
    );
}

#[test]
fn prompts_fed_in_chunks_and_small_prefill_passes_change_nothing() {
    // Prompts of 20-60 tokens fed 7 at a time, at most 16 tokens per pass, with
    // greedy and seeded sampling: the same completions as one pass per batch.
    let requests: Vec<ChatRequest> = (0..6)
        .map(|k| request(k * 3, if k % 2 == 0 { 0.0 } else { 0.8 }, 12, k as u64))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let model = Model::load(&dir, DType::F32, &Device::Cpu, 4, 512).unwrap();
    let limits = engines::local::Limits {
        step_tokens: 16,
        prefill_chunk: 7,
        ..Default::default()
    };
    let chunked = LocalEngine::with_limits(model, Arc::new(Bytes), "phi3-tiny", limits);
    let runtime = rt();
    let got = runtime.block_on(chunked.complete_batch(&requests));
    let want = runtime.block_on(engine(4).complete_batch(&requests));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.as_ref().unwrap(), w.as_ref().unwrap(), "request {k}");
    }
}

/// `Bytes`, with another stop token.
struct StopAt(u32);

impl Codec for StopAt {
    fn encode(&self, text: &str) -> Result<Vec<u32>, engines::tokenizer::Error> {
        Bytes.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, engines::tokenizer::Error> {
        Bytes.decode(ids)
    }
    fn stop_ids(&self) -> Vec<u32> {
        vec![self.0]
    }
    fn vocab_size(&self) -> u32 {
        96
    }
    fn end_of_text(&self) -> Option<u32> {
        None
    }
}

#[test]
fn min_tokens_hold_off_stops_and_token_prompts_batch() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let model = Model::load(&dir, DType::F32, &Device::Cpu, 4, 512).unwrap();
    // The stop token is the one greedy decoding picks first for these prompts.
    let prompts: Vec<Vec<u32>> = (0..6).map(|k| vec![93, 3 + k, 94]).collect();
    let first = model
        .forward(&prompts[..1], &[0])
        .unwrap()
        .argmax(candle_core::D::Minus1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()[0];
    let stop_text = Bytes.decode(&[first]).unwrap();
    let e = LocalEngine::new(model, Arc::new(StopAt(first)), "phi3-tiny");
    let runtime = rt();
    let greedy = Sampling {
        temperature: 0.0,
        max_tokens: 40,
        min_tokens: 40,
        ..Default::default()
    };
    let sampled = Sampling {
        temperature: 1.0,
        seed: Some(3),
        ..greedy.clone()
    };
    // Without min_tokens, the first prompt stops at once.
    let free = Sampling {
        min_tokens: 0,
        ..greedy.clone()
    };
    let c = runtime
        .block_on(e.complete_tokens(prompts[..1].to_vec(), &free))
        .remove(0)
        .unwrap();
    assert_eq!(
        (c.finish_reason, c.completion_tokens),
        (FinishReason::Stop, 0)
    );
    for s in [&greedy, &sampled] {
        let done = runtime.block_on(e.complete_tokens(prompts.clone(), s));
        assert_eq!(done.len(), 6);
        for c in done {
            let c = c.unwrap();
            assert_eq!(c.completion_tokens, 40);
            assert_eq!(c.finish_reason, FinishReason::Length);
            assert_eq!(c.prompt_tokens, 3);
            // The stop token was masked, not generated.
            assert!(
                stop_text.is_empty() || !c.text.contains(&stop_text),
                "{stop_text:?} in {:?}",
                c.text
            );
        }
    }
}

fn tiny(slots: usize, limits: engines::local::Limits) -> LocalEngine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let model = Model::load(&dir, DType::F32, &Device::Cpu, slots, 512).unwrap();
    LocalEngine::with_limits(model, Arc::new(Bytes), "phi3-tiny", limits)
}

#[test]
fn the_prefix_cache_reuses_shared_prompts_and_changes_no_greedy_output() {
    // One document under several questions, asked twice; and three samples of one prompt sent
    // together (as `n: 3` does).
    let doc = "The shared document, long enough to fill several blocks of the cache. ".repeat(4);
    let ask = |q: &str, temperature: f32, seed: u64| ChatRequest {
        messages: vec![
            Message::new("system", doc.clone()),
            Message::new("user", q.to_string()),
        ],
        sampling: Sampling {
            temperature,
            max_tokens: 16,
            seed: Some(seed),
            ..Default::default()
        },
    };
    let mut requests: Vec<ChatRequest> = ["why?", "how so?", "what then?", "who?"]
        .iter()
        .map(|q| ask(q, 0.0, 1))
        .collect();
    requests.extend((0..3).map(|seed| ask("three samples", 0.9, seed)));
    let cached = tiny(
        4,
        engines::local::Limits {
            prefix_block: 16,
            ..Default::default()
        },
    );
    let plain = tiny(
        4,
        engines::local::Limits {
            prefix_cache_tokens: 0,
            ..Default::default()
        },
    );
    let runtime = rt();
    let want = runtime.block_on(plain.complete_batch(&requests));
    for round in 0..2 {
        let got = runtime.block_on(cached.complete_batch(&requests));
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.as_ref().unwrap(),
                w.as_ref().unwrap(),
                "round {round}, request {k}"
            );
        }
    }
    let m = cached.metrics();
    let prompt = m.prompt_tokens.get();
    let hit = m.prefix_cache_hit_tokens.get();
    // The document is computed once: in the first round every request but the first finds it
    // (the others wait for its prefill), in the second all of them find all of their prompts'
    // whole blocks but the last token's.
    let doc_tokens = Bytes
        .encode(&engines::engine::phi4_prompt(&requests[0].messages))
        .unwrap()
        .len() as u64;
    assert!(
        hit >= 6 * (doc_tokens - 40),
        "{hit} of {prompt} prompt tokens from the cache"
    );
    assert!(hit > prompt / 2, "{hit} of {prompt}");
    assert!(m.prefix_cache_blocks.get() > 0);
    // Idle now: every sequence gave its blocks back; only the prefix cache holds some.
    assert_eq!(m.kv_blocks_used.get(), m.prefix_cache_blocks.get());
    assert_eq!(m.kv_block_refs.get(), 0);
    assert_eq!(plain.metrics().prefix_cache_hit_tokens.get(), 0);
    assert_eq!(plain.metrics().kv_blocks_used.get(), 0);
    // Three samples of one prompt at temperature 0.9 with different seeds: not all the same.
    let got = runtime.block_on(cached.complete_batch(&requests[4..]));
    let texts: Vec<&str> = got
        .iter()
        .map(|c| c.as_ref().unwrap().text.as_str())
        .collect();
    assert!(texts.iter().any(|t| *t != texts[0]), "{texts:?}");
}

#[test]
fn a_long_prompt_is_prefilled_beside_sequences_already_decoding() {
    // A short request and a long one arrive together; at most 16 tokens go through per pass.
    // The short one decodes one token per pass while the long one's prompt goes in chunks, so it
    // is done before the long one has its first token (prefilling both first would stall it).
    let e = tiny(
        2,
        engines::local::Limits {
            step_tokens: 16,
            prefill_chunk: 16,
            prefix_cache_tokens: 0,
            ..Default::default()
        },
    );
    let short: Vec<u32> = vec![93, 10, 11, 12, 94];
    let long: Vec<u32> = (0..400).map(|i| 3 + (i * 7 % 90) as u32).collect();
    let s = Sampling {
        temperature: 0.0,
        max_tokens: 12,
        min_tokens: 12,
        ..Default::default()
    };
    let done = rt().block_on(e.complete_tokens_timed(vec![short.clone(), long.clone()], &s));
    let (a, a_ticks) = done[0].as_ref().unwrap();
    let (b, b_ticks) = done[1].as_ref().unwrap();
    assert_eq!((a.completion_tokens, b.completion_tokens), (12, 12));
    assert!(
        a_ticks.last().unwrap() < b_ticks.first().unwrap(),
        "the short request waited for the long prompt"
    );
    // Forward passes: the long prompt's 400 tokens at 16 per pass (15 while the short one
    // decodes) with its 12 tokens after.
    assert!(e.metrics().forward_passes.get() >= 400 / 16);
    // The same completions as each alone, with no limit to speak of.
    let alone = tiny(1, engines::local::Limits::default());
    let runtime = rt();
    for (p, c) in [(short, a), (long, b)] {
        let want = runtime
            .block_on(alone.complete_tokens(vec![p], &s))
            .remove(0)
            .unwrap();
        assert_eq!(&want, c);
    }
}

/// How many of `done` decoded at once at most.
fn most_at_once(
    done: &[Result<(Completion, Vec<std::time::Instant>), engines::engine::EngineError>],
) -> usize {
    let spans: Vec<_> = done
        .iter()
        .map(|d| {
            let t = &d.as_ref().unwrap().1;
            (*t.first().unwrap(), *t.last().unwrap())
        })
        .collect();
    engines::load::most_at_once(&spans)
}

#[test]
fn under_a_kv_budget_requests_wait_for_blocks_and_shared_blocks_count_once() {
    let s = Sampling {
        temperature: 0.0,
        max_tokens: 40,
        min_tokens: 40,
        ..Default::default()
    };
    // Eight prompts of 100 tokens, 40 generated: each may need 5 blocks of 32. A budget of one
    // context (16 blocks) runs three at a time of the four slots; a whole context per slot, four.
    let prompts: Vec<Vec<u32>> = (0..8)
        .map(|k| {
            (0..100)
                .map(|i| 3 + ((i * 7 + k * 13) % 90) as u32)
                .collect()
        })
        .collect();
    let tight = engines::local::Limits {
        prefix_cache_tokens: 0,
        kv_cache_tokens: 512,
        ..Default::default()
    };
    let (budget, roomy) = (
        tiny(4, tight),
        tiny(
            4,
            engines::local::Limits {
                prefix_cache_tokens: 0,
                ..Default::default()
            },
        ),
    );
    let runtime = rt();
    let got = runtime.block_on(budget.complete_tokens_timed(prompts.clone(), &s));
    let want = runtime.block_on(roomy.complete_tokens_timed(prompts, &s));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.as_ref().unwrap().0, w.as_ref().unwrap().0, "request {k}");
    }
    assert_eq!(most_at_once(&got), 3);
    assert_eq!(most_at_once(&want), 4);
    let m = budget.metrics();
    assert_eq!(m.kv_blocks.get(), 16);
    assert_eq!(
        (m.kv_blocks_used.get(), m.kv_blocks_committed.get()),
        (0, 0)
    );

    // Three samples of one 300-token prompt, each of which may need 10 blocks: counted apart
    // they would run one at a time; the 9 prompt blocks they share count once, so all three fit.
    let shared = tiny(
        4,
        engines::local::Limits {
            kv_cache_tokens: 512,
            ..Default::default()
        },
    );
    let prompt: Vec<u32> = (0..300).map(|i| 3 + (i * 11 % 90) as u32).collect();
    let s = Sampling {
        max_tokens: 20,
        min_tokens: 20,
        ..s
    };
    let done = runtime.block_on(shared.complete_tokens_timed(vec![prompt; 3], &s));
    assert_eq!(most_at_once(&done), 3);
    assert_eq!(shared.metrics().prefix_cache_hit_tokens.get(), 2 * 9 * 32);
    let texts: Vec<_> = done.iter().map(|d| &d.as_ref().unwrap().0.text).collect();
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
}
