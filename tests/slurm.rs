//! The Slurm executor on a real one-node cluster (`../shared/slurm/start-single-node.sh`; CI
//! starts one): the same outputs as a local build, every kind of unit as array tasks in arrays no
//! larger than allowed, a cancelled task resubmitted, and a recipe edited while jobs wait refused.

use crate::build::{outputs, report, setup, RECIPE, SMALL_UNITS};
use crate::util::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether a cluster answers; CI must have one.
fn cluster() -> bool {
    if Command::new("sinfo")
        .arg("-h")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        return true;
    }
    eprintln!("no running Slurm cluster here: start one with ../shared/slurm/start-single-node.sh");
    if std::env::var_os("CI").is_some() {
        panic!("CI must run the Slurm test: .ci/run starts the cluster");
    }
    false
}

/// Drains the cluster's node (jobs wait) until dropped.
struct Drained(String);

impl Drained {
    fn new() -> Drained {
        let out = Command::new("sinfo")
            .args(["-h", "-o", "%N"])
            .output()
            .unwrap();
        let node = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ok = Command::new("scontrol")
            .args([
                "update",
                &format!("NodeName={node}"),
                "State=DRAIN",
                "Reason=phiforge-test",
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "cannot drain {node}");
        Drained(node)
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        let _ = Command::new("scontrol")
            .args(["update", &format!("NodeName={}", self.0), "State=RESUME"])
            .status();
    }
}

/// Starts `build --executor slurm --force clean` in `dir`, in the background.
fn force_clean(dir: &Dir) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_phiforge"))
        .args([
            "build",
            "recipe.yaml",
            "--executor",
            "slurm",
            "--force",
            "clean",
        ])
        .current_dir(dir.tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (up to 12 s) for a job named `name` to be queued; its task ids.
fn queued(name: &str) -> Vec<String> {
    for _ in 0..600 {
        let q = Command::new("squeue")
            .args(["-h", "-r", "-n", name, "-o", "%i"])
            .output()
            .unwrap();
        let tasks: Vec<String> = String::from_utf8_lossy(&q.stdout)
            .lines()
            .map(String::from)
            .collect();
        if !tasks.is_empty() {
            return tasks;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Vec::new()
}

/// The Slurm executor gives the same outputs as the local one. Runs where `sbatch` is on the path
/// (CI starts a one-node cluster with ../shared/slurm/start-single-node.sh).
#[test]
fn slurm_builds_match_local_builds() {
    if !cluster() {
        return;
    }
    let local = Dir::new();
    setup(&local, 200);
    local.ok(&["build", "recipe.yaml"]);
    let slurm = Dir::new();
    setup(&slurm, 200);
    slurm.write("recipe.yaml", format!("{RECIPE}{SMALL_UNITS}"));
    let out = slurm.ok(&["build", "recipe.yaml", "--executor", "slurm"]);
    assert!(out.contains("units"), "{out}");
    assert_eq!(report(&slurm)["executor"], "slurm");
    assert_eq!(outputs(slurm.tmp.path()), outputs(local.tmp.path()));
    // Every node ran as tasks: sources, both kinds of dedup unit (by partition, by view), the
    // per-sample stages and the output files, in arrays of at most 4 tasks.
    let stages = report(&slurm)["stages"].as_array().unwrap().clone();
    let logs = |fp: &str| -> Vec<String> {
        std::fs::read_dir(slurm.path(&format!("out/slurm/{fp}")))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (stage, phase) in [
        ("seeds", "units"),
        ("unique", "scan"),
        ("unique", "apply"),
        ("clean", "units"),
        ("shout", "units"),
    ] {
        let s = stages.iter().find(|s| s["name"] == stage).unwrap();
        let l = logs(s["fingerprint"].as_str().unwrap());
        assert!(
            l.iter().any(|n| n.starts_with(&format!("{phase}-"))),
            "{stage}: {l:?}"
        );
    }
    let unique = stages.iter().find(|s| s["name"] == "unique").unwrap();
    assert!(unique["units_run"].as_u64().unwrap() > 5, "{unique}");
    let clean = stages.iter().find(|s| s["name"] == "clean").unwrap();
    let clean_logs = logs(clean["fingerprint"].as_str().unwrap());
    assert!(
        clean_logs.iter().any(|n| n.starts_with("units-4-")),
        "more units than one array holds go in several arrays: {clean_logs:?}"
    );
    let again = slurm.ok(&["build", "recipe.yaml", "--executor", "slurm"]);
    assert!(again.contains("nothing to do"), "{again}");

    // A task cancelled mid-run: its unit is submitted again and the result is the same.
    let child = force_clean(&slurm);
    let mut cancelled = None;
    for _ in 0..600 {
        let q = Command::new("squeue")
            .args(["-h", "-r", "-n", "phiforge-clean", "-o", "%i"])
            .output()
            .unwrap();
        let tasks = String::from_utf8_lossy(&q.stdout).to_string();
        if let Some(task) = tasks.lines().find(|t| t.ends_with("_1")) {
            Command::new("scancel").arg(task).status().unwrap();
            cancelled = Some(task.to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cancelled.is_some(),
        "no task of the clean stage was seen running"
    );
    assert_eq!(outputs(slurm.tmp.path()), outputs(local.tmp.path()));
    let r = report(&slurm);
    let clean = stage(&r, "clean");
    assert_eq!(clean["units_failed"], 0, "{clean}");
    // The cancelled unit ran in a second submission.
    let fp = clean["fingerprint"].as_str().unwrap();
    let logs: Vec<String> = std::fs::read_dir(slurm.path(&format!("out/slurm/{fp}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter().any(|l| l.ends_with("attempt1.log")),
        "{cancelled:?}: {logs:?}"
    );

    // A recipe edited while the jobs wait: the tasks refuse to run under the new recipe, so
    // nothing computed for the old one is kept for the new.
    let drained = Drained::new();
    let child = force_clean(&slurm);
    assert!(
        !queued("phiforge-clean").is_empty(),
        "no clean job was queued"
    );
    slurm.write(
        "recipe.yaml",
        format!("{RECIPE}{SMALL_UNITS}").replace("benchmarks: [gsm8k]", "benchmarks: [math]"),
    );
    drop(drained);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a build whose recipe changed under it succeeded"
    );
    assert!(
        err.contains("changed since this job was submitted"),
        "{err}"
    );
    // Built again, under the new recipe, it runs and succeeds.
    let out = slurm.ok(&["build", "recipe.yaml", "--executor", "slurm"]);
    assert!(out.contains("clean"), "{out}");
}
