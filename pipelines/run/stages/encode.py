"""Encode stage: a Ray Data actor that loads the model once and embeds whole blocks.

Per call: forward passes over length-sorted, token-budgeted batches (:mod:`pipelines.embed.hf_encoder`),
or one ``LLM.embed`` call over the whole block (:mod:`pipelines.embed.vllm_encoder`, ``model.backend:
vllm``), then pooling output -> normalise -> Matryoshka truncation -> normalise
(:mod:`pipelines.embed.postprocess`). Both backends give the same columns, rows and order.
"""

from __future__ import annotations

import time
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C
from pipelines.config import ModelConfig
from pipelines.embed.hf_encoder import HFEncoder
from pipelines.embed.postprocess import postprocess
from pipelines.run.prometheus import EncodeMetrics

__all__ = ["EncodeStage", "load_encoder", "placement", "vectors_to_arrow"]


def placement() -> tuple[str, str]:
    """(node id, actor id) of the Ray process this runs in; ``("local", "")`` outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return "local", ""
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_actor_id() or ""
    except Exception:  # noqa: BLE001 - a report, never a reason to fail
        return "local", ""


def load_encoder(
    model: ModelConfig,
    *,
    dimension: int,
    normalize: bool,
    threads: Optional[int] = None,
    max_tokens: Optional[int] = None,
    storage=None,
):
    """The encoder ``model.backend`` names; both have ``embed(token_ids, batch_tokens)``."""
    if model.backend == "vllm":
        from pipelines.embed.vllm_encoder import VLLMEncoder

        return VLLMEncoder(model, dimension=dimension, normalize=normalize, max_tokens=max_tokens, storage=storage)
    return HFEncoder(model, threads=threads, storage=storage)


def vectors_to_arrow(vectors: np.ndarray, valid: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A fixed-size-list column from an (n, dim) array; rows where ``valid`` is False are null."""
    dim = vectors.shape[1]
    values = pa.array(vectors.astype(value_type.to_pandas_dtype(), copy=False).ravel())
    arr = pa.FixedSizeListArray.from_arrays(values, dim)
    if valid.all():
        return arr
    return pc.if_else(pa.array(valid), arr, pa.nulls(len(arr), arr.type))


class EncodeStage:
    """Adds ``vector`` (null for rejected rows), ``_n_tokens`` and ``_encoder``; drops the token ids."""

    def __init__(
        self,
        model: ModelConfig,
        dimension: int,
        normalize: bool,
        batch_tokens: Union[int, str],
        vector_dtype: str = "float32",
        threads: Optional[int] = None,
        storage=None,
        max_tokens: Optional[int] = None,
        run_id: Optional[str] = None,
        table: Optional[str] = None,
    ):
        self.metrics = EncodeMetrics(run_id, table)  # seconds per block on Ray's metrics endpoint
        self.encoder = load_encoder(
            model, dimension=dimension, normalize=normalize, threads=threads, max_tokens=max_tokens, storage=storage
        )
        # A model that pools without its prompt (include_prompt false) leaves the document prompt's tokens out.
        self.prompt_tokens = self.encoder.prompt_tokens(model.document_prompt)
        self.dimension = dimension
        self.normalize = normalize
        self.batch_tokens = batch_tokens
        self.value_type = pa.float16() if vector_dtype == "float16" else pa.float32()
        self.tag = "/".join(placement())  # which actor on which node embedded a row (the run's summary)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        out = self._encode(batch)
        self.metrics.observe(time.perf_counter() - started)
        return out

    def _encode(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(C.INPUT_IDS).to_pylist()
        reject = batch.column(C.REJECT).to_pylist()
        rows = [i for i, r in enumerate(reject) if r is None and ids[i]]
        vectors = np.zeros((batch.num_rows, self.dimension), dtype=np.float32)
        if rows:
            pooled = self.encoder.embed([ids[i] for i in rows], self.batch_tokens, self.prompt_tokens)
            vectors[rows] = postprocess(pooled, self.dimension, self.normalize)
        finite = np.isfinite(vectors).all(axis=1)
        valid = np.zeros(batch.num_rows, dtype=bool)
        valid[rows] = True
        bad = valid & ~finite
        if bad.any():  # a NaN/inf vector is a failed embedding, not a document to index
            reject = ["non_finite_vector" if b else r for b, r in zip(bad, reject)]
            batch = batch.set_column(batch.schema.get_field_index(C.REJECT), C.REJECT, pa.array(reject, pa.string()))
            valid &= finite
        n_tokens = pa.array([len(x) if v else 0 for x, v in zip(ids, valid)], pa.int32())
        batch = batch.drop_columns([C.INPUT_IDS])
        batch = batch.append_column(C.VECTOR, vectors_to_arrow(vectors, valid, self.value_type))
        batch = batch.append_column(C.N_TOKENS, n_tokens)
        return batch.append_column(C.ENCODER, pa.array([self.tag] * batch.num_rows, pa.string()))
