#!/usr/bin/env bash
# A Docker engine for `make image-test`: installs Debian's docker.io (engine 20.10, containerd, runc; its
# /usr/bin/docker client builds with BuildKit without the buildx plugin) and starts dockerd in the
# background without systemd. Idempotent: a running engine is left alone (~0.1 s). Needs root.
#
#   scripts/docker-engine.sh            install if missing, start if not running, wait until the API answers
#   scripts/docker-engine.sh stop       stop the daemon this script started (by its pid file)
#   scripts/docker-engine.sh status
#
# Env:
#   DOCKER_STORAGE_DRIVER  auto (default): overlay2 when the kernel and /var/lib/docker's filesystem
#                          support it, else vfs. vfs always works but copies the whole image for every
#                          container and every build step (measured 3-10x slower and 4x the disk).
#   DOCKER_WITH_COMPOSE=1  also install Debian's docker-compose (1.29.2, the Python v1)  [default 1]
#   DOCKER_LOG             daemon log (default /var/log/dockerd.log)
#   DOCKER_WAIT_S          how long to wait for the API (default 60)
#
# Network: --iptables=false --bridge=none: no docker0 bridge, no NAT rules; run and build with
# --network host (compose: network_mode: host, build.network: host).
set -euo pipefail

DOCKER_STORAGE_DRIVER=${DOCKER_STORAGE_DRIVER:-auto}
DOCKER_WITH_COMPOSE=${DOCKER_WITH_COMPOSE:-1}
DOCKER_LOG=${DOCKER_LOG:-/var/log/dockerd.log}
DOCKER_WAIT_S=${DOCKER_WAIT_S:-60}
PIDFILE=/var/run/docker.pid
log() { echo "docker-engine: $*" >&2; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(now_ms)
# `docker` may be a newer client elsewhere on PATH (28.x in /usr/local/bin here): it talks to the 20.10
# engine by negotiating API 1.41. Debian's own client is /usr/bin/docker.
DOCKER=${DOCKER:-$(command -v docker || echo /usr/bin/docker)}

engine_up() { [ -S /var/run/docker.sock ] && "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case "${1:-up}" in
  stop)
    if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      kill "$(cat "$PIDFILE")"
      for _ in $(seq 1 100); do kill -0 "$(cat "$PIDFILE" 2>/dev/null)" 2>/dev/null || break; sleep 0.2; done
      log "stopped"
    else
      log "not running"
    fi
    exit 0 ;;
  status)
    if engine_up; then "$DOCKER" info --format 'running: {{.ServerVersion}}, storage {{.Driver}}, root {{.DockerRootDir}}'; exit 0; fi
    echo "not running"; exit 1 ;;
  up) ;;
  *) echo "usage: $0 [up|stop|status]" >&2; exit 2 ;;
esac

if engine_up; then
  log "already running ($("$DOCKER" info --format '{{.ServerVersion}} {{.Driver}}'))"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "no Docker engine answers and starting one needs root (apt-get install docker.io, dockerd)"; exit 1
fi

# ---- install ----------------------------------------------------------------------------------------
pkgs=()
command -v dockerd >/dev/null || pkgs+=(docker.io)
[ "$DOCKER_WITH_COMPOSE" = 1 ] && ! command -v docker-compose >/dev/null && pkgs+=(docker-compose)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the lists are missing or older than a day
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mtime -1 2>/dev/null | head -1)" ]; then
    apt-get update -qq
  fi
  # Keep the package's init script from starting a daemon with default flags (no systemd here anyway):
  # a policy-rc.d that denies service starts, only for this install, only if none exists.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  log "installed in $(( ($(now_ms) - t0) / 1000 ))s"
fi

# ---- storage driver ---------------------------------------------------------------------------------
driver=$DOCKER_STORAGE_DRIVER
if [ "$driver" = auto ]; then
  driver=vfs
  root=/var/lib/docker; mkdir -p "$root"
  fstype=$(stat -f -c %T "$root")
  # overlay2 needs overlayfs in the kernel and an upper dir that is not itself overlayfs (nor tmpfs on
  # old kernels); try a real mount to be sure.
  if [ "$fstype" != overlayfs ] && grep -qw overlay /proc/filesystems 2>/dev/null; then
    probe=$(mktemp -d "$root/.overlay-probe.XXXXXX")
    mkdir -p "$probe"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
      umount "$probe/m"; driver=overlay2
    fi
    rm -rf "$probe"
  fi
fi

# ---- start ------------------------------------------------------------------------------------------
# Switching the storage driver on one data root: images of the other driver become invisible (they stay
# on disk), and BuildKit's cache (/var/lib/docker/buildkit, shared by both) then points at snapshots that
# do not exist ("failed to read dockerfile: stat /var/lib/docker/vfs/dir/...: no such file or
# directory"). So drop BuildKit's cache when the driver changes.
mkdir -p /var/lib/docker
last=$(cat /var/lib/docker/.sparsecodes-driver 2>/dev/null || true)
if [ -n "$last" ] && [ "$last" != "$driver" ]; then
  log "storage driver changed ($last -> $driver): dropping BuildKit's cache; $last images stay in /var/lib/docker/$last"
  rm -rf /var/lib/docker/buildkit
fi
echo "$driver" > /var/lib/docker/.sparsecodes-driver
# A pid file left by a daemon that died is harmless (dockerd overwrites it when that pid is gone).
mkdir -p "$(dirname "$DOCKER_LOG")"
log "starting dockerd --storage-driver $driver --iptables=false --bridge=none (log $DOCKER_LOG)"
# setsid + nohup: the daemon outlives this shell and the CI step; stdin from /dev/null.
setsid nohup dockerd --storage-driver "$driver" --iptables=false --bridge=none \
  --pidfile "$PIDFILE" >>"$DOCKER_LOG" 2>&1 </dev/null &
start=$(now_ms)
until engine_up; do
  if [ $(( $(now_ms) - start )) -gt $(( DOCKER_WAIT_S * 1000 )) ]; then
    log "dockerd did not answer within ${DOCKER_WAIT_S}s; last log lines:"; tail -20 "$DOCKER_LOG" >&2; exit 1
  fi
  sleep 0.2
done
log "up: $("$DOCKER" info --format '{{.ServerVersion}}, storage {{.Driver}}') after $(( $(now_ms) - start )) ms (total $(( ($(now_ms) - t0) / 1000 ))s)"
