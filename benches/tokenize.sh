#!/usr/bin/env bash
# Tokenize + write token shards, one core: the tiktoken peer (Python, Rust core, numpy, llm.c uint32
# shards; ../shared/peers/tokenize_shards.py, per-document and batch APIs) and `phiforge tokenize
# --threads 1` on the same corpora in the same run, then checks that phiforge's ids are tiktoken's.
#
# usage: benches/tokenize.sh [RESULTS.jsonl]   (appends the JSON lines there too when given)
# env:   CACHE (the peers' venvs and corpora; default ~/.cache/phiforge-peers), REPEAT (default 1)
#
# Corpora: the peers' organic.jsonl.gz (Python 3.11 docs, by section) and code.jsonl.gz (the standard
# library's files), 42.5 MB of text, made by ../shared/corpora/make-corpora.py on first use.
# MB/s per core is what the peer computes: UTF-8 bytes of the documents' text / seconds, where
# seconds covers tokenizing, filling shards and writing them (JSON reading excluded);
# *_with_json adds the time to read, decompress and parse the JSON lines.
# Lines printed: the peer's two ({"peer":"tiktoken+numpy",...}), phiforge's ({"tool":"phiforge
# tokenize",...}), tokens::cl100k's encoder-only check against tiktoken-rs on each corpus
# ({"corpus":...}), and {"check":"ids equal to tiktoken's shards",...}.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phiforge-peers}
results=${1:-}
repeat=${REPEAT:-1}
corpora=("$cache/corpora/organic.jsonl.gz" "$cache/corpora/code.jsonl.gz")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo build --release -j 2 --bin phiforge --example cl100k_check -p phiforge -p tokens >&2
bin=target/release/phiforge

lines=$(mktemp)
{
  CACHE=$cache OUT=$out/peer REPEAT=$repeat PEERS="tok tok-batch" \
    bash ../shared/peers/run-tok-train-peers.sh "${corpora[@]}"
  for _ in $(seq "$repeat"); do
    "$bin" tokenize --threads 1 --input "${corpora[@]}" --out "$out/phiforge" --shard-tokens 100000000 \
      | python3 -c 'import json,sys,subprocess
d=json.loads(sys.stdin.read())
d["commit"]=subprocess.run(["git","rev-parse","--short","HEAD"],capture_output=True,text=True).stdout.strip()
d["cpu"]=[l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
print(json.dumps(d))'
  done
  target/release/examples/cl100k_check "${corpora[@]}"
  # The peer's stream is [eot, doc1, eot, doc2, ...]; phiforge's [doc1, eot, doc2, eot, ...].
  "$cache/venv-tok/bin/python" - "$out/peer/tok_000000.bin" "$out/phiforge/shard-00000.tok" <<'PY'
import json, sys
import numpy as np
peer = np.fromfile(sys.argv[1], dtype="<u4", offset=1024)
ours_raw = open(sys.argv[2], "rb").read()
width = int.from_bytes(ours_raw[12:16], "little"); n = int.from_bytes(ours_raw[16:24], "little")
ours = np.frombuffer(ours_raw[64:64 + n * width], dtype="<u4" if width == 4 else "<u2")
same = bool(len(peer) == len(ours) and (peer[1:] == ours[:-1]).all() and peer[0] == ours[-1])
print(json.dumps({"check": "ids equal to tiktoken's shards", "peer_tokens": int(len(peer)),
                  "phiforge_tokens": int(len(ours)), "equal": same}))
sys.exit(0 if same else 1)
PY
} | tee "$lines"
if [ -n "$results" ]; then cat "$lines" >> "$results"; fi
rm -f "$lines"
