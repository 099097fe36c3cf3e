"""Codecs: round trips for every serializer x compressor, and only CodecError on bad bytes."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import enum
import importlib.util
import math
import random
import struct
import sys
import threading
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membound.codecs import (
    DEFAULT_MAX_OUTPUT,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    Codec,
    JsonSerializer,
    PickleSerializer,
    ProtobufSerializer,
    ZstdDictionary,
    decode_any,
    decode_column,
    encode_column,
    get_codec,
    inspect_payload,
    train_zstd_dictionary,
)
from membound.errors import CodecError, ConfigurationError, MissingDriverError


def _needs(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(module.split(".")[0]) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed (membound[codecs])")


NEEDS = {
    "msgpack": _needs("msgpack"),
    "lz4": _needs("lz4"),
    "zstd": _needs("zstandard"),
    "protobuf": _needs("google.protobuf"),
    "orjson": _needs("orjson"),
}

# Round trips draw fewer examples per combination (there are 36); fuzzing draws more. The
# deadline is the time bound on one example: every one takes milliseconds, so 5 s means a hang,
# not a slow CI machine.
ROUND_TRIP = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


# --- values ---------------------------------------------------------------------------------

ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints64 | finite | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=25,
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | ints64 | finite | st.text(max_size=30) | st.binary(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=10) | st.integers(-1000, 1000), inner, max_size=6)
    ),
    max_leaves=25,
)
pickle_values = st.recursive(
    msgpack_values
    | st.decimals(allow_nan=False)
    | st.datetimes()
    | st.frozensets(st.integers(), max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner),
    max_leaves=20,
)
ARROW_SCHEMA = pa.schema(
    [("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()), ("blob", pa.binary())]
)
arrow_rows = st.lists(
    st.tuples(
        st.none() | st.integers(-(2**63), 2**63 - 1),
        st.none() | st.text(max_size=20),
        st.none() | finite,
        st.none() | st.binary(max_size=20),
    ),
    max_size=30,
)


def arrow_value(rows: list[tuple[Any, ...]], as_batch: bool) -> pa.Table | pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in ARROW_SCHEMA]
    arrays = [pa.array(list(c), type=f.type) for c, f in zip(columns, ARROW_SCHEMA, strict=True)]
    cls = pa.RecordBatch if as_batch else pa.Table
    return cls.from_arrays(arrays, schema=ARROW_SCHEMA)


def protobuf_row_class() -> type:
    """A Row message built at run time and added to protobuf's default pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    full_name = "membound_test_codecs.Row"
    try:
        descriptor = pool.FindMessageTypeByName(full_name)
    except KeyError:
        field = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(
            name="membound_test_codecs.proto", package="membound_test_codecs", syntax="proto3"
        )
        message = proto.message_type.add(name="Row")
        message.field.add(name="id", number=1, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
        message.field.add(name="name", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        message.field.add(
            name="score", number=3, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL
        )
        message.field.add(name="tags", number=4, type=field.TYPE_STRING, label=field.LABEL_REPEATED)
        pool.Add(proto)
        descriptor = pool.FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)


@st.composite
def protobuf_rows(draw: st.DrawFn) -> Any:
    row_class = protobuf_row_class()
    return row_class(
        id=draw(st.integers(-(2**63), 2**63 - 1)),
        name=draw(st.text(max_size=30)),
        score=draw(finite),
        tags=draw(st.lists(st.text(max_size=10), max_size=5)),
    )


def _repeat(serializer: str, value: Any) -> Any:
    """A larger, compressible value built from ``value``, so compressors really run."""
    if serializer == "bytes":
        return value * 8
    if serializer == "arrow":
        if isinstance(value, pa.RecordBatch):
            return (
                pa.Table.from_batches([value] * 8).combine_chunks().to_batches()[0]
                if value.num_rows
                else value
            )
        return pa.concat_tables([value] * 8)
    if serializer == "protobuf":
        return type(value)(
            id=value.id, name=value.name * 8, score=value.score, tags=list(value.tags) * 8
        )
    return [value] * 8


def _same(serializer: str, decoded: Any, original: Any) -> bool:
    if serializer == "arrow":
        return type(decoded) is type(original) and decoded.equals(original, check_metadata=True)
    return decoded == original


SERIALIZERS: dict[str, tuple[Callable[[], st.SearchStrategy[Any]], list[pytest.MarkDecorator]]] = {
    "bytes": (lambda: st.binary(max_size=300), []),
    "json": (lambda: json_values, []),
    "msgpack": (lambda: msgpack_values, [NEEDS["msgpack"]]),
    "protobuf": (protobuf_rows, [NEEDS["protobuf"]]),
    "arrow": (lambda: st.builds(arrow_value, arrow_rows, st.booleans()), []),
    "pickle": (lambda: pickle_values, []),
}
COMPRESSORS: dict[str | None, list[pytest.MarkDecorator]] = {
    None: [],
    "zlib": [],
    "gzip": [],
    "lz4": [NEEDS["lz4"]],
    "zstd": [NEEDS["zstd"]],
    "zstd+dict": [NEEDS["zstd"]],
}
COMBINATIONS = [
    pytest.param(s, c, id=f"{s}-{c or 'none'}", marks=[*SERIALIZERS[s][1], *COMPRESSORS[c]])
    for s in SERIALIZERS
    for c in COMPRESSORS
]


def _sample_records(count: int = 2000, seed: int = 7) -> list[dict[str, Any]]:
    """Order-like rows, as a cache of query results would hold them."""
    rng = random.Random(seed)
    countries = ["FR", "DE", "US", "GB", "JP", "BR"]
    statuses = ["new", "paid", "shipped", "delivered", "refunded"]
    return [
        {
            "id": 100_000 + i,
            "customer": f"customer-{rng.randrange(5000):05d}",
            "email": f"user{rng.randrange(5000)}@example.com",
            "country": rng.choice(countries),
            "status": rng.choice(statuses),
            "amount": round(rng.uniform(1, 500), 2),
            "created": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def dictionary() -> ZstdDictionary:
    pytest.importorskip("zstandard")
    import json

    samples = [json.dumps(r).encode() for r in _sample_records()]
    return train_zstd_dictionary(samples, size="16KB")


def make_codec(serializer: str, compressor: str | None, dictionary: ZstdDictionary | None) -> Codec:
    options: dict[str, Any] = {}
    if serializer == "protobuf":
        options["message"] = protobuf_row_class()
    if serializer == "pickle":
        options["trusted"] = True
    if compressor == "zstd+dict":
        compressor, options["dictionary"] = "zstd", dictionary
    name = f"{serializer}+{compressor}" if compressor else serializer
    return get_codec(name, **options)


def forge(
    serializer_id: int, compressor_id: int, body: bytes, version: int = FORMAT_VERSION
) -> bytes:
    """A payload with a valid header and checksum around ``body``, built from the documented
    layout (not from the module's own code)."""
    prefix = MAGIC + bytes([version, serializer_id, compressor_id])
    return prefix + struct.pack("<I", zlib.crc32(prefix + body)) + body


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(("serializer", "compressor"), COMBINATIONS)
def test_round_trip_every_serializer_and_compressor(
    serializer: str, compressor: str | None, request: pytest.FixtureRequest
) -> None:
    dictionary = request.getfixturevalue("dictionary") if compressor == "zstd+dict" else None
    codec = make_codec(serializer, compressor, dictionary)

    @ROUND_TRIP
    @given(SERIALIZERS[serializer][0]())
    def check(value: Any) -> None:
        for original in (value, _repeat(serializer, value)):
            payload = codec.encode(original)
            assert _same(serializer, codec.decode(payload), original)
            assert _same(
                serializer, decode_any(payload, trusted=True, dictionary=dictionary), original
            )
            assert inspect_payload(payload).serializer == serializer

    check()


@pytest.mark.parametrize(("serializer", "compressor"), [c for c in COMBINATIONS if c.values[1]])
def test_compressible_values_are_compressed(
    serializer: str, compressor: str, request: pytest.FixtureRequest
) -> None:
    dictionary = request.getfixturevalue("dictionary") if compressor == "zstd+dict" else None
    codec = make_codec(serializer, compressor, dictionary)
    samples: dict[str, Any] = {
        "bytes": b"membound " * 200,
        "json": _sample_records(50),
        "msgpack": _sample_records(50),
        "pickle": _sample_records(50),
        "arrow": pa.Table.from_pylist(_sample_records(200)),
    }
    if serializer == "protobuf":
        value = protobuf_row_class()(id=1, name="x" * 500, tags=["tag"] * 100)
    else:
        value = samples[serializer]
    payload = codec.encode(value)
    info = inspect_payload(payload)
    assert info.compressor == compressor.removesuffix("+dict")
    assert info.codec == codec.name
    assert _same(serializer, codec.decode(payload), value)


def test_incompressible_values_are_stored_plain_and_still_decode() -> None:
    codec = get_codec("msgpack+zstd")
    payload = codec.encode(7)
    assert inspect_payload(payload).compressor is None
    assert len(payload) == HEADER_SIZE + 1
    assert codec.decode(payload) == 7
    assert get_codec("zstd").decode(get_codec("zstd").encode(b"")) == b""


@pytest.mark.parametrize(
    "compressor",
    [
        "zlib",
        "gzip",
        pytest.param("lz4", marks=NEEDS["lz4"]),
        pytest.param("zstd", marks=NEEDS["zstd"]),
    ],
)
@pytest.mark.parametrize("level_offset", [0, -1])
def test_levels_round_trip(compressor: str, level_offset: int) -> None:
    from membound.compressors import COMPRESSORS as classes

    cls = classes[compressor]
    low = {"zlib": 0, "gzip": 0, "lz4": 0, "zstd": -5}[compressor]
    high = {"zlib": 9, "gzip": 9, "lz4": 16, "zstd": 19}[compressor]
    for level in (low, cls.default_level, high + level_offset):
        codec = get_codec(f"{compressor}:{level}")
        data = b"abcdefgh" * 1000
        assert codec.decode(codec.encode(data)) == data
        assert codec.compressor is not None and codec.compressor.level == level


@pytest.mark.skipif(importlib.util.find_spec("msgpack") is None, reason="msgpack is not installed")
def test_msgpack_keeps_nan_int_keys_bytes_and_aware_datetimes() -> None:
    codec = get_codec("msgpack+lz4") if importlib.util.find_spec("lz4") else get_codec("msgpack")
    when = datetime.datetime(
        2024, 5, 1, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    decoded = codec.decode(
        codec.encode({1: b"\x00\xff", "nan": math.nan, "when": when, "t": (1, 2)})
    )
    assert decoded[1] == b"\x00\xff"
    assert math.isnan(decoded["nan"])
    assert decoded["when"] == when and decoded["when"].tzinfo == datetime.UTC
    assert decoded["t"] == [1, 2]
    with pytest.raises(CodecError, match="cannot encode"):
        codec.encode({"naive": datetime.datetime(2024, 5, 1)})
    with pytest.raises(CodecError):
        codec.encode(2**64)


# --- JSON: orjson and the stdlib agree ---------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    NAN = math.nan


class Level(enum.IntEnum):
    HIGH = 3


json_edge_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(
        [Color.RED, Color.NAN, Level.HIGH, uuid.UUID(int=42), datetime.date(2024, 1, 1)]
    )
    | st.builds(decimal.Decimal, st.integers()),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 3), inner, max_size=4)
    ),
    max_leaves=12,
)


