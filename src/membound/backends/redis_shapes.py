"""The tables of a Redis keyspace: one shape per Redis type, and the rows of its replies.

Shared by the backend (:mod:`membound.backends.redis`), its readers
(:mod:`membound.backends.redis_read`) and its writer (:mod:`membound.backends.redis_write`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from membound.errors import SchemaError

__all__ = ["BY_TYPE", "SHAPES", "Shape", "reply_rows", "show_key", "wrong_type"]


@dataclass(frozen=True)
class Shape:
    """One table of the keyspace: the Redis type it holds and its columns."""

    name: str
    redis_type: str
    columns: tuple[str, ...]  # after "key"
    size_command: str | None = None  # HLEN...; None for strings


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape("strings", "string", ("value",)),
        Shape("hashes", "hash", ("field", "value"), "HLEN"),
        Shape("lists", "list", ("index", "value"), "LLEN"),
        Shape("sets", "set", ("member",), "SCARD"),
        Shape("zsets", "zset", ("member", "score"), "ZCARD"),
        Shape("streams", "stream", ("id", "field", "value"), "XLEN"),
    )
}
BY_TYPE = {shape.redis_type: shape for shape in SHAPES.values()}


def reply_rows(shape: Shape, key: bytes, reply: Any, start: int) -> Iterator[tuple]:
    """The rows of one collection reply (a flat list as the server sends it)."""
    name = shape.name
    if name == "hashes":
        if isinstance(reply, dict):
            reply = [x for pair in reply.items() for x in pair]
        for i in range(0, len(reply), 2):
            yield key, reply[i], reply[i + 1]
    elif name == "lists":
        for offset, value in enumerate(reply):
            yield key, start + offset, value
    elif name == "sets":
        for member in reply:
            yield (key, member)
    elif name == "zsets":
        if reply and isinstance(reply[0], tuple):
            reply = [x for pair in reply for x in pair]
        for i in range(0, len(reply), 2):
            yield key, reply[i], float(reply[i + 1])
    else:  # streams: [(id, [f, v, f, v...]), ...]
        for entry_id, fields in reply:
            if isinstance(fields, dict):
                fields = [x for pair in fields.items() for x in pair]
            for i in range(0, len(fields), 2):
                yield key, entry_id, fields[i], fields[i + 1]


def show_key(key: bytes | None) -> str:
    """A key for a message: its text (undecodable bytes escaped), cut at 80 characters."""
    if key is None:
        return "?"
    text = key.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def wrong_type(key: bytes | None, found: str | None, *, wanted: Shape | None = None
               ) -> SchemaError:
    """The error for a key that holds another Redis type than the table's."""
    holds = f"holds a {found}" if found else "holds another type"
    want = f"; table={wanted.name} reads and writes {wanted.redis_type} keys" if wanted else ""
    fix = f", or read it with table={BY_TYPE[found].name}" if found in BY_TYPE else ""
    return SchemaError(f"Redis key {show_key(key)} {holds}{want}: choose another key{fix}")
