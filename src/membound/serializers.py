"""Serializers: Python values to bytes and back, the first half of a :mod:`membound.codecs` codec.

Each serializer has a ``name`` (used in codec names such as ``"msgpack+zstd"``) and a one-byte
``codec_id`` (written in every payload's header, so the ids below must never be reused):

======  ==========  ==============================================================
id      name        takes
======  ==========  ==============================================================
0       bytes       bytes-like values, unchanged (for ``get_codec("zstd")``)
1       json        JSON values; orjson when installed, the stdlib otherwise
2       msgpack     JSON values plus bytes, int keys, NaN, aware datetimes
3       protobuf    instances of one message class
4       arrow       ``pyarrow.Table`` or ``pyarrow.RecordBatch`` (Arrow IPC stream)
5       pickle      any picklable value, and only with ``trusted=True``
======  ==========  ==============================================================

Serializers may raise anything on bad input; :class:`~membound.codecs.Codec` turns every failure
into :class:`~membound.errors.CodecError`. Use them through a codec, not on their own.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import pickle
import struct
import uuid
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import pyarrow as pa

from membound.errors import CodecError, MissingDriverError

__all__ = [
    "ArrowSerializer",
    "BytesSerializer",
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "ProtobufSerializer",
    "Serializer",
]

Buffer = bytes | bytearray | memoryview

# orjson's limits, applied to the stdlib path too, so that both backends accept the same values:
# integers must fit in 64 bits (signed or unsigned) and containers may nest this deep.
JSON_INT_MIN = -(2**63)
JSON_INT_MAX = 2**64 - 1
JSON_MAX_DEPTH = 254

# Pickle protocol 5 (Python 3.8+) writes large buffers without an extra copy.
PICKLE_PROTOCOL = 5

# Protocol Buffers bodies start with the message's full name, prefixed by its length in one
# byte; full names are dotted identifiers, and none in practice comes near 255 bytes.
_PROTOBUF_NAME_LENGTH = struct.Struct("<B")

# Arrow bodies start with one byte saying what was written, so a RecordBatch comes back as a
# RecordBatch and a Table as a Table.
_ARROW_TABLE = b"T"
_ARROW_BATCH = b"B"


class Serializer(ABC):
    """Turns values into bytes and back. Subclasses set ``name`` and ``codec_id``."""

    name: ClassVar[str]
    codec_id: ClassVar[int]

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; raise on a value this format cannot hold."""

    @abstractmethod
    def loads(self, data: Buffer) -> Any:
        """Deserialize ``data``; raise on anything that is not a whole, valid value."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BytesSerializer(Serializer):
    """Bytes in, bytes out: the serializer behind compressor-only codecs such as ``"zstd"``."""

    name = "bytes"
    codec_id = 0

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise CodecError(
                f"the {self.name!r} codecs take bytes, not {type(obj).__name__}; "
                "serialize first, or use a codec such as 'msgpack+zstd'"
            )
        return bytes(obj)

    def loads(self, data: Buffer) -> bytes:
        return bytes(data)


def _import_orjson() -> Any:
    try:
        import orjson
    except ImportError:
        return None
    return orjson


def _reject_for_json(obj: Any) -> Any:
    """orjson's ``default`` hook: refuse what the stdlib path refuses too."""
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON has no {name}")


def _plain_json(obj: Any, depth: int = 0) -> Any:
    """Check ``obj`` against orjson's rules and return what the stdlib must write.

    orjson writes Enums as their value, UUIDs as strings and NaN/Infinity as null, refuses
    non-str keys, float and tuple subclasses and integers outside 64 bits, and stops at 254
    levels of nesting; the stdlib does otherwise on every point, hence this walk.
    """
    if depth > JSON_MAX_DEPTH:
        raise CodecError(f"JSON values may nest at most {JSON_MAX_DEPTH} levels deep")
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, enum.Enum):
        return _plain_json(obj.value, depth)
    if isinstance(obj, int):
        if not JSON_INT_MIN <= obj <= JSON_INT_MAX:
            raise CodecError(f"JSON integers must fit in 64 bits, {obj} does not; use msgpack")
        return int(obj)
    if type(obj) is float:
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        plain = {}
        for key, value in obj.items():
            if type(key) is not str:
                raise CodecError(f"JSON object keys must be str, got {type(key).__name__}")
            plain[key] = _plain_json(value, depth + 1)
        return plain
    if isinstance(obj, list) or type(obj) is tuple:
        return [_plain_json(item, depth + 1) for item in obj]
    if isinstance(obj, uuid.UUID):
        return str(obj)
    raise CodecError(
        f"JSON cannot hold a {type(obj).__name__} value; convert it first, "
        "or use the 'arrow' or 'msgpack' codecs"
    )


