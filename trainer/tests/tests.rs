//! The trainer end to end on tiny models and a mix written with the mixer's own shard writer:
//! resume reproduces an uninterrupted run, accumulation equals one big batch, the outputs load in
//! `engines`, and bad input is refused before any work.

use mixes::manifest::{FileEntry, Manifest, TokenizerInfo, MANIFEST_VERSION};
use mixes::plan::{Achieved, MixPlan, MixReport};
use mixes::tokshard::ShardWriter;
use mixes::MixClass;
use std::collections::BTreeMap;
use std::path::Path;
use trainer::config::{DeviceChoice, ModelShape};
use trainer::run::NoProgress;
use trainer::{TrainConfig, Trainer};

const VOCAB: u32 = 64;

fn tiny(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        sequence_length: 16,
        learning_rate: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 2,
        eval_every: 2,
        eval_batches: 1,
        checkpoint_every: 0,
        device: DeviceChoice::Cpu,
        model: ModelShape {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 64,
            ..ModelShape::default()
        },
        ..TrainConfig::default()
    }
}

/// Documents with some structure (counting patterns), each ending with token 0.
fn documents(n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|d| {
            let len = 20 + d % 13;
            let mut doc: Vec<u32> = (0..len)
                .map(|i| 1 + ((d * 7 + i * 3) % 63) as u32)
                .collect();
            doc.push(0);
            doc
        })
        .collect()
}

/// A mix folder with one token shard of `docs` and the manifest, as the mixer writes them.
fn write_mix(dir: &Path, docs: &[Vec<u32>], classes: BTreeMap<MixClass, Achieved>) {
    let mut w = ShardWriter::new(VOCAB, true);
    let mut tokens = 0u64;
    for d in docs {
        // The first token of each document is not a target (a chat's prompt, say).
        let mask: Vec<bool> = (0..d.len()).map(|i| i > 0).collect();
        w.push(d, Some(&mask)).unwrap();
        tokens += d.len() as u64;
    }
    let written = w.write(&dir.join("tokens-00000.bin")).unwrap();
    let m = Manifest {
        manifest_version: MANIFEST_VERSION,
        phiforge_version: "test".into(),
        recipe: "test.yaml".into(),
        recipe_fingerprint: "0".into(),
        mix_fingerprint: "0".into(),
        seed: 0,
        tokenizer: TokenizerInfo {
            name: "test".into(),
            vocab: VOCAB,
            eos: 0,
        },
        loss_mask: true,
        report: MixReport {
            plan: MixPlan {
                target_tokens: tokens,
                renormalised_from: None,
                classes: BTreeMap::new(),
            },
            achieved_tokens: tokens,
            classes,
        },
        token_shards: vec![FileEntry {
            path: "tokens-00000.bin".into(),
            bytes: written.bytes,
            tokens,
            documents: docs.len() as u64,
            classes: BTreeMap::new(),
            checksum: written.checksum(),
        }],
        document_shards: vec![],
        megatron: vec![],
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn achieved(tokens: u64, target_share: f64) -> Achieved {
    Achieved {
        tokens,
        documents: u64::from(tokens > 0),
        share: 0.0,
        target_share,
        error_pp: 0.0,
        epochs: 1,
    }
}

fn mix() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let classes = BTreeMap::from([(MixClass::Web, achieved(1000, 1.0))]);
    write_mix(dir.path(), &documents(40), classes);
    dir
}

fn losses(t: &Trainer) -> Vec<(u64, f32, Option<f32>)> {
    t.history()
        .iter()
        .map(|s| (s.step, s.loss, s.eval_loss))
        .collect()
}

/// Train 6 steps straight, and 3 steps, stop, resume from the checkpoint, 3 more: the same
/// losses, held-out losses and final weights, bit for bit; and the run learns.
#[test]
fn resume_reproduces_an_uninterrupted_run() {
    let mixdir = mix();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = tiny(6);
    let mut straight = Trainer::from_manifest(&cfg, mixdir.path(), a.path(), false).unwrap();
    straight.run(&NoProgress).unwrap();
    let want = losses(&straight);
    assert_eq!(want.len(), 6);
    assert!(want[5].1 < want[0].1, "the loss falls: {want:?}");

    let mut first = Trainer::from_manifest(&cfg, mixdir.path(), b.path(), false).unwrap();
    first.run_until(3, &NoProgress).unwrap();
    drop(first);
    // Without --resume a folder holding a run is refused.
    assert!(Trainer::from_manifest(&cfg, mixdir.path(), b.path(), false).is_err());
    let mut resumed = Trainer::from_manifest(&cfg, mixdir.path(), b.path(), true).unwrap();
    assert_eq!(resumed.steps_done(), 3);
    resumed.run(&NoProgress).unwrap();
    assert_eq!(losses(&resumed), want);
    let weights = |d: &Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    assert_eq!(weights(a.path()), weights(b.path()));
    // metrics.jsonl has each step once.
    let lines = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
}

/// The outputs: metrics lines with the documented fields, the loss picture, checkpoints, and a
/// final model folder that `engines` loads and runs unchanged.
#[test]
fn outputs_load_in_engines() {
    let mixdir = mix();
    let out = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        checkpoint_every: 2,
        ..tiny(4)
    };
    let mut t = Trainer::from_manifest(&cfg, mixdir.path(), out.path(), false).unwrap();
    let summary = t.run(&NoProgress).unwrap();
    assert_eq!(summary.steps, 4);
    assert!(summary.last_eval_loss.is_some());
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in ["step", "lr", "loss", "grad_norm", "tokens", "tokens_per_s"] {
        assert!(first.get(k).is_some(), "no {k} in {first}");
    }
    assert!(metrics.contains("eval_loss"));
    assert!(std::fs::read_to_string(out.path().join("loss.svg"))
        .unwrap()
        .contains("<polyline"));
    let latest = std::fs::read_to_string(out.path().join("checkpoints/latest")).unwrap();
    assert_eq!(latest, "step-00000004");
    assert!(out
        .path()
        .join("checkpoints/step-00000002/optimizer.safetensors")
        .is_file());

    let dev = candle_core::Device::Cpu;
    let model = engines::phi3::Model::load(
        &out.path().join("model"),
        candle_core::DType::F32,
        &dev,
        1,
        16,
    )
    .unwrap();
    assert_eq!(model.config().vocab_size, VOCAB as usize);
    let logits = model.forward(&[vec![1, 2, 3]], &[0]).unwrap();
    assert_eq!(logits.dims(), &[1, VOCAB as usize]);
}

