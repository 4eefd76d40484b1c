#!/usr/bin/env bash
# Hostile HTTP/2 on the gRPC port (issue 21): 3000 idle connections (fewer where the
# open-files limit is lower), a Rapid Reset of 20000 streams and a 64 MiB CONTINUATION
# flood, each from 127.0.0.2 against a fresh service on the tiny model, with the
# coordinator's resident memory measured before and after and a normal client (mmctl
# info, from 127.0.0.1) served afterwards. Bound: +128 MiB per attack, asserted for all
# three. The coordinator's own door (coordinator/h2_guard.h) does the bounding: the idle
# attacker keeps http2_max_connections_per_peer connections (the rest are closed), the
# flood and the reset connections are closed once they pass their limits, and
# metamorph_http2_refused_total counts each by reason. The flood is replayed once more over
# TLS (the door decrypts, then checks the same frames). Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
bound_kb=$((128 * 1024))
dir=$(mktemp -d /tmp/mm-h2-XXXXXX)
trap 'pkill -TERM -f "launch.sh $dir/" 2>/dev/null; sleep 2; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
read -r p1 p2 p3 <<<"$("$build/tools/mmctl" free-port 3)"
echo "{\"model\": \"$src/assets/tiny\", \"stages\": 1, \"threads\": 1, \"listen\": \"127.0.0.1:$p1\",
 \"metrics_listen\": \"127.0.0.1:$p2\", \"http_listen\": \"127.0.0.1:$p3\", \"encode_bind\": \"\", \"decode_bind\": \"\",
 \"log_level\": \"warn\"}" > "$dir/cfg.json"
cp "$dir/cfg.json" "$dir/plain.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" \
  -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null || fail "openssl: a test certificate"
sed "s|^{|{\"tls_cert\": \"$dir/cert.pem\", \"tls_key\": \"$dir/key.pem\", |" "$dir/plain.json" > "$dir/tls.json"
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
refused() { # REASON: metamorph_http2_refused_total{reason=REASON}
  curl -s "http://127.0.0.1:$p2/metrics" | awk -v s="metamorph_http2_refused_total{reason=\"$1\"}" '$1 == s {print $2}'
}
attack() { # MODE N REASON
  ulimit -n 20000 2>/dev/null
  MM_BIN_DIR=$build "$src/deploy/launch.sh" "$dir/cfg.json" --once > "$dir/$1.log" 2>&1 &
  local pid=
  for _ in $(seq 120); do
    "$build/tools/mmctl" --server "127.0.0.1:$p1" health > /dev/null 2>&1 && break
    sleep 0.5
  done
  pid=$(pgrep -f "^[^ ]*mm-coordinator $dir/cfg.json") || fail "$1: the service did not start (see $dir/$1.log)"
  local before after
  before=$(rss_kb "$pid")
  python3 "$src/tests/integration/http2_hostile.py" "$1" 127.0.0.1 "$p1" "$2" 6 > "$dir/$1.client" 2>&1 &
  local client=$!
  for _ in $(seq 120); do grep -qs done "$dir/$1.client" && break; sleep 0.5; done
  timeout 20 "$build/tools/mmctl" --server "127.0.0.1:$p1" info > /dev/null
  local served=$?
  after=$(rss_kb "$pid")
  wait "$client"
  local n_refused
  n_refused=$(refused "$3")
  pkill -TERM -f "launch.sh $dir/cfg.json"
  wait
  echo "$1 x $2${H2_TLS:+ over TLS}: coordinator $((before / 1024)) -> $((after / 1024)) MiB, refused ($3): ${n_refused:-?}, a normal client then: $([[ $served == 0 ]] && echo served || echo "NOT served ($served)")"
  sed 's/^/  client: /' "$dir/$1.client"
  ((served == 0)) || fail "$1: a normal client was not served during the attack"
  ((after - before <= bound_kb)) || fail "$1: the coordinator grew by $(((after - before) / 1024)) MiB (bound $((bound_kb / 1024)))"
  [[ ${n_refused:-0} != 0 ]] || fail "$1: no connection refused for $3"
}
hard=$(ulimit -Hn)
idle_n=3000
[[ $hard != unlimited ]] && ((hard < 3300)) && idle_n=$((hard - 300)) # the client and the server share the limit
attack idle "$idle_n" peer_limit
attack reset 20000 reset_rate
attack continuation 65536 header_block
cp "$dir/tls.json" "$dir/cfg.json"
export MM_TLS_CA=$dir/cert.pem H2_TLS=1
attack continuation 65536 header_block
echo "test_http2_hostile: passed"
