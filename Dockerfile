# One image for the operator, the services and the persona engine: `pimlab` is the entrypoint.
#   docker build -t ghcr.io/pim-sre/lab:0.1.0 .
#   kind load docker-image ghcr.io/pim-sre/lab:0.1.0 --name pim-a
# On the project's machines (no Docker engine, no registry) `make image` builds this same file
# with podman on a Debian bookworm base made by mmdebstrap (`podman build --from` replaces the
# FROM below; see pimlab/cluster/images.py). Both bases are Debian with Python 3.11.
FROM python:3.11-slim AS base

# Debian packages in the image: unixODBC (the driver manager pyodbc loads), PostgreSQL (the
# `engine: postgres` Shards) and Prometheus with promtool. Installed only when missing: the
# local base already has them, so its build needs no Debian mirror.
ARG DEBIAN_PACKAGES="ca-certificates unixodbc postgresql prometheus"
# Microsoft's "ODBC Driver 18 for SQL Server" (msodbcsql18) comes from Microsoft's own Debian
# repository: pass the .list line and key URL of that repository as build arguments to include
# it (the services need it to reach SQL Server; the operator and the embedded SQLite default
# do not).
ARG MSSQL_APT_SOURCE=""
ARG MSSQL_APT_KEY_URL=""
RUN set -e; missing=""; \
    for p in $DEBIAN_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    if [ -n "$missing" ]; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
    fi; \
    if [ -n "$MSSQL_APT_SOURCE" ]; then \
      apt-get update && apt-get install -y --no-install-recommends curl gnupg \
      && curl -fsSL "$MSSQL_APT_KEY_URL" | gpg --dearmor -o /usr/share/keyrings/mssql.gpg \
      && echo "$MSSQL_APT_SOURCE" > /etc/apt/sources.list.d/mssql.list \
      && apt-get update && ACCEPT_EULA=Y apt-get install -y --no-install-recommends msodbcsql18 \
      && apt-get purge -y curl gnupg && apt-get autoremove -y; \
    fi; \
    rm -rf /var/lib/apt/lists/*

# A virtual environment: Debian's own python3 refuses system-wide pip installs (PEP 668).
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first (their layer survives source changes). Builds behind a TLS-intercepting
# proxy or a PyPI mirror may hand pip its configuration and CA bundle as the optional build
# secrets `pip.conf` and `pip-ca.crt` (podman/docker build --secret id=...,src=...).
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca.crt \
    set -e; \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -f /run/secrets/pip-ca.crt ]; then export PIP_CERT=/run/secrets/pip-ca.crt; fi; \
    python3 -m venv "$VIRTUAL_ENV"; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt; \
    pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt "setuptools>=69"; \
    rm /tmp/requirements.txt

COPY README.md ./
COPY pimlab ./pimlab
COPY operator ./operator
COPY api_services ./api_services
COPY pimlab_load ./pimlab_load
COPY templates ./templates
COPY crds ./crds
COPY samples ./samples
COPY dashboards ./dashboards
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation -e . \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin pim

ENV PIMLAB_HOME=/app PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
ENTRYPOINT ["pimlab"]
CMD ["serve", "--service", "all", "--host", "0.0.0.0", "--port", "8080"]
