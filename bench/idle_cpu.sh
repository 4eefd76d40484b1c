#!/usr/bin/env bash
# The CPU an idle service burns: starts deploy/launch.sh CONFIG in a session of its
# own, waits until it serves, lets it settle, then reads utime+stime of the launcher
# and every process below it (launcher, mpiexec, hydra proxy, ranks, worker supervisors, workers)
# from /proc over SECONDS and prints JSON: the total and each program's share of one
# core. Stops the service after. Measures; judges nothing (no threshold).
# usage: bench/idle_cpu.sh BUILD_DIR CONFIG.json [SECONDS (default 20)] [SETTLE_S (default 5)]
set -uo pipefail
build=${1:?usage: bench/idle_cpu.sh BUILD_DIR CONFIG.json [SECONDS] [SETTLE_S]}
cfg=${2:?usage: bench/idle_cpu.sh BUILD_DIR CONFIG.json [SECONDS] [SETTLE_S]}
secs=${3:-20} settle=${4:-5}
src=$(cd "$(dirname "$0")/.." && pwd)
listen=$("$build/coordinator/mm-coordinator" --check "$cfg" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["listen"])') ||
  { echo "idle_cpu: $cfg does not pass mm-coordinator --check" >&2; exit 1; }
log=$(mktemp /tmp/mm-idle-XXXXXX.log)
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$cfg" > "$log" 2>&1 &
sid=$!
stop() { kill -TERM "$sid" 2>/dev/null; wait "$sid" 2>/dev/null; }
for _ in $(seq 1 600); do
  "$build/tools/mmctl" --server "$listen" health >/dev/null 2>&1 && break
  sleep 0.1
done
"$build/tools/mmctl" --server "$listen" health >/dev/null 2>&1 || { echo "idle_cpu: not serving" >&2; cat "$log" >&2; stop; exit 1; }
sleep "$settle"
hz=$(getconf CLK_TCK)
/usr/bin/python3 - "$sid" "$secs" "$hz" <<'PY'
import json, os, sys, time
sid, secs, hz = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
def snapshot():  # pid -> (program, utime + stime ticks) for the launcher and its descendants
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        procs[int(pid)] = (int(rest[1]), comm, int(rest[11]) + int(rest[12]))
    out, todo = {}, [sid]  # hydra's proxy starts a session of its own: follow parents, not sessions
    while todo:
        p = todo.pop()
        if p in procs:
            out[p] = procs[p][1:]
            todo += [c for c, v in procs.items() if v[0] == p]
    return out
a, t0 = snapshot(), time.monotonic()
time.sleep(secs)
b, t1 = snapshot(), time.monotonic()
per, total = {}, 0.0
for pid, (comm, ticks) in b.items():
    if pid in a:
        pct = 100.0 * (ticks - a[pid][1]) / hz / (t1 - t0)
        per[comm] = round(per.get(comm, 0.0) + pct, 3)
        total += pct
print(json.dumps({"seconds": round(t1 - t0, 2), "processes": len(b), "idle_cpu_percent_total": round(total, 3),
                  "by_program": per}, indent=1))
PY
stop
rm -f "$log"
