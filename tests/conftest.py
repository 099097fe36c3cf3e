"""Shared fixtures. Each block is self-contained; add yours as a new block."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

# -- database servers (PostgreSQL, MariaDB/MySQL) --------------------------------------------------
#
# Tests against a real server read its URL from an environment variable with a local default. An
# unreachable server skips them with the reason shown (pytest -ra), unless
# MEMBOUND_REQUIRE_SERVERS=1 (CI), where it fails them.

POSTGRES_URL_ENV = "MEMBOUND_TEST_POSTGRES_URL"
POSTGRES_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URL_ENV = "MEMBOUND_TEST_MYSQL_URL"
MYSQL_URL_DEFAULT = "mysql://root@127.0.0.1:3306/test"
REQUIRE_SERVERS_ENV = "MEMBOUND_REQUIRE_SERVERS"
# Long enough for a loaded local machine, short enough not to stall a run with no server.
SERVER_PROBE_TIMEOUT_S = 3.0


def _server_url(env: str, default: str, default_port: int) -> str:
    from membound.urls import mask_password

    url = os.environ.get(env) or default
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=SERVER_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        message = (
            f"no server at {host}:{port} for {mask_password(url)} ({exc}); start one or set {env}"
        )
        if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_SERVERS_ENV}=1 requires it)", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL server; skips (or fails under MEMBOUND_REQUIRE_SERVERS=1)."""
    return _server_url(POSTGRES_URL_ENV, POSTGRES_URL_DEFAULT, 5432)


@pytest.fixture
def pg(postgres_url: str):
    """A plain psycopg connection (autocommit) to the test server, for setting up and checking."""
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url.split("?", 1)[0], autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """URL of the test MariaDB/MySQL server; skips (or fails under MEMBOUND_REQUIRE_SERVERS=1)."""
    return _server_url(MYSQL_URL_ENV, MYSQL_URL_DEFAULT, 3306)


# -- cache servers (Redis, Memcached) --------------------------------------------------------------
#
# Same rules as the database servers above. Tests use a dedicated Redis database (15) and a unique
# key prefix each, and delete their keys afterwards.

REDIS_URL_ENV = "MEMBOUND_TEST_REDIS_URL"
REDIS_URL_DEFAULT = "redis://127.0.0.1:6379/15"
MEMCACHED_URL_ENV = "MEMBOUND_TEST_MEMCACHED_URL"
MEMCACHED_URL_DEFAULT = "memcached://127.0.0.1:11211"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis server; skips (or fails under MEMBOUND_REQUIRE_SERVERS=1)."""
    return _server_url(REDIS_URL_ENV, REDIS_URL_DEFAULT, 6379)


@pytest.fixture(scope="session")
def memcached_url() -> str:
    """URL of the test Memcached server; skips (or fails under MEMBOUND_REQUIRE_SERVERS=1)."""
    return _server_url(MEMCACHED_URL_ENV, MEMCACHED_URL_DEFAULT, 11211)


# -- memory bounds: one copy in a fresh process ----------------------------------------------------
#
# Peak RSS is per process, so each measured copy runs in a child of its own. The child imports
# membound, the source's and target's backend modules and any `preload` modules (drivers) first,
# pays pyarrow's one-time costs (warm_up), then resets the kernel's high-water mark: "above" is
# the memory the copy itself took, to hold against the budget.

_COPY_CHILD = """
import importlib, json, sys
import membound
from membound.memory import peak_rss_bytes, reset_peak, rss_bytes, warm_up
from membound.urls import backend_class, parse_url

source, target, budget, *preload = sys.argv[1:]
for url in (source, target):
    backend_class(parse_url(url))
for name in preload:
    importlib.import_module(name)
warm_up()
baseline = rss_bytes()
reset_peak()
report = membound.copy(source, target, max_memory=budget, mode="replace")
peak = peak_rss_bytes()
print(json.dumps({"above": peak - baseline, "rows": report.rows,
                  "report_peak": report.peak_above_start}))
"""


@pytest.fixture(scope="session")
def copy_in_child():
    """``copy_in_child(source, target, budget, preload=("redis",))`` -> ``{"above": bytes of
    peak RSS above the child's post-import baseline, "rows": ..., "report_peak": ...}``."""
    import json
    import subprocess
    import sys

    def run(source: str, target: str, budget: str | int, *, preload: tuple[str, ...] = (),
            timeout: float = 900) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _COPY_CHILD, str(source), str(target), str(budget), *preload],
            capture_output=True, text=True, check=False, timeout=timeout,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    return run


