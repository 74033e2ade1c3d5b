//! CUDA graphs of the fused decode step (`cuda` feature).
//!
//! A Phi-4 decode step at batch 1 is some 290 kernel launches, each a few microseconds of host
//! work and a gap on the GPU. A CUDA graph records one step's launches once and replays them with
//! one call. The step's inputs (token ids, positions) live in buffers the graph reads, refilled
//! before each replay; its logits are copied into a buffer that outlives the graph; every launch
//! takes the same arguments at every step (the attention kernel finds its split of the positions
//! on the device). A graph is recorded per batch shape (first slot, number of sequences) the first
//! time that shape decodes, and trusted only once its replays have reproduced, bit for bit, the
//! logits of the same steps run directly: the recorded step, and the next one (other ids and
//! positions, so the inputs are seen to be refilled). Otherwise that shape stays on direct
//! launches, and why is reported ([`summary`]).

use crate::kernels::cuda::{copy_into, upload_u32};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Largest batch recorded: beyond it a step's kernels are long enough that launches matter
/// little.
pub const MAX_BATCH: usize = 8;

/// `CudaGraph` holds raw driver handles. A model, and so its graphs, is used by one thread at a
/// time (it is moved to the engine's scheduler thread, or borrowed mutably), which is all the
/// driver asks of a graph.
struct SendGraph(CudaGraph);
// SAFETY: see above.
unsafe impl Send for SendGraph {}

/// One recorded decode step.
pub struct DecodeGraph {
    graph: SendGraph,
    /// The inputs the graph reads: token ids and positions (u32, one per sequence).
    ids: Tensor,
    positions: Tensor,
    /// Where the graph leaves the logits (b, vocab), f32.
    out: Tensor,
}

impl DecodeGraph {
    /// Fills the inputs, replays the step, and returns a copy of its logits.
    pub fn replay(&self, ids: &[u32], positions: &[u32]) -> Result<Tensor> {
        upload_u32(&self.ids, ids)?;
        upload_u32(&self.positions, positions)?;
        self.graph
            .0
            .launch()
            .map_err(|e| candle_core::Error::Msg(format!("replaying a CUDA graph: {e:?}")))?;
        REPLAYS.fetch_add(1, Ordering::Relaxed);
        self.out.copy()
    }
}

/// What a batch shape uses.
enum Slot {
    /// Recorded, and its first replay matched the step it recorded; the next step is run both
    /// ways too (new ids and positions: the inputs are refilled) before the graph is trusted.
    Probation(DecodeGraph),
    Ready(DecodeGraph),
    /// Recording failed or did not reproduce the direct step: direct launches.
    Direct,
}

/// The graphs of one model, by (first slot, sequences).
pub struct Graphs {
    enabled: bool,
    slots: HashMap<(usize, usize), Slot>,
}

static RECORDED: AtomicU64 = AtomicU64::new(0);
static REPLAYS: AtomicU64 = AtomicU64::new(0);
static REFUSED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What the graphs did so far, for reports: how many were recorded and replayed, and why any
/// batch shape was left to direct launches.
pub fn summary() -> Vec<String> {
    let mut out = vec![format!(
        "{} recorded and verified, {} replays",
        RECORDED.load(Ordering::Relaxed),
        REPLAYS.load(Ordering::Relaxed)
    )];
    if let Ok(r) = REFUSED.lock() {
        out.extend(r.iter().cloned());
    }
    out
}

fn refuse(key: (usize, usize), why: String) -> Slot {
    tracing::warn!(
        "decode step of {} sequence(s) from slot {}: no CUDA graph ({why}); direct launches",
        key.1,
        key.0
    );
    if let Ok(mut r) = REFUSED.lock() {
        r.push(format!("batch {} from slot {}: {why}", key.1, key.0));
    }
    Slot::Direct
}

