"""The model's own pipeline, read from its sentence-transformers files: modules, pooling, Dense heads, prompts.

A sentence-transformers model directory says how its authors turn token embeddings into a sentence
vector (``modules.json``: Transformer -> Pooling -> Dense ... -> Normalize), how it pools
(``1_Pooling/config.json``, in the legacy ``pooling_mode_*_token`` form of hub models or the
``pooling_mode`` form sentence-transformers 6 saves), which prompts it was trained with
(``config_sentence_transformers.json``: ``prompts``, ``default_prompt_name``, ``similarity_fn_name``).
:func:`read_model_pipeline` reads all of it (the tokenizer reads ``do_lower_case`` itself,
:func:`pipelines.embed.tokenizer.load_tokenizer`);
:mod:`pipelines.embed.model_settings` turns it into the run's settings. A module the project cannot run
is an error naming it, never a silent skip: the vectors would look fine and be wrong.

A directory without ``modules.json`` is a plain ``transformers`` model: no pipeline, the configured
defaults apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipelines.config import ConfigError

__all__ = [
    "DenseLayer",
    "ModelPipeline",
    "POOLING_NAMES",
    "UnsupportedModelError",
    "declared_dimensions",
    "dense_dimension",
    "read_model_pipeline",
]

# sentence-transformers' pooling mode names -> this project's (model.pooling); the order of the legacy
# boolean keys is the order sentence-transformers concatenates several modes in.
POOLING_NAMES = {
    "cls": "cls",
    "max": "max",
    "mean": "mean",
    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "weightedmean": "weightedmean",
    "lasttoken": "last",
}
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Modules that change nothing at inference (Dropout) are passed over; anything not named here is refused.
_NO_OP_MODULES = {"Dropout"}
_DENSE_KEYS = {"in_features", "out_features", "bias", "activation_function", "module_input_name",
               "module_output_name", "use_residual"}  # fmt: skip
# The prompt names a query and a document may carry, in the order sentence-transformers' encode_query
# and encode_document try them.
QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


class UnsupportedModelError(ConfigError):
    """The model directory holds a module or setting this project cannot run the way its library does."""


@dataclass(frozen=True)
class DenseLayer:
    """One ``Dense`` module: ``activation(linear(x))`` (+ a residual), its weights in ``path``."""

    path: str  # the module's folder inside the model directory, e.g. "2_Dense"
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "torch.nn.modules.activation.Tanh"  # sentence-transformers' default
    use_residual: bool = False

    def describe(self) -> str:
        act = self.activation.rsplit(".", 1)[-1]
        return f"Dense({self.in_features}->{self.out_features}, {act}{', residual' if self.use_residual else ''})"


@dataclass(frozen=True)
class ModelPipeline:
    """What a sentence-transformers model directory says about producing a sentence vector."""

    pooling: Optional[str] = None  # this project's name ("last", not "lasttoken"); "cls+mean" for several
    include_prompt: bool = True
    pooling_file: str = ""  # where pooling was read, for "came from" messages
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: Optional[str] = None
    similarity_fn_name: Optional[str] = None

    def query_prompt_name(self) -> Optional[str]:
        """The named prompt queries take: ``query``, else the default prompt (None: no prompt)."""
        return self._prompt_name(QUERY_PROMPT_NAMES)

    def document_prompt_name(self) -> Optional[str]:
        """The named prompt documents take: ``document``, ``passage`` or ``corpus``, else the default."""
        return self._prompt_name(DOCUMENT_PROMPT_NAMES)

    def query_prompt(self) -> Optional[str]:
        name = self.query_prompt_name()
        return None if name is None else self.prompts[name]

    def document_prompt(self) -> Optional[str]:
        name = self.document_prompt_name()
        return None if name is None else self.prompts[name]

    def _prompt_name(self, names: tuple[str, ...]) -> Optional[str]:
        # An empty prompt is passed over: sentence-transformers 6 saves every model with "query" and
        # "document" keys, empty where the authors gave none, so e5's {"query": "query: ", "document": "",
        # "passage": "passage: "} means passages take "passage: " (its authors' convention), where its
        # encode_document takes the empty placeholder (docs/models.md).
        for name in names:
            if self.prompts.get(name):
                return name
        return self.default_prompt_name or None


def read_model_pipeline(model_dir: Path) -> Optional[ModelPipeline]:
    """The pipeline ``model_dir``'s sentence-transformers files describe; None for a plain transformers model.

    Raises:
        UnsupportedModelError: naming a module this project cannot run (a custom or static-embedding
            module, a Transformer in a subfolder, a Dense with a non-torch activation, ...).
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    settings = _read_json(model_dir / "config_sentence_transformers.json")
    prompts = {str(k): str(v) for k, v in (settings.get("prompts") or {}).items()}
    default_name = settings.get("default_prompt_name") or None
    if default_name and default_name not in prompts:
        raise UnsupportedModelError(
            f"{model_dir / 'config_sentence_transformers.json'}: default_prompt_name {default_name!r} "
            f"is not one of its prompts {sorted(prompts)}"
        )
    chain = _read_modules(model_dir, modules_file)
    return ModelPipeline(
        **chain,
        prompts=prompts,
        default_prompt_name=default_name,
        similarity_fn_name=settings.get("similarity_fn_name") or None,
    )


