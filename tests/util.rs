//! Test helpers: a temporary folder, the CLI runner, real example documents and benchmark items.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A temporary working folder in which the CLI runs.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Writes documents as JSON lines.
    pub fn write_jsonl(&self, rel: &str, docs: &[Value]) -> PathBuf {
        let mut s = String::new();
        for d in docs {
            s.push_str(&d.to_string());
            s.push('\n');
        }
        self.write(rel, s)
    }

    /// Runs `phiforge ARGS` in this folder.
    pub fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_phiforge"))
            .args(args)
            .current_dir(self.tmp.path())
            .output()
            .expect("running phiforge")
    }

    /// Runs and asserts success, returning standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "phiforge {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure, returning standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "phiforge {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_lines(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.to_string_lossy();
    let reader: Box<dyn BufRead> = if name.ends_with(".gz") {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
    } else if name.ends_with(".zst") {
        Box::new(BufReader::new(
            zstd::stream::read::Decoder::new(file).unwrap(),
        ))
    } else {
        Box::new(BufReader::new(file))
    };
    reader
        .lines()
        .map(|l| l.unwrap())
        .filter(|l| !l.is_empty())
        .collect()
}

/// JSON lines of a (possibly compressed) file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    read_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Raw lines of a (possibly compressed) file.
pub fn raw_lines(path: &Path) -> Vec<String> {
    read_lines(path)
}

/// Real documents: the bundled Python documentation sample.
pub fn python_docs() -> Vec<Value> {
    read_jsonl(&root().join("examples/corpus/python-docs.jsonl.gz"))
}

/// Real code: the bundled standard-library sample.
pub fn python_code() -> Vec<Value> {
    read_jsonl(&root().join("examples/corpus/python-stdlib.jsonl.gz"))
}

/// The items of a bundled benchmark set.
pub fn benchmark(name: &str) -> Vec<Value> {
    read_jsonl(&root().join(format!("dedup/benchmarks/{name}.jsonl.gz")))
}

/// The item with `id` of a bundled set.
pub fn item(name: &str, id: &str) -> Value {
    benchmark(name)
        .into_iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no item {id}"))
}

/// `text` with `insert` placed at the paragraph break nearest its middle.
pub fn plant(text: &str, insert: &str) -> String {
    let mid = text.len() / 2;
    let at = text[mid..]
        .find("\n\n")
        .map(|k| mid + k)
        .unwrap_or_else(|| {
            let mut m = mid;
            while !text.is_char_boundary(m) {
                m += 1;
            }
            m
        });
    format!("{}\n\n{}\n\n{}", &text[..at], insert, &text[at..])
}

/// Writes `gzip` bytes of `body`.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

/// Asserts equality, printing both sides pretty when they differ.
#[track_caller]
/// The record of stage `name` in a build report's `stages`.
pub fn stage<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages in {report}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage `{name}` in {report}"))
}

pub fn assert_json_eq(got: &Value, want: &Value) {
    if got != want {
        panic!(
            "JSON differs\n--- got\n{}\n--- want\n{}",
            serde_json::to_string_pretty(got).unwrap(),
            serde_json::to_string_pretty(want).unwrap()
        );
    }
}
