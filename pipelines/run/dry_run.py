"""Dry run: what an indexing run would read, make and cost, measured on a sample; writes nothing.

    python -m jobs.index --config jobs/configs/demo.yaml --dry-run

1. **Files and rows** from the Parquet footers (the run's own preflight: the same checks, the same
   errors for a bad path, column or model).
2. **A sample of texts** (``sample_rows``, spread over up to ``sample_files`` files, read from their
   first row group) through the run's own validate and tokenize stages: tokens per document, the
   share cut at the model's token limit (or, with ``embed.long_text=chunk``, rows per document) and
   the share that would be rejected.
3. **A warm-up on the encoder's device**: the run's encode stage in one Ray task with the resources
   of one encoder actor (``compute.gpus_per_actor`` GPUs, ``cpus_per_actor`` CPUs), so the rate is
   the device the actors will get, not the driver's. One pass to load the model, then the sample
   timed. The estimate is rows / (rate x actors); it assumes the CPU stages keep up
   (docs/scaling.md says how many cores per GPU that takes).
4. **The table's size** at the configured dimension and vector type: vectors, the sample's mean
   text and metadata bytes, the job's own columns, and the index's codes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C
from connectors.errors import UserError
from connectors.lance.index import code_bytes
from pipelines.config import PipelineConfig
from pipelines.lineage import vector_key
from pipelines.run.plan import embedding_stages
from pipelines.run.progress import duration
from pipelines.run.quiet import init_own_ray
from pipelines.vector_index.params import derive_index_params

__all__ = ["DryRunReport", "dry_run"]

JOB_COLUMN_BYTES = 110  # per row: content hash (64 hex), run id (12), source file path (about 30)


@dataclass
class DryRunReport:
    files: int
    rows: int
    skipped_files: dict = field(default_factory=dict)
    sample_rows: int = 0
    tokens_per_doc: float = 0.0
    truncated_share: float = 0.0
    rows_per_doc: float = 1.0  # table rows per document: >1 with embed.long_text=chunk
    rejected_share: float = 0.0
    device: str = ""
    actor_docs_per_s: float = 0.0  # one encoder actor, on the sample, after its warm-up
    actors: int = 1
    estimated_embed_s: float = 0.0
    table_rows: int = 0
    table_bytes: int = 0  # vectors, text, metadata and the job's columns
    index: str = "none"
    index_bytes: int = 0
    seconds: float = 0.0  # what the dry run itself took
    model: list = field(default_factory=list)  # the model's chain and where each setting came from
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def format(self) -> str:
        return "\n".join(["dry run (nothing was written)", *self.lines()])

    def lines(self) -> list[str]:
        gib = 2**30
        chunked = f", {self.rows_per_doc:.2f} table rows per document" if self.rows_per_doc != 1 else ""
        skipped = f" ({len(self.skipped_files)} unreadable files would be skipped)" if self.skipped_files else ""
        return [
            f"source       {self.files} files, {self.rows:,} rows (from the Parquet footers){skipped}",
            f"sample       {self.sample_rows} documents: {self.tokens_per_doc:.0f} tokens per document, "
            f"{self.truncated_share:.1%} cut at the token limit{chunked}, {self.rejected_share:.1%} rejected",
            f"encoder      {self.actor_docs_per_s:,.1f} docs/s per actor on {self.device} (measured on the sample "
            f"after a warm-up)",
            f"estimate     {duration(self.estimated_embed_s)} to embed with {self.actors} actor(s), "
            "if the CPU stages keep up",
            f"table        {self.table_rows:,} rows, about {self.table_bytes / gib:.2f} GiB; index {self.index}, "
            f"about {self.index_bytes / gib:.2f} GiB",
            *[("model        " if i == 0 else " " * 13) + line for i, line in enumerate(self.model)],
            *[f"warning      {line}" for line in self.warnings],
            f"took         {self.seconds:.1f}s",
        ]


def _warm_up(stage, batch: pa.Table, resources: dict) -> tuple[float, str]:
    """Seconds the encode stage takes over ``batch`` after one warm-up pass, in a Ray task with one
    encoder actor's resources, and the device it ran on."""
    import ray

    @ray.remote(**resources)
    def timed(fn, kwargs, batch):
        encode = fn(**kwargs)
        encode(batch.slice(0, min(8, batch.num_rows)))  # loads the model, first pass
        started = time.perf_counter()
        encode(batch)
        return time.perf_counter() - started, str(getattr(encode.encoder, "device", "?"))

    return ray.get(timed.remote(stage.fn, stage.constructor_kwargs, batch))


