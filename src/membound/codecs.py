"""Codecs: a serializer and an optional compressor behind one name, with a self-describing header.

``get_codec("msgpack+zstd")`` gives a :class:`Codec` whose ``encode(obj)`` returns bytes and whose
``decode(data)`` gives the value back. Names are ``serializer[+compressor[:level]]``, or a
compressor alone for bytes in and out (``"zstd"``, ``"lz4:9"``):

- serializers: ``bytes``, ``json``, ``msgpack``, ``protobuf`` (needs ``message=``), ``arrow``,
  ``pickle`` (needs ``trusted=True``) -- see :mod:`membound.serializers`;
- compressors: ``zlib``, ``gzip``, ``lz4``, ``zstd`` (optionally with a trained
  :class:`ZstdDictionary`) -- see :mod:`membound.compressors`.

Every payload starts with a 9-byte header (all integers little-endian)::

    offset  size  field
    0       2     magic b"\\x9bM"
    2       1     format version, 1
    3       1     serializer id (0 bytes, 1 json, 2 msgpack, 3 protobuf, 4 arrow, 5 pickle)
    4       1     compressor id (0 none, 1 zlib, 2 gzip, 3 lz4, 4 zstd)
    5       4     CRC-32 of bytes 0-4 followed by the body
    9       ...   body: the serialized value, compressed when that made it smaller

so :func:`decode_any` needs nothing but the bytes, and anything that is not a whole, intact
payload -- foreign bytes, a truncated or altered payload, another codec's payload, a newer
format -- raises :class:`~membound.errors.CodecError`, never anything else, before any
decompressor or parser sees it. Decompression is bounded by ``max_output``.

This module is the import point: it re-exports the serializer and compressor classes.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from membound.budget import format_size, parse_size
from membound.compressors import (
    COMPRESSORS,
    COMPRESSORS_BY_ID,
    DEFAULT_MAX_OUTPUT,
    Compressor,
    GzipCompressor,
    Lz4Compressor,
    ZlibCompressor,
    ZstdCompressor,
    ZstdDictionary,
    train_zstd_dictionary,
)
from membound.errors import CodecError, ConfigurationError
from membound.serializers import (
    SERIALIZERS,
    SERIALIZERS_BY_ID,
    ArrowSerializer,
    BytesSerializer,
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    ProtobufSerializer,
    Serializer,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "ArrowSerializer",
    "BytesSerializer",
    "Codec",
    "Compressor",
    "GzipCompressor",
    "JsonSerializer",
    "Lz4Compressor",
    "MsgpackSerializer",
    "PayloadInfo",
    "PickleSerializer",
    "ProtobufSerializer",
    "Serializer",
    "ZlibCompressor",
    "ZstdCompressor",
    "ZstdDictionary",
    "decode_any",
    "decode_column",
    "encode_column",
    "get_codec",
    "inspect_payload",
    "train_zstd_dictionary",
]

Buffer = bytes | bytearray | memoryview

# 0x9b is never the first byte of UTF-8 text, so a payload is never mistaken for a string (and
# text for a payload); "M" for membound.
MAGIC = b"\x9bM"
# Bumped only when the header or a body layout changes; new codec ids do not need it.
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<2sBBB")  # magic, format version, serializer id, compressor id
_CRC = struct.Struct("<I")
HEADER_SIZE = _PREFIX.size + _CRC.size
_NOT_COMPRESSED = 0


@dataclass(frozen=True, slots=True)
class PayloadInfo:
    """What a payload's header says: its codec name, ids, and body size."""

    codec: str
    serializer: str
    compressor: str | None
    format_version: int
    body_size: int


def _codec_name(serializer: str, compressor: str | None) -> str:
    if compressor is None:
        return serializer
    if serializer == BytesSerializer.name:
        return compressor
    return f"{serializer}+{compressor}"


