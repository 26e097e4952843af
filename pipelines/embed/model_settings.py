"""``auto`` model settings settled: the config, else the table's lineage, else the model's files, else defaults.

``model.pooling``, ``model.include_prompt``, ``model.dense``, ``model.query_prompt`` and
``model.document_prompt`` default to ``auto``. :func:`resolve_model_settings` settles each, in order:

1. a value set in the config wins;
2. on append/upsert, what the table's lineage recorded (as ``model.dtype: auto`` does), so a run never
   makes vectors of another space than the table's rows — a table of before this was read records no
   Dense head and so keeps getting none;
3. the model's sentence-transformers files (:mod:`pipelines.embed.model_pipeline`);
4. the defaults of a plain transformers model: mean pooling, prompts included, no head, no prompts.

It also says where each value came from ("pooling cls (model's 1_Pooling/config.json)"), which the run's
summary and ``--dry-run`` print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from connectors.lance.lineage import ModelLineage
from pipelines.config import ConfigError, ModelConfig
from pipelines.embed.model_pipeline import ModelPipeline, read_model_pipeline

__all__ = ["AUTO_FIELDS", "ResolvedModel", "resolve_model_settings", "unsettled"]

AUTO_FIELDS = ("pooling", "include_prompt", "dense", "query_prompt", "document_prompt")
# A plain transformers model's (a table's lineage without a field means what ModelLineage's default says).
_DEFAULTS = {"pooling": "mean", "include_prompt": True, "dense": False, "query_prompt": "", "document_prompt": ""}


@dataclass
class ResolvedModel:
    """The model section with no ``auto`` left in :data:`AUTO_FIELDS`, the model's pipeline, and why."""

    model: ModelConfig
    pipeline: Optional[ModelPipeline]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        """The chain this run computes, as words (recorded in the lineage)."""
        m = self.model
        names = ["Transformer", f"Pooling({m.pooling}{'' if m.include_prompt else ', prompt excluded'})"]
        if m.dense and self.pipeline is not None:
            names += [layer.describe() for layer in self.pipeline.dense]
        return names

    def describe(self) -> list[str]:
        """Each setting and where it came from, one line per source:
        ``pooling cls, include_prompt true (model's 1_Pooling/config.json)``."""

        def shown(name):
            value = getattr(self.model, name)
            return repr(value) if name in ("query_prompt", "document_prompt") else str(value).lower()

        groups: dict[str, list[str]] = {}  # settings that came from the same place share a line
        for name in AUTO_FIELDS:
            groups.setdefault(self.reasons[name], []).append(f"{name} {shown(name)}")
        return [f"{', '.join(items)} ({reason})" for reason, items in groups.items()]


def unsettled(model: ModelConfig) -> list[str]:
    """The settings of :data:`AUTO_FIELDS` still ``auto`` in ``model`` (``model.pooling``, ...)."""
    return [f"model.{name}" for name in AUTO_FIELDS if getattr(model, name) == "auto"]


def resolve_model_settings(
    model: ModelConfig, model_dir: Path, recorded: Optional[ModelLineage] = None, table: str = ""
) -> ResolvedModel:
    """``model`` with every ``auto`` of :data:`AUTO_FIELDS` settled (see the module docstring).

    ``recorded``: the table's lineage ``model`` section (None for a new table); a field its table did
    not record has the default that absence meant.

    Raises:
        ConfigError: ``model.dense=true`` for a model without Dense layers.
        UnsupportedModelError: a module the project cannot run (before any work starts).
    """
    pipeline = read_model_pipeline(model_dir)
    values, reasons = {}, {}
    for name in AUTO_FIELDS:
        values[name], reasons[name] = _resolve(name, getattr(model, name), pipeline, recorded, table)
    if values["dense"] and not (pipeline and pipeline.dense):
        raise ConfigError(f"model.dense=true but {model_dir} has no Dense modules (modules.json)")
    return ResolvedModel(model.model_copy(update=values), pipeline, reasons)


def _resolve(name: str, value, pipeline: Optional[ModelPipeline], recorded: Optional[ModelLineage], table: str):
    if value != "auto":
        return value, "set in the config"
    if recorded is not None:
        return getattr(recorded, name), f"table {table!r}'s lineage"
    if pipeline is not None:
        found = _from_pipeline(name, pipeline)
        if found is not None:
            return found
    return _DEFAULTS[name], "default: the model states none"


def _from_pipeline(name: str, pipeline: ModelPipeline):
    """(value, reason) the model's files give for ``name``, None where they say nothing."""
    if name in ("pooling", "include_prompt"):
        if pipeline.pooling is None:
            return None
        return getattr(pipeline, name), f"model's {pipeline.pooling_file}"
    if name == "dense":
        n = len(pipeline.dense)
        return bool(n), f"model's modules.json: {n or 'no'} Dense layer{'s' if n != 1 else ''}"
    chosen = pipeline.query_prompt_name() if name == "query_prompt" else pipeline.document_prompt_name()
    if chosen is None:
        return None
    return pipeline.prompts[chosen], f"model's config_sentence_transformers.json prompts[{chosen!r}]"
