# Redis from Debian's redis-server package, for `make image-test` where the compose file's redis image
# cannot be pulled (docker/docker-compose.ci.yml builds the stack from these). Not for production: use the
# official image there. apt reaches the Debian mirror when the build runs with --network host.
#
#   docker build --network host -f docker/ci/redis.Dockerfile -t sparsecodes-ci/redis docker/ci
ARG BASE_IMAGE=sparsecodes/python:3.11-bookworm
FROM ${BASE_IMAGE}
# Distribution packages are not pinned: the base pins the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
# The package creates this system user; its uid is whatever adduser picked, so it goes by name.
# hadolint ignore=DL3066
USER redis
CMD ["redis-server", "--save", "", "--appendonly", "no"]
