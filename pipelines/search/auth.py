"""Who may ask the query service: the bearer token /search and /stats require, read from where the
config names it, and the 401 a request without it gets."""

import hmac
import os
from pathlib import Path
from typing import Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from connectors.errors import UserError
from pipelines.config import ServiceConfig


def bearer_token(config: ServiceConfig) -> Optional[str]:
    """The token /search and /stats require, from the variable or file the config names (never from
    the config: it is in git and on Serve's dashboard). Named but missing or empty: the replica does
    not start, rather than serve open."""
    if config.auth_token_env:
        where, token = f"environment variable {config.auth_token_env}", os.environ.get(config.auth_token_env, "")
    elif config.auth_token_file:
        where = f"auth_token_file {config.auth_token_file}"
        try:
            token = Path(config.auth_token_file).read_text()
        except OSError as exc:
            raise UserError(f"cannot read {where}: {exc.strerror}") from None
    else:
        return None
    if not token.strip():
        raise UserError(f"{where} is empty or not set on this node: the service would answer without a token")
    return token.strip()


def unauthorised(request: Request, token: Optional[str]) -> Optional[JSONResponse]:
    """401 with a ``WWW-Authenticate`` challenge unless the request carries ``Bearer <token>``
    (compared in constant time); None when it does or no token is configured."""
    if token is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    challenge = 'Bearer realm="embedpipe"' + (', error="invalid_token"' if given else "")
    reason = "wrong bearer token" if given else 'missing "Authorization: Bearer <token>" header'
    return JSONResponse({"error": reason}, status_code=401, headers={"WWW-Authenticate": challenge})
