"""How long a newcomer waits (``make bench-first-start``): ``make serve`` from nothing to a healthy
server, in a fresh clone of this repository's HEAD with empty uv and model caches (the pip cache,
which holds at most the uv wheel, is kept). The time is split at the Makefile's own steps: the
environment installed (its stamp file appears), the model prepared (``powerserve serve`` starts),
and /health answering 200 after the engine's warm-up. Writes
loadtests/results/bench_first_start.json.

    make bench-first-start
    python -m loadtests.bench_first_start [--port 8123] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from loadtests.harness import LOOPBACK, stop_process_group, wait_for_http
from loadtests.load_report import RESULTS

__all__: list[str] = []

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--timeout", type=float, default=900, help="Seconds to wait for health.")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_first_start.json")
    return parser.parse_args()


def _first_line_at(log: Path, text: str, began: float, until: float) -> float | None:
    """Seconds from ``began`` to when a line with ``text`` appeared in ``log`` (polled), or None."""
    while time.monotonic() < until:
        if log.exists() and text in log.read_text(errors="replace"):
            return time.monotonic() - began
        time.sleep(0.2)
    return None


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as work:
        clone = Path(work) / "powerserve"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        log = Path(work) / "make-serve.log"
        env = os.environ | {
            "UV_CACHE_DIR": str(Path(work) / "uv-cache"),
            "POWERSERVE_CACHE_DIR": str(Path(work) / "powerserve-cache"),
            "HOST": LOOPBACK,
            "PORT": str(args.port),
        }
        began = time.monotonic()
        with open(log, "wb") as output:
            process = subprocess.Popen(
                ["make", "serve"], cwd=clone, env=env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            until = began + args.timeout
            installed = _first_line_at(log, "touch .venv/.installed", began, until)
            prepared = _first_line_at(log, "powerserve serve", began, until)
            wait_for_http(
                f"http://{LOOPBACK}:{args.port}/health", timeout=until - time.monotonic(), alive=process
            )
            healthy = time.monotonic() - began
        finally:
            stop_process_group(process)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "what": "make serve in a fresh clone with empty uv and model caches, to /health 200",
        "seconds": {
            "environment installed": installed,
            "model prepared": None if prepared is None or installed is None else prepared - installed,
            "engine started and warmed up": None if prepared is None else healthy - prepared,
            "healthy (total)": healthy,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for stage, seconds in report["seconds"].items():
        print(f"{stage}: {seconds:.0f} s" if seconds is not None else f"{stage}: -")


if __name__ == "__main__":
    main()
