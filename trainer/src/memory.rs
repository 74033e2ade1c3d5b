//! Refusing a run that cannot fit, before any work: an estimate of what training holds at its
//! peak against the memory the device has free.
//!
//! The estimate counts the f32 master weights, their f32 gradients (twice with accumulation), the
//! two f32 moments, the compute copy and its gradients in bf16 runs, the activations the backward
//! pass keeps for one micro-batch (per layer: the projections' inputs and outputs, the rotated
//! queries and keys, the attention scores and probabilities in f32, the MLP's intermediates; then
//! the logits, their f32 copy and their gradient), the token data, and a fifth more for the
//! allocator and temporaries. It is a rough upper bound, meant to catch the ten-times-too-big run,
//! not to pack memory tightly.

use crate::{Error, Result, TrainConfig};
use candle_core::Device;

/// Bytes a run needs, by part.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub params: u64,
    pub weights_and_optimizer: u64,
    pub activations: u64,
    pub logits: u64,
    pub data: u64,
    pub total: u64,
}

/// The estimate for `cfg` with vocabulary `vocab` and `data_tokens` tokens held in memory.
pub fn estimate(cfg: &TrainConfig, vocab: usize, data_tokens: u64) -> Estimate {
    let m = &cfg.model;
    let mc = cfg.model_config(vocab);
    let params: u64 = engines::phi3::parameters(&mc)
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>() as u64)
        .sum();
    let bf16 = cfg.dtype == crate::config::TrainDtype::Bf16;
    let act = if bf16 { 2 } else { 4 };
    // master + grads (+ accumulated grads) + 2 moments + (bf16 copy + its grads)
    let grads = if cfg.accumulation > 1 { 8 } else { 4 };
    let weights_and_optimizer = params * (4 + grads + 8) + if bf16 { params * 4 } else { 0 };
    let (b, l) = (cfg.batch_size as u64, cfg.sequence_length as u64);
    let n = b * l;
    let (h, hd) = (
        m.num_attention_heads as u64,
        (m.hidden_size / m.num_attention_heads.max(1)) as u64,
    );
    let kvh = m.num_key_value_heads as u64;
    let (hs, inter) = (m.hidden_size as u64, m.intermediate_size as u64);
    let per_layer =
        n * (12 * hs + 4 * (h + 2 * kvh) * hd + 6 * inter) * act + b * h * l * l * (4 * 4 + act);
    let activations = per_layer * m.num_hidden_layers as u64 + n * hs * 4 * act;
    let logits = n * vocab as u64 * (act + 4 + 4 + 4);
    let data = data_tokens * 5;
    let total = (weights_and_optimizer + activations + logits + data) * 6 / 5;
    Estimate {
        params,
        weights_and_optimizer,
        activations,
        logits,
        data,
        total,
    }
}

/// Bytes free on `device`: `MemAvailable` of /proc/meminfo on the CPU, the driver's free memory
/// on a GPU; `None` when unknown (then nothing is refused).
pub fn available(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        Device::Cpu => {
            let text = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Refuses the run when the estimate exceeds what `device` has free (`available` overrides the
/// measurement, for tests).
pub fn check(
    cfg: &TrainConfig,
    vocab: usize,
    data_tokens: u64,
    device: &Device,
    available_bytes: Option<u64>,
) -> Result<Estimate> {
    let e = estimate(cfg, vocab, data_tokens);
    let Some(free) = available_bytes.or_else(|| available(device)) else {
        tracing::warn!("free memory unknown on {device:?}: not checked");
        return Ok(e);
    };
    const GIB: f64 = (1u64 << 30) as f64;
    tracing::info!(
        "memory: about {:.2} GiB needed, {:.2} GiB free",
        e.total as f64 / GIB,
        free as f64 / GIB
    );
    if e.total > free {
        return Err(Error::TooLarge {
            device: if device.is_cpu() {
                "the CPU".into()
            } else {
                "the GPU".into()
            },
            needed_gib: e.total as f64 / GIB,
            available_gib: free as f64 / GIB,
            detail: format!(
                "{} parameters: {:.2} GiB of weights, gradients and AdamW moments; {:.2} GiB of \
                 activations and {:.2} GiB of logits for a batch of {}×{} tokens",
                e.params,
                e.weights_and_optimizer as f64 / GIB,
                e.activations as f64 / GIB,
                e.logits as f64 / GIB,
                cfg.batch_size,
                cfg.sequence_length
            ),
        });
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelShape;

    #[test]
    fn a_phi4_sized_run_is_refused_with_the_numbers() {
        let cfg = TrainConfig {
            model: ModelShape {
                hidden_size: 5120,
                num_hidden_layers: 40,
                num_attention_heads: 40,
                num_key_value_heads: 10,
                intermediate_size: 17_920,
                ..ModelShape::default()
            },
            sequence_length: 4096,
            ..TrainConfig::default()
        };
        let e = check(&cfg, 100_352, 0, &Device::Cpu, Some(24 << 30)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("GiB is available") && msg.contains("parameters"),
            "{msg}"
        );
        let est = estimate(&cfg, 100_352, 0);
        assert!(
            est.params > 14_000_000_000 && est.params < 15_000_000_000,
            "{}",
            est.params
        );
    }

    #[test]
    fn the_tiny_model_fits() {
        let e = check(
            &TrainConfig::default(),
            8192,
            1_000_000,
            &Device::Cpu,
            Some(8 << 30),
        )
        .unwrap();
        assert!(e.total < 1 << 30);
        assert!(available(&Device::Cpu).is_some_and(|b| b > 0));
    }
}
