//! CPU generation speed: phiforge's Phi-3 model against candle-transformers' `phi3` on the same
//! small random model and prompts, in one run. Greedy decoding, tokens per second of generated
//! tokens (prefill included in the time), at batch 1 and 16.
//!
//! `cargo bench -p engines --bench phi3_cpu` (figures go to docs/performance.md).

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::phi3 as reference;
use engines::phi3::{Config, Model};
use std::time::Instant;

const PROMPT: usize = 64;
const NEW: usize = 64;

fn config() -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6,
        "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 250000.0, "max_position_embeddings": 4096, "hidden_act": "silu",
        "tie_word_embeddings": false
    })
}

fn prompt(k: usize) -> Vec<u32> {
    (0..PROMPT as u32)
        .map(|i| (i * 131 + k as u32 * 17 + 5) % 8192)
        .collect()
}

fn argmax(logits: &Tensor) -> Vec<u32> {
    logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()
}

fn ours(vb: VarBuilder, batch: usize) -> f64 {
    let cfg: Config = serde_json::from_value(config()).unwrap();
    let model = Model::new(&cfg, vb, batch, PROMPT + NEW + 1).unwrap();
    let t = Instant::now();
    let prompts: Vec<Vec<u32>> = (0..batch).map(prompt).collect();
    let mut next = argmax(&model.forward(&prompts, &vec![0; batch]).unwrap());
    for step in 1..NEW {
        let tokens: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        next = argmax(
            &model
                .forward(&tokens, &vec![PROMPT + step - 1; batch])
                .unwrap(),
        );
    }
    (batch * NEW) as f64 / t.elapsed().as_secs_f64()
}

fn theirs(vb: VarBuilder, batch: usize) -> f64 {
    let cfg: reference::Config = serde_json::from_value(config()).unwrap();
    let mut model = reference::Model::new(&cfg, vb).unwrap();
    let dev = Device::Cpu;
    let t = Instant::now();
    let ids: Vec<u32> = (0..batch).flat_map(prompt).collect();
    let input = Tensor::from_vec(ids, (batch, PROMPT), &dev).unwrap();
    let logits = model.forward(&input, 0).unwrap().i((.., 0, ..)).unwrap();
    let mut next = argmax(&logits);
    for step in 1..NEW {
        let input = Tensor::from_vec(next.clone(), (batch, 1), &dev).unwrap();
        let logits = model
            .forward(&input, PROMPT + step - 1)
            .unwrap()
            .i((.., 0, ..))
            .unwrap();
        next = argmax(&logits);
    }
    (batch * NEW) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    // Create the weights once; both models read them.
    let cfg: Config = serde_json::from_value(config()).unwrap();
    drop(Model::new(&cfg, vb.clone(), 1, 8).unwrap());
    println!(
        "model: hidden 512, 6 layers, 8 heads / 2 KV heads, vocab 8192, f32; prompt {PROMPT}, {NEW} new tokens, greedy; {} threads",
        candle_core::utils::get_num_threads()
    );
    println!("{:<28} {:>10} {:>12}", "engine", "batch", "tokens/s");
    for batch in [1, 16] {
        // Warm up, then measure each twice and keep the better.
        let _ = ours(vb.clone(), batch);
        let a = ours(vb.clone(), batch).max(ours(vb.clone(), batch));
        let b = theirs(vb.clone(), batch).max(theirs(vb.clone(), batch));
        println!("{:<28} {:>10} {:>12.1}", "phiforge phi3", batch, a);
        println!(
            "{:<28} {:>10} {:>12.1}",
            "candle-transformers phi3", batch, b
        );
    }
}
