"""The lineage a table stores (what made its vectors), as a typed record that reads and writes the same JSON.

Why here and not in pipelines/lineage.py: it describes what the table holds, and the connectors that read
and write the table (:class:`connectors.lance.table.LanceTable`, :mod:`connectors.lance.metadata`) must not
import the pipelines. Making a lineage from a config and comparing two stay in :mod:`pipelines.lineage`.

Compatibility with the tables already written (format 1): a lineage is parsed from the stored JSON and
dumped back with only the keys it was given (``exclude_unset``), so reading and writing a table's lineage
never adds, drops or renames a key; keys this version does not know are kept (``extra="allow"``). Fields
added after the first tables were written have the default their absence meant (``model.append_eos``:
False, ``normalize``: True, ``padding_side``: auto). Only ``dimension`` is required: lineages written by
hand (tests, a table this pipeline did not embed) may lack the model or the source.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict

__all__ = ["FORMAT_VERSION", "Lineage", "ModelLineage", "SourceLineage"]

FORMAT_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelLineage(_Record):
    """The model that embedded the table's documents, and how (what a query must repeat)."""

    path: str
    fingerprint: str
    revision: Optional[str] = None
    backend: str = "hf"
    pooling: str = "mean"
    max_tokens: Optional[int] = None
    query_prompt: str = ""
    document_prompt: str = ""
    dtype: Optional[str] = None  # the compute dtype the run resolved (None: a table of before it was recorded)
    padding_side: str = "auto"
    append_eos: bool = False
    hidden_size: Optional[int] = None
    include_prompt: bool = True  # the prompt's tokens pooled (sentence-transformers' Pooling include_prompt)
    dense: bool = False  # the model's Dense head applied after pooling
    modules: Optional[list[str]] = None  # the chain, as words: ["Transformer", "Pooling(cls)", "Dense(64->32, Tanh)"]
    matryoshka_dimensions: Optional[list[int]] = None  # the dimensions the model declares it was trained for


class SourceLineage(_Record):
    """The source's columns the table holds."""

    id_column: str
    text_column: str
    metadata_columns: list[str] = []


class Lineage(_Record):
    """What made a table's vectors (model, dimension, normalisation, metric, source columns), its index and
    query defaults, and the last run's counts."""

    format: int = FORMAT_VERSION
    created_at: Optional[str] = None
    model: Optional[ModelLineage] = None
    dimension: int
    normalize: bool = True
    vector_dtype: Optional[str] = None
    metric: Optional[str] = None
    source: Optional[SourceLineage] = None
    index: Optional[dict[str, Any]] = None  # pipelines.vector_index: the index parameters
    query_defaults: Optional[dict[str, Any]] = None  # nprobes, refine_factor
    tuning: Optional[dict[str, Any]] = None  # how the query defaults were chosen (tuned indexes only)
    counts: Optional[dict[str, Any]] = None  # the last run's counts
    derived_from: Optional[dict[str, Any]] = None  # a table re-cut from a wider one: table, version, dimension

    @classmethod
    def parse(cls, lineage: Union["Lineage", dict]) -> "Lineage":
        """``lineage`` as stored (a dict of the JSON) or already parsed."""
        return lineage if isinstance(lineage, Lineage) else cls.model_validate(lineage)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict: the keys it was parsed or made with, no more (exactly what is stored)."""
        return self.model_dump(exclude_unset=True)

    def updated(self, **changes: Any) -> "Lineage":
        """A copy with top-level ``changes`` (``index=...``, ``counts=...``), validated like a stored one."""
        return Lineage.model_validate({**self.to_dict(), **changes})

    def index_type(self) -> str:
        """The type of the table's vector index (``none`` when it has none)."""
        return (self.index or {}).get("type", "none")