/// Two micro-batches of 2 sequences accumulate to the same step as one batch of 4.
#[test]
fn accumulation_equals_one_big_batch() {
    let docs = documents(40);
    let data = || trainer::data::TokenData {
        tokens: docs.concat(),
        mask: None,
        vocab: VOCAB,
    };
    let base = TrainConfig {
        shuffle: false,
        eval_every: 0,
        ..tiny(3)
    };
    let big = TrainConfig {
        batch_size: 4,
        ..base.clone()
    };
    let small = TrainConfig {
        batch_size: 2,
        accumulation: 2,
        ..base
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Trainer::new(&big, data(), d1.path(), false).unwrap();
    let mut b = Trainer::new(&small, data(), d2.path(), false).unwrap();
    for _ in 0..3 {
        let (x, y) = (a.step().unwrap(), b.step().unwrap());
        assert!((x.loss - y.loss).abs() < 1e-5, "{} vs {}", x.loss, y.loss);
        assert!((x.grad_norm - y.grad_norm).abs() < 1e-4 * x.grad_norm);
        assert_eq!(x.tokens, y.tokens);
    }
}

/// bf16 computing trains too (f32 master weights and moments).
#[test]
fn bf16_trains() {
    let docs = documents(40);
    let data = trainer::data::TokenData {
        tokens: docs.concat(),
        mask: None,
        vocab: VOCAB,
    };
    let cfg = TrainConfig {
        dtype: trainer::config::TrainDtype::Bf16,
        eval_every: 0,
        ..tiny(4)
    };
    let d = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&cfg, data, d.path(), false).unwrap();
    let first = t.step().unwrap().loss;
    let mut last = first;
    for _ in 0..3 {
        last = t.step().unwrap().loss;
    }
    assert!(first.is_finite() && last < first, "{first} → {last}");
}

mod bad_input {
    use super::*;

    #[test]
    fn a_damaged_shard_is_refused_before_training() {
        let mixdir = mix();
        let shard = mixdir.path().join("tokens-00000.bin");
        let mut bytes = std::fs::read(&shard).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = Trainer::from_manifest(&tiny(2), mixdir.path(), out.path(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(!out.path().join("metrics.jsonl").exists());
    }

    #[test]
    fn a_class_with_no_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let classes = BTreeMap::from([
            (MixClass::Web, achieved(1000, 0.7)),
            (MixClass::Code, achieved(0, 0.3)),
        ]);
        write_mix(dir.path(), &documents(40), classes);
        let out = tempfile::tempdir().unwrap();
        let e = Trainer::from_manifest(&tiny(2), dir.path(), out.path(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`code` has no data"), "{e}");
    }

    #[test]
    fn a_run_too_large_for_memory_is_refused_with_numbers() {
        let mixdir = mix();
        let out = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            model: ModelShape {
                hidden_size: 16_384,
                num_hidden_layers: 200,
                num_attention_heads: 128,
                num_key_value_heads: 8,
                intermediate_size: 65_536,
                ..ModelShape::default()
            },
            ..tiny(2)
        };
        let e = Trainer::from_manifest(&cfg, mixdir.path(), out.path(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("GiB") && e.contains("available") && e.contains("parameters"),
            "{e}"
        );
    }

    #[test]
    fn too_few_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let classes = BTreeMap::from([(MixClass::Web, achieved(30, 1.0))]);
        write_mix(dir.path(), &documents(1), classes);
        let out = tempfile::tempdir().unwrap();
        let e = Trainer::from_manifest(&tiny(2), dir.path(), out.path(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not enough data"), "{e}");
    }
}
