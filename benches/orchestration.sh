#!/usr/bin/env bash
# Generation orchestration throughput: a three-turn multi-agent flow (author -> solver -> critic,
# each seeing the transcript) built by `phiforge build` against a loopback OpenAI-compatible
# server answering after LATENCY_MS, at concurrency CONC; then, against the same server in the
# same run, the peers of ../shared/peers/run-orchestration-peers.sh (wrk, AsyncOpenAI on httpx and
# on aiohttp, distilabel), with that script's drivers. Two servers, each in turn:
#   python: ../shared/peers/mock_openai.py (aiohttp, one process);
#   rust:   benches/mock_openai.rs (axum, one thread), the same replies and /stats counters: on a
#           2-core machine the Python server's own CPU caps what any client gets from it below
#           the bound (wrk shows each server's ceiling).
# Prints one JSON line per measurement (mock_openai.py's `ctl report` format, plus "server"):
# "req_per_s" over the client's wall time, "server_req_per_s" over the server's first-to-last
# request window, "bound_req_per_s" = CONC * 1000 / LATENCY_MS.
#
# usage: benches/orchestration.sh [WORK_DIR]     (default: target/bench-orchestration)
# env:   SHARED (../shared), SERVERS ("python rust"), SEEDS (flow inputs, 3 requests each; 20000),
#        CONC (256), LATENCY_MS (50), REPEAT (phiforge builds per server; 3), PORT (18432),
#        PEERS ("wrk openai-async openai-async-aiohttp distilabel"; "" for phiforge alone),
#        PEER_REPEAT (2), ROWS (requests per Python peer run; 5000), WRK_SECONDS (15)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
work=${1:-$root/target/bench-orchestration}
servers=${SERVERS:-python rust}
seeds=${SEEDS:-20000}
conc=${CONC:-256}
lat=${LATENCY_MS:-50}
repeat=${REPEAT:-3}
port=${PORT:-18432}
peers=${PEERS-wrk openai-async openai-async-aiohttp distilabel}
peer_repeat=${PEER_REPEAT:-2}
rows=${ROWS:-5000}
wrk_s=${WRK_SECONDS:-15}
mkdir -p "$work"
work=$(cd "$work" && pwd)

cd "$root"
cargo build --release -j 2 -q
bin=${CARGO_TARGET_DIR:-$root/target}/release/phiforge
rust_mock=$(cargo bench -j 2 -q --bench mock_openai --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    if d.get("reason") == "compiler-artifact" and d.get("executable") and d["target"]["name"] == "mock_openai":
        print(d["executable"])')

# The peers' venv (made by their driver on first use) runs mock_openai.py and its `ctl`.
peerdir=$shared/peers
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phiforge-peers}
py=$cache/venv-distilabel/bin/python
if [ ! -x "$py" ]; then
  PEERS=none REPEAT=0 bash "$peerdir/run-orchestration-peers.sh" >/dev/null 2>&1 || true
fi
ctl() { "$py" "$peerdir/mock_openai.py" ctl "$@" --port "$port"; }

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
    gates: {duplicates: off}
output: {path: out, format: jsonl}
YAML

spid=
stop_server() { if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; spid=; fi; }
trap stop_server EXIT
timefmt='{"client_user_s":%U,"client_sys_s":%S,"client_wall_s":%e}'

# measure SERVER PEER RUN LIMIT_S CMD...: reset the server's counters, run CMD (its stdout: a JSON
# line with requests and seconds) under GNU time, and print the merged measurement line.
measure() {
  local server=$1 peer=$2 run=$3 limit=$4 rc=0
  shift 4
  ctl reset
  rm -f "$work/time.json"
  /usr/bin/time -o "$work/time.json" -f "$timefmt" timeout -k 10 "$limit" "$@" >"$work/client.out" 2>>"$work/clients.log" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "$server/$peer run $run failed ($rc; see $work/clients.log)" >&2; return 0; fi
  { cat "$work/client.out"; cat "$work/time.json"; echo "{\"server\": \"$server\"}"; } |
    ctl report --peer "$peer" --concurrency "$conc" --latency-ms "$lat" --run "$run"
}

# phiforge's build, as one client command: its JSON line counts the flow's requests.
phiforge_build() {
  rm -rf "$work/out" "$work/.phiforge"
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" build "$work/recipe.yaml" >"$work/build.log" 2>&1
  t1=$(date +%s.%N)
  local kept
  kept=$(cat "$work"/out/conversations/*.jsonl | wc -l)
  echo "{\"requests\": $((3 * seeds)), \"seconds\": $(echo "$t1 - $t0" | bc), \"samples_kept\": $kept}"
}

export -f phiforge_build
export work bin seeds

for server in $servers; do
  case $server in
    python) "$py" "$peerdir/mock_openai.py" serve --port "$port" --latency-ms "$lat" --max-seconds 1800 2>>"$work/server.log" & ;;
    rust) "$rust_mock" --port "$port" --latency-ms "$lat" --max-seconds 1800 2>>"$work/server.log" & ;;
    *) echo "unknown server $server" >&2; exit 2 ;;
  esac
  spid=$!
  ctl wait --timeout 30
  for r in $(seq 1 "$repeat"); do
    measure "$server" phiforge-multi-agent "$r" 600 bash -c phiforge_build
  done
  for p in $peers; do
    for r in $(seq 1 "$peer_repeat"); do
      case $p in
        wrk)
          command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk): skipping" >&2; break; }
          measure "$server" wrk "$r" $((wrk_s + 30)) wrk -t 2 -c "$conc" -d "${wrk_s}s" --timeout 10s \
            -s "$peerdir/wrk_chat.lua" "http://127.0.0.1:$port" -- 1000000 ;;
        openai-async)
          measure "$server" "$p" "$r" 330 "$py" "$peerdir/distilabel_throughput.py" --peer openai-async \
            --base-url "http://127.0.0.1:$port/v1" --rows "$rows" --concurrency "$conc" --max-seconds 300 ;;
        openai-async-aiohttp)
          measure "$server" "$p" "$r" 330 "$py" "$peerdir/distilabel_throughput.py" --peer openai-async --http aiohttp \
            --base-url "http://127.0.0.1:$port/v1" --rows "$rows" --concurrency "$conc" --max-seconds 300 ;;
        distilabel)
          measure "$server" "$p" "$r" 360 "$py" "$peerdir/distilabel_throughput.py" --peer distilabel --replicas 1 \
            --load-batch-size "$conc" --cache "$cache" --base-url "http://127.0.0.1:$port/v1" --rows "$rows" \
            --concurrency "$conc" --max-seconds 300 ;;
        *) echo "unknown peer $p" >&2; exit 2 ;;
      esac
    done
  done
  stop_server
done
