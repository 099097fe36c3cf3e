"""Faults on the real servers: a server that goes away mid-copy, a table dropped mid-read, a
constraint violated mid-write, a refused login.

Each must end in a membound error whose message says what to do, leave no connection running
(``pg_stat_activity``, ``information_schema.PROCESSLIST``), leave a ``replace`` target as it was,
and lose nothing silently: an ``append`` that fails part way raises :class:`PartialWriteError`
whose ``rows_committed`` and ``resume_after`` are exactly what the table holds, so resuming from
there completes the copy.

The server "goes away" by having its connection ended from a second connection
(``pg_terminate_backend``, ``KILL``), from a hook between batches: the same thing a restart or an
operator does to a running copy, at a known point.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import membound
from membound.backends.base import open_backend
from membound.errors import (
    NotFoundError,
    PartialWriteError,
    SourceError,
    TargetError,
)

psycopg = pytest.importorskip("psycopg")
pymysql = pytest.importorskip("pymysql")
pytest.importorskip("adbc_driver_postgresql")

pytestmark = pytest.mark.server

# How long the server may take to see a closed or ended connection go.
SERVER_WIND_DOWN_S = 5.0
# Rows of the tables read and written here: enough for many batches at a 4MB budget (a batch is
# then ~250 kB), small enough to build in well under a second.
ROWS = 200_000
SMALL_BUDGET = "4MB"
# Rows of ~1 kB for the copies whose source is stopped part way: 60 MB, far more than the socket
# buffers can hold.
WIDE_ROWS = 60_000


def eventually(check, timeout: float = SERVER_WIND_DOWN_S):
    """``check()``'s value once it is falsy (the server may take a moment), else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def numbers(start: int, stop: int) -> pa.RecordBatch:
    ids = pa.array(range(start, stop), pa.int64())
    return pa.record_batch({"id": ids, "v": pa.array([f"v{i}" for i in range(start, stop)])})


def write_parquet(path, rows: int = ROWS) -> str:
    """A Parquet file of ``rows`` (id, v) rows in row groups of 10,000."""
    with pq.ParquetWriter(path, numbers(0, 1).schema) as writer:
        for start in range(0, rows, 10_000):
            writer.write_batch(numbers(start, min(start + 10_000, rows)))
    return str(path)


class KillAfter:
    """A copy progress hook that ends the server connections ``kill`` finds once ``rows`` went by.

    The copy hands the batch it reports to the sink right after the hook returns, so the sink
    has committed only the batches before it.
    """

    def __init__(self, kill, rows: int) -> None:
        self.kill = kill
        self.rows = rows
        self.killed = 0

    def __call__(self, rows: int, nbytes: int, total: int | None) -> None:
        if not self.killed and rows >= self.rows:
            self.killed = self.kill()
            assert self.killed, "found no connection to end"


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture
def pg_tables(pg):
    names: list[str] = []

    def make() -> str:
        names.append(f"mbtest_fault_{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield make
    for name in names:
        pg.execute(f'DROP TABLE IF EXISTS "{name}"')


def with_app(url: str) -> tuple[str, str]:
    """``url`` with a unique application_name, and that name."""
    app = f"mbfault_{uuid.uuid4().hex[:10]}"
    return f"{url}{'&' if '?' in url else '?'}application_name={app}", app


def pg_sessions(pg, app: str) -> list[tuple[str, str]]:
    return pg.execute(
        "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", [app]
    ).fetchall()


def pg_busy(pg, app: str) -> list[tuple[str, str]]:
    """Sessions of ``app`` running a query or holding a transaction open."""
    return [(state, query) for state, query in pg_sessions(pg, app) if state != "idle"]


def pg_terminate(pg, app: str) -> int:
    rows = pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [app],
    ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def pg_leftovers(pg) -> set[str]:
    """Tables membound builds aside (``replace``) that exist now."""
    return {
        name
        for (name,) in pg.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE '\\_membound\\_%%' "
            "AND relpersistence = 'p'"
        )
    }


def pg_fill(pg, name: str, rows: int = ROWS, width: int = 0) -> None:
    """``rows`` rows (id, v); ``width`` pads v to about that many bytes."""
    pad = f" || repeat('x', {width})" if width else ""
    pg.execute(
        f"CREATE TABLE {name} AS SELECT g::bigint AS id, 'v' || g{pad} AS v "
        f"FROM generate_series(0, {rows - 1}) g"
    )
    pg.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")


