"""Parquet source: find the files, check their columns up front, and stream them with Ray Data.

Paths go through fsspec (``fsspec.core.url_to_fs``), so a local path, a glob and ``s3://`` share
one code path; Ray Data reads through the same filesystem object wrapped for pyarrow.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

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
    rows: dict[str, int]  # rows per file, from the footers
    shapes: dict[str, str] = field(default_factory=dict)  # file -> its selected columns' types
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> why (on_bad_file=skip)

    def read(self, columns: Sequence[str], files: Optional[Sequence[str]] = None):
        """A lazy, streaming Ray Dataset of ``columns`` plus the source file path."""
        import ray
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        # Ray unifies the schema of the files one read covers, and fails when a column's type differs
        # between files (text as string here, bytes there). Files of one shape are read together and
        # the reads joined, so every block keeps its own types and the validate stage sees them.
        groups: dict[str, list[str]] = {}
        for f in files if files is not None else self.files:
            groups.setdefault(self.shapes.get(f, ""), []).append(f)
        datasets = []
        for group in groups.values():
            # At least one read task per file (Ray packs small files into one task otherwise): a
            # file's rows then finish together, which is what resume checkpoints count on. Large
            # files are still split into blocks by Ray's target block size.
            dataset = ray.data.read_parquet(group, filesystem=PyFileSystem(FSSpecHandler(self.fs)),
                                            include_paths=True, override_num_blocks=len(group))
            # Ray pushes the projection into the Parquet reader: other columns are never read.
            datasets.append(dataset.select_columns([*columns, PATH_COLUMN]))
        return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


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


def _family(t: pa.DataType) -> str:
    """Types that cast to each other without loss count as one (string/large_string, int widths)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    return str(t)


def open_source(path: str, columns: Sequence[str], text_column: str, on_bad_file: str = "error") -> ParquetSource:
    """List the Parquet files under ``path`` and check every file has ``columns`` of compatible types.

    Only footers are read (in parallel), so this is cheap next to the embedding work it protects.
    The text column may be string or binary (bytes are decoded and checked row by row later); any
    other type, or an id/metadata type that differs between files, is an error naming the file.

    Raises:
        SourceError: naming the path with no files, the file that is not Parquet (unless
            ``on_bad_file="skip"``), or the file and column that is missing or of another type.
    """
    fs, files = _list_files(path)

    def footer(file: str):
        try:
            with fs.open(file, "rb") as fh:
                return pq.read_metadata(fh)
        except (pa.ArrowInvalid, OSError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(footer, files))
    good, skipped, rows, shapes = [], {}, {}, {}
    first: Optional[pa.Schema] = None
    for file, meta in zip(files, footers):
        if isinstance(meta, Exception):
            if on_bad_file == "skip":
                skipped[file] = f"not a readable Parquet file ({meta})"
                continue
            raise SourceError(f"{file}: not a readable Parquet file ({meta}); "
                              "set source.on_bad_file=skip to skip such files") from None
        schema = meta.schema.to_arrow_schema()
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise SourceError(f"{file}: missing column(s) {', '.join(missing)} (has {', '.join(schema.names)})")
        # A text column of another type is not an error here: the validate stage rejects each of
        # the file's rows as not_a_string, with its id and file, so the run still accounts for them.
        if first is None:
            first = schema
        for c in columns:
            if c == text_column:
                continue
            a, b = first.field(c).type, schema.field(c).type
            if _family(a) != _family(b):
                raise SourceError(f"{file}: column {c} is {b}, but {files[0]} has {a}")
        good.append(file)
        rows[file] = meta.num_rows
        shapes[file] = ",".join(str(schema.field(c).type) for c in columns)
    if not good:
        raise SourceError(f"source.path={path}: no readable Parquet files ({len(skipped)} skipped)")
    fields = [first.field(c) for c in columns]
    widest = {"string": pa.string(), "integer": pa.int64(), "float": pa.float64()}
    fields = [f.with_type(widest[_family(f.type)]) if _family(f.type) in widest else f for f in fields]
    return ParquetSource(fs=fs, files=good, schema=pa.schema(fields), rows=rows, shapes=shapes, skipped=skipped)
