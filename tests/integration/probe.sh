# Sourced by the liveness tests and bench/liveness.sh (issue 18): a millisecond clock
# and waits on the service's health. The caller defines healthy (exit 0 when SERVING).
#   now_ms                     monotonic enough for intervals (bash's EPOCHREALTIME)
#   wait_health WANT TIMEOUT_S WANT 0: until SERVING, 1: until not; 0 when it happened
#   gone PID                   0 when PID has exited (or is a zombie)
#   stop_launcher SETTLE_S PATTERN  SIGTERM to launch.sh ($lpid), which must end within 10 s;
#                              then nothing matching PATTERN (pgrep -f) may be left (calls fail)
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
wait_health() {
  local end=$(($(now_ms) + $2 * 1000))
  while (($(now_ms) < end)); do
    if healthy; then (($1 == 0)) && return 0; else (($1 == 1)) && return 0; fi
    sleep 0.05
  done
  return 1
}
gone() {  # (a zombie may be reaped between kill -0 and ps: no state is gone too)
  ! kill -0 "$1" 2>/dev/null && return 0
  local st
  st=$(ps -o stat= -p "$1" | tr -d ' ')
  [[ -z $st || $st == Z* ]]
}
stop_launcher() {
  kill -TERM "$lpid"
  for _ in $(seq 1 100); do kill -0 "$lpid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$lpid" 2>/dev/null && fail "launch.sh still running 10 s after SIGTERM"
  lpid=
  sleep "$1"
  pgrep -af "$2" && fail "processes left behind"
}
