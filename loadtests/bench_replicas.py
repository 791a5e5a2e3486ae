"""Batches across gateway replicas, in one run (``python -m loadtests.bench_replicas``, part of
``make bench-jobs``): one `powerserve worker` on the default model, gateways in front of it, and the
same batch of plain chat lines answered four ways:

  sqlite-1       one gateway, files and batches in its SQLite state directory (the default)
  redis-1        one gateway, the job store in Redis (``--jobs-redis-url``): the store's overhead
  redis-2        two gateways sharing that Redis, half the lines in flight each
  redis-2-kill   the same, and one gateway is killed (SIGKILL) when a third of the lines are answered:
                 the other takes its claimed lines over once their claims are stale

Lines in flight are the same in every run (``--concurrency`` in all, split between replicas). For each:
wall time, lines per second, lines each replica answered, lines taken over, and whether every line is
in the output exactly once. Results go to loadtests/results/bench_replicas.json and a Markdown table
on stdout.

    make bench-jobs     (with bench_batch and bench_fine_tuning)
    python -m loadtests.bench_replicas [--lines 48 --max-tokens 32 --concurrency 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from redis import Redis

from loadtests.bench_batch import MODEL, batch_status, submit_batch
from loadtests.harness import RedisProcess, ServiceProcess
from loadtests.load_report import RESULTS
from service.config import Settings
from service.model_store import ensure_default_model


def answered(replica: ServiceProcess) -> float:
    return replica.metric("powerserve_batch_lines_total", result="completed")


def run_batch(
    name: str, model: list[str], worker: ServiceProcess, args: argparse.Namespace, *, replicas: int,
    redis: RedisProcess | None, kill: bool,
) -> dict:  # fmt: skip
    env = {"POWERSERVE_WORKERS": worker.url}
    if redis is not None:
        env["POWERSERVE_JOBS_REDIS_URL"] = redis.url
        Redis.from_url(redis.url).flushdb()
    flags = [*model, "--batch-concurrency", str(args.concurrency // replicas)]
    flags += ["--batch-claim-timeout-s", str(args.claim_timeout_s)]
    gateways = []
    try:
        with tempfile.TemporaryDirectory() as state, contextlib.ExitStack() as clients:
            for i in range(replicas):
                log = RESULTS / f"bench_replicas.{name}.gateway-{i}.log"
                state_dir = ["--state-dir", f"{state}/{i}"]
                gateways.append(ServiceProcess([*flags, *state_dir], log, env=env).wait_ready())
            api = [clients.enter_context(httpx.Client(base_url=g.url, timeout=600)) for g in gateways]
            began = time.monotonic()
            batch_id = submit_batch(api[0], args.lines, args.max_tokens)
            killed_at = None
            by_replica_at_kill: list[float] = []
            while (batch := batch_status(api[-1], batch_id))["status"] != "completed":
                assert batch["status"] in ("validating", "in_progress", "finalizing"), batch
                done = (batch.get("request_counts") or {}).get("completed", 0)
                if kill and killed_at is None and done >= args.lines // 3:
                    by_replica_at_kill = [answered(g) for g in gateways]
                    os.killpg(gateways[0].process.pid, signal.SIGKILL)
                    gateways[0].process.wait(timeout=30)
                    killed_at = time.monotonic()
                time.sleep(0.2)
            seconds = time.monotonic() - began
            output = api[-1].get(f"/v1/files/{batch['output_file_id']}/content").raise_for_status()
            lines = output.text.splitlines()
            ids = Counter(json.loads(line)["custom_id"] for line in lines)
            live = gateways[1:] if kill else gateways
            by_replica = by_replica_at_kill[:1] if kill else []
            by_replica += [answered(g) for g in live]
            taken_over = sum(g.metric("powerserve_batch_lines_taken_over_total") for g in live)
    finally:
        for gateway in gateways:
            gateway.stop()
    result = {
        "run": name,
        "replicas": replicas,
        "seconds": round(seconds, 2),
        "lines_per_s": round(args.lines / seconds, 3),
        "answered_by_replica": by_replica,
        "taken_over": taken_over,
        "each_line_once": ids == Counter(f"l{i}" for i in range(args.lines)),
        # From the kill to the batch completed (the rest of the lines, takeover included).
        "kill_to_done_s": round(began + seconds - killed_at, 2) if killed_at else None,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8, help="lines in flight, all replicas")
    parser.add_argument("--claim-timeout-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_replicas.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    model = ["--model", str(ensure_default_model(Settings().cache_dir)), "--model-name", MODEL]

    worker = ServiceProcess(model, RESULTS / "bench_replicas.worker.log", command="worker")
    redis = RedisProcess().start()
    try:
        worker.wait_ready()
        runs = [
            run_batch("sqlite-1", model, worker, args, replicas=1, redis=None, kill=False),
            run_batch("redis-1", model, worker, args, replicas=1, redis=redis, kill=False),
            run_batch("redis-2", model, worker, args, replicas=2, redis=redis, kill=False),
            run_batch("redis-2-kill", model, worker, args, replicas=2, redis=redis, kill=True),
        ]
    finally:
        worker.stop()
        redis.stop()
    base = runs[0]["lines_per_s"]
    for run in runs:
        run["throughput_over_sqlite"] = round(run["lines_per_s"] / base, 3)
    args.out.write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=2) + "\n"
    )

    header = "run | replicas | seconds | lines/s | vs sqlite-1 | answered by replica | taken over"
    print(f"\n| {header} | each line once | kill to done |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['run']} | {r['replicas']} | {r['seconds']} | {r['lines_per_s']} | "
              f"{r['throughput_over_sqlite']}x | {r['answered_by_replica']} | {r['taken_over']} | "
              f"{r['each_line_once']} | {r['kill_to_done_s'] or ''} |")  # fmt: skip


if __name__ == "__main__":
    main()
