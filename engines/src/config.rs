//! One engine as a recipe's `engines.NAME` or `phiforge generate` declares it, checked without
//! building it, its identity for fingerprints, and the engine built from it.
//!
//! ```yaml
//! engines:
//!   pool: {kind: openai, model: phi-4, endpoints: [http://gpu-1:8000/v1], api_key_env: VLLM_KEY}
//!   here: {kind: local, model: microsoft/phi-4, device: cuda:0, slots: 32, context: 4096}
//! ```
//!
//! What changes the text an engine writes (the model, the API it is asked through) is its
//! [`identity`](EngineConfig::identity) and goes into fingerprints; what only changes how fast it
//! writes (endpoints, concurrency, rate limits, timeouts, retries, device, slots) does not.

use crate::engine::{Engine, EngineError};
use crate::openai::{OpenAiConfig, OpenAiEngine};
use crate::phi3::Model;
use crate::tokenizer::Codec;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An engine's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EngineConfig {
    /// Any OpenAI-compatible server (vLLM, SGLang, llama.cpp, `phiforge serve`).
    Openai(OpenAiConfig),
    /// The built-in Phi-3/Phi-4 engine on candle.
    Local(LocalConfig),
}

/// Settings of the local engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// A Hugging Face model folder of the Phi-3/Phi-4 architecture, a `phi3` .gguf file, or a
    /// repository id (`owner/name[@revision]`) in the local Hugging Face cache.
    pub model: String,
    /// `auto` (the first GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Sequences decoded together.
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// Positions per sequence (prompt and completion).
    #[serde(default = "default_context")]
    pub context: usize,
    /// Positions of prompt prefixes kept for reuse (the prefix cache; 0 turns it off).
    #[serde(default = "default_prefix_cache_tokens")]
    pub prefix_cache_tokens: usize,
    /// Tokens fed per forward pass: one per decoding sequence, the rest to prompt chunks.
    #[serde(default = "default_step_tokens")]
    pub step_tokens: usize,
    /// Positions of the KV cache for running sequences (0: `slots` × `context`); requests are
    /// admitted as their prompts and `max_tokens` fit, so it may be far under slots × context.
    #[serde(default)]
    pub kv_cache_tokens: usize,
}

fn default_device() -> String {
    "auto".into()
}
fn default_slots() -> usize {
    16
}
fn default_context() -> usize {
    4096
}
fn default_prefix_cache_tokens() -> usize {
    crate::local::Limits::default().prefix_cache_tokens
}
fn default_step_tokens() -> usize {
    crate::local::Limits::default().step_tokens
}

impl LocalConfig {
    /// Defaults for `model`.
    pub fn new(model: &str) -> LocalConfig {
        LocalConfig {
            model: model.into(),
            device: default_device(),
            slots: default_slots(),
            context: default_context(),
            prefix_cache_tokens: default_prefix_cache_tokens(),
            step_tokens: default_step_tokens(),
            kv_cache_tokens: 0,
        }
    }
}

/// Where the local engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "unknown device `{s}`: expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }

    /// The device itself (a GPU only in a build with the `cuda` feature).
    pub fn device(self) -> Result<Device, EngineError> {
        match self {
            DeviceSpec::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::new_cuda(n)
                .map_err(|e| EngineError::Config(format!("device cuda:{n}: {e}"))),
        }
    }
}