impl Graphs {
    pub fn new(enabled: bool) -> Graphs {
        Graphs {
            enabled,
            slots: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Turns recording on or off; either way the recorded graphs are dropped.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        self.slots.clear();
    }

    /// Drops every graph (the step they recorded changed: other kernels, say).
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// The step for `ids` at `positions` through this shape's graph: replayed, or recorded now
    /// (with `step`, which runs the step directly on the input tensors it is given). `None`: this
    /// shape runs directly (the caller does).
    pub fn run(
        &mut self,
        device: &Device,
        first: usize,
        ids: &[u32],
        positions: &[u32],
        step: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        let b = ids.len();
        // Decode passes run the active sequences from slot 0; other first slots are one-token
        // prompts joining, too rare to be worth a recording.
        if !self.enabled || first != 0 || b == 0 || b > MAX_BATCH || !device.is_cuda() {
            return Ok(None);
        }
        let key = (first, b);
        match self.slots.remove(&key) {
            Some(Slot::Ready(g)) => {
                let out = g.replay(ids, positions);
                self.slots.insert(key, Slot::Ready(g));
                return out.map(Some);
            }
            Some(Slot::Direct) => {
                self.slots.insert(key, Slot::Direct);
                return Ok(None);
            }
            Some(Slot::Probation(g)) => {
                // The step directly, then again through the graph (it rewrites the same cache
                // entries with the same values): they must agree exactly.
                let direct = step(&Tensor::new(ids, device)?, &Tensor::new(positions, device)?)?;
                let slot = match g.replay(ids, positions) {
                    Err(e) => refuse(key, format!("the second replay failed: {e}")),
                    Ok(replayed) if same_bits(&direct, &replayed)? => {
                        RECORDED.fetch_add(1, Ordering::Relaxed);
                        Slot::Ready(g)
                    }
                    Ok(_) => refuse(
                        key,
                        "the second replay's logits differ from the direct step's (new inputs)"
                            .into(),
                    ),
                };
                self.slots.insert(key, slot);
                return Ok(Some(direct));
            }
            None => {}
        }
        // First step of this shape: run it directly on the buffers the graph will read, record
        // it, replay the record once, and keep it (on probation) only if the two agree exactly.
        // The fused step uploads nothing but these; an operation that did would fail the
        // recording (a host copy cannot be captured), and the shape would run directly.
        let ids_t = Tensor::new(ids, device)?;
        let pos_t = Tensor::new(positions, device)?;
        let direct = step(&ids_t, &pos_t)?;
        let out = Tensor::zeros(direct.shape(), DType::F32, device)?;
        let slot = match record(device, || {
            let logits = step(&ids_t, &pos_t)?;
            copy_into(&out, &logits)
        }) {
            Err(why) => refuse(key, why),
            Ok(graph) => {
                let g = DecodeGraph {
                    graph,
                    ids: ids_t,
                    positions: pos_t,
                    out,
                };
                match g.replay(ids, positions) {
                    Err(e) => refuse(key, format!("the first replay failed: {e}")),
                    Ok(replayed) if same_bits(&direct, &replayed)? => Slot::Probation(g),
                    Ok(_) => refuse(
                        key,
                        "the replay's logits differ from the direct step's".into(),
                    ),
                }
            }
        };
        self.slots.insert(key, slot);
        Ok(Some(direct))
    }
}

/// Whether two f32 tensors hold the same bits.
fn same_bits(a: &Tensor, b: &Tensor) -> Result<bool> {
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    Ok(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
}

/// Records what `f` launches on the device's stream into an instantiated graph, or says why it
/// could not (an operation that cannot be captured, such as a host copy or a synchronization).
fn record(
    device: &Device,
    f: impl FnOnce() -> Result<()>,
) -> std::result::Result<SendGraph, String> {
    let Device::Cuda(dev) = device else {
        return Err("not a CUDA device".into());
    };
    let stream = dev.cuda_stream();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| format!("starting the capture: {e:?}"))?;
    let ran = f();
    // The capture ends whatever happened, or the stream stays in capture mode.
    let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    // Errors the driver recorded for later (a free refused during a failed capture) are this
    // attempt's; they must not surface in the next, unrelated call.
    let drained = stream.context().check_err();
    match (ran, ended) {
        (Ok(()), Ok(Some(graph))) => {
            drained.map_err(|e| format!("during the capture: {e:?}"))?;
            Ok(SendGraph(graph))
        }
        (Ok(()), Ok(None)) => Err("the capture recorded nothing".into()),
        (Ok(()), Err(e)) => Err(format!("ending the capture: {e:?}")),
        (Err(e), _) => Err(format!("during the capture: {e}")),
    }
}
