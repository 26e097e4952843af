"""SQL literals and identifiers for Lance filters: the one place that quotes, so no value can end a literal."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

__all__ = ["identifier", "sql_list", "sql_value", "string_literal"]


def string_literal(value: str) -> str:
    """``value`` as a SQL string literal: quotes inside it are doubled, the SQL way."""
    return "'" + value.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A column name quoted with backticks (``date``, ``order`` and other keywords are names too);
    a name holding a backtick cannot be quoted safely and is refused."""
    if "`" in name:
        raise ValueError(f"column {name!r}: a name with a backtick cannot be quoted safely")
    return f"`{name}`"


def sql_value(v: Any) -> str:
    """A SQL literal for a string or an integer (ids, row addresses, run ids)."""
    if isinstance(v, str):
        return string_literal(v)
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    raise TypeError(f"cannot use {type(v).__name__} value {v!r} in a filter")


def sql_list(values: Iterable[Any]) -> str:
    """A SQL ``IN`` list of :func:`sql_value` literals: ``('a', 'b')``."""
    return "(" + ", ".join(sql_value(v) for v in values) + ")"