@NEEDS["orjson"]
@FUZZ
@given(json_edge_values)
def test_json_backends_accept_the_same_values_and_agree(value: Any) -> None:
    fast = Codec(JsonSerializer(backend="orjson"))
    slow = Codec(JsonSerializer(backend="stdlib"))
    outcomes = []
    for codec in (fast, slow):
        try:
            outcomes.append(codec.encode(value))
        except CodecError:
            outcomes.append(None)
    assert (outcomes[0] is None) == (outcomes[1] is None), outcomes
    if outcomes[0] is not None:
        decoded = [codec.decode(payload) for codec in (fast, slow) for payload in outcomes]
        assert all(d == decoded[0] for d in decoded)


@NEEDS["orjson"]
def test_json_specifics() -> None:
    for backend in ("orjson", "stdlib"):
        codec = Codec(JsonSerializer(backend=backend))  # type: ignore[arg-type]
        assert codec.decode(codec.encode({"x": math.inf, "n": math.nan, "c": Color.RED})) == {
            "x": None,
            "n": None,
            "c": "red",
        }
        for refused in ({1: "int key"}, {"when": datetime.datetime(2024, 1, 1)}, 2**64, b"bytes"):
            with pytest.raises(CodecError):
                codec.encode(refused)
        deep: list[Any] = []
        for _ in range(1000):
            deep = [deep]
        with pytest.raises(CodecError):
            codec.encode(deep)
        with pytest.raises(CodecError):
            codec.decode(forge(1, 0, b"[" * 100_000 + b"]" * 100_000))
        with pytest.raises(CodecError):
            codec.decode(forge(1, 0, b"NaN"))
        with pytest.raises(CodecError):
            codec.decode(forge(1, 0, b"\xef\xbb\xbf1"))  # a byte-order mark


