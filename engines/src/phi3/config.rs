//! The model's shape, read from Hugging Face's `config.json`, and the shapes this
//! implementation refuses.

use candle_core::Result;
use serde::Deserialize;

/// The model's shape, as in `config.json` (keys the model does not use are ignored). Both
/// layouts of RoPE settings are read: `rope_theta` at the top (Phi-4's own file) and
/// `rope_parameters` (files written by transformers 5).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Long-context RoPE scaling (Phi-3-128k); not used by Phi-4, refused here.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

fn default_act() -> String {
    "silu".into()
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(r: RawConfig) -> std::result::Result<Config, String> {
        let params = r.rope_parameters.as_ref();
        let theta = r
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .ok_or("config.json has neither `rope_theta` nor `rope_parameters.rope_theta`")?;
        let mut rope_scaling = r.rope_scaling;
        if let Some(kind) = params
            .and_then(|p| p.get("rope_type"))
            .and_then(|v| v.as_str())
        {
            if kind != "default" {
                rope_scaling = params.cloned();
            }
        }
        let partial = r.partial_rotary_factor.or_else(|| {
            params
                .and_then(|p| p.get("partial_rotary_factor"))
                .and_then(|v| v.as_f64())
        });
        // `eos_token_id` may be a list; the first is the end of text.
        let eos = match r.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|v| v.as_u64()).map(|v| v as u32)
            }
            _ => None,
        };
        Ok(Config {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            num_key_value_heads: r.num_key_value_heads,
            rms_norm_eps: r.rms_norm_eps,
            rope_theta: theta,
            max_position_embeddings: r.max_position_embeddings,
            hidden_act: r.hidden_act,
            tie_word_embeddings: r.tie_word_embeddings,
            bos_token_id: r.bos_token_id,
            eos_token_id: eos,
            rope_scaling,
            partial_rotary_factor: partial,
        })
    }
}

impl Config {
    /// Phi-4: 40 layers, hidden 5120, 40 heads, 10 KV heads, RoPE θ 250,000, vocabulary 100,352,
    /// 16K context.
    pub fn phi4() -> Config {
        Config {
            vocab_size: 100_352,
            hidden_size: 5120,
            intermediate_size: 17_920,
            num_hidden_layers: 40,
            num_attention_heads: 40,
            num_key_value_heads: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 250_000.0,
            max_position_embeddings: 16_384,
            hidden_act: "silu".into(),
            tie_word_embeddings: false,
            bos_token_id: Some(100_257),
            eos_token_id: Some(100_265),
            rope_scaling: None,
            partial_rotary_factor: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Refuses shapes this implementation does not compute.
    pub fn check(&self) -> Result<()> {
        if self.hidden_act != "silu" {
            candle_core::bail!(
                "hidden_act `{}` is not supported (Phi-3/Phi-4 use silu)",
                self.hidden_act
            )
        }
        if self.rope_scaling.is_some() {
            candle_core::bail!("rope_scaling (long-context Phi-3) is not supported; Phi-4 has none")
        }
        if self.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            candle_core::bail!("partial_rotary_factor is not supported")
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            candle_core::bail!("heads must divide the hidden size, and KV heads the heads")
        }
        Ok(())
    }
}
