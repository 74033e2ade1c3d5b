#!/usr/bin/env bash
# The local engine under a generation load (`phiforge bench-load`), prefix cache on then off, in
# the same run, on random weights of the tiny shape (hidden 512, Phi-4's head size and GQA ratio)
# with LAYERS layers, f32 on the CPU, 16 slots. Two loads, each replayed under both settings:
#   mixed:  the issue's distribution: prompts 100-2,000 tokens, outputs 50-1,000, 75% of requests
#           opening with one of 4 common prefixes (80% of their length), Poisson arrivals at RATE/s;
#   shared: the shared-prefix load (one document under many instructions, a judge or critic's
#           short verdicts): prompts 1,000-2,000 tokens, all opening with one of 4 prefixes (90%
#           of their length), outputs 16-64 tokens, all sent at once.
# Then the peer: transformers (PyTorch, 2 threads, f32) fed the same requests in static batches
# of up to 16, whatever has arrived when the model is free (`benches/hf_load.py`; the torch venv
# of `benches/torch_venv.sh`).
# Prints one JSON line per load and setting (tokens/s, time to first token and between tokens as
# percentiles, the prefix cache's hit rate), and one per load for the peer.
#
# usage: benches/load.sh [mixed] [shared]      (default: both)
# env:   LAYERS (default 4), REQUESTS (default 48), RATE (default 1), STEP_TOKENS (default 1024),
#        SLOTS (default 16), PEER (default 1; 0 leaves transformers out), PREFIX_CACHE (default
#        on,off), KV_CACHE_TOKENS (default 0: SLOTS x the longest request's positions)
# On a GPU machine (no toolchain, no network; see docs/performance.md), with the binary built here:
#        DEVICE=cuda SHAPE=phi4 DTYPE=bf16 PHIFORGE=/tmp/phiforge PYTHON=/opt/torch/.venv/bin/python3
#        (DEVICE, SHAPE, DTYPE default to cpu, tiny, f32; PHIFORGE set skips the build, PYTHON set
#        skips making the torch venv; LAYERS= empty keeps the shape's own layers)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
layers=${LAYERS-4}
requests=${REQUESTS:-48}
rate=${RATE:-1}
step=${STEP_TOKENS:-1024}
slots=${SLOTS:-16}
device=${DEVICE:-cpu}
shape=${SHAPE:-tiny}
dtype=${DTYPE:-f32}
loads=${*:-mixed shared}
peer=${PEER:-1}
if [ "$peer" = 1 ]; then
  if [ -n "${PYTHON:-}" ]; then torch_python=$PYTHON; else . "$root/benches/torch_venv.sh"; fi
fi
. "$root/benches/phiforge_bin.sh"
reqs=$(mktemp -d)
trap 'rm -rf "$reqs"' EXIT
common=(--shape "$shape" --device "$device" --dtype "$dtype" --slots "$slots" --step-tokens "$step"
        --prefix-cache "${PREFIX_CACHE:-on,off}" --kv-cache-tokens "${KV_CACHE_TOKENS:-0}")
peer_args=(--shape "$shape" --device "$device" --dtype "$dtype" --slots "$slots")
if [ -n "$layers" ]; then
  common+=(--layers "$layers")
  peer_args+=(--layers "$layers")
fi
for load in $loads; do
  case $load in
    mixed) args=(--requests "$requests" --rate "$rate" --prompt-len 100,2000 --output-len 50,1000
                 --shared 0.75 --prefixes 4 --prefix-share 0.8) ;;
    shared) args=(--requests "$requests" --rate 0 --prompt-len 1000,2000 --output-len 16,64
                  --shared 1 --prefixes 4 --prefix-share 0.9) ;;
    *) echo "unknown load $load (mixed, shared)" >&2; exit 2 ;;
  esac
  "$bin" bench-load "${common[@]}" "${args[@]}" --write-requests "$reqs/$load.jsonl" |
    while read -r line; do
      echo "{\"load\":\"$load\",${line#\{}"
    done
  if [ "$peer" = 1 ]; then
    "$torch_python" "$root/benches/hf_load.py" "$reqs/$load.jsonl" "${peer_args[@]}" |
      while read -r line; do
        echo "{\"load\":\"$load\",${line#\{}"
      done
  fi
done
