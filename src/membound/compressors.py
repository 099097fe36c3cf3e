"""Compressors: bytes to fewer bytes and back, the second half of a :mod:`membound.codecs` codec.

Each compressor has a ``name``, a one-byte ``codec_id`` written in payload headers (never
reused: 0 means "not compressed"), and a ``level``:

======  =====  =============  ===========  ===================================================
id      name   levels         default      format
======  =====  =============  ===========  ===================================================
1       zlib   0-9            6            RFC 1950 stream (ends with an Adler-32)
2       gzip   0-9            6            RFC 1952 member, mtime 0 (ends with a CRC-32)
3       lz4    0-16           0            LZ4 frame with its content size
4       zstd   -131072-22     3            Zstandard frame with its content size, optionally
                                           with a trained dictionary (its id is in the frame)
======  =====  =============  ===========  ===================================================

Decompression is bounded: :meth:`Compressor.decompress` takes ``max_output`` and raises
:class:`~membound.errors.CodecError` as soon as the output would pass it, having allocated at
most about that much, so a small hostile payload cannot expand into gigabytes. Frames that
declare their size (lz4, zstd) are refused before anything is allocated when the size is over
the bound.
"""

from __future__ import annotations

import functools
import gzip
import struct
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

from membound.budget import format_size, parse_size
from membound.errors import CodecError, ConfigurationError, MissingDriverError

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "Compressor",
    "GzipCompressor",
    "Lz4Compressor",
    "ZlibCompressor",
    "ZstdCompressor",
    "ZstdDictionary",
    "train_zstd_dictionary",
]

Buffer = bytes | bytearray | memoryview

# Largest output one decompression may produce: far above any cached row or batch a byte budget
# allows, far below what would take a process down. Configurable per codec.
DEFAULT_MAX_OUTPUT = parse_size("256MB")

# Each format's own default level, so output matches what its command-line tool writes
# (Python's gzip module defaults to 9, gzip(1) to 6, which is far faster for little loss).
DEFAULT_ZLIB_LEVEL = 6
DEFAULT_GZIP_LEVEL = 6
DEFAULT_LZ4_LEVEL = 0
DEFAULT_ZSTD_LEVEL = 3
# libzstd's ZSTD_minCLevel(): negative levels trade ratio for speed, down to about LZ4's.
ZSTD_MIN_LEVEL = -(1 << 17)
ZSTD_MAX_LEVEL = 22
LZ4_MAX_LEVEL = 16  # lz4.frame.COMPRESSIONLEVEL_MAX

# zstd --train's default dictionary size (110 KiB); the zstd docs advise training on about 100
# times as many bytes of samples.
DEFAULT_DICTIONARY_SIZE = 112_640
# A trained zstd dictionary starts with this magic number, then its 32-bit id.
_ZSTD_DICT_HEADER = struct.Struct("<II")
_ZSTD_DICT_MAGIC = 0xEC30A437
# After its header, an empty zstd frame holds one empty block (3 bytes) and maybe a checksum (4).
_ZSTD_EMPTY_FRAME_TAIL = 3 + 4
# zstandard reports this content size for frames that do not declare one.
_ZSTD_CONTENTSIZE_UNKNOWN = 2**64 - 1


def _import_zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise MissingDriverError("zstandard", extra="codecs") from None
    return zstandard


def _import_lz4_frame() -> Any:
    try:
        import lz4.frame
    except ImportError:
        raise MissingDriverError("lz4", extra="codecs") from None
    return lz4.frame


