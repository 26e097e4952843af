"""The embedding plan: config -> a list of stages -> ``map_batches`` calls on a Ray Dataset.

Data flows one way: validate -> tokenize -> encode (actor pool) -> sink. Each stage is a small
callable over ``pyarrow.Table`` batches; task stages are plain instances, the encoder is a class
that Ray instantiates once per actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from pipelines.config import PipelineConfig
from pipelines.stages.encode import EncodeStage
from pipelines.stages.tokenize import TokenizeStage
from pipelines.stages.validate import ValidateStage

__all__ = ["Stage", "apply_stages", "embedding_stages"]


@dataclass
class Stage:
    name: str
    fn: Union[Callable, type]  # an instance runs as tasks; a class runs in an actor pool
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    map_kwargs: dict[str, Any] = field(default_factory=dict)


def _encoder_threads(config: PipelineConfig) -> Union[int, None]:
    c = config.compute
    if c.torch_threads:
        return c.torch_threads
    if c.gpus_per_actor:
        return None  # torch's default; the GPU does the work
    import os

    return max(1, (os.cpu_count() or 1) // (c.max_actors or c.actors))


def embedding_stages(config: PipelineConfig, *, max_tokens: int, dimension: int) -> list[Stage]:
    """Validate, tokenize and encode stages for ``config`` (the sink is added by the job).

    Placement comes from resources: validate and tokenize run as tasks that ask for a CPU and no
    GPU; each encoder actor asks for ``compute.gpus_per_actor`` GPUs and ``cpus_per_actor`` CPUs,
    so with one GPU per actor Ray runs at most one encoder per GPU (see ray_cluster.yaml for keeping
    the CPU tasks off GPU nodes).
    """
    import ray

    src, model, compute = config.source, config.model, config.compute
    return [
        Stage("validate", ValidateStage(src.id_column, src.text_column)),
        Stage("tokenize", TokenizeStage(model, src.text_column, max_tokens, model.document_prompt)),
        Stage(
            "encode",
            EncodeStage,
            constructor_kwargs=dict(
                model=model,
                dimension=dimension,
                normalize=config.embed.normalize,
                batch_tokens=compute.batch_tokens,
                vector_dtype=config.embed.vector_dtype,
                threads=_encoder_threads(config),
                max_tokens=max_tokens,
            ),
            map_kwargs=dict(
                batch_size=compute.block_rows,
                compute=ray.data.ActorPoolStrategy(
                    min_size=compute.actors, max_size=compute.max_actors or compute.actors
                ),
                num_cpus=compute.cpus_per_actor,
                num_gpus=compute.gpus_per_actor,
            ),
        ),
    ]


def apply_stages(dataset, stages: list[Stage]):
    """Chain the stages lazily; nothing runs until the dataset is consumed."""
    for stage in stages:
        kwargs = dict(stage.map_kwargs)
        if stage.constructor_kwargs:
            kwargs["fn_constructor_kwargs"] = stage.constructor_kwargs
        dataset = dataset.map_batches(stage.fn, batch_format="pyarrow", **kwargs)
    return dataset