class JsonSerializer(Serializer):
    """JSON as compact UTF-8, through orjson when it is installed and the stdlib otherwise.

    Both backends take the same values and decode each other's output to equal values: dicts
    with str keys, lists and tuples (read back as lists), str, bool, None, 64-bit integers,
    floats, Enums (written as their value) and UUIDs (as strings). NaN and Infinity, which JSON
    cannot spell, become ``null`` as orjson and ``JSON.stringify`` write them: use msgpack when
    they must survive. The bytes can differ in how a float is spelled (``1e16`` or ``1e+16``).

    ``backend``: ``"auto"`` (orjson if installed), ``"orjson"`` (raises
    :class:`MissingDriverError` without it) or ``"stdlib"``.
    """

    name = "json"
    codec_id = 1

    def __init__(self, *, backend: Literal["auto", "orjson", "stdlib"] = "auto") -> None:
        if backend not in ("auto", "orjson", "stdlib"):
            raise CodecError(f"backend must be 'auto', 'orjson' or 'stdlib', got {backend!r}")
        orjson = None if backend == "stdlib" else _import_orjson()
        if backend == "orjson" and orjson is None:
            raise MissingDriverError("orjson", extra="codecs")
        self._orjson = orjson
        self._requested = backend
        self.backend = "orjson" if orjson is not None else "stdlib"

    def __repr__(self) -> str:
        return f"JsonSerializer(backend={self.backend!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the request, so "auto" picks again in the process that unpickles it.
        return (functools.partial(JsonSerializer, backend=self._requested), ())

    def dumps(self, obj: Any) -> bytes:
        if self._orjson is not None:
            options = self._orjson.OPT_PASSTHROUGH_DATETIME | self._orjson.OPT_PASSTHROUGH_DATACLASS
            return self._orjson.dumps(obj, default=_reject_for_json, option=options)
        text = json.dumps(
            _plain_json(obj),
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
            check_circular=False,  # _plain_json returned a fresh tree
        )
        return text.encode("utf-8")

    def loads(self, data: Buffer) -> Any:
        if self._orjson is not None:
            return self._orjson.loads(data)
        # Decode strictly as UTF-8 first: json.loads(bytes) would also guess UTF-16/32 and skip
        # a byte-order mark, which orjson refuses.
        return json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)


def _import_msgpack() -> Any:
    try:
        import msgpack
    except ImportError:
        raise MissingDriverError("msgpack", extra="codecs") from None
    return msgpack


class MsgpackSerializer(Serializer):
    """MessagePack: JSON's values plus bytes, non-str keys, NaN and timezone-aware datetimes.

    Tuples come back as lists; aware datetimes come back in UTC (equal instants); naive
    datetimes are refused, as MessagePack's timestamp has no "local" meaning.
    """

    name = "msgpack"
    codec_id = 2

    def __init__(self) -> None:
        self._msgpack = _import_msgpack()

    def __reduce__(self) -> tuple[Any, ...]:
        return (MsgpackSerializer, ())

    def dumps(self, obj: Any) -> bytes:
        return self._msgpack.packb(obj, use_bin_type=True, datetime=True)

    def loads(self, data: Buffer) -> Any:
        # strict_map_key=False: dumps writes int keys, so loads must read them back.
        return self._msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)


def _protobuf_class_named(full_name: str) -> type:
    """The message class for ``full_name`` from protobuf's default descriptor pool."""
    try:
        from google.protobuf import descriptor_pool, message_factory
    except ImportError:
        raise MissingDriverError("protobuf", extra="codecs") from None
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        raise CodecError(
            f"the payload holds a {full_name!r} Protocol Buffers message, which is not known "
            "here; import its _pb2 module first, or decode with "
            "get_codec('protobuf', message=ThatClass)"
        ) from None
    return message_factory.GetMessageClass(descriptor)


