//! The engine commands: `generate`, `serve`'s engine, `bench-engine`.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// A Hugging Face model folder of the Phi-3/Phi-4 architecture, a repository id in the local
    /// Hugging Face cache, or a `phi3` .gguf file (default: random weights).
    #[arg(long, conflicts_with_all = ["shape", "layers"])]
    model_dir: Option<PathBuf>,
    /// The shape of the random weights: Phi-4's, or a tiny one for CPU smoke runs.
    #[arg(long, value_enum, default_value = "phi4")]
    shape: ShapeArg,
    /// Random weights: this many layers instead of the shape's.
    #[arg(long)]
    layers: Option<usize>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 256)]
    prompt_len: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    gen_len: usize,
    /// Where to run: the GPU when there is one (auto), or this one.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Weights' dtype (auto: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time every phase of the decode passes (synchronizes the device after each phase,
    /// so the throughput figures drop): where the time goes.
    #[arg(long)]
    profile: bool,
    /// The decode step's fused kernels: `all` (the default on a GPU), `none` (candle's
    /// operations, as for prompts), or some of norm,rope,attn,silu,gemv,argmax (candle's
    /// operations for the others), to measure what each brings.
    #[arg(long)]
    kernels: Option<String>,
    /// Launch every decode step directly instead of replaying it as a CUDA graph (graphs are
    /// recorded per batch shape up to 8 sequences, on a GPU, on the fused path).
    #[arg(long)]
    no_graphs: bool,
    /// Before timing, check the fused kernels against candle's operations (each kernel on random
    /// inputs, then a decode step of the model on both paths); stops if any is out of tolerance.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
pub(crate) struct LoadArgs {
    /// A Hugging Face model folder of the Phi-3/Phi-4 architecture, a repository id in the local
    /// Hugging Face cache, or a `phi3` .gguf file (default: random weights).
    #[arg(long, conflicts_with_all = ["shape", "layers"])]
    model_dir: Option<PathBuf>,
    /// The shape of the random weights.
    #[arg(long, value_enum, default_value = "tiny")]
    shape: ShapeArg,
    /// Random weights: this many layers instead of the shape's.
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Requests per second (Poisson arrivals); 0 sends them all at once.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// Prompt tokens: MIN,MAX (uniform).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 2000])]
    prompt_len: Vec<usize>,
    /// Output tokens: MIN,MAX (uniform; exact, stop tokens held off).
    #[arg(long, value_delimiter = ',', default_values_t = [50, 1000])]
    output_len: Vec<usize>,
    /// The share of requests opening with one of the common prefixes.
    #[arg(long, default_value_t = 0.75)]
    shared: f64,
    /// How many common prefixes.
    #[arg(long, default_value_t = 4)]
    prefixes: usize,
    /// A shared prompt's common prefix is this share of its length.
    #[arg(long, default_value_t = 0.8)]
    prefix_share: f64,
    /// Sequences generated at once.
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// The prefix cache settings to replay the load under, in this order, each on a fresh engine
    /// with the same weights: `on`, `off`.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    prefix_cache: Vec<String>,
    /// Positions the prefix cache holds when on.
    #[arg(long, default_value_t = engines::local::Limits::default().prefix_cache_tokens)]
    prefix_cache_tokens: usize,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = engines::local::Limits::default().step_tokens)]
    step_tokens: usize,
    /// Positions of the KV cache for running sequences (0: slots x the load's longest request);
    /// requests are admitted as their blocks fit.
    #[arg(long, default_value_t = 0)]
    kv_cache_tokens: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the load's requests here as JSON lines (`at_s`, `prompt` token ids, `output`,
    /// `prefix`), to feed the same requests to a peer (`benches/hf_load.py`).
    #[arg(long)]
    write_requests: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub(crate) enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DTypeArg {
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ShapeArg {
    Phi4,
    Tiny,
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// Base URL of an OpenAI-compatible server (repeat to spread load), e.g. http://127.0.0.1:8000/v1.
    #[arg(
        long,
        required_unless_present = "model_dir",
        conflicts_with = "model_dir"
    )]
    endpoint: Vec<String>,
    /// The model name the server knows.
    #[arg(long, required_unless_present = "model_dir")]
    model: Option<String>,
    /// Run the local engine on a Hugging Face model folder of the Phi-3/Phi-4 architecture
    /// (config.json, *.safetensors, tokenizer.json or else Phi-4's tokenizer), a repository id in
    /// the local Hugging Face cache (`microsoft/phi-4[@revision]`), or a `phi3` .gguf file
    /// (quantized, for CPU use).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Local engine: context positions per sequence.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// Environment variable holding the API key.
    #[arg(long)]
    api_key_env: Option<String>,
    /// One prompt (else --input).
    #[arg(long, conflicts_with = "input")]
    prompt: Option<String>,
    /// JSON lines with `prompt` or `messages` (and optional `id`).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output JSON lines (default: standard output).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// A system message put before every prompt.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Retries per request (429, 5xx, timeouts, dropped connections, malformed replies).
    #[arg(long, default_value_t = 6)]
    retries: u32,
}

