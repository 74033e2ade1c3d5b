//! The training benchmark against PyTorch's peer (`shared/peers/torch_train_tiny.py`): the same
//! tiny Phi-3 (hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 512, RoPE θ 250,000, untied
//! embeddings), the same llm.c shard read the same way (step `i` trains on tokens
//! `[i·B·T, (i+1)·B·T + 1)`, modulo the vocabulary), the same AdamW (lr 3e-4 constant, β 0.9/0.999,
//! ε 1e-8, weight decay 0.01, no clipping), f32, and the same timing (wall clock over the steps
//! after the warmup). Prints one JSON line like the peer's.
//!
//! usage: cargo bench -p trainer --bench train_tiny -- SHARD [--vocab V] [--seq T] [--batch B]
//!        [--steps N] [--warmup W] [--lr LR] [--threads K]

use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use trainer::config::{DeviceChoice, ModelShape, TrainDtype};
use trainer::{TrainConfig, Trainer};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut shard, mut vocab, mut seq, mut batch) = (None, 100_352u32, 256u32, 8u32);
    let (mut steps, mut warmup, mut lr, mut threads) = (30u64, 3u64, 3e-4f64, 2usize);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--vocab" => vocab = val()?.parse()?,
            "--seq" => seq = val()?.parse()?,
            "--batch" => batch = val()?.parse()?,
            "--steps" => steps = val()?.parse()?,
            "--warmup" => warmup = val()?.parse()?,
            "--lr" => lr = val()?.parse()?,
            "--threads" => threads = val()?.parse()?,
            "--bench" => {}
            s if !s.starts_with("--") => shard = Some(std::path::PathBuf::from(s)),
            s => return Err(format!("unknown option {s}").into()),
        }
    }
    let shard = shard.ok_or("usage: train_tiny SHARD [options]")?;
    // As `phiforge train`: freed memory stays with the allocator (candle allocates every
    // operation's output anew; returned to the system, each big one is page-faulted in again,
    // zeroed by the kernel: a third of a step at Phi-4's vocabulary).
    // SAFETY: sets a mimalloc option; no memory is involved.
    // (`mi_option_purge_delay` is 15 in mimalloc 3's `mi_option_e`; the Rust bindings lack it.)
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle's matrix products take their thread count from RAYON_NUM_THREADS.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let total = warmup + steps;
    let need = (total * batch as u64 * seq as u64 + 1) as usize;
    let data = trainer::data::read_llmc_shard(&shard, Some(need), vocab)?;
    let cfg = TrainConfig {
        steps: total,
        batch_size: batch,
        sequence_length: seq,
        learning_rate: lr,
        min_lr: lr,
        warmup_steps: 0,
        weight_decay: 0.01,
        betas: [0.9, 0.999],
        eps: 1e-8,
        grad_clip: 0.0,
        accumulation: 1,
        eval_every: 0,
        checkpoint_every: 0,
        seed: 0,
        shuffle: false,
        dtype: TrainDtype::F32,
        device: DeviceChoice::Cpu,
        threads: Some(threads),
        model: ModelShape::default(),
        ..TrainConfig::default()
    };
    let out = tempfile::tempdir()?;
    let mut t = Trainer::new(&cfg, data, out.path(), false)?;
    let (mut losses, mut step_s) = (Vec::new(), Vec::new());
    for i in 0..total {
        let start = Instant::now();
        let s = t.step()?;
        let dt = start.elapsed().as_secs_f64();
        losses.push(s.loss);
        if i >= warmup {
            step_s.push(dt);
        }
    }
    let timed: f64 = step_s.iter().sum();
    let round = |x: f64, d: i32| (x * 10f64.powi(d)).round() / 10f64.powi(d);
    let line = serde_json::json!({
        "peer": "phiforge", "trainer": "trainer::Trainer (candle 0.11, CPU)",
        "threads": threads, "vocab": vocab, "seq": seq, "batch": batch, "dtype": "float32",
        "params": t.parameter_count(), "warmup": warmup, "steps": steps,
        "tokens_per_s": round(steps as f64 * (batch * seq) as f64 / timed, 1),
        "s_per_step": round(timed / steps as f64, 4),
        "loss_first": round(losses[0] as f64, 4),
        "loss_last": round(*losses.last().unwrap_or(&f32::NAN) as f64, 4),
        "ln_vocab": round((vocab as f64).ln(), 4),
        "step_s": step_s.iter().map(|s| round(*s, 4)).collect::<Vec<_>>(),
        "shard": shard.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    println!("{line}");
    Ok(())
}
