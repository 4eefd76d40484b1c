#!/usr/bin/env bash
# Starts the MetaMorph service -- one MPI job: mm-coordinator (rank 0) + P mm-stage
# ranks, plus the encoder and decoder pool workers of this host -- from a JSON config
# file and keeps it up: when the job dies (a stage crashed: the coordinator reports
# NOT_SERVING, then aborts the job) it is started again after restart_delay_ms; a pool
# worker that dies is started again too (the coordinator re-dispatches its jobs). Either
# one that keeps dying within RESTART_QUICK_S of its start waits twice as long each time,
# up to RESTART_MAX_MS, so a broken setup does not spin; a long run resets the delay.
# A permanent error is not retried: before every start `mm-coordinator --check` validates
# the config and the model files, and a worker that cannot load its model exits 78; the
# launcher then stops everything and exits 78 (EX_CONFIG) with the message.
# A job that does not end by itself is ended: a watchdog tears it down as a whole (see
# "the watchdog" below) when it is not serving start_timeout_ms after its start or when
# its coordinator is gone and mpiexec lingers; with a hostfile, hosts that stay away are
# left out after host_max_failures failed starts (DEGRADED, fewer stages) and taken back
# at a later restart or on SIGHUP. Rank 0 runs on the first hostfile slot: run this there.
# Nothing outlives the launcher, even when it is SIGKILLed: mpiexec and the worker
# supervisors run with a parent-death signal (setpriv --pdeathsig), the ranks and the
# workers ask for one themselves (common/runtime.h, MM_SUPERVISED).
# Pool workers run only for the parts the model has (an HF LLaMA directory: none).
# SIGINT/SIGTERM stop it all cleanly (the coordinator fails in-flight requests with
# UNAVAILABLE, stops the stages, exits 0; workers say BYE and exit).
#
# usage: deploy/launch.sh CONFIG.json [--once] [--dry-run] [--hostfile FILE] [--stages P]
#   --once      do not restart the job; exit with its status
#   --dry-run   check the config and the model, print the commands, start nothing
#   --hostfile, --stages  override the config's (deploy/slurm/metamorph.sbatch uses them)
# config keys used here (all are the service's, pipeline/serve_config.c; see README):
#   "stages", "hostfile" (default: this host only, fork launcher), "restart_delay_ms",
#   "encoders" / "decoders" (pool workers on this host; workers on other hosts join by
#   themselves: mm-encoder --model DIR --connect tcp://COORDINATOR:50052),
#   "worker_threads", "model", "encode_bind", "decode_bind", "pool_curve_secret_key" and
#   "pool_worker_key" (CURVE keys of this host's workers). MM_BIN_DIR overrides build/.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MM_BIN_DIR:-$here/build}
EXIT_CONFIG=78
RESTART_QUICK_S=10
RESTART_MAX_MS=30000
# next_delay DELAY_MS: the wait after a further quick death (doubled, capped)
next_delay() { echo $(($1 * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : $1 * 2)); }
ms_to_s() { awk "BEGIN {print $1 / 1000}"; }
py=/usr/bin/python3
[[ -x $py ]] || py=python3
# say LEVEL MESSAGE: one line in the service's log format (common/log.h): text, or JSON
# when the config's log_format (exported as MM_LOG_FORMAT below) is json.
say() {
  local level=$1 when
  shift
  when=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
  if [[ ${MM_LOG_FORMAT:-text} == json ]]; then
    "$py" -c 'import json, sys; print(json.dumps({"time": sys.argv[1], "level": sys.argv[2], "prog": "launch",
    "pid": int(sys.argv[3]), "src": sys.argv[4], "msg": sys.argv[5]}))' "$when" "$level" $$ "launch.sh:${BASH_LINENO[0]}" "$*" >&2
  else
    printf '%s %-5s launch[%d] launch.sh:%d %s\n' "$when" "${level^^}" $$ "${BASH_LINENO[0]}" "$*" >&2
  fi
}
# a parent-death signal for what we start, where util-linux has it
pdeath=()
setpriv --help 2>/dev/null | grep -q pdeathsig && pdeath=(setpriv --pdeathsig TERM --)
export MM_SUPERVISED=1

