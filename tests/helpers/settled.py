"""A config with its model's ``auto`` settings settled as a run settles them (pipelines/run/model_plan.py).

Tests that make a lineage or a vector key by hand (``make_lineage`` refuses ``auto``) settle the config
against the model it names, the packaged MiniLM by default: what the run's preflight does.
"""

from __future__ import annotations

from connectors.model_store import resolve_model_dir
from pipelines.config import PipelineConfig
from pipelines.embed.model_settings import resolve_model_settings

__all__ = ["settled"]


def settled(config: PipelineConfig) -> PipelineConfig:
    """``config`` with ``model.pooling``, ``include_prompt``, ``dense`` and the prompts settled."""
    model_dir = resolve_model_dir(config.model.path, config.model.revision)
    return config.model_copy(update={"model": resolve_model_settings(config.model, model_dir).model})
