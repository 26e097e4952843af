"""The model's Dense head: the sentence-transformers ``Dense`` layers after pooling, applied in order.

LaBSE, sentence-t5/GTR and EmbeddingGemma project the pooled vector (768 -> 3072 -> 768 for
EmbeddingGemma); the vector the authors' library returns is the projection's, not the pooled one.
Each layer is ``activation(linear(x))`` (+ ``residual(x)`` or ``x`` with ``use_residual``), its weights
in the module's folder (``model.safetensors`` or ``pytorch_model.bin``, keys ``linear.weight``,
``linear.bias``, ``residual.weight``), exactly as :class:`sentence_transformers.base.modules.Dense`
computes it. Only ``torch.*`` activation modules load (no code is imported from a model directory).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import torch

from pipelines.embed.model_pipeline import DenseLayer, UnsupportedModelError

__all__ = ["DenseHead"]


def _activation(name: str) -> torch.nn.Module:
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UnsupportedModelError(f"Dense activation {name!r} cannot be imported from torch") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise UnsupportedModelError(f"Dense activation {name!r} is not a torch.nn.Module class")
    return cls()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UnsupportedModelError(f"{folder}: a Dense module without model.safetensors or pytorch_model.bin")


class _Dense(torch.nn.Module):
    def __init__(self, layer: DenseLayer, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        self.activation = _activation(layer.activation)
        self.use_residual = layer.use_residual
        self.residual = None
        if layer.use_residual and layer.in_features != layer.out_features:
            self.residual = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        missing = set(self.state_dict()) - set(weights)
        if missing:
            raise UnsupportedModelError(f"Dense module {layer.path!r}: weights {sorted(missing)} are missing")
        self.load_state_dict({k: weights[k] for k in self.state_dict()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out


class DenseHead(torch.nn.Module):
    """The Dense layers of a model directory as one module: pooled vectors in, the model's vectors out."""

    def __init__(self, model_dir: Path, layers: Sequence[DenseLayer]):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Dense(layer, _weights(Path(model_dir) / layer.path)) for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
