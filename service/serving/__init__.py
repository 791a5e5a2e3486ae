"""The serving layer: one object per OpenAI resource, holding that resource's rules.

    gateway.py      Gateway: builds everything once (the composition root); starts and stops it
    caller.py       Caller: who asks, what their limits count, which projects' objects they see
    completions.py  ChatServing, TextCompletionServing: prepare, admit, generate, charge, format
    models.py       ModelsServing: the models a caller may list and call; fine-tuned models
    files.py        FilesServing: uploads and their checks, ownership, purpose checks
    batches.py      BatchesServing: create, list, retrieve, cancel; lines answered via completions
    fine_tuning.py  FineTuningServing: the rules of a new job, cancel, events
    responses.py    ResponsesServing: the Responses API, served as chat; stored responses
    stored_responses.py   where stored responses live: this process, or Redis
    tokenize.py     TokenizeServing: /tokenize and /detokenize, as vllm serve has them
    tools.py        tool calling: the constraint of a required or named call, calls parsed out
    protocol.py     the OpenAI request and response models (responses_protocol.py: Responses')
    formats.py      how each completion endpoint's choices, deltas and log-probs look
    errors.py       OpenAI's error object and each exception's status
    pages.py        one page of a list endpoint

HTTP (service/api) parses, calls one of these and returns; the batch and fine-tuning workers call
the same objects. Nothing here knows HTTP.
"""

from service.serving.batches import BatchesServing
from service.serving.caller import Caller
from service.serving.completions import (
    CACHE_HEADER,
    Answer,
    ChatServing,
    CompletionsServing,
    Prepared,
    StreamedAnswer,
    TextCompletionServing,
)
from service.serving.files import FilesServing
from service.serving.fine_tuning import FineTuningServing
from service.serving.gateway import Gateway, JobGenerator
from service.serving.models import ModelsServing
from service.serving.responses import PreparedResponse, ResponsesServing
from service.serving.tokenize import TokenizeServing

__all__ = [
    "CACHE_HEADER",
    "Answer",
    "BatchesServing",
    "Caller",
    "ChatServing",
    "CompletionsServing",
    "FilesServing",
    "FineTuningServing",
    "Gateway",
    "JobGenerator",
    "ModelsServing",
    "Prepared",
    "PreparedResponse",
    "ResponsesServing",
    "StreamedAnswer",
    "TextCompletionServing",
    "TokenizeServing",
]
