//! The plan: a recipe's sources and stages in dependency order, each with its fingerprint.
//!
//! Fingerprints depend on the recipe alone (configuration, implementation versions, template text,
//! benchmark file contents, and the inputs' fingerprints), never on the store, the machine or the
//! folder a build starts from. So a Slurm task recomputes its stage's fingerprint from the recipe
//! and refuses to run when it differs from the one it was submitted with.

use crate::output;
use crate::recipe::{Recipe, Source, StageConfig};
use crate::stages::source::source_fingerprint;
use crate::stages::{self, fingerprint, stage_fingerprint, Runner};
use crate::unit::Work;
use crate::{Error, Result};
use serde_json::json;
use std::collections::HashSet;

/// What a node is.
#[derive(Debug, Clone, Copy)]
pub enum NodeKind<'r> {
    Source(&'r Source),
    Stage(&'r StageConfig),
}

/// A source or stage of the recipe.
#[derive(Debug, Clone)]
pub struct Node<'r> {
    pub name: String,
    pub kind: NodeKind<'r>,
    pub fingerprint: String,
    /// The nodes it reads, by index, in the order the recipe lists them.
    pub inputs: Vec<usize>,
}

impl Node<'_> {
    /// `source`, or the stage's type.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Source(_) => "source",
            NodeKind::Stage(s) => s.type_name(),
        }
    }
}

/// The recipe's nodes: sources first, then stages in dependency order.
#[derive(Debug, Clone)]
pub struct Graph<'r> {
    pub nodes: Vec<Node<'r>>,
}

impl<'r> Graph<'r> {
    /// Orders the recipe's nodes and computes their fingerprints.
    pub fn new(recipe: &'r Recipe) -> Result<Graph<'r>> {
        let mut nodes: Vec<Node> = recipe
            .sources
            .iter()
            .map(|(name, s)| Node {
                name: name.clone(),
                kind: NodeKind::Source(s),
                fingerprint: source_fingerprint(name, s),
                inputs: Vec::new(),
            })
            .collect();
        let mut left: Vec<&StageConfig> = recipe.stages.iter().collect();
        while !left.is_empty() {
            let before = left.len();
            let mut rest = Vec::new();
            for s in left {
                let idx: Option<Vec<usize>> = s
                    .inputs()
                    .iter()
                    .map(|i| nodes.iter().position(|n| &n.name == i))
                    .collect();
                match idx {
                    Some(inputs) => {
                        let fps: Vec<String> = inputs
                            .iter()
                            .map(|&i| nodes[i].fingerprint.clone())
                            .collect();
                        nodes.push(Node {
                            name: s.name().to_string(),
                            kind: NodeKind::Stage(s),
                            fingerprint: stage_fingerprint(recipe, s, &fps)?,
                            inputs,
                        });
                    }
                    None => rest.push(s),
                }
            }
            if rest.len() == before {
                // A cycle or a dangling input: the recipe check reports it with its place.
                return Err(Error::stage(
                    rest[0].name(),
                    "its inputs cannot be ordered (a cycle?); run `phiforge validate`",
                ));
            }
            left = rest;
        }
        Ok(Graph { nodes })
    }

    /// The node named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Nodes no stage reads: their samples are the build's outputs.
    pub fn finals(&self) -> Vec<usize> {
        let read: HashSet<usize> = self
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter().copied())
            .collect();
        (0..self.nodes.len())
            .filter(|i| !read.contains(i))
            .collect()
    }

    /// The nodes named in `force` and every node downstream of them.
    pub fn forced(&self, force: &[String]) -> Result<HashSet<usize>> {
        let mut set = HashSet::new();
        for f in force {
            set.insert(
                self.index(f)
                    .ok_or_else(|| Error::UnknownStage(f.clone()))?,
            );
        }
        // Nodes come in dependency order, so one pass reaches everything downstream.
        for (i, n) in self.nodes.iter().enumerate() {
            if n.inputs.iter().any(|j| set.contains(j)) {
                set.insert(i);
            }
        }
        Ok(set)
    }

    /// The runner for a unit of node `i` doing `work`.
    pub fn runner(&self, recipe: &Recipe, i: usize, work: &Work) -> Result<Runner> {
        let node = &self.nodes[i];
        Ok(match (work, node.kind) {
            (Work::Output { .. }, _) => Runner::Output,
            (_, NodeKind::Source(_)) => Runner::Source(node.name.clone()),
            (_, NodeKind::Stage(c)) => stages::build(recipe, c, &node.fingerprint)?,
        })
    }

    /// The fingerprint a unit of node `i` doing `work` runs under (output files: the node's with
    /// the output settings).
    pub fn unit_fingerprint(&self, recipe: &Recipe, i: usize, work: &Work) -> String {
        let fp = &self.nodes[i].fingerprint;
        match work {
            Work::Output { .. } => {
                output::fingerprint(fp, recipe.output.format, recipe.output.shards)
            }
            _ => fp.clone(),
        }
    }

    /// The fingerprint of the whole build: every node's and the output settings.
    pub fn recipe_fingerprint(&self, recipe: &Recipe) -> String {
        let nodes: Vec<(&str, &str)> = self
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.fingerprint.as_str()))
            .collect();
        fingerprint(&json!({
            "nodes": nodes,
            "output": {"format": recipe.output.format, "shards": recipe.output.shards},
        }))
    }
}
