"""MySQL's binary protocol through MariaDB Connector/Python (``mariadb``): Python values -> Arrow.

:mod:`membound.backends.mysql` reads through this connector when it is installed. With
``cursor(binary=True)`` every statement is a server-side prepared statement, so the server sends
numbers and dates in binary (half the server CPU of the text protocol) and the connector's C
code turns them into Python ints, floats, datetimes, Decimals, str and bytes. This module turns
those columns into Arrow arrays without ``pa.array`` (which makes pyarrow import pandas, +50 MB
of RSS): numpy takes numbers and times (``np.array(values, dtype=...)``), text and bytes are
joined into one buffer with offsets from their lengths, and Arrow adopts those buffers
(``pa.Array.from_buffers``).

The connector (1.1.x) has three faults a reader must work around:

- **Errors after the first row are not raised.** When the server ends a result with an error
  (``KILL QUERY``, a lost connection, "Subquery returns more than 1 row"), ``fetchmany`` returns
  the rows so far plus one *phantom* row and reports the end of the result. The phantom row is
  a tuple of the previous row's objects, without references of its own (its items are NULL if
  no row came before). :class:`Fetcher` asks the server for the statement's error once the
  result ends (``SHOW ERRORS``, on the read's own connection), and owns the phantom's items
  before any of it is freed, so nothing is freed twice.
- **Zero dates raise inside the fetch** (``0000-00-00`` -> Python's ``date(0, 0, 0)``), losing
  the whole fetch. Table reads select date columns as integers (:func:`as_epoch_integer`),
  which is also 100x cheaper to convert; a query with date columns is read through the text
  protocol instead (the caller's choice).
- ``%%`` and PyMySQL's sequence parameters are not understood: :func:`qmark` translates
  membound's ``%s`` / ``%(name)s`` style into ``?`` and a tuple.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

try:  # pyarrow does not require numpy; this path does (the mysql-fast extra installs it)
    import numpy as np
except ImportError:  # pragma: no cover - numpy comes with the extra
    np = None  # type: ignore[assignment]

from membound.errors import ConfigurationError, SchemaError

__all__ = [
    "DATE_TYPE_CODES",
    "Fetcher",
    "StatementError",
    "EPOCH_TYPES",
    "as_epoch_integer",
    "describe",
    "epoch_converter",
    "import_mariadb",
    "qmark",
    "values_converter",
]

# MySQL protocol type codes of DATE, DATETIME, TIMESTAMP and NEWDATE: values the connector turns
# into Python dates, which cannot hold MySQL's zero dates.
DATE_TYPE_CODES = frozenset({7, 10, 12, 14})
_BIT = 16
_MICROSECONDS_PER_DAY = 86_400_000_000


def import_mariadb() -> Any:
    """MariaDB Connector/Python, the binary-protocol read path; None when it (or numpy, which
    the conversion needs) is not installed."""
    if np is None:  # pragma: no cover - numpy comes with the mysql-fast extra
        return None
    try:
        import mariadb
        import mariadb.connections
    except ImportError:
        return None
    return mariadb


class StatementError(Exception):
    """The error a result ended with, as the server reported it: ``args`` are (code, message)."""


class _Field:
    """A result column of the connector in the shape of PyMySQL's field packet (for the
    backend's ``_column_for``)."""

    __slots__ = ("name", "type_code", "length", "scale", "flags", "charsetnr")

    def __init__(self, description: tuple, charsetnr: int) -> None:
        self.name = description[0]
        self.type_code = description[1]
        self.length = max(description[3] or 0, 0)
        self.scale = description[5] or 0
        self.flags = description[7]
        # 63 (binary) marks bytes, which the connector gives as bytes; text with a binary
        # collation keeps its text character set and arrives as str.
        self.charsetnr = charsetnr


