# syntax=docker/dockerfile:1.7
# The fraud-scoring service image, built from a bento (the output of `bentoml build`, made by the
# build_service flow). The bento is a named build context, so no Docker engine is needed to build
# the bento itself and `bentoml containerize` is not required:
#   docker build -f deploy/service.Dockerfile \
#     --build-context bento="$(BENTOML_HOME=.rtml/bentoml bentoml get fraud_scorer:latest -o path)" \
#     -t realtime-ml/fraud-scorer deploy
# The bento carries the code, the model and requirements.txt with versions locked at build time.
FROM python:3.11-slim-bookworm

COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv

# The worker image's uid, as in Kubernetes (runAsUser 10001). The service keeps no data: every decision goes
# to the Redis stream, and the stream processes write the profiles, logs and raw files. With a read-only root
# filesystem it writes only to /tmp (BentoML's sockets) and BENTOML_HOME (its Prometheus multiprocess files and
# empty store folders), both mounted empty by the deployment; the bento is read from BENTO_PATH.
ARG BENTO_USER_UID=10001
ENV BENTO_PATH=/home/bentoml/bento \
    BENTOML_HOME=/var/lib/bentoml/ \
    BENTOML_CONTAINERIZED=true \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    WHYLOGS_NO_ANALYTICS=1 \
    RTML_HOME=/var/lib/rtml \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONUNBUFFERED=1

RUN groupadd --gid "$BENTO_USER_UID" bentoml \
    && useradd --uid "$BENTO_USER_UID" --gid "$BENTO_USER_UID" --create-home bentoml \
    && mkdir -p "$BENTO_PATH" "$BENTOML_HOME" /var/lib/rtml \
    && chown bentoml:bentoml "$BENTO_PATH" "$BENTOML_HOME" /var/lib/rtml \
    && uv venv /app/.venv

# Dependencies first: they change less often than the model.
COPY --from=bento env/python/requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/uv uv pip install -r /tmp/requirements.txt

COPY --from=bento --chown=bentoml:bentoml . /home/bentoml/bento/
WORKDIR /home/bentoml/bento
USER $BENTO_USER_UID:$BENTO_USER_UID

EXPOSE 3000
# /readyz answers once the model is loaded and the online store is reachable; /livez while the
# process is alive (the Kubernetes probes in deploy/k8s use the same endpoints).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"]
CMD ["bentoml", "serve", "/home/bentoml/bento", "--host", "0.0.0.0", "--port", "3000"]
