#!/usr/bin/env bash
# `phiforge query` over a build of 16 shards (the standard library's source files, 16 copies of the
# corpus ../shared/corpora/make-corpora.py makes: 526 MB of JSON lines, 28,192 samples), listed
# by a manifest.json as a build's stage outputs: wall time and peak memory (max RSS) of a query
# that reads the texts and of one that does not.
#
# usage: benches/query.sh        env: CACHE (corpora; default ~/.cache/phiforge-peers),
#                                     PHIFORGE (a built binary; default: build the release one)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CACHE:-$HOME/.cache/phiforge-peers}
if [ ! -f "$cache/corpora/code.jsonl.gz" ]; then
  python3 "$root/../shared/corpora/make-corpora.py" "$cache/corpora" >&2
fi
. "$root/benches/phiforge_bin.sh"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
mkdir -p "$build/s"
zcat "$cache/corpora/code.jsonl.gz" > "$build/s/0.jsonl"
rows=$(wc -l < "$build/s/0.jsonl")
files=""
for i in $(seq 0 15); do
  [ "$i" = 0 ] || cp "$build/s/0.jsonl" "$build/s/$i.jsonl"
  files="$files${files:+,}{\"path\":\"s/$i.jsonl\",\"rows\":$rows}"
done
echo "{\"stages\":[{\"name\":\"code\",\"files\":[$files]}]}" > "$build/manifest.json"
for sql in "SELECT source, count(*) AS n FROM samples GROUP BY source" \
           "SELECT stage, count(*) AS n, sum(length(text)) AS chars FROM samples GROUP BY stage"; do
  /usr/bin/time -f "%e %M" -o "$build/time" "$bin" query "$build" "$sql" > /dev/null
  read -r secs kb < "$build/time"
  echo "{\"tool\":\"phiforge query\",\"shards\":16,\"samples\":$((rows * 16)),\"sql\":\"$sql\",\"seconds\":$secs,\"max_rss_mb\":$((kb / 1024))}"
done