def describe(cursor: Any) -> list[_Field]:
    """The executed ``cursor``'s result columns: ``description`` (11 fields here, flags at index
    7) and the character set of each from ``metadata``."""
    description = cursor.description or ()
    charsets = (cursor.metadata or {}).get("charset") or (0,) * len(description)
    return [_Field(d, c) for d, c in zip(description, charsets, strict=True)]


# A table's DATE and DATETIME/TIMESTAMP columns are selected as integers since the Unix epoch:
# Python dates cannot hold MySQL's zero dates (the connector fails the whole fetch), and numpy
# takes datetime objects at ~5 us each against ~0.05 us for ints. Zero dates, and dates with a
# zero month or day or past the month's end, come out NULL.
EPOCH_TYPES = {"date": pa.date32(), "datetime": pa.timestamp("us"), "timestamp": pa.timestamp("us")}


def as_epoch_integer(quoted_column: str, data_type: str) -> str:
    """The select-list item reading a DATE (days) or DATETIME/TIMESTAMP (microseconds, in the
    session's time zone as the text protocol shows it) column as an integer since 1970-01-01."""
    c = quoted_column
    # "+ INTERVAL 0 DAY" makes the dates no calendar has (zero, 2024-00-10, 2024-02-30 under
    # ALLOW_INVALID_DATES) NULL, which DATEDIFF alone would roll over (2024-03-01).
    if data_type == "date":
        return f"DATEDIFF({c} + INTERVAL 0 DAY, '1970-01-01') AS {c}"
    return f"TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {c} + INTERVAL 0 DAY) AS {c}"


# -- parameters ----------------------------------------------------------------------------------

_FORMAT = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<kind>.)", re.DOTALL)


