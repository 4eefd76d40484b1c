#!/usr/bin/env bash
# What TLS + an API key on the API doors and CURVE on the pools cost (issue 21), and what
# the coordinator's own HTTP/2 door (h2_guard: every gRPC byte relayed and checked) costs
# against gRPC owning the port: the service on the tiny model started with http2_guard 0
# ("unguarded"), plain (the default door), then secured, in turn ROUNDS times
# (deploy/launch.sh, 1 stage, 1 encoder, 1 decoder, 1 thread each, loopback); each time
# bench/serve's text workload (64 prompts, concurrency 16, gRPC) and its mixed workload
# (16 requests: text, image understanding, image generation at 5 steps, concurrency 4).
# Prints one JSON object: medians per mode, secure / plain and plain / unguarded ratios. Certificates and
# keys are made here (openssl, mmctl). Usage: bench/security_cost.sh [ROUNDS] (default 3).
set -uo pipefail
rounds=${1:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MM_BIN_DIR:-$here/build}
dir=$(mktemp -d /tmp/mm-seccost-XXXXXX)
trap 'pkill -TERM -f "launch.sh $dir/" 2>/dev/null; sleep 2; rm -rf "$dir"' EXIT
cd "$dir" || exit 1
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj /CN=ca 2>/dev/null &&
openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null &&
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext &&
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem 2>/dev/null &&
"$bin/tools/mmctl" apikey bench > key.out 2>/dev/null && sed -n 2p key.out > keys.txt &&
"$bin/tools/mmctl" keygen coord.key 2>/dev/null && "$bin/tools/mmctl" keygen worker.key 2>/dev/null &&
echo "w $(cut -d' ' -f2 worker.key.pub)" > workers.txt || { echo "security_cost: cannot make keys" >&2; exit 1; }
read -r p1 p2 p3 p4 p5 <<<"$("$bin/tools/mmctl" free-port 5)"
base="\"model\": \"$here/assets/tiny\", \"stages\": 1, \"threads\": 1, \"worker_threads\": 1, \"log_level\": \"warn\",
 \"image_steps\": 5, \"listen\": \"127.0.0.1:$p1\", \"metrics_listen\": \"127.0.0.1:$p2\", \"http_listen\": \"127.0.0.1:$p3\",
 \"encode_bind\": \"tcp://127.0.0.1:$p4\", \"decode_bind\": \"tcp://127.0.0.1:$p5\""
echo "{$base}" > plain.json
echo "{$base, \"http2_guard\": 0}" > unguarded.json
echo "{$base, \"tls_cert\": \"$dir/server.pem\", \"tls_key\": \"$dir/server.key\", \"api_keys_file\": \"$dir/keys.txt\",
 \"pool_curve_secret_key\": \"$dir/coord.key\", \"pool_authorized_keys\": \"$dir/workers.txt\",
 \"pool_worker_key\": \"$dir/worker.key\"}" > secure.json
: > runs.jsonl
for ((r = 0; r < rounds; r++)); do
  for mode in unguarded plain secure; do
    MM_BIN_DIR=$bin "$here/deploy/launch.sh" "$dir/$mode.json" --once > "$mode.log" 2>&1 &
    envs=(MM_TLS_CA= MM_API_KEY=)
    [[ $mode == secure ]] && envs=(MM_TLS_CA="$dir/ca.pem" MM_API_KEY="$(sed -n 1p key.out)")
    for _ in $(seq 120); do env "${envs[@]}" "$bin/tools/mmctl" --server "127.0.0.1:$p1" health > /dev/null 2>&1 && break; sleep 0.5; done
    sleep 2 # the pool workers join
    text=$(env "${envs[@]}" "$bin/bench/serve" --server "127.0.0.1:$p1" --num-prompts 64 --concurrency 16 2>/dev/null)
    mixed=$(env "${envs[@]}" "$bin/bench/serve" --server "127.0.0.1:$p1" --workload mixed --num-prompts 16 --concurrency 4 \
            --image-steps 5 2>/dev/null)
    python3 -c 'import json, sys; t, m = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({"mode": sys.argv[1], "output_tok_s": t["output_throughput"], "ttft_p50_ms": t["median_ttft_ms"],
                  "mixed_req_s": m["mixed"]["request_throughput"], "mixed_failed": m["mixed"]["failed"]}))' \
      "$mode" "$text" "$mixed" >> runs.jsonl || echo "security_cost: round $r $mode failed (see $mode.log)" >&2
    pkill -TERM -f "launch.sh $dir/$mode.json"
    wait
  done
done
python3 - "$rounds" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open("runs.jsonl")]
med = {m: {k: statistics.median(r[k] for r in runs if r["mode"] == m) for k in ("output_tok_s", "ttft_p50_ms", "mixed_req_s")}
       for m in ("unguarded", "plain", "secure")}
print(json.dumps({"benchmark": "security_cost", "rounds": int(sys.argv[1]), "stat": "median", **med,
                  "mixed_failed": sum(r["mixed_failed"] for r in runs),
                  "ratio_secure_over_plain": {k: round(med["secure"][k] / med["plain"][k], 3) for k in med["plain"]},
                  "ratio_plain_over_unguarded": {k: round(med["plain"][k] / med["unguarded"][k], 3) for k in med["plain"]}}))
PY
