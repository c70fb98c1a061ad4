"""Recognise compile jobs killed for lack of memory, and decide the rerun.

The kernel's OOM killer sends SIGKILL, so the dying compiler prints nothing itself; what shows
is its parent's report, which differs per tool (texts checked against real build logs):

- gcc driver:   `c++: fatal error: Killed signal terminated program cc1plus` (gcc ≥ 8)
- older gcc:    `g++-7: internal compiler error: Killed (program cc1plus)`
- nvcc:         `nvcc error   : 'cicc' died due to signal 9 (Kill signal)` (also cudafe++, ptxas)
- collect2/ld:  `collect2: fatal error: ld terminated with signal 9 [Killed]`
- clang:        `clang++: error: unable to execute command: Killed`
- Ninja ≥ 1.13: `FAILED: [code=137] obj.o`; older Ninja: `FAILED: obj.o`, and `Killed` from sh
- make:         `make[2]: *** [CMakeFiles/x.dir/build.make:366: CMakeFiles/x.dir/y.cu.o] Error 137`

Ninja prints `FAILED: <outputs>` before the failed command's output, so a signature is tied to
the object of the FAILED line above it; make names the object after the compiler's message.
A whole build killed by SIGKILL (exit 137 / -9) with no such line is reported with no object.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_build.compile.jobplan import JobPlan
from spark_build.compile.ninjalog import normalize_object
from spark_build.errors import StepFailed
from spark_build.sizes import format_bytes

_FAILED = re.compile(r"^FAILED: (?:\[code=(?P<code>-?\d+)\] )?(?P<outputs>\S+)")
_NINJA_STATUS = re.compile(r"^\[\d+/\d+\] ")
_MAKE_ERROR = re.compile(r"^g?make(?:\[\d+\])?: \*\*\* \[(?:[^\]]*?: )?(?P<object>[^\]:]+)\] (?P<what>.+)$")
_SIGNATURES = (
    re.compile(r"fatal error: Killed signal terminated program \S+"),
    re.compile(r"internal compiler error: Killed \(program \S+\)"),
    re.compile(r"'[^']+' died due to signal 9\b"),
    re.compile(r"terminated with signal 9\b"),
    re.compile(r"error: unable to execute command: Killed"),
)
_KILLED_EXIT = (137, -9)


@dataclass(frozen=True)
class OomKill:
    """One job the kernel killed: its object (None when only the exit status tells) and the line."""

    object: str | None
    evidence: str


def find_oom_kills(log_text: str, returncode: int | None) -> list[OomKill]:
    """Every object whose job was killed by SIGKILL, first evidence line each, in log order.

    Pass the tail of the compile log (a few MB is plenty: Ninja stops after the first failure).
    """
    found: dict[str | None, str] = {}
    current: str | None = None
    pending: list[str] = []  # compiler lines not under a FAILED block: make names the object after
    for raw in log_text.splitlines():
        line = raw.strip()
        failed = _FAILED.match(line)
        if failed:
            current = normalize_object(failed["outputs"])
            if failed["code"] is not None and int(failed["code"]) in _KILLED_EXIT:
                found.setdefault(current, line)
            continue
        if _NINJA_STATUS.match(line) or line.startswith("ninja: "):
            current = None
            continue
        make = _MAKE_ERROR.match(line)
        if make:
            obj = normalize_object(make["object"].strip())
            what = make["what"]
            if pending:
                found.setdefault(obj, pending[0])
            elif re.fullmatch(r"Error 137|Killed", what):
                found.setdefault(obj, line)
            pending = []
            continue
        killed_line = line == "Killed" and current is not None
        if killed_line or any(sig.search(line) for sig in _SIGNATURES):
            if current is not None:
                found.setdefault(current, line)
            else:
                pending.append(line)
    for line in pending:
        found.setdefault(None, line)
    if not found and returncode in _KILLED_EXIT:
        found[None] = f"the build exited with status {returncode} (killed by SIGKILL, most likely the OOM killer)"
    return [OomKill(obj, evidence) for obj, evidence in found.items()]


def next_jobs_after_oom(current_jobs: int, tries: int, max_tries: int) -> int | None:
    """Jobs for the rerun after `tries` compile attempts ended in an OOM kill, or None to give up.

    Halving converges in log2(jobs) reruns; every object already built is reused by Ninja, so a
    rerun costs only the jobs that were running. One job that still gets killed cannot be helped
    by fewer jobs — only by more memory.
    """
    if tries >= max_tries or current_jobs <= 1:
        return None
    return max(1, current_jobs // 2)


def oom_give_up_error(
    kills: Sequence[OomKill],
    peaks: Mapping[str, int],
    *,
    jobs: int,
    tries: int,
    log: Path | None = None,
) -> StepFailed:
    """The message that ends the retries: which object, how much memory it took, what to do."""
    named = [k for k in kills if k.object is not None]
    if named:
        worst = max(named, key=lambda k: peaks.get(k.object or "", 0))
        peak = peaks.get(worst.object or "")
        size = f" (peak {format_bytes(peak)} measured)" if peak else ""
        what = f"compile job for {worst.object}{size} was killed for lack of memory"
    else:
        what = "the compile was killed for lack of memory"
    return StepFailed(
        f"{what} after {tries} tries, the last with MAX_JOBS={jobs}: {kills[0].evidence if kills else ''}".rstrip(": "),
        hint="free memory (stop a running model or notebook), add swap, or build that object alone with --jobs 1",
        step="compile",
        log=log,
    )


# Reruns after an OOM kill, each with fewer jobs, before the compile gives up.
OOM_MAX_TRIES = 3


@dataclass(frozen=True)
class Attempt:
    """One run of the compile at one job plan: its exit status and its log's tail."""

    returncode: int
    log_tail: str


def retry_after_oom(
    attempt: Callable[[JobPlan], Attempt],
    plan: JobPlan,
    *,
    log: Path,
    peaks: Callable[[], Mapping[str, int]],
    on_retry: Callable[[list[OomKill], JobPlan], None],
    max_tries: int = OOM_MAX_TRIES,
) -> tuple[JobPlan, int]:
    """Run `attempt` until it succeeds; after an OOM kill rerun it with fewer jobs in the same
    tree (Ninja keeps every object already built). Returns the plan that finished and the
    number of reruns; any other failure, or too many kills, raises `StepFailed`."""
    tries = 0
    while True:
        outcome = attempt(plan)
        if outcome.returncode == 0:
            return plan, tries
        kills = find_oom_kills(outcome.log_tail, outcome.returncode)
        if not kills:
            raise StepFailed(f"the compile failed (exit status {outcome.returncode})", step="compile", log=log)
        tries += 1
        fewer = next_jobs_after_oom(plan.concurrent_jobs, tries, max_tries=max_tries)
        if fewer is None:
            raise oom_give_up_error(kills, peaks(), jobs=plan.max_jobs, tries=tries, log=log)
        plan = plan.with_concurrent_jobs(fewer)
        on_retry(kills, plan)
