//! The `phiforge` command line: parses arguments and calls the crates.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use dedup::audit::{self, Mode, Progress, RunOptions};
use dedup::benchmark::{BenchmarkSet, FieldMap};
use dedup::index::{BenchIndex, Settings};
use indicatif::{ProgressBar, ProgressStyle};
use pipeline::build::BuildOptions;
use pipeline::executor::Executor;
use pipeline::recipe::Recipe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "phiforge",
    version,
    about = "Builds, decontaminates and mixes LLM training data the way Phi-4's was built"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reports which documents of a corpus overlap benchmark test sets (Phi-4's 13/7-gram rule).
    Audit(DecontArgs),
    /// Like `audit`, and also writes the kept and the removed documents in the input's format.
    Decontaminate {
        #[command(flatten)]
        args: DecontArgs,
        /// Remove partial matches too, not only contaminated documents.
        #[arg(long)]
        remove_partial: bool,
    },
    /// Checks a recipe without running anything; reports every problem with file, line and field.
    Validate { recipe: PathBuf },
    /// Shows, per stage, how many inputs are cached and how many will run, and why.
    Plan {
        recipe: PathBuf,
        /// Redo these stages and everything after them.
        #[arg(long)]
        force: Vec<String>,
    },
    /// Builds a recipe, recomputing only what changed since the last build.
    Build {
        recipe: PathBuf,
        /// Redo these stages and everything after them.
        #[arg(long)]
        force: Vec<String>,
        /// Where units run: on this machine's cores, or as a Slurm job array.
        #[arg(long, value_enum, default_value = "local")]
        executor: ExecutorArg,
    },
    /// Shows where a sample came from: it and its ancestors, back to the source documents.
    Lineage {
        recipe: PathBuf,
        /// The sample's id (as in the output files).
        id: String,
    },
    /// Runs one unit of a stage from a manifest (what each Slurm array task runs).
    #[command(hide = true)]
    RunUnit {
        manifest: PathBuf,
        /// The unit, counted from --offset (default: SLURM_ARRAY_TASK_ID).
        #[arg(long)]
        unit: Option<usize>,
        /// Added to the unit's number (each job array covers a block of the manifest's units).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Generates completions with an OpenAI-compatible server: a prompt, or JSON lines of
    /// `prompt`/`messages` records, in; one JSON line per completion (or error) out.
    Generate(GenerateArgs),
    /// Serves the local engine on an OpenAI-compatible HTTP API (chat and completions, streaming).
    Serve {
        /// A Hugging Face model folder of the Phi-3/Phi-4 architecture, a repository id in the
        /// local Hugging Face cache (`microsoft/phi-4[@revision]`), or a `phi3` .gguf file.
        #[arg(long)]
        model_dir: PathBuf,
        /// The model name clients use (default: the folder's name).
        #[arg(long)]
        model_name: Option<String>,
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        /// Sequences generated at once (continuous batching).
        #[arg(long, default_value_t = 32)]
        slots: usize,
        /// Context positions per sequence.
        #[arg(long, default_value_t = 4096)]
        context: usize,
    },
    /// Measures the local engine: prefill and decode tokens/s per batch size, on a model folder
    /// or on random weights of Phi-4's shape made on the device; one JSON line per batch size
    /// (the fields of ../shared/gpu/hf_bench.py, for side-by-side runs).
    BenchEngine(BenchArgs),
    /// Prints the normalised form of a text (argument or standard input), as matching sees it.
    Normalize {
        /// The text; read from standard input when absent.
        text: Option<String>,
    },
}

#[derive(Args)]
struct BenchArgs {
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

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DTypeArg {
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShapeArg {
    Phi4,
    Tiny,
}

#[derive(Args)]
struct GenerateArgs {
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Args)]
struct DecontArgs {
    /// Benchmark sets: `standard` (all bundled), a bundled name (gsm8k, math, mmlu, humaneval,
    /// mbpp, arc_challenge, arc_easy), or JSON-lines/Parquet files or folders of them.
    #[arg(long, short = 'b', num_args = 1.., required = true)]
    benchmarks: Vec<String>,
    /// Documents: files, folders of text files or globs (JSON lines, .gz, .zst, Parquet, .txt).
    #[arg(long, short = 'i', num_args = 1.., required = true)]
    input: Vec<String>,
    /// Output folder (written completely or not at all).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Field with the document text (a chat `messages` array is joined).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Field with the document id (else FILE:LINE).
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Benchmark fields for other schemas, e.g. `question=problem,answer=solution,id=task_id`.
    #[arg(long)]
    field_map: Option<String>,
    /// A text file whose lines' n-grams are not evidence of contamination.
    #[arg(long)]
    allow_list: Option<PathBuf>,
    /// Count, report and set aside malformed records instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Best 7-gram ratio above which a document is partial.
    #[arg(long, default_value_t = Settings::default().info_threshold)]
    info_threshold: f64,
    /// Best 7-gram ratio at or above which a document is contaminated.
    #[arg(long, default_value_t = Settings::default().contamination_threshold)]
    contamination_threshold: f64,
    /// N-grams found in this many benchmark items or more are boilerplate, not evidence.
    #[arg(long, default_value_t = Settings::default().allow_min_items)]
    allow_min_items: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Audit(args) => decont(args, Mode::Audit),
        Command::Decontaminate {
            args,
            remove_partial,
        } => decont(args, Mode::Decontaminate { remove_partial }),
        Command::Validate { recipe } => {
            let r = Recipe::load(&recipe)?;
            println!(
                "{}: ok ({} sources, {} stages)",
                recipe.display(),
                r.sources.len(),
                r.stages.len()
            );
            Ok(())
        }
        Command::Plan { recipe, force } => {
            let r = Recipe::load(&recipe)?;
            let opts = BuildOptions {
                executor: Executor::Local,
                force,
                dry_run: true,
                progress: &pipeline::report::NoProgress,
            };
            let report = pipeline::build::build(&r, &recipe, &opts)?;
            print!("{}", report.plan_summary());
            Ok(())
        }
        Command::Build {
            recipe,
            force,
            executor,
        } => {
            let r = Recipe::load(&recipe)?;
            let bar = StageBar::new();
            let opts = BuildOptions {
                executor: match executor {
                    ExecutorArg::Local => Executor::Local,
                    ExecutorArg::Slurm => Executor::Slurm,
                },
                force,
                dry_run: false,
                progress: &bar,
            };
            let report = pipeline::build::build(&r, &recipe, &opts);
            bar.bar.finish_and_clear();
            let report = report?;
            print!("{}", report.summary());
            Ok(())
        }
        Command::Lineage { recipe, id } => {
            let r = Recipe::load(&recipe)?;
            let path = pipeline::build::store_path(&r);
            let Some(store) = pipeline::store::Store::open_existing(&path)? else {
                anyhow::bail!(
                    "{} has not been built yet (no {})",
                    recipe.display(),
                    path.display()
                );
            };
            let root = pipeline::build::output_dir(&r);
            let chain = pipeline::lineage::trace(&store, &root, &id)?;
            if chain.is_empty() {
                anyhow::bail!(
                    "no sample with id {id} in the last build of {}",
                    recipe.display()
                );
            }
            for s in chain {
                let from = match &s.lineage.source {
                    Some(src) => format!(
                        "source `{}`: {} line {} (id {})",
                        src.source, src.file, src.line, src.id
                    ),
                    None => format!("made from {}", s.lineage.parents.join(", ")),
                };
                println!(
                    "{}  {:<14} {:<10} {from}",
                    s.id,
                    s.lineage.stage,
                    s.class.as_str()
                );
            }
            Ok(())
        }
        Command::RunUnit {
            manifest,
            unit,
            offset,
        } => Ok(pipeline::executor::slurm::run_task(
            &manifest, unit, offset,
        )?),
        Command::Generate(a) => generate(a),
        Command::Serve {
            model_dir,
            model_name,
            listen,
            slots,
            context,
        } => {
            let (engine, name) = local_engine(&model_dir, slots, context)?;
            let name = model_name.unwrap_or(name);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            eprintln!("serving {name} on http://{listen}/v1");
            runtime
                .block_on(agents::serve::serve(engine, &name, listen))
                .with_context(|| format!("serving on {listen}"))
        }
        Command::BenchEngine(a) => bench_engine(a),
        Command::Normalize { text } => {
            let text = match text {
                Some(t) => t,
                None => {
                    std::io::read_to_string(std::io::stdin()).context("reading standard input")?
                }
            };
            println!("{}", dedup::normalize::normalize(&text));
            Ok(())
        }
    }
}

/// A progress bar per running stage: units done of units to run.
struct StageBar {
    bar: ProgressBar,
}

impl StageBar {
    fn new() -> Self {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {prefix:16} {bar:30} {pos}/{len} units",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        StageBar { bar }
    }
}

impl pipeline::report::Progress for StageBar {
    fn stage(&self, name: &str, units: usize) {
        self.bar.set_prefix(name.to_string());
        self.bar.set_length(units as u64);
        self.bar.set_position(0);
    }
    fn unit_done(&self) {
        self.bar.inc(1);
    }
}

/// A progress line: documents, MB and MB/s.
struct Bar {
    bar: ProgressBar,
    docs: AtomicU64,
    bytes: AtomicU64,
    start: Instant,
}

impl Progress for Bar {
    fn file(&self, path: &Path) {
        self.bar.set_prefix(path.display().to_string());
    }
    fn advance(&self, docs: u64, bytes: u64) {
        let d = self.docs.fetch_add(docs, Ordering::Relaxed) + docs;
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "{d} docs, {:.1} MB, {:.1} MB/s",
            b as f64 / 1e6,
            b as f64 / 1e6 / secs
        ));
        self.bar.tick();
    }
}

