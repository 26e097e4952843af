"""What a run learns from its model before any work: the settled chain, dimensions, token limit, EOS.

Preflight calls :func:`plan_model` twice when a run adds to a table: once from the model's own files
(:func:`pipelines.run.preflight.check_inputs`, before the lease) and again, under the lease, with the
table's recorded lineage, which ``auto`` settings follow (:mod:`pipelines.embed.model_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from connectors.lance.lineage import ModelLineage
from pipelines.config import ConfigError, PipelineConfig
from pipelines.embed.hf_encoder import padding_side_for
from pipelines.embed.model_pipeline import declared_dimensions, dense_dimension
from pipelines.embed.model_settings import ResolvedModel, resolve_model_settings
from pipelines.embed.tokenizer import chunk_window, effective_max_tokens, eos_to_append, load_tokenizer

__all__ = ["ModelPlan", "plan_model"]

# model.pooling values vLLM's pooler runs (pipelines/embed/vllm_encoder.py); sentence-transformers has more.
VLLM_POOLING = ("mean", "cls", "last")


@dataclass
class ModelPlan:
    """``config`` with the model's ``auto`` settings settled, and the facts the plan needs from the model."""

    config: PipelineConfig
    resolved: ResolvedModel
    hidden: int  # the transformer's hidden size
    output_dimension: int  # the model's vectors: pooled, through its Dense head
    dimension: int  # what is stored (embed.dimension, else output_dimension)
    max_tokens: int
    append_eos: bool
    matryoshka_dimensions: Optional[list[int]]  # what the model declares (None: nothing)
    metric_reason: str  # where index.metric came from

    def describe(self) -> list[str]:
        """The chain and its dimensions, then each setting and where it came from (summary, dry run)."""
        chain = " -> ".join(self.resolved.modules + (["Normalize"] if self.config.embed.normalize else []))
        metric = f"index.metric {self.config.index.metric} ({self.metric_reason})"
        return [f"{chain}: {self.output_dimension} dims, {self.dimension} stored", *self.resolved.describe(), metric]

    def warnings(self) -> list[str]:
        """Lines for the run's summary: a dimension the model was not trained to be cut at."""
        dims = self.matryoshka_dimensions
        if dims and self.dimension != self.output_dimension and self.dimension not in dims:
            return [
                f"embed.dimension={self.dimension} is not one of the Matryoshka dimensions the model declares "
                f"{dims}: any prefix works, but this one was not trained"
            ]
        return []


def plan_model(
    config: PipelineConfig,
    model_dir: Path,
    storage,
    recorded: Optional[ModelLineage] = None,
    table: str = "",
    recorded_metric: Optional[str] = None,
) -> ModelPlan:
    """Settle ``config.model``'s ``auto`` settings and ``index.metric`` (``recorded``: the table's lineage
    ``model`` section on append/upsert, ``recorded_metric`` its metric) and check the dimension and chunk
    window they give. Raises naming the setting."""
    resolved = resolve_model_settings(config.model, model_dir, recorded, table)
    model = resolved.model
    if model.backend == "vllm":
        _check_vllm(model, model_dir)
    metric, metric_reason = _metric(config.index.metric, resolved.pipeline, recorded_metric, table)
    index = config.index.model_copy(update={"metric": metric})
    config = config.model_copy(update={"model": model, "index": index})
    tokenizer = load_tokenizer(model.path, model.revision, padding_side_for(model), storage)
    hidden = _hidden_size(model_dir)
    output = dense_dimension(resolved.pipeline, hidden, model.pooling, model.dense)
    dimension = config.embed.dimension or output
    if dimension > output:
        raise ConfigError(f"embed.dimension={dimension} is larger than the model's {output} dimensions")
    max_tokens = effective_max_tokens(model_dir, tokenizer, model.max_tokens)
    eos_id = eos_to_append(tokenizer, model.append_eos, model.pooling)
    if config.embed.long_text == "chunk":  # before any row is committed, not in the first tokenize task
        chunk_window(tokenizer, max_tokens, model.document_prompt, eos_id, config.embed.chunk_overlap)
    return ModelPlan(
        config,
        resolved,
        hidden,
        output,
        dimension,
        max_tokens,
        eos_id is not None,
        declared_dimensions(model_dir),
        metric_reason,
    )


def _hidden_size(model_dir: Path) -> int:
    from transformers import AutoConfig  # knows each architecture's name for it (T5: d_model)

    return int(AutoConfig.from_pretrained(str(model_dir)).hidden_size)


# sentence-transformers' similarity_fn_name -> LanceDB's distance
_METRICS = {"cosine": "cosine", "dot": "dot", "euclidean": "l2"}


def _metric(value: str, pipeline, recorded: Optional[str], table: str) -> tuple[str, str]:
    """``index.metric`` settled, and why (see the field's description)."""
    if value != "auto":
        return value, "set in the config"
    if recorded:
        return recorded, f"table {table!r}'s lineage"
    name = pipeline.similarity_fn_name if pipeline is not None else None
    if name is None:
        return "cosine", "default: the model states none"
    if name not in _METRICS:
        raise ConfigError(
            f"the model's similarity_fn_name {name!r} (config_sentence_transformers.json) has no LanceDB "
            f"distance ({sorted(_METRICS)}): set index.metric"
        )
    return _METRICS[name], "model's config_sentence_transformers.json similarity_fn_name"


def _check_vllm(model, model_dir: Path) -> None:
    """What vLLM's pooler cannot compute is refused before any work, naming it."""
    if model.pooling not in VLLM_POOLING:
        raise ConfigError(
            f"model.pooling={model.pooling} cannot run on model.backend=vllm (vLLM pools {list(VLLM_POOLING)}, "
            f"one mode): use model.backend=hf for {model_dir}"
        )
    if not model.include_prompt:
        raise ConfigError(
            f"{model_dir} pools without its prompt (include_prompt false), which vLLM cannot: use model.backend=hf"
        )
