"""The HTTP API: the OpenAI protocol over the request path (service.pipeline).

Knows nothing of MCMC, vLLM or Redis."""

from service.api.app import create_app

__all__ = ["create_app"]
