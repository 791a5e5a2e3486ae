"""The gateway's overhead, measured with guidellm: the same benchmark against a vLLM worker directly
and through the gateway in front of it, summarised per target and rate into <out>.json and <out>.png
(the format of loadtests/load_report.py), with the gateway's added latency per comparable rate.

Without URLs it starts one worker (`powerserve worker`, a stock vLLM OpenAI server) and a gateway in
remote mode over it, so that the gateway's hop is the only difference between the two targets:

    make load-sweep [SWEEP_ARGS="--tiny --seconds 5 --sweep-size 3"]
    python -m loadtests.guidellm_sweep --tiny --seconds 5 --sweep-size 3      # smoke test, ~3 min
    python -m loadtests.guidellm_sweep --model DIR                            # neither: the default
    python -m loadtests.guidellm_sweep --gateway http://127.0.0.1:8000 --worker http://127.0.0.1:8001

With URLs nothing starts, and --tiny, --model DIR or neither (the embedded default) only name the
model: its id, and the directory guidellm reads the tokenizer from. Against `make stack` the gateway
spreads over all its workers; start it with `--workers 1` to compare like with like.

The plain route is the model id on both (the gateway's <model>, the worker's served name). guidellm
runs offline from .venv-load: synthetic prompts, the tokenizer read from the local model directory
(HF_HUB_OFFLINE=1), outputs capped by max_tokens (no `ignore_eos`, which the gateway does not take).
Rate types: sweep (synchronous, throughput, then constant rates between: each target's own, so only
the first two compare), constant or concurrent with --rates (the same on both), synchronous,
throughput. Every benchmark stops after --seconds or --max-requests. Beside <out>.json and <out>.png:
guidellm's own reports and logs, <out>.<target>.guidellm.{json,log}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import httpx

from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS, RouteSummary, output_path, table, write_report
from loadtests.run_load import OFFLINE_ENV, add_service_arguments, load_tool, served_model

__all__ = ["overhead", "strategy_label", "summarise", "summarise_benchmark"]

TARGETS = ("worker", "gateway")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateway", default=None, help="a running gateway (with --worker)")
    parser.add_argument("--worker", default=None, help="the vLLM worker behind it")
    parser.add_argument("--model-id", default=None, help="default: the model directory's name")
    add_service_arguments(parser)
    parser.add_argument(
        "--rate-type",
        choices=("sweep", "constant", "concurrent", "synchronous", "throughput"),
        default="sweep",
    )
    parser.add_argument("--rates", default="1", help="constant: requests/s; concurrent: streams")
    parser.add_argument("--sweep-size", type=int, default=4, help="benchmarks of a sweep (>= 2)")
    parser.add_argument("--max-concurrency", type=int, default=8, help="of throughput and rates")
    parser.add_argument("--seconds", type=float, default=15, help="per benchmark")
    parser.add_argument("--max-requests", type=int, default=200, help="per benchmark")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument(
        "--prompt-words",
        default=None,
        help="prompts of random words from this list instead of guidellm's synthetic text "
        "(whose words a toy vocabulary lacks); --tiny sets it to the tiny model's words",
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "guidellm", help="prefix of the results")
    args = parser.parse_args()
    if args.tiny and args.prompt_words is None:
        from loadtests.tiny_model import WORDS

        args.prompt_words = " ".join(WORDS)
    if (args.gateway is None) != (args.worker is None):
        parser.error("give both --gateway and --worker, or neither (then both start here)")
    return args


def profile(args: argparse.Namespace) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    match args.rate_type:
        case "sweep":
            return {
                "kind": "sweep",
                "sweep_size": args.sweep_size,
                "max_concurrency": args.max_concurrency,
            }
        case "constant":
            return {"kind": "constant", "rate": rates, "max_concurrency": args.max_concurrency}
        case "concurrent":
            return {"kind": "concurrent", "streams": [int(r) for r in rates]}
        case "throughput":
            return {"kind": "throughput", "max_concurrency": args.max_concurrency}
    return {"kind": "synchronous"}


def scenario(args: argparse.Namespace, url: str, model_id: str, model_dir: Path, raw: Path) -> dict:
    """A guidellm scenario file (the `spec` of its reports' `config`)."""
    return {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": url,
                "model": model_id,
                "max_tokens": args.max_tokens,
                "timeout": 300,
            },
            "profile": profile(args),
            "constraints": [
                {"kind": "max_duration", "seconds": args.seconds},
                {"kind": "max_requests", "count": args.max_requests},
            ],
            "tokenizer": {"kind": "huggingface_auto", "model": str(model_dir)},
            "data": [data_source(args)],
            "outputs": [{"kind": "json", "path": str(raw)}],
        }
    }


def benchmark_count(args: argparse.Namespace) -> int:
    if args.rate_type == "sweep":
        return int(args.sweep_size)
    return len(args.rates.split(",")) if args.rate_type in ("constant", "concurrent") else 1


def data_source(args: argparse.Namespace) -> dict[str, Any]:
    """guidellm's synthetic text of --prompt-tokens tokens, or prompts of --prompt-words."""
    if not args.prompt_words:
        return {"kind": "synthetic_text", "prompt_tokens": args.prompt_tokens}
    words, rng = args.prompt_words.split(), random.Random(0)
    prompts = [
        " ".join(rng.choices(words, k=args.prompt_tokens))
        for _ in range(args.max_requests * benchmark_count(args))  # enough for every benchmark
    ]
    return {"kind": "in_memory_item_list", "data": prompts, "column_name": "prompt"}


