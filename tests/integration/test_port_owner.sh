#!/usr/bin/env bash
# One owner per port: a second service configured on a port the first one serves (gRPC,
# the OpenAI HTTP door, metrics) refuses to start with the port and the reason, and the
# first keeps serving alone. Usage: test_port_owner.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
bin=$build/coordinator/mm-coordinator stage=$build/worker/mm-stage mmctl=$build/tools/mmctl
dir=$(mktemp -d)
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
config() { # config FILE GRPC HTTP METRICS ENCODE DECODE
  cat > "$1" <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$2", "threads": 1, "http_listen": "127.0.0.1:$3",
 "metrics_listen": "127.0.0.1:$4", "encode_bind": "tcp://127.0.0.1:$5", "decode_bind": "tcp://127.0.0.1:$6"}
JSON
}
job() { mpiexec -launcher fork -hosts localhost -n 1 "$bin" "$1" : -n 1 "$stage" "$1"; }
read -r g h m e d g2 h2 m2 e2 d2 < <("$mmctl" free-port 10)
config "$dir/a.json" "$g" "$h" "$m" "$e" "$d"
setsid bash -c "$(declare -f job); bin=$bin stage=$stage; job $dir/a.json" > "$dir/a.log" 2>&1 &
first=$!
trap 'kill -TERM -- -$first 2>/dev/null; sleep 1; kill -KILL -- -$first 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do "$mmctl" --server "127.0.0.1:$g" health > /dev/null 2>&1 && break; sleep 0.1; done
"$mmctl" --server "127.0.0.1:$g" health > /dev/null 2>&1 && ok || fail "the first service did not start: $(tail -3 "$dir/a.log")"

# the same port for each front door in turn; the rest fresh
for which in listen http_listen metrics_listen; do
  case $which in
    listen) config "$dir/b.json" "$g" "$h2" "$m2" "$e2" "$d2" ;;
    http_listen) config "$dir/b.json" "$g2" "$h" "$m2" "$e2" "$d2" ;;
    metrics_listen) config "$dir/b.json" "$g2" "$h2" "$m" "$e2" "$d2" ;;
  esac
  timeout 60 bash -c "$(declare -f job); bin=$bin stage=$stage; job $dir/b.json" > "$dir/b.log" 2>&1
  rc=$?
  [[ $rc -ne 0 && $rc -ne 124 ]] && ok || fail "$which: a second service on a taken port exited $rc"
  grep -q "$which \"127.0.0.1:[0-9]*\": Address already in use" "$dir/b.log" && ok ||
    fail "$which: no precise message: $(grep -m2 -i 'error\|use' "$dir/b.log")"
done
# the first one still answers, on every door
"$mmctl" --server "127.0.0.1:$g" health > /dev/null 2>&1 && ok || fail "the first service stopped serving gRPC"
curl -sf "http://127.0.0.1:$h/health" > /dev/null && ok || fail "the first service stopped serving HTTP"
echo "test_port_owner: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