def _open(data: Buffer) -> tuple[int, int, memoryview]:
    """Check a payload's header and checksum; return its serializer id, compressor id, body."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"a payload is bytes, not {type(data).__name__}")
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:  # a strided or multi-dimensional view
        raise CodecError(f"a payload must be contiguous bytes: {exc}") from exc
    if len(view) < HEADER_SIZE:
        raise CodecError(
            f"{len(view)} bytes is too short for a membound payload (the header alone is "
            f"{HEADER_SIZE}); it is truncated or not a payload"
        )
    magic, version, serializer_id, compressor_id = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CodecError(
            f"not a membound payload: it starts with {bytes(view[:4])!r}, not {MAGIC!r}"
        )
    if version != FORMAT_VERSION:
        raise CodecError(
            f"this payload is in format version {version}, but this membound reads version "
            f"{FORMAT_VERSION}; read it with the membound release that wrote it, or a newer one"
        )
    (stored,) = _CRC.unpack_from(view, _PREFIX.size)
    body = view[HEADER_SIZE:]
    if zlib.crc32(body, zlib.crc32(view[: _PREFIX.size])) != stored:
        raise CodecError(
            "this payload is corrupt: its checksum does not match (altered, truncated or "
            "spliced bytes)"
        )
    if serializer_id not in SERIALIZERS_BY_ID:
        raise CodecError(
            f"unknown serializer id {serializer_id}: written by a newer membound; upgrade"
        )
    if compressor_id != _NOT_COMPRESSED and compressor_id not in COMPRESSORS_BY_ID:
        raise CodecError(
            f"unknown compressor id {compressor_id}: written by a newer membound; upgrade"
        )
    return serializer_id, compressor_id, body


def inspect_payload(data: Buffer) -> PayloadInfo:
    """Read a payload's header (checking its checksum, not decoding it).

    Raises :class:`CodecError` for anything that is not an intact payload.
    """
    serializer_id, compressor_id, body = _open(data)
    serializer = SERIALIZERS_BY_ID[serializer_id].name
    compressor = COMPRESSORS_BY_ID[compressor_id].name if compressor_id else None
    return PayloadInfo(
        codec=_codec_name(serializer, compressor),
        serializer=serializer,
        compressor=compressor,
        format_version=FORMAT_VERSION,
        body_size=len(body),
    )


def _seal(serializer_id: int, compressor_id: int, body: bytes) -> bytes:
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, serializer_id, compressor_id)
    crc = zlib.crc32(body, zlib.crc32(prefix))
    return b"".join((prefix, _CRC.pack(crc), body))


class Codec:
    """A serializer, an optional compressor and a decompression bound, behind one name.

    ``Codec(MsgpackSerializer(), ZstdCompressor(level=3))`` or, usually,
    ``get_codec("msgpack+zstd")``. Safe to share between threads.

    - ``encode(obj) -> bytes``: header + body. The body is compressed only when that makes it
      smaller, so tiny values do not grow by a compressor's frame overhead.
    - ``decode(data) -> obj``: reads payloads of this codec (compressed or not); raises
      :class:`CodecError` for any other bytes, including another codec's payloads (use
      :func:`decode_any` for those) and those that would decompress past ``max_output``.

    Memory: encoding holds the serialized value and its compressed copy at once; decoding holds
    the decompressed body (at most ``max_output``) and the value built from it.
    """

    __slots__ = ("serializer", "compressor", "max_output")

    serializer: Serializer
    compressor: Compressor | None
    max_output: int

    def __init__(
        self,
        serializer: Serializer,
        compressor: Compressor | None = None,
        *,
        max_output: int | str = DEFAULT_MAX_OUTPUT,
    ) -> None:
        if not isinstance(serializer, Serializer):
            raise CodecError(f"serializer must be a Serializer, got {serializer!r}")
        if compressor is not None and not isinstance(compressor, Compressor):
            raise CodecError(f"compressor must be a Compressor or None, got {compressor!r}")
        object.__setattr__(self, "serializer", serializer)
        object.__setattr__(self, "compressor", compressor)
        object.__setattr__(self, "max_output", parse_size(max_output))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Codec is immutable; make a new one")

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable, e.g. to hand to a worker process: rebuilt there from its parts.
        rebuild = functools.partial(Codec, max_output=self.max_output)
        return (rebuild, (self.serializer, self.compressor))

    @property
    def name(self) -> str:
        """``"msgpack+zstd"``, ``"json"``, ``"zstd"`` (bytes in and out): the name in headers."""
        compressor = self.compressor.name if self.compressor is not None else None
        return _codec_name(self.serializer.name, compressor)

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.compressor is not None:
            parts.append(f"level={self.compressor.level}")
            dictionary = getattr(self.compressor, "dictionary", None)
            if dictionary is not None:
                parts.append(f"dictionary={dictionary!r}")
        if isinstance(self.serializer, ProtobufSerializer):
            parts.append(f"message={self.serializer.full_name!r}")
        if isinstance(self.serializer, PickleSerializer):
            parts.append("trusted=True")
        if self.max_output != DEFAULT_MAX_OUTPUT:
            parts.append(f"max_output={format_size(self.max_output)!r}")
        return f"Codec({', '.join(parts)})"

    def encode(self, obj: Any) -> bytes:
        """Serialize and compress ``obj`` into a payload. Raises :class:`CodecError` for a value
        the serializer cannot hold."""
        try:
            body = self.serializer.dumps(obj)
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"the {self.name!r} codec cannot encode this value: {exc}") from exc
        compressor_id = _NOT_COMPRESSED
        if self.compressor is not None and body:
            compressed = self.compressor.compress(body)
            if len(compressed) < len(body):
                body, compressor_id = compressed, self.compressor.codec_id
        return _seal(self.serializer.codec_id, compressor_id, body)

    def decode(self, data: Buffer) -> Any:
        """The value in a payload this codec wrote. Raises :class:`CodecError` for anything
        else, whatever the bytes."""
        serializer_id, compressor_id, body = _open(data)
        own_compressor = self.compressor.codec_id if self.compressor is not None else None
        if serializer_id != self.serializer.codec_id or compressor_id not in (
            _NOT_COMPRESSED,
            own_compressor,
        ):
            found = inspect_payload(data).codec
            raise CodecError(
                f"this payload was written by the {found!r} codec, not {self.name!r}; "
                "decode it with that codec or with decode_any()"
            )
        return _decode_body(
            self.serializer, self.compressor if compressor_id else None, body, self.max_output
        )


def _decode_body(
    serializer: Serializer, compressor: Compressor | None, body: memoryview, max_output: int
) -> Any:
    """Decompress and deserialize a checked body; every failure becomes a CodecError."""
    stage = "decompress" if compressor is not None else "decode"
    name = _codec_name(serializer.name, compressor.name if compressor is not None else None)
    try:
        raw: Buffer = body
        if compressor is not None:
            raw = compressor.decompress(body, max_output=max_output)
        stage = "decode"
        return serializer.loads(raw)
    except (CodecError, MemoryError):
        # A MemoryError is the process running out, not a property of the payload.
        raise
    except Exception as exc:
        raise CodecError(
            f"cannot {stage} this {name!r} payload although its checksum matches "
            f"({type(exc).__name__}: {exc}); it was not written by membound, or by a version "
            "that encodes differently"
        ) from exc


def _parse_name(name: str) -> tuple[str, str | None, int | None]:
    """``"msgpack+zstd:3"`` -> ("msgpack", "zstd", 3); ``"lz4"`` -> ("bytes", "lz4", None)."""
    if not isinstance(name, str):
        raise CodecError(f"a codec name is a string such as 'msgpack+zstd', not {name!r}")
    spec = name.strip().lower()
    serializer, plus, compressor = spec.partition("+")
    if not plus:
        serializer, compressor = (
            (BytesSerializer.name, spec) if spec in COMPRESSORS or ":" in spec else (spec, "")
        )
    compressor, colon, level_text = compressor.partition(":")
    level: int | None = None
    if colon:
        try:
            level = int(level_text)
        except ValueError:
            raise CodecError(
                f"in codec name {name!r}, the level {level_text!r} is not an integer"
            ) from None
    if (
        serializer not in SERIALIZERS
        or (compressor and compressor not in COMPRESSORS)
        or (plus and not compressor)
    ):
        raise CodecError(
            f"unknown codec {name!r}; write serializer[+compressor[:level]] with a serializer from "
            f"{', '.join(SERIALIZERS)} and a compressor from {', '.join(COMPRESSORS)}, "
            "e.g. 'msgpack+zstd', 'json', 'zstd:9'"
        )
    return serializer, compressor or None, level


def _make_serializer(name: str, *, message: type | None, trusted: bool) -> Serializer:
    if name == ProtobufSerializer.name:
        if message is None:
            raise CodecError("the 'protobuf' codecs need the message class: message=my_pb2.Row")
        return ProtobufSerializer(message)
    if message is not None:
        raise CodecError(f"message= is for the 'protobuf' codecs, not {name!r}")
    if name == PickleSerializer.name:
        return PickleSerializer(trusted=trusted)
    return SERIALIZERS[name]()


def _make_compressor(
    name: str | None, *, level: int | None, dictionary: ZstdDictionary | Buffer | None
) -> Compressor | None:
    if name is None:
        if level is not None or dictionary is not None:
            raise CodecError(
                "level= and dictionary= need a compressor in the codec name, e.g. 'json+zstd'"
            )
        return None
    cls = COMPRESSORS[name]
    level = cls.default_level if level is None else level
    if cls is ZstdCompressor:
        return ZstdCompressor(level, dictionary=dictionary)
    if dictionary is not None:
        raise CodecError(f"dictionary= is for zstd, not {name!r}")
    return cls(level)


def get_codec(
    name: str,
    *,
    level: int | None = None,
    dictionary: ZstdDictionary | Buffer | None = None,
    message: type | None = None,
    trusted: bool = False,
    max_output: int | str = DEFAULT_MAX_OUTPUT,
) -> Codec:
    """The :class:`Codec` named ``name``: ``"msgpack+zstd"``, ``"json"``, ``"zstd:9"``...

    - ``level``: the compressor's level (or ``:level`` in the name; not both, unless equal).
    - ``dictionary``: a trained :class:`ZstdDictionary` (or its bytes), for zstd only.
    - ``message``: the Protocol Buffers message class, for ``protobuf`` only.
    - ``trusted``: required for ``pickle``, whose payloads run code when decoded.
    - ``max_output``: the most bytes one decompression may produce (``"256MB"`` by default).

    Raises :class:`CodecError` for an unknown name or a missing requirement,
    :class:`~membound.errors.ConfigurationError` for a level or size out of range and
    :class:`~membound.errors.MissingDriverError` when a package of the ``codecs`` extra is needed.
    """
    serializer_name, compressor_name, name_level = _parse_name(name)
    if name_level is not None and level is not None and name_level != level:
        raise ConfigurationError(
            f"codec {name!r} names level {name_level} but level={level} was given"
        )
    compressor = _make_compressor(
        compressor_name, level=level if level is not None else name_level, dictionary=dictionary
    )
    serializer = _make_serializer(serializer_name, message=message, trusted=trusted)
    return Codec(serializer, compressor, max_output=max_output)


@functools.lru_cache(maxsize=16)
def _shared_serializer(serializer_id: int) -> Serializer:
    """Serializers that need no options, made once for decode_any."""
    return SERIALIZERS_BY_ID[serializer_id]()


@functools.lru_cache(maxsize=16)
def _shared_compressor(compressor_id: int, dictionary: ZstdDictionary | None) -> Compressor:
    """Compressors for decode_any (levels do not matter for decoding), made once."""
    cls = COMPRESSORS_BY_ID[compressor_id]
    if cls is ZstdCompressor:
        return ZstdCompressor(dictionary=dictionary)
    return cls()


def decode_any(
    data: Buffer,
    *,
    trusted: bool = False,
    dictionary: ZstdDictionary | Buffer | None = None,
    max_output: int | str = DEFAULT_MAX_OUTPUT,
) -> Any:
    """Decode any membound payload, whichever codec wrote it, from its header alone.

    Protocol Buffers payloads are decoded with the message class of the name they carry, found
    in protobuf's default pool (import its ``_pb2`` module first). Pickle payloads are refused
    unless ``trusted=True``; zstd payloads made with a dictionary need it as ``dictionary``.
    Raises :class:`CodecError` for anything that is not an intact payload.
    """
    serializer_id, compressor_id, body = _open(data)
    serializer_cls = SERIALIZERS_BY_ID[serializer_id]
    if serializer_cls is PickleSerializer and trusted is not True:
        raise CodecError(
            "this payload is pickle, and unpickling runs code the payload names; pass "
            "trusted=True only if this program wrote it to storage nobody else can write"
        )
    if dictionary is not None and not isinstance(dictionary, ZstdDictionary):
        dictionary = ZstdDictionary(dictionary)
    compressor = _shared_compressor(compressor_id, dictionary) if compressor_id else None
    limit = parse_size(max_output)
    if serializer_cls is ProtobufSerializer:
        # The message class is named inside the (possibly compressed) body.
        raw = body if compressor is None else _decompress_checked(compressor, body, limit)
        try:
            serializer = ProtobufSerializer.for_payload(raw)
        except UnicodeDecodeError as exc:
            raise CodecError(f"a Protocol Buffers payload has an unreadable name: {exc}") from exc
        return _decode_body(serializer, None, memoryview(raw), limit)
    if serializer_cls is PickleSerializer:
        return _decode_body(PickleSerializer(trusted=True), compressor, body, limit)
    return _decode_body(_shared_serializer(serializer_id), compressor, body, limit)


def _decompress_checked(compressor: Compressor, body: memoryview, max_output: int) -> bytes:
    try:
        return compressor.decompress(body, max_output=max_output)
    except (CodecError, MemoryError):
        raise
    except Exception as exc:
        raise CodecError(f"cannot decompress this {compressor.name!r} payload: {exc}") from exc


def _as_codec(codec: Codec | str) -> Codec:
    return get_codec(codec) if isinstance(codec, str) else codec


def encode_column(
    array: pa.Array | pa.ChunkedArray, codec: Codec | str
) -> pa.BinaryArray | pa.ChunkedArray:
    """Encode each value of ``array`` with ``codec`` into a binary array; nulls stay null.

    Values go through ``to_pylist()``, so a column of structs is encoded as dicts, timestamps as
    datetimes (which JSON refuses: use msgpack for aware ones, or pickle). A ChunkedArray gives a
    ChunkedArray, chunk by chunk. Memory: about three times the chunk's size at once (its Python
    values, their payloads, the result), so call it per batch, not per table.
    """
    codec = _as_codec(codec)
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array(
            [encode_column(chunk, codec) for chunk in array.chunks], pa.binary()
        )
    payloads = [None if value is None else codec.encode(value) for value in array.to_pylist()]
    result = pa.array(payloads, type=pa.binary())
    if isinstance(result, pa.ChunkedArray):
        raise CodecError("encoded values pass 2 GB in one array; encode smaller batches")
    return result


def decode_column(
    array: pa.Array | pa.ChunkedArray,
    codec: Codec | str | None = None,
    *,
    type: pa.DataType | None = None,
) -> pa.Array | pa.ChunkedArray:
    """Decode each payload of a binary ``array`` (from :func:`encode_column`); nulls stay null.

    ``codec=None`` decodes each payload with :func:`decode_any` (no pickle, no dictionary).
    ``type`` is the Arrow type of the result; without it pyarrow infers one, which may differ
    from the column's original type (int64 for an int32 column): pass the original to keep it.
    """
    if isinstance(array, pa.ChunkedArray):
        chunks = [decode_column(chunk, codec, type=type) for chunk in array.chunks]
        return (
            pa.chunked_array(chunks, type=type)
            if chunks
            else pa.chunked_array([], type or pa.null())
        )
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise CodecError(f"decode_column reads a binary column, not {array.type}")
    decode = decode_any if codec is None else _as_codec(codec).decode
    values = [None if payload is None else decode(payload) for payload in array.to_pylist()]
    try:
        return pa.array(values, type=type)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CodecError(f"the decoded values do not make an Arrow array of {type}: {exc}") from exc
