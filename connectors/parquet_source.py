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
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from connectors import columns as C
from connectors.errors import UserError
from connectors.storage import Storage, StorageError, is_s3

__all__ = ["ParquetSource", "SourceError", "open_source", "partition_values"]

PATH_COLUMN = C.PATH  # the column Ray Data's include_paths adds


class SourceError(UserError):
    """The source cannot be read as configured; the message names the path, file or column."""


@dataclass
class ParquetSource:
    path: str  # as configured
    fs: object  # fsspec filesystem
    files: list[str]  # without protocol, as the filesystem names them
    schema: pa.Schema  # of the selected columns: first file's types, string for partition columns
    rows: dict[str, int] = field(default_factory=dict)  # rows per file, from the footers
    shapes: dict[str, str] = field(default_factory=dict)  # file -> its selected columns' types
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> why (on_bad_file=skip)
    identity: dict[str, str] = field(default_factory=dict)  # file -> size + ETag (S3) or mtime (local)
    storage: Optional[Storage] = None

    def read(self, columns: Sequence[str], files: Optional[Sequence[str]] = None, num_cpus: Optional[float] = None):
        """A lazy, streaming Ray Dataset of ``columns`` plus the source file path; ``num_cpus``: what
        each read task asks for (Ray's default: 1)."""
        import ray
        from pyarrow.fs import FSSpecHandler, PyFileSystem
        from ray.data.datasource import Partitioning

        if is_s3(self.path):
            filesystem = (self.storage or Storage.resolve()).arrow(self.path)  # see the module docstring
        else:
            filesystem = PyFileSystem(FSSpecHandler(self.fs))
        # Ray unifies the schema of the files one read covers, and fails when a column's type differs
        # between files (text as string here, bytes there). Files of one shape are read together and
        # the reads joined, so every block keeps its own types and the validate stage sees them.
        groups: dict[str, list[str]] = {}
        for f in files if files is not None else self.files:
            groups.setdefault(self.shapes.get(f, ""), []).append(f)
        datasets = []
        for group in groups.values():
            dataset = ray.data.read_parquet(
                group,
                filesystem=filesystem,
                include_paths=True,
                partitioning=Partitioning("hive"),
                num_cpus=num_cpus,
            )
            # Ray pushes the projection into the Parquet reader: other columns are never read.
            datasets.append(dataset.select_columns([*columns, PATH_COLUMN]))
        return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]

    def sample(self, columns: Sequence[str], rows: int, files: int) -> list[pa.Table]:
        """Up to ``rows`` rows of ``columns`` plus the path column, from the first row group of up to
        ``files`` files spread over the source (a dry run's sample; no Ray): one table per file, each
        with its own file's types (as the run's blocks: validate makes the text a string)."""
        picked = self.files[:: max(1, len(self.files) // files)][:files]
        per_file = max(1, rows // len(picked))
        parts = []
        for f in picked:
            with self.fs.open(f, "rb") as fh:
                parquet = pq.ParquetFile(fh)
                if not parquet.num_row_groups:
                    continue
                present = [c for c in columns if c in parquet.schema_arrow.names]
                part = parquet.read_row_group(0, columns=present).slice(0, per_file)
            partitions = partition_values(f)
            for c in columns:  # a hive partition column: not in the file, one value for all its rows
                if c not in part.column_names:
                    part = part.append_column(c, pa.array([partitions.get(c)] * part.num_rows, pa.string()))
            parts.append(part.select(list(columns)).append_column(PATH_COLUMN, pa.array([f] * part.num_rows)))
        return parts


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
            bucket = path[len("s3://") :].split("/", 1)[0]
            raise SourceError(f"source.path={path}: no such prefix in bucket {bucket!r} (no objects under it)")
    fs, root = storage.fsspec(path)
    try:
        if any(ch in root for ch in "*?["):
            infos = {f: i for f, i in fs.glob(root, detail=True).items() if i.get("type") != "directory"}
            files, others = list(infos), []
        elif fs.isdir(root):
            infos = {
                f: i for f, i in fs.find(root, detail=True).items() if not f.rsplit("/", 1)[-1].startswith((".", "_"))
            }
            files = [f for f in infos if f.endswith(".parquet")]
            others = [f for f in infos if not f.endswith(".parquet")]
        elif fs.exists(root):
            infos = {root: fs.info(root)}
            files, others = [root], []
        else:
            raise SourceError(f"source.path={path}: no such file or directory")
    except (PermissionError, FileNotFoundError, OSError) as exc:
        raise SourceError(f"source.path={path}: cannot list it ({storage.explain(exc)})") from None
    if not files:
        seen = f" ({len(others)} other files, e.g. {_display(others[0], fs)})" if others else ""
        raise SourceError(f"source.path={path}: no Parquet files found{seen}")
    return fs, sorted(files), {f: file_identity(infos[f]) for f in files}


def file_identity(info: dict) -> str:
    """What tells a file's versions apart: its size and ETag (S3) or modification time (local)."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"size={info.get('size')};{str(tag).strip(chr(34))}"


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


def _read_footers(files: list[str], fs, storage: Storage) -> list:
    """Each file's Parquet footer, read in parallel; a SourceError in its place for a file that is not Parquet.

    Refused access raises at once: it is not a bad file that ``on_bad_file=skip`` may pass over."""

    def footer(file: str):
        name = _display(file, fs)
        try:
            with fs.open(file, "rb") as fh:
                return pq.read_metadata(fh)
        except PermissionError as exc:
            raise SourceError(f"{name}: access denied ({storage.explain(exc)})") from None
        except pa.ArrowInvalid as exc:
            return SourceError(f"{name}: not a readable Parquet file ({exc})")
        except OSError as exc:
            return SourceError(f"{name}: not a readable Parquet file ({storage.explain(exc)})")

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer, files))


def _column_types(file: str, name: str, meta, columns: Sequence[str]) -> dict[str, pa.DataType]:
    """The type of each of ``columns`` in one file (string for a hive partition column); raises if one is missing."""
    schema = meta.schema.to_arrow_schema()
    partitions = partition_values(file)
    missing = [c for c in columns if c not in schema.names and c not in partitions]
    if missing:
        has = [*schema.names, *(f"{k} (partition)" for k in partitions)]
        raise SourceError(f"{name}: missing column(s) {', '.join(missing)} (has {', '.join(has)})")
    return {c: schema.field(c).type if c in schema.names else pa.string() for c in columns}


def _check_types_match_first(
    name: str,
    types: dict[str, pa.DataType],
    first: tuple[str, dict[str, pa.DataType]],
    columns: Sequence[str],
    text_column: Optional[str],
    id_column: Optional[str],
) -> None:
    """Every column but the text has the first file's type family, and the id is a string or an integer."""
    for c in columns:
        if c != text_column and _family(first[1][c]) != _family(types[c]):
            raise SourceError(f"{name}: column {c} is {types[c]}, but {first[0]} has {first[1][c]}")
    if id_column is not None and _family(types[id_column]) not in ("string", "integer"):
        raise SourceError(
            f"{name}: id column {id_column} is {types[id_column]}; source.id_column must be a string or integer column"
        )


def open_source(
    path: str,
    columns: Sequence[str],
    text_column: Optional[str] = None,
    on_bad_file: str = "error",
    storage: Optional[Storage] = None,
    id_column: Optional[str] = None,
) -> ParquetSource:
    """List the Parquet files under ``path`` and check every file has ``columns`` of compatible types.

    A column may also come from the file's hive partition folders (``date=.../``). Only footers are
    read (in parallel), so this is cheap next to the embedding work it protects. The text column may
    be of any type: a file whose text is not a string has each row rejected (with its id and file)
    by the validate stage, so the run still accounts for them. An id or metadata column whose type
    differs between files is an error, and so is an ``id_column`` that is neither string nor integer
    (ids are matched in SQL filters and become chunk ids ``<id>#<k>``).

    Raises:
        SourceError: naming the bucket or prefix that does not exist, refused credentials, the path
            with no files, the file that is not Parquet (unless ``on_bad_file="skip"``), or the file
            and column that is missing or of another type.
    """
    storage = storage or Storage.resolve()
    fs, files, identity = _list_files(path, storage)
    footers = _read_footers(files, fs, storage)
    good, skipped, rows, shapes = [], {}, {}, {}
    first = None
    for file, meta in zip(files, footers):
        name = _display(file, fs)
        if isinstance(meta, SourceError):
            if on_bad_file == "skip":
                skipped[name] = str(meta)
                continue
            raise SourceError(f"{meta}; set source.on_bad_file=skip to skip such files")
        types = _column_types(file, name, meta, columns)
        if first is None:
            first = (name, types)
        _check_types_match_first(name, types, first, columns, text_column, id_column)
        good.append(file)
        rows[file] = meta.num_rows
        shapes[file] = ",".join(str(types[c]) for c in columns)
    if not good:
        raise SourceError(f"source.path={path}: no readable Parquet files ({len(skipped)} skipped)")
    widest = {"string": pa.string(), "integer": pa.int64(), "float": pa.float64()}
    fields = [pa.field(c, widest.get(_family(t), t)) for c, t in first[1].items()]
    return ParquetSource(
        path=path,
        fs=fs,
        files=good,
        schema=pa.schema(fields),
        rows=rows,
        shapes=shapes,
        skipped=skipped,
        identity={f: identity[f] for f in good},
        storage=storage,
    )
