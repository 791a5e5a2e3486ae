"""The request path: one completion request from its route to the engine and back.

catalog.py   which route a model id names (plain, power, distilled)
resolve.py   step 1: defaults, checks and budget
caching.py   step 2: the response cache's policy, lookups and replays
execute.py   step 3: the choices on the engine
service.py   the steps in order (CompletionService); step 4, recording, is service.metrics.record
"""

from service.pipeline.caching import CacheControl, CachePolicy, ResultCache, replay
from service.pipeline.catalog import (
    ModelRoute,
    RouteKind,
    find_route,
    fine_tuned_route,
    model_routes,
)
from service.pipeline.execute import ChoiceGenerator
from service.pipeline.resolve import POWER_FIELDS, ResolvedRequest, resolve
from service.pipeline.service import AnswerStream, CompletionService, StreamEvent

__all__ = [
    "POWER_FIELDS",
    "AnswerStream",
    "CacheControl",
    "CachePolicy",
    "ChoiceGenerator",
    "CompletionService",
    "ModelRoute",
    "ResolvedRequest",
    "ResultCache",
    "RouteKind",
    "StreamEvent",
    "find_route",
    "fine_tuned_route",
    "model_routes",
    "replay",
    "resolve",
]
