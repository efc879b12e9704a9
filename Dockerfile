# One image for the operator, the services and the persona engine: `pimlab` is the entrypoint.
#   docker build -t ghcr.io/pim-sre/lab:0.1.0 .
#   kind load docker-image ghcr.io/pim-sre/lab:0.1.0 --name pim-a
# Not built on the project's machines (no Docker engine there): see docs/what-runs-where.md.
FROM python:3.11-slim AS base

# unixODBC is the driver manager pyodbc loads. Microsoft's "ODBC Driver 18 for SQL Server"
# (msodbcsql18) comes from Microsoft's own Debian repository: pass the .list line and key URL
# of that repository as build arguments to include it (the services need it to reach SQL
# Server; the operator and the embedded SQLite default do not).
ARG MSSQL_APT_SOURCE=""
ARG MSSQL_APT_KEY_URL=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends unixodbc curl gnupg ca-certificates \
 && if [ -n "$MSSQL_APT_SOURCE" ]; then \
      curl -fsSL "$MSSQL_APT_KEY_URL" | gpg --dearmor -o /usr/share/keyrings/mssql.gpg \
      && echo "$MSSQL_APT_SOURCE" > /etc/apt/sources.list.d/mssql.list \
      && apt-get update && ACCEPT_EULA=Y apt-get install -y --no-install-recommends msodbcsql18; \
    fi \
 && apt-get purge -y curl gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pimlab ./pimlab
COPY operator ./operator
COPY api_services ./api_services
COPY pimlab_load ./pimlab_load
COPY templates ./templates
COPY crds ./crds
COPY samples ./samples
COPY dashboards ./dashboards
RUN pip install --no-cache-dir -e . \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin pim

ENV PIMLAB_HOME=/app PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
ENTRYPOINT ["pimlab"]
CMD ["serve", "--service", "all", "--host", "0.0.0.0", "--port", "8080"]
