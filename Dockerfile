# syntax=docker/dockerfile:1
# One image for every Inkwell process; the command picks which one runs:
#   inkwell service --variant stable|canary   (ports 8001 / 8002)
#   inkwell router                            (port 8000, rollout controller inside)
#   inkwell trainer                           (port 8003, admin + metrics)
#   inkwell train                             (one-shot: train and register the base model)
#   inkwell mlflow server ...                 (port 5000, the tracking server + registry, with auth)
#   inkwell mlflow init-users                 (one-shot: MLflow's users and grants)
# Build: docker build -t inkwell:dev .   (CPU-only PyTorch: no CUDA libraries in the image)
# Checked by tests/deploy/test_dockerfile.py (stages, user, health check, copied paths, pins).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment with the dependencies, then the project ---------------
FROM ${PYTHON_IMAGE} AS builder

# Must match the pins in pyproject.toml (a test checks); the CPU index keeps CUDA out.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv && pip install --upgrade pip setuptools wheel

RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /src

# Dependencies first (read from pyproject.toml) so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY inkwell ./inkwell
COPY service ./service
COPY trainer ./trainer
COPY router ./router
COPY bench ./bench
COPY inkwell_app ./inkwell_app
RUN pip install --no-deps . && python -c "import inkwell_app.cli, service.main, trainer.app, router.app"

# ---- runtime: the virtual environment and nothing else, run as a non-root user -----------
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

LABEL org.opencontainers.image.title="inkwell" \
      org.opencontainers.image.description="Continual-learning digit and cheque-amount recognition with stable/canary rollouts" \
      org.opencontainers.image.source="https://github.com/inkwell/inkwell"

RUN groupadd --system --gid "${GID}" inkwell \
    && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /var/lib/inkwell \
        --shell /usr/sbin/nologin inkwell \
    && mkdir -p /var/lib/inkwell /var/lib/mlflow/artifacts /data/mnist \
    && chown -R "${UID}:${GID}" /var/lib/inkwell /var/lib/mlflow /data

COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/inkwell-healthcheck

# Named volumes mounted on /var/lib/inkwell and /var/lib/mlflow inherit the ownership above.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/inkwell \
    INKWELL_HOME=/var/lib/inkwell \
    MPLCONFIGDIR=/tmp/matplotlib \
    INKWELL_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz

WORKDIR /var/lib/inkwell
USER 10001:10001

EXPOSE 8000 8001 8002 8003 5000

# Each component overrides the URL (INKWELL_HEALTHCHECK_URL); Kubernetes uses its own probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "/usr/local/bin/inkwell-healthcheck"]

CMD ["inkwell", "--help"]
