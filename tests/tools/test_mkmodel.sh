#!/usr/bin/env bash
# mm-mkmodel writes a sharded random checkpoint that mm-run loads and runs, in each
# dtype; bad arguments are refused. Usage: test_mkmodel.sh MM_MKMODEL MM_RUN ASSETS_DIR
set -u
mkmodel=$1 run=$2 assets=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() { # check NAME CMD...
  local name=$1; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then passed=$((passed + 1)); else
    failed=$((failed + 1)); echo "FAIL: $name"; cat "$tmp/err"; fi
}
for dt in f32 bf16 f16; do
  check "mkmodel $dt" "$mkmodel" --preset tiny --dtype "$dt" --vocab 1794 --shard-mb 1 \
    --tokenizer "$assets/tiny/llm/tokenizer.json" --out "$tmp/$dt"
  check "$dt has an index" test -f "$tmp/$dt/model.safetensors.index.json"
  check "mm-run on $dt" bash -c "'$run' --model '$tmp/$dt' --prompt hello --max-tokens 5 --ids --threads 2 > '$tmp/ids'"
  check "$dt gave 5 ids" bash -c "[ \$(wc -w < '$tmp/ids') -eq 5 ]"
done
# without --tokenizer: the embedded tiny model's, its special ids in config.json, servable
check "mkmodel, default tokenizer" "$mkmodel" --preset tiny --dtype f32 --out "$tmp/def"
check "mm-run on it" bash -c "'$run' --model '$tmp/def' --prompt hello --max-tokens 3 --ids --threads 2 > /dev/null"
check "bos/eos are the tokenizer's" python3 -c "
import json, sys
ids = {a['content']: a['id'] for a in json.load(open('$tmp/def/tokenizer.json'))['added_tokens']}
c = json.load(open('$tmp/def/config.json'))
sys.exit(not (c['bos_token_id'] == ids['<|begin_of_text|>'] and c['eos_token_id'] == [ids['<|end_of_text|>'], ids['<|eot_id|>']]))"
check "f32 (1.5 MB) is in two 1 MB shards" test -f "$tmp/f32/model-00002-of-00002.safetensors"
check "refuses an unknown preset" bash -c "! '$mkmodel' --preset nope --out '$tmp/x'"
check "refuses an unknown dtype" bash -c "! '$mkmodel' --dtype f8 --out '$tmp/x'"
check "mm-run refuses a missing model" bash -c "! '$run' --model '$tmp/none' --prompt hi 2>/dev/null"
echo "test_mkmodel: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