pub(crate) fn generate(a: GenerateArgs) -> Result<()> {
    use engines::config::{EngineConfig, LocalConfig};
    use engines::generate::{generate, read_prompts, Prompt};
    use engines::openai::OpenAiConfig;
    let prompts = match (&a.prompt, &a.input) {
        (Some(p), None) => {
            let mut messages = Vec::new();
            if let Some(s) = &a.system {
                messages.push(engines::engine::Message::new("system", s.clone()));
            }
            messages.push(engines::engine::Message::new("user", p.clone()));
            vec![Prompt {
                id: "1".into(),
                messages,
            }]
        }
        (None, Some(path)) => read_prompts(path, a.system.as_deref())?,
        _ => anyhow::bail!("give --prompt TEXT or --input FILE.jsonl"),
    };
    // The flags make the same configuration a recipe's `engines.NAME` holds.
    let config = match &a.model_dir {
        Some(dir) => EngineConfig::Local(LocalConfig {
            slots: a.concurrency.clamp(1, 64),
            context: a.context,
            ..LocalConfig::new(&dir.to_string_lossy())
        }),
        None => EngineConfig::Openai(OpenAiConfig {
            endpoints: a.endpoint.clone(),
            api_key_env: a.api_key_env.clone(),
            max_concurrency: a.concurrency,
            timeout_s: a.timeout,
            max_retries: a.retries,
            ..OpenAiConfig::new("", a.model.as_deref().unwrap_or("default"))
        }),
    };
    let engine = config.build()?;
    let sampling = engines::engine::Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        min_tokens: 0,
        seed: a.seed,
        logprobs: false,
    };
    // Into a file: resume what an earlier run there left, and append as completions finish.
    let total = prompts.len();
    let mut prompts = prompts;
    let mut out: Box<dyn std::io::Write> = match &a.output {
        Some(path) => {
            let done = engines::generate::resume(path, &engine.identity(), &sampling)?;
            prompts.retain(|p| !done.contains(&p.id));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let resumed = total - prompts.len();
    if resumed > 0 {
        eprintln!("{resumed} of {total} prompts already have a completion in the output; running the other {}", prompts.len());
    }
    let bar = ProgressBar::new(prompts.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} completions",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(generate(&*engine, &prompts, &sampling, &mut *out, &|| {
        bar.inc(1)
    }))?;
    bar.finish_and_clear();
    drop(out);
    eprintln!(
        "{} completed, {} failed; {} prompt and {} completion tokens in {:.1} s",
        summary.completed,
        summary.failed,
        summary.prompt_tokens,
        summary.completion_tokens,
        summary.seconds
    );
    if summary.failed > 0 {
        anyhow::bail!(
            "{} of {} requests failed (each is in the output with its error; a rerun into the same file retries them)",
            summary.failed,
            prompts.len()
        );
    }
    Ok(())
}

/// `phiforge bench-engine`: builds the engine, then prints a JSON line per batch size.
pub(crate) fn bench_engine(a: BenchArgs) -> Result<()> {
    use engines::bench_setup::Setup;
    if a.batch.is_empty() || a.batch.contains(&0) || a.prompt_len == 0 || a.gen_len == 0 {
        anyhow::bail!("--batch sizes, --prompt-len and --gen-len must be at least 1");
    }
    let setup = Setup {
        weights: weights(a.model_dir.as_ref(), a.shape, a.layers),
        device: device_spec(a.device),
        precision: precision(a.dtype),
        slots: a.batch.iter().copied().max().unwrap_or(1),
        context: a.prompt_len + a.gen_len + 1,
        seed: a.seed,
        kernels: a.kernels.clone(),
        graphs: !a.no_graphs,
        check: a.check,
        profile: a.profile,
        limits: engines::local::Limits::default(),
    };
    let ready = engines::bench_setup::prepare(&setup)?;
    for r in &ready.checks {
        println!("{}", serde_json::json!({ "check": r }));
    }
    if a.check {
        eprintln!("{} kernel checks passed", ready.checks.len());
    }
    let cfg = &ready.config;
    eprintln!(
        "{} layers, hidden {}, {:?} on {}, fused decode kernels: {}, CUDA graphs: {}, ready in {:.1}s",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        ready.dtype,
        ready.device,
        ready.kernels,
        if ready.graphs { "on" } else { "off" },
        ready.seconds
    );
    let plan = engines::bench::Plan {
        batches: a.batch.clone(),
        prompt_len: a.prompt_len,
        gen_len: a.gen_len,
        seed: a.seed,
        profile: ready.profile.clone(),
        kernels: ready.kernels.clone(),
        graphs: ready.graphs,
    };
    let bar = ProgressBar::new(plan.batches.len() as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} batch sizes {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("(measuring batch {})", plan.batches[0]));
    engines::bench::run(&ready.engine, cfg, ready.device, ready.dtype, &plan, |r| {
        if let Ok(line) = serde_json::to_string(r) {
            bar.suspend(|| println!("{line}"));
        }
        bar.inc(1);
        if let Some(next) = plan.batches.get(bar.position() as usize) {
            bar.set_message(format!("(measuring batch {next})"));
        }
    })?;
    bar.finish_and_clear();
    // How the products of a few rows were done (timed at their first use), for the record.
    for line in engines::kernels::gemv_choices() {
        println!("{}", serde_json::json!({ "gemv": line }));
    }
    #[cfg(feature = "cuda")]
    for line in engines::graph::summary() {
        println!("{}", serde_json::json!({ "cuda_graphs": line }));
    }
    Ok(())
}

