"""The table's embedding function in LanceDB's registry: plain LanceDB's ``search("text")`` on a table
this pipeline made embeds the query with the table's own model, prompt, dimension and normalisation.

    import lancedb
    import pipelines.search.searcher  # noqa: F401  registers the function, with Searcher's embedding

    table = lancedb.connect("out/lancedb").open_table("documents")
    table.search("how do vaccines work").limit(5).to_pandas()

The job records the function in the table's schema the way LanceDB expects (the ``embedding_functions``
metadata key: the function's name, its arguments, the source and vector columns; see
:func:`connectors.lance.metadata.table_metadata`). Its argument is the table's model lineage. LanceDB
looks the name up in its registry, which only imports fill (it has no plugin discovery): importing
this module registers the function (enough for writes through LanceDB's API, which parse it), and
importing :mod:`pipelines.search.searcher` also gives it the embedding, ``Searcher``'s own, with the
model's fingerprint checked as there.

LanceDB searches an indexed table with its own defaults (``nprobes=20``, no refine); the table's
recall-tuned defaults are in its lineage (``Searcher`` uses them; ``.nprobes(n).refine_factor(r)``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction, register
from pydantic import PrivateAttr

from connectors.lance.metadata import EMBEDDING_FUNCTION

__all__ = ["TableEmbedding"]


@register(EMBEDDING_FUNCTION)
class TableEmbedding(TextEmbeddingFunction):
    """Embeds queries (query prompt) and documents (document prompt) as the table's lineage says."""

    lineage: dict  # the table lineage's model, dimension, normalize and metric
    device: str = "auto"
    max_retries: int = 0  # nothing is retried (the *_with_retry methods below)

    # (lineage, device) -> an object with embed_queries(texts) and embed_documents(texts); set by
    # pipelines.search.searcher when it is imported (connectors do not import the pipelines).
    embedder: ClassVar[Optional[Callable[[dict, str], Any]]] = None
    _loaded: Any = PrivateAttr(default=None)

    def ndims(self) -> int:
        return int(self.lineage["dimension"])

    def _embedder(self):
        if self._loaded is None:  # on the first text, not when LanceDB opens the table's functions
            if TableEmbedding.embedder is None:
                raise RuntimeError(
                    "this table's texts are embedded by embedpipe's Searcher: import pipelines.search.searcher "
                    "before searching it by text with LanceDB"
                )
            self._loaded = TableEmbedding.embedder(self.lineage, self.device)
        return self._loaded

    # LanceDB calls these; its retry wraps every error, even with no retries, in a bare Exception.
    # A local model's error is not a rate limit: it comes out as it is (a LineageMismatchError, say).
    def compute_query_embeddings_with_retry(self, *args, **kwargs) -> list[np.ndarray]:
        return self.compute_query_embeddings(*args, **kwargs)

    def compute_source_embeddings_with_retry(self, *args, **kwargs) -> list[np.ndarray]:
        return self.compute_source_embeddings(*args, **kwargs)

    def compute_query_embeddings(self, query: str, *args, **kwargs) -> list[np.ndarray]:
        return list(self._embedder().embed_queries([query]))

    def generate_embeddings(self, texts, *args, **kwargs) -> list[np.ndarray]:
        return list(self._embedder().embed_documents(list(texts)))