# -- MariaDB/MySQL: a plain connection for setting up and checking ---------------------------------
#
# Tests make tables and look at what membound left behind (tables, PROCESSLIST) through PyMySQL
# directly, in autocommit, outside the backend under test. `my` is such a connection for the test,
# `my_tables()` names a new table that is dropped at the test's end, `mysql_plain(url)` opens one
# more (the caller closes it).


class _MySQLPlain:
    """A small autocommit PyMySQL connection: ``execute(sql, params)`` -> all its rows."""

    def __init__(self, url: str) -> None:
        pymysql = pytest.importorskip("pymysql")
        parts = urlsplit(url)
        self.conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            database=parts.path.lstrip("/"),
            charset="utf8mb4",
            autocommit=True,
        )

    def execute(self, sql: str, params=None) -> list[tuple]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="session")
def mysql_plain():
    """``mysql_plain(url)`` -> a new plain connection (``execute``, ``conn``, ``close``)."""
    return _MySQLPlain


@pytest.fixture
def my(mysql_url):
    """A plain connection to the test MariaDB/MySQL server, closed at the test's end."""
    helper = _MySQLPlain(mysql_url)
    yield helper
    helper.close()


@pytest.fixture
def my_tables(my):
    """``my_tables(prefix="t")`` -> a new table name ``mbtest_<prefix>_<hex>``, dropped (if it
    exists) at the test's end."""
    import uuid

    names: list[str] = []

    def make(prefix: str = "t") -> str:
        names.append(f"mbtest_{prefix}_{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield make
    for name in names:
        my.execute(f"DROP TABLE IF EXISTS `{name}`")


# -- membound's optional C readers (membound._mysqlarrow, membound._sqlitearrow) ------------------
#
# setup.py builds them when a C compiler and the database's client headers are there. Tests of a
# reader skip without it, unless MEMBOUND_REQUIRE_EXTENSIONS=1 (CI, whose scripts/test.sh
# installs the headers first), where they fail.

REQUIRE_EXTENSIONS_ENV = "MEMBOUND_REQUIRE_EXTENSIONS"


def require_extension(name: str) -> None:
    """Skip (or fail under MEMBOUND_REQUIRE_EXTENSIONS=1) when ``membound.<name>`` was not
    built."""
    import importlib

    try:
        importlib.import_module(f"membound.{name}")
    except ImportError as exc:
        message = f"membound.{name} was not built ({exc}); it needs gcc and the client headers"
        if os.environ.get(REQUIRE_EXTENSIONS_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_EXTENSIONS_ENV}=1 requires it)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(params=["adbc", "native"])
def pg_reader(request, monkeypatch) -> str:
    """Each PostgreSQL read path: ADBC's driver, and membound's C reader. Set through the
    environment, so child processes (the memory tests) read the same way."""
    from membound.backends import postgres_native

    if request.param == "native":
        require_extension("_pgarrow")
        monkeypatch.delenv(postgres_native.READER_ENV, raising=False)
    else:
        monkeypatch.setenv(postgres_native.READER_ENV, "adbc")
    return request.param


@pytest.fixture(params=["adbc", "native"])
def sqlite_reader(request, monkeypatch) -> str:
    """Each fast SQLite read path: ADBC's driver, and membound's C reader."""
    import membound.backends.sqlite as sqlite_backend

    if request.param == "native":
        require_extension("_sqlitearrow")
        monkeypatch.setattr(sqlite_backend, "_NATIVE", None)
    else:
        monkeypatch.setattr(sqlite_backend, "_NATIVE", False)
    return request.param


# -- Ctrl-C during a read ------------------------------------------------------------------------

_INTERRUPTED_READ = """
import os, signal, sys, threading, time
from membound.backends.base import open_backend
from membound.prefetch import prefetch

url, query, mode = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.monotonic()
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    with open_backend(url) as db:
        batches = db.batches(query)
        for _ in prefetch(batches) if mode == "prefetch" else batches:
            pass
except (KeyboardInterrupt, Exception) as exc:
    print(type(exc).__name__, round(time.monotonic() - start, 2))
"""


def read_interrupted(url: str, query: str, mode: str) -> tuple[str, float]:
    """Read ``query`` in a child process, directly (``mode="direct"``) or through a copy's
    reading thread (``"prefetch"``), and send it SIGINT one second in: the name of the exception
    that ended the read and the seconds until then."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_READ, url, query, mode],
        capture_output=True, text=True, timeout=50,
    )
    if not out.stdout.strip():
        pytest.fail(f"the read did not end: {out.stderr[-2000:]}")
    kind, seconds = out.stdout.split()
    return kind, float(seconds)
