//! Timing a forward pass phase by phase (`bench-engine --profile`).

use candle_core::{Device, Result};

/// Where a forward pass spends its time, per phase (projections, attention, ...), for finding
/// what to speed up: decode passes (one new token per sequence) and passes that carry prompt
/// tokens, apart. Measuring synchronizes the device after every phase, which slows the pass
/// and removes the overlap of host and device: use it to compare phases, not for throughput.
#[derive(Debug, Default)]
pub struct Profile {
    phases: std::sync::Mutex<Vec<(&'static str, f64, u64)>>,
    /// The same, for passes with prompt tokens.
    prompt_phases: std::sync::Mutex<Vec<(&'static str, f64, u64)>>,
    /// When the last pass ended: the time until the next one is the scheduler's (sampling,
    /// bookkeeping).
    last_end: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Profile {
    /// Adds `seconds` to phase `name` (of a pass with prompt tokens if `prompt`).
    fn add(&self, name: &'static str, seconds: f64, prompt: bool) {
        let phases = if prompt {
            &self.prompt_phases
        } else {
            &self.phases
        };
        if let Ok(mut p) = phases.lock() {
            match p.iter_mut().find(|e| e.0 == name) {
                Some(e) => {
                    e.1 += seconds;
                    e.2 += 1;
                }
                None => p.push((name, seconds, 1)),
            }
        }
    }

    pub(super) fn pass_starts(&self, now: std::time::Instant) {
        let last = self.last_end.lock().ok().and_then(|mut l| l.take());
        if let Some(t) = last {
            self.add("between_passes", (now - t).as_secs_f64(), false);
        }
    }

    /// `now`: the end of a timed pass; `None`: an untimed pass ran (the gap is not the scheduler's).
    pub(super) fn pass_ends(&self, now: Option<std::time::Instant>) {
        if let Ok(mut l) = self.last_end.lock() {
            *l = now;
        }
    }

    /// The prompt passes' phases so far, as [`Profile::take`] gives the decode passes'.
    pub fn take_prompt(&self) -> Vec<(&'static str, f64, u64)> {
        self.prompt_phases
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// The decode passes' phases so far, in first-seen order: (name, seconds, times), and starts
    /// over.
    pub fn take(&self) -> Vec<(&'static str, f64, u64)> {
        if let Ok(mut l) = self.last_end.lock() {
            *l = None;
        }
        self.phases
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Marks the end of each phase of a pass when profiling (otherwise does nothing).
pub(super) struct Clock<'a> {
    pub(super) profile: Option<(&'a Profile, &'a Device)>,
    pub(super) last: std::time::Instant,
    /// The pass carries prompt tokens.
    pub(super) prompt: bool,
}

impl Clock<'_> {
    pub(super) fn mark(&mut self, name: &'static str) -> Result<()> {
        if let Some((profile, device)) = self.profile {
            device.synchronize()?;
            let now = std::time::Instant::now();
            profile.add(name, (now - self.last).as_secs_f64(), self.prompt);
            self.last = now;
        }
        Ok(())
    }
}
