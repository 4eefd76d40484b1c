#!/usr/bin/env bash
# Starts the MetaMorph service -- one MPI job: mm-coordinator (rank 0) + P mm-stage
# ranks, plus the encoder and decoder pool workers of this host -- from a JSON config
# file and keeps it up: when the job dies (a stage crashed: the coordinator reports
# NOT_SERVING, then aborts the job) it is started again after restart_delay_ms; a pool
# worker that dies is started again too (the coordinator re-dispatches its jobs). Either
# one that keeps dying within RESTART_QUICK_S of its start waits twice as long each time,
# up to RESTART_MAX_MS, so a broken setup does not spin; a long run resets the delay.
# SIGINT/SIGTERM stop it all cleanly (the coordinator fails in-flight requests with
# UNAVAILABLE, stops the stages, exits 0; workers say BYE and exit).
#
# usage: deploy/launch.sh CONFIG.json [--once]
# config keys used here (the rest are the service's own, scheduler/serve_config.c):
#   "stages": P (default 1), "hostfile": MPICH hostfile (default: this host only, fork
#   launcher), "restart_delay_ms" (default 1000), "encoders" / "decoders": pool workers
#   to run on this host (default 1 each; workers on other hosts join by themselves:
#   mm-encoder --model DIR --connect tcp://COORDINATOR:50052), "worker_threads" (0 = all
#   cores), "model", "encode_bind", "decode_bind". MM_BIN_DIR overrides build/.
set -uo pipefail

cfg=${1:?usage: deploy/launch.sh CONFIG.json [--once]}
once=0
[[ ${2:-} == --once ]] && once=1
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MM_BIN_DIR:-$here/build}
py=/usr/bin/python3
[[ -x $py ]] || py=python3
read -r P hostfile delay_ms n_enc n_dec wthreads model enc_ep dec_ep < <("$py" -c '
import json, sys
c = json.load(open(sys.argv[1]))
def local(ep):  # a bind address as seen by a worker on this host
    return (ep.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:") or "-")
print(c.get("stages", 1), c.get("hostfile", "") or "-", c.get("restart_delay_ms", 1000),
      c.get("encoders", 1), c.get("decoders", 1), c.get("worker_threads", 0), c.get("model", "assets/tiny"),
      local(c.get("encode_bind", "tcp://127.0.0.1:50052")), local(c.get("decode_bind", "tcp://127.0.0.1:50053")))' "$cfg") || {
  echo "launch: cannot read $cfg" >&2; exit 2; }

if [[ $hostfile == - ]]; then
  where=(-launcher fork -hosts localhost)
else
  where=(-f "$hostfile")
fi
# -disable-auto-cleanup: a dead stage must not take the coordinator down at once; it
# answers UNAVAILABLE / NOT_SERVING and then aborts the job itself.
cmd=(mpiexec "${where[@]}" -disable-auto-cleanup
     -n 1 "$bin/coordinator/mm-coordinator" "$cfg" : -n "$P" "$bin/worker/mm-stage" "$cfg")

RESTART_QUICK_S=10
RESTART_MAX_MS=30000
# next_delay DELAY_MS: the wait after a further quick death (doubled, capped)
next_delay() { echo $(($1 * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : $1 * 2)); }
ms_to_s() { awk "BEGIN {print $1 / 1000}"; }

stop=0
pid=
workers=()
on_signal() {
  stop=1
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null
  ((${#workers[@]})) && kill -TERM "${workers[@]}" 2>/dev/null
}
trap on_signal INT TERM

# One pool worker, restarted when it dies until the launcher stops.
supervise_worker() {  # KIND ENDPOINT INDEX
  local bin=$bin/worker/mm-$1 name=$1-$(hostname)-$3 child= delay=$delay_ms started rc
  trap '[[ -n $child ]] && { kill -TERM "$child" 2>/dev/null; wait "$child"; }; exit 0' TERM INT
  while :; do
    started=$SECONDS
    "$bin" --model "$model" --connect "$2" --threads "$wthreads" --name "$name" &
    child=$!
    wait "$child"
    rc=$?
    ((SECONDS - started >= RESTART_QUICK_S)) && delay=$delay_ms
    echo "launch: $name exited with $rc, restarting in $(ms_to_s "$delay") s" >&2
    sleep "$(ms_to_s "$delay")" & child=$!
    wait "$child"  # a signal ends the wait at once (and the trap ends the sleep)
    delay=$(next_delay "$delay")
  done
}
if [[ $enc_ep != - ]]; then
  for ((k = 0; k < n_enc; k++)); do supervise_worker encoder "$enc_ep" "$k" & workers+=($!); done
fi
if [[ $dec_ep != - ]]; then
  for ((k = 0; k < n_dec; k++)); do supervise_worker decoder "$dec_ep" "$k" & workers+=($!); done
fi
((${#workers[@]})) && echo "launch: ${#workers[@]} pool workers (encoders $n_enc on $enc_ep, decoders $n_dec on $dec_ep)" >&2
stop_workers() {
  ((${#workers[@]})) || return 0
  kill -TERM "${workers[@]}" 2>/dev/null
  wait "${workers[@]}" 2>/dev/null
}

starts=0
delay=$delay_ms
while :; do
  starts=$((starts + 1))
  started=$SECONDS
  echo "launch: start #$starts: ${cmd[*]}" >&2
  "${cmd[@]}" &
  pid=$!
  rc=0
  while kill -0 "$pid" 2>/dev/null; do  # wait returns early when a signal arrives
    wait "$pid"
    rc=$?
  done
  pid=
  if ((stop)); then
    stop_workers
    echo "launch: stopped (job exit $rc)" >&2
    exit 0
  fi
  ((once)) && { echo "launch: job exited with $rc" >&2; stop_workers; exit "$rc"; }
  ((SECONDS - started >= RESTART_QUICK_S)) && delay=$delay_ms
  echo "launch: job exited with $rc, starting it again in $(ms_to_s "$delay") s" >&2
  sleep "$(ms_to_s "$delay")" &
  wait $! 2>/dev/null
  kill $! 2>/dev/null  # a signal ended the wait: the sleep is not needed any more
  delay=$(next_delay "$delay")
  ((stop)) && { stop_workers; echo "launch: stopped (between restarts)" >&2; exit 0; }
done
