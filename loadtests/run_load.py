"""Load test of the gateway with locust: a bounded run of the traffic mix of loadtests/locustfile.py,
summarised per kind of request (plain, power, distilled, cached, stream) into <out>.json and <out>.png
(the format of loadtests/load_report.py), and printed as a table. When it started the service, it
also draws <out>.time.png: each kind's latency per window of the run, and the gateway's and its
engine core's resident memory sampled every few seconds (what a soak is for: growth over time).

Against a running gateway (`make serve`, `make stack`), or against a service it starts for the run
(the tiny test model, a model directory, or the embedded default) and stops afterwards:

    make load [URL=http://127.0.0.1:8000] [LOAD_ARGS="--users 8 --seconds 60"]
    python -m loadtests.run_load --url http://127.0.0.1:8000 --users 8 --seconds 60 \\
        --out loadtests/results/load
    python -m loadtests.run_load --tiny --users 2 --seconds 10           # smoke test, tiny model
    python -m loadtests.run_load --model DIR [--distilled-adapter DIR]   # neither: the default model

Options it does not know go to the locustfile: --weight-power 3, --max-tokens 32, --power-method mh,
--cached-route plain, --model-id ID, ... (see loadtests/locustfile.py). Locust runs from .venv-load,
a virtual environment of its own (loadtests/requirements-load.txt): it brings gevent, which vLLM's
must not see. Beside <out>.json and <out>.png it leaves <out>.samples.jsonl (every request), locust's
own <out>_stats.csv and, when it started the service, <out>.service.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.harness import ServiceProcess
from loadtests.load_report import (
    RESULTS,
    RouteSummary,
    output_path,
    percentiles,
    table,
    write_report,
)

__all__ = [
    "LOAD_VENV",
    "OFFLINE_ENV",
    "ROOT",
    "ServedModel",
    "add_service_arguments",
    "load_tool",
    "served_model",
    "summarise",
    "timeline",
]

ROOT = Path(__file__).resolve().parent.parent
LOAD_VENV = ROOT / ".venv-load"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
TINY_MODEL = ROOT / "runs" / "load" / "lt-tiny"
# Nothing may come from a model hub; vLLM stays on loopback and reports nothing home.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def load_tool(name: str) -> Path:
    """A command of .venv-load, with the way to make it when it is missing."""
    path = LOAD_VENV / "bin" / name
    if not path.exists():
        raise SystemExit(
            f"{path} is missing; create the load-test environment first:\n"
            f"  python3.11 -m venv {LOAD_VENV} && "
            f"{LOAD_VENV}/bin/pip install -r loadtests/requirements-load.txt"
        )
    return path


@dataclass
class ServedModel:
    """What a service started here serves: the model directory, its id and the serve flags."""

    directory: Path
    model_id: str
    arguments: list[str]


def served_model(args: argparse.Namespace) -> ServedModel:
    """--tiny, --model DIR, or the embedded default model."""
    if args.tiny:
        if not (TINY_MODEL / "config.json").exists():
            from loadtests.tiny_model import build_tiny_model

            build_tiny_model(TINY_MODEL, seed=1, weight_scale=20.0)
        # A 4-token vocabulary and a 64-token context: starts in seconds, answers in milliseconds.
        flags = ["--max-model-len", "64", "--kv-cache-gib", "1"]
        return ServedModel(TINY_MODEL, TINY_MODEL.name, ["--model", str(TINY_MODEL), *flags])
    if args.model:
        return ServedModel(args.model, args.model.name, ["--model", str(args.model)])
    from service.config import DEFAULT_MODEL_NAME, Settings
    from service.model_store import ensure_default_model

    # No flags: the service serves its default exactly as `make serve` does, shipped adapter included.
    return ServedModel(ensure_default_model(Settings().cache_dir), DEFAULT_MODEL_NAME, [])


def add_service_arguments(parser: argparse.ArgumentParser) -> Any:
    """The flags that pick the model of a service started here (shared with guidellm_sweep)."""
    group = parser.add_argument_group("service started here (when no URL is given)")
    group.add_argument("--tiny", action="store_true", help="the tiny test model (a smoke test)")
    group.add_argument("--model", type=Path, default=None, help="a model directory")
    return group


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the rest: the locustfile's (no abbreviations, so none is taken)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--url", default=None, help="a running gateway (unset: start one here)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started a second (all)")
    parser.add_argument("--seconds", type=int, default=60, help="how long locust sends requests")
    parser.add_argument(
        "--stop-timeout", type=int, default=60, help="seconds in-flight requests get to finish"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "load", help="prefix of the results")
    service = add_service_arguments(parser)
    service.add_argument("--distilled-adapter", type=Path, default=None, help="serve <model>-distilled")
    return parser.parse_known_args()


def run_locust(args: argparse.Namespace, url: str, samples: Path, locust_args: list[str]) -> None:
    command = [
        str(load_tool("locust")),
        "--locustfile", str(LOCUSTFILE),
        "--headless",
        "--host", url,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate or args.users),
        "--run-time", f"{args.seconds}s",
        "--stop-timeout", str(args.stop_timeout),
        "--only-summary",
        "--csv", str(args.out),
        "--exit-code-on-error", "0",  # failed requests are results, counted in the summary
        "--samples-out", str(samples),
        *locust_args,
    ]  # fmt: skip
    # The locustfile imports loadtests.prompts: the repository must be importable from any cwd.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    # Bounded whatever happens: the run, the drain, and a minute for start-up and reports.
    subprocess.run(
        command,
        check=True,
        timeout=args.seconds + args.stop_timeout + 60,
        env=os.environ | {"PYTHONPATH": path},
    )


def summarise(samples: list[dict[str, Any]]) -> tuple[float, dict[str, RouteSummary]]:
    """One summary per kind of request. Rates are over the whole run's window (first request sent
    to last answer received), so that the kinds' rates add up to the run's."""
    began = min(s["start"] for s in samples)
    window = max(s["start"] + s["latency_s"] for s in samples) - began
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        by_kind[sample["kind"]].append(sample)
    routes = {}
    for kind, group in sorted(by_kind.items()):
        ok = [s for s in group if s["ok"]]
        streams = [s for s in ok if s["ttft_s"] is not None]
        # A cache hit carries the original answer's power report, but the engine made nothing.
        generated = sum(s["generated_tokens"] for s in ok if s["cache"] != "hit")
        routes[f"{kind} ({group[0]['route']})"] = RouteSummary(
            requests=len(ok),
            errors=len(group) - len(ok),
            latency_s=percentiles([s["latency_s"] for s in ok], 50, 95, 99),
            ttft_s=percentiles([s["ttft_s"] for s in streams], 50, 95),
            itl_s=percentiles([gap for s in streams for gap in s["chunk_gaps_s"]], 50, 95),
            requests_per_s=len(ok) / window,
            generated_tokens_per_s=generated / window,
            completion_tokens_per_s=sum(s["completion_tokens"] for s in ok) / window,
            cache_hits=sum(s["cache"] == "hit" for s in ok),
        )
    return window, routes


@contextmanager
def sampled_memory(service: ServiceProcess, every_s: float) -> Iterator[list[dict[str, float]]]:
    """The gateway's and its children's resident memory, sampled every ``every_s`` seconds (wall
    clock, ``time`` in seconds since the epoch) while the block runs."""
    points: list[dict[str, float]] = []
    done = threading.Event()

    def sample() -> None:
        while True:
            points.append(
                {
                    "time": time.time(),
                    "gateway_mib": service.rss_mib(),
                    "engine_mib": service.children_rss_mib(),
                }
            )
            if done.wait(every_s):
                return

    thread = threading.Thread(target=sample, name="memory-sampler", daemon=True)
    thread.start()
    try:
        yield points
    finally:
        done.set()
        thread.join(timeout=10)


def timeline(
    samples: list[dict[str, Any]], memory: list[dict[str, float]], window_s: float
) -> dict[str, Any]:
    """Latency p50/p95 per kind in windows of the run (by when each request ended), and the memory
    samples, on one clock: seconds since the first request."""
    began = min(s["start"] for s in samples)
    windows: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s["ok"]:
            ended = s["start"] + s["latency_s"] - began
            windows[s["kind"]][int(ended // window_s)].append(s["latency_s"])
    latency = {
        kind: [
            {"t_s": (index + 0.5) * window_s, "requests": len(values)}
            | (percentiles(values, 50, 95) or {})
            for index, values in sorted(by_window.items())
        ]
        for kind, by_window in sorted(windows.items())
    }
    points = [
        {"t_s": p["time"] - began, "gateway_mib": p["gateway_mib"], "engine_mib": p["engine_mib"]}
        for p in memory
    ]
    return {"window_s": window_s, "latency": latency, "memory": points}


def main() -> None:
    args, locust_args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    samples_path = output_path(args.out, ".samples.jsonl")
    samples_path.unlink(missing_ok=True)
    service: ServiceProcess | None = None
    flags: list[str] = []
    if args.url is None:
        flags = served_model(args).arguments
        if args.distilled_adapter:
            flags += ["--distilled-adapter", str(args.distilled_adapter)]
        service = ServiceProcess(flags, output_path(args.out, ".service.log"), env=OFFLINE_ENV)
    memory: dict[str, float] = {}
    memory_points: list[dict[str, float]] = []
    try:
        url = service.wait_ready().url if service else args.url.rstrip("/")
        if service:
            memory["gateway_rss_mib_before"] = service.rss_mib()
            with sampled_memory(service, every_s=max(1.0, args.seconds / 200)) as memory_points:
                run_locust(args, url, samples_path, locust_args)
        else:
            run_locust(args, url, samples_path, locust_args)
        if service:
            memory["gateway_rss_mib_after"] = service.rss_mib()
            print(
                f"gateway RSS: {memory['gateway_rss_mib_before']:.0f} MiB before the run, "
                f"{memory['gateway_rss_mib_after']:.0f} MiB after",
                flush=True,
            )
    finally:
        if service:
            service.stop()
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line]
    if not samples:
        raise SystemExit(f"locust sent no request to {url}; see its output above")
    window, routes = summarise(samples)
    settings = {
        "url": url,
        "users": args.users,
        "seconds": args.seconds,
        "locust_args": locust_args,
        "service_flags": flags,  # of the service started here; none against --url
        **memory,  # the gateway process's resident memory, when it was started here
    }
    title = f"locust: {args.users} users, {args.seconds} s against {url}"
    report = {"tool": "locust", "title": title, "settings": settings, "window_s": window}
    if memory_points:
        report["timeline"] = timeline(samples, memory_points, window_s=max(5.0, args.seconds / 20))
    path = write_report(args.out, report, routes)
    print(table(routes))
    print(f"\n{path}, {output_path(args.out, '.png')}")


if __name__ == "__main__":
    main()