/// A model folder's weights, or random ones of `shape` (with `layers` layers if given).
fn weights(
    model_dir: Option<&PathBuf>,
    shape: ShapeArg,
    layers: Option<usize>,
) -> engines::bench_setup::Weights {
    use engines::bench_setup::{Shape, Weights};
    match model_dir {
        Some(spec) => Weights::Model(spec.clone()),
        None => Weights::Random {
            shape: match shape {
                ShapeArg::Phi4 => Shape::Phi4,
                ShapeArg::Tiny => Shape::Tiny,
            },
            layers,
        },
    }
}

fn device_spec(d: DeviceArg) -> engines::config::DeviceSpec {
    match d {
        DeviceArg::Auto => engines::config::DeviceSpec::Auto,
        DeviceArg::Cpu => engines::config::DeviceSpec::Cpu,
        DeviceArg::Cuda => engines::config::DeviceSpec::Cuda(0),
    }
}

fn precision(d: DTypeArg) -> engines::bench_setup::Precision {
    use engines::bench_setup::Precision;
    match d {
        DTypeArg::Auto => Precision::Auto,
        DTypeArg::F32 => Precision::F32,
        DTypeArg::Bf16 => Precision::Bf16,
        DTypeArg::F16 => Precision::F16,
    }
}

/// `phiforge bench-load`: replays one load of mixed requests under each prefix cache setting
/// and prints a JSON line for each.
pub(crate) fn bench_load(a: LoadArgs) -> Result<()> {
    use engines::bench_setup::Setup;
    use engines::load::{requests, run, LoadPlan, LoadRequest};
    let (p, o) = (
        (a.prompt_len[0], a.prompt_len[1]),
        (a.output_len[0], a.output_len[1]),
    );
    if a.requests == 0 || p.0 == 0 || p.0 > p.1 || o.0 == 0 || o.0 > o.1 {
        anyhow::bail!("--requests must be at least 1, --prompt-len and --output-len MIN,MAX with 1 <= MIN <= MAX");
    }
    if !(0.0..=1.0).contains(&a.shared) || !(0.0..=1.0).contains(&a.prefix_share) || a.rate < 0.0 {
        anyhow::bail!("--shared and --prefix-share are shares (0 to 1), --rate is at least 0");
    }
    let plan = LoadPlan {
        requests: a.requests,
        rate: a.rate,
        prompt: p,
        output: o,
        shared: a.shared,
        prefixes: a.prefixes,
        prefix_share: a.prefix_share,
        seed: a.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut load: Option<Vec<LoadRequest>> = None;
    for setting in &a.prefix_cache {
        let on = match setting.as_str() {
            "on" => true,
            "off" => false,
            other => anyhow::bail!("--prefix-cache: `{other}` is neither on nor off"),
        };
        let setup = Setup {
            weights: weights(a.model_dir.as_ref(), a.shape, a.layers),
            device: device_spec(a.device),
            precision: precision(a.dtype),
            slots: a.slots,
            context: p.1 + o.1 + 1,
            seed: a.seed,
            kernels: None,
            graphs: true,
            check: false,
            profile: false,
            limits: engines::local::Limits {
                prefix_cache_tokens: if on { a.prefix_cache_tokens } else { 0 },
                step_tokens: a.step_tokens.max(a.slots + 1),
                kv_cache_tokens: a.kv_cache_tokens,
                ..Default::default()
            },
        };
        let ready = engines::bench_setup::prepare(&setup)?;
        // Every setting replays the same requests: drawn (and written out) once.
        let load: &[LoadRequest] = match &mut load {
            Some(load) => load,
            None => {
                let drawn = requests(&plan, ready.config.vocab_size as u32);
                if let Some(path) = &a.write_requests {
                    corpus::atomic::write(path, engines::load::to_jsonl(&drawn).as_bytes())
                        .with_context(|| format!("writing the requests to {}", path.display()))?;
                }
                load.insert(drawn)
            }
        };
        let bar = ProgressBar::new_spinner().with_message(format!(
            "replaying {} requests, prefix cache {setting}",
            load.len()
        ));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let record = runtime.block_on(run(&ready.engine, load))?;
        bar.finish_and_clear();
        println!(
            "{}",
            serde_json::json!({
                "engine": "phiforge", "prefix_cache": on, "plan": plan, "device": ready.device,
                "dtype": format!("{:?}", ready.dtype).to_lowercase(),
                "layers": ready.config.num_hidden_layers, "hidden": ready.config.hidden_size,
                "slots": a.slots, "step_tokens": setup.limits.step_tokens,
                "kv_cache_tokens": a.kv_cache_tokens, "result": record,
            })
        );
    }
    Ok(())
}
