# One image for the ingestor, the encoder and the broker tools (python -m <module>).
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
COPY monitor ./monitor
COPY web ./web
RUN pip install -c constraints.txt .

# compose.yaml overrides the user with CAM_UID:CAM_GID, the owner of ./data.
USER 1000:1000
ENTRYPOINT ["python", "-m"]
CMD ["ingestor"]