def _check_level(name: str, level: int, low: int, high: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise ConfigurationError(
            f"{name} level must be an integer from {low} to {high}, got {level!r}"
        )
    return level


def _too_large(name: str, max_output: int, size: int | None = None) -> CodecError:
    declared = f" declares {format_size(size)} and" if size is not None else ""
    return CodecError(
        f"this {name} payload{declared} decompresses past max_output={format_size(max_output)}; "
        "if it is genuine, decode it with a larger max_output"
    )


class Compressor(ABC):
    """Compresses bytes, and decompresses them within a bound. Subclasses set the class vars."""

    name: ClassVar[str]
    codec_id: ClassVar[int]
    default_level: ClassVar[int]
    level: int

    @abstractmethod
    def compress(self, data: Buffer) -> bytes:
        """Compress ``data`` into one self-delimiting frame of this format."""

    @abstractmethod
    def decompress(self, data: Buffer, *, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
        """Decompress one whole frame. Raises if it is damaged, truncated, followed by other
        bytes, or would decompress past ``max_output`` bytes."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the level (and dictionary): modules and contexts stay behind.
        return (type(self), (self.level,))


def _inflate(name: str, data: Buffer, wbits: int, max_output: int) -> bytes:
    """zlib or gzip decompression that stops one byte past ``max_output``."""
    inflater = zlib.decompressobj(wbits=wbits)
    # zlib grows its output as it goes, so asking for max_output + 1 allocates only what the
    # data really holds, and the extra byte tells "exactly at the bound" from "past it".
    output = inflater.decompress(data, max_output + 1)
    if len(output) > max_output:
        raise _too_large(name, max_output)
    if not inflater.eof:
        raise CodecError(f"this {name} payload is truncated: the stream does not end")
    if inflater.unused_data:
        raise CodecError(
            f"this {name} payload has {len(inflater.unused_data)} stray bytes after its end"
        )
    return output


class ZlibCompressor(Compressor):
    """zlib (RFC 1950): everywhere, slowest of the four; use it when the reader is not Python."""

    name = "zlib"
    codec_id = 1
    default_level = DEFAULT_ZLIB_LEVEL

    def __init__(self, level: int = DEFAULT_ZLIB_LEVEL) -> None:
        self.level = _check_level(self.name, level, 0, 9)

    def compress(self, data: Buffer) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data: Buffer, *, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
        return _inflate(self.name, data, zlib.MAX_WBITS, max_output)


class GzipCompressor(Compressor):
    """gzip (RFC 1952), one member with mtime 0 so equal input gives equal bytes."""

    name = "gzip"
    codec_id = 2
    default_level = DEFAULT_GZIP_LEVEL

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL) -> None:
        self.level = _check_level(self.name, level, 0, 9)

    def compress(self, data: Buffer) -> bytes:
        return gzip.compress(data, compresslevel=self.level, mtime=0)

    def decompress(self, data: Buffer, *, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
        # 16 + MAX_WBITS: a gzip header and trailer, and nothing else.
        return _inflate(self.name, data, 16 + zlib.MAX_WBITS, max_output)


class Lz4Compressor(Compressor):
    """LZ4 frames: the fastest to decompress, with a lower ratio than zstd."""

    name = "lz4"
    codec_id = 3
    default_level = DEFAULT_LZ4_LEVEL

    def __init__(self, level: int = DEFAULT_LZ4_LEVEL) -> None:
        self.level = _check_level(self.name, level, 0, LZ4_MAX_LEVEL)
        self._frame = _import_lz4_frame()

    def compress(self, data: Buffer) -> bytes:
        # Only the content size is stored: the codec's header checksum already covers the
        # frame, so LZ4's optional content checksum would cost 4 bytes for nothing.
        return self._frame.compress(data, compression_level=self.level, store_size=True)

    def decompress(self, data: Buffer, *, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
        declared = self._frame.get_frame_info(data)["content_size"]
        if declared > max_output:
            raise _too_large(self.name, max_output, declared)
        # lz4 allocates max_length up front, so ask for exactly the declared size. A frame that
        # declares none (0) decodes only if it is empty, which is all we ever write without one.
        decompressor = self._frame.LZ4FrameDecompressor()
        output = decompressor.decompress(data, max_length=declared)
        if not decompressor.eof:
            raise CodecError(
                "this lz4 payload is truncated, or holds more than the size its frame declares"
            )
        if decompressor.unused_data:
            raise CodecError(
                f"this lz4 payload has {len(decompressor.unused_data)} stray bytes after its end"
            )
        if len(output) != declared:
            raise CodecError(f"this lz4 frame declares {declared} bytes but holds {len(output)}")
        return output


class ZstdDictionary:
    """A trained zstd dictionary: ``ZstdDictionary(data)`` with the bytes of one.

    Make one with :func:`train_zstd_dictionary`, keep ``.data`` wherever the payloads are kept,
    and load it back with ``ZstdDictionary(data)``. Its ``dict_id`` goes into every frame it
    compresses, and decoding checks it, so a payload is never decoded with the wrong one. Only
    trained dictionaries (which carry an id) are accepted, for that reason.
    """

    __slots__ = ("data", "dict_id")

    data: bytes
    dict_id: int

    def __init__(self, data: Buffer) -> None:
        data = bytes(data)
        if len(data) < _ZSTD_DICT_HEADER.size:
            raise CodecError("a zstd dictionary is at least 8 bytes; this is not one")
        magic, dict_id = _ZSTD_DICT_HEADER.unpack_from(data)
        if magic != _ZSTD_DICT_MAGIC or dict_id == 0:
            raise CodecError(
                "these bytes are not a trained zstd dictionary (they lack its magic number or "
                "id); make one with train_zstd_dictionary()"
            )
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "dict_id", dict_id)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ZstdDictionary is immutable")

    def __repr__(self) -> str:
        return f"ZstdDictionary(dict_id={self.dict_id}, size={format_size(len(self.data))!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ZstdDictionary, (self.data,))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ZstdDictionary):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.dict_id, len(self.data)))


def train_zstd_dictionary(
    samples: Iterable[Buffer],
    *,
    size: int | str = DEFAULT_DICTIONARY_SIZE,
    level: int = DEFAULT_ZSTD_LEVEL,
) -> ZstdDictionary:
    """Train a zstd dictionary on ``samples``, serialized records like the ones to compress.

    Train on the serializer's output, e.g. ``[codec.serializer.dumps(row) for row in rows]``,
    with about 100 times ``size`` bytes of samples (the zstd guidance) of the same kind of
    record; one dictionary per kind of record. Small records (hundreds of bytes) gain most.
    The samples are held in memory during training. Raises :class:`CodecError` when zstd cannot
    train on them (too few, or too small: each should be well over 8 bytes).
    """
    zstandard = _import_zstandard()
    dict_size = parse_size(size)
    level = _check_level("zstd", level, ZSTD_MIN_LEVEL, ZSTD_MAX_LEVEL)
    sample_list = [bytes(sample) for sample in samples]
    total = sum(map(len, sample_list))
    try:
        trained = zstandard.train_dictionary(dict_size, sample_list, level=level)
    except zstandard.ZstdError as exc:
        raise CodecError(
            f"zstd could not train a {format_size(dict_size)} dictionary on {len(sample_list)} "
            f"samples ({format_size(total)}): {exc}; give more samples (about 100 times the "
            "dictionary size) or ask for a smaller dictionary"
        ) from exc
    return ZstdDictionary(trained.as_bytes())


class ZstdCompressor(Compressor):
    """Zstandard frames, optionally with a trained :class:`ZstdDictionary` for small records.

    Safe to share between threads: each thread gets its own zstd contexts (zstandard's are not
    thread-safe), made on first use and kept while the thread lives; at level 3 a compression
    context grows to about 1.5 MB on 200 kB inputs and 3.6 MB on multi-megabyte ones.
    """

    name = "zstd"
    codec_id = 4
    default_level = DEFAULT_ZSTD_LEVEL

    def __init__(
        self, level: int = DEFAULT_ZSTD_LEVEL, *, dictionary: ZstdDictionary | Buffer | None = None
    ) -> None:
        self.level = _check_level(self.name, level, ZSTD_MIN_LEVEL, ZSTD_MAX_LEVEL)
        self._zstd = _import_zstandard()
        if dictionary is not None and not isinstance(dictionary, ZstdDictionary):
            dictionary = ZstdDictionary(dictionary)
        self.dictionary: ZstdDictionary | None = dictionary
        self._dict_data = None
        if dictionary is not None:
            self._dict_data = self._zstd.ZstdCompressionDict(
                dictionary.data, dict_type=self._zstd.DICT_TYPE_FULLDICT
            )
            # Digest the dictionary once for this level, not once per record.
            self._dict_data.precompute_compress(level=self.level)
        self._local = threading.local()

    def __repr__(self) -> str:
        extra = f", dictionary={self.dictionary!r}" if self.dictionary is not None else ""
        return f"ZstdCompressor(level={self.level}{extra})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(ZstdCompressor, dictionary=self.dictionary), (self.level,))

    def _compressor(self) -> Any:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            # No zstd content checksum: the codec's header checksum already covers the frame.
            cctx = self._local.cctx = self._zstd.ZstdCompressor(
                level=self.level,
                dict_data=self._dict_data,
                write_checksum=False,
                write_content_size=True,
                write_dict_id=True,
            )
        return cctx

    def _decompressor(self, with_dictionary: bool) -> Any:
        attribute = "dctx_dict" if with_dictionary else "dctx"
        dctx = getattr(self._local, attribute, None)
        if dctx is None:
            dict_data = self._dict_data if with_dictionary else None
            dctx = self._zstd.ZstdDecompressor(dict_data=dict_data)
            setattr(self._local, attribute, dctx)
        return dctx

    def compress(self, data: Buffer) -> bytes:
        return self._compressor().compress(data)

    def decompress(self, data: Buffer, *, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
        frame = self._zstd.get_frame_parameters(data)
        if frame.content_size == _ZSTD_CONTENTSIZE_UNKNOWN:
            # zstandard would allocate max_output to guess; membound always writes the size.
            raise CodecError(
                "this zstd frame does not declare its size; membound always writes one"
            )
        if frame.content_size > max_output:
            raise _too_large(self.name, max_output, frame.content_size)
        if frame.dict_id:
            if self.dictionary is None:
                raise CodecError(
                    f"this zstd payload was compressed with dictionary id {frame.dict_id}; "
                    "decode it with that dictionary (dictionary=...)"
                )
            if frame.dict_id != self.dictionary.dict_id:
                raise CodecError(
                    f"this zstd payload was compressed with dictionary id {frame.dict_id}, "
                    f"not with this codec's dictionary id {self.dictionary.dict_id}"
                )
        dctx = self._decompressor(with_dictionary=bool(frame.dict_id))
        if frame.content_size == 0:
            # zstandard returns b"" for these without reading on. An empty frame is its header,
            # one empty block (3 bytes) and maybe a checksum (4): decode that little to be sure.
            if len(data) > self._zstd.frame_header_size(data) + _ZSTD_EMPTY_FRAME_TAIL:
                raise CodecError("this zstd frame declares no content but holds some")
            decompressor = dctx.decompressobj()
            if decompressor.decompress(data) or decompressor.unused_data:
                raise CodecError("this zstd frame declares no content but holds some")
            return b""
        # The size was checked above, and decompress() checks the output matches it.
        return dctx.decompress(data, allow_extra_data=False)


# By name and by header id; ids are written into payloads, so they never change meaning.
COMPRESSORS: dict[str, type[Compressor]] = {
    cls.name: cls for cls in (ZlibCompressor, GzipCompressor, Lz4Compressor, ZstdCompressor)
}
COMPRESSORS_BY_ID: dict[int, type[Compressor]] = {cls.codec_id: cls for cls in COMPRESSORS.values()}
