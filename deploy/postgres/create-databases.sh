#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d):
# one database per store (MLflow, Prefect, the Feast registry), owned by the application user.
set -euo pipefail

for db in ${RTML_DATABASES:-mlflow prefect feast}; do
  echo "creating database ${db}"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"${db}\" OWNER \"${POSTGRES_USER}\""
done
