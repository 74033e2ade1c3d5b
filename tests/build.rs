//! `phiforge validate`, `plan` and `build`: incremental regeneration, crash safety, executors and
//! bad input.

use crate::util::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const RECIPE: &str = r#"
name: test-build
seed: 1
sources:
  seeds:
    path: seeds.jsonl
    class: web
stages:
  - name: unique
    type: dedup_exact
    inputs: [seeds]
  - name: clean
    type: decontaminate
    inputs: [unique]
    benchmarks: [gsm8k]
  - name: shout
    type: template
    inputs: [clean]
    template: "{{ text | upper }}"
output:
  path: out
  shards: 2
  format: jsonl
"#;

/// Small units, several dedup partitions and small job arrays: every kind of unit many times over.
pub(crate) const SMALL_UNITS: &str = "
execution:
  unit_mb: 0.01
  dedup_partition_rows: 50
  slurm:
    max_array_size: 4
";

/// Real documents, one per paragraph of the example docs, with a duplicate and a GSM8K leak.
pub(crate) fn seeds(n: usize) -> Vec<Value> {
    let mut docs: Vec<Value> = Vec::new();
    for d in python_docs() {
        for (k, para) in d["text"].as_str().unwrap().split("\n\n").enumerate() {
            if para.split_whitespace().count() >= 8 && docs.len() < n {
                docs.push(
                    json!({"id": format!("{}/{k}", d["id"].as_str().unwrap()), "text": para}),
                );
            }
        }
    }
    docs.push(docs[3].clone());
    docs.push(json!({"id": "leak", "text": item("gsm8k", "gsm8k/9")["question"]}));
    docs
}

pub(crate) fn setup(dir: &Dir, n: usize) {
    dir.write("recipe.yaml", RECIPE);
    dir.write_jsonl("seeds.jsonl", &seeds(n));
}

pub(crate) fn report(dir: &Dir) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.path("out/report.json")).unwrap()).unwrap()
}

/// (cached, run) of each stage in the last build's report.
fn work(dir: &Dir) -> Vec<(String, u64, u64)> {
    report(dir)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["cached"].as_u64().unwrap(),
                s["run"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn work_of<'a>(w: &'a [(String, u64, u64)], name: &str) -> &'a (String, u64, u64) {
    w.iter().find(|s| s.0 == name).unwrap()
}