class ProtobufSerializer(Serializer):
    """Protocol Buffers messages of one class: ``ProtobufSerializer(MyMessage)``.

    The body starts with the message's full name (a byte of length, then the name), so a payload
    of another message type is refused instead of being parsed into nonsense, and
    :func:`~membound.codecs.decode_any` can find the class in protobuf's default pool. Encoding
    is deterministic (map fields sorted), so equal messages give equal bytes.
    """

    name = "protobuf"
    codec_id = 3

    def __init__(self, message_class: type) -> None:
        descriptor = getattr(message_class, "DESCRIPTOR", None)
        full_name = getattr(descriptor, "full_name", None)
        if not isinstance(full_name, str) or not hasattr(message_class, "FromString"):
            raise CodecError(
                f"{message_class!r} is not a Protocol Buffers message class; pass the generated "
                "class, e.g. ProtobufSerializer(my_pb2.Row)"
            )
        encoded_name = full_name.encode("utf-8")
        if len(encoded_name) > 255:
            raise CodecError(f"the message name {full_name!r} is over 255 bytes")
        self.message_class = message_class
        self.full_name = full_name
        self._prefix = _PROTOBUF_NAME_LENGTH.pack(len(encoded_name)) + encoded_name

    def __repr__(self) -> str:
        return f"ProtobufSerializer({self.full_name})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ProtobufSerializer, (self.message_class,))

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, self.message_class):
            raise CodecError(
                f"this codec writes {self.full_name} messages, not {type(obj).__name__}"
            )
        return self._prefix + obj.SerializeToString(deterministic=True)

    @staticmethod
    def message_name(data: Buffer) -> str:
        """The full message name a protobuf body starts with."""
        view = memoryview(data)
        if len(view) < 1 or len(view) < 1 + view[0]:
            raise CodecError("a Protocol Buffers payload is too short to hold its message name")
        return bytes(view[1 : 1 + view[0]]).decode("utf-8")

    def loads(self, data: Buffer) -> Any:
        found = self.message_name(data)
        if found != self.full_name:
            raise CodecError(
                f"the payload holds a {found} message, this codec reads {self.full_name}"
            )
        return self.message_class.FromString(bytes(memoryview(data)[len(self._prefix) :]))

    @classmethod
    def for_payload(cls, data: Buffer) -> ProtobufSerializer:
        """The serializer for the message class named in ``data`` (default descriptor pool)."""
        return cls(_protobuf_class_named(cls.message_name(data)))


class ArrowSerializer(Serializer):
    """Arrow IPC stream format for ``pyarrow.Table`` and ``pyarrow.RecordBatch``.

    Types, nulls and schema metadata survive exactly. Decoded arrays are zero-copy views of the
    decoded payload, which stays in memory as long as they do; they are fully validated first,
    so a damaged body cannot produce arrays that crash later.
    """

    name = "arrow"
    codec_id = 4

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, pa.Table):
            kind = _ARROW_TABLE
        elif isinstance(obj, pa.RecordBatch):
            kind = _ARROW_BATCH
        else:
            raise CodecError(
                f"the 'arrow' codecs take a pyarrow Table or RecordBatch, not {type(obj).__name__}"
            )
        sink = pa.BufferOutputStream()
        sink.write(kind)
        with pa.ipc.new_stream(sink, obj.schema) as writer:
            writer.write(obj)
        return sink.getvalue().to_pybytes()

    def loads(self, data: Buffer) -> pa.Table | pa.RecordBatch:
        view = memoryview(data)
        if not isinstance(view.obj, bytes):
            # The arrays will be views of this memory: copy a mutable buffer, so a caller who
            # reuses it cannot change a decoded table under its holders.
            view = memoryview(bytes(view))
        kind = bytes(view[:1])
        if kind not in (_ARROW_TABLE, _ARROW_BATCH):
            raise CodecError("an Arrow payload must start with its kind, T or B")
        reader = pa.ipc.open_stream(pa.py_buffer(view[1:]))
        batches = list(reader)
        if kind == _ARROW_BATCH:
            if len(batches) != 1:
                raise CodecError(f"an Arrow RecordBatch payload holds {len(batches)} batches")
            batches[0].validate(full=True)
            return batches[0]
        table = pa.Table.from_batches(batches, schema=reader.schema)
        table.validate(full=True)
        return table


class PickleSerializer(Serializer):
    """Pickle, for any picklable value, and only with ``trusted=True``.

    Unpickling runs code named by the payload: whoever can write a payload this serializer reads
    can run anything in this process. Use it only for data this program wrote itself to storage
    nobody else can write to. Without ``trusted=True`` the constructor raises
    :class:`CodecError`.
    """

    name = "pickle"
    codec_id = 5

    def __init__(self, *, trusted: bool = False) -> None:
        if trusted is not True:
            raise CodecError(
                "pickle runs code while loading, so a payload from anyone else can take over "
                "this process; pass trusted=True only for data this program wrote to storage "
                "nobody else can write, or use 'msgpack', 'json' or 'arrow'"
            )

    def __repr__(self) -> str:
        return "PickleSerializer(trusted=True)"

    def __reduce__(self) -> tuple[Any, ...]:
        # Only a trusted instance exists to be pickled, so the copy is trusted too.
        return (functools.partial(PickleSerializer, trusted=True), ())

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)

    def loads(self, data: Buffer) -> Any:
        return pickle.loads(data)


# By name and by header id; ids are written into payloads, so they never change meaning.
SERIALIZERS: dict[str, type[Serializer]] = {
    cls.name: cls
    for cls in (
        BytesSerializer,
        JsonSerializer,
        MsgpackSerializer,
        ProtobufSerializer,
        ArrowSerializer,
        PickleSerializer,
    )
}
SERIALIZERS_BY_ID: dict[int, type[Serializer]] = {cls.codec_id: cls for cls in SERIALIZERS.values()}