# --- one pool worker, restarted when it dies: `launch.sh --supervise-worker KIND ENDPOINT
# INDEX` (started by the launcher itself, so that it can carry a parent-death signal)
if [[ ${1:-} == --supervise-worker ]]; then
  kind=$2 ep=$3 name=$2-$(hostname)-$4 child= delay=$MM_LAUNCH_DELAY_MS
  trap '[[ -n $child ]] && { kill -TERM "$child" 2>/dev/null; wait "$child"; }; exit 0' TERM INT
  while :; do
    started=$SECONDS
    "$bin/worker/mm-$kind" --model "$MM_LAUNCH_MODEL" --connect "$ep" --threads "$MM_LAUNCH_THREADS" --name "$name" &
    child=$!
    wait "$child"
    rc=$?
    if ((rc == EXIT_CONFIG)); then
      say error "$name cannot load the model (exit $rc): not restarting"
      kill -USR1 "$PPID" 2>/dev/null  # the launcher stops everything
      exit "$rc"
    fi
    ((SECONDS - started >= RESTART_QUICK_S)) && delay=$MM_LAUNCH_DELAY_MS
    say warn "$name exited with $rc, restarting in $(ms_to_s "$delay") s"
    sleep "$(ms_to_s "$delay")" & child=$!
    wait "$child"  # a signal ends the wait at once (and the trap ends the sleep)
    delay=$(next_delay "$delay")
  done
fi

usage="usage: deploy/launch.sh CONFIG.json [--once] [--dry-run] [--hostfile FILE] [--stages P]"
cfg=${1:?$usage}
shift
once=0 dry=0 hostfile_arg= stages_arg=
while (($#)); do
  case $1 in
    --once) once=1 ;;
    --dry-run) dry=1 ;;
    --hostfile) hostfile_arg=${2:?$usage}; shift ;;
    --stages) stages_arg=${2:?$usage}; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
