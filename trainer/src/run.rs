//! The training loop and its outputs.
//!
//! [`Trainer::step`] is one optimizer step: `accumulation` micro-batches, each a forward pass of
//! [`engines::phi3::Model::forward_train_hidden`] on the f32 master weights (or their bf16 copy),
//! the output projection and masked cross-entropy in one operation
//! ([`crate::loss::linear_cross_entropy`]) divided by the step's count of targets (so the
//! accumulated gradients are exactly one big batch's), backward; then the global gradient norm, the clipping factor, the
//! scheduled learning rate and an AdamW update. [`Trainer::run`] loops to `steps`, measuring the
//! held-out loss every `eval_every` steps, writing a checkpoint every `checkpoint_every`, and
//! leaves in the output folder:
//!
//! - `metrics.jsonl`: one line per step (`step`, `lr`, `loss`, `grad_norm`, `tokens`,
//!   `tokens_per_s`, and `eval_loss` when measured);
//! - `loss.svg`: the loss curve;
//! - `model/`: the final model (`config.json`, `model.safetensors`, and `tokenizer.json` when the
//!   mix's tokenizer is one), which `engines` loads as any Hugging Face Phi-3 folder;
//! - `checkpoints/`: see [`crate::checkpoint`].

use crate::checkpoint::{self, State};
use crate::data::{self, Loader, TokenData};
use crate::loss::linear_cross_entropy;
use crate::optim::{self, AdamW, AdamWSettings};
use crate::{memory, Error, Result, TrainConfig};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use engines::phi3::{init_varmap, parameters, Model};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One step's figures (a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: u64,
    pub lr: f64,
    pub loss: f32,
    pub grad_norm: f64,
    /// Tokens trained on so far.
    pub tokens: u64,
    pub tokens_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f32>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: u64,
    pub last_loss: f32,
    pub last_eval_loss: Option<f32>,
    pub tokens: u64,
    /// Tokens per second over the steps this run did.
    pub tokens_per_s: f64,
    pub model_dir: PathBuf,
}

/// Progress reports of a run.
pub trait Progress {
    fn begin(&self, _done: u64, _total: u64) {}
    fn step(&self, _s: &StepStats) {}
    fn end(&self) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// A progress bar on stderr with tokens/s and the loss.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        Bar(bar)
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn begin(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
    fn step(&self, s: &StepStats) {
        self.0.set_position(s.step);
        let eval = s
            .eval_loss
            .map(|e| format!(", held-out {e:.4}"))
            .unwrap_or_default();
        self.0.set_message(format!(
            "loss {:.4}{eval}, {:.0} tokens/s",
            s.loss, s.tokens_per_s
        ));
    }
    fn end(&self) {
        self.0.finish();
    }
}

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    model_cfg: engines::phi3::Config,
    device: Device,
    vars: VarMap,
    opt: AdamW,
    loader: Loader,
    out: PathBuf,
    state: State,
    tokenizer_json: Option<PathBuf>,
    history: Vec<StepStats>,
}

