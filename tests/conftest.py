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
