#!/usr/bin/env bash
# Install what the tests need into .venv and run them. The README's test command.
#
#   bash scripts/test.sh            # default suite (~5 min)
#   bash scripts/test.sh -m slow    # extra pytest arguments pass through
#
# Server tests read MEMBOUND_TEST_POSTGRES_URL / MEMBOUND_TEST_MYSQL_URL / MEMBOUND_TEST_REDIS_URL /
# MEMBOUND_TEST_MEMCACHED_URL (local defaults) and skip when a server is absent, unless
# MEMBOUND_REQUIRE_SERVERS=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# C libraries from Debian's packages, installed here when missing and we are root: LevelDB's
# (plyvel links against it), MariaDB's client library (membound's C reader, mariadb and
# mysqlclient: the fast MySQL read paths) and SQLite's headers (membound's C SQLite reader).
apt_packages=""
ldconfig -p | grep -q libleveldb || apt_packages="$apt_packages libleveldb-dev"
[ -f /usr/include/sqlite3.h ] || apt_packages="$apt_packages libsqlite3-dev"
[ -f /usr/include/postgresql/libpq-fe.h ] || apt_packages="$apt_packages libpq-dev"
{ [ -f /usr/include/mariadb/mysql.h ] && command -v pkg-config >/dev/null; } || \
  apt_packages="$apt_packages libmariadb-dev pkg-config"
if [ -n "$apt_packages" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $apt_packages; } \
    >/dev/null || true
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,all]'
# mariadb and mysqlclient need a C compiler and libmariadb-dev; without them the PyMySQL path is
# tested alone.
.venv/bin/python -m pip install --quiet -e '.[mysql-fast]' || \
  echo "mariadb/mysqlclient did not build: MariaDB reads are tested through PyMySQL only" >&2

# Start the local servers the machine ships with if they stopped (no-ops when running or absent).
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  pg_isready -h 127.0.0.1 -q 2>/dev/null || \
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
  mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 || \
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do
    mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break
    sleep 1
  done
fi
# The cache servers: Redis as the machine ships it, memcached from Debian's packages (installed
# here when missing and we are root). Both listen on loopback only.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for_port() { for _ in $(seq 1 20); do port_open "$1" && return 0; sleep 0.5; done; return 0; }
if command -v redis-server >/dev/null 2>&1 && ! port_open 6379; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_for_port 6379
fi
if ! command -v memcached >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached; } \
    >/dev/null || true
fi
if command -v memcached >/dev/null 2>&1 && ! port_open 11211; then
  memcached -d -u "$(id -un)" -l 127.0.0.1 -p 11211 -m 64 || true
  wait_for_port 11211
fi

exec .venv/bin/python -m pytest -m "not slow" "$@"
