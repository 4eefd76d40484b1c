#!/usr/bin/env bash
# deploy/launch.sh as a supervisor: a wrong model path ends it at once with exit 78 and
# the message (no restart loop); a pool worker that cannot load its model part does the
# same; an LLM-only model gets no pool workers; the processes carry their own names
# (not "exe"); and after SIGKILL of the launcher nothing it started survives (mpiexec,
# ranks, worker supervisors, workers). Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
mmctl=$build/tools/mmctl
dir=$(mktemp -d /tmp/mm-supervise-XXXXXX)
lpid=
fail() {
  echo "FAIL: $*"
  cat "$dir"/*.log 2>/dev/null
  [[ -n $lpid ]] && kill -KILL -- -"$lpid" 2>/dev/null
  pkill -KILL -f "$dir/" 2>/dev/null
  exit 1
}
read -r port eport dport mport < <("$mmctl" free-port 4)
# config MODEL [EXTRA_JSON]: a service config of this test's ports
config() {
  cat <<JSON
{"model": "$1", "listen": "127.0.0.1:$port", "threads": 1, "stages": 2, "worker_threads": 1,
 "restart_delay_ms": 100, "encode_bind": "tcp://127.0.0.1:$eport", "decode_bind": "tcp://127.0.0.1:$dport",
 "metrics_listen": "127.0.0.1:$mport", "http_listen": ""${2:+, $2}}
JSON
}
launch() { MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$@"; }

# 1. a permanent error: no restarts, exit 78, the reason on stderr
config "$dir/no-such-model" > "$dir/bad.json"
launch "$dir/bad.json" > "$dir/bad.log" 2>&1
rc=$?
[[ $rc == 78 ]] || fail "wrong model path: launch.sh exit $rc, expected 78"
grep -q "no-such-model" "$dir/bad.log" || fail "the message does not name the model path"
grep -q "start #" "$dir/bad.log" && fail "the job was started with a wrong model path"
# an unknown key is a config error too
config "$src/assets/tiny" '"stagez": 2' > "$dir/typo.json"
launch "$dir/typo.json" > "$dir/typo.log" 2>&1
rc=$?
[[ $rc == 78 ]] || fail "unknown key: launch.sh exit $rc, expected 78"
grep -q 'unknown key "stagez"' "$dir/typo.log" || fail "the unknown key is not named"

# 2. an LLM-only model (an HF LLaMA directory): no pool workers, and it says so
config "$src/assets/tiny/llm" > "$dir/llm.json"
launch "$dir/llm.json" --dry-run > "$dir/llm.log" 2>&1 || fail "dry run of an LLM-only model"
grep -q "no vision part: no encoder workers" "$dir/llm.log" || fail "no word about the missing vision part"
grep -q "no decoder part: no decoder workers" "$dir/llm.log" || fail "no word about the missing decoder part"
grep -q "dry run: worker" "$dir/llm.log" && fail "pool workers for an LLM-only model"
config "$src/assets/tiny" > "$dir/cfg.json"
launch "$dir/cfg.json" --dry-run > "$dir/dry.log" 2>&1 || fail "dry run"
[[ $(grep -c "dry run: worker" "$dir/dry.log") == 2 ]] || fail "a MetaMorph model should get an encoder and a decoder"

# 3. a worker that cannot load its part (an empty vision/): launch.sh stops with 78
mkdir -p "$dir/broken/vision"
for p in llm decoder metamorph.json; do ln -s "$src/assets/tiny/$p" "$dir/broken/$p"; done
config "$dir/broken" > "$dir/broken.json"
launch "$dir/broken.json" > "$dir/broken.log" 2>&1
rc=$?
[[ $rc == 78 ]] || fail "a worker's permanent error: launch.sh exit $rc, expected 78"
grep -q "cannot load the model" "$dir/broken.log" || fail "no word about the worker's permanent error"
pgrep -f "$dir/broken" >/dev/null && fail "processes of the broken model outlived launch.sh"
rm -f "$dir"/*.log

# 4. names, then SIGKILL of the launcher: nothing survives
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!  # launch.sh itself (setsid forks only when it is a group leader)
for _ in $(seq 1 300); do
  "$mmctl" --server 127.0.0.1:$port health >/dev/null 2>&1 && break
  sleep 0.1
done
"$mmctl" --server 127.0.0.1:$port health >/dev/null 2>&1 || fail "not SERVING after start"
for _ in $(seq 1 100); do  # the workers start beside the job
  [[ $(pgrep -c -f "connect tcp://127.0.0.1:($eport|$dport)") -ge 2 ]] && break
  sleep 0.1
done
names=$(for p in $(pgrep -f "$dir/cfg.json|connect tcp://127.0.0.1:($eport|$dport)"); do ps -o comm= -p "$p"; done | sort -u | tr '\n' ' ')
echo "process names: $names"
for n in mm-coordinator mm-stage mm-encoder mm-decoder; do
  [[ " $names" == *" $n "* ]] || fail "no process named $n (names: $names)"
done
[[ " $names" == *" exe "* ]] && fail "a process is still named exe"
kill -KILL "$lpid"
{ wait "$lpid"; } 2>/dev/null  # (bash reports the kill)
gone=0
for _ in $(seq 1 300); do
  if ! pgrep -f "$dir/cfg.json|tcp://127.0.0.1:($eport|$dport)" >/dev/null; then
    gone=1
    break
  fi
  sleep 0.1
done
if ((!gone)); then
  ps -o pid,ppid,comm,args -p "$(pgrep -d, -f "$dir/cfg.json|tcp://127.0.0.1:($eport|$dport)")"
  fail "processes outlived the SIGKILLed launcher"
fi
echo "test_launch_supervise: permanent errors end the launcher (78), LLM-only models get no workers, real names, nothing outlives SIGKILL: OK"
rm -rf "$dir"
