#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made with debootstrap (no image registry needed) and
# imported into the local Docker engine: what `make image-test` builds the serving image and the CI stack
# on when no official image can be pulled. 111 MB (python:3.11-slim-bookworm is ~130 MB), Python 3.11.2
# with venv/ensurepip, apt configured like the official slim images. Cached at two levels:
#   1. the image itself in the engine (label sparsecodes.base.key)     -> ~0.1 s
#   2. a rootfs tarball under $CACHE_DIR (survives `docker system prune`, a daemon data-root wipe or a
#      storage-driver switch)                                           -> docker import, 4-5 s
#   3. otherwise debootstrap                                            -> 2-5 min (network and CPU bound)
# The cache key is: suite + package list + mirror + this recipe's version + a period (default: the month,
# so the base picks up Debian point releases once a month). Override with BASE_PERIOD=.
#
#   scripts/make-base-image.sh                    # -> sparsecodes/python:3.11-bookworm
#   ALIASES="python:3.11-slim-bookworm" scripts/make-base-image.sh   # also tag it under the official name
#   FORCE=1 scripts/make-base-image.sh            # ignore every cache
#
# Env: SUITE (bookworm) MIRROR (http://deb.debian.org/debian) INCLUDE (comma list) TAG ALIASES CACHE_DIR
set -euo pipefail

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# python3 = 3.11.2 on bookworm; python3-venv brings ensurepip (pip+setuptools wheels) so `python -m venv`
# works; python-is-python3 gives `python`, as the official python images have; ca-certificates for TLS.
INCLUDE=${INCLUDE:-python3,python3-venv,python-is-python3,ca-certificates}
TAG=${TAG:-sparsecodes/python:3.11-$SUITE}
# Optional local aliases: a Dockerfile whose default base is the official image then builds with no pull
# (builders use a local image of that name and only pull with --pull). Off by default: an image tagged
# python:3.11-slim that is not the official one misleads whoever reads `docker images` later.
ALIASES=${ALIASES:-}
CACHE_DIR=${CACHE_DIR:-${SPARSECODES_CACHE_DIR:-/var/cache/sparsecodes}}
BASE_PERIOD=${BASE_PERIOD:-$(date -u +%Y-%m)}
RECIPE_VERSION=3   # bump when the rootfs clean-up below changes

key=$(printf '%s|%s|%s|%s' "$SUITE" "$INCLUDE" "$MIRROR" "$RECIPE_VERSION" | sha256sum | cut -c1-12)-$BASE_PERIOD
name=$SUITE-$(echo "$TAG" | tr '/:' '__')
tarball=$CACHE_DIR/base/$name-$key.tar.gz
log() { echo "make-base: $*" >&2; }
t0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf "%d.%01ds" $((ms/1000)) $((ms%1000/100)); }

mkdir -p "$CACHE_DIR/base" "$CACHE_DIR/debs"
exec 9>"$CACHE_DIR/.make-base.lock"
flock 9   # two CI jobs on one machine must not debootstrap into the same place

tag_aliases() { for a in $ALIASES; do docker tag "$TAG" "$a"; done; }

# 1. The image is already in the engine.
if [ -z "${FORCE:-}" ] && [ "$(docker image inspect -f '{{index .Config.Labels "sparsecodes.base.key"}}' "$TAG" 2>/dev/null)" = "$key" ]; then
  tag_aliases
  log "$TAG is current ($key), $(elapsed)"
  exit 0
fi

# 3. No tarball: debootstrap one.
if [ -n "${FORCE:-}" ] || [ ! -s "$tarball" ]; then
  if ! command -v debootstrap >/dev/null; then
    log "apt-get install debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/make-base.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/rootfs
  log "debootstrap --variant=minbase --include=$INCLUDE $SUITE ..."
  # --cache-dir keeps the .debs, so next month's rebuild downloads only what changed.
  debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$CACHE_DIR/debs" \
      "$SUITE" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
  log "debootstrap done, $(elapsed)"

  # The rootfs, as the official slim images do it: the updates/security suites for later apt installs,
  # no recommends, no docs/man/locales (now and for every later dpkg install), nothing host-specific.
  cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false"; APT::Install-Suggests "false";' > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  # docker-up installs a policy-rc.d on the host; inside the image, daemons must not start during builds.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
         "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/var/log/* \
         "$root"/etc/hostname "$root"/etc/resolv.conf "$root"/tmp/* "$root"/root/.bash_history
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  find "$root/usr/lib/python3"* -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
  : > "$root/etc/machine-id"
  rm -f "$CACHE_DIR"/base/"$name"-*.tar.gz   # older periods/recipes
  tar -C "$root" --numeric-owner --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -c . \
    | gzip -4 > "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"; trap - EXIT
  log "tarball $tarball ($(du -h "$tarball" | cut -f1)), $(elapsed)"
fi

# 2. Import the tarball.
gzip -dc "$tarball" | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL sparsecodes.base.key=$key sparsecodes.base.suite=$SUITE" \
  --change 'CMD ["python3"]' \
  -m "debootstrap --variant=minbase --include=$INCLUDE $SUITE" - "$TAG" >/dev/null
tag_aliases
log "$TAG imported ($key, $(docker image inspect -f '{{.Size}}' "$TAG") bytes), $(elapsed)"
