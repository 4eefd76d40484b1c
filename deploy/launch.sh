#!/usr/bin/env bash
# Starts the MetaMorph service -- one MPI job: mm-coordinator (rank 0) + P mm-stage
# ranks -- from a JSON config file and keeps it up: when the job dies (a stage crashed:
# the coordinator reports NOT_SERVING, then aborts the job) it is started again after
# restart_delay_ms. SIGINT/SIGTERM stop it cleanly (the coordinator fails in-flight
# requests with UNAVAILABLE, stops the stages, exits 0).
#
# usage: deploy/launch.sh CONFIG.json [--once]
# config keys used here (the rest are the service's own, scheduler/serve_config.c):
#   "stages": P (default 1), "hostfile": MPICH hostfile (default: this host only, fork
#   launcher), "restart_delay_ms" (default 1000). MM_BIN_DIR overrides build/.
set -uo pipefail

cfg=${1:?usage: deploy/launch.sh CONFIG.json [--once]}
once=0
[[ ${2:-} == --once ]] && once=1
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MM_BIN_DIR:-$here/build}
py=/usr/bin/python3
[[ -x $py ]] || py=python3
read -r P hostfile delay_ms < <("$py" -c '
import json, sys
c = json.load(open(sys.argv[1]))
print(c.get("stages", 1), c.get("hostfile", "") or "-", c.get("restart_delay_ms", 1000))' "$cfg") || {
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

stop=0
pid=
on_signal() {
  stop=1
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null
}
trap on_signal INT TERM

starts=0
while :; do
  starts=$((starts + 1))
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
    echo "launch: stopped (job exit $rc)" >&2
    exit 0
  fi
  echo "launch: job exited with $rc" >&2
  ((once)) && exit "$rc"
  sleep "$(awk "BEGIN {print $delay_ms / 1000}")" &
  wait $! 2>/dev/null
  ((stop)) && exit 0
done
