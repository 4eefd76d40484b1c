#!/usr/bin/env bash
# Issue 18: deploy/slurm/metamorph.sbatch on a real Slurm that this test starts (munged,
# slurmctld, slurmd from Debian; a slurm.conf of its own in a temporary directory,
# SLURM_CONF pointing there): sbatch serves (hydra's Slurm launcher starts the ranks with
# srun inside the allocation), its output is identical to launch.sh's on one host without
# Slurm, and scancel stops everything within seconds, nothing left behind:
#   1. one node (this host): a coordinator and two stages;
#   2. two nodes, each a network-namespace host (tests/integration/nshosts.sh) running its
#      own slurmd, MPI over UCX tcp between them (skipped, with the reason, where
#      namespaces cannot be made).
# Skips (77) where the Slurm daemons or munge are not installed or cannot start.
# Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
source "$src/tests/integration/probe.sh"
source "$src/tests/integration/nshosts.sh"
for p in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch; do
  [[ -x $p ]] || { echo "SKIP: $p is not installed (slurmctld slurmd slurm-client munge)"; exit 77; }
done
[[ $(id -u) == 0 ]] || { echo "SKIP: not root (the test runs the Slurm daemons as root)"; exit 77; }
mmctl=$build/tools/mmctl
dir=$(mktemp -d /tmp/mm-slurm-real-XXXXXX)
export SLURM_CONF=$dir/slurm.conf
lpid= daemons=()
# cluster_down: stops this test's jobs and daemons (by pid: their command lines do not name $dir)
cluster_down() {
  ((${#daemons[@]})) || return 0
  scancel --full -u root 2>/dev/null  # only this test's cluster: SLURM_CONF is ours
  kill -TERM "${daemons[@]}" 2>/dev/null
  sleep 1
  kill -KILL "${daemons[@]}" 2>/dev/null
  daemons=()
  for p in $(pgrep -f "$dir/cfg"); do kill -KILL "$p" 2>/dev/null; done
}
cleanup() {
  [[ -n $lpid ]] && kill -TERM "$lpid" 2>/dev/null && sleep 1
  cluster_down
  [[ -s $dir/munged.pid ]] && kill -KILL "$(cat "$dir/munged.pid")" 2>/dev/null
  nshosts_down
  for p in $(pgrep -f "$dir"); do kill -KILL "$p" 2>/dev/null; done
}
fail() {
  echo "FAIL: $*"
  $(on_host 1) squeue 2>&1
  for f in "$dir"/out.* "$dir"/log/slurm*.log; do
    [[ -f $f ]] && { echo "== $f"; tail -15 "$f"; }
  done
  cleanup
  exit 1
}
trap 'cleanup; rm -rf "$dir"' EXIT
mkdir -p "$dir/log"
head -c 1024 /dev/urandom > "$dir/munge.key"
chmod 400 "$dir/munge.key"
/usr/sbin/munged --force -S "$dir/munge.sock" --key-file "$dir/munge.key" --pid-file "$dir/munged.pid" \
  --log-file "$dir/log/munged.log" --seed-file "$dir/munge.seed" || { echo "SKIP: munged does not start"; exit 77; }
read -r cport dport port mport < <("$mmctl" free-port 4)
# cluster_up CTL_NAME CTL_ADDR "NAME ADDR" ...: slurmctld on the first, a slurmd on each
# (run by $on_host K: nothing for this host, nshosts_run for namespace hosts); 0 when
# every node is idle
cluster_up() {
  local ctl=$1 ctl_addr=$2 k=0 name addr
  shift 2
  rm -rf "$dir/state" "$dir/spool"
  mkdir -p "$dir/state" "$dir/spool"
  cat > "$SLURM_CONF" <<CONF
ClusterName=mmtest
SlurmctldHost=$ctl($ctl_addr)
SlurmctldPort=$cport
SlurmdPort=$dport
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
SlurmdParameters=config_overrides
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  for n in "$@"; do
    read -r name addr <<<"$n"
    echo "NodeName=$name NodeAddr=$addr CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 State=UNKNOWN" >> "$SLURM_CONF"
  done
  $(on_host 1) /usr/sbin/slurmctld -c -i || return 1
  for _ in $(seq 1 50); do [[ -s $dir/slurmctld.pid ]] && break; sleep 0.1; done
  daemons+=("$(cat "$dir/slurmctld.pid")")
  for n in "$@"; do
    k=$((k + 1))
    read -r name addr <<<"$n"
    $(on_host $k) /usr/sbin/slurmd -c -N "$name" || return 1
    for _ in $(seq 1 50); do [[ -s $dir/slurmd.$name.pid ]] && break; sleep 0.1; done
    daemons+=("$(cat "$dir/slurmd.$name.pid")")
  done
  for _ in $(seq 1 150); do
    [[ $($(on_host 1) sinfo -h -o %t 2>/dev/null | grep -vc idle) == 0 && -n $($(on_host 1) sinfo -h -o %t 2>/dev/null) ]] &&
      return 0
    sleep 0.1
  done
  return 1
}
config() {  # config LISTEN_HOST
  cat <<JSON
{"model": "$src/assets/tiny", "listen": "$1:$port", "threads": 1, "stages": 2, "stage_liveness_ms": 1000,
 "fail_exit_ms": 300, "restart_delay_ms": 200, "encoders": 0, "decoders": 0, "encode_bind": "", "decode_bind": "",
 "metrics_listen": "", "http_listen": ""}
JSON
}
target=127.0.0.1
healthy() { $(on_host 1) "$mmctl" --server $target:$port --timeout 1 health >/dev/null 2>&1; }
ask() { $(on_host 1) "$mmctl" --server $target:$port --timeout 30 generate --prompt "Describe a cat." --max-tokens 24; }
# serve_and_cancel WHAT SBATCH_ARGS...: sbatch, SERVING, output == the reference, scancel, nothing left
serve_and_cancel() {
  local what=$1 jid t0 t1
  shift
  jid=$(MM_BIN_DIR=$build MM_SOURCE_DIR=$src $(on_host 1) sbatch --parsable "$@" -o "$dir/out.%j" "$src/deploy/slurm/metamorph.sbatch" \
    "$dir/cfg.json") || fail "$what: sbatch"
  wait_health 0 60 || fail "$what: sbatch job $jid not SERVING"
  ask > "$dir/slurm.out" || fail "$what: generate"
  cmp "$dir/ref.out" "$dir/slurm.out" || fail "$what: output under Slurm differs from launch.sh's on one host"
  t0=$(now_ms)
  $(on_host 1) scancel "$jid"
  for _ in $(seq 1 300); do
    pgrep -f "$dir/cfg.json" >/dev/null || break
    sleep 0.05
  done
  t1=$(now_ms)
  pgrep -af "$dir/cfg.json" && fail "$what: processes left 15 s after scancel"
  echo "test_slurm: $what: output identical to one host's; scancel stopped everything in $((t1 - t0)) ms"
}

# the reference: launch.sh on this host, no Slurm
on_host() { :; }
config 127.0.0.1 > "$dir/cfg.json"
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!
wait_health 0 60 || fail "launch.sh: not SERVING"
ask > "$dir/ref.out" || fail "launch.sh: generate"
kill -TERM "$lpid"
wait "$lpid"
lpid=
wait_health 1 10 || fail "launch.sh did not stop"

# 1. one node: this host
cluster_up "$(hostname)" 127.0.0.1 "$(hostname) 127.0.0.1" ||
  { echo "SKIP: the Slurm node does not come up: $(sinfo 2>&1)"; exit 77; }
serve_and_cancel "one node" -n 3
cluster_down

# 2. two nodes: namespace hosts mmh1 (coordinator, stage 1) and mmh2 (stage 2)
if ! why=$(nshosts_can); then
  echo "test_slurm: two nodes skipped: $why"
  exit 0
fi
nshosts_up "$dir/ns" 2 || fail "cannot make the namespace hosts"
export UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 HYDRA_IFACE=eth0  # MPI and hydra over the hosts' links
unset HYDRA_LAUNCHER_EXEC  # srun, not ssh, inside the allocation
on_host() { echo nshosts_run "$1"; }
target=${NS_IPS[0]}
config 0.0.0.0 > "$dir/cfg.json"
cluster_up mmh1 "${NS_IPS[0]}" "mmh1 ${NS_IPS[0]}" "mmh2 ${NS_IPS[1]}" || fail "the two Slurm nodes do not come up: $(sinfo 2>&1)"
serve_and_cancel "two nodes" -N 2 -n 3
