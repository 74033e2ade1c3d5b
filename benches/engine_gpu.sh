#!/usr/bin/env bash
# The local engine at Phi-4's full shape (random bf16 weights made on the GPU) beside transformers'
# Phi3ForCausalLM (../shared/gpu/hf_bench.py), in one call on one GPU machine: same batch sizes,
# prompt and generation lengths. Each prints one JSON line per batch size.
#
# Build here (docs/performance.md), then on the GPU machine, from the repository root:
#   bash benches/engine_gpu.sh            # figures go to $OUT (or out/engine-gpu)
# Environment: BATCH (1,8,32,64,128), PROMPT_LEN (256), GEN_LEN (256), PHIFORGE (.gpu/phiforge),
# HF_BENCH (.gpu/hf_bench.py), PYTHON (/opt/torch/.venv/bin/python3); PARTS=0 leaves out the runs
# that take the decode step apart; LOAD=1 adds the load beside transformers (`benches/load.sh` at
# Phi-4's shape: LOAD_REQUESTS (32), LOAD_RATE (4), LOAD_SLOTS (32), LOAD_TIMEOUT (330 s)).
set -u
OUT=${OUT:-out/engine-gpu}
BIN=${PHIFORGE:-.gpu/phiforge}
HF=${HF_BENCH:-.gpu/hf_bench.py}
PY=${PYTHON:-/opt/torch/.venv/bin/python3}
BATCH=${BATCH:-1,8,32,64,128}
P=${PROMPT_LEN:-256}
G=${GEN_LEN:-256}
mkdir -p "$OUT"
# The CUDA libraries of the machine's torch install (cuBLAS, cuRAND), as ../shared/gpu says.
if [ -d /opt/torch/.venv ]; then
  LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib | paste -sd:):/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv > "$OUT/gpu.csv" 2>&1
cat "$OUT/gpu.csv"

step() { # name, timeout, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.err"
  local rc=$?
  echo "rc=$rc in $((SECONDS - t0))s"
  cat "$OUT/$name.jsonl"
  tail -n 6 "$OUT/$name.err"
  return $rc
}

# A tiny model first, with every fused kernel checked against candle's operations (f32, then the
# GPU's bf16): a broken build or kernel fails here in seconds, not after the big one loads.
step smoke-f32 60 "$BIN" bench-engine --device cuda --shape tiny --layers 2 --batch 1,4 \
  --prompt-len 16 --gen-len 8 --dtype f32 --check
step smoke 60 "$BIN" bench-engine --device cuda --shape tiny --layers 2 --batch 1,4 \
  --prompt-len 16 --gen-len 8 --check
# The engine as it runs (fused decode kernels and CUDA graphs on), its kernels checked at Phi-4's
# shape first; then the peer, so that a time limit cuts the extra runs below and not these.
step phiforge "${PHIFORGE_TIMEOUT:-200}" "$BIN" bench-engine --device cuda --batch "$BATCH" \
  --prompt-len "$P" --gen-len "$G" --check ||
  # A failed check stops that run before timing; the engine as a user gets it still runs (its
  # kernels checked at load, candle's operations kept where one fails), so the figures come back.
  step phiforge-unchecked "${PHIFORGE_TIMEOUT:-200}" "$BIN" bench-engine --device cuda \
    --batch "$BATCH" --prompt-len "$P" --gen-len "$G"
step transformers "${HF_TIMEOUT:-220}" "$PY" "$HF" --batch "$BATCH" --prompt-len "$P" --gen-len "$G"
# The generation load (issue #14): both loads of benches/load.sh, each under the prefix cache on
# and off and then through transformers in static batches, the same requests every time.
if [ "${LOAD:-0}" = 1 ]; then
  echo "== load"
  t0=$SECONDS
  DEVICE=cuda SHAPE=phi4 DTYPE=bf16 LAYERS= SLOTS=${LOAD_SLOTS:-32} REQUESTS=${LOAD_REQUESTS:-32} \
    RATE=${LOAD_RATE:-4} PHIFORGE=$BIN PYTHON=$PY HF_SHARED=$(dirname "$HF") \
    timeout "${LOAD_TIMEOUT:-330}" bash benches/load.sh > "$OUT/load.jsonl" 2> "$OUT/load.err"
  echo "rc=$? in $((SECONDS - t0))s"
  cat "$OUT/load.jsonl"
  tail -n 6 "$OUT/load.err"
fi
if [ "${PARTS:-1}" = 1 ]; then
  # What each part brings: candle's operations in the decode step (the build before the kernels);
  # the kernels without CUDA graphs; every kernel but the GEMV (cuBLAS does the products).
  step phiforge-candle-ops 120 "$BIN" bench-engine --device cuda --batch 1,128 --prompt-len "$P" \
    --gen-len "$G" --kernels none
  step phiforge-no-graphs 90 "$BIN" bench-engine --device cuda --batch 1,8 --prompt-len "$P" \
    --gen-len "$G" --no-graphs
  step phiforge-cublas 60 "$BIN" bench-engine --device cuda --batch 1 --prompt-len "$P" \
    --gen-len "$G" --kernels norm,rope,attn,silu,argmax
fi
# Where the time goes (every phase synchronized, so slower than the figures above, and no graphs).
if [ -n "${PROFILE:-}" ]; then
  step profile 90 "$BIN" bench-engine --device cuda --batch 1,8,128 --prompt-len "$P" --gen-len 64 \
    --profile
fi
