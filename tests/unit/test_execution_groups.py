"""Files cut into Ray Data executions of whole files (compute.rows_per_execution)."""

from pipelines.run.resources import execution_groups


def test_whole_files_in_order_up_to_the_limit_a_larger_file_alone():
    rows = {"a": 400, "b": 500, "c": 200, "d": 2500, "e": 100, "f": 0}
    files = list(rows)
    assert execution_groups(files, rows, 1000) == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert execution_groups(files, rows, None) == [files]
    assert execution_groups([], rows, 1000) == []
    groups = execution_groups(files, rows, 600)
    assert [f for g in groups for f in g] == files  # every file once, in order