def dry_run(config: PipelineConfig, sample_rows: int = 256, sample_files: int = 8) -> DryRunReport:
    import ray

    from pipelines.run.preflight import preflight

    started = time.perf_counter()
    plan = preflight(config)
    config = plan.config  # the model's auto settings settled, as the run would settle them
    src = config.source
    rows = sum(plan.source.rows.values())
    report = DryRunReport(files=len(plan.source.files), rows=rows, skipped_files=dict(plan.source.skipped))
    report.model, report.warnings = plan.model.describe(), plan.model.warnings()
    stages = {
        s.name: s
        for s in embedding_stages(
            config, max_tokens=plan.max_tokens, dimension=plan.dimension, lineage_key=vector_key(plan.lineage, config)
        )
    }
    parts = plan.source.sample([src.id_column, src.text_column, *src.metadata_columns], sample_rows, sample_files)
    if not parts:
        raise UserError(f"dry run: the sampled files of source.path={src.path} have no rows")
    valid = pa.concat_tables([stages["validate"].fn(part) for part in parts], promote_options="permissive")
    tokens = stages["tokenize"].fn(valid)
    kept = tokens.filter(pc.is_null(tokens.column(C.REJECT)))
    docs = pc.sum(pc.is_null(valid.column(C.REJECT))).as_py() or 0  # documents that can be embedded
    if not docs:
        raise UserError(
            f"dry run: none of the {valid.num_rows} sampled rows of {src.path} can be embedded (reasons: "
            f"{sorted(set(valid.column(C.REJECT).drop_null().to_pylist()))})"
        )
    report.sample_rows = valid.num_rows
    report.rejected_share = 1 - docs / valid.num_rows
    report.tokens_per_doc = (pc.sum(pc.list_value_length(kept.column(C.INPUT_IDS))).as_py() or 0) / docs
    report.truncated_share = (pc.sum(kept.column(C.TRUNCATED)).as_py() or 0) / docs
    report.rows_per_doc = kept.num_rows / docs

    if not ray.is_initialized():
        init_own_ray(include_dashboard=False)  # as the job's own Ray (pipelines/run/runner.py)
    encode = stages["encode"]
    resources = {"num_cpus": config.compute.cpus_per_actor or 0, "num_gpus": config.compute.gpus_per_actor or 0}
    seconds, report.device = _warm_up(encode, kept, resources)
    report.actor_docs_per_s = kept.num_rows / max(seconds, 1e-9) / report.rows_per_doc
    report.actors = config.compute.max_actors or config.compute.actors
    report.estimated_embed_s = rows * (1 - report.rejected_share) / (report.actor_docs_per_s * report.actors)
    # (the pool starts at compute.actors and grows to compute.max_actors: the estimate is at its largest)

    report.table_rows = round(rows * (1 - report.rejected_share) * report.rows_per_doc)
    vector_bytes = plan.dimension * (2 if config.embed.vector_dtype == "float16" else 4)
    payload = kept.select([src.text_column, *src.metadata_columns]).nbytes / max(1, kept.num_rows)
    report.table_bytes = round(report.table_rows * (vector_bytes + payload + JOB_COLUMN_BYTES))
    params = derive_index_params(report.table_rows, plan.dimension, config.index)
    report.index = params.type
    if params.type != "none":
        report.index += f" ({params.num_partitions} lists)"
        per_row = (
            code_bytes(params.type, plan.dimension, params.num_sub_vectors, num_bits=params.num_bits) + 8
        )  # codes + row id
        report.index_bytes = round(report.table_rows * per_row)
    report.seconds = round(time.perf_counter() - started, 1)
    return report
