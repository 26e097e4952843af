"""The embedding plan: config -> a list of stages -> ``map_batches`` calls on a Ray Dataset.

Data flows one way: validate -> tokenize -> encode (actor pool) -> sink. Each stage is a small
callable over ``pyarrow.Table`` batches; task stages are plain instances, the encoder is a class
that Ray instantiates once per actor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from pipelines.config import PipelineConfig
from pipelines.run.stages.encode import EncodeStage
from pipelines.run.stages.skip_unchanged import SkipUnchangedStage
from pipelines.run.stages.tokenize import TokenizeStage
from pipelines.run.stages.validate import ValidateStage

__all__ = ["ENCODER_ACTOR_OPTIONS", "Stage", "TASK_STAGES", "apply_stages", "embedding_stages", "task_cpus"]

# Operators that run as CPU tasks beside the encoder actors: read+validate(+skip unchanged), tokenize, sink.
TASK_STAGES = 3

# A batch in flight on an encoder actor that dies is not retried (max_task_retries=0): it fails the
# stream at once, and the run starts over on its unfinished files with a pool that fits what is left
# (pipelines.run.stream); a retry would wait, with its batches, for room that a cluster which lost a
# node may never have again. The actor itself is restarted (max_restarts=-1): Ray Data 2.60 keeps a
# dead actor in a fixed-size pool, never gives it a batch and never replaces it (ray-project/ray
# #62746), so with max_restarts=0 an actor killed between batches, with none in flight to fail,
# left the encoder's queue with no actor and the stream stalled until compute.stall_timeout_s
# (bench/fault_injection.py seed 2: a writer, then an idle encoder, SIGKILLed; 30-120 s lost).
ENCODER_ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 0}


@dataclass
class Stage:
    name: str
    fn: Union[Callable, type]  # an instance runs as tasks; a class runs in an actor pool
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    map_kwargs: dict[str, Any] = field(default_factory=dict)
    # Cut the stage's input into blocks of at most this many rows first (Ray Data's streaming
    # repartition): a block is what one task or actor call holds, and what a lost worker loses.
    split_rows: Optional[int] = None


def _encoder_threads(config: PipelineConfig) -> Union[int, None]:
    compute = config.compute
    if compute.torch_threads:
        return compute.torch_threads
    if compute.gpus_per_actor:
        return None  # torch's default; the GPU does the work
    import os

    return max(1, (os.cpu_count() or 1) // (compute.max_actors or compute.actors))


def task_cpus(compute, cluster_cpus: float, pool: Optional[int] = None) -> float:
    """The CPU request of each task stage (read, validate, tokenize, write): 1, or less where the CPUs
    the encoder actors leave cannot give every task operator a whole one.

    Ray Data reserves each operator at least one task's resources, upstream first, and an operator
    left without a reservation runs only once an upstream one has finished. With one CPU beside the
    encoders (a 2-CPU machine) the sink got none: it wrote nothing until every file was read, the
    encoder's output filled the object store, and the stream stopped (bench/read_starvation.py,
    --file-rows 10000). With a third of that CPU each, all three fit; on a cluster with CPUs to
    spare the request stays 1.
    """
    encoders = (pool or compute.actors) * (compute.cpus_per_actor or 0)
    free = cluster_cpus - encoders
    return max(0.05, min(1.0, round(free / TASK_STAGES, 3)))


def embedding_stages(
    config: PipelineConfig,
    *,
    max_tokens: int,
    dimension: int,
    lineage_key: str = "",
    existing=None,
    storage=None,
    latest=None,
    pool: Optional[int] = None,
    cpus: float = 1.0,
    run_id: str = "",
) -> list[Stage]:
    """Validate, [skip unchanged,] tokenize and encode stages for ``config`` (the job adds the sink).

    ``existing`` (upsert runs) answers which ids the table already holds, with which content hash;
    ``latest`` (an ObjectRef of :func:`pipelines.run.revisions.latest_revisions`) names the ids the run
    reads more than once, with the revision that wins.
    ``storage`` (a :class:`connectors.storage.Storage`) travels with the stages so that workers can
    fetch an ``s3://`` model without any environment of their own.
    ``pool`` fixes the number of encoder actors (a run that lost workers starts over on what fits);
    by default the pool is ``compute.actors`` .. ``compute.max_actors``. ``cpus`` is what each task
    stage asks for (:func:`task_cpus`); the read must ask for the same, so it fuses with validate.
    ``run_id`` tags the encoder actors' metrics (:mod:`pipelines.run.prometheus`); none without it.

    Placement comes from resources: read and validate run as tasks that ask for a CPU and no GPU
    (tokenize is a task stage of its own after the repartition, so it scales with the CPU workers,
    not with the encoder actors: Ray Data's plan shows it as a TaskPoolMapOperator before the
    encoder's ActorPoolMapOperator);
    each encoder actor asks for ``compute.gpus_per_actor`` GPUs and ``cpus_per_actor`` CPUs,
    so with one GPU per actor Ray runs at most one encoder per GPU (see ray_cluster.yaml for keeping
    the CPU tasks off GPU nodes).
    """
    src, compute = config.source, config.compute
    # Stages after validate take block_rows rows a call: without a batch size Ray hands a stage a
    # whole block, which can be a whole Parquet file, so the token id lists would grow with the file
    # instead of staying at one batch. Validate itself takes whole blocks: a batch may not span two
    # files, whose text columns can have different (bad) types until validate has made them strings.
    rows = dict(batch_size=compute.block_rows, num_cpus=cpus)
    stages = [
        Stage("validate", ValidateStage(src.id_column, src.text_column, lineage_key), map_kwargs=dict(num_cpus=cpus))
    ]
    if existing is not None:
        revision = None if config.sink.revision_by == "path" else config.sink.revision_by
        stages.append(
            Stage(
                "skip_unchanged",
                SkipUnchangedStage(existing, src.id_column, revision, latest, src.metadata_columns),
                map_kwargs=rows,
            )
        )
    return stages + [
        _tokenize_stage(config, max_tokens, storage, rows),
        _encode_stage(config, max_tokens=max_tokens, dimension=dimension, storage=storage, pool=pool, run_id=run_id),
    ]


def _tokenize_stage(config: PipelineConfig, max_tokens: int, storage, rows: dict) -> Stage:
    """The tokenize stage: a task stage of ``compute.block_rows`` rows a call."""
    src, model = config.source, config.model
    # A Parquet file is one block up to here (validate needs whole files). From here on blocks
    # are compute.block_rows rows: the encoder actors share a big file batch by batch, and a
    # lost actor or node costs the batches it held, not the file.
    return Stage(
        "tokenize",
        TokenizeStage(
            model,
            src.id_column,
            src.text_column,
            max_tokens,
            model.document_prompt,
            chunk=config.embed.long_text == "chunk",
            overlap=config.embed.chunk_overlap,
            storage=storage,
        ),
        map_kwargs=rows,
        split_rows=config.compute.block_rows,
    )


def _encode_stage(
    config: PipelineConfig, *, max_tokens: int, dimension: int, storage, pool: Optional[int], run_id: str
) -> Stage:
    """The encode stage: a pool of encoder actors (``pool``, else ``compute.actors`` .. ``max_actors``)."""
    import ray

    model, compute = config.model, config.compute
    return Stage(
        "encode",
        EncodeStage,
        constructor_kwargs=dict(
            model=model,
            dimension=dimension,
            normalize=config.embed.normalize,
            batch_tokens=compute.batch_tokens,
            vector_dtype=config.embed.vector_dtype,
            threads=_encoder_threads(config),
            storage=storage,
            max_tokens=max_tokens,
            run_id=run_id,
            table=config.sink.table,
        ),
        map_kwargs=dict(
            batch_size=compute.block_rows,
            compute=ray.data.ActorPoolStrategy(
                min_size=pool or compute.actors, max_size=pool or compute.max_actors or compute.actors
            ),
            num_cpus=compute.cpus_per_actor,
            num_gpus=compute.gpus_per_actor,
            **ENCODER_ACTOR_OPTIONS,
        ),
    )


def apply_stages(dataset, stages: list[Stage], read_cpus: float = 1.0):
    """Chain the stages lazily; nothing runs until the dataset is consumed. ``read_cpus``: what the
    dataset's read tasks ask for."""
    cpus = read_cpus
    for stage in stages:
        if stage.split_rows:
            dataset = dataset.repartition(target_num_rows_per_block=stage.split_rows)
            # The repartition runs inside the tasks of the stage before it (Ray fuses them) only
            # when both ask for the same resources, else it is an operator of its own asking for a
            # whole CPU. Ray 2.60 has no public way to give it a CPU request: Dataset.repartition
            # takes none (num_blocks, target_num_rows_per_block, strict, shuffle, keys, sort), and
            # the StreamingRepartition operator it adds starts with ray_remote_args={}, which the
            # planner passes on as they are (plan_streaming_repartition_op). So the request is set
            # on that operator, the one private field used here; a Ray that renames it raises
            # AttributeError at the first run rather than silently planning differently.
            dataset._logical_plan.dag.ray_remote_args["num_cpus"] = cpus
        kwargs = dict(stage.map_kwargs)
        if stage.constructor_kwargs:
            kwargs["fn_constructor_kwargs"] = stage.constructor_kwargs
        with warnings.catch_warnings():
            # The encoder's max_restarts has no named parameter yet (Ray 2.60 deprecates the
            # other remote args, ray-project/ray#65228, for removal in 2.64): not the user's to act on.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = dataset.map_batches(stage.fn, batch_format="pyarrow", **kwargs)
        if "compute" not in stage.map_kwargs:  # a task stage
            cpus = stage.map_kwargs.get("num_cpus", 1.0)
    return dataset
