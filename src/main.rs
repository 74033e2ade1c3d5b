//! The `phiforge` command line: parses arguments and calls the crates.

/// mimalloc: a generation build makes many small allocations per request on many threads (HTTP,
/// JSON, templates), where glibc's allocator cost a fifth of the CPU (benches/orchestration.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

mod corpus_args;
mod curate_cmd;
mod engine;
mod neardup;
mod tokenize;
mod train;
mod vocab;
use corpus_args::CorpusArgs;
use engine::{bench_engine, bench_load, generate, BenchArgs, GenerateArgs, LoadArgs};

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
    /// Like `audit`, and also writes the kept and the removed documents in the input's format
    /// (contaminated and edited documents are removed).
    Decontaminate {
        #[command(flatten)]
        args: DecontArgs,
        /// Remove partial matches too, not only contaminated and edited documents.
        #[arg(long)]
        remove_partial: bool,
    },
    /// Removes near-duplicate documents (MinHash, LSH, exact Jaccard): one kept per cluster, the
    /// rest written to removed/ naming the kept one; bounded memory at any corpus size.
    Neardup(neardup::NeardupArgs),
    /// Keeps the documents that pass quality rules (presets gopher, c4, fineweb; a SQL --where
    /// over per-document signals): kept/, removed/ with reasons, decisions.jsonl, signals.parquet.
    Filter(curate_cmd::FilterArgs),
    /// SQL over a build's output shards (table `samples`), printed or written as Parquet/CSV.
    Query(curate_cmd::QueryArgs),
    /// Checks a recipe without running anything; reports every problem with file, line and field.
    Validate { recipe: PathBuf },
    /// Shows, per stage, how many inputs are cached and how many will run, and why.
    Plan {
        recipe: PathBuf,
        /// Redo these stages and everything after them.
        #[arg(long)]
        force: Vec<String>,
    },
    /// Builds a recipe, recomputing only what changed since the last build; then mixes (`mix:`)
    /// and trains (`train:`).
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
        /// Requests taken at once, generating or waiting for a slot (default: 4 x slots); past
        /// it the server answers 429 with Retry-After instead of queueing without bound.
        #[arg(long)]
        max_pending: Option<usize>,
        /// Positions of prompt prefixes kept for reuse (0: no prefix cache).
        #[arg(long, default_value_t = engines::local::Limits::default().prefix_cache_tokens)]
        prefix_cache_tokens: usize,
        /// Tokens per forward pass: one per decoding sequence, the rest to chunks of new prompts.
        #[arg(long, default_value_t = engines::local::Limits::default().step_tokens)]
        step_tokens: usize,
        /// Positions of the KV cache for running sequences (0: slots x context). Requests are
        /// admitted as their prompt and max_tokens fit, so this may be far under slots x context.
        #[arg(long, default_value_t = 0)]
        kv_cache_tokens: usize,
    },
    /// Measures the local engine: prefill and decode tokens/s per batch size, on a model folder
    /// or on random weights of Phi-4's shape made on the device; one JSON line per batch size
    /// (the fields of ../shared/gpu/hf_bench.py, for side-by-side runs).
    BenchEngine(BenchArgs),
    /// Replays a generation load on the local engine (requests of mixed lengths, a share with
    /// common prefixes, arriving at a rate) under each prefix cache setting; one JSON line each
    /// with tokens/s and latency percentiles.
    BenchLoad(LoadArgs),
    /// Learns a small byte-level BPE tokenizer.json from documents (for models trained from
    /// scratch), with Phi-4's chat and end-of-text tokens as its special tokens.
    TrainTokenizer(vocab::TrainTokenizerArgs),
    /// Tokenizes documents into token shards (Phi-4's tokenizer or a tokenizer.json), each
    /// document ended by the end-of-text token; optionally also Megatron-LM's indexed dataset.
    Tokenize(tokenize::TokenizeArgs),
    /// Trains a Phi-3-architecture model on the recipe's mix with its `train:` section
    /// (checkpoints, `--resume`, metrics.jsonl, loss.svg, a model folder engines load).
    Train(train::TrainArgs),
    /// Prints the normalised form of a text (argument or standard input), as matching sees it.
    Normalize {
        /// The text; read from standard input when absent.
        text: Option<String>,
    },
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
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Output folder (written completely or not at all).
    #[arg(long, short = 'o')]
    out: PathBuf,
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
    /// Turn off the edit rule (items copied with words changed, found by word alignment).
    #[arg(long)]
    no_edit_rule: bool,
    /// Alignment similarity (1 - edits / words) at or above which an item's copy is edited.
    #[arg(long, default_value_t = Settings::default().edit_threshold)]
    edit_threshold: f64,
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
        Command::Neardup(a) => neardup::neardup(a),
        Command::Filter(a) => curate_cmd::filter(a),
        Command::Query(a) => curate_cmd::query(a),
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
            if let Some(t) = &r.train {
                println!(
                    "then train: {} steps on the mix (skipped when the mix and settings are unchanged)",
                    t.steps
                );
            }
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
            train::after_build(&r)
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
            max_pending,
            prefix_cache_tokens,
            step_tokens,
            kv_cache_tokens,
        } => {
            // As a recipe's local engine: the device chosen for it (a GPU when there is one).
            let config = engines::config::LocalConfig {
                slots,
                context,
                prefix_cache_tokens,
                step_tokens,
                kv_cache_tokens,
                ..engines::config::LocalConfig::new(&model_dir.to_string_lossy())
            };
            if let Some(p) = engines::config::EngineConfig::Local(config.clone())
                .problems()
                .into_iter()
                .next()
            {
                anyhow::bail!("--{}: {}", p.field.replace('_', "-"), p.message);
            }
            let (engine, name) = config.engine()?;
            let max_pending = max_pending.unwrap_or(slots.saturating_mul(4)).max(1);
            let name = model_name.unwrap_or(name);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            eprintln!("serving {name} on http://{listen}/v1");
            runtime
                .block_on(engines::serve::serve(engine, &name, listen, max_pending))
                .with_context(|| format!("serving on {listen}"))
        }
        Command::BenchEngine(a) => bench_engine(a),
        Command::BenchLoad(a) => bench_load(a),
        Command::Train(a) => train::train(a),
        Command::TrainTokenizer(a) => vocab::train_tokenizer(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
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
        // Generation stages add their requests, rates, cached replies and drops.
        let started = Instant::now();
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {prefix:16} {bar:30} {pos}/{len} units{generation}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "generation",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let s = agents::stats::snapshot();
                if s.requests + s.cached > 0 {
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let _ = write!(
                        w,
                        " | {} requests ({:.1}/s), {} cached, {:.0} tokens/s, {} kept, {} dropped",
                        s.requests,
                        s.requests as f64 / secs,
                        s.cached,
                        s.completion_tokens as f64 / secs,
                        s.kept,
                        s.dropped
                    );
                }
            },
        );
        let bar = ProgressBar::new(0).with_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
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
    let inputs = a.corpus.start()?;
    let fields = match &a.field_map {
        Some(spec) => FieldMap::parse(spec)?,
        None => FieldMap::default(),
    };
    let set = BenchmarkSet::load(&a.benchmarks, &fields)?;
    let allow = match &a.allow_list {
        Some(p) => dedup::index::AllowList::read(p)?,
        None => dedup::index::AllowList::default(),
    };
    let settings = Settings {
        info_threshold: a.info_threshold,
        contamination_threshold: a.contamination_threshold,
        allow_min_items: a.allow_min_items,
        edit_rule: !a.no_edit_rule,
        edit_threshold: a.edit_threshold,
        ..Settings::default()
    };
    let index = BenchIndex::build(&set, settings, &allow.texts)?;
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
        text: a.corpus.spec(),
        skip_bad_lines: a.skip_bad_lines,
        mode,
        allow_list: allow.file,
    };
    let report = audit::run(&index, &set.files, &inputs, &a.out, &opts, &progress);
    progress.bar.finish_and_clear();
    let report = report?;
    let t = &report.totals;
    println!(
        "{} documents, {:.1} MB in {:.1} s ({:.1} MB/s): {} contaminated, {} edited, {} partial, {} clean{}",
        t.documents,
        t.bytes as f64 / 1e6,
        t.seconds,
        t.mb_per_s,
        t.contaminated,
        t.edited,
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
