"""The query service's Serve application: ``serve run infra/serve/search.yaml``.

    serve run infra/serve/search.yaml                                  # the config file's table
    serve run jobs.serve:app uri=out/lancedb table=wiki                # or name it here
    curl -s localhost:8000/search -d '{"query": "how do vaccines work", "k": 5}'
    # with auth_token_env=EMBEDPIPE_SERVICE_TOKEN (the variable set where the replicas run):
    curl -s localhost:8000/search -H "Authorization: Bearer $EMBEDPIPE_SERVICE_TOKEN" -d '{"query": "..."}'

``app`` is Serve's application builder: its arguments are :class:`pipelines.config.ServiceConfig`'s
keys, checked before any replica starts (an unknown key or bad value fails ``serve run`` with the
key named). The token itself is never an argument: they are shown on Serve's dashboard; a replica
reads it from the variable or file they name when it starts. Replicas, CPUs/GPUs per replica and
autoscaling are the deployment's settings in the config file; the config file binds 127.0.0.1
(docs/serving.md says how to expose it). What the service answers: :mod:`pipelines.search.service`.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from pipelines.config import ServiceConfig


def app(args: dict[str, Any]) -> Application:
    """The ``TableSearch`` deployment bound to a validated :class:`ServiceConfig`."""
    from pipelines.search.service import TableSearch

    return TableSearch.bind(ServiceConfig.load(args).model_dump())
