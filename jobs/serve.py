"""The query service's Serve application: ``serve run infra/serve/search.yaml``.

    serve run infra/serve/search.yaml                                  # the config file's table
    serve run jobs.serve:app uri=out/lancedb table=wiki                # or name it here
    curl -s localhost:8000/search -d '{"query": "how do vaccines work", "k": 5}'

``app`` is Serve's application builder: its arguments are :class:`pipelines.config.ServiceConfig`'s
keys, checked before any replica starts (an unknown key or bad value fails ``serve run`` with the
key named). Replicas, CPUs/GPUs per replica and autoscaling are the deployment's settings in the
config file. What the service answers: :mod:`pipelines.search.service`.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from pipelines.config import ServiceConfig


def app(args: dict[str, Any]) -> Application:
    """The ``TableSearch`` deployment bound to a validated :class:`ServiceConfig`."""
    from pipelines.search.service import TableSearch

    return TableSearch.bind(ServiceConfig.load(args).model_dump())
