#!/usr/bin/env bash
# README's configuration reference is mm-coordinator --config-reference (the table in
# pipeline/serve_config.c), and the discovery forms work: --help lists every key without
# opening a file named --help, --print-config shows a file's values and the environment's
# overrides, --check fails with 78 on a wrong config or model. Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
coord=$build/coordinator/mm-coordinator
dir=$(mktemp -d /tmp/mm-cfgref-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
sed -n '/<!-- config-reference: begin -->/,/<!-- config-reference: end -->/p' "$src/README.md" | sed '1d;$d' > "$dir/readme.md"
"$coord" --config-reference > "$dir/table.md" || fail "--config-reference"
[[ -s $dir/readme.md ]] || fail "README has no config-reference section"
diff -u "$dir/readme.md" "$dir/table.md" || fail "README's configuration reference differs from the table: regenerate it with $coord --config-reference"
"$coord" --help > "$dir/help" 2>&1 || fail "--help exit $?"
grep -q "no such file\|cannot open\|unable to open" "$dir/help" && fail "--help tried to open a file"
n_keys=$(grep -c '^| `' "$dir/table.md")
[[ $(grep -c '# default' "$dir/help") == "$n_keys" ]] || fail "--help does not list the $n_keys keys"
echo "{\"max_queue\": 7, \"listen\": \"127.0.0.1:1\", \"model\": \"$src/assets/tiny\"}" > "$dir/cfg.json"
# into a file first: with pipefail, grep -q leaving after its match made the writer's second
# write die of SIGPIPE (exit 141), a failure that depended on timing
"$coord" --print-config "$dir/cfg.json" > "$dir/printed" || fail "--print-config exit $?"
grep -q '^max_queue *= 7 *# default 256' "$dir/printed" || fail "--print-config: value and default of max_queue"
MM_LISTEN=0.0.0.0:9 MM_MODEL=/m "$coord" --print-config "$dir/cfg.json" > "$dir/env" || fail "--print-config with overrides"
grep -q '^listen *= "0.0.0.0:9"' "$dir/env" || fail "MM_LISTEN does not override the file"
grep -q '^model *= "/m"' "$dir/env" || fail "MM_MODEL does not override the default"
echo '{"max_queue": "7"}' > "$dir/bad.json"
"$coord" --check "$dir/bad.json" 2> "$dir/err"; rc=$?
[[ $rc == 78 ]] || fail "--check of a bad config: exit $rc, expected 78"
grep -q '"max_queue" must be an integer' "$dir/err" || fail "--check does not say what is wrong"
MM_MODEL=$dir/none "$coord" --check "$dir/cfg.json" 2> "$dir/err"; rc=$?
[[ $rc == 78 ]] || fail "--check of a missing model: exit $rc, expected 78"
"$coord" --check "$dir/cfg.json" > "$dir/checked" 2>&1 || fail "--check of a good config: $(cat "$dir/checked")"
/usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["config"]["max_queue"] == 7 and j["parts"]["vision"]' \
  "$dir/checked" || fail "--check output: $(cat "$dir/checked")"
echo "test_config_reference: README matches the table; --help, --print-config, MM_* overrides, --check: OK"
