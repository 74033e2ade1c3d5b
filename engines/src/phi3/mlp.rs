//! Phi-3's MLP, `down(silu(gate) · up)` with the fused `gate_up` projection, for the forward
//! passes of prompts and of decode steps off the fused path.

use super::profile::Clock;
use super::proj::{dense, dense_forward, split_rows, Proj};
use super::Config;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

pub(super) struct Mlp {
    pub(super) gate_up_proj: Proj,
    /// The gate's and the up projection's rows of `gate_up_proj`, used apart when several rows
    /// go through (see `Attention::split`).
    pub(super) split: Option<Vec<Linear>>,
    pub(super) down_proj: Proj,
    pub(super) inter: usize,
}

impl Mlp {
    pub(super) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let gate_up_proj = dense(
            cfg.hidden_size,
            2 * cfg.intermediate_size,
            vb.pp("gate_up_proj"),
        )?;
        Ok(Mlp {
            split: split_rows(
                &gate_up_proj,
                &[cfg.intermediate_size, cfg.intermediate_size],
            )?,
            gate_up_proj,
            down_proj: dense(cfg.intermediate_size, cfg.hidden_size, vb.pp("down_proj"))?,
            inter: cfg.intermediate_size,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, clock: &mut Clock) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (gate, up) = match (&self.split, b * l > 1) {
            (Some(split), true) => (dense_forward(&split[0], x)?, dense_forward(&split[1], x)?),
            _ => {
                let gu = self.gate_up_proj.forward(x)?;
                (
                    gu.narrow(D::Minus1, 0, self.inter)?,
                    gu.narrow(D::Minus1, self.inter, self.inter)?,
                )
            }
        };
        clock.mark("gate_up_proj")?;
        let act = if crate::train_ops::fused(&gate) {
            crate::train_ops::silu_mul(&gate, &up)?
        } else {
            (up * candle_nn::ops::silu(&gate)?)?
        };
        clock.mark("silu_mul")?;
        let out = self.down_proj.forward(&act)?;
        clock.mark("down_proj")?;
        Ok(out)
    }
}