fn decont(a: DecontArgs, mode: Mode) -> Result<()> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up worker threads")?;
    }
    let fields = match &a.field_map {
        Some(spec) => FieldMap::parse(spec)?,
        None => FieldMap::default(),
    };
    let inputs = corpus::expand_inputs(&a.input)?;
    let set = BenchmarkSet::load(&a.benchmarks, &fields)?;
    let (allow, allow_ref) = match &a.allow_list {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading allow-list {}", p.display()))?;
            let text = String::from_utf8(bytes.clone())
                .with_context(|| format!("{}: allow-list is not UTF-8", p.display()))?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
            let hash = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            (lines, Some((p.clone(), hash)))
        }
        None => (Vec::new(), None),
    };
    let settings = Settings {
        info_threshold: a.info_threshold,
        contamination_threshold: a.contamination_threshold,
        allow_min_items: a.allow_min_items,
        ..Settings::default()
    };
    let index = BenchIndex::build(&set, settings, &allow)?;
    tracing::info!(
        items = index.items.len(),
        ngrams = index.stats.ngrams_short,
        "benchmark index built"
    );
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let progress = Bar {
        bar,
        docs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        start: Instant::now(),
    };
    let opts = RunOptions {
        text: corpus::TextSpec {
            text_field: a.text_field,
            id_field: a.id_field,
        },
        skip_bad_lines: a.skip_bad_lines,
        mode,
        allow_list: allow_ref,
    };
    let report = audit::run(&index, &set.files, &inputs, &a.out, &opts, &progress);
    progress.bar.finish_and_clear();
    let report = report?;
    let t = &report.totals;
    println!(
        "{} documents, {:.1} MB in {:.1} s ({:.1} MB/s): {} contaminated, {} partial, {} clean{}",
        t.documents,
        t.bytes as f64 / 1e6,
        t.seconds,
        t.mb_per_s,
        t.contaminated,
        t.partial,
        t.clean,
        if t.skipped_records > 0 {
            format!(", {} malformed records skipped", t.skipped_records)
        } else {
            String::new()
        }
    );
    println!("report: {}", a.out.join("report.md").display());
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    use agents::generate::{generate, read_prompts, Prompt};
    use agents::openai::{OpenAiConfig, OpenAiEngine};
    let prompts = match (&a.prompt, &a.input) {
        (Some(p), None) => {
            let mut messages = Vec::new();
            if let Some(s) = &a.system {
                messages.push(agents::engine::Message::new("system", s.clone()));
            }
            messages.push(agents::engine::Message::new("user", p.clone()));
            vec![Prompt {
                id: "1".into(),
                messages,
            }]
        }
        (None, Some(path)) => read_prompts(path, a.system.as_deref())?,
        _ => anyhow::bail!("give --prompt TEXT or --input FILE.jsonl"),
    };
    let engine: Box<dyn agents::engine::Engine> = match &a.model_dir {
        Some(dir) => Box::new(local_engine(dir, a.concurrency.clamp(1, 64), a.context)?.0),
        None => Box::new(OpenAiEngine::new(OpenAiConfig {
            endpoints: a.endpoint.clone(),
            api_key_env: a.api_key_env.clone(),
            max_concurrency: a.concurrency,
            timeout_s: a.timeout,
            max_retries: a.retries,
            ..OpenAiConfig::new(&a.endpoint[0], a.model.as_deref().unwrap_or("default"))
        })?),
    };
    let sampling = agents::engine::Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        min_tokens: 0,
        seed: a.seed,
        logprobs: false,
    };
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
    let mut body = Vec::new();
    let summary = runtime.block_on(generate(&*engine, &prompts, &sampling, &mut body, &|| {
        bar.inc(1)
    }))?;
    bar.finish_and_clear();
    match &a.output {
        Some(path) => {
            corpus::atomic::write(path, &body)?;
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&body)?;
        }
    }
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
            "{} of {} requests failed (each is in the output with its error)",
            summary.failed,
            prompts.len()
        );
    }
    Ok(())
}

