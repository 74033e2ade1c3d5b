#!/usr/bin/env bash
# Generation orchestration throughput: a three-turn multi-agent flow (author -> solver -> critic,
# each seeing the transcript) built by `phiforge build` against ../shared/peers/mock_openai.py (an
# OpenAI-compatible server on 127.0.0.1 answering after LATENCY_MS), at concurrency CONC; then the
# peers (AsyncOpenAI, distilabel; ../shared/peers/run-orchestration-peers.sh) against the same
# server program, in the same run. Prints one JSON line per measurement (the peers' format:
# "req_per_s" over the client's wall time, "server_req_per_s" over the server's first-to-last
# request window, "bound_req_per_s" = CONC * 1000 / LATENCY_MS).
#
# usage: benches/orchestration.sh [WORK_DIR]     (default: target/bench-orchestration)
# env:   SHARED (default ../shared), SEEDS (inputs of the flow, 3 requests each; default 20000),
#        CONC (256), LATENCY_MS (50), REPEAT (phiforge builds; default 3), PORT (18432),
#        PEERS (default "openai-async distilabel"; "" for phiforge alone), PEER_REPEAT (1),
#        WORKERS (mock server processes; 1)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
work=${1:-$root/target/bench-orchestration}
seeds=${SEEDS:-20000}
conc=${CONC:-256}
lat=${LATENCY_MS:-50}
repeat=${REPEAT:-3}
port=${PORT:-18432}
workers=${WORKERS:-1}
peers=${PEERS-openai-async distilabel}
mkdir -p "$work"
work=$(cd "$work" && pwd)

(cd "$root" && cargo build --release -j 2 -q)
bin=${CARGO_TARGET_DIR:-$root/target}/release/phiforge

# The peers' venv (made by their driver on first use) runs the mock server too.
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phiforge-peers}
py=$cache/venv-distilabel/bin/python
if [ ! -x "$py" ]; then
  PEERS=none REPEAT=0 bash "$shared/peers/run-orchestration-peers.sh" >/dev/null 2>&1 || true
fi
mock=$shared/peers/mock_openai.py

python3 - "$work/seeds.jsonl" "$seeds" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for k in range(int(sys.argv[2])):
        f.write(json.dumps({"id": f"seed-{k}", "text": f"Seed {k}: a paragraph about sorting lists in Python, stably."}) + "\n")
PY
cat > "$work/recipe.yaml" <<YAML
name: bench-orchestration
seed: 1
sources:
  seeds: {path: seeds.jsonl, class: web}
engines:
  mock: {kind: openai, model: mock, endpoints: ["http://127.0.0.1:$port/v1"], max_concurrency: $conc}
stages:
  - name: conversations
    type: multi_agent
    inputs: [seeds]
    engine: mock
    sampling: {temperature: 0.8, max_tokens: 256}
    agents:
      - {name: author, prompt: "Write a question about: {{ text }}"}
      - {name: solver, prompt: "Solve the question above."}
      - {name: critic, prompt: "Check the solution above."}
    sample:
      - {role: user, content: "{{ author.reply }}"}
      - {role: assistant, content: "{{ solver.reply }}"}
output: {path: out, format: jsonl}
YAML

spid=
cleanup() { if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi; }
trap cleanup EXIT
"$py" "$mock" serve --port "$port" --latency-ms "$lat" --workers "$workers" --max-seconds 1800 2>>"$work/mock.log" &
spid=$!
"$py" "$mock" ctl wait --port "$port" --timeout 30

for r in $(seq 1 "$repeat"); do
  rm -rf "$work/out" "$work/.phiforge"
  "$py" "$mock" ctl reset --port "$port"
  t0=$(date +%s.%N)
  /usr/bin/time -o "$work/time.json" -f '{"client_user_s":%U,"client_sys_s":%S,"client_wall_s":%e,"client_max_rss_kb":%M}' \
    "$bin" build "$work/recipe.yaml" >"$work/build.log" 2>&1
  t1=$(date +%s.%N)
  kept=$(cat "$work"/out/conversations/*.jsonl | wc -l)
  { echo "{\"requests\": $((3 * seeds)), \"seconds\": $(echo "$t1 - $t0" | bc), \"samples_kept\": $kept}"; cat "$work/time.json"; } |
    "$py" "$mock" ctl report --port "$port" --peer phiforge-multi-agent --concurrency "$conc" --latency-ms "$lat" --run "$r"
done
cleanup
spid=

if [ -n "$peers" ]; then
  PEERS="$peers" REPEAT=${PEER_REPEAT:-1} CONC=$conc LATENCY_MS=$lat PORT=$((port + 1)) WORKERS=$workers \
    bash "$shared/peers/run-orchestration-peers.sh" "$work/peers" >/dev/null
  cat "$work/peers/orchestration.jsonl"
fi