def test_json_falls_back_to_the_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    import membound.serializers as serializers

    monkeypatch.setattr(serializers, "_import_orjson", lambda: None)
    assert JsonSerializer().backend == "stdlib"
    assert get_codec("json").decode(get_codec("json").encode({"a": [1, 2.5, None]})) == {
        "a": [1, 2.5, None]
    }
    with pytest.raises(MissingDriverError) as raised:
        JsonSerializer(backend="orjson")
    assert raised.value.extra == "codecs" and raised.value.driver == "orjson"


@pytest.mark.parametrize(
    ("name", "module", "driver"),
    [
        ("msgpack", "msgpack", "msgpack"),
        ("lz4", "lz4", "lz4"),
        ("json+zstd", "zstandard", "zstandard"),
    ],
)
def test_missing_package_raises_missing_driver_error(
    name: str, module: str, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingDriverError) as raised:
        get_codec(name)
    assert raised.value.driver == driver and raised.value.extra == "codecs"
    assert "membound[codecs]" in str(raised.value)


# --- protobuf ---------------------------------------------------------------------------------


@NEEDS["protobuf"]
def test_protobuf_checks_the_message_type() -> None:
    from google.protobuf import timestamp_pb2

    row_class = protobuf_row_class()
    rows = get_codec(
        "protobuf+zstd" if importlib.util.find_spec("zstandard") else "protobuf", message=row_class
    )
    stamps = get_codec("protobuf", message=timestamp_pb2.Timestamp)
    row = row_class(id=5, name="five", tags=["a"])
    assert decode_any(rows.encode(row)) == row
    stamp_payload = stamps.encode(timestamp_pb2.Timestamp(seconds=12))
    with pytest.raises(CodecError, match="google.protobuf.Timestamp"):
        get_codec("protobuf", message=row_class).decode(stamp_payload)
    with pytest.raises(CodecError, match="writes membound_test_codecs.Row"):
        rows.encode(timestamp_pb2.Timestamp())
    name = b"nowhere.Unknown"
    with pytest.raises(CodecError, match="not known here"):
        decode_any(forge(3, 0, bytes([len(name)]) + name + b"\x08\x01"))
    with pytest.raises(CodecError, match="message class"):
        get_codec("protobuf")
    with pytest.raises(CodecError, match="not a Protocol Buffers message class"):
        ProtobufSerializer(dict)


