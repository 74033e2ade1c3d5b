#!/usr/bin/env bash
# A whole build at scale: the three-stage recipe (dedup_exact, decontaminate against the standard
# benchmarks, template) on Python's docs + standard library (x1, 42.5 MB of text) and on ten distinct
# copies of it (x10, 425 MB of text, 444 MB of JSON lines), with `phiforge audit`'s scan of the same
# x1 corpus and datatrove's local pipeline (JsonlReader -> NGramsDecontFilter -> JsonlWriter, from
# ../shared/peers) on the x1 corpus in the same run. Prints one JSON line per measurement.
#
# usage: benches/build.sh [WORK_DIR]      (default: target/bench-build)
# env:   SHARED (default ../shared), PEERS (default "datatrove"; "" for phiforge alone),
#        COPIES (default 10), REPEAT (builds and audits per setting, fastest kept; default 3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
work=${1:-$root/target/bench-build}
copies=${COPIES:-10}
mkdir -p "$work"
work=$(cd "$work" && pwd)

# The corpora: x1 as it is, x10 as ten copies whose every text starts with its copy's number (so
# exact dedup keeps them all).
if [ ! -s "$work/x1/corpus.jsonl" ]; then
  [ -s "$work/corpora/code.jsonl.gz" ] || python3 "$shared/corpora/make-corpora.py" "$work/corpora" >&2
  mkdir -p "$work/x1"
  zcat "$work/corpora/organic.jsonl.gz" "$work/corpora/code.jsonl.gz" > "$work/x1/corpus.jsonl"
fi
if [ ! -s "$work/x$copies/copy-$((copies - 1)).jsonl" ]; then
  mkdir -p "$work/x$copies"
  python3 - "$work/x1/corpus.jsonl" "$work/x$copies" "$copies" <<'PY'
import json, sys
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
docs = [json.loads(l) for l in open(src)]
for c in range(n):
    with open(f"{out}/copy-{c}.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"id": f"{d['id']}~{c}", "text": f"Copy {c}.\n{d['text']}"}) + "\n")
PY
fi

. "$root/benches/phiforge_bin.sh"
cores=$(nproc)

recipe() {  # recipe NAME GLOB
  cat > "$work/$1.yaml" <<YAML
name: bench-$1
sources:
  corpus: {path: $2, class: web}
stages:
  - {name: unique, type: dedup_exact, inputs: [corpus]}
  - {name: clean, type: decontaminate, inputs: [unique]}
  - {name: formatted, type: template, inputs: [clean], template: "{{ text | trim }}"}
output: {path: out-$1}
YAML
}

# One measured command: wall seconds and peak resident memory (GNU time).
measure() {  # measure LABEL CMD...
  local t0 t1 rss label=$1
  shift
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/time.txt" "$@" > "$work/$label.log" 2>&1 || { cat "$work/$label.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  rss=$(tail -1 "$work/time.txt")
  echo "$t0 $t1 $rss"
}

for scale in x1 "x$copies"; do
  recipe "$scale" "$scale/*.jsonl"
  best=""
  for _ in $(seq "${REPEAT:-3}"); do
    rm -rf "$work/out-$scale"
    read -r t0 t1 rss < <(measure "$scale" "$bin" build "$work/$scale.yaml")
    cp "$work/out-$scale/report.json" "$work/$scale-report.json"
    read -r n0 n1 nrss < <(measure "$scale-noop" "$bin" build "$work/$scale.yaml")
    line=$(python3 - "$work" "$scale" "$t0" "$t1" "$rss" "$n0" "$n1" "$nrss" "$cores" <<'PY'
import json, os, sys
work, scale = sys.argv[1], sys.argv[2]
t0, t1, rss, n0, n1, nrss = map(float, sys.argv[3:9])
cores = int(sys.argv[9])
out = f"{work}/out-{scale}"
def size(p):
    if os.path.isfile(p): return os.path.getsize(p)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
inputs = [os.path.join(work, scale, f) for f in os.listdir(os.path.join(work, scale))]
json_bytes = sum(map(os.path.getsize, inputs))
text_bytes = sum(len(json.loads(l)["text"].encode()) for p in inputs for l in open(p))
report = json.load(open(f"{work}/{scale}-report.json"))
wall = t1 - t0
store, shards = size(f"{out}/store.sqlite"), size(f"{out}/.phiforge")
finals = sum(size(f"{out}/{s['name']}") for s in report["stages"] if os.path.isdir(f"{out}/{s['name']}"))
stages = {s["name"]: round(s["seconds"], 2) for s in report["stages"]}
print(json.dumps({"peer": "phiforge-build", "corpus": scale, "cores": cores, "json_bytes": json_bytes,
    "text_bytes": text_bytes, "wall_s": round(wall, 2), "stage_s": stages,
    "mb_per_s_per_core": round(text_bytes / 1e6 / wall / cores, 1),
    "json_mb_per_s_per_core": round(json_bytes / 1e6 / wall / cores, 1),
    "peak_rss_mb": round(rss / 1024, 1), "store_bytes": store, "shard_bytes": shards,
    "store_and_shards_vs_input": round((store + shards) / json_bytes, 3),
    "final_output_bytes": finals, "noop_s": round(n1 - n0, 3), "noop_peak_rss_mb": round(nrss / 1024, 1),
    "samples_out": report["stages"][-1]["samples_out"]}))
PY
)
    if [ -z "$best" ] || python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["wall_s"] < json.loads(sys.argv[2])["wall_s"] else 1)' "$line" "$best"; then
      best=$line
    fi
  done
  echo "$best"
done

# The reference: the audit's own scan rate on the x1 corpus, same machine, same run.
for threads in 1 "$cores"; do
  best=""
  for _ in $(seq "${REPEAT:-3}"); do
    "$bin" audit -b standard -i "$work/x1/corpus.jsonl" -o "$work/audit-out" --threads "$threads" >/dev/null
    line=$(python3 - "$work/audit-out/audit.json" "$threads" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["totals"]; n = int(sys.argv[2])
print(json.dumps({"peer": "phiforge-audit", "corpus": "x1", "threads": n, "scan_s": round(t["seconds"], 3),
    "mb_per_s_per_core": round(t["text_bytes"] / 1e6 / t["seconds"] / n, 1)}))
PY
)
    if [ -z "$best" ] || python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["scan_s"] < json.loads(sys.argv[2])["scan_s"] else 1)' "$line" "$best"; then
      best=$line
    fi
  done
  echo "$best"
done

if [ -n "${PEERS-datatrove}" ]; then
  PEERS=pipeline bash "$shared/peers/run-datatrove-peers.sh" "$work/x1/corpus.jsonl" "$shared/benchmarks"
fi
