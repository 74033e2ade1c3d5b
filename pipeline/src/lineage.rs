//! Lineage: where a sample came from, answered from the shard files the last successful build
//! left and the views the store recorded for each stage.
//!
//! A sample is found by scanning the views' id columns (latest stage first), then read whole from
//! the one shard that holds it; its `parents` are followed the same way back to source documents.

use crate::sample::Sample;
use crate::store::Store;
use crate::view::View;
use crate::Result;
use corpus::shard::Projection;
use std::collections::{HashSet, VecDeque};
use std::path::Path;

/// The sample with content id `id` in `view`, if the view holds it.
fn find_in(root: &Path, view: &View, id: &str) -> Result<Option<Sample>> {
    let mut ids = view.open(root, Projection::Ids)?;
    let mut found = false;
    while let Some(entries) = ids.next_entries()? {
        if entries.iter().any(|e| e.id.as_deref() == Some(id)) {
            found = true;
            break;
        }
    }
    if !found {
        return Ok(None);
    }
    let mut full = view.open(root, Projection::Full)?;
    while let Some(entries) = full.next_entries()? {
        if let Some(s) = entries
            .into_iter()
            .filter_map(|e| e.sample)
            .find(|s| s.id == id)
        {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// The sample with content id `id`, searched in the latest stages first.
pub fn find(store: &Store, root: &Path, id: &str) -> Result<Option<Sample>> {
    for (_, views) in store.views()?.iter().rev() {
        for v in views {
            if let Some(s) = find_in(root, v, id)? {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

/// A sample and its ancestors, following `parents` (closest first).
pub fn trace(store: &Store, root: &Path, id: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([id.to_string()]);
    let mut seen = HashSet::new();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(s) = find(store, root, &id)? {
            queue.extend(s.lineage.parents.iter().cloned());
            out.push(s);
        }
    }
    Ok(out)
}
