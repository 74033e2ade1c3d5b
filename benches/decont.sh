#!/usr/bin/env bash
# Decontamination throughput: phiforge against datatrove's NGramsDecontFilter and lm-eval's janitor, in
# one run, on the same corpus (Python's documentation + standard library, ~42 MB of text) and the same
# benchmarks (the seven standard sets). Prints one JSON line per measurement.
#
# usage: benches/decont.sh [WORK_DIR]      (default: target/bench-decont)
# env:   SHARED (default ../shared), PEERS (default "datatrove lmeval-python"; "" for phiforge alone),
#        REPEAT (phiforge runs per setting, best kept; default 3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
work=${1:-$root/target/bench-decont}
mkdir -p "$work"
work=$(cd "$work" && pwd)

if [ ! -s "$work/corpus.jsonl" ]; then
  [ -s "$work/corpora/code.jsonl.gz" ] || python3 "$shared/corpora/make-corpora.py" "$work/corpora" >&2
  zcat "$work/corpora/organic.jsonl.gz" "$work/corpora/code.jsonl.gz" > "$work/corpus.jsonl"
fi

. "$root/benches/phiforge_bin.sh"

for threads in 1 "$(nproc)"; do
  best=""
  for _ in $(seq "${REPEAT:-3}"); do
    start=$(date +%s.%N)
    "$bin" audit -b standard -i "$work/corpus.jsonl" -o "$work/phiforge-out" --threads "$threads" >/dev/null
    end=$(date +%s.%N)
    line=$(python3 - "$work/phiforge-out/audit.json" "$threads" "$start" "$end" <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); t = a["totals"]; threads = int(sys.argv[2])
wall = float(sys.argv[4]) - float(sys.argv[3])
print(json.dumps({"peer": "phiforge", "version": a["phiforge_version"], "threads": threads,
    "docs": t["documents"], "bytes": t["text_bytes"], "index_s": round(wall - t["seconds"], 3),
    "scan_s": round(t["seconds"], 3), "mb_per_s": round(t["text_bytes"] / 1e6 / t["seconds"], 1),
    "mb_per_s_per_core": round(t["text_bytes"] / 1e6 / t["seconds"] / threads, 1),
    "flagged": t["contaminated"] + t["partial"], "items": a["index"]["items"]}))
PY
)
    if [ -z "$best" ] || python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["scan_s"] < json.loads(sys.argv[2])["scan_s"] else 1)' "$line" "$best"; then
      best=$line
    fi
  done
  echo "$best"
done

if [ -n "${PEERS-datatrove lmeval-python}" ]; then
  PEERS=${PEERS-datatrove lmeval-python} bash "$shared/peers/run-decont-peers.sh" "$shared/benchmarks" "$work/corpus.jsonl" "$work/peers"
fi
