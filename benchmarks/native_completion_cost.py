"""What `--prefer-wheel --native` would cost on a DGX Spark, estimated from the shipped profile.

The profile (`spark_build/data/vllm-0.13.0-sm121a-full-compile-profile.json`) holds every object
of a real vLLM 0.13.0 build for 12.1a: its CPU-s and peak RSS on a 32-core H200 host. The targets
`--native` rebuilds are scheduled longest first on `--cores` cores, each job holding its measured
peak, under a memory budget (the Spark's usable memory, less what a running model takes). FA2's
`.cu` objects are scaled by the sm_120-vs-sm_80+PTX factor measured on the GPU machine (RESULTS.md,
0.65-0.75): `--native` compiles them as 12.x SASS, where the profile compiled them as sm_80 + PTX.
An estimate, not a measurement: a Spark core is taken as fast as the profile host's.

    .venv/bin/python benchmarks/native_completion_cost.py
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections.abc import Sequence
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[1] / "spark_build/data/vllm-0.13.0-sm121a-full-compile-profile.json"
GIB = 1024  # the profile's peaks are in MiB


def jobs_of(objects: Sequence[dict], targets: Sequence[str], fa2_ratio: float) -> list[tuple[float, float]]:
    """(CPU-s, peak GiB) of every object of `targets`, FA2's CUDA objects scaled to 12.x SASS."""
    found = []
    for obj in objects:
        if obj["target"] in targets:
            scale = fa2_ratio if obj["target"] == "_vllm_fa2_C" and obj["object"].endswith(".cu.o") else 1.0
            found.append((obj["cpu_s"] * scale, obj["peak_rss_mb"] / GIB))
    return sorted(found, reverse=True)


def makespan(jobs: Sequence[tuple[float, float]], cores: int, budget_gib: float) -> float:
    """Wall seconds of a longest-first list schedule: a job starts when a core and its peak are free."""
    now, running, waiting = 0.0, [], list(jobs)  # running: (end, peak)
    while waiting or running:
        used = sum(peak for _, peak in running)
        fits = next((i for i, (_, peak) in enumerate(waiting) if used + peak <= budget_gib), None)
        if fits is not None and len(running) < cores:
            cpu, peak = waiting.pop(fits)
            heapq.heappush(running, (now + cpu, peak))
            continue
        now, _ = heapq.heappop(running)
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=20)
    parser.add_argument("--memory-gib", type=float, default=119.0, help="usable memory of the Spark (replay.py's)")
    parser.add_argument("--model-gib", type=float, nargs="*", default=[0.0, 40.0], help="memory a running model takes")
    args = parser.parse_args()
    objects = json.loads(PROFILE.read_text())["objects"]
    for targets in (("_vllm_fa2_C",), ("_vllm_fa2_C", "_C", "_moe_C")):
        for model in args.model_gib:
            for ratio in (0.65, 0.75):
                jobs = jobs_of(objects, targets, ratio)
                wall = makespan(jobs, args.cores, args.memory_gib - model)
                cpu = sum(c for c, _ in jobs)
                print(
                    f"{'+'.join(targets)}: {len(jobs)} objects, FA2 x{ratio}, {args.cores} cores, "
                    f"{args.memory_gib - model:.0f} GiB: {cpu:,.0f} CPU-s, {wall / 60:.1f} min"
                )


if __name__ == "__main__":
    main()
