# Prometheus and promtool from Debian's prometheus package (2.42 on bookworm), laid out like the official
# prom/prometheus image (entrypoint prometheus, config in /etc/prometheus, data in /prometheus, wget for
# the compose health check), for `make image-test` where that image cannot be pulled. apt reaches the
# Debian mirror when the build runs with --network host.
#
#   docker build --network host -f docker/ci/prometheus.Dockerfile -t sparsecodes-ci/prometheus docker/ci
ARG BASE_IMAGE=sparsecodes/python:3.11-bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o prometheus -g prometheus /prometheus
# The package creates this system user; its uid is whatever adduser picked, so it goes by name.
# hadolint ignore=DL3066
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