def _read_modules(model_dir: Path, modules_file: Path) -> dict:
    """Pooling, Dense layers and Normalize from ``modules.json``, in order, checking what may follow what."""
    out: dict = {"dense": []}
    entries = sorted(json.loads(modules_file.read_text()), key=lambda m: int(m.get("idx", 0)))
    for position, entry in enumerate(entries):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        path = str(entry.get("path", ""))
        where = f"{modules_file} module {position} ({entry.get('type')!r}, path {path!r})"
        if kind == "Transformer":
            if position != 0 or path not in ("", "."):
                raise UnsupportedModelError(f"{where}: only a first Transformer in the model's own folder is supported")
        elif kind == "Pooling":
            out.update(_read_pooling(model_dir / path / "config.json"))
        elif kind == "Dense":
            if "pooling" not in out:
                raise UnsupportedModelError(f"{where}: a Dense module before pooling (token-level) is not supported")
            out["dense"].append(_read_dense(model_dir, path, where))
        elif kind == "Normalize":
            out["normalize"] = True
        elif kind not in _NO_OP_MODULES:
            raise UnsupportedModelError(
                f"{where}: module {kind!r} is not supported (supported: Transformer, Pooling, Dense, Normalize); "
                "see docs/models.md"
            )
    if entries and str(entries[0].get("type", "")).rsplit(".", 1)[-1] != "Transformer":
        raise UnsupportedModelError(f"{modules_file}: the first module is not a Transformer (static embeddings?)")
    out["dense"] = tuple(out["dense"])
    return out


def _read_pooling(config_file: Path) -> dict:
    """``pooling``/``include_prompt`` from a Pooling config in either of its formats."""
    config = _read_json(config_file)
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw)
    else:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    unknown = [m for m in modes if m not in POOLING_NAMES]
    if unknown:
        raise UnsupportedModelError(f"{config_file}: pooling mode {unknown[0]!r} is not one of {sorted(POOLING_NAMES)}")
    return {
        "pooling": "+".join(POOLING_NAMES[m] for m in modes),
        "include_prompt": bool(config.get("include_prompt", True)),
        "pooling_file": str(config_file.relative_to(config_file.parent.parent)),
    }


def _read_dense(model_dir: Path, path: str, where: str) -> DenseLayer:
    config = _read_json(model_dir / path / "config.json")
    unknown = set(config) - _DENSE_KEYS
    if unknown:
        raise UnsupportedModelError(f"{where}: Dense settings {sorted(unknown)} are not supported")
    if config.get("module_input_name", "sentence_embedding") != "sentence_embedding" or config.get(
        "module_output_name"
    ) not in (None, "sentence_embedding"):
        raise UnsupportedModelError(f"{where}: a Dense module must map the sentence embedding to itself")
    activation = config.get("activation_function") or "torch.nn.modules.activation.Tanh"
    if not str(activation).startswith("torch."):
        raise UnsupportedModelError(
            f"{where}: activation {activation!r} is not a torch module (sentence-transformers would fall back to "
            "Tanh with a warning; this project refuses instead)"
        )
    return DenseLayer(
        path=path,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=str(activation),
        use_residual=bool(config.get("use_residual", False)),
    )


def dense_dimension(pipeline: Optional[ModelPipeline], hidden_size: int, pooling: str, dense: bool) -> int:
    """The dimension of the model's output: pooled (``hidden_size`` per pooling mode), then the last Dense."""
    if dense and pipeline is not None and pipeline.dense:
        return pipeline.dense[-1].out_features
    return hidden_size * len(pooling.split("+"))


def declared_dimensions(model_dir: Path) -> Optional[list[int]]:
    """The Matryoshka dimensions the model declares, ascending: ``matryoshka_dimensions`` in its
    ``config.json`` (as vLLM reads them) or in ``config_sentence_transformers.json``; None when none."""
    model_dir = Path(model_dir)
    declared = _read_json(model_dir / "config.json").get("matryoshka_dimensions")
    declared = declared or _read_json(model_dir / "config_sentence_transformers.json").get("matryoshka_dimensions")
    return sorted(int(d) for d in declared) if declared else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{path}: not valid JSON ({exc})") from None
