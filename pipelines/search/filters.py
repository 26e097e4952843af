"""Filters from user input: ``{column: condition}`` to a LanceDB SQL filter that no value can change.

    build_filter({"title": "O'Brien", "length_chars": (">", 500)}, table.schema)
    # "(`title` = 'O''Brien') AND (`length_chars` > 500)"

Column names are checked against the table's schema; values must have the column's type and are
quoted by :mod:`connectors.sql`, the one quoting function the sink and the run log use too.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

from connectors.errors import UserError
from connectors.sql import identifier, string_literal

__all__ = ["FilterError", "build_filter", "filters_from_json"]

_OPERATORS = {
    "=": "=",
    "==": "=",
    "!=": "!=",
    "<>": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "in": "IN",
    "not in": "NOT IN",
}


class FilterError(UserError):
    """A ``filters`` entry that cannot be turned into a safe filter: names the column and the problem."""


def _kind(t: pa.DataType) -> Optional[str]:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return None  # vectors, lists, structs, binary: not filterable by value


def _literal(column: str, kind: str, value: Any) -> str:
    """One SQL literal of the column's type; anything else is refused, never stringified."""
    bad = FilterError(f"filter on {column!r}: {type(value).__name__} value {value!r} does not fit its {kind} column")
    if kind == "string":
        if not isinstance(value, str):
            raise bad
        return string_literal(value)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise bad
        return "TRUE" if value else "FALSE"
    if kind == "integer":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise bad  # Lance does not compare an integer column with 2.5: say so instead of failing later
        return str(int(value))
    if kind == "float":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise bad
        if not math.isfinite(float(value)):
            raise FilterError(f"filter on {column!r}: {value!r} is not a finite number")
        return repr(float(value))
    if kind == "date":
        if isinstance(value, _dt.datetime) or not isinstance(value, _dt.date):
            raise bad
        return f"date '{value.isoformat()}'"
    if kind == "timestamp":
        if not isinstance(value, _dt.datetime):
            raise bad
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return f"timestamp '{value.isoformat(sep=' ')}'"
    raise bad


def _condition(name: str, column: str, kind: str, op: str, value: Any) -> str:
    if not isinstance(op, str) or op.lower() not in _OPERATORS:
        raise FilterError(f"filter on {column!r}: unknown operator {op!r}; use one of {', '.join(_OPERATORS)}")
    sql_op = _OPERATORS[op.lower()]
    if sql_op in ("IN", "NOT IN"):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)) or not value:
            raise FilterError(f"filter on {column!r}: {op!r} needs a non-empty list of values")
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return f"{name} {sql_op} ({', '.join(_literal(column, kind, v) for v in items)})"
    if value is None:
        if sql_op not in ("=", "!="):
            raise FilterError(f"filter on {column!r}: None only goes with '=' or '!='")
        return f"{name} IS NULL" if sql_op == "=" else f"{name} IS NOT NULL"
    return f"{name} {sql_op} {_literal(column, kind, value)}"


def _is_condition(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)


def build_filter(filters: Mapping[str, Any], schema: pa.Schema) -> str:
    """A LanceDB SQL filter from ``{column: condition}``, safe for values that come from users.

    Each entry is ANDed. A condition is a value (``{"title": "O'Brien"}``: equality; ``None``: IS
    NULL), a list or set (IN), an ``(operator, value)`` tuple with operator one of ``= != < <= > >=
    in``, ``not in`` (``{"length_chars": (">", 500)}``), or a list of such tuples (all must hold:
    ``[(">=", 500), ("<", 900)]``).

    Column names must be columns of ``schema`` (the vector and other non-scalar columns are refused)
    and are quoted as identifiers; values must have the column's type (str for string columns, int
    for integer columns, int or float for float columns, bool, ``datetime.date``,
    ``datetime.datetime``) and are written as SQL literals with quotes doubled. Nothing a user
    types can end a literal or add a clause.

    Raises:
        FilterError: unknown column, non-filterable column, wrong value type or bad operator.
    """
    if not isinstance(filters, Mapping):
        raise FilterError(f"filters must be a mapping of column to condition, not {type(filters).__name__}")
    clauses = []
    for column, value in filters.items():
        if not isinstance(column, str) or column not in schema.names:
            columns = [f.name for f in schema if _kind(f.type)]
            raise FilterError(f"filter on unknown column {column!r}; filterable columns: {', '.join(columns)}")
        kind = _kind(schema.field(column).type)
        if kind is None:
            raise FilterError(f"column {column!r} ({schema.field(column).type}) cannot be filtered by value")
        try:
            name = identifier(column)  # always quoted: `date`, `order` and other keywords are names too
        except ValueError as exc:
            raise FilterError(str(exc)) from None
        if _is_condition(value):
            conditions = [value]
        elif isinstance(value, list) and value and all(_is_condition(v) for v in value):
            conditions = value
        elif isinstance(value, (list, set, frozenset)):
            conditions = [("in", value)]
        elif isinstance(value, tuple):
            raise FilterError(f"filter on {column!r}: a tuple is (operator, value); use a list for IN")
        else:
            conditions = [("=", value)]
        clauses.extend(_condition(name, column, kind, op, v) for op, v in conditions)
    return " AND ".join(f"({c})" for c in clauses)


def filters_from_json(filters: Any, schema: pa.Schema) -> dict[str, Any]:
    """``filters`` as it comes in JSON, in :func:`build_filter`'s form.

    JSON has no tuples or dates, so an ``(operator, value)`` condition is written
    ``{"op": ">", "value": 500}`` (a list of those: all must hold), and a date or timestamp value is
    an ISO 8601 string (``"2024-05-01"``, ``"2024-05-01T12:00:00Z"``), read for date and timestamp
    columns only. A plain value is equality, ``null`` IS NULL and a list IN, as in :func:`build_filter`.

    Raises:
        FilterError: not an object, a condition object with other keys, or a date that does not parse.
    """
    if not isinstance(filters, Mapping):
        raise FilterError(f"filters must be an object of column to condition, not {type(filters).__name__}")

    def value(column: str, v: Any) -> Any:
        kind = _kind(schema.field(column).type) if column in schema.names else None
        if isinstance(v, list):
            return [value(column, x) for x in v]
        if kind in ("date", "timestamp") and isinstance(v, str):
            try:
                parsed = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise FilterError(f"filter on {column!r}: {v!r} is not an ISO 8601 {kind}") from None
            return parsed.date() if kind == "date" and len(v) <= 10 else parsed
        return v

    def condition(column: str, v: Any) -> Any:
        if isinstance(v, Mapping):
            if set(v) != {"op", "value"}:
                shape = '{"op": ..., "value": ...}'
                raise FilterError(f"filter on {column!r}: a condition object is {shape}, got keys {sorted(v)}")
            return (v["op"], value(column, v["value"]))
        if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            return [condition(column, x) for x in v]
        return value(column, v)

    return {column: condition(column, v) for column, v in filters.items()}