# check_config: validates the config and the model (the coordinator's own check, with
# the environment's overrides) and sets the settings below; fails on a permanent error.
# set_cmd: the mpiexec line of the current hostfile and P
set_cmd() {
  if [[ $hostfile == - ]]; then
    where=(-launcher fork -hosts localhost)
  else
    where=(-f "$hostfile")
  fi
  # -disable-auto-cleanup: a dead stage must not take the coordinator down at once; it
  # answers UNAVAILABLE / NOT_SERVING and then aborts the job itself.
  cmd=(mpiexec "${where[@]}" -disable-auto-cleanup
       -n 1 "$bin/coordinator/mm-coordinator" "$cfg" : -n "$P" "$bin/worker/mm-stage" "$cfg")
}
check_config() {
  local out rc
  out=$("$bin/coordinator/mm-coordinator" --check "$cfg")
  rc=$?
  if ((rc)); then
    say error "$cfg: permanent error (mm-coordinator --check exit $rc), not starting"
    return "$rc"
  fi
  read -r P hostfile delay_ms n_enc n_dec wthreads model enc_ep dec_ep vision decoder log_level log_format \
    curve_key worker_key start_timeout_ms liveness_ms host_max_failures < <("$py" -c '
import json, sys
j = json.load(sys.stdin); c, parts = j["config"], j["parts"]
def local(ep):  # a bind address as seen by a worker on this host
    return (ep.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:") or "-")
print(c["stages"], c["hostfile"] or "-", c["restart_delay_ms"], c["encoders"], c["decoders"], c["worker_threads"],
      c["model"], local(c["encode_bind"]), local(c["decode_bind"]), parts["vision"] or "-", parts["decoder"] or "-",
      c.get("log_level", "info"), c.get("log_format", "text"), c.get("pool_curve_secret_key") or "-",
      c.get("pool_worker_key") or "-", c.get("start_timeout_ms", 600000), c.get("stage_liveness_ms", 3000),
      c.get("host_max_failures", 3))' \
    <<<"$out") || { say error "cannot read the checked config of $cfg"; return 2; }
  [[ -n $stages_arg ]] && P=$stages_arg
  [[ -n $hostfile_arg ]] && hostfile=$hostfile_arg
  set_cmd
}
check_config || exit
# the config's log settings for every program started here (pool workers read no config)
export MM_LOG_LEVEL=$log_level MM_LOG_FORMAT=$log_format
export MM_LAUNCH_MODEL=$model MM_LAUNCH_THREADS=$wthreads MM_LAUNCH_DELAY_MS=$delay_ms MM_BIN_DIR=$bin
# CURVE pools: this host's workers present pool_worker_key and trust the coordinator's
# public key (KEY.pub from mmctl keygen, else the key file's public line)
if [[ $curve_key != - ]]; then
  if [[ $worker_key == - ]]; then
    say warn "pool_curve_secret_key is set but pool_worker_key is not: this host's workers cannot join"
  else
    server_pub=$curve_key.pub
    [[ -r $server_pub ]] || server_pub=$curve_key
    export MM_POOL_CURVE_KEY=$worker_key MM_POOL_SERVER_KEY=$server_pub
  fi
fi

# The pools the model has and the config binds; their workers on this host.
pools=()
# plan_workers KIND PART_DIR PART_NAME BIND_KEY ENDPOINT COUNT WITHOUT_IT
plan_workers() {
  if [[ $2 == - ]]; then
    say info "$model has no $3 part: no $1 workers ($7)"
  elif [[ $5 == - ]]; then
    say info "$4 is \"\": no $1 workers"
  else
    for ((k = 0; k < $6; k++)); do pools+=("$1 $5 $k"); done
  fi
}
plan_workers encoder "$vision" vision encode_bind "$enc_ep" "$n_enc" "image inputs are refused"
plan_workers decoder "$decoder" decoder decode_bind "$dec_ep" "$n_dec" "images are generated as tokens only"

if ((dry)); then
  printf 'launch: dry run: job:'; printf ' %q' "${cmd[@]}"; printf '\n'
  [[ $hostfile != - ]] && echo "launch: dry run: hostfile $hostfile: $(tr '\n' ' ' < "$hostfile")"
  for w in "${pools[@]}"; do
    read -r kind ep k <<<"$w"
    printf 'launch: dry run: worker:'
    printf ' %q' "$bin/worker/mm-$kind" --model "$model" --connect "$ep" --threads "$wthreads" --name "$kind-$(hostname)-$k"
    printf '\n'
  done
  exit 0
fi

stop=0 permanent=0
pid=
workers=()
on_signal() {
  stop=1
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null
  ((${#workers[@]})) && kill -TERM "${workers[@]}" 2>/dev/null
}
trap on_signal INT TERM
trap 'permanent=1; on_signal' USR1  # a worker cannot load its model
for w in "${pools[@]}"; do
  read -r kind ep k <<<"$w"
  "${pdeath[@]}" bash "$here/deploy/launch.sh" --supervise-worker "$kind" "$ep" "$k" &
  workers+=($!)
done
((${#workers[@]})) && say info "${#workers[@]} pool workers (encoders on $enc_ep, decoders on $dec_ep)"
stop_workers() {
  ((${#workers[@]})) || return 0
  kill -TERM "${workers[@]}" 2>/dev/null
  wait "${workers[@]}" 2>/dev/null
}
# end RC MESSAGE: stops the workers and exits (78 after a worker's permanent error)
end() {
  stop_workers
  [[ -n ${run_dir:-} ]] && rm -rf "$run_dir"
  if ((permanent)); then
    say error "stopped: a pool worker cannot load the model (see above)"
    exit "$EXIT_CONFIG"
  fi
  say info "$2"
  exit "$1"
}

# --- the watchdog: the launcher always ends a broken job. Hydra alone does not: a rank
# that never reaches MPI_Init (its host unreachable) leaves the others waiting there
# forever, and when rank 0 is SIGKILLed by its proxy, a stage on another host may keep
# mpiexec waiting forever. So the job runs in its own process group and is torn down as
# a whole -- that group here, the ranks' process groups on every other host over ssh --
# when the coordinator is not serving start_timeout_ms after the start (it writes
# $MM_RUN_DIR/ready, coordinator/run_dir.h), or when the coordinator is gone and mpiexec
# has not ended within a grace (stage_liveness_ms + 2 s: the stages' own exit). Stages
# whose coordinator falls silent exit by themselves (pipeline/liveness.h), so a rank on
# a host that the teardown cannot reach does not spin there.
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/metamorph-run-XXXXXX")
export MM_RUN_DIR=$run_dir
me=$(hostname)
# the ssh that hydra uses (HYDRA_LAUNCHER_EXEC: another program or a wrapper with its own config)
ssh_opts=("${HYDRA_LAUNCHER_EXEC:-ssh}" -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=accept-new)
WATCH_TICK_S=0.5  # (bash waking 2x a second: ~0.1% of a core; its deadlines are seconds)
# teardown WHY: kills the job's process group here and its ranks' groups elsewhere
teardown() {
  say error "tearing the MPI job down: $1"
  kill -KILL -- -"$pid" 2>/dev/null
  local rank host rpid sshs=()
  if [[ -s $run_dir/ready ]]; then
    while read -r rank host rpid; do
      if [[ $host == "$me" ]]; then
        kill -KILL "$rpid" 2>/dev/null
      elif [[ -z ${SLURM_JOB_ID:-} ]]; then
        # the rank's process group there: hydra's proxy of this job and its ranks (under
        # Slurm no ssh: those ranks leave by themselves, and Slurm ends the steps)
        timeout 10 "${ssh_opts[@]}" "$host" \
          "g=\$(ps -o pgid= -p $rpid | tr -d ' '); [ -n \"\$g\" ] && kill -KILL -- -\$g" </dev/null >/dev/null 2>&1 &
        sshs+=($!)
      fi
    done < "$run_dir/ready"
  fi
  ((${#sshs[@]})) && wait "${sshs[@]}" 2>/dev/null
}
# watch_job: waits for the job to end, tearing it down when broken; sets rc and ready
watch_job() {
  local t0=${EPOCHREALTIME/./} now cpid= gone_at= grace_ms=$((liveness_ms + 2000)) host  # microseconds
  ready=0 rc=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep "$WATCH_TICK_S" &
    wait $! 2>/dev/null
    ((stop)) && break
    now=${EPOCHREALTIME/./}
    [[ -s $run_dir/ready ]] && ready=1
    if ((!ready && (now - t0) / 1000 > start_timeout_ms)); then
      teardown "not serving ${start_timeout_ms} ms after the start (start_timeout_ms): a rank is stuck in MPI_Init or loading"
      break
    fi
    [[ -z $cpid && -s $run_dir/coordinator.pid ]] && read -r cpid host < "$run_dir/coordinator.pid"
    [[ -n $cpid && ${host:-$me} != "$me" ]] && cpid=  # rank 0 elsewhere: only the start deadline watches it
    if [[ -n $cpid ]] && ! kill -0 "$cpid" 2>/dev/null; then
      [[ -z $gone_at ]] && gone_at=$now
      if (((now - gone_at) / 1000 > grace_ms)); then
        teardown "the coordinator (pid $cpid) is gone but mpiexec still runs after ${grace_ms} ms"
        break
      fi
    fi
  done
  [[ -s $run_dir/ready ]] && ready=1
  # a clean stop is the job's own, within a grace: MPICH 4.0.2's MPI_Finalize over UCX tcp
  # hangs now and then (1 in 5 stops here, with or without our heartbeats)
  local stop_at=${EPOCHREALTIME/./}
  while ((stop)) && kill -0 "$pid" 2>/dev/null; do
    sleep "$WATCH_TICK_S" &
    wait $! 2>/dev/null
    now=${EPOCHREALTIME/./}
    if (((now - stop_at) / 1000 > grace_ms + 3000)); then
      teardown "still running $((grace_ms + 3000)) ms after it was told to stop"
      break
    fi
  done
  wait "$pid" 2>/dev/null
  rc=$?
}

# --- hosts that stay away: after host_max_failures starts in a row that never served,
# the hosts of the hostfile that ssh cannot reach are left out and the job is re-planned
# on the rest (fewer stages, a new layer split: every rank loads its slice at start, and
# a stage that does not fit its host's memory fails to load, which counts as a failed
# start too); it serves degraded, saying so at every start. Each later restart tries
# every host again and takes them all back when all answer; SIGHUP asks for that now.
full_hostfile=$hostfile full_P=$P degraded=0 failed_starts=0
# slots_of FILE: the MPI ranks a hostfile holds ("host:n" lines, "host" = 1)
slots_of() { awk -F: '!/^[[:space:]]*(#|$)/ {n += ($2 == "" ? 1 : $2)} END {print n + 0}' "$1"; }
# replan: re-plans on the reachable hosts (sets hostfile, P, where, cmd); 1 when none lost
replan() {
  local line h lost=() kept=$run_dir/hostfile.reachable
  : > "$kept"
  while read -r line; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    h=${line%%:*}
    if [[ $h == localhost || $h == 127.* || $h == "$me" ]] ||  # hydra forks there, no ssh
      timeout 10 "${ssh_opts[@]}" "$h" true </dev/null >/dev/null 2>&1; then
      echo "$line" >> "$kept"
    else
      lost+=("$h")
    fi
  done < "$full_hostfile"
  local slots
  slots=$(slots_of "$kept")
  if ((${#lost[@]} == 0)); then
    if ((degraded)); then
      say warn "every host of $full_hostfile answers again: back to $full_P stages on all of them"
      degraded=0 hostfile=$full_hostfile P=$full_P
      set_cmd
    fi
    return 1
  fi
  if ((slots < 2)); then
    say error "hosts unreachable: ${lost[*]}; too few slots left ($slots) for a coordinator and a stage"
    return 1
  fi
  degraded=1 hostfile=$kept P=$((slots - 1 < full_P ? slots - 1 : full_P))
  say error "DEGRADED: hosts unreachable: ${lost[*]}; re-planned on $(tr '\n' ' ' < "$kept")with $P stages (of $full_P)"
  set_cmd
  return 0
}
# SIGHUP: take every host back now (the job is restarted, re-planned on all that answer)
trap '((degraded)) && [[ -n $pid ]] && teardown "SIGHUP: trying every host again"' HUP

starts=0
delay=$delay_ms
while :; do
  ((stop)) && end 0 "stopped (before start)"
  starts=$((starts + 1))
  if ((starts > 1)); then
    check_config || { rc=$?; stop_workers; rm -rf "$run_dir"; exit "$rc"; }
    [[ $full_hostfile != - ]] && { full_hostfile=$hostfile full_P=$P; }
    if [[ $full_hostfile != - && -z ${SLURM_JOB_ID:-} ]]; then  # under Slurm, Slurm owns the nodes
      if ((degraded || failed_starts >= host_max_failures)); then
        replan || true
      fi
    fi
    ((degraded)) && say error "DEGRADED: serving on $(tr '\n' ' ' < "$hostfile")with $P of $full_P stages"
  fi
  started=$SECONDS
  rm -f "$run_dir/ready" "$run_dir/coordinator.pid"
  say info "start #$starts: ${cmd[*]}"
  "${pdeath[@]}" setsid "${cmd[@]}" &
  pid=$!
  watch_job
  pid=
  if ((ready)); then failed_starts=0; else failed_starts=$((failed_starts + 1)); fi
  ((stop)) && end 0 "stopped (job exit $rc)"
  ((once)) && end "$rc" "job exited with $rc"
  ((SECONDS - started >= RESTART_QUICK_S)) && delay=$delay_ms
  say warn "job exited with $rc, starting it again in $(ms_to_s "$delay") s"
  sleep "$(ms_to_s "$delay")" &
  wait $! 2>/dev/null
  kill $! 2>/dev/null  # a signal ended the wait: the sleep is not needed any more
  delay=$(next_delay "$delay")
  ((stop)) && end 0 "stopped (between restarts)"
done
