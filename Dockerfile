# ses-relay container image.
#
#   docker build -t ses-relay .
#   docker run --rm -p 127.0.0.1:2525:2525 -v ses-relay-state:/var/lib/ses-relay \
#     -e AWS_REGION=eu-west-1 -e SES_RELAY_SMTP__ALLOWED_NETWORKS='["172.17.0.0/16"]' ses-relay
#
# Configuration: environment variables SES_RELAY_<SECTION>__<KEY> (README, "Configuration") and/or a
# file mounted at /etc/ses-relay/config.yaml, which `serve` reads when it exists (another path:
# `docker run ... ses-relay serve --config /path`). The environment wins over the file, so the
# listen addresses set below apply even when the file names others: change them with -e.
#
# BASE is any Debian-based image with python3 >= 3.11 and the venv module: the official image has it
# in /usr/local/bin, Debian's python3 + python3-venv in /usr/bin; `python3 -m venv` works with both.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
# uvloop is included: it has wheels for glibc on amd64 and arm64 and measured ~8% more throughput.
# pip compiles the .pyc files here, so a read-only root filesystem costs nothing at start.
RUN python3 -m venv /opt/ses-relay \
    && /opt/ses-relay/bin/python -m pip install --no-cache-dir --disable-pip-version-check ".[uvloop]"

FROM ${BASE}
LABEL org.opencontainers.image.title="ses-relay" \
      org.opencontainers.image.description="Local SMTP relay for Amazon SES" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged UID/GID, so that volume ownership and Kubernetes' runAsUser/fsGroup can
# name it. The state directory belongs to it, mode 0700 (the suppression list names people).
RUN groupadd --system --gid 10001 ses-relay \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/ses-relay \
       --shell /usr/sbin/nologin ses-relay \
    && mkdir -p /var/lib/ses-relay /etc/ses-relay \
    && chown 10001:10001 /var/lib/ses-relay \
    && chmod 0700 /var/lib/ses-relay

COPY --from=builder /opt/ses-relay /opt/ses-relay

# Listen on every interface inside the container: other containers (compose) and the kubelet's probes
# (pod IP) come from outside the container's loopback. smtp.allowed_networks is deliberately NOT set
# here: it keeps the built-in default, loopback only (127.0.0.0/8, ::1/128), so the image is never an
# open relay. That is right for a Kubernetes sidecar (WordPress in the same pod connects over
# localhost); on a Docker network the client is another container's address, so the compose file sets
# SES_RELAY_SMTP__ALLOWED_NETWORKS to its own pinned subnet; a mounted config file may set it too
# (an ENV here would override the file). The HTTP side (/metrics, /healthz, /readyz) is not published
# unless you publish it.
ENV PATH=/opt/ses-relay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    SES_RELAY_STATE_DIR=/var/lib/ses-relay \
    SES_RELAY_SMTP__LISTEN='["0.0.0.0:2525"]' \
    SES_RELAY_HTTP__LISTEN=0.0.0.0:9025

USER 10001:10001
WORKDIR /var/lib/ses-relay
VOLUME /var/lib/ses-relay
EXPOSE 2525 9025

# No curl in the image: the venv's python asks /healthz on the port SES_RELAY_HTTP__LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('SES_RELAY_HTTP__LISTEN', ':9025').rsplit(':', 1)[1]; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]

# Exec form: the relay is PID 1 and gets SIGTERM itself; it stops taking mail, lets transactions finish
# for up to smtp.shutdown_grace (30 s) and exits 0, so give it `docker stop -t 45` /
# stop_grace_period / terminationGracePeriodSeconds of 45 s (Docker's default, 10 s, cuts it short).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ses-relay"]
CMD ["serve"]
