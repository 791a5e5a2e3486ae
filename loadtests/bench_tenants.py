"""A noisy neighbour (``python -m loadtests.bench_tenants``), on loopback: one key floods the service
with the largest requests its bounds allow while another key sends plain chat requests one at a
time; the second key's latency against the same requests on an idle service.

The flooder runs ``--flooders`` loops at once, each sending in turn, as fast as it is answered:
  - a completion asking for the most choices a request may (``POWERSERVE_MAX_CHOICES`` prompts),
    each of as many tokens as its key's per-minute budget (``--flooder-tpm``) leaves;
  - a chat of ~0.9 MB (just under the body cap), refused for its length after templating;
  - a power request of ``--max-tokens`` tokens.
A hostile client ignores ``retry-after``: refusals (429, 503) are sent again at once. The victim's key
has no limit. Results:
loadtests/results/bench_tenants.json and a Markdown table on stdout.

    make bench-tenants [TENANTS_ARGS="--seconds 60 --flooders 4"]
    python -m loadtests.bench_tenants [--model default|tiny --seconds 60 --flooders 4 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from loadtests.client import Lanes
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS, measure_table, percentile
from loadtests.tiny_model import build_tiny_model
from service.limits import hash_key

__all__ = ["main"]

FLOODER_KEY, VICTIM_KEY = "sk-flooder", "sk-victim"


def _keys_file(path: Path, flooder_tpm: int) -> Path:
    path.write_text(
        f'[keys.flooder]\nsha256 = "{hash_key(FLOODER_KEY)}"\nproject = "noisy"\n'
        f"tpm = {flooder_tpm}\n"
        f'[keys.victim]\nsha256 = "{hash_key(VICTIM_KEY)}"\nproject = "quiet"\n'
    )
    return path


async def victim(lanes: Lanes, url: str, model: str, seconds: float, max_tokens: int) -> list[float]:
    """Plain chat requests one after another (distinct, so the cache cannot answer)."""
    latencies: list[float] = []
    deadline, i = time.monotonic() + seconds, 0
    headers = {"Authorization": f"Bearer {VICTIM_KEY}"}
    while time.monotonic() < deadline:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Count from {i} to {i + 5}."}],
            "max_tokens": max_tokens,
        }
        began = time.monotonic()
        response = await lanes.post(f"{url}/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        latencies.append(time.monotonic() - began)
        i += 1
    return latencies


async def flooder(
    lanes: Lanes, url: str, model: str, deadline: float, max_tokens: int, choices: int, tpm: int
) -> dict[str, int]:
    """The largest requests the bounds allow, in turn, until ``deadline``: statuses counted."""
    headers = {"Authorization": f"Bearer {FLOODER_KEY}"}
    long_chat = "a b " * 225_000
    widest = {"model": model, "prompt": ["a"] * choices, "max_tokens": max(1, tpm // choices)}
    requests = [
        ("/completions", widest),
        ("/chat/completions", {"model": model, "messages": [{"role": "user", "content": long_chat}]}),
        ("/completions", {"model": f"{model}-power", "prompt": "Once", "max_tokens": max_tokens}),
    ]
    statuses: dict[str, int] = {}
    turn = 0
    while time.monotonic() < deadline:
        path, body = requests[turn % len(requests)]
        turn += 1
        response = await lanes.post(f"{url}{path}", json=body, headers=headers)
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
    return statuses


async def measure(opts: argparse.Namespace, work: Path) -> dict:
    if opts.model == "tiny":
        model_dir = build_tiny_model(work / "tiny", seed=1, weight_scale=20.0)
        args, model = ["--model", str(model_dir), "--max-model-len", "64", "--kv-cache-gib", "1"], "tiny"
    else:
        args, model = [], "smollm2-135m-instruct"
    args += ["--api-keys-file", str(_keys_file(work / "keys.toml", opts.flooder_tpm))]
    args += ["--state-dir", str(work / "state"), "--max-choices", str(opts.choices)]
    service = ServiceProcess(args, work / "service.log").wait_ready()
    try:
        url = service.base_url
        async with Lanes(timeout=600) as lanes:
            await victim(lanes, url, model, 5, opts.max_tokens)  # warm-up
            idle = await victim(lanes, url, model, opts.seconds, opts.max_tokens)
            rss_before = service.rss_mib()
            deadline = time.monotonic() + opts.seconds + 5
            floods = [
                asyncio.create_task(
                    flooder(lanes, url, model, deadline, opts.max_tokens, opts.choices, opts.flooder_tpm)
                )
                for _ in range(opts.flooders)
            ]
            await asyncio.sleep(5)  # the flood is under way
            flooded = await victim(lanes, url, model, opts.seconds, opts.max_tokens)
            statuses: dict[str, int] = {}
            for counts in await asyncio.gather(*floods):
                for status, count in counts.items():
                    statuses[status] = statuses.get(status, 0) + count
            rss_after = service.rss_mib()
    finally:
        service.stop()
    idle_p50, flooded_p50 = percentile(idle, 50), percentile(flooded, 50)
    return {
        "model": model,
        "seconds": opts.seconds,
        "flooders": opts.flooders,
        "flooder_tpm": opts.flooder_tpm,
        "max_tokens": opts.max_tokens,
        "victim_idle": {"requests": len(idle), "p50_s": idle_p50, "p99_s": percentile(idle, 99)},
        "victim_flooded": {
            "requests": len(flooded),
            "p50_s": flooded_p50,
            "p99_s": percentile(flooded, 99),
        },
        "p50_ratio": flooded_p50 / idle_p50,
        "flooder_statuses": statuses,
        "gateway_rss_mib": {"before_flood": rss_before, "after_flood": rss_after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--flooder-tpm", type=int, default=2000)
    parser.add_argument("--choices", type=int, default=128, help="POWERSERVE_MAX_CHOICES")
    parser.add_argument("--max-tokens", type=int, default=16)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(measure(opts, Path(tmp)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_tenants.json").write_text(json.dumps(report, indent=2) + "\n")
    idle, flooded = report["victim_idle"], report["victim_flooded"]
    print(
        measure_table(
            [
                ("victim p50, idle", f"{idle['p50_s']:.2f} s ({idle['requests']} requests)"),
                ("victim p50, flooded", f"{flooded['p50_s']:.2f} s ({flooded['requests']} requests)"),
                ("flooded / idle (p50)", f"{report['p50_ratio']:.2f}x"),
                ("victim p99, idle / flooded", f"{idle['p99_s']:.2f} s / {flooded['p99_s']:.2f} s"),
                ("flooder's answers", json.dumps(report["flooder_statuses"], sort_keys=True)),
                (
                    "gateway RSS before / after the flood",
                    "{before_flood:.0f} / {after_flood:.0f} MiB".format(**report["gateway_rss_mib"]),
                ),
            ]
        )
    )


if __name__ == "__main__":
    main()