/// A problem with a configuration: the field (`endpoints`, `device`, ...) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl EngineConfig {
    /// Everything wrong that can be seen without building the engine: an empty or malformed
    /// endpoint list, an API key variable that is not set, an unknown device, zero slots.
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        let mut bad = |field, message: String| found.push(Problem { field, message });
        match self {
            EngineConfig::Openai(c) => {
                if c.endpoints.is_empty() {
                    bad("endpoints", "needs at least one endpoint URL".into());
                }
                for e in &c.endpoints {
                    if reqwest::Url::parse(e).is_err() {
                        bad(
                            "endpoints",
                            format!("`{e}` is not a URL (e.g. http://host:8000/v1)"),
                        );
                    }
                }
                if c.model.trim().is_empty() {
                    bad("model", "is empty".into());
                }
                if let Some(var) = &c.api_key_env {
                    if std::env::var_os(var).is_none() {
                        bad(
                            "api_key_env",
                            format!("the environment variable `{var}` is not set"),
                        );
                    }
                }
                if c.max_concurrency == 0 {
                    bad("max_concurrency", "must be at least 1".into());
                }
                if c.timeout_s.is_nan() || c.timeout_s <= 0.0 {
                    bad("timeout_s", "must be more than 0".into());
                }
            }
            EngineConfig::Local(c) => {
                if c.model.trim().is_empty() {
                    bad("model", "is empty".into());
                }
                match DeviceSpec::parse(&c.device) {
                    Err(e) => bad("device", e),
                    Ok(DeviceSpec::Cuda(_)) if !cfg!(feature = "cuda") => bad(
                        "device",
                        format!(
                            "`{}` needs a phiforge built with `--features cuda`",
                            c.device
                        ),
                    ),
                    Ok(_) => {}
                }
                if c.slots == 0 {
                    bad("slots", "must be at least 1".into());
                }
                if c.context < 16 {
                    bad("context", "must be at least 16 positions".into());
                }
                if c.kv_cache_tokens != 0 && c.kv_cache_tokens < c.context {
                    bad(
                        "kv_cache_tokens",
                        format!(
                            "must be 0 (slots × context) or at least `context` ({}): one \
                             sequence may fill its context",
                            c.context
                        ),
                    );
                }
                if c.step_tokens < c.slots + 1 {
                    bad(
                        "step_tokens",
                        format!(
                            "must be more than `slots` ({}): every decoding sequence takes one",
                            c.slots
                        ),
                    );
                }
            }
        }
        found
    }

    /// What decides the text the engine writes, for fingerprints: the kind, the model and, for a
    /// server, which API it is asked through.
    pub fn identity(&self) -> Value {
        match self {
            EngineConfig::Openai(c) => json!({"kind": "openai", "model": c.model, "api": c.api}),
            EngineConfig::Local(c) => json!({"kind": "local", "model": c.model}),
        }
    }

    /// Builds the engine (for the local engine: loads the model).
    pub fn build(&self) -> Result<Arc<dyn Engine>, EngineError> {
        if let Some(p) = self.problems().into_iter().next() {
            return Err(EngineError::Config(format!("{}: {}", p.field, p.message)));
        }
        match self {
            EngineConfig::Openai(c) => Ok(Arc::new(OpenAiEngine::new(c.clone())?)),
            EngineConfig::Local(c) => Ok(Arc::new(c.engine()?.0)),
        }
    }
}

impl LocalConfig {
    /// The local engine (the model loaded on its device, bf16 on a GPU, f32 on the CPU), and
    /// the model's name.
    pub fn engine(&self) -> Result<(crate::local::LocalEngine, String), EngineError> {
        let device = DeviceSpec::parse(&self.device)
            .map_err(EngineError::Config)?
            .device()?;
        let dtype = default_dtype(&device);
        // With a budget of its own, the KV cache is sized by the scheduler, never as slots ×
        // context (which need not fit): the model is loaded with one slot's, then given its slots.
        let sized = self.kv_cache_tokens > 0;
        let mut loaded = load_model(
            Path::new(&self.model),
            &device,
            dtype,
            if sized { 1 } else { self.slots },
            self.context,
        )?;
        loaded.model.set_slots(self.slots);
        let name = loaded.name.clone();
        Ok((
            crate::local::LocalEngine::with_limits(
                loaded.model,
                loaded.codec.into(),
                &loaded.name,
                crate::local::Limits {
                    prefix_cache_tokens: self.prefix_cache_tokens,
                    step_tokens: self.step_tokens,
                    kv_cache_tokens: self.kv_cache_tokens,
                    ..Default::default()
                },
            ),
            name,
        ))
    }
}

/// bf16 on a GPU, f32 on the CPU.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// A model loaded for the local engine.
pub struct Loaded {
    pub model: Model,
    pub codec: Box<dyn Codec>,
    /// The file's or folder's name, or the repository id.
    pub name: String,
}

