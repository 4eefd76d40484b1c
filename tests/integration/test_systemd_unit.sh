#!/usr/bin/env bash
# deploy/systemd/metamorph.service: systemd-analyze verify finds nothing to say about it
# (with its /opt and /etc paths pointed at this tree and a config), it runs the same
# launcher, and it does not restart on the launcher's permanent-error status (78).
# Skipped (77) without systemd-analyze. Args: SOURCE_DIR.
set -uo pipefail
src=$1
unit=$src/deploy/systemd/metamorph.service
command -v systemd-analyze >/dev/null || { echo "no systemd-analyze: skipped"; exit 77; }
dir=$(mktemp -d /tmp/mm-systemd-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
echo '{}' > "$dir/config.json"
sed "s|/opt/metamorph|$src|g; s|/etc/metamorph/|$dir/|g" "$unit" > "$dir/metamorph.service"
out=$(systemd-analyze verify "$dir/metamorph.service" 2>&1) || fail "systemd-analyze verify: $out"
[[ -z $out ]] || fail "systemd-analyze verify says: $out"
grep -q '^ExecStart=/opt/metamorph/deploy/launch.sh ' "$unit" || fail "ExecStart is not deploy/launch.sh"
code=$(sed -n 's/^#define MM_EXIT_CONFIG \([0-9]*\).*/\1/p' "$src/common/runtime.h")
grep -q "^RestartPreventExitStatus=$code$" "$unit" || fail "RestartPreventExitStatus is not MM_EXIT_CONFIG ($code)"
grep -q "^EXIT_CONFIG=$code$" "$src/deploy/launch.sh" || fail "launch.sh's EXIT_CONFIG is not MM_EXIT_CONFIG ($code)"
echo "test_systemd_unit: verified, runs deploy/launch.sh, no restart on $code: OK"
