"""Locust traffic against the gateway's OpenAI API: a weighted mix of what its clients send.

    plain      chat completion on <model>
    power      chat completion on <model>-power: small max_tokens and few MCMC steps, so that a
               request ends in seconds on a CPU (each still costs ~10-40 plain ones in tokens)
    distilled  chat completion on <model>-distilled (dropped when GET /v1/models does not list it)
    cached     seeded requests drawn from a few fixed prompts and seeds, on --cached-route: after the
               first of each, answered from the response cache (x-powerserve-cache: hit)
    stream     streamed chat completion (SSE) on --stream-route, timing the first token and the gaps
               between the next chunks

Each kind is a stats entry of its own (locust's `name`). Streamed requests count in full (until
``[DONE]``), and their time to first token is also reported as a custom event of request type TTFT.
With --samples-out, every request is written as one JSON line (kind, route, latency, TTFT, chunk gaps,
tokens, cache header, error); loadtests/run_load.py computes its summary from those lines.

Every option is a locust custom argument and an environment variable (LOAD_MODEL_ID, LOAD_MAX_TOKENS,
LOAD_WEIGHT_POWER, ...). Unset, the model is the first plain route GET /v1/models lists, so the same
file also drives a bare vLLM worker (plain and stream only). Runs in .venv-load (locust brings gevent),
from the repository root: it imports loadtests/prompts.py, the benchmarks' prompts.

    .venv-load/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 4 --spawn-rate 4 --run-time 30s --weight-power 2
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import requests
from locust import HttpUser, events, task
from locust.env import Environment

from loadtests.prompts import PROMPTS, messages

logger = logging.getLogger(__name__)

KINDS = ("plain", "power", "distilled", "cached", "stream")
ROUTE_SUFFIXES = {"plain": "", "power": "-power", "distilled": "-distilled"}


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("powerserve traffic mix")
    group.add_argument(
        "--model-id", env_var="LOAD_MODEL_ID", default="", help="base model id (unset: discovered)"
    )
    group.add_argument("--max-tokens", env_var="LOAD_MAX_TOKENS", type=int, default=16)
    group.add_argument(
        "--power-method", env_var="LOAD_POWER_METHOD", choices=["smc", "mh"], default="smc"
    )
    group.add_argument(
        "--particles", env_var="LOAD_PARTICLES", type=int, default=4, help="power method smc"
    )
    group.add_argument(
        "--mcmc-steps", env_var="LOAD_MCMC_STEPS", type=int, default=2, help="power method mh"
    )
    group.add_argument("--block-size", env_var="LOAD_BLOCK_SIZE", type=int, default=4)
    group.add_argument("--power-alpha", env_var="LOAD_POWER_ALPHA", type=float, default=4.0)
    for kind, weight in zip(KINDS, (4, 1, 1, 3, 2), strict=True):
        group.add_argument(
            f"--weight-{kind}", env_var=f"LOAD_WEIGHT_{kind.upper()}", type=float, default=weight
        )
    group.add_argument(
        "--cached-route", env_var="LOAD_CACHED_ROUTE", choices=ROUTE_SUFFIXES, default="power"
    )
    group.add_argument("--cached-keys", env_var="LOAD_CACHED_KEYS", type=int, default=4)
    group.add_argument(
        "--stream-route", env_var="LOAD_STREAM_ROUTE", choices=ROUTE_SUFFIXES, default="plain"
    )
    group.add_argument(
        "--think-time",
        env_var="LOAD_THINK_TIME",
        type=float,
        default=1.0,
        help="mean seconds a user waits between requests (uniform on [0, 2x])",
    )
    group.add_argument("--samples-out", env_var="LOAD_SAMPLES_OUT", default="", help="JSON lines file")


@dataclass
class Sample:
    """One request, as written to --samples-out."""

    kind: str
    route: str
    start: float  # unix time the request was sent
    latency_s: float = 0.0  # until the whole answer (a stream's [DONE]) arrived
    ok: bool = False
    status: int = 0
    error: str | None = None
    ttft_s: float | None = None  # streams: until the first chunk with content
    chunk_gaps_s: list[float] = field(default_factory=list)  # streams: between content chunks
    completion_tokens: int = 0  # returned to the client
    generated_tokens: int = 0  # made by the engine: power.tokens_generated on the power route
    cache: str | None = None  # x-powerserve-cache: hit, miss or bypass


@dataclass
class Mix:
    """The traffic this run sends: the route of each kind, and the kinds' weights."""

    routes: dict[str, str]
    kinds: list[str]
    weights: list[float]


