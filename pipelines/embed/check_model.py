"""Does this project embed a model as its authors' library does? The project's vectors beside
sentence-transformers' for a handful of texts, per text, with the chain the project settled on.

``embedpipe check-model PATH`` (jobs/check_model.py) prints :meth:`ModelCheck.format`. Documents and
queries go through ``encode(prompt_name=...)`` with the prompt the project takes for each role on the
reference side, and through the settled document and query prompts here, both in float32 on CPU, so a
difference is the chain's (pooling, prompts, head), not the numerics'. Without sentence-transformers
installed, or for a plain transformers directory (no ``modules.json``), only the chain is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from connectors.model_store import resolve_model_dir
from pipelines.config import ModelConfig
from pipelines.embed.model_settings import ResolvedModel, resolve_model_settings

__all__ = ["DEFAULT_TEXTS", "MIN_COSINE", "ModelCheck", "check_model"]

MIN_COSINE = 0.9999  # below it a vector is another model's, not a rounding difference
DEFAULT_TEXTS = (
    "The mitochondrion is the powerhouse of the cell.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "How do vaccines train the immune system?",
    "La tour Eiffel a été construite pour l'Exposition universelle de 1889.",
    "Die Relativitätstheorie beschreibt Raum, Zeit und Gravitation.",
    "東京は日本の首都です。",
    "short",
    "A much longer sentence that keeps going, listing rivers such as the Nile, the Amazon, the Yangtze, "
    "the Mississippi and the Danube, so that padding and pooling over many tokens are exercised too.",
)


@dataclass
class ModelCheck:
    """The settled chain and, per text and role, the cosine between the project's and the reference's vector."""

    path: str
    resolved: ResolvedModel
    dimension: int
    texts: list[str]
    reference: str = ""  # what the vectors were compared with, or why they were not
    cosines: dict[str, list[float]] = field(default_factory=dict)  # "document"/"query" -> one per text

    @property
    def worst(self) -> Optional[float]:
        values = [c for role in self.cosines.values() for c in role]
        return min(values) if values else None

    @property
    def ok(self) -> bool:
        return self.worst is None or self.worst >= MIN_COSINE

    def format(self) -> str:
        chain = " -> ".join(self.resolved.modules)
        lines = [f"model        {self.path}", f"chain        {chain}: {self.dimension} dims"]
        lines += [" " * 13 + line for line in self.resolved.describe()]
        lines.append(f"reference    {self.reference}")
        for role, values in self.cosines.items():
            for text, cos in zip(self.texts, values):
                mark = "ok " if cos >= MIN_COSINE else "BAD"
                lines.append(f"  {mark} {role:8s} cosine {cos:.6f}  {' '.join(text.split())[:60]}")
        if self.worst is not None:
            verdict = "the same vectors" if self.ok else f"DIFFERENT vectors (below {MIN_COSINE})"
            lines.append(f"result       worst cosine {self.worst:.6f}: {verdict}")
        return "\n".join(lines)


def check_model(path: str, texts: Sequence[str] = DEFAULT_TEXTS, revision: Optional[str] = None) -> ModelCheck:
    """Embed ``texts`` as documents and as queries with the project's HF encoder and, where it can,
    with sentence-transformers; see :class:`ModelCheck`."""
    from pipelines.embed.hf_encoder import HFEncoder
    from pipelines.embed.texts import embed_texts
    from pipelines.embed.tokenizer import effective_max_tokens

    model_dir = resolve_model_dir(path, revision)
    config = ModelConfig(path=path, revision=revision, dtype="float32", device="cpu")
    resolved = resolve_model_settings(config, model_dir)
    encoder = HFEncoder(resolved.model)
    m = encoder.config
    limit = effective_max_tokens(model_dir, encoder.tokenizer, None)  # the job's (max_seq_length), not the tokenizer's
    ours = {
        "document": embed_texts(encoder, texts, m.document_prompt, limit, encoder.hidden_size),
        "query": embed_texts(encoder, texts, m.query_prompt, limit, encoder.hidden_size),
    }
    check = ModelCheck(path, resolved, encoder.hidden_size, list(texts))
    reference = _reference(str(model_dir), texts, resolved)
    if isinstance(reference, str):
        check.reference = reference
        return check
    check.reference = "sentence-transformers encode(prompt_name=...), float32, cpu"
    for role, theirs in reference.items():
        theirs = theirs / np.maximum(np.linalg.norm(theirs, axis=1, keepdims=True), 1e-12)
        check.cosines[role] = [float(c) for c in (ours[role] * theirs).sum(axis=1)]
    return check


def _reference(model_dir: str, texts: Sequence[str], resolved: ResolvedModel):
    """sentence-transformers' vectors per role, or a line saying why there are none."""
    if resolved.pipeline is None:
        return "none: not a sentence-transformers directory (no modules.json); the chain above is the defaults'"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return "none: sentence-transformers is not installed (pip install sentence-transformers)"
    st = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
    names = {"document": resolved.pipeline.document_prompt_name(), "query": resolved.pipeline.query_prompt_name()}
    # encode(prompt_name=...) with the prompt the project takes for each role (ModelPipeline's rule; it
    # is encode_query/encode_document's except where those take an empty placeholder, docs/models.md).
    return {
        role: st.encode(
            list(texts), prompt_name=name, prompt="" if name is None else None, convert_to_numpy=True
        ).astype(np.float32)
        for role, name in names.items()
    }
