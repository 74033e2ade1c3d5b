#!/usr/bin/env bash
# Training a tiny Phi-3 on the CPU: PyTorch + transformers (../shared/peers/torch_train_tiny.py, through
# run-tok-train-peers.sh) against phiforge's trainer (trainer/benches/train_tiny.rs), in the same run, on
# the SAME llm.c uint32 shard (tiktoken cl100k_base tokens of Python's docs + standard library, made by the
# peers' tokenize step): hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 512, RoPE θ 250,000,
# untied embeddings, seq 256, batch 8, f32, 2 threads, AdamW lr 3e-4, 3 warmup + 30 timed steps; step i
# trains on tokens [i*B*T, (i+1)*B*T + 1) modulo the vocabulary, at vocabularies 100,352 and 8,192.
# Prints one JSON line per trainer and vocabulary (the peer's first, then phiforge's).
#
# usage: benches/train_cpu.sh
# env:   SHARED (default ../shared), CACHE (the peers' cache, default ~/.cache/phiforge-peers),
#        VOCABS (default "100352 8192"), PEERS (default "train"; "" for phiforge alone),
#        TORCH_CUDA_OK=1 lets the peer script create its torch venv (about 3 GB of wheels)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phiforge-peers}
vocabs=${VOCABS:-100352 8192}
peers=${PEERS-train}
shard=$cache/tok-shards/tok_000000.bin

if [ ! -f "$shard" ]; then
  # The peers' script expects the corpora under CACHE/corpora.
  [ -f "$cache/corpora/code.jsonl.gz" ] || python3 "$shared/corpora/make-corpora.py" "$cache/corpora" >&2
  CACHE=$cache PEERS=tok bash "$shared/peers/run-tok-train-peers.sh" >&2
fi

(cd "$root" && cargo bench -p trainer --bench train_tiny --no-run -j 2 -q)
bin=$(ls -t "${CARGO_TARGET_DIR:-$root/target}"/release/deps/train_tiny-* | grep -v '\.d$' | head -1)

for v in $vocabs; do
  if [ -n "$peers" ]; then
    CACHE=$cache PEERS=train VOCABS=$v bash "$shared/peers/run-tok-train-peers.sh"
  fi
  "$bin" "$shard" --vocab "$v" --seq 256 --batch 8 --steps 30 --warmup 3 --lr 3e-4 --threads 2
done
