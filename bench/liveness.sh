#!/usr/bin/env bash
# Issue 18: how fast the pipeline's own liveness sees a failure, and how fast launch.sh
# has the service back, on this host (tiny model, 2 stages, no pool workers): TRIALS
# rounds of (a) a stage SIGSTOPped (a partition as its peers see it), (b) a stage
# SIGKILLed, (c) the coordinator SIGSTOPped (the stages must leave by themselves).
# Prints one JSON object: per fault the milliseconds of every trial and the median.
# Faults are 11 s apart: launch.sh doubles its restart delay for a job that dies within
# 10 s of its start (RESTART_QUICK_S), which would otherwise be measured instead.
# usage: bench/liveness.sh BUILD_DIR [TRIALS=5] [STAGE_LIVENESS_MS=1000]
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: bench/liveness.sh BUILD_DIR [TRIALS] [STAGE_LIVENESS_MS]}
trials=${2:-5} liveness=${3:-1000}
source "$src/tests/integration/probe.sh"
mmctl=$build/tools/mmctl
dir=$(mktemp -d /tmp/mm-bench-liveness-XXXXXX)
lpid=
trap '[[ -n $lpid ]] && kill -TERM "$lpid"; sleep 2; for p in $(pgrep -f "$dir/"); do kill -CONT "$p"; kill -KILL "$p"; done 2>/dev/null; rm -rf "$dir"' EXIT
read -r port mport < <("$mmctl" free-port 2)
cat > "$dir/cfg.json" <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$port", "threads": 1, "stages": 2,
 "stage_liveness_ms": $liveness, "fail_exit_ms": 300, "restart_delay_ms": 200, "encoders": 0, "decoders": 0,
 "encode_bind": "", "decode_bind": "", "metrics_listen": "127.0.0.1:$mport", "http_listen": ""}
JSON
healthy() { "$mmctl" --server 127.0.0.1:$port --timeout 1 health >/dev/null 2>&1; }
stage_pid() { "$mmctl" --server 127.0.0.1:$port info | sed -n "s/.*\"rank\": $1, .*\"pid\": \([0-9]*\).*/\1/p"; }
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!
wait_health 0 60 || { echo "not SERVING" >&2; exit 1; }
declare -A ms
add() { ms[$1]+="${ms[$1]:+, }$2"; }
for ((t = 1; t <= trials; t++)); do
  for sig in STOP KILL; do
    victim=$(stage_pid $((t % 2 + 1)))
    t0=$(now_ms)
    kill -$sig "$victim"
    wait_health 1 20 && add "stage_${sig,,}_not_serving" $(($(now_ms) - t0))
    wait_health 0 60 && add "stage_${sig,,}_serving_again" $(($(now_ms) - t0))
    sleep 11
  done
  cpid=$(pgrep -f "^$build/coordinator/mm-coordinator $dir/cfg.json") s1=$(stage_pid 1) s2=$(stage_pid 2)
  t0=$(now_ms)
  kill -STOP "$cpid"
  for _ in $(seq 1 400); do gone "$s1" && gone "$s2" && break; sleep 0.02; done
  gone "$s1" && gone "$s2" && add coordinator_stop_stages_exit $(($(now_ms) - t0))
  kill -KILL "$cpid"
  wait_health 0 60 || { echo "not SERVING again" >&2; exit 1; }
  sleep 11
done
"${PY:-python3}" - "$liveness" "$trials" <<PY
import json, statistics, sys
ms = {$(for k in "${!ms[@]}"; do printf '"%s": [%s], ' "$k" "${ms[$k]}"; done)}
print(json.dumps({"bench": "liveness", "stage_liveness_ms": int(sys.argv[1]), "trials": int(sys.argv[2]),
                  "ms": ms, "median_ms": {k: statistics.median(v) for k, v in sorted(ms.items()) if v}}, indent=1))
PY
