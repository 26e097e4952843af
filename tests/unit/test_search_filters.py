"""`build_filter` (pipelines/search/filters.py): filters from user input cannot change the query's meaning.

Unit checks of the SQL it writes and of what it refuses, then a round trip through a real LanceDB
table whose titles are the hostile strings themselves: filtering by each returns exactly its row.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from pipelines.search.filters import FilterError, build_filter, filters_from_json

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("title", pa.string()),
        ("length_chars", pa.int32()),
        ("score_f", pa.float32()),
        ("ok", pa.bool_()),
        ("day", pa.date32()),
        ("at", pa.timestamp("us")),
        ("date", pa.string()),
        ("odd name", pa.string()),
        ("vector", pa.list_(pa.float32(), 4)),
    ]
)

HOSTILE = [
    "O'Brien",
    "' OR 1=1 --",
    "x' OR 'a'='a",
    "x'; DROP TABLE docs; --",
    "'",
    "''",
    "a''b",
    "back\\",
    "back\\'",
    "\\' OR '1'='1",
    "new\nline' OR 1=1",
    "tab\t",
    "nul\x00byte",
    'dq" OR "1"="1',
    "`title`",
    "; DELETE FROM docs",
    "1) OR (1=1",
    "$$ x $$",
    "E'\\x27'",
    "% _ wildcards",
    "☃ é ünï",
    "title = 'x' OR 1=1",
    "/* comment */",
    "--",
]


@pytest.mark.parametrize(
    "filters, sql",
    [
        ({"title": "O'Brien"}, "(`title` = 'O''Brien')"),
        ({"length_chars": (">", 500)}, "(`length_chars` > 500)"),
        ({"length_chars": [(">=", 300), ("<", 900)]}, "(`length_chars` >= 300) AND (`length_chars` < 900)"),
        ({"id": ["a", "b'c"]}, "(`id` IN ('a', 'b''c'))"),
        ({"id": ("not in", ["a"])}, "(`id` NOT IN ('a'))"),
        ({"title": None}, "(`title` IS NULL)"),
        ({"title": ("!=", None)}, "(`title` IS NOT NULL)"),
        ({"score_f": ("<", 0.5), "ok": True}, "(`score_f` < 0.5) AND (`ok` = TRUE)"),
        ({"score_f": 2}, "(`score_f` = 2.0)"),
        ({"day": dt.date(2026, 11, 28)}, "(`day` = date '2026-11-28')"),
        ({"at": (">=", dt.datetime(2026, 11, 28, 6, 30))}, "(`at` >= timestamp '2026-11-28 06:30:00')"),
        ({"date": "2026-11-28"}, "(`date` = '2026-11-28')"),  # a keyword as a column name
        ({"odd name": "x"}, "(`odd name` = 'x')"),
        ({"length_chars": np.int64(3)}, "(`length_chars` = 3)"),
    ],
)
def test_sql_for_each_form(filters, sql):
    assert build_filter(filters, SCHEMA) == sql


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"nope": 1}, "unknown column 'nope'"),
        ({"title = 'x' OR 1=1 --": "x"}, "unknown column"),
        ({"title; DROP TABLE docs": "x"}, "unknown column"),
        ({"`title`": "x"}, "unknown column"),
        ({"vector": [1.0]}, "cannot be filtered"),
        ({"length_chars": "500"}, "does not fit its integer column"),
        ({"length_chars": "500 OR 1=1"}, "does not fit its integer column"),
        ({"length_chars": 2.5}, "does not fit its integer column"),
        ({"length_chars": True}, "does not fit its integer column"),
        ({"title": 5}, "does not fit its string column"),
        ({"title": b"bytes"}, "does not fit its string column"),
        ({"ok": "true"}, "does not fit its bool column"),
        ({"day": "2026-11-28"}, "does not fit its date column"),
        ({"day": dt.datetime(2026, 11, 28)}, "does not fit its date column"),
        ({"score_f": float("nan")}, "not a finite number"),
        ({"score_f": "1 OR 1=1"}, "does not fit its float column"),
        ({"title": ("LIKE", "%")}, "unknown operator 'LIKE'"),
        ({"title": ("= 'x' OR 1=1 --", "x")}, "unknown operator"),
        ({"title": ("in", [])}, "non-empty list"),
        ({"title": ("in", "abc")}, "non-empty list"),
        ({"title": (">", None)}, "None only goes with"),
        ({"title": ("=", "a", "b")}, "a tuple is (operator, value)"),
        ({"title": [("=", "a"), "b"]}, "does not fit its string column"),
        ("title = 'x'", "must be a mapping"),
    ],
)
def test_refuses_what_it_cannot_make_safe(filters, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_filter(filters, SCHEMA)


@pytest.fixture(scope="module")
def hostile_table(tmp_path_factory):
    import lancedb

    titles = [*HOSTILE, "plain", "O'Brien second"]
    n = len(titles)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 4)).astype(np.float32)
    data = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "title": titles,
            "length_chars": pa.array(range(n), pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(vectors.ravel(), 4),
        }
    )
    db = lancedb.connect(str(tmp_path_factory.mktemp("hostile")))
    return db.create_table("t", data)


def _titles(table, filters, vector=None) -> list:
    query = table.search(vector) if vector is not None else table.search()
    where = build_filter(filters, table.schema)
    return query.where(where, prefilter=True).limit(1000).to_arrow().column("title").to_pylist()


@pytest.mark.parametrize("value", HOSTILE)
def test_each_hostile_value_matches_only_itself(hostile_table, value):
    assert _titles(hostile_table, {"title": value}) == [value]
    assert _titles(hostile_table, {"title": value}, vector=np.ones(4, np.float32)) == [value]
    assert len(_titles(hostile_table, {"title": ("!=", value)})) == hostile_table.count_rows() - 1
    assert sorted(_titles(hostile_table, {"title": [value, "plain"]})) == sorted([value, "plain"])


def test_values_that_are_not_in_the_table_match_nothing(hostile_table):
    for value in ["' OR '1'='1", "x' OR title IS NOT NULL OR 'a'='", "plain' --", "%"]:
        assert _titles(hostile_table, {"title": value}) == []
    assert _titles(hostile_table, {"title": "plain", "length_chars": ("<", 0)}) == []


def test_the_one_quoting_function_doubles_quotes_and_refuses_what_it_cannot_quote():
    from connectors.sql import identifier, sql_list, sql_value, string_literal

    assert string_literal("O'Brien') OR (1=1") == "'O''Brien'') OR (1=1'"
    assert sql_list(["a'b", 7, np.int64(8)]) == "('a''b', 7, 8)"
    assert identifier("date") == "`date`"
    with pytest.raises(ValueError, match="backtick"):
        identifier("a`b")
    for bad in (True, 2.5, None, b"x"):
        with pytest.raises(TypeError, match="cannot use"):
            sql_value(bad)


@pytest.mark.parametrize(
    "body, sql",
    [
        ({"title": "O'Brien"}, "(`title` = 'O''Brien')"),
        ({"title": None}, "(`title` IS NULL)"),
        ({"length_chars": [1, 2]}, "(`length_chars` IN (1, 2))"),
        ({"length_chars": {"op": ">", "value": 500}}, "(`length_chars` > 500)"),
        (
            {"length_chars": [{"op": ">=", "value": 5}, {"op": "<", "value": 9}]},
            "(`length_chars` >= 5) AND (`length_chars` < 9)",
        ),
        ({"day": {"op": ">=", "value": "2024-05-01"}}, "(`day` >= date '2024-05-01')"),
        ({"at": {"op": "<", "value": "2024-05-01T12:00:00Z"}}, "(`at` < timestamp '2024-05-01 12:00:00')"),
        ({"date": "2024-05-01"}, "(`date` = '2024-05-01')"),  # a string column keeps the string
    ],
)
def test_json_filters_read_as_the_builder_reads_python_ones(body, sql):
    assert build_filter(filters_from_json(body, SCHEMA), SCHEMA) == sql


@pytest.mark.parametrize(
    "body, message",
    [
        ([["title", "x"]], "must be an object"),
        ({"title": {"op": "=", "value": "x", "or": "1=1"}}, "condition object"),
        ({"day": "yesterday"}, "not an ISO 8601 date"),
    ],
)
def test_json_filters_refuse_what_they_cannot_read(body, message):
    with pytest.raises(FilterError, match=message):
        filters_from_json(body, SCHEMA)
