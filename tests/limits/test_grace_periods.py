"""The deployments give the drain its window: terminationGracePeriodSeconds (Kubernetes) and
stop_grace_period (compose) exceed POWERSERVE_DRAIN_TIMEOUT_S, with room for the engine to close."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENGINE_CLOSE_S = 15  # what the gateway needs after the drain (uvicorn's graceful timeout, engine)


def test_kubernetes_grace_period_covers_the_drain() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/config.yaml").read_text()))
    config = next(d for d in docs if d and d["metadata"]["name"] == "powerserve-gateway")
    drain = float(config["data"]["POWERSERVE_DRAIN_TIMEOUT_S"])
    gateway = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy/k8s/gateway.yaml").read_text())
        if d and d["kind"] == "Deployment"
    )
    grace = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + ENGINE_CLOSE_S


def test_compose_stop_grace_period_covers_the_drain() -> None:
    gateway = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    drain = float(gateway["environment"]["POWERSERVE_DRAIN_TIMEOUT_S"])
    assert gateway["stop_grace_period"].endswith("s")
    assert float(gateway["stop_grace_period"].removesuffix("s")) >= drain + ENGINE_CLOSE_S
