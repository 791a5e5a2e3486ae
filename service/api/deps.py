"""The routes' dependencies, typed: the gateway's serving objects and the caller.

CallerDep        who asks: the key KeyCheck (api/guards.py) found, or the client's address
ChatDep, CompletionsDep, ModelsDep     need the engine: 503 + Retry-After while it starts
ResponsesDep, TokenizeDep              the same (stored responses too: they are served as chat)
FilesDep, BatchesDep, FineTuningDep    answer from the moment the server listens
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.serving import (
    BatchesServing,
    Caller,
    ChatServing,
    FilesServing,
    FineTuningServing,
    Gateway,
    ModelsServing,
    ResponsesServing,
    TextCompletionServing,
    TokenizeServing,
)

__all__ = [
    "BatchesDep",
    "CallerDep",
    "ChatDep",
    "CompletionsDep",
    "FilesDep",
    "FineTuningDep",
    "GatewayDep",
    "ModelsDep",
    "ResponsesDep",
    "TokenizeDep",
    "get_batches",
    "get_caller",
    "get_chat",
    "get_completions",
    "get_files",
    "get_fine_tuning",
    "get_gateway",
    "get_models",
    "get_responses",
    "get_tokenize",
]


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_caller(request: Request) -> Caller:
    key = getattr(request.state, "api_key", None)  # set by api/guards.py's KeyCheck
    if key is not None:
        return Caller.with_key(key)
    return Caller.from_address(request.client.host if request.client else None)


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_chat(gateway: GatewayDep) -> ChatServing:
    return gateway.chat


def get_completions(gateway: GatewayDep) -> TextCompletionServing:
    return gateway.completions


def get_models(gateway: GatewayDep) -> ModelsServing:
    return gateway.models


def get_responses(gateway: GatewayDep) -> ResponsesServing:
    return gateway.responses


def get_tokenize(gateway: GatewayDep) -> TokenizeServing:
    return gateway.tokenize


def get_files(gateway: GatewayDep) -> FilesServing:
    return gateway.files


def get_batches(gateway: GatewayDep) -> BatchesServing:
    return gateway.batches


def get_fine_tuning(gateway: GatewayDep) -> FineTuningServing:
    return gateway.fine_tuning


ChatDep = Annotated[ChatServing, Depends(get_chat)]
CompletionsDep = Annotated[TextCompletionServing, Depends(get_completions)]
ModelsDep = Annotated[ModelsServing, Depends(get_models)]
ResponsesDep = Annotated[ResponsesServing, Depends(get_responses)]
TokenizeDep = Annotated[TokenizeServing, Depends(get_tokenize)]
FilesDep = Annotated[FilesServing, Depends(get_files)]
BatchesDep = Annotated[BatchesServing, Depends(get_batches)]
FineTuningDep = Annotated[FineTuningServing, Depends(get_fine_tuning)]
