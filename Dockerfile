# syntax=docker/dockerfile:1
# One image for the API and the worker; they differ only in the torch build:
#   API:    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu    (the default)
#   worker: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (CUDA)
# docker-compose.yml builds both. Nothing secret is baked in: settings come from GANFORGE_*
# environment variables at run time.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GANFORGE_ARTIFACT_DIR=/var/lib/ganforge/artifacts \
    GANFORGE_CACHE_DIR=/home/ganforge/.cache/ganforge

# A fixed uid, so the API and the worker own the shared artifact volume alike. The artifact
# folder exists in the image owned by that user: a new named volume mounted there inherits it.
RUN groupadd --system --gid 1000 ganforge \
 && useradd --system --uid 1000 --gid ganforge --create-home --home-dir /home/ganforge ganforge \
 && mkdir -p /var/lib/ganforge/artifacts /home/ganforge/.cache/ganforge \
 && chown -R ganforge:ganforge /var/lib/ganforge /home/ganforge

# Layers from the least to the most often changed: torch, then the other dependencies (read
# from pyproject.toml alone), then the source.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
 && pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
 && rm /tmp/requirements.txt /tmp/constraints.txt

# An editable install: the package runs from /app, where app.db finds pyproject.toml
# ([tool.alembic]) and migrations/ for `ganforge db upgrade`.
COPY README.md ./
COPY migrations ./migrations
COPY trainer ./trainer
COPY worker ./worker
COPY app ./app
RUN pip install --no-deps -e .

USER ganforge
EXPOSE 8000
CMD ["ganforge", "api", "--host", "0.0.0.0", "--port", "8000"]
