"""Parse a source or target, pick the backend that serves it, and mask passwords for display.

A source or target is either a URL in SQLAlchemy's form (``sqlite:///relative.db``,
``sqlite:////abs/path.db``, ``postgresql://user:pw@host/db?table=events``) or a file path whose
extension names its format (``events.parquet``, ``out.csv``, ``rows.jsonl``, ``t.arrow``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from membound.errors import URLError

if TYPE_CHECKING:
    from membound.backends.base import Backend

__all__ = ["ParsedURL", "backend_class", "mask_password", "parse_url", "register_scheme"]

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

# scheme -> "module:Class". Backends are imported only when used, so a missing driver for one
# store never breaks another. Adding a backend means one module and one line here.
_SCHEMES: dict[str, str] = {
    "sqlite": "membound.backends.sqlite:SQLiteBackend",
    "postgresql": "membound.backends.postgres:PostgresBackend",
    "postgres": "membound.backends.postgres:PostgresBackend",
    "postgresql+psycopg": "membound.backends.postgres:PostgresBackend",
    "postgresql+psycopg2": "membound.backends.postgres:PostgresBackend",
    "postgresql+adbc": "membound.backends.postgres:PostgresBackend",
    "mysql": "membound.backends.mysql:MySQLBackend",
    "mariadb": "membound.backends.mysql:MySQLBackend",
    "mysql+pymysql": "membound.backends.mysql:MySQLBackend",
    "mariadb+pymysql": "membound.backends.mysql:MySQLBackend",
    # The read driver chosen by the URL (SQLAlchemy's name for MariaDB Connector/Python, the
    # package name for mysqlclient: mysql+mysqldb:// stays SQLAlchemy's, see the MySQL guide).
    "mysql+mariadbconnector": "membound.backends.mysql:MySQLBackend",
    "mariadb+mariadbconnector": "membound.backends.mysql:MySQLBackend",
    "mysql+mysqlclient": "membound.backends.mysql:MySQLBackend",
    "mariadb+mysqlclient": "membound.backends.mysql:MySQLBackend",
    "duckdb": "membound.backends.duckdb:DuckDBBackend",
    "redis": "membound.backends.redis:RedisBackend",
    "rediss": "membound.backends.redis:RedisBackend",
    "memcached": "membound.backends.memcached:MemcachedBackend",
    "lmdb": "membound.backends.lmdb:LMDBBackend",
    "rocksdb": "membound.backends.rocksdb:RocksDBBackend",
    "leveldb": "membound.backends.leveldb:LevelDBBackend",
    "file": "membound.backends.files:FileBackend",
}
# Any other "dialect+driver://" URL goes to SQLAlchemy.
_SQLALCHEMY = "membound.backends.sqlalchemy:SQLAlchemyBackend"

FILE_FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
}
# A bare path with one of these extensions is a SQLite database.
SQLITE_EXTENSIONS = (".db", ".sqlite", ".sqlite3")
# ... and with one of these a DuckDB database.
DUCKDB_EXTENSIONS = (".duckdb", ".ddb")
# Embedded stores named by a local path, written like SQLite's URLs: three slashes then a
# relative path, four for an absolute one (lmdb:///rel/store, lmdb:////abs/store).
EMBEDDED_SCHEMES = ("lmdb", "rocksdb", "leveldb")


@dataclass(frozen=True)
class ParsedURL:
    """A source or target, parsed. ``options`` holds the URL's query string minus ``table``."""

    raw: str
    scheme: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    path: str | None = None
    table: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    file_format: str | None = None

    @property
    def display(self) -> str:
        """The URL with its password masked, safe to print and log."""
        return mask_password(self.raw)

    def __repr__(self) -> str:
        return f"ParsedURL({self.display!r})"


def mask_password(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def parse_url(target: str | Path) -> ParsedURL:
    """Parse a URL or a file path. Raises :class:`URLError` with what to write instead."""
    raw = str(target)
    if not raw.strip():
        raise URLError("an empty string is not a source or target; give a URL or a file path")
    if not _URL_RE.match(raw):
        return _parse_path(raw)
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    table = query.pop("table", None) or None
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        # SQLAlchemy's form: three slashes then a relative path, four for an absolute one.
        rest = raw.split("://", 1)[1].split("?", 1)[0]
        if rest in ("", "/", "/:memory:"):
            path = ":memory:"
        elif rest.startswith("/"):
            path = unquote(rest[1:])
        else:
            raise URLError(
                f"{mask_password(raw)!r} is not a SQLite URL; write sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        return ParsedURL(raw=raw, scheme="sqlite", path=path, table=table, options=query)
    if scheme in EMBEDDED_SCHEMES:
        rest = raw.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]
        if not rest.startswith("/") or not rest.strip("/"):
            raise URLError(
                f"{mask_password(raw)!r} is not a {scheme} URL; write {scheme}:///relative/dir "
                f"or {scheme}:////absolute/dir"
            )
        return ParsedURL(raw=raw, scheme=scheme, path=unquote(rest[1:]), table=table,
                         options=query)
    if scheme == "file":
        path = unquote(parts.path)
        return _parse_path(path, raw=raw, table=table, options=query)
    try:
        port = parts.port
    except ValueError as exc:
        raise URLError(f"{mask_password(raw)!r} has an invalid port: {exc}") from None
    path = unquote(parts.path) if parts.path else None
    database = path.lstrip("/") or None if path else None
    return ParsedURL(
        raw=raw,
        scheme=scheme,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port,
        database=database,
        path=path,
        table=table,
        options=query,
    )


def _parse_path(
    path: str, *, raw: str | None = None, table: str | None = None, options: dict | None = None
) -> ParsedURL:
    suffixes = [s.lower() for s in Path(path).suffixes]
    last = suffixes[-1] if suffixes else ""
    if last in (".gz", ".bz2", ".zst", ".lz4") and len(suffixes) >= 2:
        last = suffixes[-2]
    if last in SQLITE_EXTENSIONS:
        return ParsedURL(raw=raw or path, scheme="sqlite", path=path, table=table,
                         options=options or {})
    if last in DUCKDB_EXTENSIONS:
        return ParsedURL(raw=raw or path, scheme="duckdb", path=path, table=table,
                         options=options or {})
    fmt = FILE_FORMATS.get(last)
    if fmt is None:
        known = ", ".join(sorted(set(FILE_FORMATS) | set(SQLITE_EXTENSIONS)
                                 | set(DUCKDB_EXTENSIONS)))
        raise URLError(
            f"{path!r} is neither a URL nor a file with a known extension ({known}); "
            "write a URL such as sqlite:///app.db or postgresql://host/db, or a file path "
            "such as out.parquet"
        )
    return ParsedURL(raw=raw or path, scheme="file", path=path, table=table,
                     options=options or {}, file_format=fmt)


def register_scheme(scheme: str, target: str) -> None:
    """Serve URLs of ``scheme`` with ``"package.module:Class"`` (a :class:`Backend`)."""
    _SCHEMES[scheme.lower()] = target


def backend_class(url: ParsedURL) -> type[Backend]:
    """The backend class for a parsed URL, imported now. Raises :class:`URLError` if none."""
    spec = _SCHEMES.get(url.scheme)
    if spec is None:
        if "+" in url.scheme:
            spec = _SQLALCHEMY
        else:
            known = ", ".join(sorted(s for s in _SCHEMES if "+" not in s and s != "file"))
            raise URLError(
                f"no backend serves {url.scheme!r} URLs ({url.display}); known schemes: {known}, "
                "any SQLAlchemy 'dialect+driver://' URL, or a file path"
            )
    module_name, _, class_name = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
