"""Keyset (seek) pagination: the SQL of a page per dialect, and opaque page tokens.

A page is ``ORDER BY key LIMIT size`` with a predicate that starts right after (or before) the
key of the row a token remembers, so page 10,000 costs what page 1 costs when an index covers the
key; OFFSET paging reads and throws away every row before the page.

**The NULL rule.** A key column may hold NULLs. membound sorts them *after* every value in
ascending order and *before* every value in descending order (PostgreSQL's default) on every
database, and the predicates treat NULL as that largest value, so rows with NULL keys are paged
like any other row, exactly once, never dropped.

**Predicates.** With NOT NULL key columns PostgreSQL and SQLite get the row-value form
``(a, b) > (?, ?)``, which their planners turn into an index range scan. MySQL/MariaDB gets the
expanded form ``a >= ? AND (a > ? OR (a = ? AND b > ?))``: its optimizer does not use an index for
a row-value comparison, but the leading ``a >= ?`` gives it a range on the index's first column.
Nullable columns get the expanded form everywhere, with ``IS NULL`` terms for the NULL rule.

**Tokens** are URL-safe text: the key values of the row, the direction, and a fingerprint of the
source, key and order, closed by an HMAC-SHA256 tag. With a secret (``token_secret=`` or the
``MEMBOUND_TOKEN_SECRET`` environment variable) the tag signs the token, so a client cannot
forge one. Without a secret the tag is a checksum: a token that was altered, truncated or made
for another table, key or order is still refused with :class:`~membound.errors.TokenError`, but
a determined client could compute a valid one (it would only ever choose where a page starts:
values are always bound as parameters, never pasted into SQL).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import decimal
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from membound.errors import ConfigurationError, TokenError

__all__ = ["KeysetQuery", "Page", "decode_token", "encode_token", "keyset_sql", "offset_sql"]

TOKEN_VERSION = 1
_TAG_BYTES = 16
# Without a secret the tag is keyed by this constant plus the source's fingerprint: a checksum.
_CHECKSUM_KEY = b"membound page token v1"


@dataclass
class Page:
    """One page of rows, and the tokens to the pages on either side of it.

    ``next_token`` is None on the last page, ``previous_token`` on the first. Pass either to
    ``page(..., after=token)`` to move in its direction.
    """

    rows: list[Any]
    next_token: str | None = None
    previous_token: str | None = None
    offset: int | None = field(default=None, repr=False)

    @property
    def has_next(self) -> bool:
        return self.next_token is not None

    @property
    def has_previous(self) -> bool:
        return self.previous_token is not None

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


# -- SQL -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeysetQuery:
    """What a keyset page selects: the source, its key columns and which of them may be NULL."""

    source_sql: str  # "SELECT ... FROM ..." giving the rows, key columns included
    key: tuple[str, ...]
    nullable: tuple[bool, ...]
    dialect: str  # "sqlite" | "postgresql" | "mysql" | other (generic)
    descending: bool = False

    def fingerprint(self) -> str:
        text = json.dumps([self.source_sql, list(self.key), self.descending])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def quote(name: str, dialect: str) -> str:
    """Quote an identifier for ``dialect``."""
    if dialect == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _order_by(q: KeysetQuery, reverse: bool) -> str:
    """ORDER BY the key with the NULL rule: NULLs after values ascending, before descending."""
    descending = q.descending != reverse
    terms = []
    for column, nullable in zip(q.key, q.nullable, strict=True):
        col = quote(column, q.dialect)
        direction = "DESC" if descending else "ASC"
        if not nullable:
            terms.append(f"{col} {direction}")
        elif q.dialect in ("postgresql", "sqlite"):
            terms.append(f"{col} {direction} NULLS {'FIRST' if descending else 'LAST'}")
        else:  # MySQL and others without NULLS FIRST/LAST: sort on IS NULL first
            terms.append(f"({col} IS NULL) {direction}, {col} {direction}")
    return ", ".join(terms)


def _seek_predicate(q: KeysetQuery, values: Sequence[Any], forward: bool, ph: str
                    ) -> tuple[str, list[Any]]:
    """Rows strictly after ``values`` in the page order (before them when not ``forward``)."""
    greater = forward != q.descending  # in ascending terms: do we want larger keys?
    cols = [quote(c, q.dialect) for c in q.key]
    if not any(q.nullable) and None not in values:
        op = ">" if greater else "<"
        if q.dialect in ("postgresql", "sqlite"):
            placeholders = ", ".join([ph] * len(cols))
            return f"({', '.join(cols)}) {op} ({placeholders})", list(values)
        if q.dialect == "mysql":
            return _mysql_expanded(cols, list(values), op, ph)
    # Expanded form with the NULL rule: NULL is the largest value of a column.
    disjuncts: list[str] = []
    params: list[Any] = []
    for i, (col, value) in enumerate(zip(cols, values, strict=True)):
        terms: list[str] = []
        term_params: list[Any] = []
        for prev_col, prev_value in zip(cols[:i], values[:i], strict=True):
            if prev_value is None:
                terms.append(f"{prev_col} IS NULL")
            else:
                terms.append(f"{prev_col} = {ph}")
                term_params.append(prev_value)
        if greater:
            if value is None:
                continue  # nothing is larger than NULL
            nullable = q.nullable[i]
            terms.append(f"({col} > {ph} OR {col} IS NULL)" if nullable else f"{col} > {ph}")
            term_params.append(value)
        else:
            if value is None:
                terms.append(f"{col} IS NOT NULL")
            else:
                terms.append(f"{col} < {ph}")
                term_params.append(value)
        disjuncts.append("(" + " AND ".join(terms) + ")")
        params.extend(term_params)
    if not disjuncts:
        return "1 = 0", []
    return "(" + " OR ".join(disjuncts) + ")", params


def _mysql_expanded(cols: list[str], values: list[Any], op: str, ph: str
                    ) -> tuple[str, list[Any]]:
    """``a >= x AND (a > x OR (a = x AND (b > y ...)))``: a range MySQL can seek on the index."""

    def nested(i: int) -> tuple[str, list[Any]]:
        if i == len(cols) - 1:
            return f"{cols[i]} {op} {ph}", [values[i]]
        inner, inner_params = nested(i + 1)
        return (
            f"({cols[i]} {op} {ph} OR ({cols[i]} = {ph} AND {inner}))",
            [values[i], values[i], *inner_params],
        )

    body, params = nested(0)
    if len(cols) == 1:
        return body, params
    return f"{cols[0]} {op}= {ph} AND {body}", [values[0], *params]


def keyset_sql(q: KeysetQuery, after: Sequence[Any] | None, *, forward: bool, limit: int,
               placeholder: str) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page: ``limit`` rows after (or before) ``after``."""
    where, params = ("", [])
    if after is not None:
        predicate, params = _seek_predicate(q, after, forward, placeholder)
        where = f" WHERE {predicate}"
    sql = (f"SELECT * FROM ({q.source_sql}) AS _membound_page{where} "
           f"ORDER BY {_order_by(q, reverse=not forward)} LIMIT {int(limit)}")
    return sql, params


