#!/usr/bin/env bash
# Near-duplicate removal: `phiforge neardup` against datatrove's 4-stage MinHash pipeline, in one run, on
# the same corpus (Python's documentation + standard library, ~42 MB of text) with the same planted
# near-copies (PLANT documents of >= 100 words copied with FRACTIONS of their words changed, made by the
# peer driver's own `plant` function with its seed, so the corpus is byte for byte the one the peer runs).
# phiforge runs FineWeb's setting (5-grams, 14 bands x 8 rows) verified at Jaccard 0.5, the same unverified
# (datatrove's rule: any bucket collision), and a tuned setting (25 bands x 2 rows, verified at 0.3), each
# on 1 thread and on all cores. Prints one JSON line per measurement, then one comparing them.
#
# usage: benches/minhash.sh [WORK_DIR]      (default: target/bench-minhash)
# env:   SHARED (default ../shared), CACHE (peer venvs), PLANT (default 200), FRACTIONS (default
#        0.05,0.1,0.2), PEERS (default "datatrove"; "" for phiforge alone), REPEAT (phiforge runs per
#        setting, best kept; default 3), PHIFORGE (a phiforge binary to run instead of building one)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
work=${1:-$root/target/bench-minhash}
plant=${PLANT:-200}
fractions=${FRACTIONS:-0.05,0.1,0.2}
peers=${PEERS-datatrove}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phiforge-peers}
mkdir -p "$work"
work=$(cd "$work" && pwd)

if [ ! -s "$work/corpus.jsonl" ]; then
  [ -s "$work/corpora/code.jsonl.gz" ] || python3 "$shared/corpora/make-corpora.py" "$work/corpora" >&2
  zcat "$work/corpora/organic.jsonl.gz" "$work/corpora/code.jsonl.gz" > "$work/corpus.jsonl"
fi

# The peer's venv, made as run-datatrove-peers.sh makes it.
dt=$cache/venv-datatrove
if [ ! -x "$dt/bin/python" ] || ! "$dt/bin/python" -c 'import datatrove, spacy, xxhash, orjson, tokenizers' 2>/dev/null; then
  [ -x "$dt/bin/python" ] || python3 -m venv "$dt"
  "$dt/bin/pip" install -q 'datatrove==0.10.1' 'xxhash<4' regex spacy orjson tokenizers >&2
fi

# The planted corpus, written by the peer driver's own function (same records, seed and fractions).
planted=$work/planted.jsonl
if [ ! -s "$planted" ] || [ "$(cat "$planted.args" 2>/dev/null)" != "$plant $fractions" ]; then
  "$dt/bin/python" - "$shared/peers" "$work/corpus.jsonl" "$planted" "$plant" "$fractions" <<'PY' >&2
import json, sys
sys.path.insert(0, sys.argv[1])
from datatrove_minhash import open_any, plant
with open_any(sys.argv[2]) as f:
    records = [{"id": str(r["id"]), "text": r["text"]} for r in map(json.loads, f)]
planted = plant(records, int(sys.argv[4]), [float(x) for x in sys.argv[5].split(",")], sys.argv[3])
print(f"planted {len(planted)} near-copies after {len(records)} documents", file=sys.stderr)
PY
  echo "$plant $fractions" > "$planted.args"
fi

. "$root/benches/phiforge_bin.sh"

# One JSON line from a run's outputs: speed, candidates and their precision, planted copies found.
summarise() {
  python3 - "$@" <<'PY'
import json, sys
out, planted_path, setting, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(f"{out}/report.json"))
cluster = {}
for k, line in enumerate(open(f"{out}/clusters.jsonl")):
    c = json.loads(line)
    for i in [c["kept"]] + c["dropped"]:
        cluster[i] = k
removed = {json.loads(line)["id"] for line in open(f"{out}/removed/planted.jsonl")}
by_frac, copies = {}, set()
for line in open(planted_path):
    i = json.loads(line)["id"]
    if "~near" not in i:
        continue
    orig, pct = i.rsplit("~near", 1)
    copies.add(i)
    p = by_frac.setdefault(str(int(pct) / 100), {"copies": 0, "removed": 0, "clustered": 0})
    p["copies"] += 1
    p["removed"] += i in removed
    p["clustered"] += cluster.get(i) is not None and cluster.get(i) == cluster.get(orig)
s = r["settings"]
print(json.dumps({
    "peer": "phiforge", "version": r["phiforge_version"], "setting": setting, "threads": threads,
    "config": f"{s['shingle']}-grams, {s['bands']}x{s['rows']}, " + (f"verified at {s['threshold']}" if s["verify"] else "unverified"),
    "docs": r["documents"], "bytes": r["text_bytes"], "total_s": round(r["seconds"], 3),
    "stage_s": {k: round(v, 3) for k, v in r["stage_seconds"].items()},
    "mb_per_s": round(r["mb_per_s"], 2), "mb_per_s_per_core": round(r["mb_per_s"] / threads, 2),
    "candidates": r["candidates"], "candidate_precision": round(r["candidate_precision"] or 0, 4),
    "precision": round(r["precision"] or 0, 4), "threshold": s["threshold"],
    "removed": r["removed"], "clusters": r["clusters"], "removed_not_planted": len(removed - copies),
    "planted": by_frac}))
PY
}

lines=()
for setting in default unverified tuned; do
  case $setting in
    default)    args=() ;;
    unverified) args=(--no-verify) ;;
    tuned)      args=(--bands 25 --rows 2 --threshold 0.3) ;;
  esac
  for threads in 1 "$(nproc)"; do
    best=""
    for _ in $(seq "${REPEAT:-3}"); do
      "$bin" neardup -i "$planted" -o "$work/phiforge-out" --threads "$threads" "${args[@]}" >/dev/null
      line=$(summarise "$work/phiforge-out" "$planted" "$setting" "$threads")
      if [ -z "$best" ] || python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["total_s"] < json.loads(sys.argv[2])["total_s"] else 1)' "$line" "$best"; then
        best=$line
      fi
    done
    echo "$best"
    lines+=("$best")
  done
done

if [ -n "$peers" ]; then
  peer=$("$dt/bin/python" "$shared/peers/datatrove_minhash.py" --plant "$plant" --fractions "$fractions" "$work/corpus.jsonl")
  echo "$peer"
  # Throughput per core against the peer's, and recall on the planted copies side by side.
  python3 - "$peer" "${lines[@]}" <<'PY'
import json, sys
peer = json.loads(sys.argv[1])
for line in sys.argv[2:]:
    r = json.loads(line)
    if r["threads"] != 1:
        continue
    print(json.dumps({"compare": r["setting"], "vs_datatrove_per_core": round(r["mb_per_s_per_core"] / peer["mb_per_s_per_core"], 1),
        "recall": {f: f"{p['clustered']}/{p['copies']}" for f, p in r["planted"].items()},
        "datatrove_recall": {f: f"{p['clustered']}/{p['copies']}" for f, p in peer["planted"].items()}}))
PY
fi
