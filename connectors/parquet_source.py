"""Parquet source: find the files, check their columns up front, and stream them with Ray Data.

Listing, globbing and the up-front footer checks go through fsspec (local paths and ``s3://`` via
s3fs, both from :class:`connectors.storage.Storage`), so a local path, a glob and a bucket prefix share
one code path and one set of error messages. Hive-style folders (``date=2026-11-28/``) become string
columns, usable in ``source.metadata_columns``.

The Ray read itself goes through **pyarrow's S3 filesystem** for ``s3://`` (and through fsspec for
everything else). Why: Ray Data's Parquet reader asks the filesystem for column-chunk byte ranges;
pyarrow's native client serves them from C++ threads with coalesced, parallel range requests and no
Python (or GIL) in the loop, while s3fs behind pyarrow's ``FSSpecHandler`` turns every range read into
a Python call into an asyncio loop. It is also what Ray uses by default for ``s3://``, so Ray Data's
own retry list for transient ``AWS Error ...`` read failures applies on top of the client's retries.
Both clients get the same endpoint, region, credentials and retry policy from one ``Storage``.
Each read task streams its own files' row groups: nothing is downloaded whole, least of all to
the driver, which only reads footers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.storage import Storage, StorageError, is_s3

__all__ = ["ParquetSource", "SourceError", "open_source", "partition_values"]

PATH_COLUMN = "path"  # the column Ray Data's include_paths adds


class SourceError(ValueError):
    """The source cannot be read as configured; the message names the path, file or column."""


@dataclass
class ParquetSource:
    path: str  # as configured
    fs: object  # fsspec filesystem
    files: list[str]  # without protocol, as the filesystem names them
    schema: pa.Schema  # of the selected columns: first file's types, string for partition columns
    storage: Optional[Storage] = None

    def read(self, columns: Sequence[str]):
        """A lazy, streaming Ray Dataset of ``columns`` plus the source file path."""
        import ray
        from pyarrow.fs import FSSpecHandler, PyFileSystem
        from ray.data.datasource import Partitioning

        if is_s3(self.path):
            filesystem = (self.storage or Storage.resolve()).arrow(self.path)  # see the module docstring
        else:
            filesystem = PyFileSystem(FSSpecHandler(self.fs))
        dataset = ray.data.read_parquet(
            self.files, filesystem=filesystem, include_paths=True, partitioning=Partitioning("hive")
        )
        # Ray pushes the projection into the Parquet reader: other columns are never read.
        return dataset.select_columns([*columns, PATH_COLUMN])


def partition_values(file: str) -> dict[str, str]:
    """Hive partition values in a file's folders: ``a/date=2026-11-28/x.parquet`` -> ``{"date": ...}``.

    Every ``key=value`` folder counts, as in Ray Data's hive partitioning without a base directory.
    """
    out = {}
    for part in file.split("/")[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            out[key] = value
    return out


def _display(path: str, fs) -> str:
    return fs.unstrip_protocol(path) if "s3" in getattr(fs, "protocol", ()) else path


def _list_files(path: str, storage: Storage):
    if is_s3(path):
        storage.check()  # settings first (endpoint, profile): a StorageError of its own
        try:
            found = storage.probe(path, "source.path")
        except StorageError as exc:
            raise SourceError(str(exc)) from None
        if not found:
            bucket = path[len("s3://"):].split("/", 1)[0]
            raise SourceError(f"source.path={path}: no such prefix in bucket {bucket!r} (no objects under it)")
    fs, root = storage.fsspec(path)
    try:
        if any(ch in root for ch in "*?["):
            files = [f for f in fs.glob(root) if not fs.isdir(f)]
            others = []
        elif fs.isdir(root):
            everything = [f for f in fs.find(root) if not f.rsplit("/", 1)[-1].startswith((".", "_"))]
            files = [f for f in everything if f.endswith(".parquet")]
            others = [f for f in everything if not f.endswith(".parquet")]
        elif fs.exists(root):
            files, others = [root], []
        else:
            raise SourceError(f"source.path={path}: no such file or directory")
    except (PermissionError, FileNotFoundError, OSError) as exc:
        raise SourceError(f"source.path={path}: cannot list it ({storage.explain(exc)})") from None
    if not files:
        seen = f" ({len(others)} other files, e.g. {_display(others[0], fs)})" if others else ""
        raise SourceError(f"source.path={path}: no Parquet files found{seen}")
    return fs, sorted(files)


def open_source(path: str, columns: Sequence[str], storage: Optional[Storage] = None) -> ParquetSource:
    """List the Parquet files under ``path`` and check every file has ``columns``.

    A column may also come from the file's hive partition folders (``date=.../``). Only footers are
    read (in parallel), so this is cheap next to the embedding work it protects.

    Raises:
        SourceError: naming the bucket or prefix that does not exist, refused credentials, the path
            with no files, the file that is not Parquet, or the file and column that is missing.
    """
    storage = storage or Storage.resolve()
    fs, files = _list_files(path, storage)

    def schema_of(file: str) -> pa.Schema:
        name = _display(file, fs)
        try:
            with fs.open(file, "rb") as fh:
                return pq.read_schema(fh)
        except PermissionError as exc:
            raise SourceError(f"{name}: access denied ({storage.explain(exc)})") from None
        except pa.ArrowInvalid as exc:
            raise SourceError(f"{name}: not a Parquet file ({exc})") from None
        except OSError as exc:
            raise SourceError(f"{name}: not a readable Parquet file ({storage.explain(exc)})") from None

    with ThreadPoolExecutor(max_workers=16) as pool:
        schemas = list(pool.map(schema_of, files))
    for file, schema in zip(files, schemas):
        partitions = partition_values(file)
        missing = [c for c in columns if c not in schema.names and c not in partitions]
        if missing:
            has = [*schema.names, *(f"{k} (partition)" for k in partitions)]
            raise SourceError(f"{_display(file, fs)}: missing column(s) {', '.join(missing)} "
                              f"(has {', '.join(has)})")
    first = schemas[0]
    fields = [first.field(c) if c in first.names else pa.field(c, pa.string()) for c in columns]
    return ParquetSource(path=path, fs=fs, files=files, schema=pa.schema(fields), storage=storage)
