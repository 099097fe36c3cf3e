"""RESP2 on the wire, for the Redis reader and writer: replies read off the socket, commands packed.

redis-py parses a reply only once it has all of it; :class:`RespReader` lets the string reader
take an ``MGET`` reply apart as it arrives, so a reply never has to fit in memory. A reply that
does arrive within a limit is parsed whole by hiredis (:meth:`RespReader.whole`), in C: the
common case of many small values, where a Python step per value would cost more than the rest
of the read.
:func:`pack_commands` packs commands with hiredis straight from their arguments when it is
installed (redis-py checks every argument in Python first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from membound.errors import SourceError

__all__ = ["RECV_BYTES", "RespReader", "bulk_list_size", "pack_commands", "scan_reply_size"]

# Bytes read from the socket at once.
RECV_BYTES = 256 * 1024


def pack_commands(connection: Any, commands: list[tuple]) -> list[bytes]:
    """Commands as RESP bytes: by hiredis straight from the arguments when it is installed."""
    try:
        from hiredis import pack_command
    except ImportError:
        return connection.pack_commands(commands)
    return [pack_command(command) for command in commands]


class RespReader:
    """RESP2 replies read straight off the connection's socket.

    redis-py parses a reply only once it has all of it; reading the socket here lets an MGET
    reply be taken apart as it arrives, so a reply never has to fit in memory.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def more(self) -> int:
        """Read what the server has sent next (keeping what is not consumed yet); its size."""
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionResetError("the server closed the connection")
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return len(data)

    def whole(self, limit: int, size: Callable[[Any], int]) -> Any:
        """The next reply parsed whole by hiredis, if it is complete in what was received or
        before ``limit`` bytes of it are.

        Returns False, having consumed nothing, when it is not (or is an error reply, or
        hiredis is missing): the caller then reads it value by value, from the bytes already
        received. ``size(reply)`` is the reply's length on the wire, to know where it ended.
        Memory: the bytes received (``limit``, or one socket read more), hiredis's copy of
        them and the reply's objects.
        """
        if _hiredis_reader is None:
            return False
        reader = _hiredis_reader()
        reader.feed(self.buf, self.pos)
        while True:
            reply = reader.gets()
            if reply is not False:
                break
            if len(self.buf) - self.pos >= limit:
                return False  # too big to parse whole: the caller streams it
            new = self.more()
            reader.feed(self.buf, len(self.buf) - new)
        if isinstance(reply, Exception):
            return False
        self.pos += size(reply)
        if self.pos == len(self.buf):
            self.buf, self.pos = b"", 0
        return reply

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos:end]
                self.pos = end + 2
                return line
            self.more()

    def bulk(self, size: int) -> pa.Buffer:
        """The ``size`` bytes of a bulk string whose header was read, into an Arrow buffer."""
        data = pa.allocate_buffer(size)
        view = memoryview(data).cast("B")
        have = min(size, len(self.buf) - self.pos)
        view[:have] = self.buf[self.pos:self.pos + have]
        self.pos += have
        if self.pos == len(self.buf):
            self.buf, self.pos = b"", 0
        while have < size:
            read = self.sock.recv_into(view[have:], min(RECV_BYTES * 16, size - have))
            if not read:
                raise ConnectionResetError("the server closed the connection")
            have += read
        view.release()
        self.line()  # the CRLF after the value
        return data

    def scan_reply(self) -> tuple[bytes, list[bytes]]:
        """A SCAN reply: the next cursor and the page of keys."""
        header = self.line()
        if header != b"*2":
            raise SourceError(f"SCAN failed: {header[1:].decode(errors='replace')}")
        cursor = self.reply()
        header = self.line()
        total = int(header[1:])
        keys: list[bytes] = []
        while len(keys) < total:
            buf, pos = self.buf, self.pos
            end = len(buf)
            while len(keys) < total:
                crlf = buf.find(b"\r\n", pos)
                if crlf < 0:
                    break
                stop = crlf + 2 + int(buf[pos + 1:crlf])
                if stop + 2 > end:
                    break
                keys.append(buf[crlf + 2:stop])
                pos = stop + 2
            self.pos = pos
            if len(keys) < total:
                self.more()
        return cursor, keys

    def reply(self) -> Any:
        """One whole (small) reply; an error reply is returned as a ResponseError."""
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) - self.pos < size + 2:
                self.more()
            value = self.buf[self.pos:self.pos + size]
            self.pos += size + 2
            return value
        if kind == b":":
            return int(rest)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        if kind == b"+":
            return rest
        from redis.exceptions import ResponseError

        return ResponseError(rest.decode(errors="replace"))


def bulk_list_size(items: list[bytes | None]) -> int:
    """The length on the wire of a RESP2 array of bulk strings (None: a nil) as Redis sends it."""
    present = [item for item in items if item is not None] if None in items else items
    lengths = list(map(len, present))
    # "*<n>\r\n", then "$<length>\r\n<bytes>\r\n" per string and "$-1\r\n" per nil.
    return (
        3 + len(str(len(items))) + 5 * len(items) + sum(lengths) + sum(map(len, map(str, lengths)))
    )


def scan_reply_size(reply: list) -> int:
    """The length on the wire of a SCAN reply: ``[cursor, [key, ...]]``."""
    # "*2\r\n", the cursor as a bulk string (a one-item array less its "*1\r\n"), the keys.
    return 4 + (bulk_list_size([reply[0]]) - 4) + bulk_list_size(reply[1])


def _reader_class() -> Any:
    try:
        from hiredis import Reader
    except ImportError:
        return None
    return Reader


_hiredis_reader = _reader_class()
