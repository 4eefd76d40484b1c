# Sourced by the multi-host tests (issue 18): N "hosts" made of network namespaces, each
# with its own UTS name (hostname mmhK) and sshd, on a private bridge, as root. Keys are
# made here (client key + host keys), ssh reaches them through an ssh_config of ours,
# never the machine's (HYDRA_LAUNCHER_EXEC=$NS_DIR/ssh is what hydra and launch.sh use).
# Everything it makes is undone by nshosts_down, which the caller traps on EXIT: the
# namespaces, the bridge, and every process whose command line names $NS_DIR.
#   nshosts_can           0 when namespaces and bridges can be made here, else prints why
#   nshosts_up DIR N      hosts mmh1..mmhN at 10.$((…)).K; sets NS_NAMES, NS_IPS, NS_DIR
#   nshosts_run K CMD...  runs CMD on host K (its namespace, its hostname); nshosts_exec: in place
#   nshosts_cut K / nshosts_heal K   takes host K's link down / up
#   nshosts_down          undoes it all (idempotent)
NS_TAG=mm$$
NS_NET=10.$((200 + $$ % 50)).$(($$ % 250))
NS_NAMES=() NS_IPS=()
NS_DIR=
# `ip netns add` bind-mounts /run/netns on itself the first time; a machine (or a chroot:
# the fresh-Debian check) where it was not mounted gets it back unmounted
NS_NETNS_MOUNTED=0
mountpoint -q /run/netns 2>/dev/null && NS_NETNS_MOUNTED=1
nshosts_netns_restore() {
  ((NS_NETNS_MOUNTED)) && return 0
  mountpoint -q /run/netns 2>/dev/null && [[ -z $(ls -A /run/netns 2>/dev/null) ]] && umount /run/netns 2>/dev/null
  return 0
}
nshosts_can() {
  [[ $(id -u) == 0 ]] || { echo "not root"; return 1; }
  [[ -x /usr/sbin/sshd ]] || { echo "no /usr/sbin/sshd (openssh-server)"; return 1; }
  command -v ip >/dev/null && command -v unshare >/dev/null || { echo "no ip (iproute2) or unshare"; return 1; }
  local out
  if ! out=$(ip netns add "${NS_TAG}probe" 2>&1); then echo "cannot make a network namespace: $out"; return 1; fi
  if ! out=$(ip netns exec "${NS_TAG}probe" unshare --uts true 2>&1); then
    ip netns del "${NS_TAG}probe"
    nshosts_netns_restore
    echo "cannot run in a network namespace with its own hostname: $out"
    return 1
  fi
  ip netns del "${NS_TAG}probe"
  nshosts_netns_restore
  if ! out=$(ip link add "${NS_TAG}probe" type bridge 2>&1); then echo "cannot make a bridge: $out"; return 1; fi
  ip link del "${NS_TAG}probe"
  return 0
}
nshosts_up() {
  NS_DIR=$1
  local n=$2 k ns
  mkdir -p "$NS_DIR/ssh"
  ssh-keygen -q -t ed25519 -N "" -f "$NS_DIR/ssh/id" || return 1
  ssh-keygen -q -t ed25519 -N "" -f "$NS_DIR/ssh/host_key" || return 1
  cp "$NS_DIR/ssh/id.pub" "$NS_DIR/ssh/authorized_keys"
  chmod 700 "$NS_DIR" "$NS_DIR/ssh"
  mkdir -p /run/sshd
  ip link add "${NS_TAG}br" type bridge || return 1
  ip link set "${NS_TAG}br" up
  : > "$NS_DIR/ssh/config"
  for ((k = 1; k <= n; k++)); do
    ns=${NS_TAG}h$k
    NS_NAMES+=("mmh$k") NS_IPS+=("$NS_NET.$k")
    ip netns add "$ns" || return 1
    ip link add "${NS_TAG}v$k" type veth peer name eth0 netns "$ns" || return 1
    ip link set "${NS_TAG}v$k" master "${NS_TAG}br" up
    ip -n "$ns" addr add "$NS_NET.$k/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    cat >> "$NS_DIR/ssh/config" <<CFG
Host mmh$k $NS_NET.$k
  HostName $NS_NET.$k
CFG
    cat > "$NS_DIR/ssh/sshd_config.$k" <<CFG
ListenAddress $NS_NET.$k
HostKey $NS_DIR/ssh/host_key
AuthorizedKeysFile $NS_DIR/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile $NS_DIR/ssh/sshd.$k.pid
AcceptEnv *
CFG
    nshosts_run "$k" /usr/sbin/sshd -f "$NS_DIR/ssh/sshd_config.$k" || return 1
  done
  cat >> "$NS_DIR/ssh/config" <<CFG
Host *
  User root
  IdentityFile $NS_DIR/ssh/id
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
  ConnectTimeout 3
  ServerAliveInterval 1
  ServerAliveCountMax 3
CFG
  printf '#!/bin/sh\nexec ssh -F %s "$@"\n' "$NS_DIR/ssh/config" > "$NS_DIR/ssh/ssh"
  chmod +x "$NS_DIR/ssh/ssh"
  export HYDRA_LAUNCHER_EXEC=$NS_DIR/ssh/ssh
  for ((k = 1; k <= n; k++)); do  # sshd is up when a login works
    for _ in $(seq 1 50); do
      nshosts_run 1 "$HYDRA_LAUNCHER_EXEC" "$NS_NET.$k" true 2>/dev/null && continue 2
      sleep 0.1
    done
    echo "nshosts: no ssh login on host $k"
    return 1
  done
}
# the host's namespace and its own hostname (a UTS namespace per command)
nshosts_run() { (nshosts_exec "$@"); }
# the same in place of the calling (sub)shell: `nshosts_exec K CMD &` gives $! = CMD's pid
nshosts_exec() {
  local k=$1
  shift
  # a /sys of the namespace's own (its network devices, for UCX), as ip netns exec makes,
  # but keeping the machine's cgroup tree under it (slurmd needs one), in a mount
  # namespace of this command's own
  exec nsenter --net="/var/run/netns/${NS_TAG}h$k" unshare --mount --uts sh -c '
    cg=/run/mm-cgroup.$$; mkdir -p "$cg" && mount --rbind /sys/fs/cgroup "$cg" 2>/dev/null
    mount -t sysfs none /sys && { mount --move "$cg" /sys/fs/cgroup 2>/dev/null || true; }
    rmdir "$cg" 2>/dev/null; hostname "$0"; exec "$@"' "mmh$k" "$@"
}
nshosts_cut() { ip link set "${NS_TAG}v$1" down; }
nshosts_heal() { ip link set "${NS_TAG}v$1" up; }
nshosts_down() {
  local p ns
  if [[ -n $NS_DIR ]]; then
    for p in $(pgrep -f "$NS_DIR"); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_TAG}h"); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  for p in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^${NS_TAG}v"); do
    ip link del "$p" 2>/dev/null  # a veth whose namespace lingers (a process still dying in it)
  done
  ip link del "${NS_TAG}br" 2>/dev/null
  nshosts_netns_restore
  return 0
}