MIX: Mix | None = None
SAMPLES: IO[str] | None = None


def request_body(
    options: Any, route: str, prompt: str, *, seed: int | None = None, stream: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": route,
        "messages": messages(prompt),
        "max_tokens": options.max_tokens,
    }
    if route.endswith(ROUTE_SUFFIXES["power"]):  # the gateway refuses these on other routes
        body |= {
            "power_method": options.power_method,
            "block_size": options.block_size,
            "power_alpha": options.power_alpha,
        }
        if options.power_method == "smc":
            body["power_particles"] = options.particles
        else:
            body["mcmc_steps"] = options.mcmc_steps
    if seed is not None:
        body["seed"] = seed
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def discover_routes(host: str, model: str) -> dict[str, str]:
    """Model ids by route kind, from GET /v1/models (the gateway labels each card with its route)."""
    try:
        cards = requests.get(f"{host}/v1/models", timeout=30).json()["data"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise SystemExit(f"cannot list the models of {host}: {exc!r}") from exc
    ids = {card["id"] for card in cards}
    if not model:  # a bare vLLM server labels no routes: its first model
        plain = [card for card in cards if card.get("route", "plain") == "plain"]
        model = (plain or cards)[0]["id"]
    return {kind: model + suffix for kind, suffix in ROUTE_SUFFIXES.items() if model + suffix in ids}


@events.init.add_listener
def build_mix(environment: Environment, **_: Any) -> None:
    """Before the run and its clock start: find the routes, weigh the kinds, warm the routes up."""
    global MIX, SAMPLES
    options = environment.parsed_options
    if options is None:
        return  # imported by a program that drives locust itself
    if not environment.host:
        raise SystemExit("--host is required: the gateway's base URL, e.g. http://127.0.0.1:8000")
    routes = discover_routes(environment.host.rstrip("/"), options.model_id)
    route_of = routes | {
        "cached": routes.get(options.cached_route),
        "stream": routes.get(options.stream_route),
    }
    kinds, weights = [], []
    for kind in KINDS:
        weight = getattr(options, f"weight_{kind}")
        if weight > 0 and route_of.get(kind) is None:
            logger.warning("no %s route on %s: %s requests are skipped", kind, environment.host, kind)
        elif weight > 0:
            kinds.append(kind)
            weights.append(weight)
    if not kinds:
        raise RuntimeError(f"nothing to send: no route of a weighted kind on {environment.host}")
    MIX = Mix({kind: route for kind, route in route_of.items() if route}, kinds, weights)
    warm_up(environment.host.rstrip("/"), options, {MIX.routes[kind] for kind in kinds})
    if options.samples_out:
        SAMPLES = open(options.samples_out, "a")  # noqa: SIM115 - closed on quitting
    logger.info("traffic mix %s over routes %s", dict(zip(kinds, weights, strict=True)), MIX.routes)


def warm_up(host: str, options: Any, routes: set[str]) -> None:
    """One request per route before the run, outside the stats: the first request of a fresh
    server pays one-off costs (vLLM's first forward passes, lazy imports) that are not load."""
    for route in sorted(routes):
        body = request_body(options, route, PROMPTS[0])
        try:
            requests.post(f"{host}/v1/chat/completions", json=body, timeout=600).raise_for_status()
        except requests.RequestException as exc:  # the run will count such failures; go on
            logger.warning("warm-up request to %s failed: %r", route, exc)


@events.quitting.add_listener
def close_samples(**_: Any) -> None:
    if SAMPLES is not None:
        SAMPLES.close()


class PowerserveUser(HttpUser):
    """A client of the OpenAI API: picks a kind of request by weight, sends it, thinks, repeats."""

    def wait_time(self) -> float:
        return random.uniform(0, 2 * self.environment.parsed_options.think_time)

    @task
    def request(self) -> None:
        assert MIX is not None
        kind = random.choices(MIX.kinds, MIX.weights)[0]
        sample = Sample(kind=kind, route=MIX.routes[kind], start=time.time())
        options = self.environment.parsed_options
        if kind == "cached":
            key = random.randrange(options.cached_keys)  # a few fixed (prompt, seed) pairs
            body = request_body(options, sample.route, PROMPTS[key % len(PROMPTS)], seed=key)
        else:
            body = request_body(options, sample.route, random.choice(PROMPTS), stream=kind == "stream")
        if kind == "stream":
            self.stream(body, sample)
        else:
            self.complete(body, sample)
        if SAMPLES is not None:
            SAMPLES.write(json.dumps(asdict(sample)) + "\n")
            SAMPLES.flush()

    def complete(self, body: dict, sample: Sample) -> None:
        began = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, name=sample.kind, catch_response=True
        ) as response:
            sample.latency_s = time.perf_counter() - began
            sample.status = response.status_code
            sample.cache = response.headers.get("x-powerserve-cache")
            if response.status_code != 200:
                sample.error = http_error(response)
                response.failure(sample.error)
                return
            count_tokens(sample, response.json())
            sample.ok = True

    def stream(self, body: dict, sample: Sample) -> None:
        began = time.perf_counter()
        last_content: float | None = None
        with self.client.post(
            "/v1/chat/completions", json=body, name=sample.kind, stream=True, catch_response=True
        ) as response:
            sample.status = response.status_code
            sample.cache = response.headers.get("x-powerserve-cache")
            if response.status_code != 200:
                sample.latency_s = time.perf_counter() - began
                sample.error = http_error(response)
                response.failure(sample.error)
                return
            done = False
            try:
                # chunk_size=None: each chunk as the server sends it, not once 512 bytes piled up.
                for line in response.iter_lines(chunk_size=None, decode_unicode=True):
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line.removeprefix("data: "))
                    if "error" in chunk:
                        sample.error = f"stream error: {chunk['error'].get('message')}"
                        break
                    if any(choice.get("delta", {}).get("content") for choice in chunk["choices"]):
                        now = time.perf_counter()
                        if last_content is None:
                            sample.ttft_s = now - began
                        else:
                            sample.chunk_gaps_s.append(now - last_content)
                        last_content = now
                    count_tokens(sample, chunk)
            except requests.RequestException as exc:  # the connection broke mid-stream
                sample.error = f"stream broken: {exc!r}"
            sample.latency_s = time.perf_counter() - began
            # Locust timed the response headers; count the whole stream instead.
            response.request_meta["response_time"] = sample.latency_s * 1000
            if sample.error is None and not done:
                sample.error = "stream ended without [DONE]"
            if sample.error is not None:
                response.failure(sample.error)
                return
            sample.ok = True
        if sample.ttft_s is not None:
            self.environment.events.request.fire(
                request_type="TTFT",
                name=sample.kind,
                response_time=sample.ttft_s * 1000,
                response_length=0,
                exception=None,
                context={},
            )


def http_error(response: Any) -> str:
    """What went wrong with a non-200 answer (status 0: locust caught a connection error)."""
    detail = response.text[:200] if response.text else repr(getattr(response, "error", None))
    return f"HTTP {response.status_code}: {detail}"


def count_tokens(sample: Sample, body: dict) -> None:
    """Tokens from a response's (or the last stream chunk's) usage and power report."""
    if usage := body.get("usage"):
        sample.completion_tokens = usage["completion_tokens"]
        sample.generated_tokens = usage["completion_tokens"]
    if power := body.get("power"):
        sample.generated_tokens = power["tokens_generated"]
