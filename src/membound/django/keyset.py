"""Keyset (seek) chunking over a QuerySet's own ordering, with the primary key as tiebreaker.

A QuerySet's ordering (``order_by()``, else ``Meta.ordering``, else none) is turned into a list
of :class:`KeyTerm`: one per ordering term, then the primary key unless the ordering already
ends on it. The next chunk is the rows *after* the last row seen, in the expanded form that
every database can use an index for::

    a > x OR (a = x AND b > y) OR (a = x AND b = y AND pk > z)

with ``<`` for a descending term, and a redundant leading ``a >= x`` so that the first column's
index bounds the scan (PostgreSQL does not turn the OR into an index range; MariaDB does not
use row-value comparisons ``(a, b) > (x, y)`` for one).

**The NULL rule.** A NULL ordering value sits where the database's ``ORDER BY`` puts it:
PostgreSQL sorts NULL above every value (last ascending, first descending); SQLite and
MariaDB/MySQL sort it below every value (first ascending, last descending); an explicit
``F("x").asc(nulls_first=True)`` or ``nulls_last=True`` puts it there on every database.
The predicate follows the same rule: after a non-NULL ``x`` come the greater values and, where
NULLs sort last, the NULLs; after a NULL come only the non-NULL values, where NULLs sort first.
Rows tied on NULL are told apart by the later terms, as any tie is. So every row comes exactly
once and in the QuerySet's order, whatever the NULLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import and_, or_
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import connections
from django.db.models import F, Q, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.db.models.expressions import BaseExpression, OrderBy

from membound.errors import ConfigurationError

__all__ = ["KeyTerm", "after", "key_terms", "order_by_expressions"]

# Prefix of the annotations membound adds to a QuerySet (key expressions, value lengths);
# stripped from every row before it is handed out.
ALIAS_PREFIX = "_membound_"


@dataclass(frozen=True)
class KeyTerm:
    """One term of the keyset: what to compare, in which direction, and where NULLs sit.

    ``name`` is a field path (``"ts"``, ``"user__name"``) or an alias membound annotates with
    ``expression``. ``nulls_last`` is resolved for this database: True when NULLs come after
    every value *in iteration order*. ``attname`` is the instance attribute that holds the
    value when the row is a model instance that loads it (None: read the annotation instead).
    """

    name: str
    descending: bool
    nulls_last: bool
    nullable: bool
    explicit_nulls: bool = False
    expression: Any = None
    attname: str | None = None

    def order_by(self) -> OrderBy:
        """The ``ORDER BY`` term, with the NULL position spelled out only when it was given."""
        column = F(self.name)
        nulls: dict[str, bool] = {}
        if self.explicit_nulls:
            # nulls_last is in iteration order, which is what Django's flags mean too.
            nulls = {"nulls_last": True} if self.nulls_last else {"nulls_first": True}
        return column.desc(**nulls) if self.descending else column.asc(**nulls)


def _raw_ordering(queryset: QuerySet) -> list[Any]:
    query = queryset.query
    if query.extra_order_by:
        raise ConfigurationError(
            "chunked iteration cannot follow an extra(order_by=...) ordering; order by fields "
            "or expressions with order_by()"
        )
    if query.order_by:
        return list(query.order_by)
    if query.default_ordering:
        return list(query.get_meta().ordering or ())
    return []


def _split_term(term: Any) -> tuple[str | None, Any, bool, bool | None]:
    """``(path or None, expression or None, descending, nulls_first/None)`` of one term."""
    if isinstance(term, str):
        if term == "?":
            raise ConfigurationError(
                "a randomly ordered QuerySet (order_by('?')) has no order to resume from; "
                "order it by fields, or by nothing to iterate in primary-key order"
            )
        if "." in term:
            raise ConfigurationError(
                f"ordering term {term!r} names a table column; order by the model field instead"
            )
        descending = term.startswith("-")
        return term.lstrip("-+"), None, descending, None
    if isinstance(term, OrderBy):
        nulls = True if term.nulls_first else False if term.nulls_last else None
        inner = term.expression
        if isinstance(inner, F):
            return inner.name, None, term.descending, nulls
        return None, inner, term.descending, nulls
    if isinstance(term, F):
        return term.name, None, False, None
    if isinstance(term, BaseExpression):
        return None, term, False, None
    raise ConfigurationError(f"cannot iterate in chunks over the ordering term {term!r}")


def _loaded_attnames(queryset: QuerySet) -> set[str] | None:
    """Attnames of local fields a model queryset loads; None when every field is loaded."""
    names, defer = queryset.query.deferred_loading
    if not names:
        return None
    opts = queryset.model._meta
    fields = opts.concrete_fields
    if defer:
        return {f.attname for f in fields if f.name not in names and f.attname not in names}
    return {f.attname for f in fields if f.name in names or f.attname in names or f.primary_key}


def _resolve_path(queryset: QuerySet, path: str) -> tuple[str, bool, Any]:
    """A field path's final form, whether it may be NULL, and its last field (None: unknown)."""
    opts = queryset.model._meta
    if path == "pk":
        return opts.pk.name, False, opts.pk
    parts = path.split(LOOKUP_SEP)
    nullable = False
    field = None
    for index, part in enumerate(parts):
        try:
            field = opts.get_field(part)
        except FieldDoesNotExist:
            # A transform ("name__lower") or an unknown name: Django checks it when it is used.
            return path, True, None
        if field.many_to_many or field.one_to_many:
            raise ConfigurationError(
                f"ordering term {path!r} goes through the many-valued relation {part!r}, which "
                "repeats rows; order by fields of this model or of single-valued relations"
            )
        # Reverse relations have null=True: a row may have no related row at all.
        nullable = nullable or bool(getattr(field, "null", True))
        last = index == len(parts) - 1
        if field.is_relation and not last:
            opts = field.related_model._meta
            continue
        if field.is_relation:
            if not field.concrete:
                raise ConfigurationError(
                    f"ordering term {path!r} is a reverse relation; order by one of its fields"
                )
            if field.related_model._meta.ordering:
                raise ConfigurationError(
                    f"ordering term {path!r} orders by {field.related_model.__name__}'s "
                    f"Meta.ordering; spell it out (e.g. '{path}__<field>' or '{path}_id') so "
                    "that chunks can resume from it"
                )
            return LOOKUP_SEP.join([*parts[:-1], field.attname]), nullable, field
    return path, nullable, field