# --- pickle -----------------------------------------------------------------------------------

SIDE_EFFECTS: list[str] = []


def _trip(event: str) -> None:
    SIDE_EFFECTS.append(event)


class _Tripwire:
    """Unpickling this calls _trip: proof of whether pickle code ran."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_trip, ("unpickled",))


def test_pickle_needs_trusted_everywhere() -> None:
    for attempt in (
        lambda: get_codec("pickle"),
        lambda: get_codec("pickle+zlib"),
        lambda: get_codec("pickle", trusted="yes"),  # type: ignore[arg-type]
        lambda: PickleSerializer(),
    ):
        with pytest.raises(CodecError, match="runs code"):
            attempt()
    payload = get_codec("pickle+zlib", trusted=True).encode(_Tripwire())
    SIDE_EFFECTS.clear()
    with pytest.raises(CodecError, match="trusted=True"):
        decode_any(payload)
    assert SIDE_EFFECTS == []
    decode_any(payload, trusted=True)
    assert SIDE_EFFECTS == ["unpickled"]
    assert "trusted=True" in repr(get_codec("pickle", trusted=True))


# --- zstd dictionaries ------------------------------------------------------------------------


@NEEDS["zstd"]
def test_dictionary_shrinks_small_records_and_is_checked(dictionary: ZstdDictionary) -> None:
    import json

    records = [
        json.dumps(r).encode() for r in _sample_records(200, seed=99)
    ]  # not the training set
    plain = get_codec("zstd")
    with_dict = get_codec("zstd", dictionary=dictionary)
    plain_size = sum(len(plain.encode(r)) for r in records)
    dict_size = sum(len(with_dict.encode(r)) for r in records)
    assert dict_size < 0.6 * plain_size, (dict_size, plain_size)

    payload = with_dict.encode(records[0])
    assert with_dict.decode(payload) == records[0]
    assert decode_any(payload, dictionary=dictionary) == records[0]
    assert decode_any(payload, dictionary=dictionary.data) == records[0]
    with pytest.raises(CodecError, match=f"dictionary id {dictionary.dict_id}"):
        plain.decode(payload)
    with pytest.raises(CodecError, match=f"dictionary id {dictionary.dict_id}"):
        decode_any(payload)
    other = train_zstd_dictionary(
        [json.dumps(r).encode() for r in _sample_records(2000, seed=1)], size="8KB"
    )
    assert other.dict_id != dictionary.dict_id
    with pytest.raises(CodecError, match="not with this codec's dictionary"):
        get_codec("zstd", dictionary=other).decode(payload)
    # A dictionary codec still reads payloads made without one.
    assert with_dict.decode(plain.encode(records[1])) == records[1]


@NEEDS["zstd"]
def test_dictionary_persistence_and_refusals(dictionary: ZstdDictionary) -> None:
    assert ZstdDictionary(dictionary.data) == dictionary
    assert f"dict_id={dictionary.dict_id}" in repr(dictionary)
    assert "dictionary=ZstdDictionary(" in repr(get_codec("json+zstd", dictionary=dictionary))
    with pytest.raises(CodecError, match="not a trained zstd dictionary"):
        ZstdDictionary(b"raw content is refused, it has no id" * 10)
    with pytest.raises(CodecError, match="could not train"):
        train_zstd_dictionary([b"just a few samples"] * 3, size="16KB")
    with pytest.raises(CodecError, match="dictionary= is for zstd"):
        get_codec("json+zlib", dictionary=dictionary)
    with pytest.raises(AttributeError):
        dictionary.dict_id = 1  # type: ignore[misc]


# --- names, options, repr ---------------------------------------------------------------------


def test_names_and_repr() -> None:
    assert get_codec("json").name == "json"
    assert get_codec("bytes").name == "bytes"
    assert get_codec(" Bytes+ZLIB ").name == "zlib"
    codec = get_codec("json+gzip:9")
    assert codec.name == "json+gzip" and repr(codec) == "Codec('json+gzip', level=9)"
    assert get_codec("json+gzip", level=9).compressor.level == 9  # type: ignore[union-attr]
    assert repr(get_codec("json", max_output="1MB")) == "Codec('json', max_output='1.0 MB')"
    for unknown in ("yaml", "json+brotli", "json+", "+zstd", "json+zstd+lz4", "json:3", ""):
        with pytest.raises(CodecError, match="unknown codec"):
            get_codec(unknown)
    with pytest.raises(CodecError, match="not an integer"):
        get_codec("zlib:fast")
    with pytest.raises(ConfigurationError):
        get_codec("zlib:3", level=4)
    with pytest.raises(ConfigurationError, match="level must be"):
        get_codec("zlib:10")
    with pytest.raises(ConfigurationError):
        get_codec("json", max_output=0)
    with pytest.raises(CodecError, match="need a compressor"):
        get_codec("json", level=3)
    with pytest.raises(AttributeError):
        codec.max_output = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "json+zlib",
        "bytes",
        "arrow+gzip",
        pytest.param("msgpack+lz4", marks=[NEEDS["msgpack"], NEEDS["lz4"]]),
        pytest.param("zstd:7", marks=NEEDS["zstd"]),
    ],
)
def test_codecs_pickle_for_worker_processes(name: str) -> None:
    import pickle

    codec = get_codec(name, max_output="5MB")
    copy = pickle.loads(pickle.dumps(codec))
    assert repr(copy) == repr(codec)
    value = b"abc" * 100 if codec.serializer.name == "bytes" else {"a": [1, 2] * 50}
    if codec.serializer.name == "arrow":
        value = pa.table({"a": [1, 2] * 50})
    assert _same(codec.serializer.name, copy.decode(codec.encode(value)), value)


@NEEDS["zstd"]
def test_dictionary_codecs_and_trusted_pickle_codecs_pickle(dictionary: ZstdDictionary) -> None:
    import pickle

    codec = get_codec("json+zstd", dictionary=dictionary)
    copy = pickle.loads(pickle.dumps(codec))
    assert copy.compressor.dictionary == dictionary  # type: ignore[union-attr]
    record = _sample_records(1)[0]
    assert copy.decode(codec.encode(record)) == record
    trusted = pickle.loads(pickle.dumps(get_codec("pickle", trusted=True)))
    assert trusted.decode(trusted.encode({1, 2})) == {1, 2}


def test_encode_refuses_values_the_format_cannot_hold() -> None:
    with pytest.raises(CodecError, match="take bytes"):
        get_codec("zlib").encode("text")
    with pytest.raises(CodecError, match="Table or RecordBatch"):
        get_codec("arrow").encode({"a": [1]})
    with pytest.raises(CodecError, match="cannot encode"):
        get_codec("json").encode({"when": datetime.date(2024, 1, 1)})


# --- the header and corrupt payloads ---------------------------------------------------------


def test_header_layout() -> None:
    payload = get_codec("json+zlib").encode({"k": "v" * 100})
    assert payload[:2] == MAGIC == b"\x9bM"
    assert payload[2] == FORMAT_VERSION == 1
    assert payload[3:5] == bytes([1, 1])  # json, zlib
    (crc,) = struct.unpack_from("<I", payload, 5)
    assert crc == zlib.crc32(payload[:5] + payload[HEADER_SIZE:])
    assert zlib.decompress(payload[HEADER_SIZE:]) == b'{"k":"' + b"v" * 100 + b'"}'
    assert decode_any(forge(1, 0, b'{"a":1}')) == {"a": 1}
    assert decode_any(memoryview(bytearray(payload))) == {"k": "v" * 100}


def test_decoded_arrow_does_not_alias_a_mutable_input_buffer() -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", None, "z"]})
    buffer = bytearray(get_codec("arrow").encode(table))
    decoded = get_codec("arrow").decode(memoryview(buffer))
    buffer[:] = bytes(len(buffer))
    assert decoded.equals(table)


def test_codec_built_from_parts() -> None:
    from membound.codecs import GzipCompressor, MsgpackSerializer

    codec = Codec(MsgpackSerializer(), GzipCompressor(level=1), max_output="10MB")
    assert repr(codec) == "Codec('msgpack+gzip', level=1, max_output='10.0 MB')"
    payload = codec.encode({"k": ["v"] * 100})
    assert inspect_payload(payload).codec == "msgpack+gzip"
    assert get_codec("msgpack+gzip").decode(payload) == {"k": ["v"] * 100}
    with pytest.raises(CodecError, match="must be a Serializer"):
        Codec("msgpack")  # type: ignore[arg-type]


def test_unknown_versions_and_ids() -> None:
    with pytest.raises(CodecError, match="format version 2"):
        decode_any(forge(1, 0, b"1", version=2))
    with pytest.raises(CodecError, match="unknown serializer id 99"):
        decode_any(forge(99, 0, b"1"))
    with pytest.raises(CodecError, match="unknown compressor id 77"):
        decode_any(forge(1, 77, b"1"))
    with pytest.raises(CodecError, match="not a membound payload"):
        decode_any(b"\x00" * 20)
    with pytest.raises(CodecError, match="is bytes"):
        decode_any("a string")  # type: ignore[arg-type]


def _valid_payloads(dictionary: ZstdDictionary | None) -> list[tuple[Codec, bytes]]:
    """One small, compressed-when-possible payload per combination that is installed."""
    out = []
    for param in COMBINATIONS:
        serializer, compressor = param.values
        if any(mark.args and mark.args[0] for mark in param.marks if mark.name == "skipif"):
            continue
        if compressor == "zstd+dict" and dictionary is None:
            continue
        codec = make_codec(serializer, compressor, dictionary)
        value: Any = {
            "bytes": b"abc" * 20,
            "json": {"a": [1, 2, 3] * 5},
            "msgpack": {"a": [1, 2, 3] * 5},
            "pickle": {"a": (1, 2, 3) * 5},
            "arrow": pa.table({"a": [1, 2, 3] * 3}),
        }.get(serializer)
        if serializer == "protobuf":
            value = protobuf_row_class()(id=1, name="ab" * 20)
        out.append((codec, codec.encode(value)))
    return out


@pytest.fixture(scope="module")
def valid_payloads(request: pytest.FixtureRequest) -> list[tuple[Codec, bytes]]:
    has_zstd = importlib.util.find_spec("zstandard") is not None
    return _valid_payloads(request.getfixturevalue("dictionary") if has_zstd else None)


def _decoders(codec: Codec) -> list[Callable[[bytes], Any]]:
    dictionary = getattr(codec.compressor, "dictionary", None)
    return [codec.decode, lambda data: decode_any(data, trusted=True, dictionary=dictionary)]


@pytest.mark.timeout(120)
def test_every_truncation_and_single_bit_flip_raises_codec_error(
    valid_payloads: list[tuple[Codec, bytes]],
) -> None:
    for codec, payload in valid_payloads:
        for decode in _decoders(codec):
            for length in range(len(payload)):
                with pytest.raises(CodecError):
                    decode(payload[:length])
            for bit in range(len(payload) * 8):
                damaged = bytearray(payload)
                damaged[bit // 8] ^= 1 << (bit % 8)
                with pytest.raises(CodecError):
                    decode(bytes(damaged))


@pytest.mark.timeout(120)
def test_another_codecs_payload_raises_codec_error(
    valid_payloads: list[tuple[Codec, bytes]],
) -> None:
    for codec, _ in valid_payloads:
        for _, payload in valid_payloads:
            if inspect_payload(payload).serializer == codec.serializer.name and (
                inspect_payload(payload).compressor
                in (None, getattr(codec.compressor, "name", None))
            ):
                continue  # a payload this codec can read
            with pytest.raises(CodecError):
                codec.decode(payload)


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_damaged_payloads_raise_only_codec_error(
    valid_payloads: list[tuple[Codec, bytes]], data: st.DataObject
) -> None:
    codec, payload = data.draw(st.sampled_from(valid_payloads))
    damage = data.draw(st.sampled_from(["flip", "truncate", "splice", "random", "append"]))
    damaged = bytearray(payload)
    if damage == "flip":
        for position in data.draw(
            st.lists(st.integers(0, len(payload) - 1), min_size=1, max_size=8)
        ):
            damaged[position] ^= data.draw(st.integers(1, 255))
    elif damage == "truncate":
        del damaged[data.draw(st.integers(0, len(payload) - 1)) :]
    elif damage == "splice":
        start = data.draw(st.integers(HEADER_SIZE, len(payload)))
        damaged[start:] = data.draw(st.binary(min_size=1, max_size=64))
    elif damage == "append":
        damaged += data.draw(st.binary(min_size=1, max_size=16))
    else:
        damaged = bytearray(data.draw(st.binary(max_size=200)))
    if bytes(damaged) == payload:
        return
    for decode in _decoders(codec):
        with pytest.raises(CodecError):
            decode(bytes(damaged))


def _forged_bodies() -> st.SearchStrategy[tuple[int, int, bytes]]:
    """Bodies that pass the checksum but were never written by membound: random bytes, random
    bytes inside a valid compressed frame, and random messages behind a known protobuf name."""
    serializer_ids = [0, 1, 4]  # pickle (5) is excluded: random pickle is arbitrary code
    compressor_ids = [0, 1, 2]
    if importlib.util.find_spec("msgpack"):
        serializer_ids.append(2)
    if importlib.util.find_spec("google.protobuf"):
        serializer_ids.append(3)
    if importlib.util.find_spec("lz4"):
        compressor_ids.append(3)
    if importlib.util.find_spec("zstandard"):
        compressor_ids.append(4)

    @st.composite
    def bodies(draw: st.DrawFn) -> tuple[int, int, bytes]:
        serializer_id = draw(st.sampled_from(serializer_ids))
        compressor_id = draw(st.sampled_from(compressor_ids))
        raw = draw(st.binary(max_size=300))
        if serializer_id == 3 and draw(st.booleans()):
            name = protobuf_row_class().DESCRIPTOR.full_name.encode()
            raw = bytes([len(name)]) + name + raw
        if serializer_id == 4 and draw(st.booleans()):
            # A real Arrow stream with random bytes written over part of it.
            stream = get_codec("arrow").encode(pa.table({"a": [1, 2], "b": ["x", None]}))[
                HEADER_SIZE:
            ]
            start = draw(st.integers(0, len(stream) - 1))
            raw = (stream[:start] + raw + stream[start + len(raw) :])[: len(stream)]
        if compressor_id and draw(st.booleans()):
            name = {1: "zlib", 2: "gzip", 3: "lz4", 4: "zstd"}[compressor_id]
            body = get_codec(name).compressor.compress(raw)  # type: ignore[union-attr]
        else:
            body = raw
        return serializer_id, compressor_id, body

    return bodies()


@pytest.mark.timeout(300)
@FUZZ
@given(_forged_bodies())
def test_forged_bodies_raise_only_codec_error(forged: tuple[int, int, bytes]) -> None:
    """A body with a valid checksum but foreign content reaches the decompressors and parsers:
    it may decode (random bytes can be a valid msgpack value), but must never raise anything but
    CodecError, crash or hang."""
    payload = forge(*forged)
    with contextlib.suppress(CodecError):
        decode_any(payload, max_output="1MB")


# --- decompression bombs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "compressor",
    [
        "zlib",
        "gzip",
        pytest.param("lz4", marks=NEEDS["lz4"]),
        pytest.param("zstd", marks=NEEDS["zstd"]),
    ],
)
def test_decompression_is_bounded(compressor: str) -> None:
    size = 32_000_000
    bomb = get_codec(compressor).encode(bytes(size))
    assert len(bomb) < size / 200  # it is a bomb (lz4 tops out near 255:1)
    small = get_codec(compressor, max_output="1MB")
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="max_output=1.0 MB"):
            small.decode(bomb)
        with pytest.raises(CodecError, match="max_output"):
            decode_any(bomb, max_output=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000, f"refusing the bomb allocated {peak} bytes"
    # Exactly at the bound is allowed; the default bound lets this through.
    assert get_codec(compressor, max_output=size).decode(bomb) == bytes(size)
    assert DEFAULT_MAX_OUTPUT == 256_000_000
    assert get_codec(compressor).decode(bomb) == bytes(size)


@NEEDS["zstd"]
@pytest.mark.parametrize("declared", [60_000, 9_999, 300])
def test_zstd_frames_that_lie_about_their_size(declared: int) -> None:
    import zstandard

    compressor = get_codec("zstd").compressor
    assert compressor is not None
    body = bytearray(compressor.compress(b"0123456789" * 1000))
    # For this size the frame holds its size in 2 bytes (minus 256) right after its 4-byte
    # magic number and its descriptor byte; zstd frame headers have no checksum of their own.
    struct.pack_into("<H", body, 5, declared - 256)
    assert zstandard.get_frame_parameters(bytes(body)).content_size == declared
    with pytest.raises(CodecError):
        decode_any(forge(0, 4, bytes(body)))


@NEEDS["zstd"]
@NEEDS["lz4"]
def test_frames_that_declare_no_content() -> None:
    import lz4.frame
    import zstandard

    zstd = get_codec("zstd").compressor
    lz4_compressor = get_codec("lz4").compressor
    assert zstd is not None and lz4_compressor is not None
    # Standalone compressors read empty frames, with or without zstd's checksum.
    assert zstd.decompress(zstd.compress(b"")) == b""
    assert zstd.decompress(zstandard.ZstdCompressor(write_checksum=True).compress(b"")) == b""
    assert lz4_compressor.decompress(lz4.frame.compress(b"", store_size=False)) == b""
    # A zstd frame rewritten to declare 0 bytes (single segment, 1-byte size) but holding 10 kB,
    # and an lz4 frame with no size at all.
    frame = zstd.compress(b"0123456789" * 1000)
    lying = frame[:4] + b"\x20\x00" + frame[7:]
    assert zstandard.get_frame_parameters(lying).content_size == 0
    unsized = lz4.frame.compress(b"0123456789" * 1000, store_size=False)
    for compressor_id, body in ((4, lying), (3, unsized)):
        with pytest.raises(CodecError):
            decode_any(forge(0, compressor_id, body))


@NEEDS["lz4"]
@pytest.mark.parametrize("declared", [2**40, 20_000, 5])
def test_lz4_frames_that_lie_about_their_size(declared: int) -> None:
    xxhash = pytest.importorskip("xxhash", reason="xxhash computes the lz4 header checksum")
    body = bytearray(get_codec("lz4").compressor.compress(b"0123456789" * 1000))  # type: ignore[union-attr]
    # magic (4 bytes), FLG, BD, content size (8 bytes), then a header checksum: the second byte
    # of the xxh32 of the descriptor.
    struct.pack_into("<Q", body, 6, declared)
    body[14] = (xxhash.xxh32_intdigest(bytes(body[4:14])) >> 8) & 0xFF
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_any(forge(0, 3, bytes(body)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


# --- threads ---------------------------------------------------------------------------------


@NEEDS["zstd"]
@NEEDS["msgpack"]
def test_one_codec_shared_by_threads(dictionary: ZstdDictionary) -> None:
    codec = get_codec("msgpack+zstd", dictionary=dictionary)
    records = _sample_records(400)
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for record in records[offset::8]:
                assert codec.decode(codec.encode(record)) == record
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- Arrow columns ---------------------------------------------------------------------------


@NEEDS["msgpack"]
def test_encode_and_decode_column_keep_nulls() -> None:
    values = pa.array(
        [{"a": 1, "b": "x"}, None, {"a": 2, "b": None}],
        pa.struct([("a", pa.int32()), ("b", pa.string())]),
    )
    encoded = encode_column(values, "msgpack")
    assert encoded.type == pa.binary() and encoded.null_count == 1 and encoded[1].as_py() is None
    assert decode_column(encoded, "msgpack", type=values.type).equals(values)
    assert decode_column(encoded).equals(decode_column(encoded, get_codec("msgpack")))

    ints = pa.chunked_array([[1, None], [], [3]], pa.int32())
    encoded_chunks = encode_column(ints, get_codec("json"))
    assert isinstance(encoded_chunks, pa.ChunkedArray) and encoded_chunks.num_chunks == 3
    assert decode_column(encoded_chunks, "json", type=pa.int32()).equals(ints)

    blobs = pa.array([b"a" * 100, None, b""], pa.binary())
    assert decode_column(encode_column(blobs, "zlib"), "zlib", type=pa.binary()).equals(blobs)
    with pytest.raises(CodecError, match="binary column"):
        decode_column(pa.array([1, 2]), "json")
    with pytest.raises(CodecError):
        decode_column(pa.array([b"not a payload"]), "json")
