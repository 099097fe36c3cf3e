"""Reading a Redis keyspace: string values by sized ``MGET``, collections whole or in steps.

**Strings.** Keys come by ``SCAN ... TYPE string``, one page at a time; values by plain ``MGET``,
whose replies are read off the socket here, value by value, instead of by redis-py (which
would build the whole reply first): a batch is handed on as soon as it is full, mid-reply, and
a value larger than the batch target is read alone straight into an Arrow buffer. So this
process holds about a batch whatever the values' sizes. The keys per ``MGET`` follow the
largest value of the last reply, so the server's reply buffer stays small too; ``fetch=script``
(or ``pipeline``) measures every key first and sizes each ``MGET`` by the known lengths, a
bound for the server as well, at about twice its CPU. Two ``MGET`` commands are kept in flight: the
server works on the next while this process turns the last one into Arrow.

**Collections.** A collection's size and memory (``MEMORY USAGE``) decide between one whole read
(grouped by bytes with other small keys) and a scan of it in steps sized from its average
element.

SCAN may return a key twice (while Redis resizes a table): duplicates are removed within one
page, not across pages.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import accumulate, compress
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from membound.backends.kv import PAIR_OVERHEAD, PairBatcher, _utf8, binary_array
from membound.backends.redis_resp import (
    RespReader,
    bulk_list_size,
    pack_commands,
    scan_reply_size,
)
from membound.backends.redis_shapes import SHAPES, Shape, reply_rows, wrong_type
from membound.budget import Budget
from membound.errors import NotFoundError, SchemaError, SourceError

if TYPE_CHECKING:
    from membound.backends.redis import RedisBackend

__all__ = ["RAW_COMMANDS", "CollectionReader", "StringReader", "identity"]

# Keys asked for per SCAN call when the URL gives no count=: a page of keys is small (tens of
# kB) and a round trip per thousand keys costs nothing measurable.
SCAN_COUNT = 1000
# A SCAN whose page comes back less than half full (a match= that selects few keys) has its
# COUNT doubled, up to this many keys and to the batch target over SCAN_KEY_BYTES: a sparse
# pattern over a big keyspace would otherwise cost a round trip per few keys.
SCAN_COUNT_MAX = 50_000
SCAN_KEY_BYTES = 200  # a key's bytes and its Python object, as a page of keys holds them
# Keys per MGET at most, and keys whose lengths one script call measures (fetch=script): long
# enough to amortise the round trip, short enough that the server never blocks for long.
FETCH_KEYS = 2000
# Values asked for in one MGET: about this share of the batch target (by the largest value of
# the last reply, or by known lengths with fetch=script/pipeline), so the server's reply buffer
# stays small; this process is bounded anyway, as it parses replies off the socket.
ROUND_SHARE = 4
# An MGET reply that arrives whole within this share of the batch target is parsed by hiredis in
# one call; a bigger one (a value far larger than the last reply's) value by value. It holds the
# reply's bytes, hiredis's copy and the values at once: under half the target, and replies are
# sized to a quarter of it (ROUND_SHARE). On 1M values of 32-192 B, parsing value by value in
# Python cost about as much as everything else in the read.
WHOLE_REPLY_SHARE = 2
# Keys in the first MGET, before any value size is known.
MGET_FIRST_KEYS = 64
# MGETs sent ahead of the one being read: the server works on the next while this process
# turns the last one into Arrow.
MGETS_AHEAD = 2
# A collection with at most this many elements may be read whole (HGETALL, SMEMBERS...), if
# its MEMORY USAGE also fits the batch target; a bigger one is scanned step by step.
WHOLE_MAX_ELEMENTS = 10_000
# Bounds for the COUNT of HSCAN/SSCAN/ZSCAN, LRANGE windows and XRANGE pages.
STEP_MIN = 10
STEP_MAX = 10_000

# The lengths of string keys, one reply of integers: -2 for a key that is no longer a string
# (retyped since the SCAN); a deleted key measures 0 (its MGET then says nil, and it is skipped).
LENGTHS_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.pcall('STRLEN', key)
  if type(n) == 'table' then out[i] = -2 else out[i] = n end
end
return out
"""

