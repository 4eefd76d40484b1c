#!/usr/bin/env bash
# deploy/slurm/metamorph.sbatch in a simulated allocation (SLURM_* variables and a fake
# scontrol; no slurmctld here): it must run deploy/launch.sh with a hostfile of the
# allocation's nodes and their task counts and P = ntasks - 1 stages, which --dry-run
# prints as the mpiexec line. Outside an allocation it refuses. Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
dir=$(mktemp -d /tmp/mm-slurm-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; cat "$dir/out" 2>/dev/null; exit 1; }
mkdir "$dir/bin"
cat > "$dir/bin/scontrol" <<'SH'
#!/bin/sh
[ "$1 $2 $3" = "show hostnames node[1-2]" ] || { echo "fake scontrol: unexpected: $*" >&2; exit 1; }
printf 'node1\nnode2\n'
SH
chmod +x "$dir/bin/scontrol"
echo "{\"model\": \"$src/assets/tiny\", \"http_listen\": \"\"}" > "$dir/cfg.json"
PATH=$dir/bin:$PATH SLURM_NTASKS=3 SLURM_JOB_NODELIST='node[1-2]' SLURM_TASKS_PER_NODE='2,1' \
  MM_BIN_DIR=$build MM_LAUNCH_ARGS=--dry-run TMPDIR=$dir \
  bash "$src/deploy/slurm/metamorph.sbatch" "$dir/cfg.json" > "$dir/out" 2>&1 || fail "sbatch script exit $?"
job=$(sed -n 's/^launch: dry run: job: //p' "$dir/out")
expected="mpiexec -f $dir/metamorph-hosts-?????? -disable-auto-cleanup -n 1 $build/coordinator/mm-coordinator $dir/cfg.json : -n 2 $build/worker/mm-stage $dir/cfg.json"
# shellcheck disable=SC2053
[[ $job == $expected ]] || fail "mpiexec line: $job
expected:     $expected"
grep -q "^launch: dry run: hostfile .*: node1:2 node2:1 $" "$dir/out" || fail "hostfile is not node1:2 node2:1"
ls "$dir"/metamorph-hosts-* >/dev/null 2>&1 && fail "the hostfile was left behind"
grep -q "dry run: worker: .*mm-encoder" "$dir/out" || fail "no encoder worker on the first node"
# 12 tasks on 2 nodes as Slurm writes it: "6(x2)"
PATH=$dir/bin:$PATH SLURM_NTASKS=12 SLURM_JOB_NODELIST='node[1-2]' SLURM_TASKS_PER_NODE='6(x2)' \
  MM_BIN_DIR=$build MM_LAUNCH_ARGS=--dry-run TMPDIR=$dir \
  bash "$src/deploy/slurm/metamorph.sbatch" "$dir/cfg.json" > "$dir/out" 2>&1 || fail "sbatch script (6(x2)) exit $?"
grep -q "^launch: dry run: hostfile .*: node1:6 node2:6 $" "$dir/out" || fail "6(x2) is not node1:6 node2:6"
grep -q -- "-n 11 $build/worker/mm-stage" "$dir/out" || fail "12 tasks should give 11 stages"
env -u SLURM_NTASKS bash "$src/deploy/slurm/metamorph.sbatch" "$dir/cfg.json" > "$dir/out" 2>&1 && fail "ran outside an allocation"
grep -q "not inside a Slurm job" "$dir/out" || fail "no word about the missing allocation"
echo "test_slurm_dryrun: hostfile from the allocation, P = ntasks - 1, the launcher's mpiexec line: OK"
