"""Parquet source: find the files, check their columns up front, and stream them with Ray Data.

Paths go through fsspec (``fsspec.core.url_to_fs``), so a local path, a glob and ``s3://`` share
one code path; Ray Data reads through the same filesystem object wrapped for pyarrow.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ParquetSource", "SourceError", "open_source"]

PATH_COLUMN = "path"  # the column Ray Data's include_paths adds


class SourceError(ValueError):
    """The source cannot be read as configured; the message names the path, file or column."""


@dataclass
class ParquetSource:
    fs: object  # fsspec filesystem
    files: list[str]
    schema: pa.Schema  # of the selected columns, from the first file

    def read(self, columns: Sequence[str]):
        """A lazy, streaming Ray Dataset of ``columns`` plus the source file path."""
        import ray
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        dataset = ray.data.read_parquet(
            self.files, filesystem=PyFileSystem(FSSpecHandler(self.fs)), include_paths=True
        )
        # Ray pushes the projection into the Parquet reader: other columns are never read.
        return dataset.select_columns([*columns, PATH_COLUMN])


def _list_files(path: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if any(ch in root for ch in "*?["):
        files = [f for f in fs.glob(root) if not fs.isdir(f)]
    elif fs.isdir(root):
        files = [f for f in fs.find(root) if f.endswith(".parquet")]
    elif fs.exists(root):
        files = [root]
    else:
        raise SourceError(f"source.path={path}: no such file or directory")
    if not files:
        raise SourceError(f"source.path={path}: no Parquet files found")
    return fs, sorted(files)


def open_source(path: str, columns: Sequence[str]) -> ParquetSource:
    """List the Parquet files under ``path`` and check every file has ``columns``.

    Only footers are read (in parallel), so this is cheap next to the embedding work it protects.

    Raises:
        SourceError: naming the path with no files, the file that is not Parquet, or the file
            and column that is missing.
    """
    fs, files = _list_files(path)

    def schema_of(file: str) -> pa.Schema:
        try:
            with fs.open(file, "rb") as fh:
                return pq.read_schema(fh)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{file}: not a readable Parquet file ({exc})") from None

    with ThreadPoolExecutor(max_workers=16) as pool:
        schemas = list(pool.map(schema_of, files))
    for file, schema in zip(files, schemas):
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise SourceError(f"{file}: missing column(s) {', '.join(missing)} (has {', '.join(schema.names)})")
    first = schemas[0]
    return ParquetSource(fs=fs, files=files, schema=pa.schema([first.field(c) for c in columns]))