RAW_COMMANDS = ("HGETALL", "SMEMBERS", "ZRANGE", "XRANGE", "HSCAN", "SSCAN", "ZSCAN")

_GLOB = re.compile(rb"[*?\[\\]")
_WRONG_TYPE = -2


def identity(response: Any, **options: Any) -> Any:
    """A response callback that keeps the reply as the server sent it."""
    return response


class _KeyReader:
    """What both readers share: the backend, its client and the SCAN of the keyspace."""

    def __init__(self, backend: RedisBackend, client: Any) -> None:
        self.backend = backend
        self.client = client

    def _single_key(self, shape: Shape) -> bytes | None:
        """The key a ``match=`` without wildcards names (checked), or None for a pattern."""
        pattern = self.backend.match.encode()
        if _GLOB.search(pattern):
            return None
        with self.backend._errors("reading", reading=True):
            found = self.client.type(pattern).decode()
        if found == "none":
            raise NotFoundError(f"no key {self.backend.match!r} in Redis database "
                                f"{self.backend.address}")
        if found != shape.redis_type:
            raise wrong_type(pattern, found, wanted=shape)
        return pattern

    def _count_ceiling(self, budget: Budget) -> int:
        if self.backend.count_given:
            return self.backend.count
        return max(self.backend.count,
                   min(SCAN_COUNT_MAX, budget.batch_bytes // SCAN_KEY_BYTES))

    def key_pages(self, shape: Shape, budget: Budget) -> Iterator[list[bytes]]:
        """Pages of keys of the shape's type, by SCAN (deduplicated within a page)."""
        single = self._single_key(shape)
        if single is not None:
            yield [single]
            return
        pattern = self.backend.match.encode()
        count = self.backend.count
        ceiling = self._count_ceiling(budget)
        cursor = 0
        while True:
            with self.backend._errors("scanning keys of", reading=True):
                cursor, keys = self.client.scan(cursor, match=pattern, count=count,
                                                _type=shape.redis_type)
            count = _next_count(count, len(keys), ceiling)
            if keys:
                yield list(dict.fromkeys(keys))
            if cursor == 0:
                return


def _next_count(count: int, found: int, ceiling: int) -> int:
    """The COUNT of the next SCAN: doubled (up to ``ceiling``) after a page under half full."""
    return min(ceiling, count * 2) if found < count // 2 else count


class StringReader(_KeyReader):
    """The ``strings`` table: SCAN pages, values by MGET streamed off the socket, one ahead."""

    def __init__(self, backend: RedisBackend, client: Any) -> None:
        super().__init__(backend, client)
        self.mode = backend.fetch
        # Keys scanned, not yet asked for (mget) or measured (script, pipeline).
        self.scanned: deque[bytes] = deque()
        # script/pipeline: keys measured, values not yet asked: known_keys[head:], known_lengths.
        self.known_keys: list[bytes] = []
        self.known_lengths: list[int] = []
        self.head = 0
        self.cursor = 0
        self.scan_done = False
        self.biggest = 0  # the largest value of the last MGET reply
        self.replies: RespReader | None = None

    def batches(self, budget: Budget) -> Iterator[pa.RecordBatch]:
        """Byte-sized batches of every string key ``match=`` selects."""
        backend = self.backend
        batcher = PairBatcher(backend.fmt, budget)
        round_bytes = max(1, batcher.target // ROUND_SHARE)
        self.whole_limit = max(1, batcher.target // WHOLE_REPLY_SHARE)
        single = self._single_key(SHAPES["strings"])
        if single is not None:
            self.scanned.append(single)
            self.scan_done = True
        pattern = backend.match.encode()
        count = backend.count if backend.count_given else max(backend.count, FETCH_KEYS)
        ceiling = max(count, self._count_ceiling(budget))
        connection = self.client.connection
        if connection._sock is None:  # dropped by an earlier read that was left unfinished
            connection.connect()
        replies = self.replies = RespReader(connection._sock)
        inflight: deque[tuple[str, Any]] = deque()
        try:
            while True:
                commands: list[tuple] = []
                while True:
                    kinds = [kind for kind, _ in inflight]
                    group_keys = self._group_size(round_bytes)
                    if (not self.scan_done and "scan" not in kinds
                            and len(self.scanned) < 2 * group_keys):
                        commands.append(("SCAN", self.cursor, "MATCH", pattern, "COUNT", count,
                                         "TYPE", "string"))
                        inflight.append(("scan", None))
                        continue
                    if self.mode != "mget" and "lengths" not in kinds and self.scanned \
                            and len(self.known_keys) - self.head < FETCH_KEYS:
                        ask = [self.scanned.popleft()
                               for _ in range(min(FETCH_KEYS, len(self.scanned)))]
                        if self.mode == "script":
                            commands.append(("EVAL", LENGTHS_SCRIPT, len(ask), *ask))
                        else:
                            commands.extend(("STRLEN", key) for key in ask)
                        inflight.append(("lengths", ask))
                        continue
                    if kinds.count("mget") < MGETS_AHEAD:
                        group = self._take_group(group_keys, round_bytes)
                        if group:
                            commands.append(("MGET", *group))
                            inflight.append(("mget", group))
                            continue
                    break
                if commands:
                    connection.send_packed_command(pack_commands(connection, commands))
                if not inflight:
                    break
                kind, payload = inflight.popleft()
                if kind == "mget":
                    # The server works on the next MGET while this one becomes Arrow.
                    yield from self._read_values(payload, batcher)
                elif kind == "scan":
                    # A page of keys is held whole either way; hiredis parses it in C.
                    page = replies.whole(batcher.target, scan_reply_size)
                    cursor, keys = replies.scan_reply() if page is False else page
                    self.cursor = int(cursor)
                    self.scan_done = self.cursor == 0
                    self.scanned.extend(dict.fromkeys(keys))
                    count = _next_count(count, len(keys), ceiling)
                else:
                    self._read_lengths(payload)
            last = batcher.flush()
            if last is not None:
                yield last
        except OSError as exc:  # the socket: timeouts, resets
            raise SourceError(f"reading strings from Redis at {backend.address} failed: {exc}; "
                              "is the server running?") from exc
        finally:
            if inflight:
                # Replies still on the way would be read as the answers to later commands.
                connection.disconnect()

    def _group_size(self, round_bytes: int) -> int:
        """Keys per MGET (mget mode): a round's bytes at the size of the last reply's largest."""
        if not self.biggest:
            return MGET_FIRST_KEYS
        return max(1, min(FETCH_KEYS, round_bytes // self.biggest))

    def _take_group(self, group_keys: int, round_bytes: int) -> list[bytes]:
        """The keys of the next MGET: by count (mget), or by known lengths (at least one)."""
        if self.mode == "mget":
            scanned = self.scanned
            return [scanned.popleft() for _ in range(min(group_keys, len(scanned)))]
        head = self.head
        lengths = self.known_lengths[head:head + FETCH_KEYS]
        if not lengths:
            return []
        if min(lengths) >= 0:
            taken = max(1, bisect_right(list(accumulate(lengths)), round_bytes))
            group = self.known_keys[head:head + taken]
        else:  # keys retyped since the SCAN among them: key by key
            group = []
            used = taken = 0
            for length in lengths:
                if length != _WRONG_TYPE:
                    if group and used + length > round_bytes:
                        break
                    group.append(self.known_keys[head + taken])
                    used += length
                taken += 1
        self.head = head + taken
        if self.head == len(self.known_keys):
            self.known_keys, self.known_lengths, self.head = [], [], 0
        return group

    def _read_lengths(self, ask: list[bytes]) -> None:
        assert self.replies is not None
        if self.mode == "script":
            lengths = self.replies.reply()
            if isinstance(lengths, Exception):
                if not _scripting_denied(lengths):
                    raise SourceError(f"reading strings from Redis at {self.backend.address}: "
                                      f"the server said {lengths}")
                self.mode = "pipeline"  # scripts are off or not allowed: STRLEN by STRLEN
                self.scanned.extendleft(reversed(ask))
                return
        else:
            lengths = [self.replies.reply() for _ in ask]
            lengths = [_WRONG_TYPE if isinstance(n, Exception) else n for n in lengths]
        if self.head:
            del self.known_keys[:self.head], self.known_lengths[:self.head]
            self.head = 0
        self.known_keys.extend(ask)
        self.known_lengths.extend(lengths)

    def _read_values(self, keys: list[bytes], batcher: PairBatcher
                     ) -> Iterator[pa.RecordBatch]:
        """One MGET reply, parsed off the socket value by value into the batcher.

        A batch is handed on as soon as it is full, mid-reply; a value above the batch target
        is read alone into an Arrow buffer. So memory holds a batch and a read chunk, whatever
        the values' sizes.
        """
        replies = self.replies
        assert replies is not None
        values = replies.whole(self.whole_limit, bulk_list_size)
        if isinstance(values, list) and len(values) == len(keys):
            yield from self._whole_values(keys, values, batcher)
            return
        header = replies.line()
        if header[:1] != b"*":
            raise SourceError(f"reading strings from Redis at {self.backend.address}: the "
                              f"server said {header[1:].decode(errors='replace')}")
        total = int(header[1:])
        large = batcher.target
        got_keys: list[bytes] = []
        got_values: list[bytes] = []
        room = batcher.target - batcher.nbytes
        used = biggest = index = 0
        while index < total:
            buf, pos = replies.buf, replies.pos
            end = len(buf)
            size = stop = 0
            while index < total:  # the values already in the buffer, without a call each
                crlf = buf.find(b"\r\n", pos)
                if crlf < 0:
                    break
                size = int(buf[pos + 1:crlf])
                if size < 0:  # deleted since the SCAN, or not a string
                    pos = crlf + 2
                    index += 1
                    continue
                stop = crlf + 2 + size
                if size > large or stop + 2 > end or used + size > room:
                    break
                got_keys.append(keys[index])
                got_values.append(buf[crlf + 2:stop])
                used += size + PAIR_OVERHEAD
                if size > biggest:
                    biggest = size
                pos = stop + 2
                index += 1
            replies.pos = pos
            if index == total:
                break
            if crlf >= 0 and (size > large or (used + size > room and got_keys)
                              or (used + size > room and batcher.nbytes)):
                # The batch is full, or a value must go alone: hand on what is collected.
                batch = batcher.extend(got_keys, got_values) if got_keys else None
                if batch is None:
                    batch = batcher.flush()
                got_keys, got_values, used = [], [], 0
                room = batcher.target
                if batch is not None:
                    yield batch
                    del batch
                if size > large:
                    biggest = max(biggest, size)
                    replies.pos = crlf + 2
                    yield self._alone(keys[index], replies.bulk(size))
                    index += 1
                continue
            replies.more()  # a header or a value not fully received yet
        if got_keys:
            batch = batcher.extend(got_keys, got_values)
            if batch is not None:
                yield batch
        self.biggest = biggest

    def _whole_values(
        self, keys: list[bytes], values: list[bytes | None], batcher: PairBatcher
    ) -> Iterator[pa.RecordBatch]:
        """One MGET reply parsed whole (under half the batch target) into the batcher."""
        if None in values:  # deleted since the SCAN, or not a string
            present = [value is not None for value in values]
            keys = list(compress(keys, present))
            values = list(compress(values, present))
        self.biggest = max(map(len, values), default=0)
        size = sum(map(len, keys)) + sum(map(len, values)) + PAIR_OVERHEAD * len(keys)
        if batcher.nbytes and batcher.nbytes + size > batcher.target:
            batch = batcher.flush()
            if batch is not None:
                yield batch
                del batch
        if keys:
            batch = batcher.extend(keys, values)
            if batch is not None:
                yield batch

    def _alone(self, key: bytes, data: pa.Buffer) -> pa.RecordBatch:
        """A one-row batch of a value read into its own buffer."""
        fmt = self.backend.fmt
        if fmt.value_codec is not None:
            return fmt.to_batch([key], [data.to_pybytes()])
        offsets = pa.py_buffer(array("i", [0, data.size]))
        values = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, data])
        if fmt.values == "text":
            values = _utf8(values, "value")
        keys = binary_array([key])
        if fmt.keys == "text":
            keys = _utf8(keys, "key")
        return pa.RecordBatch.from_arrays([keys, values], names=[fmt.key_column, fmt.value_column])


class CollectionReader(_KeyReader):
    """Hashes, lists, sets, zsets and streams: small keys whole, big ones in steps."""

    def batches(self, shape: Shape, budget: Budget) -> Iterator[pa.RecordBatch]:
        """Rows of every key of the shape's type, read whole or in steps by its size."""
        client = self.client
        builder = RowBuilder(self.backend, shape, budget.batch_bytes)
        target = builder.target
        for page in self.key_pages(shape, budget):
            with self.backend._errors("reading", reading=True):
                sizes = _pipelined(client, [(shape.size_command, key) for key in page])
                usage = _pipelined(client, [
                    ("MEMORY", "USAGE", key, *(("SAMPLES", 0) if 0 < size <= WHOLE_MAX_ELEMENTS
                                                else ()))
                    for key, size in zip(page, sizes, strict=True)
                ])
            whole: list[bytes] = []
            whole_bytes = 0
            for key, size, memory in zip(page, sizes, usage, strict=True):
                if isinstance(size, Exception) or not size:
                    continue  # retyped or deleted since the SCAN
                memory = memory if isinstance(memory, int) else None
                if shape.name != "streams" and size <= WHOLE_MAX_ELEMENTS and memory is not None \
                        and memory <= target:
                    if whole and whole_bytes + memory > target:
                        yield from self._read_whole(client, shape, whole, builder)
                        whole, whole_bytes = [], 0
                    whole.append(key)
                    whole_bytes += memory
                    continue
                yield from self._read_whole(client, shape, whole, builder)
                whole, whole_bytes = [], 0
                per_element = (memory or 64 * size) / size
                step = int(max(STEP_MIN, min(STEP_MAX, target // (2 * max(per_element, 1)))))
                for rows in self._read_steps(client, shape, key, step):
                    for row in rows:
                        batch = builder.add(row)
                        if batch is not None:
                            yield batch
            yield from self._read_whole(client, shape, whole, builder)
        last = builder.flush()
        if last is not None:
            yield last

    def _read_whole(self, client: Any, shape: Shape, keys: list[bytes],
                    builder: RowBuilder) -> Iterator[pa.RecordBatch]:
        if not keys:
            return
        command = {"hashes": ("HGETALL",), "lists": ("LRANGE", 0, -1), "sets": ("SMEMBERS",),
                   "zsets": ("ZRANGE", 0, -1, "WITHSCORES")}[shape.name]
        with self.backend._errors("reading", reading=True):
            replies = _pipelined(client, [(command[0], key, *command[1:]) for key in keys])
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                continue  # retyped since the SCAN
            for row in reply_rows(shape, key, reply, 0):
                batch = builder.add(row)
                if batch is not None:
                    yield batch
        del replies

    def _read_steps(self, client: Any, shape: Shape, key: bytes, step: int
                    ) -> Iterator[list[tuple]]:
        """Rows of one big collection, ``step`` elements per round trip."""
        with self.backend._errors("reading", reading=True, key=key):
            if shape.name == "lists":
                start = 0
                while True:
                    items = client.execute_command("LRANGE", key, start, start + step - 1)
                    if not items:
                        return
                    yield list(reply_rows(shape, key, items, start))
                    start += len(items)
            elif shape.name == "streams":
                low = b"-"
                while True:
                    entries = client.execute_command("XRANGE", key, low, b"+", "COUNT", step)
                    if not entries:
                        return
                    yield list(reply_rows(shape, key, entries, 0))
                    low = b"(" + entries[-1][0]
                    if len(entries) < step:
                        return
            else:
                command = {"hashes": "HSCAN", "sets": "SSCAN", "zsets": "ZSCAN"}[shape.name]
                cursor = b"0"
                while True:
                    cursor, items = client.execute_command(command, key, cursor, "COUNT", step)
                    if shape.name == "sets":
                        items = list(dict.fromkeys(items))
                    else:
                        # pairs; a field seen twice in one reply is kept once
                        pairs = dict(zip(items[::2], items[1::2], strict=True))
                        items = [x for pair in pairs.items() for x in pair]
                    yield list(reply_rows(shape, key, items, 0))
                    if cursor in (b"0", 0):
                        return

    # -- writing -------------------------------------------------------------------------------


class RowBuilder:
    """Rows of one shape into byte-sized record batches, typed by the backend's KVFormat."""

    def __init__(self, backend: RedisBackend, shape: Shape, target: int) -> None:
        self.backend = backend
        self.shape = shape
        self.target = target
        self.schema = backend.schema(shape.name)
        self.columns: list[list] = [[] for _ in self.schema]
        self.nbytes = 0

    def add(self, row: tuple) -> pa.RecordBatch | None:
        size = PAIR_OVERHEAD
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)
            if isinstance(value, bytes):
                size += len(value)
        self.nbytes += size
        if self.nbytes >= self.target:
            return self.flush()
        return None

    def flush(self) -> pa.RecordBatch | None:
        if not self.columns[0]:
            return None
        columns = self.columns
        self.columns = [[] for _ in self.schema]
        self.nbytes = 0
        fmt = self.backend.fmt
        value_index = next(i for i, c in enumerate(self.shape.columns, 1)
                           if c in ("value", "member"))
        # The key and value columns go through KVFormat, so keys=/values=/value_codec= apply.
        pair = fmt.to_batch(columns[0], columns[value_index])
        arrays = []
        for i, field in enumerate(self.schema):
            if i == 0:
                arrays.append(pair.column(0))
            elif i == value_index:
                arrays.append(pair.column(1))
            elif field.name == "field":
                array = pa.array(columns[i], pa.binary())
                if self.backend.fields == "text":
                    try:
                        array = array.cast(pa.string())
                    except pa.ArrowInvalid:
                        raise SchemaError("a hash or stream field name is not valid UTF-8; "
                                          "read with fields=bytes") from None
                arrays.append(array)
            elif field.name == "id":
                arrays.append(pa.array(columns[i], pa.binary()).cast(pa.string()))
            else:
                arrays.append(pa.array(columns[i], field.type))
        return pa.RecordBatch.from_arrays(arrays, names=self.schema.names)


def _pipelined(client: Any, commands: Sequence[tuple]) -> list:
    """Run commands in one pipeline round trip; a command's error is returned, not raised."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)


def _scripting_denied(exc: Exception) -> bool:
    text = str(exc).upper()
    return any(word in text for word in ("NOPERM", "UNKNOWN COMMAND", "NOSCRIPT", "DISABLED"))
