#!/usr/bin/env bash
# The whole LLM service with its pipeline stage on the GPU: mpiexec runs mm-coordinator
# and one `mm-stage --backend cuda` on the embedded tiny model, mmctl asks for greedy
# answers (token ids) to a few prompts, and the same service with the stage on the CPU
# gives the baseline: the ids must agree. Prints one JSON object on stdout.
# Usage: tests/gpu/service_check.sh BIN_DIR SOURCE_DIR [GPU_BACKEND (cuda)]
#   BIN_DIR holds mm-coordinator, mm-stage, mmctl and mpiexec (+ hydra_pmi_proxy), as a
#   pack from tests/gpu/pack.sh unpacks them; GPU_BACKEND=cpu runs both sides on the CPU
#   (how this script is checked on a machine without a GPU). MM_LD_LIBRARY_PATH, when
#   set, is the library path of our programs (the pack's libraries), not of python3.
set -uo pipefail
bin=$1 src=$2 backend=${3:-cuda}
dir=$(mktemp -d /tmp/mm-service-check-XXXXXX)
export PATH=$bin:$PATH
ours() { if [[ -n ${MM_LD_LIBRARY_PATH:-} ]]; then LD_LIBRARY_PATH=$MM_LD_LIBRARY_PATH "$@"; else "$@"; fi; }
prompts=("Hello" "The capital of France is" "1, 2, 3, 4," "Once upon a time")
svc_pid=

stop_service() {
  [[ -n $svc_pid ]] || return 0
  kill -TERM -- -"$svc_pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$svc_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- -"$svc_pid" 2>/dev/null
  wait "$svc_pid" 2>/dev/null
  svc_pid=
}
trap stop_service EXIT

# run_side NAME BACKEND: starts the service, writes NAME.ids (one line of ids per prompt)
run_side() {
  local name=$1 be=$2 port eport dport mport
  read -r port eport dport mport < <(ours mmctl free-port 4)
  cat >"$dir/$name.json" <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$port", "threads": 2, "backend": "$be",
 "encode_bind": "tcp://127.0.0.1:$eport", "decode_bind": "tcp://127.0.0.1:$dport",
 "metrics_listen": "127.0.0.1:$mport", "http_listen": ""}
JSON
  # setsid execs env execs mpiexec: one pid, the process group stop_service ends
  setsid env ${MM_LD_LIBRARY_PATH:+LD_LIBRARY_PATH=$MM_LD_LIBRARY_PATH} mpiexec -launcher fork -hosts localhost -disable-auto-cleanup -n 1 "$bin/mm-coordinator" "$dir/$name.json" \
    : -n 1 "$bin/mm-stage" --backend "$be" "$dir/$name.json" >"$dir/$name.log" 2>&1 &
  svc_pid=$!
  local ok=0
  for _ in $(seq 1 300); do
    ours mmctl --server 127.0.0.1:$port health >/dev/null 2>&1 && { ok=1; break; }
    kill -0 "$svc_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ((!ok)); then
    echo "service_check: $name ($be) not SERVING; log:" >&2
    tail -20 "$dir/$name.log" >&2
    stop_service
    return 1
  fi
  : >"$dir/$name.ids"
  for p in "${prompts[@]}"; do
    ours mmctl --server 127.0.0.1:$port --timeout 60 generate --prompt "$p" --max-tokens 24 --ids 2>/dev/null \
      >>"$dir/$name.ids" || echo "error" >>"$dir/$name.ids"
  done
  stop_service
}

rc=0
run_side gpu "$backend" || rc=1
((rc == 0)) && { run_side cpu cpu || rc=1; }
same=0 total=${#prompts[@]}
if ((rc == 0)); then
  same=$(paste -d'|' "$dir/gpu.ids" "$dir/cpu.ids" | awk -F'|' '$1 == $2 && $1 != "error"' | wc -l)
fi
printf '{"check": "service", "stage_backend": "%s", "prompts": %d, "greedy_ids_equal_to_cpu_stage": %d, "ok": %s}\n' \
  "$backend" "$total" "$same" "$( ((rc == 0 && same == total)) && echo true || echo false)"
((rc == 0 && same == total)) || { [[ -f $dir/gpu.ids ]] && paste "$dir/gpu.ids" "$dir/cpu.ids" >&2; exit 1; }
[[ -n ${MM_KEEP:-} ]] && echo "service_check: files in $dir" >&2 || rm -rf "$dir"
