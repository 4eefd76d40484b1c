#!/usr/bin/env bash
# mmctl batch on real dataset layouts (issue 15 item 8), against the service started by
# deploy/launch.sh (one stage, one encoder, no decoder): --images recurses (relative path
# as id) and reports the files it skipped, no image at all is an error, --max-tokens
# caps every line, each result carries its source and prompt, WebDataset-style tar
# shards (--shards 'data-{000..001}.tar') are captioned with results next to them, and
# Ctrl-C ends a job with "interrupted: rerun with --resume", after which --resume
# finishes it. Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
mmctl=$build/tools/mmctl
imgs=$src/tests/golden/vision/images
dir=$(mktemp -d /tmp/mm-datasets-XXXXXX)
lpid=
fail() {
  echo "FAIL: $*"
  tail -20 "$dir"/*.log 2>/dev/null
  [[ -n $lpid ]] && kill -TERM "$lpid" 2>/dev/null && wait "$lpid"
  exit 1
}
py() { /usr/bin/python3 "$@"; }
# field FILE EXPR: prints EXPR evaluated over the list of records r of results FILE
field() { py -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(eval(sys.argv[2]))' "$1" "$2"; }

# --- without a service: inputs that cannot run
mkdir -p "$dir/empty/sub"
cp "$imgs/rgb_37x23.png" "$dir/empty/sub/photo.webp"
"$mmctl" --server 127.0.0.1:1 batch --images "$dir/empty" --prompt "Describe." --out "$dir/o0" 2> "$dir/empty.log"
rc=$?
[[ $rc == 64 ]] || fail "a directory without PNG/JPEG: exit $rc, expected 64"
grep -q "skipped 1 files that are not PNG/JPEG: sub/photo.webp" "$dir/empty.log" || fail "the .webp is not reported"
grep -q "no input lines" "$dir/empty.log" || fail "zero inputs not reported"
"$mmctl" --server 127.0.0.1:1 batch --shards "$dir/x-{a..b}.tar" --prompt "Describe." 2> "$dir/pattern.log"
[[ $? == 64 ]] || fail "a bad shard pattern is not a usage error"

# --- the service
read -r port eport dport mport < <("$mmctl" free-port 4)
cat > "$dir/cfg.json" <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$port", "threads": 1, "stages": 1, "worker_threads": 1,
 "encoders": 1, "decoders": 0, "encode_bind": "tcp://127.0.0.1:$eport", "decode_bind": "tcp://127.0.0.1:$dport",
 "metrics_listen": "127.0.0.1:$mport", "http_listen": "", "max_new_tokens": 16}
JSON
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!
for _ in $(seq 1 300); do
  "$mmctl" --server 127.0.0.1:$port health >/dev/null 2>&1 && break
  sleep 0.1
done
"$mmctl" --server 127.0.0.1:$port health >/dev/null 2>&1 || fail "not SERVING"
b() { "$mmctl" --server 127.0.0.1:$port --timeout 120 batch "$@"; }

# 1. a nested directory: recursion, relative ids, skipped files, source + prompt, --max-tokens
mkdir -p "$dir/ds/train/cats" "$dir/ds/val"
cp "$imgs/rgb_37x23.png" "$dir/ds/top.png"
cp "$imgs/baseline_45x33.jpg" "$dir/ds/train/cats/c1.jpg"
cp "$imgs/gray_50x31.png" "$dir/ds/val/v1.PNG"
cp "$imgs/rgb_37x23.png" "$dir/ds/val/v2.webp"
echo "labels" > "$dir/ds/train/labels.txt"
b --images "$dir/ds" --prompt "Describe the image." --out "$dir/o1" --max-tokens 3 2> "$dir/o1.log" ||
  fail "--images of a nested directory: exit $?"
grep -q "skipped 2 files that are not PNG/JPEG: " "$dir/o1.log" || fail "the skipped files are not reported"
r=$dir/o1/results.jsonl
[[ $(field "$r" '[x["id"] for x in r]') == "['top.png', 'train/cats/c1.jpg', 'val/v1.PNG']" ]] ||
  fail "ids: $(field "$r" '[x["id"] for x in r]')"
[[ $(field "$r" 'all(x["status"] == "ok" for x in r)') == True ]] || fail "not all ok: $(cat "$r")"
[[ $(field "$r" 'set(x["prompt"] for x in r)') == "{'Describe the image.'}" ]] || fail "prompt missing in results"
[[ $(field "$r" 'r[1]["source"]') == "$dir/ds/train/cats/c1.jpg" ]] || fail "source: $(field "$r" 'r[1]["source"]')"
[[ $(field "$r" 'max(x["completion_tokens"] for x in r)') -le 3 ]] || fail "--max-tokens 3 not applied"
[[ $(field "$r" 'max(x["completion_tokens"] for x in r)') -ge 1 ]] || fail "no tokens generated"

# 2. WebDataset shards: results next to each shard, id = sample key, source SHARD#MEMBER
for k in 0 1; do
  mkdir -p "$dir/s$k"
  cp "$imgs/rgb_37x23.png" "$dir/s$k/00${k}0.png"
  cp "$imgs/baseline_45x33.jpg" "$dir/s$k/00${k}1.jpg"
  echo "a caption" > "$dir/s$k/00${k}0.txt"
  (cd "$dir/s$k" && tar -cf "$dir/data-00$k.tar" 00${k}0.png 00${k}0.txt 00${k}1.jpg) || fail "tar"
done
b --shards "$dir/data-{000..001}.tar" --prompt "Caption." --max-tokens 2 2> "$dir/shards.log" || fail "--shards: exit $?"
grep -q "skipped 1 files" "$dir/shards.log" || fail "the .txt member is not reported"
for k in 0 1; do
  r=$dir/data-00$k.results/results.jsonl
  [[ -s $r ]] || fail "no results next to shard $k"
  [[ $(field "$r" '[x["id"] for x in r]') == "['00${k}0', '00${k}1']" ]] || fail "shard $k ids: $(field "$r" '[x["id"] for x in r]')"
  [[ $(field "$r" 'all(x["status"] == "ok" for x in r)') == True ]] || fail "shard $k: $(cat "$r")"
  [[ $(field "$r" 'r[1]["source"]') == "$dir/data-00$k.tar#00${k}1.jpg" ]] || fail "shard source: $(field "$r" 'r[1]["source"]')"
done

# 3. Ctrl-C: a message, exit by SIGINT (130), then --resume completes the job
for i in $(seq 1 200); do
  echo "{\"id\": \"q$i\", \"prompt\": \"Tell a long story number $i.\", \"max_tokens\": 32}"
done > "$dir/long.jsonl"
"$mmctl" --server 127.0.0.1:$port batch --input "$dir/long.jsonl" --out "$dir/o3" --concurrency 1 2> "$dir/int.log" &
bpid=$!  # mmctl itself (a background job ignores SIGINT by default: mmctl catches it anyway)
for _ in $(seq 1 600); do
  [[ -s $dir/o3/results.jsonl ]] && break
  sleep 0.05
done
[[ -s $dir/o3/results.jsonl ]] || fail "the job wrote no result"
kill -INT "$bpid"
wait "$bpid"
rc=$?
[[ $rc == 130 ]] || fail "Ctrl-C: exit $rc, expected 130 (a finished job cannot be interrupted: make it longer)"
grep -q "interrupted: rerun with --resume" "$dir/int.log" || fail "no resume hint after Ctrl-C"
b --input "$dir/long.jsonl" --out "$dir/o3" --concurrency 4 --resume 2> "$dir/resume.log" || fail "--resume: exit $?"
[[ $(field "$dir/o3/results.jsonl" 'len(r)') == 200 ]] || fail "--resume did not finish the 200 lines"

kill -TERM "$lpid"
wait "$lpid"
echo "test_batch_datasets: nested --images, skipped files, zero inputs, --max-tokens, source + prompt, tar shards, Ctrl-C + --resume: OK"
rm -rf "$dir"
