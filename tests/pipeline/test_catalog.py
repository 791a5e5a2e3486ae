"""The routes a served model has, and which one a requested model id names."""

from __future__ import annotations

import pytest

from service.engines.base import DISTILLED_ADAPTER
from service.errors import ModelNotFoundError
from service.pipeline import ModelRoute, RouteKind, find_route, fine_tuned_route, model_routes


def test_plain_and_power_routes_always_distilled_only_with_an_adapter() -> None:
    assert model_routes("m", distilled=False) == (
        ModelRoute("m", RouteKind.PLAIN, "m"),
        ModelRoute("m-power", RouteKind.POWER, "m"),
    )
    with_adapter = model_routes("m", distilled=True)
    assert [route.model_id for route in with_adapter] == ["m", "m-power", "m-distilled"]
    assert with_adapter[2] == ModelRoute(
        "m-distilled", RouteKind.DISTILLED, "m", adapter=DISTILLED_ADAPTER
    )
    assert all(route.adapter is None for route in with_adapter[:2])  # the base model's


def test_a_fine_tuned_model_is_a_distilled_route_on_its_own_adapter() -> None:
    route = fine_tuned_route("ft:m:s:abc", "m")
    assert (route.kind, route.base_model, route.adapter) == (RouteKind.DISTILLED, "m", "ft:m:s:abc")
    routes = (*model_routes("m", distilled=True), route)
    assert find_route("ft:m:s:abc", routes) is route


def test_find_route_by_model_id() -> None:
    routes = model_routes("m", distilled=True)
    for route in routes:
        assert find_route(route.model_id, routes) is route


@pytest.mark.parametrize("model", ["m-distilled", "other", "m-power-power", "M"])
def test_an_unknown_model_is_not_found(model: str) -> None:
    with pytest.raises(ModelNotFoundError) as raised:
        find_route(model, model_routes("m", distilled=False))
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"
    assert f"`{model}`" in raised.value.message
