#!/usr/bin/env bash
# bench/batch (issue 8): captions/s and images/s of a dataset job (`mmctl batch`, 1,000
# lines by default: 4 in 5 captions, each of its own image so that the embedding cache
# never answers, 1 in 5 generations with a few diffusion steps) on the tiny model, run
# against the whole service (deploy/launch.sh: 2 LLM stages, 1 encoder) with 1 and with 2
# decoder workers, R times each (default 3), and the fraction of the wall time each LLM
# stage was busy. Prints one JSON object of medians and ratios (bench/batch_report.py);
# exit 1 when a line failed or the service did not come up. CMake writes the runnable
# copy, BUILD/bench/batch, with its paths filled in; --workdir keeps the files there.
#
# usage: BUILD/bench/batch [--lines N] [--repeats R] [--decoders "1 2"] [--steps S]
#          [--generate-every K] [--concurrency C] [--stages P] [--workdir DIR | --keep]
set -euo pipefail

src='@CMAKE_SOURCE_DIR@'
bin='@CMAKE_BINARY_DIR@'
[[ $src == @* ]] && src=$(cd "$(dirname "$0")/.." && pwd)  # run from the source tree
[[ $bin == @* ]] && bin=$src/build
bin=${MM_BIN_DIR:-$bin}
py=/usr/bin/python3
[[ -x $py ]] || py=python3

lines=1000 repeats=3 decoders="1 2" steps=2 every=5 concurrency=16 stages=2 workdir='' keep=0
while (($#)); do
  case $1 in
    --lines) lines=${2:?}; shift ;;
    --repeats) repeats=${2:?}; shift ;;
    --decoders) decoders=${2:?}; shift ;;
    --steps) steps=${2:?}; shift ;;
    --generate-every) every=${2:?}; shift ;;
    --concurrency) concurrency=${2:?}; shift ;;
    --stages) stages=${2:?}; shift ;;
    --workdir) workdir=${2:?}; shift ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "batch: unknown argument $1 (--help)" >&2; exit 64 ;;
  esac
  shift
done

die() { echo "batch: $*" >&2; exit 1; }
for n in "$lines" "$repeats" "$steps" "$every" "$concurrency" "$stages" $decoders; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "batch: '$n' is not a positive integer" >&2; exit 64; }
done
for f in "$bin/tools/mmctl" "$bin/coordinator/mm-coordinator" "$bin/worker/mm-stage" \
         "$bin/worker/mm-encoder" "$bin/worker/mm-decoder"; do
  [[ -x $f ]] || die "$f is missing: build first (cmake --build $bin)"
done
if [[ -z $workdir ]]; then
  workdir=$(mktemp -d /tmp/mm-bench-batch-XXXXXX) || die "cannot make a work directory"
else
  keep=1
  mkdir -p "$workdir" || die "cannot make $workdir"
  [[ -z $(ls -A "$workdir") ]] || die "--workdir $workdir is not empty"
  workdir=$(cd "$workdir" && pwd)
fi
mmctl() { "$bin/tools/mmctl" --server "$server" --timeout 600 "$@"; }
quiet() {  # COMMAND...: its output only when it fails
  "$@" > "$workdir/last.log" 2>&1 || { cat "$workdir/last.log" >&2; return 1; }
}

launcher=
stop_service() {
  [[ -n $launcher ]] || return 0
  kill -TERM "$launcher" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$launcher" 2>/dev/null; then  # launch.sh ignored TERM for 30 s: take its session down
    echo "batch: the service did not stop; killing it" >&2
    kill -KILL -- "-$launcher" 2>/dev/null || true
  fi
  wait "$launcher" 2>/dev/null || true
  launcher=
}
cleanup() {
  local rc=$?
  stop_service
  if ((keep || (rc && rc != 130))); then echo "batch: files kept in $workdir" >&2; else rm -rf "$workdir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scrape() {  # the coordinator's /metrics -> FILE
  "$py" -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=10).read().decode())' \
    "$metrics" > "$1" || die "cannot scrape http://$metrics/metrics"
}
gauge() {  # NAME{LABELS} from /metrics, empty when absent
  "$py" -c 'import sys, urllib.request
for l in urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=10).read().decode().splitlines():
    if l.split(" ")[0] == sys.argv[2]: print(int(float(l.split(" ")[1])))' "$metrics" "$1" 2>/dev/null || true
}
# A stage reports its busy time after a step, at most every 250 ms (worker/mm-stage.c):
# after 0.3 s of quiet, one short request makes every stage report what it did so far.
fresh_info() {
  sleep 0.3
  quiet mmctl generate --prompt "flush" --max-tokens 1 || die "the stats request failed"
  sleep 0.2
  mmctl info > "$1" || die "mmctl info failed"
}

