#!/usr/bin/env bash
# A GlusterFS test bed for the fs block store: one glusterd serving a one-brick volume, and
# two FUSE mounts of that volume acting as two hosts (separate mount points, separate client
# processes with their own caches).
#
#   scripts/glusterfs.sh start    install GlusterFS if missing, start, print the mounts
#   scripts/glusterfs.sh stop     tear everything down (idempotent; also after a failed start)
#   scripts/glusterfs.sh status   exit 0 and print the mounts if the bed is up
#   scripts/glusterfs.sh env      print KVR_GLUSTER_A=... KVR_GLUSTER_B=... (for eval)
#
# Isolation, so that a machine's own Gluster is never touched:
# - glusterd and its brick process run in a network namespace this script creates, with
#   its own address on its own loopback (Gluster refuses 127.x bricks); no other address.
# - They also run in a private mount namespace in which /var/lib/glusterd, /run/gluster and
#   /var/log/glusterfs are bind mounts of directories under the state directory: their
#   state, sockets, pid files and logs never reach the real ones.
# - The two FUSE clients join only the network namespace (to reach the brick), so their
#   mounts appear in the caller's mount namespace.
#
# Needs root, /dev/fuse and `ip netns`. Exit status 77 means "this machine cannot run it"
# (the reason is printed); tests then skip.
set -euo pipefail

STATE=${KVR_GLUSTER_DIR:-${TMPDIR:-/tmp}/kvr-gluster}
NETNS=${KVR_GLUSTER_NETNS:-kvr-gluster}
ADDR=${KVR_GLUSTER_ADDR:-10.213.0.1}
VOLUME=kvr
MOUNT_A=$STATE/host-a
MOUNT_B=$STATE/host-b

log() { echo "glusterfs.sh: $*" >&2; }
unsupported() {
  log "cannot run here: $*"
  exit 77
}

# Runs a command inside glusterd's network and mount namespaces.
in_server() {
  local pid
  pid=$(cat "$STATE/glusterd.pid")
  nsenter -t "$pid" -n -m -- "$@"
}

install_gluster() {
  if command -v glusterd >/dev/null 2>&1 && command -v glusterfs >/dev/null 2>&1; then
    return
  fi
  command -v apt-get >/dev/null 2>&1 || unsupported "GlusterFS is not installed and there is no apt-get"
  log "installing glusterfs-server glusterfs-client"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends glusterfs-server glusterfs-client >/dev/null
}

check_machine() {
  [ "$(id -u)" -eq 0 ] || unsupported "needs root (network namespace, mounts)"
  [ -c /dev/fuse ] || unsupported "no /dev/fuse"
  command -v ip >/dev/null 2>&1 || unsupported "no ip(8)"
  command -v nsenter >/dev/null 2>&1 || unsupported "no nsenter(1)"
  local probe="kvr-gluster-probe-$$"
  ip netns add "$probe" 2>/dev/null || unsupported "ip netns add is not permitted"
  ip netns del "$probe"
}

mounted() { grep -qs " $1 fuse.glusterfs " /proc/self/mounts; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out after ${secs}s waiting for $what"
  return 1
}

start_glusterd() {
  mkdir -p "$STATE"/{lib,run,log,brick} "$MOUNT_A" "$MOUNT_B"
  # The bind mount targets must exist; the packages create them, this only covers a
  # hand-installed GlusterFS. Nothing is written to them.
  mkdir -p /var/lib/glusterd /run/gluster /var/log/glusterfs
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr add "$ADDR/32" dev lo
  # ip netns exec and unshare exec in place, so $! is glusterd itself (-N: no daemon).
  ip netns exec "$NETNS" unshare --mount --propagation private -- sh -c '
    mount --bind "$1/lib" /var/lib/glusterd &&
    mount --bind "$1/run" /run/gluster &&
    mount --bind "$1/log" /var/log/glusterfs &&
    exec glusterd -N --log-file="$1/log/glusterd.log" --pid-file="$1/run/glusterd.pid"
  ' sh "$STATE" </dev/null >"$STATE/glusterd.out" 2>&1 &
  echo $! >"$STATE/glusterd.pid"
  wait_for 30 "glusterd" in_server gluster --mode=script pool list
}

