# syntax=docker/dockerfile:1
# One image for every rtrec process: `docker run IMAGE param-server|worker|serve|simulate ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, from PyTorch's CPU index. `pip install .` below then finds torch==2.13.0
# already satisfied (2.13.0+cpu) instead of pulling the CUDA build from PyPI (gigabytes).
# Keep the version equal to the pin in pyproject.toml (tests/deploy checks it).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The dependencies in their own layer, so that a source change does not reinstall them.
WORKDIR /tmp/rtrec-src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself (.dockerignore keeps .venv, .git, snapshots, caches and tests out).
COPY . ./
RUN pip install . && cd / && rm -rf /tmp/rtrec-src

# Non-root. /snapshots exists in the image owned by that user, so a fresh named volume mounted
# there inherits the ownership and the parameter server can write its snapshots.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin rtrec \
    && mkdir -p /snapshots \
    && chown rtrec:rtrec /snapshots
USER rtrec
WORKDIR /home/rtrec

# 7070 parameter server, 8080 serving HTTP API, 9100 Prometheus metrics (RTREC_METRICS_PORT).
EXPOSE 7070 8080 9100

ENTRYPOINT ["rtrec"]
CMD ["--help"]