def warm_up(url: str, model_id: str) -> None:
    """Two requests outside the measurement: a fresh server's first ones pay one-off costs."""
    body = {"model": model_id, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 4}
    for _ in range(2):
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).raise_for_status()


def run_guidellm(
    args: argparse.Namespace, target: str, url: str, model_id: str, model_dir: Path
) -> dict:
    raw, log, spec = (
        output_path(args.out, f".{target}.guidellm{suffix}")
        for suffix in (".json", ".log", ".scenario.json")
    )
    spec.write_text(json.dumps(scenario(args, url, model_id, model_dir, raw), indent=2))
    command = [str(load_tool("guidellm")), "run", "--scenario", str(spec), "--disable-progress"]
    env = os.environ | OFFLINE_ENV | {"HF_DATASETS_OFFLINE": "1"}
    with log.open("w") as out:
        completed = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            # Bounded: each benchmark's time, its drain, and guidellm's start-up (torch, datasets).
            timeout=benchmark_count(args) * (args.seconds + 60) + 180,
        )
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"guidellm failed against the {target} ({url}):\n{tail}")
    return json.loads(raw.read_text())


def strategy_label(strategy: dict[str, Any]) -> str:
    """synchronous, throughput, constant@1.25/s, concurrent@4."""
    if "rate" in strategy:
        return f"{strategy['type_']}@{strategy['rate']:.2f}/s"
    if "streams" in strategy:
        return f"{strategy['type_']}@{strategy['streams']}"
    return str(strategy["type_"])


def summarise_benchmark(benchmark: dict[str, Any]) -> RouteSummary:
    """One guidellm benchmark (a rate of a sweep) in the common format."""
    metrics = benchmark["metrics"]

    def ranks(name: str, scale: float, *wanted: int) -> dict[str, float] | None:
        stats = metrics[name]["successful"]
        if not stats["count"]:
            return None
        return {f"p{r}": stats["percentiles"][f"p{r}"] * scale for r in wanted}

    tokens_per_s = metrics["output_tokens_per_second"]["successful"]["mean"]
    return RouteSummary(
        requests=int(metrics["request_totals"]["successful"]),
        errors=int(metrics["request_totals"]["errored"]),
        latency_s=ranks("request_latency", 1.0, 50, 95, 99),
        ttft_s=ranks("time_to_first_token_ms", 1e-3, 50, 95),
        itl_s=ranks("inter_token_latency_ms", 1e-3, 50, 95),
        requests_per_s=metrics["requests_per_second"]["successful"]["mean"],
        generated_tokens_per_s=tokens_per_s,
        completion_tokens_per_s=tokens_per_s,
    )


def summarise(reports: dict[str, dict]) -> dict[str, RouteSummary]:
    """Every target's benchmarks, side by side: the i-th of each target (same strategy) together."""
    rows: list[tuple[int, int, str, RouteSummary]] = []
    for t, (target, report) in enumerate(reports.items()):
        for i, benchmark in enumerate(report["benchmarks"]):
            name = f"{strategy_label(benchmark['config']['strategy'])} {target}"
            rows.append((i, t, name, summarise_benchmark(benchmark)))
    return {name: summary for _, _, name, summary in sorted(rows, key=lambda row: row[:2])}


def overhead(routes: dict[str, RouteSummary]) -> dict[str, dict[str, float | None]]:
    """Per strategy run on both targets: what the gateway adds (seconds) and keeps (req/s ratio)."""
    result: dict[str, dict[str, float | None]] = {}
    for name, worker in routes.items():
        label, target = name.rsplit(" ", 1)
        gateway = routes.get(f"{label} gateway")
        if target != "worker" or gateway is None or not (worker.latency_s and gateway.latency_s):
            continue
        ttft = None
        if gateway.ttft_s and worker.ttft_s:
            ttft = gateway.ttft_s["p50"] - worker.ttft_s["p50"]
        ratio = gateway.requests_per_s / worker.requests_per_s if worker.requests_per_s else None
        result[label] = {
            "added_latency_p50_s": gateway.latency_s["p50"] - worker.latency_s["p50"],
            "added_ttft_p50_s": ttft,
            "requests_per_s_ratio": ratio,
        }
    return result


def main() -> None:
    args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = served_model(args)
    model_id = args.model_id or model.model_id
    started: list[ServiceProcess] = []
    try:
        if args.gateway:
            urls = {"worker": args.worker.rstrip("/"), "gateway": args.gateway.rstrip("/")}
        else:
            worker = ServiceProcess(
                model.arguments, output_path(args.out, ".worker.log"), OFFLINE_ENV, command="worker"
            )
            started.append(worker)
            worker.wait_ready()
            env = OFFLINE_ENV | {"POWERSERVE_WORKERS": worker.url}
            gateway = ServiceProcess(model.arguments, output_path(args.out, ".gateway.log"), env)
            started.append(gateway)
            urls = {"worker": worker.url, "gateway": gateway.wait_ready().url}
        reports = {}
        for target in TARGETS:
            warm_up(urls[target], model_id)
            reports[target] = run_guidellm(args, target, urls[target], model_id, model.directory)
    finally:
        for process in reversed(started):
            process.stop()
    routes = summarise(reports)
    settings = {k: str(v) for k, v in vars(args).items()} | {"urls": urls, "model_id": model_id}
    title = f"guidellm {args.rate_type}: vLLM worker directly vs through the gateway ({model_id})"
    report = {"tool": "guidellm", "title": title, "settings": settings, "overhead": overhead(routes)}
    path = write_report(args.out, report, routes)
    print(table(routes))
    print(json.dumps(report["overhead"], indent=2))
    print(f"\n{path}, {output_path(args.out, '.png')}")


if __name__ == "__main__":
    main()
