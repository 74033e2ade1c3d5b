#!/usr/bin/env bash
# Remakes the quickstart's generation model (examples/quickstart/model/) from the repository's
# example corpus: a tokenizer, then a build of model.yaml (dedup and mix), then its training.
# The tokenizer and the mix are deterministic; the weights depend on the CPU and its thread count.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
cargo build --release -j 2
bin="${CARGO_TARGET_DIR:-$root/target}/release/phiforge"
"$bin" train-tokenizer --input 'examples/corpus/*.jsonl.gz' --vocab 2048 \
  --out examples/quickstart/model/tokenizer.json
rm -rf out/quickstart-model
"$bin" build examples/quickstart/model.yaml
cp out/quickstart-model/train/model/config.json out/quickstart-model/train/model/model.safetensors \
  examples/quickstart/model/
ls -l examples/quickstart/model/
