"""What the key-value backends (Redis, LevelDB, LMDB, RocksDB) share: the ``(key, value)`` table.

A key-value store is exposed as a table of two columns, ``key`` and ``value``, so ``copy`` works
between it and any other backend. Both columns are ``binary`` by default; the URL options

- ``keys=text`` / ``values=text`` make them UTF-8 ``string`` columns, and
- ``value_codec=msgpack+zstd`` (any :func:`membound.codecs.get_codec` name) decodes each stored
  value with that codec on read and encodes it on write.

On write, the ``key`` column may be binary or text (or the column named by ``key_column=``); the
``value`` column binary or text, or any type when a value codec is set. A source without a
``value`` column is written with each row's other columns as one dict per value, which needs a
value codec that can carry a dict (``msgpack``, ``json``).

:class:`PairBatcher` turns a stream of ``(key, value)`` pairs read from a store into Arrow record
batches sized in bytes: a batch is emitted once its keys and values reach the budget's batch
target, so a run of tiny values gives large batches. A value that alone reaches the target makes
a batch by itself when the caller flushes the pending pairs before adding it (as
:func:`batch_pairs` and the backends do).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import pyarrow as pa

from membound.budget import Budget
from membound.codecs import Codec, get_codec
from membound.errors import ConfigurationError, SchemaError

__all__ = [
    "KVFormat",
    "PairBatcher",
    "as_bytes_column",
    "batch_pairs",
    "binary_array",
    "encode_text",
]

# Per-pair overhead counted on top of the key and value bytes: the two Arrow offsets and the
# Python bytes objects the driver hands over before they are copied into Arrow.
PAIR_OVERHEAD = 80


def _flag(options: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = options.get(name, default).lower()
    if value not in allowed:
        raise ConfigurationError(
            f"URL option {name}={value!r} is not one of {', '.join(allowed)}"
        )
    return value


@dataclass(frozen=True)
class KVFormat:
    """How keys and values are typed in the ``(key, value)`` table of a key-value store."""

    keys: str = "bytes"
    values: str = "bytes"
    value_codec: Codec | None = None
    key_column: str = "key"
    value_column: str = "value"

    @classmethod
    def from_options(cls, options: dict[str, str]) -> KVFormat:
        """Read ``keys=``, ``values=``, ``value_codec=``, ``key_column=`` from URL options."""
        # A "+" in a URL's query string reads as a space: "msgpack+zstd" arrives "msgpack zstd".
        codec_name = (options.get("value_codec") or "").strip().replace(" ", "+") or None
        return cls(
            keys=_flag(options, "keys", ("bytes", "text"), "bytes"),
            values=_flag(options, "values", ("bytes", "text"), "bytes"),
            value_codec=get_codec(codec_name) if codec_name else None,
            key_column=options.get("key_column") or "key",
            value_column=options.get("value_column") or "value",
        )

    @property
    def key_type(self) -> pa.DataType:
        return pa.string() if self.keys == "text" else pa.binary()

    @property
    def value_type(self) -> pa.DataType | None:
        """The value column's type; None when a codec decodes values (inferred from them)."""
        if self.value_codec is not None:
            return None
        return pa.string() if self.values == "text" else pa.binary()

    def schema(self) -> pa.Schema:
        """The schema of the table a read produces (a codec's values are typed as binary here)."""
        return pa.schema(
            [(self.key_column, self.key_type), (self.value_column, self.value_type or pa.binary())]
        )

    # -- reading ------------------------------------------------------------------------------

    def to_batch(self, keys: list[bytes], values: list[bytes | None]) -> pa.RecordBatch:
        """Build a record batch from raw keys and values as the store returned them.

        Keys and values are taken from their joined bytes (:func:`binary_array`), not converted
        from Python objects, so pyarrow does not import pandas for it; only a value codec's
        decoded values go through ``pa.array``.
        """
        key_array = binary_array(keys)
        if self.keys == "text":
            key_array = _utf8(key_array, "key")
        if self.value_codec is not None:
            decode = self.value_codec.decode
            value_array = pa.array([None if v is None else decode(v) for v in values])
        else:
            value_array = binary_array(values)
            if self.values == "text":
                value_array = _utf8(value_array, "value")
        return pa.RecordBatch.from_arrays(
            [key_array, value_array], names=[self.key_column, self.value_column]
        )

    # -- writing ------------------------------------------------------------------------------

    def pairs(self, batch: pa.RecordBatch) -> Iterator[tuple[bytes, bytes | None]]:
        """The ``(key, value)`` pairs of a batch to write, as bytes (a NULL value stays None)."""
        keys, values = self.columns(batch)
        return zip(keys, values, strict=True)

    def columns(self, batch: pa.RecordBatch) -> tuple[list[bytes], list[bytes | None]]:
        """The keys and values of a batch to write, as two lists of bytes (NULL values: None).

        Raises :class:`SchemaError` for a missing key column or a NULL key.
        """
        names = batch.schema.names
        if self.key_column not in names:
            raise SchemaError(
                f"a key-value store needs a {self.key_column!r} column; the source has "
                f"{', '.join(names)}: rename one (SELECT id AS key ...) or set key_column="
            )
        keys = as_bytes_column(batch.column(self.key_column), self.key_column)
        if self.value_column in names:
            column = batch.column(self.value_column)
            if self.value_codec is not None:
                encode = self.value_codec.encode
                values = [None if v is None else encode(v) for v in column.to_pylist()]
            else:
                values = as_bytes_column(column, self.value_column)
        else:
            if self.value_codec is None:
                raise SchemaError(
                    f"the source has no {self.value_column!r} column; select one, or set "
                    "value_codec=msgpack (or json) to store each row's other columns as a dict"
                )
            rest = [name for name in names if name != self.key_column]
            encode = self.value_codec.encode
            values = [encode(row) for row in batch.select(rest).to_pylist()]
        if None in keys:
            raise SchemaError(f"a key-value store cannot hold a NULL {self.key_column!r}")
        return keys, values


