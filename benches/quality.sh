#!/usr/bin/env bash
# Quality filters: phiforge's presets against datatrove 0.10.1's own filters, in one run, on the same
# corpus (Python's documentation, one document per section, + its standard library, ~42 MB of text),
# document by document. Prints one JSON line per measurement, then per filter the agreement, a
# confusion table and the commonest disagreements (read by docs/curation.md).
#
# usage: benches/quality.sh [WORK_DIR]      (default: target/bench-quality)
# env:   SHARED (default ../shared), PEERS (default "datatrove"; "" for phiforge alone),
#        THREADS (phiforge's worker threads; default 1, as the peer runs on one core),
#        BIN (a phiforge binary to use instead of building the release one)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
work=${1:-$root/target/bench-quality}
mkdir -p "$work"
work=$(cd "$work" && pwd)
threads=${THREADS:-1}

if [ ! -s "$work/corpus.jsonl" ]; then
  [ -s "$work/corpora/code.jsonl.gz" ] || python3 "$shared/corpora/make-corpora.py" "$work/corpora" >&2
  zcat "$work/corpora/organic.jsonl.gz" "$work/corpora/code.jsonl.gz" > "$work/corpus.jsonl"
fi

[ -n "${BIN:-}" ] || (cd "$root" && cargo build --release -j 2 -q)
bin=${BIN:-${CARGO_TARGET_DIR:-$root/target}/release/phiforge}

# phiforge: each preset over the whole corpus (signals, rules, kept/, removed/, decisions.jsonl,
# signals.parquet); polars' own pool gets the same threads.
for preset in gopher_repetition gopher_quality gopher c4 fineweb; do
  POLARS_MAX_THREADS=$threads "$bin" filter -i "$work/corpus.jsonl" -o "$work/phiforge-$preset" \
    --preset "$preset" --threads "$threads" >/dev/null
  python3 - "$work/phiforge-$preset/report.json" "$preset" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"peer": "phiforge", "preset": sys.argv[2], "threads": r["threads"], "docs": r["documents"],
    "bytes": r["text_bytes"], "s": r["seconds"], "mb_per_s_per_core": r["mb_per_s_per_core"],
    "kept": r["kept"], "dropped": r["removed"], "reasons": r["reasons"]}))
PY
done

if [ -n "${PEERS-datatrove}" ]; then
  PEERS=quality bash "$shared/peers/run-datatrove-peers.sh" "$work/corpus.jsonl" "$shared/benchmarks" "$work/peers"
fi
[ -s "$work/peers/datatrove-quality.decisions.jsonl" ] || exit 0

python3 - "$work" <<'PY'
import collections, json, sys
work = sys.argv[1]
source = {}
with open(f"{work}/corpus.jsonl") as f:
    for line in f:
        r = json.loads(line)
        source[str(r["id"])] = r.get("source") or "?"

dt = collections.defaultdict(dict)  # filter -> id -> reason (None: kept)
with open(f"{work}/peers/datatrove-quality.decisions.jsonl") as f:
    for line in f:
        d = json.loads(line)
        dt[d["filter"]][d["id"]] = None if d["keep"] else d["reason"]
# datatrove's pipeline order for FineWeb: repetition, then quality; the first to drop names it.
dt["gopher"] = {i: dt["gopher_repetition"][i] or dt["gopher_quality"][i] for i in dt["gopher_repetition"]}

pairs = [("gopher_repetition", "gopher_repetition"), ("gopher_quality", "gopher_quality"),
         ("gopher", "gopher"), ("c4", "c4_quality"), ("fineweb", "fineweb_quality")]
for preset, peer in pairs:
    ours = {}
    with open(f"{work}/phiforge-{preset}/decisions.jsonl") as f:
        for line in f:
            d = json.loads(line)
            ours[d["id"]] = None if d["keep"] else d["reason"]
    theirs = dt[peer]
    assert ours.keys() == theirs.keys(), (preset, len(ours), len(theirs))
    cells = collections.Counter()
    only_ours, only_theirs, other_reason = collections.Counter(), collections.Counter(), collections.Counter()
    by_source = collections.Counter()
    for i, a in ours.items():
        b = theirs[i]
        if a is None and b is None:
            cells["both keep"] += 1
        elif a is not None and b is not None:
            cells["both drop, same reason" if a == b else "both drop, other reason"] += 1
            if a != b:
                other_reason[(a, b)] += 1
        elif a is None:
            cells["phiforge keeps, datatrove drops"] += 1
            only_theirs[b] += 1
            by_source[("datatrove drops", source.get(i))] += 1
        else:
            cells["phiforge drops, datatrove keeps"] += 1
            only_ours[a] += 1
            by_source[("phiforge drops", source.get(i))] += 1
    n = len(ours)
    same = cells["both keep"] + cells["both drop, same reason"]
    agree = same + cells["both drop, other reason"]
    print(json.dumps({"compare": preset, "peer_filter": peer, "docs": n,
        "agree_keep_drop": agree, "agree_pct": round(100 * agree / n, 1),
        "agree_with_reason": same, "cells": dict(cells),
        "phiforge_drops": sum(a is not None for a in ours.values()),
        "datatrove_drops": sum(b is not None for b in theirs.values()),
        "only_datatrove_drops": dict(only_theirs.most_common(6)),
        "only_phiforge_drops": dict(only_ours.most_common(6)),
        "other_reason": {f"{a} / {b}": k for (a, b), k in other_reason.most_common(5)},
        "disagreements_by_source": {f"{w}: {s}": k for (w, s), k in by_source.most_common()}}))
PY
