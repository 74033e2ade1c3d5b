#!/usr/bin/env bash
# `phiforge filter --where` over Python's documentation and standard library (5,209 documents,
# ~42 MB of JSON lines, ../shared/corpora/make-corpora.py), with and without a declared record
# field (`--field source:str`): wall time and peak memory (max RSS). One JSON line per run.
#
# usage: benches/filter_fields.sh     env: CACHE (corpora; default ~/.cache/phiforge-peers),
#                                          PHIFORGE (a built binary; default: build the release one),
#                                          THREADS (default 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CACHE:-$HOME/.cache/phiforge-peers}
threads=${THREADS:-2}
if [ ! -f "$cache/corpora/code.jsonl.gz" ]; then
  python3 "$root/../shared/corpora/make-corpora.py" "$cache/corpora" >&2
fi
. "$root/benches/phiforge_bin.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
zcat "$cache/corpora/organic.jsonl.gz" "$cache/corpora/code.jsonl.gz" > "$work/corpus.jsonl"
run() {
  local name=$1
  shift
  rm -rf "$work/out"
  /usr/bin/time -f "%e %M" -o "$work/time" \
    "$bin" filter -i "$work/corpus.jsonl" -o "$work/out" --threads "$threads" "$@" > /dev/null
  read -r secs kb < "$work/time"
  kept=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kept"])' "$work/out/report.json")
  echo "{\"tool\":\"phiforge filter\",\"run\":\"$name\",\"threads\":$threads,\"kept\":$kept,\"seconds\":$secs,\"max_rss_mb\":$((kb / 1024))}"
}
run "no field" --where "words >= 50"
run "--field source:str" --field source:str --where "words >= 50 AND source = 'python3.11-doc'"
