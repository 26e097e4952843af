"""Lineage: make the versioned record of what made a table's vectors, compare two, key the vectors by it.

It is stored in the table's schema metadata; its shape is :class:`connectors.lance.lineage.Lineage`.
The query path embeds with exactly what is recorded, and appending to a table with a different model,
pooling, prompt, dimension or metric is refused: vectors from two embedding spaces must never share a
table.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Optional, Union

from connectors.errors import UserError
from connectors.lance.lineage import FORMAT_VERSION, Lineage
from connectors.model_store import is_legacy_fingerprint
from pipelines.config import ModelConfig, PipelineConfig
from pipelines.embed.model_settings import unsettled

__all__ = [
    "ABSENT_MEANS",
    "IDENTITY_FIELDS",
    "Lineage",
    "LineageMismatchError",
    "VECTOR_FIELDS",
    "check_compatible",
    "make_lineage",
    "query_model_config",
    "vector_key",
]

# Fields that define the embedding space. Not among them: the model's path (the same weights may
# live elsewhere; the fingerprint identifies them), dtype and device (numerics, not the space).
IDENTITY_FIELDS = (
    "model.fingerprint",
    "model.pooling",
    "model.max_tokens",
    "model.query_prompt",
    "model.document_prompt",
    "model.append_eos",
    "dimension",
    "normalize",
    "metric",
    "model.include_prompt",
    "model.dense",
)


class LineageMismatchError(UserError):
    """A table and a model/config describe different embedding spaces."""


def make_lineage(
    config: PipelineConfig,
    *,
    fingerprint: str,
    hidden_size: int,
    max_tokens: int,
    dimension: int,
    append_eos: bool = False,
    modules: Optional[list[str]] = None,
    matryoshka_dimensions: Optional[list[int]] = None,
) -> Lineage:
    """``append_eos``: whether the pipeline appends EOS to every text (``model.append_eos`` resolved
    against the tokenizer), so queries get exactly the same treatment. ``config.model``'s settings must
    be settled (:mod:`pipelines.embed.model_settings`): a lineage records what ran, never ``auto``.
    ``modules``: the chain as words; ``matryoshka_dimensions``: what the model declares."""
    m = config.model
    if unsettled(m):
        raise ValueError(f"make_lineage needs settled model settings; {unsettled(m)} are still 'auto'")
    extra = {"modules": modules} if modules else {}
    if matryoshka_dimensions:
        extra["matryoshka_dimensions"] = list(matryoshka_dimensions)
    return Lineage.parse(
        {
            "format": FORMAT_VERSION,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "path": m.path,
                "revision": m.revision,
                "fingerprint": fingerprint,
                "backend": m.backend,
                "pooling": m.pooling,
                "max_tokens": max_tokens,
                "query_prompt": m.query_prompt,
                "document_prompt": m.document_prompt,
                "dtype": m.dtype,
                "padding_side": m.padding_side,
                "append_eos": bool(append_eos),
                "hidden_size": hidden_size,
                # Recorded only where they differ from what their absence means (tables of before them):
                # the same lineage, and the same vector key, for every model without them.
                **({"include_prompt": False} if not m.include_prompt else {}),
                **({"dense": True} if m.dense else {}),
                **extra,
            },
            "dimension": dimension,
            "normalize": config.embed.normalize,
            "vector_dtype": config.embed.vector_dtype,
            "metric": config.index.metric,
            "source": {
                "id_column": config.source.id_column,
                "text_column": config.source.text_column,
                "metadata_columns": list(config.source.metadata_columns),
            },
        }
    )


def query_model_config(lineage: Lineage, path: str, dtype: str, device: str) -> ModelConfig:
    """The model settings that embed a query as the table's documents were embedded: the lineage's
    model (backend, pooling, token limit, prompts, padding, EOS) at ``path`` on this machine, with the
    query's compute ``dtype`` and ``device``."""
    shared = set(ModelConfig.model_fields) & set(type(lineage.model).model_fields) - {"path", "dtype"}
    settings = lineage.model.model_dump(include=shared, exclude_none=True)
    return ModelConfig(**settings, path=path, dtype=dtype, device=device)


