# Two images. Target `broker`: eclipse-mosquitto with the camstack guard plugin
# (broker/plugin) built for it. The last stage (default target): one image for the
# ingestor, the encoder and the broker tools (python -m <module>).
# Not built or run in CI here (no Docker engine): docs/operations.md.

# --- the guard plugin, built against Alpine's mosquitto-dev (musl, like the image) ---
FROM alpine:3.18 AS guard-build
RUN apk add --no-cache build-base mosquitto-dev
COPY broker/plugin /src
RUN make -C /src CC=gcc CFLAGS="-std=c11 -O2 -Wall -Wextra -D_POSIX_C_SOURCE=200809L"

# --- the broker image: compose.yaml's `broker` service -----------------------------
FROM eclipse-mosquitto:2.0.18 AS broker
COPY --from=guard-build /src/build/camstack_guard.so /usr/lib/camstack/camstack_guard.so

# --- the services' image --------------------------------------------------------

# No secrets inside: compose.yaml mounts the CA certificate, the rendered config and the
# passwords (Docker secrets) at run time. PyAV's wheel carries its own FFmpeg.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY config ./config
COPY broker ./broker
COPY ingestor ./ingestor
COPY encoder ./encoder
COPY contract ./contract
COPY mqttclient ./mqttclient
COPY objstore ./objstore
COPY catalog ./catalog
COPY jobqueue ./jobqueue
COPY monitor ./monitor
COPY web ./web
# The NATS engine's guard (compose.yaml, profile "cluster").
COPY natsguard ./natsguard
RUN pip install -c constraints.txt .

# compose.yaml overrides the user with CAM_UID:CAM_GID, the owner of ./data.
USER 1000:1000
ENTRYPOINT ["python", "-m"]
CMD ["ingestor"]
