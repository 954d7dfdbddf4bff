#!/usr/bin/env bash
# A wheelhouse for the serving image: every wheel the `serve` extra needs (pinned by constraints.txt), plus
# the build backend, in one folder. docker/Dockerfile installs from it with `pip install --no-index` when it
# holds wheels, so the build needs no package index: for air-gapped machines, and for build hosts where
# pip inside a build cannot reach the index (on CI the index's TLS certificate is signed by a CA that only
# the host's bundle has).
#
#   scripts/wheelhouse.sh                                  # -> docker/wheels, MODE=container
#   scripts/wheelhouse.sh DEST                             # another folder (then --build-arg WHEELS_DIR=DEST)
#   MODE=host scripts/wheelhouse.sh                        # no Docker: pip download on this machine
#   BASE_IMAGE=python:3.11-slim-bookworm scripts/wheelhouse.sh   # for the official base image
#   EXTRA=train,lm scripts/wheelhouse.sh docker/wheels-train      # other images: other extras and folders
#
# MODE=container (default): pip runs INSIDE the base image the serving image is built on ($BASE_IMAGE,
#   default the debootstrap base from scripts/make-base-image.sh) with host networking and the host's CA
#   bundle mounted read-only, so environment markers are evaluated by the exact target interpreter.
#   That matters: redis needs `async-timeout; python_full_version < "3.11.3"` on Debian's Python 3.11.2,
#   which a wheelhouse made by a newer host Python silently lacks (the offline install then fails).
# MODE=host: the host's pip with --platform/--python-version/--abi for CPython 3.11 on manylinux x86_64.
#   Markers are evaluated against the host's interpreter; EXTRA_HOST_REQS adds what it would miss.
#   PYTHON_VERSION (3.11) is the base image's Python.
#
# The requirement list (pyproject's dependencies + the extra) is written to DEST/requirements.txt. Cached:
# a stamp holds a hash of the inputs, so a rerun with the same inputs returns at once. FORCE=1 re-downloads.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-docker/wheels}
EXTRA=${EXTRA:-serve}
MODE=${MODE:-container}
BASE_IMAGE=${BASE_IMAGE:-sparsecodes/python:3.11-bookworm}
# The project's build backend (pyproject's [build-system]): `pip install --no-index --find-links /wheels .`
# builds the package in an isolated environment that pip fills from the same wheelhouse.
BUILD_REQS=${BUILD_REQS:-"setuptools>=68 wheel"}
CONSTRAINTS=constraints.txt
HOST_CA=${HOST_CA:-$(python3 -m pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)}
log() { echo "wheelhouse: $*" >&2; }

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
python3 -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in sys.argv[1].split(',') for r in p['optional-dependencies'][e]]))" \
  "$EXTRA" > "$DEST/requirements.txt"

key=$(cat "$DEST/requirements.txt" $CONSTRAINTS <(echo "$MODE|$BASE_IMAGE|$BUILD_REQS") | sha256sum | cut -c1-16)
stamp="$DEST/.wheelhouse-$key"
if [ -z "${FORCE:-}" ] && [ -e "$stamp" ]; then
  log "$DEST is up to date ($(ls "$DEST"/*.whl | wc -l) wheels)"
  exit 0
fi
t0=$(date +%s)
rm -f "$DEST"/*.whl

if [ "$MODE" = container ]; then
  args=(--rm --network host -v "$DEST:/wheels" -v "$PWD/$CONSTRAINTS:/tmp/constraints.txt:ro"
        -v "$HOST_CA:/etc/ssl/host-ca.crt:ro" -e PIP_CERT=/etc/ssl/host-ca.crt
        -e PIP_DISABLE_PIP_VERSION_CHECK=1 -e PIP_DEFAULT_TIMEOUT=180 -e "BUILD_REQS=$BUILD_REQS")
  index=$(python3 -m pip config get global.index-url 2>/dev/null || true)
  [ -n "$index" ] && args+=(-e "PIP_INDEX_URL=$index")
  # shellcheck disable=SC2016  # expanded inside the container
  docker run "${args[@]}" "$BASE_IMAGE" sh -euc '
    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip wheel -q --prefer-binary -w /wheels -c /tmp/constraints.txt -r /wheels/requirements.txt $BUILD_REQS
    chown -R '"$(id -u):$(id -g)"' /wheels'
else
  EXTRA_HOST_REQS=${EXTRA_HOST_REQS-async-timeout>=4.0.3}
  # pip 23 does not expand `--platform manylinux_2_36` to the older manylinux tags: list every tag.
  PYTHON_VERSION=${PYTHON_VERSION:-3.11}   # the base image's Python (the CUDA base's Ubuntu 24.04: 3.12)
  args=(--only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp --abi "cp${PYTHON_VERSION/./}"
        -d "$DEST" -c "$CONSTRAINTS")
  for minor in $(seq 36 -1 5); do args+=(--platform "manylinux_2_${minor}_x86_64"); done
  args+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  # shellcheck disable=SC2086  # word lists on purpose
  python3 -m pip download -q "${args[@]}" -r "$DEST/requirements.txt" $BUILD_REQS $EXTRA_HOST_REQS
fi

rm -f "$DEST"/.wheelhouse-*
touch "$stamp"
log "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1), $(( $(date +%s) - t0 ))s -> $DEST ($MODE)"
