#!/usr/bin/env bash
# `make image-test`: build the images for real and run them. Steps, each timed:
#   1. a Docker engine (scripts/docker-engine.sh: Debian's docker.io, started without systemd if absent)
#   2. the bookworm base image (scripts/make-base-image.sh: debootstrap, cached per month)
#   3. the serving image's wheelhouse (scripts/wheelhouse.sh: pip inside the base, cached by its inputs)
#   4. the CPU serving image (docker/Dockerfile on that base, installing from the wheelhouse with --no-index)
#      and the CI stack's Redis and Prometheus images (docker/ci/, Debian's packages)
#   5. the checks (tests/deploy, marked image_test): the image's user, read-only root, health check, size,
#      no torch, encode/decode through it; the compose stack with Redis hits and Prometheus series;
#      promtool on the shipped Prometheus files; the Grafana dashboard against Grafana's schema
#      (tests/deploy/test_grafana_dashboard.py; the npm packages it needs are installed here).
# A failing step prints the end of its log; every log is kept in test-artifacts/image-test/.
# Builds use Debian's client /usr/bin/docker with BuildKit: it reads docker/Dockerfile.dockerignore (the
# context stays a few MB; without it the legacy builder would send the 2 GB .venv) and needs no buildx.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=sparsecodes/python:3.11-bookworm
export SPARSECODES_IMAGE=sparsecodes:image-test
export SPARSECODES_CI_REDIS_IMAGE=sparsecodes-ci/redis:image-test
export SPARSECODES_CI_PROMETHEUS_IMAGE=sparsecodes-ci/prometheus:image-test
LOGS=test-artifacts/image-test
mkdir -p "$LOGS"
export DOCKER_BUILDKIT=1
BUILD=(/usr/bin/docker build --network host --progress plain)
t_start=$(date +%s)

step() {  # step NAME CMD...: run with its output in $LOGS/NAME.log; print the time and the load
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    echo "image-test: step '$name' failed: $*" >&2
    tail -40 "$LOGS/$name.log" >&2
    echo "image-test: full log: $LOGS/$name.log" >&2
    exit 1
  fi
  printf 'image-test: %-18s %6.1f s  (load %s)\n' "$name" "$(( ($(date +%s%N) - t0) / 100000000 ))e-1" \
    "$(cut -d' ' -f1 /proc/loadavg)"
}

step engine      bash scripts/docker-engine.sh
[ -x /usr/bin/docker ] || { echo "image-test: /usr/bin/docker (Debian's docker.io client) is missing" >&2; exit 1; }
step base        bash scripts/make-base-image.sh
step wheelhouse  env BASE_IMAGE="$BASE_IMAGE" bash scripts/wheelhouse.sh docker/wheels
step build-api   "${BUILD[@]}" -f docker/Dockerfile --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$SPARSECODES_IMAGE" .
step build-redis "${BUILD[@]}" -f docker/ci/redis.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
                   -t "$SPARSECODES_CI_REDIS_IMAGE" docker/ci
step build-prometheus "${BUILD[@]}" -f docker/ci/prometheus.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
                   -t "$SPARSECODES_CI_PROMETHEUS_IMAGE" docker/ci
# Grafana's schema for the dashboard check (npm: @grafana/schema and typescript, pinned by the lock file).
step grafana-schema sh -c 'command -v npm >/dev/null || { echo "npm is missing (Debian: apt-get install npm)"; exit 1; }
  mkdir -p .cache/grafana-schema && cd .cache/grafana-schema
  if cmp -s package-lock.json ../../tests/deploy/grafana/package-lock.json && [ -d node_modules ]; then exit 0; fi
  cp ../../tests/deploy/grafana/package.json ../../tests/deploy/grafana/package-lock.json . && npm ci --no-audit --no-fund'
# Rebuilds leave the previous images untagged: drop them, and keep BuildKit's cache bounded. Containers and
# volumes an interrupted run left behind (the test's names) go too: they would hold ports and disk.
step prune       sh -c '/usr/bin/docker image prune -f && /usr/bin/docker builder prune -f --keep-storage 3000000000
  /usr/bin/docker ps -aq --filter name=sparsecodes-ci- --filter name=sparsecodes-image-test | xargs -r /usr/bin/docker rm -f -v
  /usr/bin/docker volume ls -q --filter name=sparsecodes-ci- | xargs -r /usr/bin/docker volume rm'

echo "image-test: images built in $(( $(date +%s) - t_start )) s; running the checks"
SPARSECODES_IMAGE_TEST=1 .venv/bin/python -m pytest -q -m image_test -p no:cacheprovider --durations=5 tests/deploy
echo "image-test: done in $(( $(date +%s) - t_start )) s"
