"""Serving basics on this machine, in one run (``make bench-serving``):

  - start-up: preparing the default model from its GGUF (a fresh machine's first start), and the
    service's start to a 200 on /health with the model prepared;
  - decode throughput through the API: one stream, and 8 concurrent streams;
  - the response cache: latency of cache hits (Redis) with 100 concurrent clients on loopback,
    against the same request computed uncached.

Results go to loadtests/results/bench_serving.json and a Markdown table on stdout.

    make bench-serving
    python -m loadtests.bench_serving [--max-tokens 128 --clients 100 --seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.client import Lanes
from loadtests.harness import RedisProcess, ServiceProcess
from loadtests.load_report import RESULTS, measure_table, percentile
from service.config import DEFAULT_MODEL_NAME, Settings
from service.model_store import ensure_default_model

MODEL = DEFAULT_MODEL_NAME
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def p(values: list[float], rank: int) -> float:
    return percentile(values, rank, method="nearest")


async def decode_rate(client: httpx.AsyncClient, streams: int, max_tokens: int) -> float:
    """Generated tokens/s over ``streams`` concurrent chat requests."""

    async def one(i: int) -> int:
        body = {"model": MODEL, "messages": STORY, "max_tokens": max_tokens, "seed": 1000 + i,
                "cache": {"no-cache": True, "no-store": True}}  # fmt: skip
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    began = time.monotonic()
    tokens = await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(tokens) / (time.monotonic() - began)


async def cache_latency(base_url: str, clients: int, seconds: float) -> dict:
    """Seeded chat requests answered from the cache: one client alone, then ``clients`` in a closed
    loop. The load comes from httpx lanes (a client of one connection per loop, loadtests/client.py),
    not from one shared pool, whose cost on the shared cores grows with the clients
    (encode/httpx#3215): the figure is the gateway's, not the load generator's."""
    url = f"{base_url}/v1/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 16,
        "seed": 7,
    }

    async def post(lanes: Lanes, payload: dict) -> tuple[float, str]:
        began = time.monotonic()
        response = await lanes.post(url, json=payload)
        response.raise_for_status()
        return time.monotonic() - began, response.headers["x-powerserve-cache"]

    async with Lanes(timeout=300) as lanes:
        uncached = [
            (await post(lanes, body | {"seed": 100 + i, "cache": {"no-store": True}}))[0]
            for i in range(5)
        ]
        await post(lanes, body)  # computed and stored
        alone = []
        for _ in range(50):
            latency, result = await post(lanes, body)
            assert result == "hit"
            alone.append(latency)
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        async def client_loop() -> None:
            while time.monotonic() < deadline:
                latency, result = await post(lanes, body)
                assert result == "hit"
                latencies.append(latency)

        await asyncio.gather(*(client_loop() for _ in range(clients)))
    return {
        "clients": clients,
        "hit_alone_p50_s": p(alone, 50),
        "hit_alone_p99_s": p(alone, 99),
        "hits": len(latencies),
        "hits_per_s": len(latencies) / seconds,
        "hit_p50_s": p(latencies, 50),
        "hit_p99_s": p(latencies, 99),
        "uncached_median_s": statistics.median(uncached),
    }


async def service_phase(service: ServiceProcess, args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=service.url, timeout=600, limits=limits) as client:
        await decode_rate(client, 1, 8)  # warm-up
        return {
            "decode_tokens_per_s_1_stream": await decode_rate(client, 1, args.max_tokens),
            "decode_tokens_per_s_8_streams": await decode_rate(client, 8, args.max_tokens),
            "cache": await cache_latency(service.url, args.clients, args.seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serving.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)

    # A fresh machine's first start: the model is converted from its GGUF once.
    with tempfile.TemporaryDirectory() as fresh:
        began = time.monotonic()
        ensure_default_model(Path(fresh))
        prepare_s = time.monotonic() - began
    model_dir = ensure_default_model(Settings().cache_dir)

    redis = RedisProcess().start()
    try:
        began = time.monotonic()
        args_ = ["--model", str(model_dir), "--model-name", MODEL]
        service = ServiceProcess(args_, RESULTS / "bench_serving.log", env={"REDIS_URL": redis.url})
        try:
            service.wait_ready()
            startup_s = time.monotonic() - began
            measured = asyncio.run(service_phase(service, args))
        finally:
            service.stop()
    finally:
        redis.stop()

    report = {"prepare_model_s": prepare_s, "startup_to_healthy_s": startup_s} | measured
    args.out.write_text(json.dumps(report, indent=2))
    cache = report["cache"]
    rows = [
        (
            "first start on a fresh machine: default model prepared from its GGUF",
            f"{prepare_s:.0f} s (once)",
        ),
        ("start-up to /health 200, model prepared", f"{startup_s:.0f} s"),
        ("decode, 1 stream", f"{report['decode_tokens_per_s_1_stream']:.1f} tokens/s"),
        ("decode, 8 concurrent streams", f"{report['decode_tokens_per_s_8_streams']:.1f} tokens/s"),
        (
            "cache hit (Redis), one client: p50 / p99",
            f"{cache['hit_alone_p50_s'] * 1000:.1f} ms / {cache['hit_alone_p99_s'] * 1000:.1f} ms",
        ),
        (
            f"cache hit (Redis), {cache['clients']} concurrent clients: p50 / p99",
            f"{cache['hit_p50_s'] * 1000:.0f} ms / {cache['hit_p99_s'] * 1000:.0f} ms "
            f"({cache['hits_per_s']:.0f} hits/s)",
        ),
        ("same request uncached (median)", f"{cache['uncached_median_s'] * 1000:.0f} ms"),
    ]
    print(measure_table(rows))


if __name__ == "__main__":
    main()