/// `phiforge bench-engine`: builds the engine, then prints a JSON line per batch size.
fn bench_engine(a: BenchArgs) -> Result<()> {
    if a.batch.is_empty() || a.batch.contains(&0) || a.prompt_len == 0 || a.gen_len == 0 {
        anyhow::bail!("--batch sizes, --prompt-len and --gen-len must be at least 1");
    }
    let device = match a.device {
        DeviceArg::Auto => agents::local::default_device(),
        DeviceArg::Cpu => candle_core::Device::Cpu,
        DeviceArg::Cuda => candle_core::Device::new_cuda(0)
            .context("--device cuda (is this binary built with `--features cuda`?)")?,
    };
    let dtype = match a.dtype {
        DTypeArg::Auto => model_dtype(&device),
        DTypeArg::F32 => candle_core::DType::F32,
        DTypeArg::Bf16 => candle_core::DType::BF16,
        DTypeArg::F16 => candle_core::DType::F16,
    };
    let slots = a.batch.iter().copied().max().unwrap_or(1);
    let context = a.prompt_len + a.gen_len + 1;
    let started = std::time::Instant::now();
    let (mut model, codec): (_, Box<dyn agents::tokenizer::Codec>) = match &a.model_dir {
        Some(spec) => {
            let (model, codec, _) = load_model(spec, &device, dtype, slots, context)?;
            (model, codec)
        }
        None => {
            let mut cfg = match a.shape {
                ShapeArg::Phi4 => agents::phi3::Config::phi4(),
                ShapeArg::Tiny => agents::bench::tiny_config(),
            };
            if let Some(n) = a.layers {
                cfg.num_hidden_layers = n;
            }
            let model = agents::bench::random_model(&cfg, dtype, &device, slots, context, a.seed)
                .context("making random weights")?;
            (model, Box::new(agents::tokenizer::Phi4Tokenizer::new()?))
        }
    };
    let cfg = model.config().clone();
    if let Some(spec) = &a.kernels {
        let k =
            agents::kernels::Kernels::parse(spec).map_err(|e| anyhow::anyhow!("--kernels: {e}"))?;
        model
            .set_kernels(k.any().then_some(k))
            .context("--kernels")?;
    }
    if a.no_graphs {
        model.set_graphs(false);
    }
    if a.check {
        check_kernels(&mut model, &device, slots)?;
    }
    let kernels = model
        .kernels()
        .map_or("none".to_string(), |k| k.to_string());
    let graphs = model.graphs();
    let profile = a.profile.then(|| model.enable_profiling());
    let dev_name = if device.is_cpu() { "cpu" } else { "cuda" };
    eprintln!(
        "{} layers, hidden {}, {dtype:?} on {dev_name}, fused decode kernels: {kernels}, CUDA \
         graphs: {}, ready in {:.1}s",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        if graphs { "on" } else { "off" },
        started.elapsed().as_secs_f64()
    );
    let engine = agents::local::LocalEngine::new(model, codec.into(), "bench");
    let plan = agents::bench::Plan {
        batches: a.batch.clone(),
        prompt_len: a.prompt_len,
        gen_len: a.gen_len,
        seed: a.seed,
        profile,
        kernels,
        graphs,
    };
    let bar = ProgressBar::new(plan.batches.len() as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} batch sizes {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("(measuring batch {})", plan.batches[0]));
    agents::bench::run(&engine, &cfg, dev_name, dtype, &plan, |r| {
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
    for line in agents::kernels::gemv_choices() {
        println!("{}", serde_json::json!({ "gemv": line }));
    }
    #[cfg(feature = "cuda")]
    for line in agents::graph::summary() {
        println!("{}", serde_json::json!({ "cuda_graphs": line }));
    }
    Ok(())
}

/// `bench-engine --check`: every kernel against its reference, then the model's decode step on
/// both paths; one JSON line each on standard output.
fn check_kernels(
    model: &mut agents::phi3::Model,
    device: &candle_core::Device,
    slots: usize,
) -> Result<()> {
    let cfg = model.config().clone();
    let heads = agents::kernels::Heads {
        h: cfg.num_attention_heads,
        kvh: cfg.num_key_value_heads,
        hd: cfg.head_dim(),
        ctx: model.context(),
    };
    let mut results = agents::kernels::check(
        device,
        heads,
        cfg.hidden_size,
        cfg.intermediate_size,
        model.dtype(),
    )
    .context("checking the fused kernels")?;
    // The model's kernels, or all of them when it is on the general path.
    let kernels = model.kernels().unwrap_or(agents::kernels::Kernels::ALL);
    if model.supports_kernels() {
        let mut batches = vec![1, slots.min(4)];
        batches.dedup();
        for b in batches {
            results.push(
                agents::bench::check_paths(model, kernels, b, 7)
                    .context("checking the fused decode path")?,
            );
        }
    }
    let failed = agents::kernels::failures(&results);
    for r in &results {
        println!("{}", serde_json::json!({ "check": r }));
    }
    if !failed.is_empty() {
        anyhow::bail!("fused kernels out of tolerance: {}", failed.join("; "));
    }
    eprintln!("{} kernel checks passed", results.len());
    Ok(())
}

/// bf16 on a GPU, f32 on the CPU.
fn model_dtype(device: &candle_core::Device) -> candle_core::DType {
    if device.is_cpu() {
        candle_core::DType::F32
    } else {
        candle_core::DType::BF16
    }
}

/// The local engine on a model folder (bf16 on a GPU, f32 on the CPU), and the model's name.
fn local_engine(
    spec: &Path,
    slots: usize,
    context: usize,
) -> Result<(agents::local::LocalEngine, String)> {
    let device = agents::local::default_device();
    let (model, codec, name) = load_model(spec, &device, model_dtype(&device), slots, context)?;
    Ok((
        agents::local::LocalEngine::new(model, codec.into(), &name),
        name,
    ))
}

/// The model `--model-dir` names (see [`model_path`]) with a cache of `slots` × `context`, its
/// tokenizer, and its name.
fn load_model(
    spec: &Path,
    device: &candle_core::Device,
    dtype: candle_core::DType,
    slots: usize,
    context: usize,
) -> Result<(
    agents::phi3::Model,
    Box<dyn agents::tokenizer::Codec>,
    String,
)> {
    let (dir, name) = model_path(spec)?;
    let dir = dir.as_path();
    // A .gguf file (quantized, for CPU use) or a Hugging Face folder; the tokenizer.json beside a
    // GGUF file, or in the folder, else Phi-4's own.
    let gguf = dir.extension().is_some_and(|e| e == "gguf");
    let model = if gguf {
        agents::phi3::Model::from_gguf(dir, device, slots.max(1), context)
    } else {
        agents::phi3::Model::load(dir, dtype, device, slots.max(1), context)
    }
    .with_context(|| format!("loading the model in {}", dir.display()))?;
    let codec = agents::tokenizer::for_model(if gguf {
        dir.parent().unwrap_or(Path::new("."))
    } else {
        dir
    })?;
    Ok((model, codec, name))
}

/// `--model-dir`: a folder or .gguf file, or a repository id (`owner/name[@revision]`) in the
/// local Hugging Face cache; and the model's name (the file's or folder's, or the id).
fn model_path(spec: &Path) -> Result<(PathBuf, String)> {
    let text = spec.to_string_lossy();
    let path = agents::hub::resolve(&text)?;
    let name = if spec.exists() {
        spec.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into())
    } else {
        text.split('@').next().unwrap_or(&text).to_string()
    };
    Ok((path, name))
}
