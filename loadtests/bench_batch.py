"""Batch work against interactive latency, in one run (``python -m loadtests.bench_batch``).

On the embedded default model: interactive chat requests one after another, first with the gateway
idle, then while a batch of plain lines runs; p50 and p90 of each, and the batch's lines per second.
Two gateways are measured: the default (batch lines yield: a share of 1 line in flight while
interactive requests run, and priority scheduling in vLLM), and one whose batches keep their full
share (``--batch-busy-concurrency`` = ``--batch-concurrency``), which shows what yielding buys.

Results go to loadtests/results/bench_batch.json and a Markdown table on stdout.

    make bench-jobs     (with bench_replicas and bench_fine_tuning)
    python -m loadtests.bench_batch [--requests 12 --lines 48 --concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.client import request_json, upload_file
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS, percentile
from service.config import DEFAULT_MODEL_NAME, Settings
from service.model_store import ensure_default_model

__all__ = ["MODEL", "batch_status", "submit_batch"]  # what bench_replicas uses

MODEL = DEFAULT_MODEL_NAME
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def interactive(client: httpx.Client, count: int, max_tokens: int) -> list[float]:
    latencies = []
    for i in range(count):
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": max_tokens, "seed": 10_000 + i,
                "cache": {"no-cache": True, "no-store": True}}  # fmt: skip
        began = time.monotonic()
        client.post("/v1/chat/completions", json=body).raise_for_status()
        latencies.append(time.monotonic() - began)
    return latencies


def submit_batch(client: httpx.Client, lines: int, max_tokens: int) -> str:
    """Upload ``lines`` plain chat lines and start a batch of them: the batch's id."""
    content = "".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "max_tokens": max_tokens, "messages": [
                        {"role": "user", "content": f"Write a story about lighthouse {i}."}]}})
        + "\n"
        for i in range(lines)
    ).encode()  # fmt: skip
    file_id = upload_file(client, "bench.jsonl", content, purpose="batch")
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    return str(request_json(client, "POST", "/v1/batches", json=body)["id"])


def batch_status(client: httpx.Client, batch_id: str) -> dict:
    return dict(request_json(client, "GET", f"/v1/batches/{batch_id}"))


def measure(model_dir: Path, args: argparse.Namespace, *, busy: int, state: Path) -> dict:
    flags = ["--model", str(model_dir), "--model-name", MODEL, "--state-dir", str(state)]
    flags += ["--batch-concurrency", str(args.concurrency), "--batch-busy-concurrency", str(busy)]
    service = ServiceProcess(flags, RESULTS / f"bench_batch_busy{busy}.log")
    try:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=600) as client:
            interactive(client, 2, args.max_tokens)  # warm-up
            idle = interactive(client, args.requests, args.max_tokens)
            batch_id = submit_batch(client, args.lines, args.batch_max_tokens)
            while batch_status(client, batch_id)["status"] != "in_progress":
                time.sleep(0.2)
            time.sleep(args.settle_s)  # the batch at its full share first
            began = time.monotonic()
            busy_latencies = interactive(client, args.requests, args.max_tokens)
            while (batch := batch_status(client, batch_id))["status"] != "completed":
                time.sleep(0.5)
            batch_s = time.monotonic() - began + args.settle_s
    finally:
        service.stop()
    return {
        "batch_busy_concurrency": busy,
        "idle_p50_s": statistics.median(idle),
        "idle_p90_s": percentile(idle, 90, method="nearest"),
        "batch_running_p50_s": statistics.median(busy_latencies),
        "batch_running_p90_s": percentile(busy_latencies, 90, method="nearest"),
        "p50_ratio": statistics.median(busy_latencies) / statistics.median(idle),
        "batch_lines": (batch.get("request_counts") or {}).get("completed", 0),
        "batch_lines_per_s_approx": args.lines / batch_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=12, help="interactive requests per phase")
    parser.add_argument("--max-tokens", type=int, default=24, help="of each interactive answer")
    parser.add_argument("--lines", type=int, default=48)
    parser.add_argument("--batch-max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_batch.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    model_dir = ensure_default_model(Settings().cache_dir)
    runs = []
    for busy in (1, args.concurrency):
        with tempfile.TemporaryDirectory() as state:
            runs.append(measure(model_dir, args, busy=busy, state=Path(state)))
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=2)
    )
    print(
        "| batch share while interactive runs | idle p50 | with batch p50 | ratio | p90 idle / batch |"
    )
    print("|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run['batch_busy_concurrency']} of {args.concurrency} lines "
            f"| {run['idle_p50_s']:.2f} s | {run['batch_running_p50_s']:.2f} s "
            f"| {run['p50_ratio']:.2f}x | {run['idle_p90_s']:.2f} / {run['batch_running_p90_s']:.2f} s |"
        )


if __name__ == "__main__":
    main()