def qmark(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> tuple[str, tuple]:
    """membound's MySQL parameter style (PyMySQL's: ``%s``, ``%(name)s``, ``%%`` for ``%``, a
    sequence expanded to ``(v1, v2, ...)``) -> the connector's ``?`` placeholders and a tuple.

    Without parameters the statement is left as it is (``%`` needs no doubling), as PyMySQL
    does.
    """
    if params is None:
        return sql, ()
    values: list[Any] = []
    position = 0
    named = isinstance(params, Mapping)

    def placeholder(match: re.Match) -> str:
        nonlocal position
        name, kind = match.group("name"), match.group("kind")
        if kind == "%" and name is None:
            return "%"
        if kind != "s":
            raise ConfigurationError(
                f"unsupported placeholder {match.group(0)!r} in {sql[:200]!r}; write %s or "
                "%(name)s, and %% for a literal %"
            )
        if name is not None:
            if not named or name not in params:
                raise ConfigurationError(f"no parameter named {name!r} for {sql[:200]!r}")
            value = params[name]  # type: ignore[index]
        else:
            if named or position >= len(params):  # type: ignore[arg-type]
                raise ConfigurationError(
                    f"{sql[:200]!r} has more %s placeholders than the {len(params)} parameters"
                )
            value = params[position]  # type: ignore[index]
            position += 1
        if isinstance(value, list | tuple | set | frozenset):
            values.extend(value)
            return "(" + ", ".join("?" * len(value)) + ")"
        values.append(value)
        return "?"

    translated = _FORMAT.sub(placeholder, sql)
    if not named and position != len(params):  # type: ignore[arg-type]
        raise ConfigurationError(
            f"{sql[:200]!r} has {position} %s placeholders for {len(params)} parameters"
        )
    return translated, tuple(values)


# -- fetching ------------------------------------------------------------------------------------

_ITEMS_OFFSET = tuple.__basicsize__  # where a tuple's item pointers start (CPython)
_POINTER = ctypes.sizeof(ctypes.c_void_p)
_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None


def _has_null_item(row: tuple) -> bool:
    """Whether a tuple holds a NULL pointer (the connector's phantom row before any row)."""
    if sys.implementation.name != "cpython":  # pragma: no cover - the connector is CPython's
        return False
    base = id(row) + _ITEMS_OFFSET
    return any(
        ctypes.c_void_p.from_address(base + i * _POINTER).value is None for i in range(len(row))
    )


def _same_objects(row: tuple, other: tuple | None) -> bool:
    return (
        other is not None
        and len(other) == len(row)
        and all(a is b for a, b in zip(row, other, strict=True))
    )


class Fetcher:
    """``fetchmany`` over an unbuffered binary cursor that raises the errors the connector drops.

    ``check()`` runs once the result has ended (a short fetch): it raises :class:`StatementError`
    for the server's error, or the driver's error when the connection is gone. A row that may be
    the connector's phantom (all its items the very objects of the row before) is owned at once
    (its items get references of their own; for a genuine row these are shared small ints,
    ``None`` and the like, which lose nothing) and held back until the next fetch shows that
    the result went on or ended without an error.
    """

    def __init__(self, cursor: Any, check: Callable[[], None], date_columns: Sequence[str]):
        self._cursor = cursor
        self._check = check
        self._date_columns = date_columns
        self._held: tuple | None = None  # the connector's last row, whose objects a phantom shares
        self._carry: tuple | None = None  # a row held back until the result is known to go on
        self._ended = False
        self.closed = False

    def fetchmany(self, size: int) -> list[tuple]:
        if self._ended:
            return []
        size = max(size, 1)
        try:
            rows = self._cursor.fetchmany(size)
        except (SystemError, ValueError, OverflowError) as exc:
            # A value Python cannot hold (a date MySQL allows, such as 2024-02-30): the fetch's
            # rows are lost, so the read cannot go on.
            columns = ", ".join(map(repr, self._date_columns)) or "a column"
            raise SchemaError(
                f"the result holds a value Python cannot represent (in {columns}?): "
                f"{exc.__cause__ or exc}; read it through mysql+mysqlclient:// or cast it in "
                "the query"
            ) from None
        ended = len(rows) < size
        carry, self._carry = self._carry, None
        if rows:
            last = rows[-1]
            previous = rows[-2] if len(rows) > 1 else self._held
            if _has_null_item(last):
                # The phantom of a result that failed before its first row: never touched.
                rows.pop()
                ended = True
            elif _same_objects(last, previous):
                for item in last:
                    _incref(item)
                self._carry = rows.pop()
            self._held = last
        if carry is not None:
            rows.insert(0, carry)
        if ended:
            self._ended = True
            self.close()
            self._check()
            if self._carry is not None:
                rows.append(self._carry)  # a genuine row: the result ended without an error
                self._carry = None
        return rows

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cursor.close()


# -- Python values -> Arrow ----------------------------------------------------------------------


def _from_numpy(arrow_type: pa.DataType, data: np.ndarray, isnull: np.ndarray | None) -> pa.Array:
    """An Arrow array on numpy's buffers (no copy); ``isnull`` marks the nulls, if any."""
    nulls = 0 if isnull is None else int(np.count_nonzero(isnull))
    validity = pa.py_buffer(np.packbits(~isnull, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(
        arrow_type, len(data), [validity, pa.py_buffer(data)], null_count=nulls
    )


def _integers(values: Sequence[Any], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """``values`` as a numpy array of ``dtype`` (None as 0), and where the Nones are (None when
    there are none). Without Nones numpy reads the ints directly (``fromiter``: ~20 ns each,
    2.5x faster than ``np.array``)."""
    try:
        return np.fromiter(values, dtype, len(values)), None
    except TypeError:  # a None among them
        pass
    objects = np.array(values, dtype=object)
    isnull = objects == None  # noqa: E711 (elementwise)
    objects[isnull] = 0
    return objects.astype(dtype), isnull


def epoch_converter(arrow_type: pa.DataType, name: str) -> Callable[[Sequence[Any]], pa.Array]:
    """Days (date32) or microseconds (timestamp) since the epoch, from :func:`as_epoch_integer`."""
    return _ints(arrow_type, name, np.int32 if pa.types.is_date32(arrow_type) else np.int64)


def _ints(
    arrow_type: pa.DataType, name: str, dtype: Any = None
) -> Callable[[Sequence[Any]], pa.Array]:
    dtype = np.dtype(dtype or str(arrow_type))  # int8 ... uint64

    def convert(values: Sequence[Any]) -> pa.Array:
        try:
            return _from_numpy(arrow_type, *_integers(values, dtype))
        except (OverflowError, ValueError, TypeError) as exc:
            raise SchemaError(
                f"column {name!r} holds a value that does not fit {arrow_type}: {exc}"
            ) from None

    return convert


def _tinyints(name: str) -> Callable[[Sequence[Any]], pa.Array]:
    """Signed TINYINT: the connector (1.1.14) gives -128 to -1 as 128 to 255 (it reads the byte
    unsigned); the low byte of either form is the value."""
    widened = _ints(pa.int16(), name)

    def convert(values: Sequence[Any]) -> pa.Array:
        array = widened(values)
        data = np.frombuffer(array.buffers()[1], dtype=np.int16, count=len(array))
        validity = array.buffers()[0]
        return pa.Array.from_buffers(
            pa.int8(),
            len(array),
            [validity, pa.py_buffer(data.astype(np.int8))],
            null_count=array.null_count,
        )

    return convert


def _bools(values: Sequence[Any]) -> pa.Array:
    data, isnull = _integers(values, np.dtype(np.int16))  # TINYINT(1), as in _tinyints
    bits = pa.py_buffer(np.packbits(data != 0, bitorder="little"))
    nulls = 0 if isnull is None else int(np.count_nonzero(isnull))
    validity = pa.py_buffer(np.packbits(~isnull, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.bool_(), len(data), [validity, bits], null_count=nulls)


def _floats(arrow_type: pa.DataType) -> Callable[[Sequence[Any]], pa.Array]:
    dtype = np.float32 if arrow_type == pa.float32() else np.float64

    def convert(values: Sequence[Any]) -> pa.Array:
        data = np.fromiter(values, dtype, len(values))  # None -> NaN; MySQL stores no NaN
        return _from_numpy(arrow_type, data, np.isnan(data))

    return convert


def _temporal(arrow_type: pa.DataType, unit: str) -> Callable[[Sequence[Any]], pa.Array]:
    """Python dates and datetimes (slow in numpy, ~5 us each: tables read theirs as integers,
    and queries with dates are read in the text protocol, so this is only a safety net)."""

    def convert(values: Sequence[Any]) -> pa.Array:
        data = np.array(values, dtype=f"datetime64[{unit}]")  # None -> NaT
        ints = data.view(np.int64)
        return _from_numpy(
            arrow_type, ints.astype(np.int32) if unit == "D" else ints, np.isnat(data)
        )

    return convert


def _times(name: str) -> Callable[[Sequence[Any]], pa.Array]:
    """TIME arrives as a timedelta (-838:59:59 to 838:59:59); Arrow's time64 is a time of day."""

    def convert(values: Sequence[Any]) -> pa.Array:
        deltas = np.array(values, dtype="timedelta64[us]")  # None -> NaT
        isnull = np.isnat(deltas)
        data = deltas.view(np.int64)
        valid = data[~isnull]
        outside = (valid < 0) | (valid >= _MICROSECONDS_PER_DAY)
        if outside.any():
            text = _time_text(int(valid[outside.argmax()]))
            raise SchemaError(
                f"column {name!r} holds TIME {text!r}, outside a time of day; "
                f"cast it in the query, e.g. TIME_TO_SEC({name})"
            )
        return _from_numpy(pa.time64("us"), data, isnull)

    return convert


def _time_text(microseconds: int) -> str:
    sign = "-" if microseconds < 0 else ""
    seconds, micro = divmod(abs(microseconds), 1_000_000)
    hours, rest = divmod(seconds, 3600)
    text = f"{sign}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{micro:06d}" if micro else text


def _strings(arrow_type: pa.DataType, pool: pa.MemoryPool) -> Callable[[Sequence[Any]], pa.Array]:
    """str (text) or bytes (binary data) as a string or binary array.

    The values joined into one buffer, offsets from their lengths: 2-3x faster than Arrow's
    string builder (~60-200 ns a value against 170-430 ns measured). For text, lengths in
    characters are lengths in bytes when the joined text is ASCII (a flag of the str); other text,
    and values of another type (MySQL's JSON arrives as bytes), go through the string builder.
    """
    text = pa.types.is_string(arrow_type)
    empty: str | bytes = "" if text else b""

    def convert(values: Sequence[Any]) -> pa.Array:
        isnull = None
        filled = values
        joined = _joined(empty, values)
        if joined is None:  # a None among the values (or a value of another type)
            isnull = np.array(values, dtype=object) == None  # noqa: E711 (elementwise)
            filled = [empty if v is None else v for v in values]
            joined = _joined(empty, filled)
        if isinstance(joined, str):
            joined = joined.encode() if joined.isascii() else None
        if joined is None or len(joined) >= 2**31:
            builder = pa.lib.StringBuilder(pool)
            builder.append_values(values)
            array = builder.finish()
            if text:
                array.validate(full=True)  # the builder does not check UTF-8 of bytes
                return array
            return array.view(arrow_type)
        offsets = np.zeros(len(filled) + 1, dtype=np.int32)
        np.cumsum(np.fromiter(map(len, filled), np.int64, len(filled)), out=offsets[1:])
        nulls = 0 if isnull is None else int(np.count_nonzero(isnull))
        validity = pa.py_buffer(np.packbits(~isnull, bitorder="little")) if nulls else None
        return pa.Array.from_buffers(
            arrow_type,
            len(filled),
            [validity, pa.py_buffer(offsets), pa.py_buffer(joined)],
            null_count=nulls,
        )

    return convert


def _joined(empty: str | bytes, values: Sequence[Any]) -> str | bytes | None:
    try:
        return empty.join(values)
    except TypeError:
        return None


def _decimals(arrow_type: pa.DataType, pool: pa.MemoryPool) -> Callable[[Sequence[Any]], pa.Array]:
    def convert(values: Sequence[Any]) -> pa.Array:
        builder = pa.lib.StringBuilder(pool)
        builder.append_values([None if v is None else str(v) for v in values])
        return builder.finish().cast(arrow_type, memory_pool=pool)

    return convert


def _bits(name: str) -> Callable[[Sequence[Any]], pa.Array]:
    def convert(values: Sequence[Any]) -> pa.Array:
        ints = [None if v is None else int.from_bytes(v, "big") for v in values]
        return _ints(pa.int64(), name)(ints)

    return convert


def values_converter(
    arrow_type: pa.DataType, type_code: int, name: str, pool: pa.MemoryPool
) -> Callable[[Sequence[Any]], pa.Array] | None:
    """How a column of the connector's Python values becomes ``arrow_type`` (None: no way)."""
    if type_code == _BIT:
        return _bits(name)
    if arrow_type == pa.int8():
        return _tinyints(name)
    if pa.types.is_boolean(arrow_type):
        return _bools
    if pa.types.is_integer(arrow_type):
        return _ints(arrow_type, name)
    if pa.types.is_floating(arrow_type):
        return _floats(arrow_type)
    if pa.types.is_decimal(arrow_type):
        return _decimals(arrow_type, pool)
    if pa.types.is_date32(arrow_type):
        return _temporal(arrow_type, "D")
    if pa.types.is_timestamp(arrow_type):
        return _temporal(arrow_type, "us")
    if pa.types.is_time(arrow_type):
        return _times(name)
    if pa.types.is_null(arrow_type):
        return lambda values: pa.nulls(len(values))
    if pa.types.is_string(arrow_type) or pa.types.is_binary(arrow_type):
        return _strings(arrow_type, pool)
    return None
