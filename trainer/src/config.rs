//! The training settings: the recipe's `train:` section.
//!
//! Every field has a default, so `train: {steps: 1000}` is a whole section. The model's shape is
//! nested under `model:`; its vocabulary is the mix's tokenizer's, read from the manifest.
//!
//! ```
//! let cfg: trainer::TrainConfig = serde_json::from_str(r#"{"steps": 10, "dtype": "bf16"}"#).unwrap();
//! assert_eq!(cfg.batch_size, 8);
//! cfg.check().unwrap();
//! ```

use crate::{Error, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// Training on the mixed token shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: u32,
    /// Tokens per sequence (each sequence reads one more token, for the last target).
    pub sequence_length: u32,
    /// The peak learning rate, reached after the warmup.
    pub learning_rate: f64,
    /// The learning rate the cosine decay ends at (on the last step).
    pub min_lr: f64,
    /// Steps of linear warmup from 0 to `learning_rate`.
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay, applied to matrices only (not to norms).
    pub weight_decay: f64,
    /// AdamW's β1 and β2.
    pub betas: [f64; 2],
    /// AdamW's ε.
    pub eps: f64,
    /// Clips gradients to this global L2 norm; 0 turns clipping off.
    pub grad_clip: f64,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accumulation: u32,
    /// Measures the held-out loss every N steps (and after the last); 0: never, and nothing is
    /// held out.
    pub eval_every: u64,
    /// Held-out batches (of `batch_size` sequences): the last sequences of the mix.
    pub eval_batches: u32,
    /// Writes a checkpoint every N steps; 0: only at the end.
    pub checkpoint_every: u64,
    /// Seeds the initial weights and the order of the sequences.
    pub seed: u64,
    /// Shuffles the sequences (a seeded permutation per epoch); `false` reads them in order.
    pub shuffle: bool,
    /// The computing dtype; master weights and optimizer moments stay f32.
    pub dtype: TrainDtype,
    pub device: DeviceChoice,
    /// CPU threads (default: all cores).
    pub threads: Option<usize>,
    pub model: ModelShape,
    /// The output folder, relative to the recipe; default `<output.path>/train`.
    pub output: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 8,
            sequence_length: 256,
            learning_rate: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 100,
            weight_decay: 0.1,
            betas: [0.9, 0.95],
            eps: 1e-8,
            grad_clip: 1.0,
            accumulation: 1,
            eval_every: 100,
            eval_batches: 4,
            checkpoint_every: 500,
            seed: 0,
            shuffle: true,
            dtype: TrainDtype::F32,
            device: DeviceChoice::Auto,
            threads: None,
            model: ModelShape::default(),
            output: None,
        }
    }
}

/// The Phi-3 model's shape, without the vocabulary (the tokenizer's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelShape {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl Default for ModelShape {
    /// A tiny model (the benchmark's): hidden 256, 4 layers, 4 heads, 2 KV heads.
    fn default() -> Self {
        ModelShape {
            hidden_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 512,
            rope_theta: 250_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDtype {
    F32,
    Bf16,
}

impl TrainDtype {
    pub fn dtype(self) -> DType {
        match self {
            TrainDtype::F32 => DType::F32,
            TrainDtype::Bf16 => DType::BF16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// The first CUDA device when this build has CUDA and one is present, else the CPU.
    Auto,
}

impl DeviceChoice {
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Config(
                        "device cuda: this phiforge was built without the `cuda` feature".into(),
                    ));
                }
                Ok(Device::new_cuda(0)?)
            }
            DeviceChoice::Auto => Ok(Device::cuda_if_available(0)?),
        }
    }
}

impl TrainConfig {
    /// Refuses settings that cannot train (all problems at once).
    pub fn check(&self) -> Result<()> {
        let mut bad = Vec::new();
        let m = &self.model;
        if self.steps == 0 {
            bad.push("steps must be at least 1".to_string());
        }
        if self.batch_size == 0 || self.sequence_length == 0 || self.accumulation == 0 {
            bad.push("batch_size, sequence_length and accumulation must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            bad.push(format!(
                "learning_rate {} must be above 0",
                self.learning_rate
            ));
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.learning_rate) {
            bad.push(format!(
                "min_lr {} must be between 0 and learning_rate",
                self.min_lr
            ));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bad.push(format!("betas {:?} must be in [0, 1)", self.betas));
        }
        if self.eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || self.weight_decay < 0.0
            || self.grad_clip < 0.0
        {
            bad.push("eps must be above 0; weight_decay and grad_clip 0 or more".into());
        }
        if self.eval_every > 0 && self.eval_batches == 0 {
            bad.push("eval_every needs eval_batches of at least 1".into());
        }
        if self.threads == Some(0) {
            bad.push("threads must be at least 1".into());
        }
        if m.hidden_size == 0 || m.num_hidden_layers == 0 || m.num_attention_heads == 0 {
            bad.push("the model needs a hidden size, layers and heads".into());
        } else if !m.hidden_size.is_multiple_of(m.num_attention_heads)
            || m.num_key_value_heads == 0
            || !m.num_attention_heads.is_multiple_of(m.num_key_value_heads)
        {
            bad.push(format!(
                "heads ({}) must divide hidden_size ({}), and KV heads ({}) the heads",
                m.num_attention_heads, m.hidden_size, m.num_key_value_heads
            ));
        } else if !(m.hidden_size / m.num_attention_heads).is_multiple_of(2) {
            bad.push("the head size (hidden_size / heads) must be even for RoPE".into());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(bad.join("; ")))
        }
    }

    /// The model's `config.json` for a vocabulary of `vocab` (the context is the sequence length).
    pub fn model_config(&self, vocab: usize) -> engines::phi3::Config {
        let m = &self.model;
        engines::phi3::Config {
            vocab_size: vocab,
            hidden_size: m.hidden_size,
            intermediate_size: m.intermediate_size,
            num_hidden_layers: m.num_hidden_layers,
            num_attention_heads: m.num_attention_heads,
            num_key_value_heads: m.num_key_value_heads,
            rms_norm_eps: m.rms_norm_eps,
            rope_theta: m.rope_theta,
            max_position_embeddings: self.sequence_length as usize,
            hidden_act: "silu".into(),
            tie_word_embeddings: m.tie_word_embeddings,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            partial_rotary_factor: None,
        }
    }

    /// Sequences per optimizer step.
    pub fn sequences_per_step(&self) -> u64 {
        self.batch_size as u64 * self.accumulation as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trip_and_defaults() {
        let cfg = TrainConfig {
            steps: 7,
            dtype: TrainDtype::Bf16,
            device: DeviceChoice::Cpu,
            threads: Some(2),
            output: Some("x".into()),
            ..TrainConfig::default()
        };
        let text = serde_json::to_string(&cfg).unwrap();
        let back: TrainConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let small: TrainConfig = serde_json::from_str(r#"{"steps": 3}"#).unwrap();
        assert_eq!(small.steps, 3);
        assert_eq!(small.model, ModelShape::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<TrainConfig>(r#"{"stepz": 3}"#).is_err());
        assert!(serde_json::from_str::<TrainConfig>(r#"{"model": {"hiden_size": 3}}"#).is_err());
        let bad = TrainConfig {
            steps: 0,
            min_lr: 1.0,
            model: ModelShape {
                num_key_value_heads: 3,
                ..ModelShape::default()
            },
            ..TrainConfig::default()
        };
        let msg = bad.check().unwrap_err().to_string();
        assert!(msg.contains("steps") && msg.contains("min_lr") && msg.contains("KV heads"));
    }
}
