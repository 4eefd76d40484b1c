#!/usr/bin/env bash
# Issue 18, on one host: the pipeline's own liveness and the launcher's watchdog.
#   0. a step longer than stage_liveness_ms (a ~2000-row prefill in one step on one stage)
#      is not a dead stage: the stage beats between its blocks; the request is answered,
#      health stays SERVING, the stage keeps its pid. The bound is set to half the step's
#      time measured with mm-run just before (a block is about a quarter of it);
#   1. a stage SIGSTOPped (a partition as its peers see it): health NOT_SERVING within
#      stage_liveness_ms (+ slack), and launch.sh has it SERVING again, the stopped rank gone;
#   2. a stage SIGKILLed with a request in flight: the client gets UNAVAILABLE in one clean
#      line (no MPI error stack), and SERVING again;
#   3. the coordinator SIGSTOPped: every stage exits by itself within the bound (no rank
#      spinning without its coordinator); once it is gone the job is restarted;
#   4. the coordinator SIGKILLed beside a SIGSTOPped stage (that stage can neither exit nor
#      be told to): serving again, the stage gone (hydra or the watchdog ends the job);
#   5. a hostfile with a host that cannot be reached: the start-up deadline tears each
#      start down, and after host_max_failures the job is re-planned on the hosts left and
#      serves DEGRADED (fewer stages);
# and after SIGTERM nothing is left behind. Detection times are printed (measured).
# Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
source "$src/tests/integration/probe.sh"
mmctl=$build/tools/mmctl
dir=$(mktemp -d /tmp/mm-liveness-XXXXXX)
lpid=
LIVENESS_MS=1000
cleanup() {
  [[ -n $lpid ]] && kill -TERM "$lpid" 2>/dev/null && sleep 2 && kill -KILL -- -"$lpid" 2>/dev/null
  for p in $(pgrep -f "$dir/"); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
}
fail() {
  echo "FAIL: $*"
  cat "$dir"/*.log 2>/dev/null | tail -80
  cleanup
  exit 1
}
trap cleanup EXIT
read -r port mport < <("$mmctl" free-port 2)
# config EXTRA_JSON: a service of this test's ports, no pool workers
config() {
  cat <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$port", "threads": 1, "stages": 2,
 "stage_liveness_ms": $LIVENESS_MS, "fail_exit_ms": 300, "restart_delay_ms": 200, "encoders": 0, "decoders": 0,
 "encode_bind": "", "decode_bind": "", "metrics_listen": "127.0.0.1:$mport", "http_listen": ""${1:+, $1}}
JSON
}
healthy() { "$mmctl" --server 127.0.0.1:$port --timeout 1 health >/dev/null 2>&1; }
stage_pid() { "$mmctl" --server 127.0.0.1:$port info | sed -n "s/.*\"rank\": $1, .*\"pid\": \([0-9]*\).*/\1/p"; }
start() {  # start CONFIG: launch.sh in the background, its own process group
  MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$1" > "$dir/launch.log" 2>&1 &
  lpid=$!
}
stop() { stop_launcher 0.3 "$dir/"; }
bound=$((LIVENESS_MS + 1000))  # + the coordinator's idle wake-up (250 ms), the probe's period and a loaded CI machine

# 0. a long step is not a dead stage
words=$(printf 'word%d ' $(seq 1 480)) # ~1900 rows of the tiny vocabulary
step_s=$("$build/tools/mm-run" --model "$src/assets/tiny" --prompt "$words" --max-tokens 1 --threads 1 2>&1 |
         sed -n 's/.* in \([0-9.]*\) s.*/\1/p')
[[ -n $step_s ]] || fail "mm-run: no prefill time"
long_ms=$(awk -v s="$step_s" 'BEGIN { b = int(s * 500); print b < 200 ? 200 : b }')
LIVENESS_MS=$long_ms config '"stages": 1, "max_batch_tokens": 2048, "trace_file": "'"$dir"'/trace.jsonl"' |
  sed 's/"stages": 2,//' > "$dir/long.json"
start "$dir/long.json"
wait_health 0 60 || fail "not SERVING after start (long step)"
before=$(stage_pid 1)
"$mmctl" --server 127.0.0.1:$port --timeout 60 generate --prompt "$words" --max-tokens 2 > "$dir/long.out" 2>&1 ||
  fail "a step of ${step_s} s with stage_liveness_ms $long_ms: $(tail -2 "$dir/long.out")"
healthy || fail "NOT_SERVING after a long step"
[[ $(stage_pid 1) == "$before" ]] || fail "the stage was restarted during a long step"
stop  # (the trace is complete once the coordinator has exited)
busy=$(sed -n 's/.*"ev":"step".*"busy":\([0-9.]*\),"seqs".*/\1/p' "$dir/trace.jsonl" | sort -g | tail -1)
echo "long step: ${busy:-?} ms of compute in one step (mm-run: ${step_s} s), stage_liveness_ms $long_ms: served, SERVING"

config > "$dir/cfg.json"
start "$dir/cfg.json"
wait_health 0 60 || fail "not SERVING after start"

# 1. SIGSTOP a stage
victim=$(stage_pid 2)
[[ -n $victim ]] || fail "no stage pid in info"
t0=$(now_ms)
kill -STOP "$victim"
wait_health 1 10 || fail "still SERVING 10 s after a stage was stopped"
t1=$(now_ms)
echo "stopped stage: NOT_SERVING after $((t1 - t0)) ms (stage_liveness_ms $LIVENESS_MS)"
((t1 - t0 <= bound)) || fail "NOT_SERVING after $((t1 - t0)) ms, bound $bound"
wait_health 0 30 || fail "not SERVING again 30 s after a stage was stopped"
echo "stopped stage: SERVING again after $(($(now_ms) - t0)) ms"
for _ in $(seq 1 50); do gone "$victim" && break; sleep 0.1; done
gone "$victim" || fail "the stopped stage $victim was left behind"
grep -q "silent for" "$dir/launch.log" || fail "the coordinator did not name the silent stage"

# 2. SIGKILL a stage with a request in flight: a clean UNAVAILABLE
victim=$(stage_pid 1)
"$mmctl" --server 127.0.0.1:$port --timeout 30 generate --prompt "Tell me everything." --max-tokens 2000 \
  > "$dir/gen.out" 2> "$dir/gen.err" &
gen=$!
sleep 0.5
t0=$(now_ms)
kill -KILL "$victim"
wait "$gen"
grc=$?
t1=$(now_ms)
echo "killed stage: the request in flight ended after $((t1 - t0)) ms with exit $grc: $(tail -1 "$dir/gen.err")"
((grc == 14)) || fail "the request in flight: exit $grc, expected 14 (UNAVAILABLE)"
grep -qi "error stack\|MPIR_\|MPID" "$dir/gen.err" && fail "an MPI error stack reached the client"
[[ $(grep -c . "$dir/gen.err") -le 2 ]] || fail "the client's error is not one line"
((t1 - t0 <= bound)) || fail "UNAVAILABLE after $((t1 - t0)) ms, bound $bound"
wait_health 0 30 || fail "not SERVING again 30 s after a stage was killed"

# 3. SIGSTOP the coordinator: the stages leave by themselves
cpid=$(pgrep -f "^$build/coordinator/mm-coordinator $dir/cfg.json")
s1=$(stage_pid 1) s2=$(stage_pid 2)
[[ -n $cpid && -n $s1 && -n $s2 ]] || fail "no coordinator or stage pids"
t0=$(now_ms)
kill -STOP "$cpid"
for _ in $(seq 1 100); do gone "$s1" && gone "$s2" && break; sleep 0.05; done
t1=$(now_ms)
gone "$s1" && gone "$s2" || fail "stages still running 5 s after their coordinator stopped: $(ps -o pid,stat,args -p "$s1,$s2,$cpid")"
echo "stopped coordinator: both stages exited by themselves after $((t1 - t0)) ms"
((t1 - t0 <= bound + 500)) || fail "stages exited after $((t1 - t0)) ms, bound $((bound + 500))"
kill -KILL "$cpid"
wait_health 0 30 || fail "not SERVING again after the coordinator was killed"

# 4. the coordinator killed while a stage is stopped (it can neither exit nor be told to):
#    hydra's mpiexec would wait for it forever; the watchdog tears the job down
cpid=$(pgrep -f "^$build/coordinator/mm-coordinator $dir/cfg.json") s2=$(stage_pid 2)
t0=$(now_ms)
kill -STOP "$s2"
kill -KILL "$cpid"
wait_health 0 30 || fail "not SERVING again after the coordinator was killed beside a stopped stage"
how="hydra ended the job itself (the rank was local)"
grep -q "is gone but mpiexec still runs" "$dir/launch.log" && how="the watchdog tore the job down"
echo "coordinator killed, a stage stopped: SERVING again after $(($(now_ms) - t0)) ms: $how"
for _ in $(seq 1 50); do gone "$s2" && break; sleep 0.1; done
gone "$s2" || fail "the stopped stage was left behind"
stop

# 5. a host that cannot be reached: start-up deadline, then re-planned without it
printf 'localhost:2\n192.0.2.1:1\n' > "$dir/hosts"  # TEST-NET-1: never answers
config "\"hostfile\": \"$dir/hosts\", \"start_timeout_ms\": 3000, \"host_max_failures\": 2" > "$dir/multi.json"
t0=$(now_ms)
start "$dir/multi.json"
wait_health 0 60 || fail "not SERVING (degraded) 60 s after a start with an unreachable host"
echo "unreachable host: SERVING degraded after $(($(now_ms) - t0)) ms"
grep -q "not serving 3000 ms after the start" "$dir/launch.log" || fail "no start-up deadline teardown"
grep -q "DEGRADED: hosts unreachable: 192.0.2.1" "$dir/launch.log" || fail "no loud DEGRADED line"
n=$("$mmctl" --server 127.0.0.1:$port info | grep -o '"rank":' | wc -l)
((n == 1)) || fail "degraded: $n stages in info, expected 1 (coordinator and one stage on localhost)"
stop
echo "test_liveness: stopped/killed stages detected within the bound, clean UNAVAILABLE, stages leave a silent coordinator, start-up deadline and degraded re-plan, nothing left behind: OK"
trap - EXIT
rm -rf "$dir"
