#!/usr/bin/env bash
# Issue 18: deploy/slurm/metamorph.sbatch on a real single-node Slurm that this test
# starts (munged, slurmctld, slurmd from Debian, a slurm.conf of its own in a temporary
# directory, SLURM_CONF pointing there): sbatch serves (hydra's Slurm launcher starts the
# ranks with srun inside the allocation), its output is identical to launch.sh's on this
# host without Slurm, and scancel stops everything within seconds, nothing left behind.
# Skips (77) where the Slurm daemons or munge are not installed or cannot start.
# Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
source "$src/tests/integration/probe.sh"
for p in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch; do
  [[ -x $p ]] || { echo "SKIP: $p is not installed (slurmctld slurmd slurm-client munge)"; exit 77; }
done
[[ $(id -u) == 0 ]] || { echo "SKIP: not root (the test runs the Slurm daemons as root)"; exit 77; }
mmctl=$build/tools/mmctl
dir=$(mktemp -d /tmp/mm-slurm-real-XXXXXX)
export SLURM_CONF=$dir/slurm.conf
lpid=
cleanup() {
  [[ -n $lpid ]] && kill -TERM "$lpid" 2>/dev/null && sleep 1
  scancel --full -u root 2>/dev/null  # only this test's cluster: SLURM_CONF is ours
  for f in "$dir"/slurmctld.pid "$dir"/slurmd.*.pid "$dir"/munged.pid; do
    [[ -s $f ]] && kill -TERM "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  for f in "$dir"/slurmctld.pid "$dir"/slurmd.*.pid "$dir"/munged.pid; do  # (their command lines do not name $dir)
    [[ -s $f ]] && kill -KILL "$(cat "$f")" 2>/dev/null
  done
  for p in $(pgrep -f "$dir"); do kill -KILL "$p" 2>/dev/null; done
}
fail() {
  echo "FAIL: $*"
  tail -30 "$dir"/out.* "$dir"/log/*.log 2>/dev/null
  cleanup
  exit 1
}
trap 'cleanup; rm -rf "$dir"' EXIT
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
head -c 1024 /dev/urandom > "$dir/munge.key"
chmod 400 "$dir/munge.key"
/usr/sbin/munged --force -S "$dir/munge.sock" --key-file "$dir/munge.key" --pid-file "$dir/munged.pid" \
  --log-file "$dir/log/munged.log" --seed-file "$dir/munge.seed" || { echo "SKIP: munged does not start"; exit 77; }
read -r cport dport port mport < <("$mmctl" free-port 4)
h=$(hostname)
cat > "$SLURM_CONF" <<CONF
ClusterName=mmtest
SlurmctldHost=$h
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
NodeName=$h CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
/usr/sbin/slurmctld -c || { echo "SKIP: slurmctld does not start"; exit 77; }
/usr/sbin/slurmd -c || { echo "SKIP: slurmd does not start"; exit 77; }
for _ in $(seq 1 100); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.1; done
sinfo -h -o %t | grep -q idle || { echo "SKIP: the Slurm node does not come up: $(sinfo 2>&1)"; exit 77; }

cat > "$dir/cfg.json" <<JSON
{"model": "$src/assets/tiny", "listen": "127.0.0.1:$port", "threads": 1, "stages": 2, "stage_liveness_ms": 1000,
 "fail_exit_ms": 300, "restart_delay_ms": 200, "encoders": 0, "decoders": 0, "encode_bind": "", "decode_bind": "",
 "metrics_listen": "127.0.0.1:$mport", "http_listen": ""}
JSON
healthy() { "$mmctl" --server 127.0.0.1:$port --timeout 1 health >/dev/null 2>&1; }
ask() { "$mmctl" --server 127.0.0.1:$port --timeout 30 generate --prompt "Describe a cat." --max-tokens 24; }
# the reference: launch.sh on this host, no Slurm
MM_BIN_DIR=$build setsid "$src/deploy/launch.sh" "$dir/cfg.json" > "$dir/launch.log" 2>&1 &
lpid=$!
wait_health 0 60 || fail "launch.sh: not SERVING"
ask > "$dir/ref.out" || fail "launch.sh: generate"
kill -TERM "$lpid"
wait "$lpid"
lpid=
wait_health 1 10 || fail "launch.sh did not stop"

# one node, a coordinator and two stages
jid=$(MM_BIN_DIR=$build sbatch --parsable -n 3 -o "$dir/out.%j" "$src/deploy/slurm/metamorph.sbatch" "$dir/cfg.json") ||
  fail "sbatch"
wait_health 0 60 || fail "sbatch job $jid: not SERVING"
ask > "$dir/slurm.out" || fail "sbatch job: generate"
cmp "$dir/ref.out" "$dir/slurm.out" || fail "output under Slurm differs from launch.sh's"
t0=$(now_ms)
scancel "$jid"
for _ in $(seq 1 300); do
  pgrep -f "$dir/cfg.json" >/dev/null || break
  sleep 0.05
done
t1=$(now_ms)
pgrep -af "$dir/cfg.json" && fail "processes left 15 s after scancel"
echo "test_slurm: one node: output identical to launch.sh's; scancel stopped everything in $((t1 - t0)) ms"