/// Loads the model `spec` names (a folder, a .gguf file, or a repository id in the local Hugging
/// Face cache) with a cache of `slots` x `context`, and its tokenizer: `tokenizer.json` in the
/// folder or beside the GGUF file, else Phi-4's own.
pub fn load_model(
    spec: &Path,
    device: &Device,
    dtype: DType,
    slots: usize,
    context: usize,
) -> Result<Loaded, EngineError> {
    let (dir, name) = model_path(spec)?;
    let gguf = dir.extension().is_some_and(|e| e == "gguf");
    let model = if gguf {
        Model::from_gguf(&dir, device, slots.max(1), context)
    } else {
        Model::load(&dir, dtype, device, slots.max(1), context)
    }
    .map_err(|e| EngineError::Config(format!("loading the model in {}: {e}", dir.display())))?;
    let codec = crate::tokenizer::for_model(if gguf {
        dir.parent().unwrap_or(Path::new("."))
    } else {
        &dir
    })?;
    Ok(Loaded { model, codec, name })
}

/// The path `spec` names and the model's name (the file's or folder's, or the repository id).
fn model_path(spec: &Path) -> Result<(PathBuf, String), EngineError> {
    let text = spec.to_string_lossy();
    let path = crate::hub::resolve(&text)?;
    let name = if spec.exists() {
        spec.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into())
    } else {
        text.split('@').next().unwrap_or(&text).to_string()
    };
    Ok((path, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> EngineConfig {
        serde_json::from_value(serde_json::from_str::<Value>(yaml).unwrap()).unwrap()
    }

    #[test]
    fn both_kinds_parse_with_defaults_and_unknown_fields_are_refused() {
        let c = parse(r#"{"kind": "openai", "model": "phi-4", "endpoints": ["http://h:8000/v1"]}"#);
        let EngineConfig::Openai(o) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(o.max_concurrency, 64);
        assert!(c.problems().is_empty());
        let c = parse(r#"{"kind": "local", "model": "m"}"#);
        assert_eq!(c, EngineConfig::Local(LocalConfig::new("m")));
        let bad =
            serde_json::from_str::<EngineConfig>(r#"{"kind": "local", "model": "m", "gpu": 1}"#);
        assert!(bad.unwrap_err().to_string().contains("unknown field `gpu`"));
    }

    #[test]
    fn problems_name_the_field() {
        let c = parse(
            r#"{"kind": "openai", "model": "m", "endpoints": [], "api_key_env": "PHIFORGE_TEST_UNSET_KEY"}"#,
        );
        let fields: Vec<_> = c.problems().iter().map(|p| p.field).collect();
        assert_eq!(fields, ["endpoints", "api_key_env"]);
        let c = parse(r#"{"kind": "local", "model": "m", "device": "tpu", "slots": 0}"#);
        let p = c.problems();
        assert_eq!(p[0].field, "device");
        assert!(p[0].message.contains("unknown device `tpu`"), "{p:?}");
        assert_eq!(p[1].field, "slots");
        assert!(matches!(c.build(), Err(EngineError::Config(m)) if m.starts_with("device:")));
        let c = parse(r#"{"kind": "local", "model": "m", "kv_cache_tokens": 1000}"#);
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "kv_cache_tokens");
        assert!(p[0].message.contains("at least `context` (4096)"), "{p:?}");
        let c = parse(r#"{"kind": "local", "model": "m", "kv_cache_tokens": 4096}"#);
        assert!(c.problems().is_empty());
    }

    #[test]
    fn identity_leaves_out_what_only_changes_speed() {
        let a = parse(
            r#"{"kind": "openai", "model": "m", "endpoints": ["http://a/v1"], "max_concurrency": 8}"#,
        );
        let b = parse(
            r#"{"kind": "openai", "model": "m", "endpoints": ["http://b/v1", "http://c/v1"]}"#,
        );
        assert_eq!(a.identity(), b.identity());
        let c = parse(r#"{"kind": "openai", "model": "n", "endpoints": ["http://a/v1"]}"#);
        assert_ne!(a.identity(), c.identity());
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
    }
}