def _raw(lineage: Union[Lineage, dict]) -> dict:
    """The stored form: comparisons and keys read exactly the keys a table recorded."""
    return lineage.to_dict() if isinstance(lineage, Lineage) else lineage


def _value_at(lineage: dict, dotted: str) -> Any:
    """The value at a dotted path such as ``"model.fingerprint"`` in a lineage dict, None where absent."""
    node: Any = lineage
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# Identity fields added after format 1 tables were first written, and what their absence meant.
ABSENT_MEANS = {"model.append_eos": False, "model.include_prompt": True, "model.dense": False}
# Of those, the ones a vector key leaves out at that value, so the keys of the rows already stored hold.
_KEYED_ONLY_WHEN_SET = ("model.include_prompt", "model.dense")


def _identity(lineage: dict, dotted: str) -> Any:
    value = _value_at(lineage, dotted)
    return ABSENT_MEANS.get(dotted) if value is None else value


def check_compatible(
    stored: Union[Lineage, dict], other: Union[Lineage, dict], what: str, fields: Optional[tuple] = None
) -> None:
    """Raise naming every identity field where ``other`` differs from the table's ``stored`` lineage.

    A table fingerprinted by the legacy scheme (see :func:`connectors.model_store.model_fingerprint`)
    is refused with the reason and the way out: its fingerprint cannot prove the weights are the same.
    """
    stored, other = _raw(stored), _raw(other)
    stored_fp, other_fp = str(_value_at(stored, "model.fingerprint")), str(_value_at(other, "model.fingerprint"))
    if is_legacy_fingerprint(stored_fp) and not is_legacy_fingerprint(other_fp):
        raise LineageMismatchError(
            f"the table's model.fingerprint {stored_fp} is of the legacy scheme (config and first MiB of each "
            f"weight file), which cannot tell a fine-tune from its base, so {what} cannot be proven to use the "
            "same weights: rebuild the table with sink.mode=overwrite"
        )
    diffs = [
        f"{f}: table has {_identity(stored, f)!r}, {what} has {_identity(other, f)!r}"
        for f in (fields or IDENTITY_FIELDS)
        if _identity(stored, f) != _identity(other, f)
    ]
    if diffs:
        raise LineageMismatchError(f"{what} does not match the table's embedding lineage: " + "; ".join(diffs))


# Lineage fields that change a stored vector: the embedding space's identity plus the numerics
# (compute dtype, backend, padding side) and the stored type. A row embedded under other values of
# any of them must be embedded again by an upsert, even where the space is still compatible.
VECTOR_FIELDS = IDENTITY_FIELDS + ("model.dtype", "model.backend", "model.padding_side", "vector_dtype")


def vector_key(lineage: Union[Lineage, dict], config: PipelineConfig) -> str:
    """A digest that changes whenever a setting that changes a stored vector does.

    Part of each row's content hash, so an upsert re-embeds every document whose stored vector the
    current settings would not reproduce: the :data:`VECTOR_FIELDS` of ``lineage`` and, from
    ``config``, how long text is handled (``embed.long_text``; ``embed.chunk_overlap`` only when it
    chunks, since truncated rows do not depend on it). The digest is short (64 hex characters) so
    that every part counts where it keys a hash function of bounded key length.
    """
    import hashlib
    import json

    lineage = _raw(lineage)
    settings = {f: _identity(lineage, f) for f in VECTOR_FIELDS}
    for f in _KEYED_ONLY_WHEN_SET:
        if settings[f] == ABSENT_MEANS[f]:
            del settings[f]
    settings["embed.long_text"] = config.embed.long_text
    settings["embed.chunk_overlap"] = config.embed.chunk_overlap if config.embed.long_text == "chunk" else None
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=32).hexdigest()