/// The output files and their bytes.
pub(crate) fn outputs(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(root.join("out/shout")).unwrap() {
        let e = e.unwrap();
        v.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    v.sort();
    v
}

#[test]
fn a_build_writes_samples_with_lineage_and_a_second_build_does_no_work() {
    let dir = Dir::new();
    setup(&dir, 40);
    dir.ok(&["validate", "recipe.yaml"]);
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(
        out.contains("dropped: 1 contaminated (ngram13, gsm8k)"),
        "{out}"
    );
    assert!(out.contains("dropped: 1 duplicate"), "{out}");
    let files = outputs(dir.tmp.path());
    assert_eq!(files.len(), 2);
    let samples: Vec<Value> = files
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect();
    assert_eq!(samples.len(), 40);
    let s = &samples[0];
    assert_eq!(s["class"], "web");
    assert_eq!(
        s["text"].as_str().unwrap(),
        s["text"].as_str().unwrap().to_uppercase()
    );
    assert_eq!(s["lineage"]["stage"], "shout");
    assert_eq!(s["lineage"]["parents"].as_array().unwrap().len(), 1);
    assert!(s["lineage"]["template_hash"].is_string());

    // Where did this row come from? Back to the source file and line.
    let trace = dir.ok(&["lineage", "recipe.yaml", s["id"].as_str().unwrap()]);
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines.len(), 2, "{trace}");
    assert!(lines[0].contains("shout"), "{trace}");
    assert!(
        lines[1].contains("source `seeds`: seeds.jsonl line"),
        "{trace}"
    );

    let again = dir.ok(&["build", "recipe.yaml"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(report(&dir)["did_work"], false);
    assert_eq!(outputs(dir.tmp.path()), files);
    let plan = dir.ok(&["plan", "recipe.yaml"]);
    assert!(plan.contains("nothing to do"), "{plan}");
}

#[test]
fn new_seed_documents_run_alone() {
    let dir = Dir::new();
    setup(&dir, 30);
    dir.ok(&["build", "recipe.yaml"]);
    let mut docs = seeds(30);
    docs.push(json!({"id": "new-1", "text": "A brand new document about tidal pools and the creatures living in them."}));
    docs.push(json!({"id": "new-2", "text": "Another new document, this one about lichens growing on old stone walls."}));
    dir.write_jsonl("seeds.jsonl", &docs);
    let plan = dir.ok(&["plan", "recipe.yaml"]);
    assert!(plan.contains("new inputs"), "{plan}");
    dir.ok(&["build", "recipe.yaml"]);
    let w = work(&dir);
    assert_eq!(work_of(&w, "clean"), &("clean".into(), 31, 2));
    assert_eq!(work_of(&w, "shout"), &("shout".into(), 30, 2));
}

#[test]
fn a_changed_template_reruns_that_stage_and_what_follows_only() {
    let dir = Dir::new();
    setup(&dir, 30);
    dir.ok(&["build", "recipe.yaml"]);
    dir.write(
        "recipe.yaml",
        RECIPE.replace("{{ text | upper }}", "{{ text | lower }}"),
    );
    dir.ok(&["build", "recipe.yaml"]);
    let w = work(&dir);
    assert_eq!(work_of(&w, "clean"), &("clean".into(), 31, 0));
    assert_eq!(work_of(&w, "shout"), &("shout".into(), 0, 30));
    assert_eq!(stage(&report(&dir), "shout")["reason"], "changed_config");
    // A mix feeds training only: adding one mixes, and no stage reruns.
    dir.write(
        "recipe.yaml",
        RECIPE.replace("{{ text | upper }}", "{{ text | lower }}")
            + "mix:\n  weights: {web: 1.0}\n",
    );
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("mix: "), "{out}");
    assert!(work(&dir).iter().all(|(_, _, run)| *run == 0), "{out}");
}

#[test]
fn force_redoes_a_stage_and_everything_after_it() {
    let dir = Dir::new();
    setup(&dir, 20);
    dir.ok(&["build", "recipe.yaml"]);
    let before = outputs(dir.tmp.path());
    let plan = dir.ok(&["plan", "recipe.yaml", "--force", "clean"]);
    let forced: Vec<&str> = plan.lines().filter(|l| l.ends_with("forced")).collect();
    assert_eq!(forced.len(), 1, "{plan}");
    assert!(forced[0].starts_with("clean"), "{plan}");
    dir.ok(&["build", "recipe.yaml", "--force", "clean"]);
    let w = work(&dir);
    assert_eq!(work_of(&w, "unique").2, 0);
    assert_eq!(work_of(&w, "clean").2, 21);
    assert_eq!(work_of(&w, "shout").2, 20);
    assert_eq!(outputs(dir.tmp.path()), before);
    let err = dir.fails(&["build", "recipe.yaml", "--force", "nope"]);
    assert!(err.contains("`nope`"), "{err}");
}

/// Kills builds with SIGKILL at many points; the build that finally completes writes the same
/// bytes as an uninterrupted one, with no sample lost or duplicated. The builds cut their work into
/// hundreds of small units, so the kills land between and inside many units; the kills come within
/// a third of an uninterrupted build's time, a window that halves whenever a build finishes first,
/// so many land whatever the machine's speed and load.
#[test]
fn builds_killed_at_random_points_finish_with_identical_outputs() {
    let reference = Dir::new();
    setup(&reference, 2000);
    reference.write("recipe.yaml", format!("{RECIPE}{SMALL_UNITS}"));
    let t0 = std::time::Instant::now();
    reference.ok(&["build", "recipe.yaml"]);
    let mut window = (t0.elapsed().as_millis() as u64 / 3).max(50);
    let want = outputs(reference.tmp.path());
    // The same as a build in a few large units.
    let few = Dir::new();
    setup(&few, 2000);
    few.ok(&["build", "recipe.yaml"]);
    assert!(outputs(few.tmp.path()) == want);

    let dir = Dir::new();
    setup(&dir, 2000);
    dir.write("recipe.yaml", format!("{RECIPE}{SMALL_UNITS}"));
    let mut state: u64 = 0x2545f4914f6cdd1d;
    let mut killed = 0;
    let mut tries = 0;
    // Until 8 builds were killed: a build that finished before its kill (the machine was less
    // busy than when the reference ran, or little work is left) halves the window.
    while killed < 8 && tries < 60 {
        tries += 1;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = Duration::from_millis(5 + state % window);
        let mut child = Command::new(env!("CARGO_BIN_EXE_phiforge"))
            .args(["build", "recipe.yaml"])
            .current_dir(dir.tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        } else {
            window = (window / 2).max(10);
        }
        child.wait().unwrap();
    }
    eprintln!("{killed} of {tries} builds were killed before they finished");
    assert!(
        killed >= 5,
        "only {killed} builds were killed: the delays are too long for this machine"
    );
    dir.ok(&["build", "recipe.yaml"]);
    let got = outputs(dir.tmp.path());
    assert_eq!(got.len(), want.len());
    for ((n1, b1), (n2, b2)) in got.iter().zip(&want) {
        assert_eq!(n1, n2);
        assert!(b1 == b2, "{n1} differs after killed builds");
    }
    // No sample is duplicated.
    let ids: Vec<String> = got
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    assert!(ids.len() > 1900, "{}", ids.len());
    // No temporary file is left among the outputs.
    for e in std::fs::read_dir(dir.path("out/shout")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with("part-") && name.ends_with(".jsonl"),
            "{name}"
        );
    }
}

