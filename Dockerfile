# Multi-arch (linux/amd64, linux/arm64 for the Raspberry Pi 5): the slim Debian Python base and every wheel the
# overlay needs (TA-Lib ships its C library in its aarch64 and x86-64 wheels) exist for both.
#   docker buildx build --platform linux/amd64,linux/arm64 -t ib-mcp-overlay .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY poller ./poller
COPY workflows ./workflows
COPY mcp_overlay_server ./mcp_overlay_server
RUN python -m venv /opt/overlay && /opt/overlay/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/overlay/bin:$PATH PYTHONUNBUFFERED=1 OVERLAY_DATA_DIR=/data OVERLAY_HOST=0.0.0.0 OVERLAY_PORT=8765
COPY --from=build /opt/overlay /opt/overlay
RUN useradd --create-home --uid 10001 overlay && mkdir -p /data && chown overlay /data
USER overlay
WORKDIR /home/overlay
VOLUME ["/data"]
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=8)"]
CMD ["ib-overlay", "serve", "--http", "--host", "0.0.0.0", "--port", "8765"]
