# syntax=docker/dockerfile:1
# The service's image: a venv built in one stage, copied into a slim one that runs as a user.
# Build: make image (docs/deploy.md); BASE_IMAGE is any image with python3 (3.11+) and venv.
ARG BASE_IMAGE=docker.io/library/python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_CACHE_DIR=/var/cache/pip
RUN python3 -m venv /opt/venv
# The dependencies, the otel extra (traces stay off unless OTEL_* asks: docs/tracing.md) and
# the build backend alone first, read off pyproject.toml: a change to the code keeps this layer.
# A CA bundle the build machine needs (a proxy's) comes in as a secret, for pip only: never in a
# layer. pip's downloads stay in a cache mount, also outside the image.
COPY pyproject.toml /src/
RUN --mount=type=cache,id=pip,target=/var/cache/pip \
    --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb')); print(*p['project']['dependencies'], *p['project']['optional-dependencies']['otel'], *p['build-system']['requires'], sep='\n')" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
# The project itself, offline (its build backend is already in the venv); then pip and
# setuptools leave the venv: nothing installs at run time.
COPY README.md containers.py /src/
COPY app /src/app
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-cache-dir /src \
    && /opt/venv/bin/pip uninstall --yes setuptools pip

FROM ${BASE_IMAGE}
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data /srv/app \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# Settings come from the environment (or a .env/config.yml mounted into /srv/app); the default
# database is a SQLite file in the volume the user owns.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////data/app.db \
    PORT=8000
WORKDIR /srv/app
VOLUME /data
USER 10001:10001
EXPOSE 8000
# Exec form: `app serve` is PID 1 and gets SIGTERM itself; it finishes the requests in flight
# (TIMEOUT_GRACEFUL_SHUTDOWN) and exits 0. `docker run IMAGE db upgrade head` migrates.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health/live', timeout=4)"]
ENTRYPOINT ["app"]
CMD ["serve", "--host", "0.0.0.0"]
