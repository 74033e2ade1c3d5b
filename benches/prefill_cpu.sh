#!/usr/bin/env bash
# Prefill on the CPU beside transformers, same shape, same prompt length, same sitting: random
# weights of the tiny shape (hidden 512, Phi-4's head size 128 and GQA ratio 4, vocabulary 1,024),
# LAYERS layers, prompts of PROMPT tokens at batch sizes BATCH; ROUNDS rounds, each running
# phiforge (f32, its CPU default: candle has no bf16 matrix product on the CPU and widens bf16
# weights at every call) then transformers (PyTorch, its default sdpa attention, 2 threads) in each
# of HF_DTYPES (f32, and bf16, which PyTorch computes natively on CPUs with AVX512-BF16), so that a
# noisy machine hits both alike. One JSON line per engine, round, dtype and batch size.
#
# phiforge: `bench-engine` (prefill = time to every sequence's first token through the engine's
# scheduler, prompts fed in chunks of its step budget). transformers: `benches/hf_prefill.py`, the
# peer driver's model and `prefill_once` (one forward, KV cache built) at the dtype asked for.
#
# usage: benches/prefill_cpu.sh
# env:   LAYERS (4), PROMPT (2000), BATCH (1,4), HF_DTYPES ("f32 bf16"), ROUNDS (3),
#        ATTN ("on": phiforge's attention reads the KV pool in place; "on off" adds a run with
#        PHIFORGE_ATTN_IN_PLACE=off, which gathers it for candle's products, each line tagged),
#        CACHE (the peers' venvs, ~/.cache/phiforge-peers; venv-torch is made there on first use:
#        PyPI's torch is the CUDA build, about 3 GB of wheels)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
layers=${LAYERS:-4}
prompt=${PROMPT:-2000}
batch=${BATCH:-1,4}
dtypes=${HF_DTYPES:-f32 bf16}
rounds=${ROUNDS:-3}
. "$root/benches/torch_venv.sh"
. "$root/benches/phiforge_bin.sh"
for round in $(seq "$rounds"); do
  for attn in ${ATTN:-on}; do
    PHIFORGE_ATTN_IN_PLACE=$attn "$bin" bench-engine --shape tiny --layers "$layers" --device cpu \
      --dtype f32 --batch "$batch" --prompt-len "$prompt" --gen-len 2 | while read -r line; do
      echo "{\"round\":$round,\"attn_in_place\":\"$attn\",${line#\{}"
    done
  done
  for dtype in $dtypes; do
    "$torch_python" "$root/benches/hf_prefill.py" --layers "$layers" --batch "$batch" \
      --prompt-len "$prompt" --dtype "$dtype" | while read -r line; do
      echo "{\"round\":$round,${line#\{}"
    done
  done
done
