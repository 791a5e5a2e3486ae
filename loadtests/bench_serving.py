"""Serving basics on this machine, in one run (``make bench-serving``):

  - start-up: preparing the default model from its GGUF (a fresh machine's first start), and the
    service's start to a 200 on /health with the model prepared;
  - decode throughput through the API: one stream, and 8 concurrent streams;
  - the response cache: latency of cache hits (Redis) with 100 concurrent clients on loopback,
    against the same request computed uncached.

Results go to loadtests/results/bench_serving.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from service.config import DEFAULT_MODEL_NAME, Settings
from service.model_store import ensure_default_model
from tests.harness import RedisProcess, ServiceProcess

RESULTS = Path(__file__).parent / "results"
MODEL = DEFAULT_MODEL_NAME
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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
    loop. The load comes from aiohttp, whose pool costs the shared cores far less than httpx's
    (encode/httpx#3215): the figure is the gateway's, not the load generator's."""
    url = f"{base_url}/v1/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 16,
        "seed": 7,
    }

    async def post(session: aiohttp.ClientSession, payload: dict) -> tuple[float, str]:
        began = time.monotonic()
        async with session.post(url, json=payload) as response:
            response.raise_for_status()
            await response.read()
            return time.monotonic() - began, response.headers["x-powerserve-cache"]

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        uncached = [
            (await post(session, body | {"seed": 100 + i, "cache": {"no-store": True}}))[0]
            for i in range(5)
        ]
        await post(session, body)  # computed and stored
        alone = []
        for _ in range(50):
            latency, result = await post(session, body)
            assert result == "hit"
            alone.append(latency)
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        async def client_loop() -> None:
            while time.monotonic() < deadline:
                latency, result = await post(session, body)
                assert result == "hit"
                latencies.append(latency)

        await asyncio.gather(*(client_loop() for _ in range(clients)))
    return {
        "clients": clients,
        "hit_alone_p50_s": percentile(alone, 0.5),
        "hit_alone_p99_s": percentile(alone, 0.99),
        "hits": len(latencies),
        "hits_per_s": len(latencies) / seconds,
        "hit_p50_s": percentile(latencies, 0.5),
        "hit_p99_s": percentile(latencies, 0.99),
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
    print("\n".join(["| measure | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]))


if __name__ == "__main__":
    main()
