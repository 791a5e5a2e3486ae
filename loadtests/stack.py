"""``make stack``: the scale-out topology as local processes, for machines without Docker.

    redis-server          127.0.0.1:6379   the shared response cache
    powerserve worker x2  127.0.0.1:8001, 127.0.0.1:8002   stock vLLM OpenAI servers
    powerserve serve      127.0.0.1:8000   the gateway, in remote mode over both workers
    prometheus            127.0.0.1:9090   scraping the gateway and the workers

The same topology as docker-compose.yml (Grafana aside: point one at the Prometheus and import
deploy/grafana/dashboards/powerserve.json). Ctrl-C stops everything. Logs and Prometheus data go under
runs/stack/.

    python -m loadtests.stack [--model DIR] [--workers 2] [--port 8000]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from pathlib import Path

from loadtests.harness import PrometheusProcess, RedisProcess, ServiceProcess

RUNS = Path("runs") / "stack"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the embedded one)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port")
    parser.add_argument("--worker-port", type=int, default=8001, help="the first worker's port")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    args = parser.parse_args()

    RUNS.mkdir(parents=True, exist_ok=True)
    model = ["--model", str(args.model)] if args.model else []
    running: list[ServiceProcess | RedisProcess | PrometheusProcess] = []
    try:
        redis = RedisProcess(args.redis_port).start()
        running.append(redis)
        workers = [
            ServiceProcess(model, RUNS / f"worker-{i}.log", command="worker", port=args.worker_port + i)
            for i in range(args.workers)
        ]
        running += workers
        print(f"starting {args.workers} vLLM workers (a minute or two on a CPU) ...", flush=True)
        for worker in workers:
            worker.wait_ready()
        gateway = ServiceProcess(
            model,
            RUNS / "gateway.log",
            env={"POWERSERVE_WORKERS": ",".join(w.url for w in workers), "REDIS_URL": redis.url},
            port=args.port,
        )
        running.append(gateway)
        gateway.wait_ready()
        jobs = {"powerserve-gateway": [gateway.url], "vllm-workers": [w.url for w in workers]}
        prometheus = PrometheusProcess(
            jobs, RUNS / "prometheus", port=args.prometheus_port, interval="5s"
        )
        running.append(prometheus.start())
        print(
            f"\nready:\n  gateway     {gateway.url}/v1  (OpenAI API; /metrics, /health)\n"
            + "".join(f"  worker {i}    {w.url}\n" for i, w in enumerate(workers))
            + f"  redis       {redis.url}\n  prometheus  {prometheus.url}\n"
            f"  logs        {RUNS}/\nCtrl-C stops the stack.",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        while all(_alive(p) for p in running):
            time.sleep(1)
        print("a process of the stack exited; stopping the rest", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        for process in reversed(running):
            with contextlib.suppress(Exception):
                process.stop()


def _alive(process: ServiceProcess | RedisProcess | PrometheusProcess) -> bool:
    return process.process is not None and process.process.poll() is None


if __name__ == "__main__":
    main()
