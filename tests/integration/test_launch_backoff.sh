#!/usr/bin/env bash
# deploy/launch.sh backs off when what it supervises keeps dying at once: with programs
# that exit as soon as they start, the MPI job and each pool worker are restarted after
# restart_delay_ms, then twice as long each time; SIGTERM still stops everything at once,
# in the middle of a wait. Args: SOURCE_DIR.
set -uo pipefail
src=$1
dir=$(mktemp -d /tmp/mm-launch-backoff-XXXXXX)
mkdir -p "$dir/bin/coordinator" "$dir/bin/worker"
for p in coordinator/mm-coordinator worker/mm-stage worker/mm-encoder worker/mm-decoder; do
  printf '#!/bin/sh\nexit 3\n' > "$dir/bin/$p"
  chmod +x "$dir/bin/$p"
done
# the launcher's check of the config and the model passes (a model with an encoder part)
cat > "$dir/bin/coordinator/mm-coordinator" <<'SH'
#!/bin/sh
[ "$1" = --check ] || exit 3
echo '{"config": {"stages": 1, "hostfile": "", "restart_delay_ms": 100, "encoders": 1, "decoders": 0,
 "worker_threads": 0, "model": "m", "encode_bind": "tcp://127.0.0.1:1", "decode_bind": ""},
 "parts": {"llm": "m/llm", "vision": "m/vision", "decoder": ""}}'
SH
cat > "$dir/cfg.json" <<JSON
{"model": "$src/assets/tiny", "stages": 1, "restart_delay_ms": 100, "encoders": 1, "decoders": 0,
 "encode_bind": "tcp://127.0.0.1:1"}
JSON
MM_BIN_DIR=$dir/bin "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!
fail() { echo "FAIL: $*"; cat "$dir/launch.log"; kill -KILL $lpid 2>/dev/null; exit 1; }
sleep 4
kill -TERM $lpid
for _ in $(seq 1 30); do kill -0 $lpid 2>/dev/null || break; sleep 0.1; done
kill -0 $lpid 2>/dev/null && fail "launch.sh still running 3 s after SIGTERM"
delays() { grep "$1" "$dir/launch.log" | sed -n 's/.* in \([0-9.]*\) s$/\1/p' | tr '\n' ' '; }
job=$(delays "job exited") wrk=$(delays "encoder-.* exited")
echo "job restart delays: $job"
echo "worker restart delays: $wrk"
[[ $job == "0.1 0.2 0.4 0.8 "* ]] || fail "the job's restart delays do not double: $job"
[[ $wrk == "0.1 0.2 0.4 0.8 "* ]] || fail "the worker's restart delays do not double: $wrk"
grep -q "stopped" "$dir/launch.log" || fail "no clean stop"
echo "test_launch_backoff: OK"
rm -rf "$dir"
