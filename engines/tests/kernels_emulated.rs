//! The fused decode kernels (`kernels/decode.cu`), compiled for the CPU with `kernels/emulate.h`
//! (each CUDA thread a coroutine, with barriers and warp shuffles) and checked against plain loops
//! in double precision by `kernels/check_decode.cpp`: every kernel, in f32, bf16 and f16, at head
//! sizes 64/96/128, 1 to 8 query heads per KV head, attention split or not, rows at unequal
//! positions in a paged cache (shuffled block tables that share their first blocks, blocks of 1
//! to 32 positions). No GPU needed; the GPU runs the same source (`bench-engine --check` compares
//! it there with candle's operations).

use std::path::Path;
use std::process::Command;

#[test]
fn the_decode_kernels_compute_what_the_reference_loops_do() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let out = tempfile::tempdir().unwrap();
    let exe = out.path().join("check_decode");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O1",
            "-fno-strict-aliasing",
            "-DPHIFORGE_EMULATE",
        ])
        .arg(dir.join("check_decode.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        built.status.success(),
        "compiling kernels/check_decode.cpp:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(run.status.success(), "kernel checks failed:\n{report}");
    // The last line: "0 of N checks failed", N the number of comparisons made.
    let total: usize = report
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("0 of "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected report:\n{report}"));
    assert!(total >= 80, "only {total} comparisons ran");
}
