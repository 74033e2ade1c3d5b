//! CUDA graphs of the fused decode step (`cuda` feature).
//!
//! A Phi-4 decode step at batch 1 is some 290 kernel launches, each a few microseconds of host
//! work and a gap on the GPU. A CUDA graph records one step's launches once and replays them with
//! one call. The step's inputs (token ids, positions, and the block tables of the paged KV cache,
//! [`crate::kv`]) live in buffers the graph reads, refilled before each replay; its logits are
//! copied into a buffer that outlives the graph; every launch takes the same arguments at every
//! step (the attention kernel finds its split of the positions on the device, and reads each
//! row's blocks from its table). A graph is recorded per batch shape (number of sequences, width
//! of their block tables) the first time that shape decodes, and trusted only once its replays
//! have reproduced, bit for bit, the logits of the same steps run directly: the recorded step,
//! and the next one (other ids, positions and tables, so the inputs are seen to be refilled).
//! Otherwise that shape stays on direct launches, and why is reported ([`summary`]).

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
    /// The inputs the graph reads: token ids and positions (u32, one per sequence), and the
    /// block tables (u32, sequences × width).
    ids: Tensor,
    positions: Tensor,
    tables: Tensor,
    /// Where the graph leaves the logits (b, vocab), f32.
    out: Tensor,
}

impl DecodeGraph {
    /// Fills the inputs, replays the step, and returns a copy of its logits.
    pub fn replay(&self, ids: &[u32], positions: &[u32], tables: &[u32]) -> Result<Tensor> {
        upload_u32(&self.ids, ids)?;
        upload_u32(&self.positions, positions)?;
        upload_u32(&self.tables, tables)?;
        self.graph
            .0
            .launch()
            .map_err(|e| candle_core::Error::Msg(format!("replaying a CUDA graph: {e:?}")))?;
        REPLAYS.fetch_add(1, Ordering::Relaxed);
        self.out.copy()
    }
}

/// What a batch shape uses.
enum State {
    /// Recorded, and its first replay matched the step it recorded; the next step is run both
    /// ways too (new ids, positions and tables: the inputs are refilled) before the graph is
    /// trusted.
    Probation(DecodeGraph),
    Ready(DecodeGraph),
    /// Recording failed or did not reproduce the direct step: direct launches.
    Direct,
}

/// The graphs of one model, by (sequences, blocks per table).
pub struct Graphs {
    enabled: bool,
    shapes: HashMap<(usize, usize), State>,
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

fn refuse(key: (usize, usize), why: String) -> State {
    let (b, width) = key;
    tracing::warn!(
        "decode step of batch {b} (tables of {width} blocks): no CUDA graph ({why}); direct \
         launches"
    );
    if let Ok(mut r) = REFUSED.lock() {
        r.push(format!("batch {b} (tables of {width} blocks): {why}"));
    }
    State::Direct
}

impl Graphs {
    pub fn new(enabled: bool) -> Graphs {
        Graphs {
            enabled,
            shapes: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Turns recording on or off; either way the recorded graphs are dropped.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        self.shapes.clear();
    }

    /// Drops every graph (the step they recorded changed: other kernels, say).
    pub fn clear(&mut self) {
        self.shapes.clear();
    }

    /// The step for `ids` at `positions`, with the block tables `tables` (row-major, `ids.len()`
    /// rows of equal width), through this shape's graph: replayed, or recorded now (with `step`,
    /// which runs the step directly on the input tensors it is given: ids and positions (b),
    /// tables (b, width), u32). `None`: this shape runs directly (the caller does).
    pub fn run(
        &mut self,
        device: &Device,
        ids: &[u32],
        positions: &[u32],
        tables: &[u32],
        step: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        let b = ids.len();
        if !self.enabled || b == 0 || b > MAX_BATCH || !device.is_cuda() {
            return Ok(None);
        }
        if positions.len() != b || tables.is_empty() || !tables.len().is_multiple_of(b) {
            candle_core::bail!(
                "decode graph: {b} ids, {} positions, {} table entries",
                positions.len(),
                tables.len()
            )
        }
        let width = tables.len() / b;
        // The tables' width is part of the shape: their buffer's size, and the attention's
        // split of the positions (which follows the most a table can hold), are recorded.
        let key = (b, width);
        let inputs = |ids: &[u32], positions: &[u32], tables: &[u32]| -> Result<[Tensor; 3]> {
            Ok([
                Tensor::new(ids, device)?,
                Tensor::new(positions, device)?,
                Tensor::from_slice(tables, (b, width), device)?,
            ])
        };
        match self.shapes.remove(&key) {
            Some(State::Ready(g)) => {
                let out = g.replay(ids, positions, tables);
                self.shapes.insert(key, State::Ready(g));
                return out.map(Some);
            }
            Some(State::Direct) => {
                self.shapes.insert(key, State::Direct);
                return Ok(None);
            }
            Some(State::Probation(g)) => {
                // The step directly, then again through the graph (it rewrites the same cache
                // entries with the same values): they must agree exactly.
                let [i, p, t] = inputs(ids, positions, tables)?;
                let direct = step(&i, &p, &t)?;
                let state = match g.replay(ids, positions, tables) {
                    Err(e) => refuse(key, format!("the second replay failed: {e}")),
                    Ok(replayed) if same_bits(&direct, &replayed)? => {
                        RECORDED.fetch_add(1, Ordering::Relaxed);
                        State::Ready(g)
                    }
                    Ok(_) => refuse(
                        key,
                        "the second replay's logits differ from the direct step's (new inputs)"
                            .into(),
                    ),
                };
                self.shapes.insert(key, state);
                return Ok(Some(direct));
            }
            None => {}
        }
        // First step of this shape: run it directly on the buffers the graph will read, record
        // it, replay the record once, and keep it (on probation) only if the two agree exactly.
        // The fused step uploads nothing but these; an operation that did would fail the
        // recording (a host copy cannot be captured), and the shape would run directly.
        let [ids_t, pos_t, tables_t] = inputs(ids, positions, tables)?;
        let direct = step(&ids_t, &pos_t, &tables_t)?;
        let out = Tensor::zeros(direct.shape(), DType::F32, device)?;
        let state = match record(device, || {
            let logits = step(&ids_t, &pos_t, &tables_t)?;
            copy_into(&out, &logits)
        }) {
            Err(why) => refuse(key, why),
            Ok(graph) => {
                let g = DecodeGraph {
                    graph,
                    ids: ids_t,
                    positions: pos_t,
                    tables: tables_t,
                    out,
                };
                match g.replay(ids, positions, tables) {
                    Err(e) => refuse(key, format!("the first replay failed: {e}")),
                    Ok(replayed) if same_bits(&direct, &replayed)? => State::Probation(g),
                    Ok(_) => refuse(
                        key,
                        "the replay's logits differ from the direct step's".into(),
                    ),
                }
            }
        };
        self.shapes.insert(key, state);
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
