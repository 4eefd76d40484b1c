#!/usr/bin/env bash
# Quick start on a fresh Debian machine: installs what is missing, builds, and starts the
# whole service on the embedded tiny MetaMorph model (assets/tiny, random weights: its
# words are gibberish and its pictures noise, by design): mm-coordinator + 2 pipeline
# stages (one MPI job) + 1 encoder worker + 1 decoder worker, through deploy/launch.sh.
# It asks one understanding question about a bundled image and one generation request
# over gRPC (mmctl), one chat request through the OpenAI-compatible HTTP API (curl),
# prints the answers and where the image was written, and stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/deps.sh
mm_install_deps
mm_build build
out=${MM_QUICKSTART_OUT:-$(mktemp -d /tmp/metamorph-quickstart-XXXXXX)}
mkdir -p "$out"
image=assets/images/example.png
mmctl=./build/tools/mmctl

read -r port eport dport mport hport < <("$mmctl" free-port 5)
server=127.0.0.1:$port http=127.0.0.1:$hport
cat > "$out/service.json" <<JSON
{"model": "$PWD/assets/tiny", "listen": "$server", "stages": 2, "threads": 1,
 "encoders": 1, "decoders": 1, "worker_threads": 1, "image_steps": 20,
 "encode_bind": "tcp://127.0.0.1:$eport", "decode_bind": "tcp://127.0.0.1:$dport",
 "metrics_listen": "127.0.0.1:$mport", "http_listen": "$http"}
JSON
echo "== starting the service (log: $out/service.log)"
deploy/launch.sh "$out/service.json" --once > "$out/service.log" 2>&1 &
launcher=$!
stop_service() {
  kill -TERM "$launcher" 2>/dev/null || true
  wait "$launcher" 2>/dev/null || true
}
trap stop_service EXIT
for _ in $(seq 1 300); do
  "$mmctl" --server "$server" health >/dev/null 2>&1 && break
  kill -0 "$launcher" 2>/dev/null || { echo "the service did not start:"; cat "$out/service.log"; exit 1; }
  sleep 0.2
done
"$mmctl" --server "$server" health >/dev/null || { echo "the service is not SERVING:"; tail -20 "$out/service.log"; exit 1; }

echo "== serving: gRPC on $server, OpenAI-compatible HTTP on http://$http/v1"
echo "   (the embedded model has random weights: its words are gibberish and its picture is"
echo "    noise, 64x64 pixels because the tiny decoder's UNet works on 8x8 latents; a real"
echo "    MetaMorph checkpoint answers in words and draws 512x512)"
echo
echo "== understanding: \"What is in this image?\" + $image"
"$mmctl" --server "$server" --timeout 120 generate --image "$image" --prompt "What is in this image?" --max-tokens 24

echo
echo "== generation: \"Draw a cat.\""
"$mmctl" --server "$server" --timeout 120 generate --prompt "Draw a cat." --generate-image --max-tokens 80 \
    --sampler dpmpp2m --image-seed 0 --out "$out"
echo
echo "== image written to $out/image_0.png"
echo
echo "== the OpenAI API: curl http://$http/v1/chat/completions"
curl -sS "http://$http/v1/chat/completions" -H "Content-Type: application/json" \
    -d '{"model": "tiny", "messages": [{"role": "user", "content": "Describe a cat."}], "max_tokens": 16, "temperature": 0}'
echo
stop_service
trap - EXIT
echo "== service stopped"
