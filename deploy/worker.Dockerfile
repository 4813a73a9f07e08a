# syntax=docker/dockerfile:1.7
# The platform image: the locked environment and the project's code. It runs the Prefect worker (and the
# flow runs it starts), the Prefect server, the MLflow server and the stream processes
# (`python -m services.stream.<name>`) in docker-compose.yml and Kubernetes.
# Build from the repository root: docker build -f deploy/worker.Dockerfile -t realtime-ml/worker .
FROM python:3.11-slim-bookworm

COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/realtime-ml/.venv/bin:$PATH \
    PYTHONPATH=/opt/realtime-ml \
    RTML_HOME=/var/lib/rtml \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    BENTOML_DO_NOT_TRACK=true \
    WHYLOGS_NO_ANALYTICS=1

WORKDIR /opt/realtime-ml

# Dependencies first, from the lock file alone, so code changes do not reinstall them.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-dev --no-install-project

# pyproject.toml's [tool.prefect] settings apply to every Prefect process started in this directory.
COPY pyproject.toml uv.lock prefect.yaml ./
COPY model_store/ model_store/
COPY feature_repo/ feature_repo/
COPY flows/ flows/
COPY services/ services/

# Containers run with a read-only root filesystem: compile the project's modules now (the dependencies were
# compiled by uv), since nothing can write __pycache__ at run time.
RUN python -m compileall -q model_store feature_repo flows services

# A high uid (10001), so that it is nobody on the host either. At run time the processes write only to what the
# deployment mounts: /var/lib/rtml (RTML_HOME), /var/lib/mlflow (the MLflow server's artifacts), /tmp and the
# home directory (Prefect's ~/.prefect, matplotlib's and uv's caches, MLflow's ~/.config/mlflow), see
# docs/deployment.md, "Security".
RUN groupadd --gid 10001 rtml \
    && useradd --uid 10001 --gid 10001 --create-home rtml \
    && mkdir -p /var/lib/rtml /var/lib/mlflow \
    && chown -R rtml:rtml /var/lib/rtml /var/lib/mlflow
USER 10001:10001

# Flow runs start in /opt/realtime-ml: deploy from here (prefect.yaml records this directory).
CMD ["prefect", "worker", "start", "--pool", "local-process", "--type", "process"]