#[test]
fn validate_reports_every_problem_with_its_place() {
    let dir = Dir::new();
    dir.write_jsonl("seeds.jsonl", &seeds(5));
    dir.write(
        "bad.yaml",
        RECIPE
            .replace("class: web", "class: webby")
            .replace("inputs: [unique]", "inputs: [uniq]")
            .replace("shards: 2", "shards: 2\n  colour: red"),
    );
    let err = dir.fails(&["validate", "bad.yaml"]);
    assert!(err.contains("3 problems"), "{err}");
    assert!(
        err.contains("bad.yaml:7:5: sources.seeds.class: unknown variant `webby`"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:14:14: stages[1].inputs[0]: unknown input `uniq`"),
        "{err}"
    );
    assert!(
        err.contains("output.colour: unknown field `colour`"),
        "{err}"
    );
    // Nothing was created.
    assert!(!dir.path("out").exists());
}

#[test]
fn bad_input_is_a_clear_error_and_the_store_stays_usable() {
    let dir = Dir::new();
    setup(&dir, 10);
    dir.write(
        "missing.yaml",
        RECIPE.replace("seeds.jsonl", "nowhere/*.jsonl"),
    );
    let err = dir.fails(&["build", "missing.yaml"]);
    assert!(
        err.contains("sources.seeds.path") && err.contains("matches no file"),
        "{err}"
    );
    dir.write("seeds.csv", "id,text\n1,hello\n");
    dir.write("csv.yaml", RECIPE.replace("seeds.jsonl", "seeds.csv"));
    let err = dir.fails(&["validate", "csv.yaml"]);
    assert!(
        err.contains("sources.seeds.path") && err.contains("unknown input format"),
        "{err}"
    );
    dir.write(
        "declared.yaml",
        RECIPE.replace(
            "path: seeds.jsonl",
            "path: seeds.jsonl\n    format: parquet",
        ),
    );
    let err = dir.fails(&["validate", "declared.yaml"]);
    assert!(
        err.contains("sources.seeds.format") && err.contains("is not Parquet"),
        "{err}"
    );

    dir.ok(&["build", "recipe.yaml"]);
    dir.write("code.yaml", RECIPE.replace("class: web", "class: code"));
    let err = dir.fails(&["build", "code.yaml"]);
    assert!(
        err.contains("source `seeds` was built as class `web`"),
        "{err}"
    );
    let out = dir.ok(&["build", "recipe.yaml"]);
    assert!(out.contains("nothing to do"), "{out}");

    // A malformed seed line names its file and line, and keeps what was built.
    let mut lines = std::fs::read_to_string(dir.path("seeds.jsonl")).unwrap();
    lines.push_str("{\"text\": broken\n");
    dir.write("seeds.jsonl", lines);
    let err = dir.fails(&["build", "recipe.yaml"]);
    assert!(err.contains("seeds.jsonl: line 13: invalid JSON"), "{err}");
    assert_eq!(outputs(dir.tmp.path()).len(), 2);

    // A store from a newer phiforge is refused.
    let conn = rusqlite::Connection::open(dir.path("out/store.sqlite")).unwrap();
    conn.execute(
        "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = dir.fails(&["build", "recipe.yaml"]);
    assert!(err.contains("written by a newer phiforge"), "{err}");
}

#[test]
fn the_example_recipe_validates() {
    let dir = Dir::new();
    let recipe = root().join("examples/recipe.yaml");
    let out = dir.ok(&["validate", recipe.to_str().unwrap()]);
    assert!(out.contains("ok (2 sources, 7 stages)"), "{out}");
}

/// A full disk stops the build with a clear error; once there is room again, the same store
/// finishes the build with the same outputs. Needs root to mount a small tmpfs (skipped elsewhere).
#[test]
fn a_full_disk_is_a_clear_error_and_the_store_stays_usable() {
    let reference = Dir::new();
    setup(&reference, 2000);
    reference.ok(&["build", "recipe.yaml"]);

    let dir = Dir::new();
    setup(&dir, 2000);
    let mnt = dir.path("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("cannot mount a tmpfs here (needs root): skipped");
        return;
    }
    let run = || {
        dir.write(
            "recipe.yaml",
            RECIPE.replace("path: out", &format!("path: {}", mnt.join("out").display())),
        );
        dir.run(&["build", "recipe.yaml"])
    };
    let first = run();
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    let remount = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(remount.success());
    let second = run();
    let got = if second.status.success() {
        outputs(&mnt)
    } else {
        Vec::new()
    };
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(
        !first.status.success(),
        "the build should not fit in 600 KiB"
    );
    assert!(err.contains("full") || err.contains("No space"), "{err}");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(got, outputs(reference.tmp.path()));
}
