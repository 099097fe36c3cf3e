"""Writing to Redis: commands queued in pipelines, sent by bytes and argument count.

Strings go by ``MSET`` (``MSETNX`` in mode ``fail``) of up to :data:`COMMAND_MAX_ELEMENTS`
pairs, or ``SET ... EX`` with a TTL; collections by variadic ``HSET``/``RPUSH``/``SADD``/
``ZADD``, streams by one ``XADD`` per entry. With modes ``fail`` and ``replace`` a collection is
built aside under a temporary key and renamed into place, so each key changes at once. Every
reply is checked: the count of rows written is exact, and a failure after some rows raises
:class:`PartialWriteError` with the last key written.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from membound.backends.base import WriteResult
from membound.backends.kv import as_bytes_column
from membound.backends.redis_resp import pack_commands
from membound.backends.redis_shapes import Shape, show_key, wrong_type
from membound.budget import Budget
from membound.errors import PartialWriteError, SchemaError, TargetError, TargetExistsError
from membound.memory import gc_paused

if TYPE_CHECKING:
    from membound.backends.redis import RedisBackend

__all__ = ["RedisWriter"]

# A pipeline is sent once it holds this many arguments (Redis' own guidance: about 10k commands
# per round trip) or the batch target of bytes, whichever comes first.
PIPELINE_MAX_ARGS = 20_000
# Elements per variadic command (HSET, RPUSH, SADD, ZADD, MSET): long enough to amortise the
# command, short enough that the server never blocks on one.
COMMAND_MAX_ELEMENTS = 1000
# Temporary keys ("replace" and "fail" build a collection aside) expire after this long if the
# process dies before renaming them into place.
TEMP_KEY_TTL_S = 24 * 3600
TEMP_PREFIX = b"__membound_tmp__:"
# Keys looked at per SCAN call when this run's temporary keys are removed after a failure.
CLEANUP_SCAN_COUNT = 1000


class RedisWriter:
    """One write: commands queued in a pipeline, sent by bytes and argument count."""

    def __init__(self, backend: RedisBackend, client: Any, shape: Shape, mode: str,
                 budget: Budget) -> None:
        self.backend = backend
        self.client = client
        self.shape = shape
        self.mode = mode
        self.ttl = backend.ttl
        self.flush_bytes = budget.batch_bytes
        self.aside = mode in ("fail", "replace") and shape.name != "strings"
        self.run_id = uuid.uuid4().hex[:12].encode()
        self.done_set = TEMP_PREFIX + self.run_id + b":done"
        self.result: WriteResult | None = None
        self.connection = client.connection
        # Commands waiting to be sent, and the (kind, key, rows) of a sent pipeline whose
        # replies are not read yet: the server applies it while the next one is built. Not in
        # mode "fail", where a refused key must stop the write before anything more is sent.
        self.commands: list[tuple] = []
        self.in_flight: list[tuple[str, bytes, int]] | None = None
        self.overlap = mode != "fail"
        # What the queued commands are: (kind, key, rows) for each, to check the replies.
        self.queued: list[tuple[str, bytes, int]] = []
        self.queued_args = 0
        self.queued_bytes = 0
        self.committed = 0
        self.last_key: bytes | None = None
        # The command being built: key, its arguments, rows they carry.
        self.current: tuple[bytes, bytes] | None = None  # (key, stream entry id or b"")
        self.args: list = []
        self.rows_in_args = 0
        self.temp_key: bytes | None = None
        self.key_rows = 0  # rows of the key being built aside
        self.sent_any = False

    # -- feeding -------------------------------------------------------------------------------

    def add_batch(self, batch: pa.RecordBatch) -> None:
        if self.shape.name == "strings":
            self._add_strings(batch)
        else:
            self._add_collection(batch)

    def _add_strings(self, batch: pa.RecordBatch) -> None:
        keys, values = self.backend.fmt.columns(batch)
        if None in values:
            key = keys[values.index(None)]
            raise SchemaError(f"Redis cannot store a NULL value (key {show_key(key)}); "
                              "filter or fill NULLs first")
        if self.ttl:
            only_new = ("NX",) if self.mode == "fail" else ()
            for key, value in zip(keys, values, strict=True):
                self._queue(("SET", key, value, "EX", self.ttl, *only_new),
                            "set", key, 1, len(key) + len(value))
            return
        # MSET groups, cut from the lists whole: no Python work per pair.
        start, total = 0, len(keys)
        while start < total:
            rows = min(COMMAND_MAX_ELEMENTS, total - start)
            while True:
                group_keys = keys[start:start + rows]
                group_values = values[start:start + rows]
                nbytes = sum(map(len, group_keys)) + sum(map(len, group_values))
                if nbytes <= self.flush_bytes or rows == 1:
                    break
                rows //= 2  # big values: fewer pairs per MSET
            group: list = [None] * (2 * rows)
            group[::2] = group_keys
            group[1::2] = group_values
            self._queue_mset(group, rows, nbytes, group_keys[-1])
            start += rows

    def _queue_mset(self, group: list, rows: int, nbytes: int, last: bytes) -> None:
        command = "MSETNX" if self.mode == "fail" else "MSET"
        self._queue((command, *group), command.lower(), last, rows, nbytes)

    def _add_collection(self, batch: pa.RecordBatch) -> None:
        shape = self.shape
        names = batch.schema.names
        fmt = self.backend.fmt
        value_name = fmt.value_column if "value" in shape.columns else (
            "member" if fmt.value_column == "value" else fmt.value_column)
        pair_fmt = replace(fmt, value_column=value_name)
        pairs = list(pair_fmt.pairs(batch))
        extra: dict[str, list] = {}
        for column in shape.columns:
            if column in ("value", "member"):
                continue
            if column not in names:
                if column == "index" or (column == "id" and shape.name == "streams"):
                    extra[column] = [None] * batch.num_rows
                    continue
                raise SchemaError(
                    f"writing {shape.name} to Redis needs a {column!r} column; the data has "
                    f"{', '.join(names)}"
                )
            data = batch.column(column)
            if column == "field":
                extra[column] = as_bytes_column(data, column)
            elif column == "score":
                extra[column] = data.cast(pa.float64()).to_pylist()
            elif column == "id":
                extra[column] = [None if v is None else str(v).encode()
                                 for v in data.to_pylist()]
            else:
                extra[column] = data.to_pylist()
        for i, (key, value) in enumerate(pairs):
            if value is None:
                raise SchemaError(f"Redis cannot store a NULL {value_name} (key {show_key(key)})")
            if shape.name == "hashes":
                field = extra["field"][i]
                if field is None:
                    raise SchemaError(f"a hash field is NULL (key {show_key(key)})")
                self._element(key, b"", (field, value))
            elif shape.name == "zsets":
                score = extra["score"][i]
                if score is None:
                    raise SchemaError(f"a sorted-set score is NULL (key {show_key(key)})")
                self._element(key, b"", (repr(score).encode(), value))
            elif shape.name == "streams":
                field = extra["field"][i]
                if field is None:
                    raise SchemaError(f"a stream field is NULL (key {show_key(key)})")
                self._element(key, extra["id"][i] or b"*", (field, value))
            else:  # lists, sets
                self._element(key, b"", (value,))

    def _element(self, key: bytes, entry: bytes, items: tuple) -> None:
        if self.current is None or self.current[0] != key or (
                self.shape.name == "streams" and (entry != self.current[1] or entry == b"*")):
            self._end_command()
            if self.current is None or self.current[0] != key:
                if self.current is not None:
                    self._end_key()
                self._start_key(key)
            self.current = (key, entry)
        self.args.extend(items)
        self.rows_in_args += 1
        if self.shape.name != "streams" and self.rows_in_args >= COMMAND_MAX_ELEMENTS:
            self._end_command()

    def _start_key(self, key: bytes) -> None:
        self.key_rows = 0
        self.temp_key = TEMP_PREFIX + self.run_id + b":" + key if self.aside else None

    def _end_command(self) -> None:
        if not self.args or self.current is None:
            return
        key, entry = self.current
        target = self.temp_key or key
        command = {"hashes": ("HSET", target), "lists": ("RPUSH", target),
                   "sets": ("SADD", target), "zsets": ("ZADD", target),
                   "streams": ("XADD", target, entry)}[self.shape.name]
        nbytes = sum(len(a) for a in self.args)
        rows = 0 if self.aside else self.rows_in_args
        first = self.key_rows == 0
        self.key_rows += self.rows_in_args
        self._queue((*command, *self.args), "write", key, rows, nbytes)
        if first and self.temp_key is not None:
            # Left behind by a process that dies before the rename, it goes away by itself.
            self._queue(("EXPIRE", self.temp_key, TEMP_KEY_TTL_S), "expire", key, 0, 0)
        self.args = []
        self.rows_in_args = 0

    def _end_key(self) -> None:
        """The current key has all its rows: set its TTL, move it into place."""
        self._end_command()
        assert self.current is not None
        key = self.current[0]
        if self.temp_key is not None:
            if self.ttl:
                self._queue(("EXPIRE", self.temp_key, self.ttl), "expire", key, 0, 0)
            else:
                self._queue(("PERSIST", self.temp_key), "persist", key, 0, 0)
            self._queue(("SADD", self.done_set, key), "seen", key, 0, 0)
            self._queue(("EXPIRE", self.done_set, TEMP_KEY_TTL_S), "expire", key, 0, 0)
            rename = "RENAMENX" if self.mode == "fail" else "RENAME"
            self._queue((rename, self.temp_key, key), rename.lower(), key, self.key_rows, 0)
            self.temp_key = None
        elif self.ttl:
            self._queue(("EXPIRE", key, self.ttl), "expire", key, 0, 0)

    def finish(self) -> None:
        if self.current is not None:
            self._end_key()
            self.current = None
        self._flush()
        self._collect()
        if self.aside:
            with contextlib.suppress(Exception):
                self.client.delete(self.done_set)

    # -- sending -------------------------------------------------------------------------------

    def _queue(self, command: tuple, kind: str, key: bytes, rows: int, nbytes: int) -> None:
        self.commands.append(command)
        self.queued.append((kind, key, rows))
        self.queued_args += len(command)
        self.queued_bytes += nbytes
        if self.queued_args >= PIPELINE_MAX_ARGS or self.queued_bytes >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        """Send the queued commands as one pipeline (reading the replies of the last one)."""
        self._collect()
        if not self.queued:
            return
        queued, self.queued = self.queued, []
        commands, self.commands = self.commands, []
        self.queued_args = self.queued_bytes = 0
        self.sent_any = True
        with gc_paused(), self.backend._errors("writing to", reading=False):
            packed = pack_commands(self.connection, commands)
            del commands
            self.connection.send_packed_command(packed)
        self.in_flight = queued
        if not self.overlap:
            self._collect()

    def _collect(self) -> None:
        """Read the replies of the pipeline in flight; count its rows, raise its first error."""
        if self.in_flight is None:
            return
        from redis.exceptions import ResponseError

        queued, self.in_flight = self.in_flight, None
        replies: list[Any] = []
        with gc_paused(), self.backend._errors("writing to", reading=False):
            for _ in queued:
                try:
                    replies.append(self.connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        assert self.result is not None
        # Every command of a pipeline ran, whatever failed before it: count all that worked
        # before raising the first failure, so the count of written rows is exact.
        error: Exception | None = None
        for (kind, key, rows), reply in zip(queued, replies, strict=True):
            problem = self._problem(kind, key, reply)
            if problem is not None:
                error = error or problem
                continue
            self.committed += rows
            self.result.rows += rows
            if rows:
                self.last_key = key
        if error is not None:
            raise error

    def _problem(self, kind: str, key: bytes, reply: Any) -> Exception | None:
        if isinstance(reply, Exception):
            text = str(reply)
            if text.startswith("WRONGTYPE"):
                return wrong_type(key, None, wanted=self.shape)
            return TargetError(f"Redis at {self.backend.address} refused a write to key "
                               f"{show_key(key)}: {text}")
        if kind == "msetnx" and reply == 0:
            return TargetExistsError(
                "a key in the data already exists in Redis (MSETNX wrote none of its group, "
                f"which ends with {show_key(key)}); use mode 'upsert' or 'replace' to overwrite "
                "keys"
            )
        if kind == "set" and reply is None:
            return TargetExistsError(f"Redis key {show_key(key)} already exists; use mode "
                                     "'upsert' or 'replace' to overwrite it")
        if kind == "renamenx" and reply == 0:
            return TargetExistsError(f"Redis key {show_key(key)} already exists; use mode "
                                     "'replace' to overwrite it or 'append' to add to it")
        if kind == "seen" and reply == 0:
            return SchemaError(
                f"the rows of Redis key {show_key(key)} do not come together in the data, so a "
                "later group replaced an earlier one; sort the data by key"
            )
        return None

    # -- failure -------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop what is queued; remove the collection being built aside (best effort)."""
        self.commands = []
        if self.in_flight is not None:
            # Replies still on the way would be read as the answers to later commands.
            self.in_flight = None
            with contextlib.suppress(Exception):
                self.connection.disconnect()
        if self.aside:
            # This run's temporary keys (a few: the one being built, any a failed rename left).
            with contextlib.suppress(Exception):
                for key in self.client.scan_iter(match=TEMP_PREFIX + self.run_id + b":*",
                                                 count=CLEANUP_SCAN_COUNT):
                    self.client.unlink(key)

    def report(self, exc: BaseException) -> BaseException:
        """The exception to raise: a PartialWriteError when some rows were written."""
        if not isinstance(exc, Exception):
            return exc
        broken = isinstance(exc, TargetError) and not isinstance(
            exc, (TargetExistsError, PartialWriteError)) and self.sent_any
        if self.committed == 0 and not broken:
            return exc
        last = self.last_key
        resume = (self.backend.fmt.to_batch([last], [b""]).column(0)[0].as_py(),) \
            if last is not None else None
        lost = " (the pipeline in flight when the connection broke may have been applied in " \
            "part; writing again with mode 'upsert' is safe for strings, hashes, sets and zsets)"
        return PartialWriteError(
            f"{self.mode} to Redis at {self.backend.address} stopped after {self.committed} "
            f"rows were written, the last for key {show_key(last)}: {exc}"
            + (lost if broken else ""),
            rows_committed=self.committed,
            resume_after=resume,
        )


# -- helpers --------------------------------------------------------------------------------------