def key_terms(queryset: QuerySet, *, model_rows: bool) -> list[KeyTerm]:
    """The keyset of a QuerySet: its ordering terms resolved, then the primary key.

    Raises :class:`ConfigurationError` for an ordering chunks cannot resume from (random,
    ``extra()``, across a many-valued relation).
    """
    query = queryset.query
    opts = queryset.model._meta
    nulls_largest = connections[queryset.db].features.nulls_order_largest
    loaded = _loaded_attnames(queryset) if model_rows else None
    terms: list[KeyTerm] = []
    has_pk = False
    for index, raw in enumerate(_raw_ordering(queryset)):
        path, expression, descending, nulls_first = _split_term(raw)
        attname = None
        if path is not None and path in query.annotations:
            nullable = True
            if model_rows and path in query.annotation_select:
                attname = path
        elif path is not None:
            path, nullable, field = _resolve_path(queryset, path)
            local = field is not None and LOOKUP_SEP not in path and field.concrete
            if local and field.primary_key:
                has_pk = True
            if model_rows and local and (loaded is None or field.attname in loaded):
                attname = field.attname
        else:
            nullable = True
        # Where NULLs sit in iteration order: the database's default, unless the term says.
        nulls_last = (nulls_largest != descending) if nulls_first is None else not nulls_first
        if expression is not None or (path is not None and attname is None and model_rows):
            # Read the value back under an alias of ours: an expression has no other name, and
            # a model row does not carry related or deferred values as attributes.
            alias = f"{ALIAS_PREFIX}key{index}"
            expression = expression if expression is not None else F(path)
            path = alias
        terms.append(
            KeyTerm(
                name=path,
                descending=descending,
                nulls_last=nulls_last,
                nullable=nullable,
                explicit_nulls=nulls_first is not None,
                expression=expression,
                attname=attname,
            )
        )
        if has_pk:
            # Terms after a unique, non-NULL key never decide anything.
            break
    if not has_pk:
        terms.append(
            KeyTerm(
                name=opts.pk.name,
                descending=False,
                nulls_last=False,
                nullable=False,
                attname=opts.pk.attname if model_rows else None,
            )
        )
    return terms


def order_by_expressions(terms: list[KeyTerm]) -> list[OrderBy]:
    return [term.order_by() for term in terms]


def _beyond(term: KeyTerm, value: Any) -> Q | None:
    """Rows strictly after ``value`` on this term alone; None when there are none."""
    if value is None:
        # After a NULL: nothing when NULLs sort last; every non-NULL value when they sort first.
        return None if term.nulls_last else Q(**{f"{term.name}__isnull": False})
    lookup = "lt" if term.descending else "gt"
    beyond = Q(**{f"{term.name}__{lookup}": value})
    if term.nullable and term.nulls_last:
        beyond |= Q(**{f"{term.name}__isnull": True})
    return beyond


def after(terms: list[KeyTerm], values: tuple[Any, ...]) -> Q | None:
    """The filter selecting the rows after the row whose key is ``values``; None: no rows."""
    clauses: list[Q] = []
    equal: list[Q] = []
    for term, value in zip(terms, values, strict=True):
        beyond = _beyond(term, value)
        if beyond is not None:
            clauses.append(reduce(and_, [*equal, beyond]))
        equal.append(
            Q(**{f"{term.name}__isnull": True}) if value is None else Q(**{term.name: value})
        )
    if not clauses:
        return None
    predicate = reduce(or_, clauses)
    first, first_value = terms[0], values[0]
    if len(clauses) > 1 and first_value is not None and not (
        first.nullable and first.nulls_last
    ):
        # Redundant, but it is what lets the database bound an index scan on the first column.
        lookup = "lte" if first.descending else "gte"
        predicate = Q(**{f"{first.name}__{lookup}": first_value}) & predicate
    return predicate
