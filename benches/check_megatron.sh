#!/usr/bin/env bash
# Checks `phiforge tokenize --out SHARD_DIR --megatron PREFIX` output with megatron-core's own
# IndexedDataset (benches/check_megatron.py): sequence count, lengths and tokens against the shards.
#
# usage: benches/check_megatron.sh PREFIX [SHARD_DIR]    (SHARD_DIR defaults to PREFIX's folder)
# env:   VENV (a venv with torch; default ~/.cache/phiforge-peers/venv-torch, the trainer peers' venv).
#        megatron-core is installed into it with --no-deps when missing (it imports with torch and
#        numpy alone for its datasets; Transformer Engine and Apex are optional).
# Example, on the example corpus:
#   cargo run --release -j 2 -- tokenize --input examples/corpus/*.jsonl* --out out/tok --megatron out/tok/mega
#   benches/check_megatron.sh out/tok/mega
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:?usage: check_megatron.sh PREFIX [SHARD_DIR]}
shards=${2:-$(dirname "$prefix")}
venv=${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/phiforge-peers/venv-torch}
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "no torch in $venv (make it with TORCH_CUDA_OK=1 PEERS=train ../shared/peers/run-tok-train-peers.sh)" >&2
  exit 2
fi
if ! "$venv/bin/python" -W ignore -c 'import megatron.core.datasets.indexed_dataset' 2>/dev/null; then
  "$venv/bin/pip" install -q --no-deps megatron-core >&2
fi
"$venv/bin/python" "$here/check_megatron.py" "$prefix" "$shards"
