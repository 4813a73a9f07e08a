#!/usr/bin/env bash
# Make the local services the tests and the demo use reachable: start what is installed, install what is
# missing (Debian's packages, as root), and say clearly what could not be done.
#   services.sh            Redis and PostgreSQL
#   services.sh redis      Redis only (the demo falls back to Feast's SQLite store when this fails)
#   services.sh wrk        the load generator for `make bench`
#   services.sh java       Java 17 or later, for Spark in local mode (tests/feature_repo/test_spark_offline_store.py)
set -uo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"
STATE_DIR="$(cd "$(dirname "$0")/../.." && pwd)/.rtml/services"

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if [ "$(id -u)" != 0 ] || ! have apt-get; then
    echo "!! $* is not installed and cannot be installed here (needs root and apt-get): install it, then retry." >&2
    return 1
  fi
  echo "==> installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

redis_up() { have redis-cli && redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  redis_up && return 0
  have redis-server || apt_install redis-server || return 1
  echo "==> starting redis-server on 127.0.0.1:$REDIS_PORT (append-only file in $STATE_DIR)"
  mkdir -p "$STATE_DIR"
  # As in compose and Kubernetes: the append-only file, written before each reply and fsynced every second,
  # so a killed redis-server loses nothing it answered and a machine crash the last second (docs/reliability.md).
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly yes --appendfsync everysec --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log"
  for _ in $(seq 50); do redis_up && return 0; sleep 0.1; done
  echo "!! redis-server did not answer on port $REDIS_PORT: see $STATE_DIR/redis.log" >&2
  return 1
}

pg_up() { have pg_isready && pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }

ensure_postgres() {
  pg_up && return 0
  have pg_ctlcluster || apt_install postgresql || return 1
  echo "==> starting PostgreSQL on 127.0.0.1:$PG_PORT"
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main start
  for _ in $(seq 100); do pg_up && break; sleep 0.1; done
  pg_up || { echo "!! PostgreSQL did not start: see /var/log/postgresql" >&2; return 1; }
  # Tests connect as postgres over TCP without a password, as on CI's machine.
  local hba
  hba=$(su postgres -c "psql -tAc 'show hba_file'" 2>/dev/null)
  if [ -n "$hba" ] && ! grep -q "rtml-trust" "$hba"; then
    printf '# rtml-trust: local test cluster\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - "$hba" >"$hba.new" && mv "$hba.new" "$hba"
    su postgres -c "psql -qc 'select pg_reload_conf()'" >/dev/null
  fi
}

java_up() { have java && java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; }

# Not fatal for `all`: without Java the Spark offline store's test skips and says why.
ensure_java() {
  java_up && return 0
  apt_install default-jre-headless && java_up && return 0
  echo "!! Spark needs Java 17 or later on PATH; its test will be skipped" >&2
  return 1
}

case "${1:-all}" in
  redis) ensure_redis ;;
  postgres) ensure_postgres ;;
  wrk) have wrk || apt_install wrk ;;
  java) ensure_java ;;
  all) ensure_redis && ensure_postgres && { ensure_java || true; } ;;
  *) echo "usage: $0 [redis|postgres|wrk|java|all]" >&2; exit 2 ;;
esac
