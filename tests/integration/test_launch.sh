#!/usr/bin/env bash
# deploy/launch.sh: starts the service and its pool workers from a config, restarts the
# job after a stage is killed and a worker after it is killed, and stops everything
# cleanly on SIGTERM. Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
mmctl=$build/tools/mmctl
dir=$(mktemp -d /tmp/mm-launch-XXXXXX)
read -r port eport dport mport < <("$mmctl" free-port 4)
cat > "$dir/cfg.json" <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$port", "threads": 1, "stages": 2,
 "fail_exit_ms": 500, "restart_delay_ms": 200, "worker_threads": 1, "image_steps": 10,
 "encode_bind": "tcp://127.0.0.1:$eport", "decode_bind": "tcp://127.0.0.1:$dport", "pool_heartbeat_ms": 100,
 "metrics_listen": "127.0.0.1:$mport", "http_listen": ""}
JSON
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!
fail() { echo "FAIL: $*"; cat "$dir/launch.log"; kill -TERM $lpid 2>/dev/null; sleep 3; kill -KILL -$lpid 2>/dev/null; exit 1; }
wait_serving() {
  for _ in $(seq 1 200); do
    "$mmctl" --server 127.0.0.1:$port health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
wait_serving || fail "not SERVING after start"
"$mmctl" --server 127.0.0.1:$port generate --prompt hi --max-tokens 4 >/dev/null || fail "generate"
# images through the pools: an understanding request and a generated PNG
"$mmctl" --server 127.0.0.1:$port --timeout 60 generate --image "$src/assets/images/example.png" --prompt "What is this?" \
  --max-tokens 4 >/dev/null || fail "understanding request"
"$mmctl" --server 127.0.0.1:$port --timeout 60 generate --prompt "a cat" --generate-image --max-tokens 70 \
  --out "$dir/out" >/dev/null || fail "generation request"
[[ $(head -c 4 "$dir/out/image_0.png" | od -An -tx1 | tr -d ' ') == 89504e47 ]] || fail "no PNG written"
# a killed decoder worker is started again and serves the next request
dec=$(pgrep -f "mm-decoder --model $src/assets/tiny --connect tcp://127.0.0.1:$dport" | head -1)
[[ -n $dec ]] || fail "no decoder worker running"
kill -KILL "$dec"
"$mmctl" --server 127.0.0.1:$port --timeout 60 generate --prompt "a dog" --generate-image --max-tokens 70 \
  --out "$dir/out2" >/dev/null || fail "generation after the decoder worker was killed"
grep -q "restarting" "$dir/launch.log" || fail "the killed worker was not restarted"
victim=$("$mmctl" --server 127.0.0.1:$port info | sed -n 's/.*"rank": 2, .*"pid": \([0-9]*\).*/\1/p')
[[ -n $victim ]] || fail "no stage pid in info"
kill -KILL "$victim"
sleep 1
wait_serving || fail "not SERVING again after the stage was killed"
grep -q "start #2" "$dir/launch.log" || fail "no restart in the log"
"$mmctl" --server 127.0.0.1:$port generate --prompt hi --max-tokens 4 >/dev/null || fail "generate after restart"
kill -TERM $lpid
for _ in $(seq 1 100); do kill -0 $lpid 2>/dev/null || break; sleep 0.1; done
kill -0 $lpid 2>/dev/null && fail "launch.sh still running 10 s after SIGTERM"
wait $lpid; rc=$?
[[ $rc == 0 ]] || fail "launch.sh exit $rc"
grep -q "stopped" "$dir/launch.log" || fail "no clean stop"
sleep 0.5
pgrep -f "connect tcp://127.0.0.1:$dport" >/dev/null && fail "a decoder worker outlived launch.sh"
pgrep -f "connect tcp://127.0.0.1:$eport" >/dev/null && fail "an encoder worker outlived launch.sh"
echo "test_launch: start, images through the pools, restart after a killed worker and a killed stage, clean stop: OK"
rm -rf "$dir"
