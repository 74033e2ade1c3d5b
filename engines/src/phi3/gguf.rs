//! Loading a GGUF file of the `phi3` architecture (llama.cpp's tensor names) into the model.

use super::{Attention, Config, Layer, Mlp, Model, Proj};
use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Result};
use candle_nn::{Embedding, Linear, RmsNorm};

impl Model {
    /// Loads a GGUF file of the `phi3` architecture (llama.cpp's tensor names), keeping quantized
    /// weights quantized (for CPU use); norms and embeddings are dequantized to f32.
    pub fn from_gguf(
        path: &std::path::Path,
        device: &Device,
        slots: usize,
        context: usize,
    ) -> Result<Model> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let ct = gguf_file::Content::read(&mut file).map_err(|e| e.with_path(path))?;
        let md = |k: &str| {
            ct.metadata.get(k).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: no `{k}` in the metadata", path.display()))
            })
        };
        let arch = md("general.architecture")?.to_string()?.clone();
        if arch != "phi3" {
            candle_core::bail!("{}: architecture `{arch}`, expected phi3", path.display())
        }
        let embd = ct.tensor(&mut file, "token_embd.weight", device)?;
        let (vocab, hidden) = embd.shape().dims2()?;
        let cfg = Config {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: md("phi3.feed_forward_length")?.to_u32()? as usize,
            num_hidden_layers: md("phi3.block_count")?.to_u32()? as usize,
            num_attention_heads: md("phi3.attention.head_count")?.to_u32()? as usize,
            num_key_value_heads: md("phi3.attention.head_count_kv")?.to_u32()? as usize,
            rms_norm_eps: md("phi3.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_theta: ct
                .metadata
                .get("phi3.rope.freq_base")
                .map(|v| v.to_f32())
                .transpose()?
                .unwrap_or(10_000.0) as f64,
            max_position_embeddings: md("phi3.context_length")?.to_u32()? as usize,
            hidden_act: "silu".into(),
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            partial_rotary_factor: None,
        };
        cfg.check()?;
        let mut get = |name: &str| ct.tensor(&mut file, name, device);
        let quant = |t: candle_core::quantized::QTensor| -> Result<Proj> {
            Ok(Proj::Quant(QMatMul::from_qtensor(t)?))
        };
        let norm = |t: candle_core::quantized::QTensor| -> Result<RmsNorm> {
            Ok(RmsNorm::new(t.dequantize(device)?, cfg.rms_norm_eps))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn: Attention {
                    qkv_proj: quant(get(&format!("{p}.attn_qkv.weight"))?)?,
                    split: None,
                    o_proj: quant(get(&format!("{p}.attn_output.weight"))?)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim(),
                },
                mlp: Mlp {
                    gate_up_proj: quant(get(&format!("{p}.ffn_up.weight"))?)?,
                    split: None,
                    down_proj: quant(get(&format!("{p}.ffn_down.weight"))?)?,
                    inter: cfg.intermediate_size,
                },
                input_layernorm: norm(get(&format!("{p}.attn_norm.weight"))?)?,
                post_attention_layernorm: norm(get(&format!("{p}.ffn_norm.weight"))?)?,
            });
        }
        let output_norm = norm(get("output_norm.weight")?)?;
        let embeddings = embd.dequantize(device)?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::Dense(Linear::new(embeddings.clone(), None))
        } else {
            quant(get("output.weight")?)?
        };
        let embed_tokens = Embedding::new(embeddings, hidden);
        Model::assemble(
            &cfg,
            embed_tokens,
            layers,
            output_norm,
            lm_head,
            DType::F32,
            device,
            slots,
            context,
        )
    }
}