start_service() {  # DECODERS RUN_DIR
  local cfg=$2/service.json log=$2/service.log
  local port eport dport mport
  read -r port eport dport mport < <("$bin/tools/mmctl" free-port 4)
  server=127.0.0.1:$port metrics=127.0.0.1:$mport
  cat > "$cfg" <<JSON
{"model": "$src/assets/tiny", "listen": "$server", "stages": $stages, "threads": 1,
 "encoders": 1, "decoders": $1, "worker_threads": 1, "image_steps": $steps,
 "encode_bind": "tcp://127.0.0.1:$eport", "decode_bind": "tcp://127.0.0.1:$dport",
 "metrics_listen": "$metrics", "http_listen": ""}
JSON
  MM_BIN_DIR=$bin setsid "$src/deploy/launch.sh" "$cfg" --once > "$log" 2>&1 &
  launcher=$!
  for _ in $(seq 1 300); do  # up to 60 s: SERVING, and every pool worker connected
    kill -0 "$launcher" 2>/dev/null || { tail -20 "$log" >&2; die "the service exited while starting (log above)"; }
    if mmctl health > /dev/null 2>&1 && [[ $(gauge 'metamorph_pool_workers{pool="decode"}') == "$1" &&
                                          $(gauge 'metamorph_pool_workers{pool="encode"}') == 1 ]]; then
      return 0
    fi
    sleep 0.2
  done
  tail -20 "$log" >&2
  die "the service with $1 decoder workers was not ready in 60 s (log above)"
}

mkdir -p "$workdir/job" || die "cannot make $workdir/job"
echo "batch: writing a job of $lines lines in $workdir/job" >&2
"$py" "$src/bench/batch_job.py" --source "$src/assets/images/example.png" --dir "$workdir/job" \
  --lines "$lines" --generate-every "$every" --steps "$steps" > "$workdir/job/settings.json" ||
  die "cannot write the job file"

# Each run on a fresh service (an empty embedding cache), the worker counts taking turns
# so that a change in the machine's load falls on all of them alike.
runs=()
for ((r = 0; r < repeats; r++)); do
  for d in $decoders; do
    echo "batch: run $((r + 1))/$repeats: $stages stages, 1 encoder, $d decoder worker(s)" >&2
    run=$workdir/runs/d$d-r$r
    mkdir -p "$run"
    start_service "$d" "$run"
    # Warm-up outside the measurement: one caption and one generation.
    quiet mmctl generate --image "$src/assets/images/example.png" --prompt "Describe the image." --max-tokens 4 ||
      die "the warm-up caption failed"
    quiet mmctl generate --prompt "Draw a cat." --generate-image --max-tokens 66 --steps "$steps" \
      --out "$run/warmup" || die "the warm-up generation failed"
    echo "$d" > "$run/decoders"
    ln -s "$workdir/job/job.jsonl" "$run/job.jsonl"
    fresh_info "$run/info0.json"
    scrape "$run/metrics0.txt"
    echo "$EPOCHREALTIME" > "$run/t0"
    rc=0
    mmctl batch --input "$workdir/job/job.jsonl" --out "$run/out" --concurrency "$concurrency" 2> "$run/batch.log" || rc=$?
    echo "$EPOCHREALTIME" > "$run/t1"
    tail -1 "$run/batch.log" >&2
    ((rc <= 1)) || { tail -5 "$run/batch.log" >&2; die "mmctl batch exited with $rc"; }  # 1: some lines failed
    fresh_info "$run/info1.json"
    scrape "$run/metrics1.txt"
    runs+=("$run")
    stop_service
  done
done

"$py" "$src/bench/batch_report.py" --job "$workdir/job/settings.json" --setting "concurrency=$concurrency" \
  --setting "stages=$stages" --setting "repeats=$repeats" "${runs[@]}" > "$workdir/report.json" ||
  die "cannot make the report"
cat "$workdir/report.json"
failures=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["failures"])' "$workdir/report.json")
((failures == 0)) || die "$failures line(s) failed (see $workdir/runs/*/out/results.jsonl; --keep keeps them)"