impl Trainer {
    /// Reads the mix manifest at `manifest` (the file or its folder), checks every file against
    /// it, and prepares a run writing to `out` (continuing its latest checkpoint with `resume`).
    pub fn from_manifest(
        cfg: &TrainConfig,
        manifest: &Path,
        out: &Path,
        resume: bool,
    ) -> Result<Trainer> {
        cfg.check()?;
        let m = mixes::manifest::Manifest::read(manifest)?;
        let dir = if manifest.is_dir() {
            manifest.to_path_buf()
        } else {
            manifest.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let data = data::load_manifest(&m, &dir)?;
        let mut t = Trainer::new(cfg, data, out, resume)?;
        let name = Path::new(&m.tokenizer.name);
        if name.extension().is_some_and(|e| e == "json") {
            let path = if name.is_absolute() || name.exists() {
                name.to_path_buf()
            } else {
                dir.join(name)
            };
            if path.is_file() {
                t.tokenizer_json = Some(path);
            }
        }
        Ok(t)
    }

    /// Prepares a run on `data`: refuses settings, data or memory that cannot train before
    /// any work, then initialises the model from the seed or loads the latest checkpoint.
    pub fn new(cfg: &TrainConfig, data: TokenData, out: &Path, resume: bool) -> Result<Trainer> {
        cfg.check()?;
        if let Some(n) = cfg.threads {
            // Fails when the pool exists already (a second run in one process): keep it.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        let device = cfg.device.device()?;
        let vocab = data.vocab as usize;
        memory::check(cfg, vocab, data.tokens.len() as u64, &device, None)?;
        let loader = Loader::new(data, cfg)?;
        let model_cfg = cfg.model_config(vocab);
        let vars = init_varmap(&model_cfg, cfg.seed, &device)?;
        let named = {
            let map = vars
                .data()
                .lock()
                .map_err(|_| Error::Config("poisoned variable map".into()))?;
            parameters(&model_cfg)
                .into_iter()
                .map(|(name, _, _)| {
                    let var = map.get(&name).cloned().ok_or_else(|| {
                        Error::Config(format!("the model has no parameter `{name}`"))
                    })?;
                    Ok((name, var))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let settings = AdamWSettings {
            beta1: cfg.betas[0],
            beta2: cfg.betas[1],
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        };
        let opt = AdamW::new(named, settings)?;
        let mut t = Trainer {
            state: State {
                step: 0,
                adam_t: 0,
                sequences: 0,
                epoch: 0,
                tokens: 0,
                vocab: vocab as u32,
                config: cfg.clone(),
            },
            cfg: cfg.clone(),
            model_cfg,
            device,
            vars,
            opt,
            loader,
            out: out.to_path_buf(),
            tokenizer_json: None,
            history: Vec::new(),
        };
        match (checkpoint::latest(out)?, resume) {
            (Some(dir), true) => t.resume_from(&dir)?,
            (Some(dir), false) => {
                return Err(Error::checkpoint(
                    dir,
                    "the output folder holds a run already: resume it, or remove the folder",
                ))
            }
            (None, true) => tracing::warn!("{}: no checkpoint to resume, starting", out.display()),
            (None, false) => {}
        }
        Ok(t)
    }

    fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let state = checkpoint::load(dir, &mut self.opt, &self.device)?;
        if let Some(why) = checkpoint::incompatible(&state.config, &self.cfg) {
            return Err(Error::checkpoint(dir, why));
        }
        if state.vocab != self.state.vocab {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "vocabulary {}, the data's is {}",
                    state.vocab, self.state.vocab
                ),
            ));
        }
        if state.config.steps != self.cfg.steps {
            tracing::warn!(
                "steps {} → {}: the learning-rate schedule changes from here",
                state.config.steps,
                self.cfg.steps
            );
        }
        tracing::info!("resuming {} at step {}", dir.display(), state.step);
        self.state = State {
            config: self.cfg.clone(),
            ..state
        };
        // Metrics past the checkpoint belong to steps that will be done again.
        let path = self.out.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&path) {
            self.history = text
                .lines()
                .filter_map(|l| serde_json::from_str::<StepStats>(l).ok())
                .filter(|s| s.step <= self.state.step)
                .collect();
            let mut kept = String::new();
            for s in &self.history {
                kept.push_str(&serde_json::to_string(s).map_err(|e| Error::checkpoint(&path, e))?);
                kept.push('\n');
            }
            corpus::atomic::write(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> u64 {
        self.state.step
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The number of parameters.
    pub fn parameter_count(&self) -> u64 {
        self.opt
            .params
            .iter()
            .map(|p| p.var.elem_count() as u64)
            .sum()
    }

    fn model(&self) -> Result<Model> {
        Ok(Model::from_varmap(
            &self.model_cfg,
            &self.vars,
            self.cfg.dtype.dtype(),
        )?)
    }

    /// One optimizer step; returns its figures (not written anywhere).
    pub fn step(&mut self) -> Result<StepStats> {
        let start = Instant::now();
        let (b, accum) = (self.cfg.batch_size as u64, self.cfg.accumulation as u64);
        let batches: Vec<data::Batch> = (0..accum)
            .map(|m| self.loader.train_batch(self.state.sequences + m * b))
            .collect();
        let denom: f32 = batches.iter().map(data::Batch::counted).sum();
        let model = self.model()?;
        let mut grads: Option<Vec<Tensor>> = None;
        let mut loss = 0f32;
        for batch in &batches {
            let ids = Tensor::from_slice(&batch.inputs, (batch.rows, batch.len), &self.device)?;
            let hidden = model.forward_train_hidden(&ids)?;
            let l = linear_cross_entropy(
                &hidden,
                model.output_weight()?,
                &batch.targets,
                &batch.weights,
                denom,
            )?;
            loss += l.to_scalar::<f32>()?;
            let store = l.backward()?;
            let g = self
                .opt
                .params
                .iter()
                .map(|p| match store.get(p.var.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => Ok(p.var.as_tensor().zeros_like()?),
                })
                .collect::<Result<Vec<_>>>()?;
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| Ok((a + b)?))
                    .collect::<Result<Vec<_>>>()?,
            });
        }
        drop(model);
        let step = self.state.step;
        if !loss.is_finite() {
            return Err(Error::Diverged {
                step: step + 1,
                loss,
            });
        }
        let grads = grads.unwrap_or_default();
        let norm = optim::global_norm(&grads)?;
        let c = &self.cfg;
        let lr = optim::learning_rate(step, c.steps, c.warmup_steps, c.learning_rate, c.min_lr);
        self.opt
            .step(&grads, lr, optim::clip_factor(norm, c.grad_clip))?;
        let tokens = accum * b * c.sequence_length as u64;
        self.state.step += 1;
        self.state.adam_t = self.opt.t;
        self.state.sequences += accum * b;
        self.state.epoch = self.state.sequences / self.loader.train_sequences();
        self.state.tokens += tokens;
        Ok(StepStats {
            step: self.state.step,
            lr,
            loss,
            grad_norm: norm,
            tokens: self.state.tokens,
            tokens_per_s: tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
            eval_loss: None,
        })
    }

    /// The mean loss over the held-out sequences (`None` when nothing is held out).
    pub fn eval(&self) -> Result<Option<f32>> {
        let n = self.loader.eval_sequences() / self.cfg.batch_size as u64;
        if n == 0 {
            return Ok(None);
        }
        let model = self.model()?;
        let batches: Vec<data::Batch> = (0..n).map(|j| self.loader.eval_batch(j)).collect();
        let denom: f32 = batches.iter().map(data::Batch::counted).sum();
        let mut loss = 0f32;
        for batch in &batches {
            let ids = Tensor::from_slice(&batch.inputs, (batch.rows, batch.len), &self.device)?;
            let hidden = model.forward_train_hidden(&ids)?.detach();
            let weight = model.output_weight()?.detach();
            loss += linear_cross_entropy(&hidden, &weight, &batch.targets, &batch.weights, denom)?
                .to_scalar::<f32>()?;
        }
        Ok(Some(loss))
    }

    /// Trains until `steps` (or `stop_after` steps done, for tests of resuming), writing the
    /// outputs; the final model only when all steps are done.
    pub fn run_until(&mut self, stop_after: u64, progress: &dyn Progress) -> Result<Summary> {
        let total = self.cfg.steps;
        let stop = stop_after.min(total);
        std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        let metrics_path = self.out.join("metrics.jsonl");
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        tracing::info!(
            "training {} parameters on {} sequences ({} held out), steps {}..{}",
            self.parameter_count(),
            self.loader.train_sequences(),
            self.loader.eval_sequences(),
            self.state.step,
            total
        );
        progress.begin(self.state.step, total);
        let (start, first_tokens) = (Instant::now(), self.state.tokens);
        while self.state.step < stop {
            let mut s = self.step()?;
            let n = s.step;
            let c = &self.cfg;
            if c.eval_every > 0 && (n % c.eval_every == 0 || n == total) {
                s.eval_loss = self.eval()?;
                tracing::info!("step {n}: loss {:.4}, held-out {:?}", s.loss, s.eval_loss);
            }
            let line = serde_json::to_string(&s).map_err(|e| Error::Config(e.to_string()))?;
            writeln!(metrics, "{line}")
                .and_then(|_| metrics.flush())
                .map_err(|e| Error::io(&metrics_path, e))?;
            progress.step(&s);
            self.history.push(s);
            let every = self.cfg.checkpoint_every;
            if (every > 0 && n % every == 0) || n == stop {
                let dir = checkpoint::save(&self.out, &self.model_cfg, &self.opt, &self.state)?;
                tracing::info!("checkpoint {}", dir.display());
                self.write_plot()?;
            }
        }
        progress.end();
        let model_dir = self.out.join("model");
        if self.state.step >= total {
            checkpoint::write_model(&model_dir, &self.model_cfg, &self.opt)?;
            if let Some(tok) = &self.tokenizer_json {
                let body = std::fs::read(tok).map_err(|e| Error::io(tok, e))?;
                corpus::atomic::write(&model_dir.join("tokenizer.json"), &body)?;
            }
        }
        self.write_plot()?;
        let last = self.history.last();
        Ok(Summary {
            steps: self.state.step,
            last_loss: last.map_or(f32::NAN, |s| s.loss),
            last_eval_loss: self.history.iter().rev().find_map(|s| s.eval_loss),
            tokens: self.state.tokens,
            tokens_per_s: (self.state.tokens - first_tokens) as f64
                / start.elapsed().as_secs_f64().max(1e-9),
            model_dir,
        })
    }

    /// Trains to `steps`; see [`Trainer::run_until`].
    pub fn run(&mut self, progress: &dyn Progress) -> Result<Summary> {
        self.run_until(u64::MAX, progress)
    }

    /// The losses of every step so far (this run's and, after a resume, the earlier ones').
    pub fn history(&self) -> &[StepStats] {
        &self.history
    }

    fn write_plot(&self) -> Result<()> {
        let train: Vec<(u64, f32)> = self.history.iter().map(|s| (s.step, s.loss)).collect();
        let eval: Vec<(u64, f32)> = self
            .history
            .iter()
            .filter_map(|s| s.eval_loss.map(|e| (s.step, e)))
            .collect();
        corpus::atomic::write(
            &self.out.join("loss.svg"),
            crate::plot::loss_svg(&train, &eval).as_bytes(),
        )?;
        Ok(())
    }
}