def binary_array(items: list[bytes] | list[bytes | None]) -> pa.Array:
    """A binary array of byte strings (None: NULL) from their concatenation and 32-bit offsets.

    One join and one offsets array, in C, instead of ``pa.array`` over Python objects: faster,
    and pyarrow does not import pandas (about 50 MB) for it. A batch is far under 2 GiB
    (batches are at most 64 MB and a larger value comes alone), which 32-bit offsets require.
    """
    validity = None
    if None in items:  # rare (Redis: a key deleted between SCAN and MGET); bitmap by hand
        bits = 0
        for i, item in enumerate(items):
            if item is not None:
                bits |= 1 << i
        validity = pa.py_buffer(bits.to_bytes((len(items) + 7) // 8, "little"))
        items = [b"" if item is None else item for item in items]
    offsets = array("i", accumulate(map(len, items), initial=0))
    return pa.Array.from_buffers(
        pa.binary(),
        len(items),
        [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(items))],
    )


def _utf8(array: pa.Array, what: str) -> pa.Array:
    try:
        return array.cast(pa.string())
    except pa.ArrowInvalid as exc:
        raise SchemaError(
            f"a stored {what} is not valid UTF-8 text ({exc}); read with {what}s=bytes"
        ) from None


def as_bytes_column(column: pa.Array, name: str) -> list[bytes | None]:
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(
        kind
    ):
        return column.to_pylist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # The string's UTF-8 bytes, without a round trip through Python str objects.
        return column.cast(pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
                           ).to_pylist()
    if pa.types.is_integer(kind):
        return [None if v is None else str(v).encode() for v in column.to_pylist()]
    raise SchemaError(
        f"column {name!r} is {kind}; a key-value store takes bytes or text there: cast it, "
        "or set value_codec= to encode values"
    )


class PairBatcher:
    """Collect ``(key, value)`` pairs into byte-sized record batches."""

    def __init__(self, fmt: KVFormat, budget: Budget, *, max_rows: int = 1_000_000) -> None:
        self.fmt = fmt
        self.target = budget.batch_bytes
        self.max_rows = max_rows
        self.keys: list[bytes] = []
        self.values: list[bytes | None] = []
        self.nbytes = 0

    def add(self, key: bytes, value: bytes | None) -> pa.RecordBatch | None:
        """Add a pair; returns a full batch when the target is reached, else None."""
        self.keys.append(key)
        self.values.append(value)
        self.nbytes += len(key) + (len(value) if value is not None else 0) + PAIR_OVERHEAD
        if self.nbytes >= self.target or len(self.keys) >= self.max_rows:
            return self.flush()
        return None

    def extend(self, keys: list[bytes], values: list[bytes]) -> pa.RecordBatch | None:
        """Add many pairs at once (no NULL values); a batch when the target is reached.

        The caller keeps each call well under the target: the batch holds all of them.
        """
        self.keys += keys
        self.values += values
        self.nbytes += sum(map(len, keys)) + sum(map(len, values)) + PAIR_OVERHEAD * len(keys)
        if self.nbytes >= self.target or len(self.keys) >= self.max_rows:
            return self.flush()
        return None

    def flush(self) -> pa.RecordBatch | None:
        """The pairs collected so far as a batch (None when there are none)."""
        if not self.keys:
            return None
        keys, values = self.keys, self.values
        self.keys, self.values, self.nbytes = [], [], 0
        return self.fmt.to_batch(keys, values)


def batch_pairs(
    pairs: Iterator[tuple[bytes, bytes | None]], fmt: KVFormat, budget: Budget
) -> Iterator[pa.RecordBatch]:
    """Turn a stream of raw pairs into byte-sized record batches."""
    batcher = PairBatcher(fmt, budget)
    for key, value in pairs:
        if value is not None and len(value) >= batcher.target:
            pending = batcher.flush()
            if pending is not None:
                yield pending
        batch = batcher.add(key, value)
        if batch is not None:
            yield batch
    last = batcher.flush()
    if last is not None:
        yield last


def encode_text(value: Any) -> bytes:
    """A key or prefix given by the user as text or bytes, as bytes."""
    return value.encode() if isinstance(value, str) else bytes(value)
