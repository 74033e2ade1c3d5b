//! `phiforge build` with `train:` and `mix:` sections: the build ends by training on its mix, an
//! unchanged run is left alone, a changed mix or setting trains again, and a run a killed build
//! left unfinished is continued from its checkpoint; and the quickstart recipe end to end.

use crate::util::*;
use serde_json::Value;

const TRAIN: &str = "train:
  steps: 4
  batch_size: 2
  sequence_length: 32
  warmup_steps: 1
  eval_every: 2
  eval_batches: 1
  checkpoint_every: 2
  model: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 64}
";

fn recipe(train: &str) -> String {
    format!(
        "name: test-train
seed: 3
sources:
  docs: {{path: docs.jsonl, class: web}}
stages:
  - {{name: unique, type: dedup_exact, inputs: [docs]}}
mix:
  weights: {{web: 1.0}}
  tokenizer: tokenizer.json
  shard_tokens: 20000
output:
  path: out
{train}"
    )
}

fn setup(dir: &Dir, train: &str) {
    dir.write("recipe.yaml", recipe(train));
    let docs: Vec<Value> = python_docs().into_iter().take(20).collect();
    dir.write_jsonl("docs.jsonl", &docs);
    let tok = std::fs::read(root().join("examples/quickstart/model/tokenizer.json")).unwrap();
    dir.write("tokenizer.json", tok);
}

fn run_record(dir: &Dir) -> Value {
    serde_json::from_slice(&std::fs::read(dir.path("out/train/run.json")).unwrap()).unwrap()
}

#[test]
fn a_build_trains_on_its_mix_once_and_again_when_the_settings_change() {
    let dir = Dir::new();
    setup(&dir, TRAIN);
    let plan = dir.ok(&["plan", "recipe.yaml"]);
    assert!(plan.contains("then train: 4 steps"), "{plan}");
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("mix: "), "{out}");
    assert!(out.contains("train: 4 steps"), "{out}");
    // The model folder loads as any Phi-3 folder: config, weights and the mix's tokenizer.
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.path("out/train/model").join(f).is_file(), "{f}");
    }
    let first = run_record(&dir);
    assert_eq!(first["complete"], true);
    let metrics = raw_lines(&dir.path("out/train/metrics.jsonl"));
    assert_eq!(metrics.len(), 4);

    // Nothing changed: neither the mix nor the run is redone.
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("mix (up to date)"), "{out}");
    assert!(out.contains("train (up to date)"), "{out}");
    assert_eq!(raw_lines(&dir.path("out/train/metrics.jsonl")), metrics);

    // A setting that changes what is trained: trained again from the start.
    setup(&dir, &TRAIN.replace("steps: 4", "steps: 6"));
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("mix (up to date)"), "{out}");
    assert!(out.contains("train: 6 steps"), "{out}");
    assert!(!out.contains("continued"), "{out}");
    assert_ne!(run_record(&dir)["fingerprint"], first["fingerprint"]);
    assert_eq!(raw_lines(&dir.path("out/train/metrics.jsonl")).len(), 6);

    // One that changes only where it runs (threads): nothing to do.
    setup(
        &dir,
        &TRAIN
            .replace("steps: 4", "steps: 6")
            .replace("train:\n", "train:\n  threads: 1\n"),
    );
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("train (up to date)"), "{out}");
}

#[test]
fn a_run_a_killed_build_left_unfinished_is_continued_not_restarted() {
    let dir = Dir::new();
    setup(&dir, TRAIN);
    dir.ok(&["build", "recipe.yaml"]);
    let metrics = raw_lines(&dir.path("out/train/metrics.jsonl"));
    // What a build killed after its checkpoint at step 2 leaves: the run marked unfinished, the
    // final model not written, the latest checkpoint the one at step 2.
    let mut record = run_record(&dir);
    record["complete"] = Value::Bool(false);
    dir.write("out/train/run.json", serde_json::to_vec(&record).unwrap());
    std::fs::remove_dir_all(dir.path("out/train/model")).unwrap();
    let ckpts = dir.path("out/train/checkpoints");
    assert!(ckpts.join("step-00000002/state.json").is_file());
    std::fs::remove_dir_all(ckpts.join("step-00000004")).unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000002").unwrap();

    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(
        out.contains("train: continued from step 2; 4 steps"),
        "{out}"
    );
    assert_eq!(run_record(&dir)["complete"], true);
    assert!(dir.path("out/train/model/model.safetensors").is_file());
    // The steps done again give the losses of the uninterrupted run.
    let loss = |lines: &[String]| -> Vec<f64> {
        lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        loss(&raw_lines(&dir.path("out/train/metrics.jsonl"))),
        loss(&metrics)
    );
}

#[test]
fn a_folder_that_holds_other_files_is_not_trained_over() {
    let dir = Dir::new();
    setup(&dir, TRAIN);
    dir.write("out/train/notes.txt", "mine");
    let err = dir.fails(&["build", "recipe.yaml"]);
    assert!(err.contains("no run.json"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path("out/train/notes.txt")).unwrap(),
        "mine"
    );
}

/// The README's first command, on a copy of `examples/quickstart.yaml` that writes into a
/// temporary folder and trains two steps: every stage runs and leaves what it should.
#[test]
fn the_quickstart_runs_every_stage() {
    let dir = Dir::new();
    let examples = root().join("examples");
    let text = std::fs::read_to_string(examples.join("quickstart.yaml")).unwrap();
    let text = text
        .replace(
            "quickstart/",
            &format!("{}/quickstart/", examples.display()),
        )
        .replace(" corpus/", &format!(" {}/corpus/", examples.display()))
        .replace("path: ../out/quickstart", "path: out")
        .replace("  steps: 40\n", "  steps: 2\n");
    dir.write("quickstart.yaml", text);
    let out = dir.ok(&["build", "quickstart.yaml"]);
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path("out/report.json")).unwrap()).unwrap();
    let stage = |name: &str| {
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no stage {name}: {out}"))
            .clone()
    };
    // Generation kept most of the 48 seeds in both flows.
    for name in ["rewrites", "tutoring"] {
        let s = stage(name);
        assert_eq!(s["samples_in"], 48, "{s}");
        assert!(s["samples_out"].as_u64().unwrap() >= 40, "{s}");
    }
    // Decontamination found the real leak in the example corpus (MBPP 174 in `collections`' docs).
    let clean = stage("clean");
    assert!(
        clean["dropped"].as_object().is_some_and(|d| !d.is_empty()),
        "{clean}"
    );
    // Every class mixed at its weight; the model trained and its folder loads.
    let m = mixes::manifest::Manifest::read(&dir.path("out/mix")).unwrap();
    m.verify(&dir.path("out/mix")).unwrap();
    for (class, a) in &m.report.classes {
        assert!(a.error_pp.abs() < 0.5, "{class:?}: {a:?}");
    }
    assert!(out.contains("train: 2 steps"), "{out}");
    assert!(dir.path("out/train/model/model.safetensors").is_file());
}