@pytest.mark.usefixtures("pg_reader")
def test_pg_server_gone_mid_read(postgres_url, pg, pg_tables):
    name = pg_tables()
    pg_fill(pg, name)
    url, app = with_app(postgres_url)
    with open_backend(url, budget=SMALL_BUDGET) as db:
        stream = db.batches(name)
        next(stream)
        assert pg_terminate(pg, app) == 1
        with pytest.raises(SourceError, match="lost the connection.*run it again") as caught:
            for _ in stream:
                pass
        assert not isinstance(caught.value.__cause__, OSError)
        # The dead connection is dropped, not pooled: the backend goes on with a new one.
        assert eventually(lambda: pg_sessions(pg, app)) == []
        assert list(db.rows(f"SELECT count(*) FROM {name}")) == [(ROWS,)]
    assert eventually(lambda: pg_sessions(pg, app)) == []


@pytest.mark.usefixtures("pg_reader")
@pytest.mark.parametrize("wait_s", [0.0, 1.1])
def test_pg_pooled_connection_ended_meanwhile_is_replaced(
    postgres_url, pg, pg_tables, monkeypatch, wait_s
):
    """A server restart ends idle pooled connections; the next operation must not fail for it."""
    import membound.backends.postgres as postgres

    if not wait_s:
        monkeypatch.setattr(postgres, "POOL_CHECK_AFTER_IDLE_S", 0.0)
    url, app = with_app(postgres_url)
    with open_backend(url) as db:
        assert list(db.rows("SELECT 1")) == [(1,)]
        assert pg_terminate(pg, app) == 1
        time.sleep(wait_s)
        assert list(db.rows("SELECT 2")) == [(2,)]
        assert pg_terminate(pg, app) == 1
        time.sleep(wait_s)
        assert db.write(pg_tables(), [numbers(0, 3)]).rows == 3
    assert eventually(lambda: pg_sessions(pg, app)) == []


