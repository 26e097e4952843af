"""Object storage settings: config + AWS conventions -> clients for fsspec, pyarrow and Lance.

The reasoning behind it: docs/design.md, section connectors/storage.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from connectors.errors import UserError

__all__ = ["Storage", "StorageError", "is_s3", "redact_environment", "redact_url", "split_s3"]

_STATIC_CREDENTIAL_PROVIDERS = ("env", "shared-credentials-file", "config-file", "boto-config")
_TRUE = ("1", "true", "yes", "on")
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
RETRY_TIMEOUT_S = 300  # object_store: give up retrying one request after this long
PROBE_ATTEMPTS = 2  # the up-front reachability check (see Storage.probe)


class StorageError(UserError):
    """Object storage that cannot be used as configured; the message names the key, bucket or path."""


def is_s3(path: Optional[str]) -> bool:
    return bool(path) and str(path).startswith("s3://")


def split_s3(path: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, key = path[len("s3://") :].partition("/")
    return bucket, key


def _env_flag(env: Mapping[str, str], name: str) -> Optional[bool]:
    value = env.get(name)
    return None if value is None or value == "" else value.strip().lower() in _TRUE


def _static_credentials() -> Optional[tuple[str, str, Optional[str]]]:
    """Keys from the environment or the profile files, or None (then each node resolves its own)."""
    import botocore.exceptions
    import botocore.session

    session = botocore.session.Session()  # reads AWS_PROFILE, AWS_CONFIG_FILE, ... itself
    profile = os.environ.get("AWS_PROFILE")
    try:
        resolver = session.get_component("credential_provider")
        for provider in list(resolver.providers):
            if provider.METHOD not in _STATIC_CREDENTIAL_PROVIDERS:
                resolver.remove(provider.METHOD)
        creds = resolver.load_credentials()
    except botocore.exceptions.ProfileNotFound:
        raise StorageError(f"AWS_PROFILE={profile}: no such profile in the AWS config files") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"AWS credentials cannot be read: {exc}") from None
    if creds is None:
        return None
    frozen = creds.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def _profile_region() -> Optional[str]:
    import botocore.session

    session = botocore.session.Session()
    try:
        return session.get_config_variable("region")
    except Exception:  # a broken profile is reported by the credential lookup  # noqa: BLE001
        return None


@lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    from pyarrow.fs import resolve_s3_region

    try:
        return resolve_s3_region(bucket)
    except OSError:
        return "us-east-1"  # the clients then report the real problem (no bucket, no access)


@dataclass(frozen=True)
class Storage:
    """Resolved object-storage settings; hashable and picklable, credentials hidden from ``repr``.

    Build it with :meth:`resolve`; ask it for an fsspec filesystem (:meth:`fsspec`), a pyarrow one
    (:meth:`arrow`) or Lance ``storage_options`` (:meth:`lance_options`) for a path. A problem with
    the settings (``problem``) is raised only when an ``s3://`` path is used, so a stray variable
    never breaks a job that reads and writes local files.
    """

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    allow_http: bool = False
    max_attempts: int = 10
    model_cache: Optional[str] = None
    access_key: Optional[str] = field(default=None, repr=False)
    secret_key: Optional[str] = field(default=None, repr=False)
    session_token: Optional[str] = field(default=None, repr=False)
    problem: Optional[str] = None
    endpoint_key: str = "storage.endpoint_url"  # where the endpoint came from, for messages

    @classmethod
    def resolve(cls, config: Any = None, paths: Optional[Sequence[Optional[str]]] = None) -> "Storage":
        """Settings from a ``storage`` config section (or None) and the environment.

        With ``paths`` of which none is ``s3://`` nothing is looked up: a local job carries no
        credentials it does not need.

        A plain-HTTP endpoint without allow_http, a malformed endpoint or an unknown AWS_PROFILE is
        recorded in ``problem`` and raised as :class:`StorageError` when an ``s3://`` path is used.
        """
        if paths is not None and not any(is_s3(p) for p in paths):
            return cls(max_attempts=getattr(config, "max_attempts", None) or cls.max_attempts)
        env = os.environ
        endpoint = getattr(config, "endpoint_url", None)
        endpoint_key = "storage.endpoint_url"
        if not endpoint:
            for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
                if env.get(name):
                    endpoint, endpoint_key = env[name].rstrip("/"), name
                    break
        allow_http = getattr(config, "allow_http", None)
        if allow_http is None:
            allow_http = bool(_env_flag(env, "AWS_ALLOW_HTTP"))
        problem = None
        if endpoint and "@" in endpoint:
            problem = (
                f"{endpoint_key}={redact_url(endpoint)}: credentials in the endpoint URL are not supported; "
                "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile"
            )
        elif endpoint and not re.match(r"^https?://[^/\s]+/?$", endpoint):
            problem = f"{endpoint_key}={endpoint}: expected http(s)://host[:port]"
        elif endpoint and endpoint.startswith("http://") and not allow_http:
            problem = (
                f"{endpoint_key}={endpoint} is plain HTTP: set storage.allow_http=true "
                "or AWS_ALLOW_HTTP=true to allow it"
            )
        region = (
            getattr(config, "region", None)
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or _profile_region()
        )
        try:
            creds = _static_credentials()
        except StorageError as exc:
            creds, problem = None, problem or str(exc)
        key, secret, token = creds if creds else (None, None, None)
        return cls(
            endpoint_url=endpoint,
            region=region,
            allow_http=allow_http,
            max_attempts=getattr(config, "max_attempts", None) or cls.max_attempts,
            model_cache=getattr(config, "model_cache", None) or env.get("EMBEDPIPE_MODEL_CACHE"),
            access_key=key,
            secret_key=secret,
            session_token=token,
            problem=problem,
            endpoint_key=endpoint_key,
        )

    # --- per-client views -------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`StorageError` when the settings cannot work (see :meth:`resolve`)."""
        if self.problem:
            raise StorageError(self.problem)

    def _region_for(self, bucket: str) -> Optional[str]:
        if self.region or self.endpoint_url:
            return self.region or "us-east-1"
        return _bucket_region(bucket)

    def fsspec(self, path: str, attempts: Optional[int] = None):
        """``(filesystem, path_without_protocol)`` for a local path, glob or ``s3://`` URL.

        ``attempts`` caps the attempts per request below ``max_attempts`` (checks that must fail fast).
        """
        import fsspec

        if not is_s3(path):
            return fsspec.core.url_to_fs(path)
        self.check()
        import s3fs

        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        fs = s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            token=self.session_token,
            client_kwargs=client_kwargs,
            config_kwargs={
                "retries": {"max_attempts": attempts or self.max_attempts, "mode": "standard"},
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
            },
            skip_instance_cache=True,  # listings must see objects written since the last run
        )
        fs.retries = 1 if attempts else 3  # s3fs's own loop around botocore's, which already backs off on 5xx
        return fs, fs._strip_protocol(path)

    def arrow(self, path: str):
        """A pyarrow ``S3FileSystem`` for an ``s3://`` path (paths are then ``bucket/key``)."""
        from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

        self.check()
        bucket, _ = split_s3(path)
        kwargs: dict[str, Any] = dict(
            region=self._region_for(bucket),
            retry_strategy=AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
            connect_timeout=CONNECT_TIMEOUT_S,
            request_timeout=READ_TIMEOUT_S,
        )
        if self.access_key:
            kwargs.update(access_key=self.access_key, secret_key=self.secret_key, session_token=self.session_token)
        if self.endpoint_url:
            scheme, _, host = self.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host, scheme=scheme)
        return S3FileSystem(**kwargs)

    def lance_options(self, uri: str) -> Optional[dict[str, str]]:
        """LanceDB/Lance ``storage_options`` for ``uri``; None for a local path."""
        if not is_s3(uri):
            return None
        self.check()
        bucket, _ = split_s3(uri)
        opts = {
            "aws_region": self._region_for(bucket),
            "client_max_retries": str(self.max_attempts),
            "client_retry_timeout": str(RETRY_TIMEOUT_S),
            "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
            "timeout": f"{READ_TIMEOUT_S}s",
        }
        if self.endpoint_url:
            opts["aws_endpoint"] = self.endpoint_url
        if self.allow_http:
            opts["allow_http"] = "true"
        if self.access_key:
            opts["aws_access_key_id"] = self.access_key
            opts["aws_secret_access_key"] = self.secret_key
            if self.session_token:
                opts["aws_session_token"] = self.session_token
        return opts

    def model_cache_dir(self) -> Path:
        """Local directory (on each node) for models downloaded from ``s3://``."""
        return Path(self.model_cache or Path.home() / ".cache" / "embedpipe" / "models").expanduser()

    # --- checks and messages ----------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with this storage's credentials masked."""
        for secret in (self.secret_key, self.session_token, self.access_key):
            if secret:
                text = text.replace(secret, "***")
        return redact_url(text)

    def explain(self, exc: BaseException) -> str:
        """A one-line reason for a storage exception: the S3 error code and message, no credentials."""
        code = message = None
        seen = exc
        while seen is not None:
            response = getattr(seen, "response", None)
            if isinstance(response, dict) and "Error" in response:
                code = response["Error"].get("Code")
                message = response["Error"].get("Message")
                break
            seen = seen.__cause__ or seen.__context__
        if code is None:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return self.redact(text)
        hint = ""
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
            hint = (
                "; the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE or the instance role"
            )
        return self.redact(f"{code}: {message or ''}".rstrip(": ") + hint)

    def probe(self, path: str, what: str) -> bool:
        """Check an ``s3://`` prefix is reachable; True when at least one object lies under it.

        One ``ListObjectsV2`` call (MaxKeys=1) tells a missing bucket, refused credentials and an
        empty prefix apart, before any work starts.

        Raises:
            StorageError: naming ``what`` (the config key), the bucket and the reason.
        """
        import botocore.exceptions

        # Few attempts: a wrong endpoint is a config error to report in seconds, not after the
        # backoff of every retry (the work's own requests keep max_attempts).
        fs, _ = self.fsspec(path, attempts=PROBE_ATTEMPTS)
        bucket, key = split_s3(path)
        prefix = re.split(r"[*?\[]", key, maxsplit=1)[0]
        if not bucket:
            raise StorageError(f"{what}={path}: no bucket in the URL")
        try:
            listing = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except FileNotFoundError as exc:
            if "NoSuchBucket" in self.explain(exc) or "bucket" in str(exc).lower():
                raise StorageError(f"{what}={path}: bucket {bucket!r} does not exist ({self._where()})") from None
            raise StorageError(f"{what}={path}: {self.explain(exc)}") from None
        except PermissionError as exc:
            raise StorageError(f"{what}={path}: access to bucket {bucket!r} denied ({self.explain(exc)})") from None
        except (OSError, botocore.exceptions.ConnectionError) as exc:
            raise StorageError(
                f"{what}={path}: cannot reach the store at {self._where()} ({self.explain(exc)})"
            ) from None
        return bool(listing.get("KeyCount") or listing.get("Contents"))

    def _where(self) -> str:
        return f"{self.endpoint_key}={redact_url(self.endpoint_url)}" if self.endpoint_url else "AWS S3"


def redact_environment(text: str, env: Optional[Mapping[str, str]] = None) -> str:
    """``text`` with the values of the AWS credential variables and any URL's user info masked."""
    env = os.environ if env is None else env
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return redact_url(text)


_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact_url(text: Optional[str]) -> Optional[str]:
    """``text`` with the user info of every URL in it (``http://user:secret@host``) masked."""
    return _USERINFO.sub(r"\1***@", text) if text else text
