"""A fine-tuning job end to end on the embedded default (``python -m loadtests.bench_fine_tuning``).

Uploads N prompts of the shipped arithmetic set (with their answers, so the evaluation reports
accuracy), runs one job through the OpenAI fine-tuning API (files, jobs, events), and reports how long
the job and each of its stages took (from the job's events), the evaluation table of its result file,
and that the new model answers.

Results go to loadtests/results/bench_fine_tuning.json (``make bench-jobs``: 64 prompts, to
bench_fine_tuning_64.json) and the table to stdout.

    make bench-jobs     (with bench_batch and bench_replicas)
    python -m loadtests.bench_fine_tuning [--prompts 8 --power-method smc --answer-tokens 64 --out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.client import request_json, upload_file
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS
from service.config import DEFAULT_MODEL_NAME
from service.distill.data import DEFAULT_PROMPTS, read_prompts

# Where each stage starts, by the first words of its event.
STAGES = {
    "Generating teacher answers": "teacher",
    "Training a rank": "training",
    "Serving ft:": "eval",
    "Job succeeded": "done",
}


def stage_times(events: list[dict]) -> dict[str, int]:
    """Seconds per stage, from the events' timestamps (1 s resolution)."""
    starts: dict[str, int] = {}
    for event in events:
        for prefix, stage in STAGES.items():
            if event["message"].startswith(prefix):
                starts.setdefault(stage, event["created_at"])
    order = list(STAGES.values())
    return {a: starts[b] - starts[a] for a, b in itertools.pairwise(order) if a in starts}


def _extra_hyperparameters(pairs: list[str]) -> dict[str, Any]:
    extra = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        extra[name] = json.loads(value)
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--power-method", choices=["smc", "mh"], default="smc")
    parser.add_argument("--mcmc-steps", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument(
        "--hyper",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="Another hyperparameter of the job, e.g. answers_per_prompt=4 or lora_mlp=true.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_fine_tuning.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    items = read_prompts(DEFAULT_PROMPTS, "train", args.prompts)
    content = "".join(
        json.dumps({"messages": item.messages, "answer": item.answer}) + "\n" for item in items
    ).encode()
    with tempfile.TemporaryDirectory() as state:
        service = ServiceProcess(["--state-dir", state], RESULTS / "bench_fine_tuning.log")
        try:
            service.wait_ready()
            with httpx.Client(base_url=service.url, timeout=600) as client:
                file_id = upload_file(client, "prompts.jsonl", content, purpose="fine-tune")
                began = time.monotonic()
                body = {
                    "model": DEFAULT_MODEL_NAME,
                    "training_file": file_id,
                    "suffix": "bench",
                    "seed": 1,
                    "hyperparameters": {
                        "power_method": args.power_method,
                        "mcmc_steps": args.mcmc_steps,
                        "answer_tokens": args.answer_tokens,
                    }
                    | _extra_hyperparameters(args.hyper),
                }
                job = request_json(client, "POST", "/v1/fine_tuning/jobs", json=body)
                jobs = f"/v1/fine_tuning/jobs/{job['id']}"
                while (job := request_json(client, "GET", jobs))["status"] not in (
                    "succeeded",
                    "failed",
                    "cancelled",
                ):
                    time.sleep(1)
                took = time.monotonic() - began
                if job["status"] != "succeeded":
                    raise SystemExit(f"the job {job['status']}: {job.get('error')}")
                page = request_json(client, "GET", f"{jobs}/events", params={"limit": 1000})
                events = page["data"][::-1]
                content_path = f"/v1/files/{job['result_files'][0]}/content"
                result = json.loads(client.get(content_path).raise_for_status().content)
                model = str(job["fine_tuned_model"])
                chat = {"model": model, "messages": items[0].messages, "max_tokens": 16}
                answer = request_json(client, "POST", "/v1/chat/completions", json=chat)
        finally:
            service.stop()
    report = {
        "args": vars(args) | {"out": str(args.out)},
        "job_seconds": round(took, 1),
        "stage_seconds": stage_times(events),
        "fine_tuned_model": job["fine_tuned_model"],
        "trained_tokens": job.get("trained_tokens"),
        "summary": result["summary"],
        "sample_answer": answer["choices"][0]["message"]["content"],
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"job: {took:.0f} s; stages (s): {report['stage_seconds']}")
    print(result["table"])


if __name__ == "__main__":
    main()
