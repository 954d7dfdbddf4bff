#!/usr/bin/env bash
# System packages the test suite needs and pip cannot provide, installed from Debian's packages only
# when missing (CI machines and developers' machines start without some of them):
#   redis-server    the service's tests start a throwaway Redis on a free loopback port
#   docker-compose  tests/deploy checks docker/docker-compose.yml with `docker-compose config`
#   chromium        tests/serve/test_playground.py drives the web page in headless Chromium (Playwright
#                   launches this browser; it never downloads one)
#
# Idempotent: a machine that has everything runs no apt command at all. `apt-get update` runs at most once.
# Usage: scripts/install-system-deps.sh           install what is missing (needs root or sudo)
#        scripts/install-system-deps.sh --check   list what is missing; exit 1 if anything is
set -euo pipefail

# command on PATH → Debian package that provides it
declare -A PACKAGE_FOR=(
  [redis-server]=redis-server
  [docker-compose]=docker-compose
  [chromium]=chromium
  [ip]=iproute2          # tests/test_readme.py: a private network namespace for port 8000
  [unshare]=util-linux
)

missing=()
for cmd in "${!PACKAGE_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGE_FOR[$cmd]}")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system deps: all present (${!PACKAGE_FOR[*]})"
  exit 0
fi

if [[ "${1:-}" == "--check" ]]; then
  echo "system deps: missing ${missing[*]}" >&2
  exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "system deps: missing ${missing[*]}; run this script as root (apt-get needs it)" >&2
  exit 1
fi

echo "system deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# --no-install-recommends keeps docker-compose from pulling a Docker engine that could not run here anyway.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
