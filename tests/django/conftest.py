"""The Django test project: settings with one database alias per server, and their fixtures.

Django is configured here, when pytest collects this directory, so the rest of the suite runs
without Django. Aliases: ``default`` (SQLite, a file per session), ``postgres`` and ``mysql``
(the servers of tests/conftest.py, present in the settings only when they answer). Each test
database is created by pytest-django under its own name, so the servers' other databases are
untouched.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Each alias is one of the three databases the issue names; tests parametrize over these.
ALIASES = ("default", "postgres", "mysql")
# Per-session SQLite file (an in-memory test database cannot be seen from a child process).
_SQLITE_DIR = tempfile.mkdtemp(prefix="membound-django-")


def _server(env: str, default: str) -> dict | None:
    url = os.environ.get(env) or default
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 3):
            pass
    except OSError:
        return None
    return {
        "NAME": parts.path.lstrip("/") or "test",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or ""),
        "TEST": {"NAME": "test_membound_django"},
    }


def _databases() -> dict:
    databases = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_SQLITE_DIR, "app.db"),
            "TEST": {"NAME": os.path.join(_SQLITE_DIR, "test_app.db")},
        }
    }
    postgres = _server("MEMBOUND_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if postgres is not None:
        databases["postgres"] = {"ENGINE": "django.db.backends.postgresql", **postgres}
    mysql = _server("MEMBOUND_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    if mysql is not None:
        try:
            import MySQLdb  # noqa: F401
        except ImportError:
            # mysqlclient is not installed: PyMySQL stands in (its version_info satisfies
            # Django's mysqlclient >= 2.2.1 check).
            import pymysql

            pymysql.install_as_MySQLdb()
        databases["mysql"] = {
            "ENGINE": "django.db.backends.mysql",
            **mysql,
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {**mysql["TEST"], "CHARSET": "utf8mb4", "COLLATION": "utf8mb4_bin"},
        }
    return databases


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DATABASES=_databases(),
        INSTALLED_APPS=["membound.django", "testapp"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        SECRET_KEY="membound-tests",
    )
    import django

    django.setup()


# pytest calls pytest_configure of a conftest found during collection too; make sure Django is
# set up before the test modules below import the models.
pytest_configure(None)  # type: ignore[arg-type]


def _alias_param(name: str, *, transaction: bool = False) -> object:
    from django.conf import settings

    # An absent server's alias is not in the settings, so it cannot carry a django_db mark;
    # the fixture then skips (or fails) through tests/conftest.py.
    marks = (
        [pytest.mark.django_db(databases=[name], transaction=transaction)]
        if name in settings.DATABASES
        else []
    )
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_alias_param(name) for name in ALIASES])
def alias(request: pytest.FixtureRequest) -> str:
    """Each database alias in turn, its test database ready, each test in a transaction that is
    rolled back. An absent server skips (or fails under MEMBOUND_REQUIRE_SERVERS=1) through the
    fixtures of tests/conftest.py."""
    return _check_alias(request)


@pytest.fixture(params=[_alias_param(name, transaction=True) for name in ALIASES])
def autocommit_alias(request: pytest.FixtureRequest) -> str:
    """As ``alias``, in autocommit (tables emptied after the test): for per-batch commits."""
    return _check_alias(request)


def _check_alias(request: pytest.FixtureRequest) -> str:
    name = request.param
    if name == "postgres":
        request.getfixturevalue("postgres_url")
    elif name == "mysql":
        request.getfixturevalue("mysql_url")
    from django.conf import settings

    if name not in settings.DATABASES:
        pytest.skip(f"no {name} server when the settings were made")
    return name
