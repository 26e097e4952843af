"""Query a table with the model, prompt and dimension recorded in it.

    from pipelines.search import Searcher
    searcher = Searcher.open("out/lancedb", "documents")
    hits = searcher.search("how do vaccines work", k=5)           # pyarrow.Table
    hits = searcher.search("...", k=5, where="length_chars > 500").to_pandas()

The query goes through the same tokenizer, encoder, pooling and post-processing code as the
documents. Any model or dimension given here is checked against the table's lineage; a mismatch
raises :class:`LineageMismatchError` instead of returning meaningless neighbours.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from connectors import lance_sink
from connectors.model_store import model_fingerprint, resolve_model_dir
from connectors.storage import Storage, is_s3
from pipelines.config import ModelConfig
from pipelines.lineage import LineageMismatchError
from pipelines.postprocess import postprocess

__all__ = ["LineageMismatchError", "Searcher"]


class Searcher:
    """An open table plus the encoder that made it; search by text or by vector."""

    def __init__(self, table, lineage: dict, model_path: Optional[str] = None, device: str = "auto",
                 storage: Optional[Storage] = None):
        self.table = table
        self.storage = storage
        self.lineage = lineage
        self.dimension = int(lineage["dimension"])
        self.metric = lineage["metric"]
        self.defaults = lineage.get("query_defaults") or {}
        self.has_index = (lineage.get("index") or {}).get("type", "none") != "none"
        m = lineage["model"]
        path = model_path or m["path"]
        fingerprint = model_fingerprint(resolve_model_dir(path, m.get("revision"), storage))
        if fingerprint != m["fingerprint"]:
            raise LineageMismatchError(
                f"model {path} (fingerprint {fingerprint}) is not the model that made this table "
                f"({m['path']}, fingerprint {m['fingerprint']})"
            )
        self.model_config = ModelConfig(
            path=path, revision=m.get("revision"), backend=m["backend"], pooling=m["pooling"],
            max_tokens=m["max_tokens"], query_prompt=m["query_prompt"], document_prompt=m["document_prompt"],
            dtype=m.get("dtype", "float32"), padding_side=m.get("padding_side", "auto"), device=device,
            append_eos=bool(m.get("append_eos", False)),
        )
        self._encoder = None

    @classmethod
    def open(
        cls,
        uri: str,
        table: str,
        *,
        model_path: Optional[str] = None,
        dimension: Optional[int] = None,
        device: str = "auto",
        storage: Optional[Storage] = None,
    ) -> "Searcher":
        """Open ``table`` in the LanceDB database ``uri`` (a directory or ``s3://`` prefix).

        Args:
            model_path: where the table's model lives on this machine, when not at the recorded path;
                its weights must be the recorded ones.
            dimension: the dimension the caller expects; checked against the table.
            storage: endpoint and credentials for ``s3://``; default: from the environment
                (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
        """
        import lancedb

        storage = storage or Storage.resolve()
        if is_s3(uri):
            storage.probe(uri, "uri")  # a missing bucket or refused credentials, not "no table"
        options = storage.lance_options(uri)
        lineage = lance_sink.read_lineage(uri, table, options)
        if lineage is None:
            raise lance_sink.SinkError(f"no table {table!r} in {uri}")
        if dimension is not None and dimension != lineage["dimension"]:
            raise LineageMismatchError(f"dimension {dimension} does not match the table's {lineage['dimension']}")
        return cls(lancedb.connect(uri, storage_options=options).open_table(table), lineage,
                   model_path=model_path, device=device, storage=storage)

    def _encode(self):
        # Queries always go through the hf backend, also for tables a vLLM run made: a vLLM engine
        # takes tens of seconds to start for a handful of texts, and the backends agree (the vLLM
        # tests hold them to cosine >= 0.999 on the same inputs).
        if self._encoder is None:
            from pipelines.hf_encoder import HFEncoder, padding_side_for
            from pipelines.tokenize import load_tokenizer

            self._encoder = HFEncoder(self.model_config, storage=self.storage)
            self._tokenizer = load_tokenizer(
                self.model_config.path, self.model_config.revision, padding_side_for(self.model_config),
                self.storage,
            )
        return self._encoder

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors exactly as the table's documents were made, with the query prompt."""
        from pipelines.tokenize import eos_to_append, tokenize_texts

        encoder = self._encode()
        prompt = self.model_config.query_prompt
        eos_id = eos_to_append(self._tokenizer, self.model_config.append_eos, self.model_config.pooling)
        ids, _ = tokenize_texts(self._tokenizer, [prompt + t for t in texts], self.model_config.max_tokens, eos_id)
        pooled = encoder.embed(ids, batch_tokens=16384)
        return postprocess(pooled, self.dimension, bool(self.lineage.get("normalize", True)))

    def search(
        self,
        query: Union[str, Sequence[float], np.ndarray],
        k: int = 10,
        *,
        where: Optional[str] = None,
        nprobes: Optional[int] = None,
        refine_factor: Optional[int] = None,
        columns: Optional[Sequence[str]] = None,
        exact: bool = False,
    ) -> pa.Table:
        """Top-``k`` rows for a text or a vector, best first, with a ``score`` column.

        ``score`` is the cosine similarity (or dot product) for cosine/dot tables, the negated L2
        distance for l2 tables: higher is always better. ``where`` is a LanceDB SQL filter on
        metadata columns, applied before the vector search. ``exact`` scans every vector instead of
        the index (the ground truth the index is measured against).
        """
        if isinstance(query, str):
            vector = self.embed_queries([query])[0]
        else:
            vector = np.asarray(query, dtype=np.float32)
            if vector.shape != (self.dimension,):
                raise LineageMismatchError(f"query vector has shape {vector.shape}, the table holds "
                                           f"{self.dimension}-dimensional vectors")
        q = self.table.search(vector, vector_column_name="vector").distance_type(self.metric).limit(k)
        if exact:
            q = q.bypass_vector_index()
        elif self.has_index:
            q = q.nprobes(nprobes or self.defaults.get("nprobes") or 20)
            refine = refine_factor or self.defaults.get("refine_factor")
            if refine:
                q = q.refine_factor(refine)
        if where:
            q = q.where(where, prefilter=True)
        if columns:
            q = q.select(list(columns))
        hits = q.to_arrow()
        distance = hits.column("_distance").to_numpy()
        score = 1.0 - distance if self.metric == "cosine" else -distance
        return hits.append_column("score", pa.array(score.astype(np.float32)))