def test_pg_server_gone_mid_append_reports_exactly_what_was_committed(
    postgres_url, pg, pg_tables, tmp_path
):
    source = write_parquet(tmp_path / "in.parquet")
    name = pg_tables()
    pg.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
    url, app = with_app(postgres_url)
    hook = KillAfter(lambda: pg_terminate(pg, app), ROWS // 2)
    with pytest.raises(PartialWriteError, match="resume_after.*mode='append'") as caught:
        membound.copy(
            source,
            url,
            target_table=name,
            mode="append",
            key="id",
            max_memory=SMALL_BUDGET,
            progress=hook,
        )
    error = caught.value
    count, last = pg.execute(f"SELECT count(*), max(id) FROM {name}").fetchone()
    assert 0 < error.rows_committed == count < ROWS
    assert error.resume_after == (last,)
    assert "lost" in str(error) or "terminating" in str(error)
    assert eventually(lambda: pg_sessions(pg, app)) == []
    # Resuming from resume_after completes the copy: nothing lost, nothing twice.
    with open_backend(url) as db:
        rest = (
            b.filter(pa.compute.greater(b.column("id"), last))
            for b in open_backend(source).batches()
        )
        db.write(name, rest, mode="append")
    assert pg.execute(f"SELECT count(*), count(DISTINCT id), sum(id) FROM {name}").fetchone() == (
        ROWS,
        ROWS,
        ROWS * (ROWS - 1) // 2,
    )


def test_pg_server_gone_mid_replace_leaves_the_old_table(postgres_url, pg, pg_tables, tmp_path):
    leftovers_before = pg_leftovers(pg)
    source = write_parquet(tmp_path / "in.parquet")
    name = pg_tables()
    pg.execute(f"CREATE TABLE {name} (id bigint, v text)")
    pg.execute(f"INSERT INTO {name} VALUES (1, 'old')")
    url, app = with_app(postgres_url)
    hook = KillAfter(lambda: pg_terminate(pg, app), ROWS // 2)
    with pytest.raises(TargetError, match="unchanged|nothing was committed") as caught:
        membound.copy(
            source, url, target_table=name, mode="replace", max_memory=SMALL_BUDGET, progress=hook
        )
    assert not isinstance(caught.value, PartialWriteError)
    assert pg.execute(f"SELECT * FROM {name}").fetchall() == [(1, "old")]
    assert pg_leftovers(pg) <= leftovers_before
    assert eventually(lambda: pg_sessions(pg, app)) == []


@pytest.mark.usefixtures("pg_reader")
def test_pg_source_gone_mid_copy_into_mysql(postgres_url, pg, pg_tables, mysql_url, my, my_tables):
    """The source dies: an append says what it committed, a replace leaves the old table.

    Wide rows, so that the server still has most of the table to send when it is stopped (a
    small table would sit whole in the client's socket buffers and arrive all the same).
    """
    leftovers_before = my_leftovers(my)
    rows = WIDE_ROWS
    name = pg_tables()
    pg_fill(pg, name, rows, width=1000)
    url, app = with_app(postgres_url)
    target = my_tables("fault")
    my.execute(f"CREATE TABLE {target} (id BIGINT PRIMARY KEY, v TEXT)")
    my.execute(f"INSERT INTO {target} VALUES (-1, 'old')")

    hook = KillAfter(lambda: pg_terminate(pg, app), rows // 3)
    with pytest.raises(SourceError, match="lost the connection"):
        membound.copy(
            url,
            mysql_url,
            source_table=name,
            target_table=target,
            mode="replace",
            max_memory=SMALL_BUDGET,
            progress=hook,
        )
    assert my.execute(f"SELECT * FROM {target}") == [(-1, "old")]
    assert my_leftovers(my) <= leftovers_before

    hook = KillAfter(lambda: pg_terminate(pg, app), rows // 3)
    with pytest.raises(PartialWriteError) as caught:
        membound.copy(
            url,
            mysql_url,
            query=f"SELECT * FROM {name} ORDER BY id",
            target_table=target,
            mode="append",
            key="id",
            max_memory=SMALL_BUDGET,
            progress=hook,
        )
    error = caught.value
    assert isinstance(error.__cause__, SourceError)
    assert "lost the connection" in str(error.__cause__)
    count, last = my.execute(f"SELECT COUNT(*) - 1, MAX(id) FROM {target}")[0]
    assert 0 < error.rows_committed == count < rows
    assert error.resume_after == (last,)
    assert eventually(lambda: pg_sessions(pg, app)) == []


@pytest.mark.usefixtures("pg_reader")
def test_pg_table_dropped_mid_read_waits_for_the_reader(postgres_url, pg, pg_tables):
    """DROP TABLE from another session waits for a running read (the read holds its lock), the
    read gets every row, and the lock goes with the stream: the drop then completes at once."""
    name = pg_tables()
    pg_fill(pg, name)
    url, app = with_app(postgres_url)
    dropped = threading.Event()

    def drop() -> None:
        with psycopg.connect(postgres_url.split("?", 1)[0], autocommit=True) as other:
            other.execute(f"DROP TABLE {name}")
        dropped.set()

    with open_backend(url, budget=SMALL_BUDGET) as db:
        stream = db.batches(name)
        rows = next(stream).num_rows
        dropper = threading.Thread(target=drop)
        dropper.start()
        time.sleep(0.3)
        assert not dropped.is_set()  # waiting for the reader's lock
        for batch in stream:
            rows += batch.num_rows
        assert rows == ROWS
        dropper.join(SERVER_WIND_DOWN_S)
        assert dropped.is_set()
        assert pg_busy(pg, app) == []
        with pytest.raises(NotFoundError, match=f"{name}.*check the table name"):
            next(db.batches(name))


@pytest.mark.usefixtures("pg_reader")
def test_pg_abandoned_read_releases_its_lock(postgres_url, pg, pg_tables):
    name = pg_tables()
    pg_fill(pg, name)
    url, app = with_app(postgres_url)
    with open_backend(url, budget=SMALL_BUDGET) as db:
        stream = db.batches(name)
        next(stream)
        stream.close()
        pg.execute("SET lock_timeout = '2s'")
        pg.execute(f"DROP TABLE {name}")  # would time out if the reader kept its lock
        pg.execute("RESET lock_timeout")
        assert pg_busy(pg, app) == []


def test_pg_constraint_violation_mid_upsert(postgres_url, pg, pg_tables):
    name = pg_tables()
    pg.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text CHECK (v <> 'bad'))")
    url, app = with_app(postgres_url)
    bad = pa.record_batch({"id": pa.array([500], pa.int64()), "v": ["bad"]})
    with open_backend(url) as db:
        with pytest.raises(PartialWriteError, match="check constraint") as caught:
            db.write(
                name,
                [numbers(0, 300), numbers(300, 400), bad, numbers(400, 500)],
                mode="upsert",
                key="id",
            )
        assert pg_busy(pg, app) == []
    assert (caught.value.rows_committed, caught.value.resume_after) == (400, (399,))
    assert pg.execute(f"SELECT count(*), max(id) FROM {name}").fetchone() == (400, 399)
    assert eventually(lambda: pg_sessions(pg, app)) == []


def test_pg_refused_login_says_what_to_do(postgres_url, pg):
    parts = urlsplit(postgres_url)
    url, app = with_app(
        f"postgresql://mb_no_such_user:s3cretpw@{parts.hostname}:{parts.port or 5432}{parts.path}"
    )
    with pytest.raises(SourceError, match="check the user name and password") as caught:
        open_backend(url)
    assert "s3cretpw" not in str(caught.value) and "***" in str(caught.value)
    assert pg_sessions(pg, app) == []


# -- MariaDB / MySQL -------------------------------------------------------------------------------


@pytest.fixture
def my_user(mysql_url, my):
    """A URL logging in as a user of this test's own (so its connections can be told apart)."""
    user = f"mbfault_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(mysql_url)
    my.execute(f"CREATE USER '{user}'@'%'")
    my.execute(f"CREATE USER '{user}'@'localhost'")
    for host in ("%", "localhost"):
        my.execute(f"GRANT ALL ON `{parts.path.lstrip('/')}`.* TO '{user}'@'{host}'")
    yield f"mysql://{user}@{parts.hostname}:{parts.port or 3306}{parts.path}", user
    for host in ("%", "localhost"):
        my.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")


def my_leftovers(my) -> set[str]:
    """Tables membound builds aside (``replace``) that exist now."""
    return {
        name
        for (name,) in my.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME LIKE '\\_membound\\_%%'"
        )
    }


def my_threads(db) -> list[int]:
    # thread_id is a method of PyMySQL's and mysqlclient's connections, an attribute of
    # MariaDB Connector/Python's.
    ids = (conn.thread_id for conn in db._open)
    return [found() if callable(found) else found for found in ids]


def my_alive(my, ids: list[int]) -> list[tuple]:
    if not ids:
        return []
    marks = ",".join(map(str, ids))
    return my.execute(
        f"SELECT ID, COMMAND FROM information_schema.PROCESSLIST WHERE ID IN ({marks})"
    )


def my_busy(my, ids: list[int]) -> list[tuple]:
    return [row for row in my_alive(my, ids) if row[1] != "Sleep"]


def my_kill(my, db) -> int:
    killed = 0
    for thread in my_threads(db):
        try:
            my.execute(f"KILL {thread}")
            killed += 1
        except pymysql.err.MySQLError:
            pass  # gone already
    return killed


def my_fill(my, name: str, rows: int = ROWS) -> None:
    my.execute(
        f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, v TEXT) "
        f"SELECT seq AS id, CONCAT('v', seq) AS v FROM seq_0_to_{rows - 1}"
    )


def test_my_server_gone_mid_read(mysql_url, my, my_tables):
    name = my_tables("fault")
    my_fill(my, name)
    with open_backend(mysql_url, budget=SMALL_BUDGET) as db:
        stream = db.batches(name)
        next(stream)
        threads = my_threads(db)
        assert my_kill(my, db) >= 1
        with pytest.raises(SourceError, match="lost the connection.*run it again"):
            for _ in stream:
                pass
        assert eventually(lambda: my_alive(my, threads)) == []
        assert list(db.rows(f"SELECT COUNT(*) FROM {name}")) == [(ROWS,)]
        threads = my_threads(db)
    assert eventually(lambda: my_alive(my, threads)) == []


@pytest.mark.parametrize("wait_s", [0.0, 1.1])
def test_my_pooled_connection_ended_meanwhile_is_replaced(
    mysql_url, my, my_tables, monkeypatch, wait_s
):
    import membound.backends.mysql as mysql

    if not wait_s:
        monkeypatch.setattr(mysql, "POOL_CHECK_AFTER_IDLE_S", 0.0)
    name = my_tables("fault")
    with open_backend(mysql_url) as db:
        # The pooled connection (reads may go through mysqlclient on a connection of their own,
        # but writes and table metadata use the pool).
        assert my_kill(my, db) == 1
        time.sleep(wait_s)
        assert db.write(name, [numbers(0, 3)]).rows == 3
        assert my_kill(my, db) == 1
        time.sleep(wait_s)
        assert sum(batch.num_rows for batch in db.batches(name)) == 3
        threads = my_threads(db)
    assert eventually(lambda: my_alive(my, threads)) == []


def test_my_server_gone_mid_append_reports_exactly_what_was_committed(
    my_user, my, my_tables, tmp_path
):
    source = write_parquet(tmp_path / "in.parquet")
    name = my_tables("fault")
    my.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, v TEXT)")
    url, user = my_user
    target = f"{url}?table={name}"
    killed_threads: list[int] = []

    def kill() -> int:
        # The writer is the only connection of this test's own user.
        for (thread,) in my.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", [user]
        ):
            with contextlib.suppress(pymysql.err.MySQLError):
                my.execute(f"KILL {thread}")
                killed_threads.append(thread)
        return len(killed_threads)

    hook = KillAfter(kill, ROWS // 2)
    with pytest.raises(PartialWriteError, match="resume_after.*mode='append'") as caught:
        membound.copy(
            source, target, mode="append", key="id", max_memory=SMALL_BUDGET, progress=hook
        )
    error = caught.value
    count, last = my.execute(f"SELECT COUNT(*), MAX(id) FROM {name}")[0]
    assert 0 < error.rows_committed == count < ROWS
    assert error.resume_after == (last,)
    with open_backend(target) as db:
        rest = (
            b.filter(pa.compute.greater(b.column("id"), last))
            for b in open_backend(source).batches()
        )
        db.write(name, rest, mode="append")
    assert my.execute(f"SELECT COUNT(*), COUNT(DISTINCT id), SUM(id) FROM {name}")[0] == (
        ROWS,
        ROWS,
        ROWS * (ROWS - 1) // 2,
    )
    assert eventually(lambda: my_alive(my, killed_threads)) == []


def test_my_server_gone_mid_replace_leaves_the_old_table_and_no_build_table(
    mysql_url, my, my_tables
):
    leftovers_before = my_leftovers(my)
    name = my_tables("fault")
    my.execute(f"CREATE TABLE {name} (id BIGINT, v TEXT)")
    my.execute(f"INSERT INTO {name} VALUES (1, 'old')")
    with open_backend(mysql_url) as db:

        def batches():
            for start in range(0, 5000, 1000):
                if start == 3000:
                    assert my_kill(my, db) >= 1
                yield numbers(start, start + 1000)

        with pytest.raises(TargetError, match="unchanged.*run it again"):
            db.write(name, batches(), mode="replace")
        threads = my_threads(db)
        assert my_busy(my, threads) == []
    assert my.execute(f"SELECT * FROM {name}") == [(1, "old")]
    assert my_leftovers(my) <= leftovers_before
    assert eventually(lambda: my_alive(my, threads)) == []


def test_my_table_dropped_mid_read_waits_for_the_reader(mysql_url, my, my_tables, mysql_plain):
    """As in PostgreSQL: the drop waits for the read's metadata lock, which the stream releases."""
    name = my_tables("fault")
    my_fill(my, name)
    dropped = threading.Event()

    def drop() -> None:
        other = mysql_plain(mysql_url)
        try:
            other.execute(f"DROP TABLE {name}")
        finally:
            other.close()
        dropped.set()

    with open_backend(mysql_url, budget=SMALL_BUDGET) as db:
        stream = db.batches(name)
        rows = next(stream).num_rows
        dropper = threading.Thread(target=drop)
        dropper.start()
        time.sleep(0.3)
        assert not dropped.is_set()
        for batch in stream:
            rows += batch.num_rows
        assert rows == ROWS
        dropper.join(SERVER_WIND_DOWN_S)
        assert dropped.is_set()
        with pytest.raises(NotFoundError, match="check the table name"):
            next(db.batches(name))
        assert my_busy(my, my_threads(db)) == []


def test_my_constraint_violation_mid_upsert(mysql_url, my, my_tables):
    name = my_tables("fault")
    my.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
    bad = pa.record_batch({"id": pa.array([500], pa.int64()), "v": pa.array([None], pa.string())})
    with open_backend(mysql_url) as db:
        with pytest.raises(PartialWriteError, match="cannot be null") as caught:
            db.write(
                name,
                [numbers(0, 300), numbers(300, 400), bad, numbers(400, 500)],
                mode="upsert",
                key="id",
            )
        assert my_busy(my, my_threads(db)) == []
    assert (caught.value.rows_committed, caught.value.resume_after) == (400, (399,))
    assert my.execute(f"SELECT COUNT(*), MAX(id) FROM {name}") == [(400, 399)]


def test_my_refused_login_says_what_to_do(mysql_url):
    parts = urlsplit(mysql_url)
    url = f"mysql://mb_no_such_user:s3cretpw@{parts.hostname}:{parts.port or 3306}{parts.path}"
    with pytest.raises(SourceError, match="check the user name and password") as caught:
        open_backend(url)
    assert "s3cretpw" not in str(caught.value) and "***" in str(caught.value)


# -- the generic SQLAlchemy backend, on PostgreSQL through psycopg -------------------------------


@pytest.fixture
def sa_backend(postgres_url):
    pytest.importorskip("sqlalchemy")
    from membound.backends.sqlalchemy import SQLAlchemyBackend
    from membound.urls import parse_url

    def make(budget=SMALL_BUDGET, user: str | None = None):
        base = postgres_url.split("://", 1)[1]
        if user:
            base = user + "@" + base.split("@", 1)[-1]
        url, app = with_app("postgresql+psycopg://" + base)
        return SQLAlchemyBackend(parse_url(url), budget=budget), app

    return make


def test_sa_server_gone_mid_read(sa_backend, pg, pg_tables):
    name = pg_tables()
    pg_fill(pg, name)
    db, app = sa_backend()
    with db:
        stream = db.batches(name)
        next(stream)
        assert pg_terminate(pg, app) == 1
        with pytest.raises(SourceError, match="lost the connection.*run it again"):
            for _ in stream:
                pass
        assert list(db.rows(f"SELECT count(*) AS n FROM {name}")) == [(ROWS,)]
    assert eventually(lambda: pg_sessions(pg, app)) == []


def test_sa_server_gone_mid_append_and_replace(sa_backend, pg, pg_tables):
    """The backend holds no connection between batches (NullPool): the server ends the one an
    INSERT is running on, from SQLAlchemy's own hook before the 4th batch's statement."""
    import sqlalchemy as sa

    leftovers_before = pg_leftovers(pg)
    name = pg_tables()
    pg.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
    db, app = sa_backend()
    inserts = {"count": 0, "kill_at": 4}

    @sa.event.listens_for(db.engine, "before_cursor_execute")
    def kill_before_insert(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT"):
            inserts["count"] += 1
            if inserts["count"] == inserts["kill_at"]:
                assert pg_terminate(pg, app) == 1

    with db:
        batches = [numbers(start, start + 1000) for start in range(0, 5000, 1000)]
        with pytest.raises(PartialWriteError, match="resume_after") as caught:
            db.write(name, batches, mode="append", key="id")
        assert (caught.value.rows_committed, caught.value.resume_after) == (3000, (2999,))
        assert pg.execute(f"SELECT count(*), max(id) FROM {name}").fetchone() == (3000, 2999)

        inserts.update(count=0, kill_at=3)
        with pytest.raises(TargetError, match="unchanged.*run it again"):
            db.write(name, batches, mode="replace")
        assert pg.execute(f"SELECT count(*) FROM {name}").fetchone() == (3000,)
        assert pg_leftovers(pg) <= leftovers_before
    assert eventually(lambda: pg_sessions(pg, app)) == []


def test_sa_refused_login_says_what_to_do(sa_backend):
    with pytest.raises(SourceError, match="check the user name and password"):
        sa_backend(user="mb_no_such_user:s3cretpw")
