from __future__ import annotations

import pytest

from membound import URLError
from membound.backends.base import is_query, open_backend
from membound.urls import backend_class, mask_password, parse_url


def test_sqlite_urls_follow_sqlalchemy():
    assert parse_url("sqlite:///rel/app.db").path == "rel/app.db"
    assert parse_url("sqlite:////abs/app.db").path == "/abs/app.db"
    assert parse_url("sqlite://").path == ":memory:"
    url = parse_url("sqlite:///app.db?table=events")
    assert url.table == "events" and url.scheme == "sqlite"


def test_server_url_parts_and_masking():
    url = parse_url("postgresql://me:s3cret@db.local:5433/app?table=t&sslmode=require")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "me", "s3cret", "db.local", 5433, "app")
    assert url.table == "t" and url.options == {"sslmode": "require"}
    assert "s3cret" not in url.display and "***" in url.display
    assert "s3cret" not in repr(url)
    assert mask_password("mysql://root@h/db") == "mysql://root@h/db"


@pytest.mark.parametrize(
    ("path", "fmt"),
    [("out.parquet", "parquet"), ("a/b.csv", "csv"), ("x.jsonl", "jsonl"),
     ("t.arrow", "arrow"), ("t.feather", "arrow"), ("x.csv.gz", "csv")],
)
def test_file_paths_by_extension(path, fmt):
    url = parse_url(path)
    assert url.scheme == "file" and url.file_format == fmt


def test_db_paths_are_sqlite():
    assert parse_url("data/app.sqlite").scheme == "sqlite"


def test_unknown_scheme_and_extension_are_clear_errors():
    with pytest.raises(URLError, match="known schemes"):
        backend_class(parse_url("oracle://h/db"))
    with pytest.raises(URLError, match="known extension"):
        parse_url("notes.docx")
    with pytest.raises(URLError, match="sqlite:///relative.db"):
        parse_url("sqlite://host/app.db")
    with pytest.raises(URLError, match="invalid port"):
        parse_url("postgresql://h:99999999/db")
    with pytest.raises(URLError):
        open_backend("")


def test_is_query():
    assert is_query("SELECT 1") and is_query("  with x as (select 1) select * from x")
    assert not is_query("events") and not is_query("selections")