start_volume() {
  in_server gluster --mode=script volume create "$VOLUME" "$ADDR:$STATE/brick" force >/dev/null
  in_server gluster --mode=script volume start "$VOLUME" >/dev/null
  wait_for 30 "the brick" sh -c "nsenter -t $(cat "$STATE/glusterd.pid") -n -m -- \
    gluster --mode=script volume status $VOLUME detail | grep -q 'Online.*: Y'"
}

mount_client() { # mount_client NAME DIR
  # --pid-file: the client daemonizes; its pid is how `stop` finds it if unmounting fails.
  ip netns exec "$NETNS" true # the namespace exists
  nsenter --net="/run/netns/$NETNS" -- glusterfs \
    --volfile-server="$ADDR" --volfile-id="$VOLUME" \
    --log-file="$STATE/log/client-$1.log" --pid-file="$STATE/client-$1.pid" "$2"
  wait_for 30 "the mount at $2" mounted "$2"
}

print_env() {
  echo "KVR_GLUSTER_A=$MOUNT_A"
  echo "KVR_GLUSTER_B=$MOUNT_B"
}

status() {
  mounted "$MOUNT_A" && mounted "$MOUNT_B" && [ -e "$STATE/glusterd.pid" ] &&
    kill -0 "$(cat "$STATE/glusterd.pid")" 2>/dev/null
}

kill_pidfile() { # kill_pidfile FILE: the process it names, then waits for it
  local f=$1 pid
  [ -e "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop() {
  for m in "$MOUNT_A" "$MOUNT_B"; do
    if mounted "$m"; then umount "$m" 2>/dev/null || umount -l "$m" || true; fi
  done
  kill_pidfile "$STATE/client-a.pid"
  kill_pidfile "$STATE/client-b.pid"
  if [ -e "$STATE/glusterd.pid" ] && kill -0 "$(cat "$STATE/glusterd.pid")" 2>/dev/null; then
    in_server gluster --mode=script volume stop "$VOLUME" force >/dev/null 2>&1 || true
    # The brick process (glusterfsd) lives in glusterd's namespaces; its pid file is in our
    # private run directory.
    for f in "$STATE"/run/vols/"$VOLUME"/*.pid; do kill_pidfile "$f"; done
    kill_pidfile "$STATE/glusterd.pid"
  fi
  rm -f "$STATE/glusterd.pid"
  # Anything still holding the namespace (a brick whose pid file was lost) goes with it.
  if ip netns pids "$NETNS" >/dev/null 2>&1; then
    for p in $(ip netns pids "$NETNS"); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$NETNS" 2>/dev/null || true
  fi
  if [ -d "$STATE" ]; then
    # The brick holds trusted.* xattrs and a .glusterfs tree; plain rm handles both.
    rm -rf "$STATE"
  fi
}

start() {
  check_machine
  install_gluster
  if status; then
    print_env
    return
  fi
  stop
  trap 'log "start failed; tearing down (logs were in $STATE/log)"; tail -n 20 "$STATE"/log/*.log >&2 2>/dev/null || true; stop' ERR
  start_glusterd
  start_volume
  mount_client a "$MOUNT_A"
  mount_client b "$MOUNT_B"
  trap - ERR
  log "up: volume $VOLUME at $ADDR (namespace $NETNS), mounts $MOUNT_A and $MOUNT_B"
  print_env
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) if status; then print_env; else log "not running"; exit 1; fi ;;
env) print_env ;;
*)
  echo "usage: $0 start|stop|status|env" >&2
  exit 2
  ;;
esac
