//! What `phiforge bench-engine` measures, made ready: the model (a real one or random weights of
//! Phi-4's or a tiny shape) on the chosen device and precision, with the chosen fused kernels and
//! CUDA graphs, optionally checked against candle's own operations first.

use crate::bench::{check_paths, random_model, tiny_config};
use crate::config::{default_dtype, load_model, DeviceSpec};
use crate::engine::EngineError;
use crate::kernels::{CheckResult, Heads, Kernels};
use crate::local::LocalEngine;
use crate::phi3::{Config, Model, Profile};
use crate::tokenizer::{Codec, Phi4Tokenizer};
use candle_core::{DType, Device};
use std::path::PathBuf;
use std::sync::Arc;

/// The shape of random weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Phi4,
    /// For CPU smoke runs ([`tiny_config`]).
    Tiny,
}

/// The weights measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// A model folder, a repository id in the local Hugging Face cache, or a `.gguf` file.
    Model(PathBuf),
    Random {
        shape: Shape,
        /// This many layers instead of the shape's.
        layers: Option<usize>,
    },
}

/// The weights' dtype; `Auto`: bf16 on a GPU, f32 on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Auto,
    F32,
    Bf16,
    F16,
}

/// What to measure on.
#[derive(Debug, Clone)]
pub struct Setup {
    pub weights: Weights,
    pub device: DeviceSpec,
    pub precision: Precision,
    /// Sequences the cache holds (the largest batch).
    pub slots: usize,
    /// Positions per sequence.
    pub context: usize,
    pub seed: u64,
    /// The decode step's fused kernels (`all`, `none`, or a list; default: the device's).
    pub kernels: Option<String>,
    /// Replay decode steps as CUDA graphs where the model would.
    pub graphs: bool,
    /// Check every kernel, then the decode step, against candle's operations first.
    pub check: bool,
    /// Time every phase of the decode passes.
    pub profile: bool,
    /// How the engine's scheduler feeds the model.
    pub limits: crate::local::Limits,
}

/// The engine, ready to measure, and what it is.
pub struct Prepared {
    pub engine: LocalEngine,
    pub config: Config,
    /// `cpu` or `cuda`.
    pub device: &'static str,
    pub dtype: DType,
    /// The fused kernels in use (`none` on the general path).
    pub kernels: String,
    pub graphs: bool,
    pub profile: Option<Arc<Profile>>,
    /// The checks' results (empty without `check`); all within tolerance.
    pub checks: Vec<CheckResult>,
    /// Seconds to load or make the weights.
    pub seconds: f64,
}

fn err(what: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| EngineError::Config(format!("{what}: {e}"))
}

/// Builds the engine `setup` describes; fails if a check is out of tolerance.
pub fn prepare(setup: &Setup) -> Result<Prepared, EngineError> {
    let device = setup.device.device()?;
    let dtype = match setup.precision {
        Precision::Auto => default_dtype(&device),
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
    };
    let started = std::time::Instant::now();
    let (mut model, codec): (Model, Box<dyn Codec>) = match &setup.weights {
        Weights::Model(spec) => {
            let m = load_model(spec, &device, dtype, setup.slots, setup.context)?;
            (m.model, m.codec)
        }
        Weights::Random { shape, layers } => {
            let mut cfg = match shape {
                Shape::Phi4 => Config::phi4(),
                Shape::Tiny => tiny_config(),
            };
            if let Some(n) = layers {
                cfg.num_hidden_layers = *n;
            }
            let model = random_model(&cfg, dtype, &device, setup.slots, setup.context, setup.seed)
                .map_err(err("making random weights"))?;
            (model, Box::new(Phi4Tokenizer::new()?))
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(spec) = &setup.kernels {
        let k = Kernels::parse(spec).map_err(|e| EngineError::Config(format!("kernels: {e}")))?;
        model
            .set_kernels(k.any().then_some(k))
            .map_err(err("kernels"))?;
    }
    if !setup.graphs {
        model.set_graphs(false);
    }
    let checks = if setup.check {
        check_kernels(&mut model, &device, setup.slots)?
    } else {
        Vec::new()
    };
    let kernels = model
        .kernels()
        .map_or("none".to_string(), |k| k.to_string());
    let graphs = model.graphs();
    let profile = setup.profile.then(|| model.enable_profiling());
    let config = model.config().clone();
    Ok(Prepared {
        engine: LocalEngine::with_limits(model, codec.into(), "bench", setup.limits),
        config,
        device: if device.is_cpu() { "cpu" } else { "cuda" },
        dtype,
        kernels,
        graphs,
        profile,
        checks,
        seconds,
    })
}

/// Every kernel against its reference, then the model's decode step on both paths.
fn check_kernels(
    model: &mut Model,
    device: &Device,
    slots: usize,
) -> Result<Vec<CheckResult>, EngineError> {
    let cfg = model.config().clone();
    let heads = Heads {
        h: cfg.num_attention_heads,
        kvh: cfg.num_key_value_heads,
        hd: cfg.head_dim(),
        block: model.block(),
    };
    let mut results = crate::kernels::check(
        device,
        heads,
        cfg.hidden_size,
        cfg.intermediate_size,
        model.dtype(),
    )
    .map_err(err("checking the fused kernels"))?;
    // The model's kernels, or all of them when it is on the general path.
    let kernels = model.kernels().unwrap_or(Kernels::ALL);
    if model.supports_kernels() {
        let mut batches = vec![1, slots.min(4)];
        batches.dedup();
        for b in batches {
            results.push(
                check_paths(model, kernels, b, 7).map_err(err("checking the fused decode path"))?,
            );
        }
    }
    let failed = crate::kernels::failures(&results);
    if !failed.is_empty() {
        return Err(EngineError::Config(format!(
            "fused kernels out of tolerance: {}",
            failed.join("; ")
        )));
    }
    Ok(results)
}
