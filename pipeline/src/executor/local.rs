//! Running units on this machine: one unit per core at a time.

use super::{run_unit, UnitCtx};
use crate::report::Progress;
use crate::unit::{Done, UnitSpec};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `units` on as many threads as rayon has cores, each thread one unit at a time. The units'
/// own parallel work goes to rayon's pool; these threads are not in it, so a waiting unit never
/// picks up a second one and memory stays at one unit per thread.
pub fn run(
    units: &[UnitSpec],
    ctx: &UnitCtx,
    progress: &dyn Progress,
) -> Vec<Result<Done, String>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Done, String>>>> =
        Mutex::new((0..units.len()).map(|_| None).collect());
    let threads = rayon::current_num_threads().clamp(1, units.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(spec) = units.get(k) else { break };
                let r = run_unit(spec, ctx).map_err(|e| {
                    tracing::error!(stage = %spec.stage, unit = %spec.key, "unit failed: {e}");
                    e.to_string()
                });
                progress.unit_done();
                if let Ok(mut v) = results.lock() {
                    v[k] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("the unit did not run".to_string())))
        .collect()
}
