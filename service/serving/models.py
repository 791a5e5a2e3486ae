"""The models resource: which model ids a caller may list and call, and fine-tuned models coming
and going while the service runs.

The base model's routes (plain, power, distilled) are everyone's; a fine-tuned model belongs to the
project whose job made it and does not exist for any other (neither listed nor served).
"""

from __future__ import annotations

from pathlib import Path

from service.engines.base import Engine
from service.errors import ModelNotFoundError
from service.pipeline import CompletionService, ModelRoute, fine_tuned_route
from service.serving.caller import Caller
from service.serving.protocol import ModelCard, ModelList

__all__ = ["ModelsServing"]


class ModelsServing:
    def __init__(self, engine: Engine, pipeline: CompletionService):
        self.engine = engine
        self.pipeline = pipeline

    @property
    def base_model(self) -> str:
        return self.engine.info.model_id

    def route(self, model_id: str, caller: Caller) -> ModelRoute:
        """The route ``model_id`` names for this caller; ModelNotFoundError (404) otherwise."""
        route = self.pipeline.route(model_id)
        if not self._visible(route, caller):
            raise ModelNotFoundError(model_id)
        return route

    def list(self, caller: Caller) -> ModelList:
        routes = [route for route in self.pipeline.routes if self._visible(route, caller)]
        return ModelList(data=[self._card(route) for route in routes])

    def retrieve(self, model_id: str, caller: Caller) -> ModelCard:
        return self._card(self.route(model_id, caller))

    async def serve_fine_tuned(self, model_id: str, adapter: Path, owner: str | None) -> None:
        """Load a fine-tuning job's adapter into the engine and serve it to its owner's project."""
        await self.engine.add_adapter(model_id, adapter)
        self.pipeline.add_route(fine_tuned_route(model_id, self.base_model, owner=owner))

    def withdraw(self, model_id: str) -> None:
        """Stop serving a fine-tuned model (its job failed or was cancelled after all)."""
        self.pipeline.remove_route(model_id)

    def _card(self, route: ModelRoute) -> ModelCard:
        return ModelCard(
            id=route.model_id,
            root=route.base_model,
            route=route.kind.value,
            max_model_len=self.engine.info.max_model_len,
        )

    @staticmethod
    def _visible(route: ModelRoute, caller: Caller) -> bool:
        return route.shared or caller.sees(route.owner)