def offset_sql(q: KeysetQuery, offset: int, limit: int) -> str:
    """The SQL of an OFFSET page (only when asked for explicitly)."""
    return (f"SELECT * FROM ({q.source_sql}) AS _membound_page "
            f"ORDER BY {_order_by(q, reverse=False)} LIMIT {int(limit)} OFFSET {int(offset)}")


# -- tokens --------------------------------------------------------------------------------------


def _encode_value(value: Any) -> list[Any]:
    if value is None or isinstance(value, (bool, str)):
        return ["v", value]
    if isinstance(value, int):
        return ["i", str(value)]  # as text: JSON readers may round big integers
    if isinstance(value, float):
        return ["f", value.hex()]
    if isinstance(value, decimal.Decimal):
        return ["d", str(value)]
    if isinstance(value, _dt.datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, _dt.date):
        return ["da", value.isoformat()]
    if isinstance(value, _dt.time):
        return ["t", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["b", base64.urlsafe_b64encode(bytes(value)).decode()]
    raise ConfigurationError(
        f"a key value of type {type(value).__name__} cannot go into a page token; key on "
        "columns of numbers, text, bytes, dates, times, decimals or UUIDs"
    )


_DECODERS = {
    "v": lambda v: v,
    "i": int,
    "f": float.fromhex,
    "d": decimal.Decimal,
    "dt": _dt.datetime.fromisoformat,
    "da": _dt.date.fromisoformat,
    "t": _dt.time.fromisoformat,
    "u": uuid.UUID,
    "b": lambda v: base64.urlsafe_b64decode(v.encode()),
}


def _secret(secret: str | bytes | None) -> bytes | None:
    secret = secret if secret is not None else os.environ.get("MEMBOUND_TOKEN_SECRET")
    if secret is None or secret == "":
        return None
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def _tag(payload: bytes, fingerprint: str, secret: bytes | None) -> bytes:
    key = secret if secret is not None else _CHECKSUM_KEY + fingerprint.encode()
    return hmac.new(key, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_token(values: Sequence[Any], *, forward: bool, fingerprint: str,
                 secret: str | bytes | None = None) -> str:
    """An opaque, URL-safe token for the position after (``forward``) or before ``values``."""
    body = {"v": TOKEN_VERSION, "f": fingerprint, "n": forward,
            "k": [_encode_value(v) for v in values]}
    payload = json.dumps(body, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_tag(payload, fingerprint, _secret(secret)))}"


def decode_token(token: str, *, fingerprint: str, key_length: int,
                 secret: str | bytes | None = None) -> tuple[list[Any], bool]:
    """Check and read a token: ``(key values, forward)``. Raises :class:`TokenError`."""
    if not isinstance(token, str) or token.count(".") != 1:
        raise TokenError("this page token is malformed; pass back a token exactly as a page "
                         "gave it (page.next_token / page.previous_token)")
    payload_text, tag_text = token.split(".")
    try:
        payload, tag = _unb64(payload_text), _unb64(tag_text)
        body = json.loads(payload)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenError("this page token is damaged (not valid base64/JSON); pass back a "
                         "token exactly as a page gave it") from None
    if not isinstance(body, dict) or body.get("v") != TOKEN_VERSION:
        raise TokenError("this page token is from another version of membound or not a page "
                         "token; start again from the first page")
    expected = _tag(payload, body.get("f", ""), _secret(secret))
    if not hmac.compare_digest(tag, expected):
        raise TokenError("this page token was altered or signed with another secret; pass "
                         "back a token exactly as a page gave it")
    if body["f"] != fingerprint:
        raise TokenError("this page token belongs to another table, query, key or order; a "
                         "token only continues the listing that made it")
    keys = body.get("k")
    if not isinstance(keys, list) or len(keys) != key_length:
        raise TokenError("this page token does not match the key; start from the first page")
    try:
        values = [_DECODERS[tag_](value) for tag_, value in keys]
    except (KeyError, ValueError, TypeError, binascii.Error):
        raise TokenError("this page token holds a value membound cannot read; start from "
                         "the first page") from None
    return values, bool(body.get("n"))
