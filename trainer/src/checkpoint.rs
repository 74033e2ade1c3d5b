//! Checkpoints and the final model folder.
//!
//! A checkpoint is a folder `OUT/checkpoints/step-NNNNNNNN/` with
//! - `model.safetensors`: the f32 master weights under Hugging Face's Phi-3 names, and
//!   `config.json`: the folder loads in `engines` (`Model::load`) and in transformers unchanged;
//! - `optimizer.safetensors`: AdamW's moments (`NAME.exp_avg`, `NAME.exp_avg_sq`), f32;
//! - `state.json`: steps done, AdamW's step count, the data position (sequences read, epoch),
//!   tokens trained on, and the settings.
//!
//! Every file is written atomically (`corpus::atomic`), then `OUT/checkpoints/latest` names the
//! folder: a crash leaves either the previous checkpoint or the new one as the latest, never half
//! of one. Resuming loads the weights, moments and position; as the data order is a function of
//! the seed and the position, the resumed run computes exactly what the uninterrupted one would.

use crate::optim::AdamW;
use crate::{Error, Result, TrainConfig};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Optimizer steps done.
    pub step: u64,
    /// AdamW's update count.
    pub adam_t: u64,
    /// Training sequences read so far (the data position).
    pub sequences: u64,
    /// The epoch the next sequence belongs to.
    pub epoch: u64,
    /// Tokens trained on so far.
    pub tokens: u64,
    pub vocab: u32,
    pub config: TrainConfig,
}

pub const LATEST: &str = "latest";

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The model's `config.json` text, as transformers writes Phi-3's.
pub fn config_json(cfg: &engines::phi3::Config) -> Result<String> {
    let mut v = serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "architectures".into(),
            serde_json::json!(["Phi3ForCausalLM"]),
        );
        o.insert("model_type".into(), "phi3".into());
        o.insert("torch_dtype".into(), "float32".into());
        o.insert("initializer_range".into(), 0.02.into());
        o.retain(|_, x| !x.is_null());
    }
    serde_json::to_string_pretty(&v).map_err(|e| Error::Config(e.to_string()))
}

fn safetensors_bytes(tensors: &[(String, Tensor)], path: &Path) -> Result<Vec<u8>> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let items: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize(items, Some(meta)).map_err(|e| Error::checkpoint(path, e))
}

/// Writes the model folder `dir`: `config.json` and `model.safetensors` (the f32 weights).
pub fn write_model(dir: &Path, cfg: &engines::phi3::Config, opt: &AdamW) -> Result<()> {
    let weights: Vec<(String, Tensor)> = opt
        .params
        .iter()
        .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
        .collect();
    let path = dir.join("model.safetensors");
    corpus::atomic::write(&path, &safetensors_bytes(&weights, &path)?)?;
    corpus::atomic::write(&dir.join("config.json"), config_json(cfg)?.as_bytes())?;
    Ok(())
}

/// Writes checkpoint `state.step` under `out` and makes it the latest; returns its folder.
pub fn save(
    out: &Path,
    cfg: &engines::phi3::Config,
    opt: &AdamW,
    state: &State,
) -> Result<PathBuf> {
    let name = format!("step-{:08}", state.step);
    let dir = checkpoints_dir(out).join(&name);
    write_model(&dir, cfg, opt)?;
    let mut moments = Vec::with_capacity(2 * opt.params.len());
    for p in &opt.params {
        let n = p.var.elem_count();
        let shape = p.var.shape().clone();
        moments.push((
            format!("{}.exp_avg", p.name),
            p.moments.narrow(0, 0, n)?.reshape(shape.clone())?,
        ));
        moments.push((
            format!("{}.exp_avg_sq", p.name),
            p.moments.narrow(0, n, n)?.reshape(shape)?,
        ));
    }
    let path = dir.join("optimizer.safetensors");
    corpus::atomic::write(&path, &safetensors_bytes(&moments, &path)?)?;
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::checkpoint(&dir, e))?;
    corpus::atomic::write(&dir.join("state.json"), text.as_bytes())?;
    corpus::atomic::write(&checkpoints_dir(out).join(LATEST), name.as_bytes())?;
    Ok(dir)
}

/// The latest checkpoint's folder under `out`, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let path = checkpoints_dir(out).join(LATEST);
    match std::fs::read_to_string(&path) {
        Ok(name) => {
            let name = name.trim();
            if name.is_empty() || name.contains('/') || name.contains("..") {
                return Err(Error::checkpoint(
                    &path,
                    format!("bad checkpoint name `{name}`"),
                ));
            }
            Ok(Some(checkpoints_dir(out).join(name)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Loads checkpoint `dir` into `opt` (weights and moments); returns its state.
pub fn load(dir: &Path, opt: &mut AdamW, device: &Device) -> Result<State> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: State =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(&state_path, e))?;
    let model_path = dir.join("model.safetensors");
    let weights = candle_core::safetensors::load(&model_path, device)
        .map_err(|e| Error::checkpoint(&model_path, e))?;
    let opt_path = dir.join("optimizer.safetensors");
    let moments = candle_core::safetensors::load(&opt_path, device)
        .map_err(|e| Error::checkpoint(&opt_path, e))?;
    for p in &mut opt.params {
        let get = |map: &HashMap<String, Tensor>, name: &str, path: &Path| -> Result<Tensor> {
            let t = map
                .get(name)
                .ok_or_else(|| Error::checkpoint(path, format!("no tensor `{name}`")))?;
            if t.shape() != p.var.shape() {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "`{name}` is {:?}, the model's is {:?}",
                        t.shape(),
                        p.var.shape()
                    ),
                ));
            }
            Ok(t.to_dtype(candle_core::DType::F32)?)
        };
        let w = get(&weights, &p.name, &model_path)?;
        let m = get(&moments, &format!("{}.exp_avg", p.name), &opt_path)?;
        let v = get(&moments, &format!("{}.exp_avg_sq", p.name), &opt_path)?;
        p.var.set(&w)?;
        p.moments = Tensor::cat(&[m.flatten_all()?, v.flatten_all()?], 0)?;
    }
    opt.t = state.adam_t;
    Ok(state)
}

/// Why checkpoint settings `saved` cannot continue as `now` (a different model, data order or
/// batch would not reproduce the run), or `None`.
pub fn incompatible(saved: &TrainConfig, now: &TrainConfig) -> Option<String> {
    let pick = |c: &TrainConfig| {
        (
            c.batch_size,
            c.sequence_length,
            c.accumulation,
            c.seed,
            c.shuffle,
            c.model.clone(),
            c.eval_every > 0,
            c.eval_batches,
        )
    };
    if pick(saved) != pick(now) {
        return Some(
            "the checkpoint's model, batch, sequence length, accumulation, seed, order or held-out \
             set differ from these settings"
                .into(),
        );
    }
    None
}
