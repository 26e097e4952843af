"""Whether an upsert sees a metadata value as unchanged (connectors/lance/lookup.py:same_values):
values as Arrow's ``to_pylist`` gives them, NaN equal to NaN at any depth."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from connectors.lance.lookup import same_values

NAN = math.nan


@pytest.mark.parametrize(
    "value",
    [
        NAN,
        [1.0, NAN],
        [NAN],
        [[NAN, 2.0], None],
        {"score": NAN, "tags": ["a"]},
        [("k", NAN)],  # a map value
    ],
)
def test_a_value_holding_nan_is_the_same_as_its_copy(value):
    """A list-valued column holding NaN was 'updated (metadata only)' by every upsert. The copy holds
    NaN objects of its own, as each read does (Python's list == passes for the very same NaN object)."""
    import json

    copy = json.loads(json.dumps(value))
    assert same_values(value, copy) and same_values(copy, value)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1.0, NAN], [NAN, 1.0]),
        ([NAN], [NAN, NAN]),
        ([NAN], [None]),
        ([NAN], None),
        ({"score": NAN}, {"score": 1.0}),
        ({"score": NAN}, {"other": NAN}),
        (NAN, 1.0),
        ([1, 2], [1, 3]),
    ],
)
def test_values_that_differ_are_not_the_same(a, b):
    assert not same_values(a, b) and not same_values(b, a)


def test_values_as_arrow_reads_them_back():
    """List, struct and map columns written with NaN, read twice: the same, row by row."""
    table = pa.table(
        {
            "tags": pa.array([[NAN, 1.0], [2.0], None], pa.list_(pa.float64())),
            "meta": pa.array([{"s": NAN}, {"s": 1.0}, None], pa.struct([("s", pa.float64())])),
            "m": pa.array([[("a", NAN)], [], None], pa.map_(pa.string(), pa.float64())),
        }
    )
    first, again = table.to_pylist(), pa.Table.from_batches(table.to_batches()).to_pylist()
    assert all(same_values(first[k][c], again[k][c]) for k in range(3) for c in table.column_names)
    assert not same_values(first[0]["tags"], first[1]["tags"])
