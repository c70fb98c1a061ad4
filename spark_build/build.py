"""`build-vllm`: lock the workdir, plan the steps, run them with checkpoints, summarise.

The order of the steps is `steps.STEPS`; this module runs them: the target resolved once,
the resume plan, a checkpoint around each step, the timing table and summary at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from spark_build.arch.target import Target
from spark_build.config import BuildConfig
from spark_build.errors import Interrupted, SparkBuildError, StepFailed, UsageError
from spark_build.host.facts import GpuQuery, query_gpus
from spark_build.host.target import resolve_target
from spark_build.insight.diagnose import explain
from spark_build.insight.trace import write_trace
from spark_build.lock import WorkdirLock
from spark_build.pipeline import state as checkpoint
from spark_build.pipeline.plan import StepPlan, StepSpec, fingerprint, plan, recorded
from spark_build.pipeline.progress import (
    Progress,
    StepOutcome,
    new_run_id,
    point_latest,
    summary_payload,
    write_summary,
)
from spark_build.pipeline.state import BuildState, StepRecord
from spark_build.pipeline.step import RESUME_COMMAND, Context, Step
from spark_build.proc import InterruptSignal, Runner, interrupt_signals
from spark_build.steps import STEPS
from spark_build.steps.preflight import refuse_bad_input
from spark_build.steps.sourceplan import SourcePlan, plan_source, with_source
from spark_build.venv import find_tool


def specs_for(steps: Sequence[Step], ctx: Context) -> list[StepSpec]:
    out, upstream = [], ""
    for step in steps:
        inputs = step.inputs(ctx)
        fp = fingerprint({"step": step.name, **inputs}, upstream)
        out.append(StepSpec(step.name, fp, step.volatile, recorded(inputs)))
        if not step.volatile:
            upstream = fp
    return out


def _usable_workdir(workdir: Path, *, dry_run: bool) -> None:
    if dry_run:  # a plan creates nothing: the folder it would be made in must be writable
        existing = next(p for p in (workdir, *workdir.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write to the workdir {workdir}", hint="choose a writable folder with --workdir")
        return
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot write to the workdir {workdir} ({exc.strerror})",
            hint="choose a writable folder with --workdir",
        ) from exc


def build(
    config: BuildConfig,
    console: Console,
    *,
    clock: Callable[[], float] = time.monotonic,
    held: WorkdirLock | None = None,
    stop_after: str | None = None,
    resume_command: str = RESUME_COMMAND,
    prebuilt: Mapping[str, Any] | None = None,
) -> int:
    """Run (or with `dry_run`, only plan) one build; returns the exit code, raises on failure.
    `held` is the workdir lock when the caller took it already (the nightly does);
    `resume_command` is what the messages tell the user to run to continue this build;
    `prebuilt` is why `--prefer-wheel` did not take the official wheel, kept in summary.json."""
    # The source decides the torch (its requirements/cuda.txt) and what --dry-run shows, and bad
    # input it reveals (a torch whose headers the source cannot compile with) stops the build
    # before the workdir is touched; the example upstream not generated yet is planned once made.
    existing_torch = refuse_bad_input(config)
    generated = config.layout.example_upstream
    unmade = config.example and config.repo == str(generated) and not generated.exists()
    source = None if unmade else plan_source(config, existing_torch)
    _usable_workdir(config.workdir, dry_run=config.dry_run)
    if config.resume and not config.state_file.exists():
        raise UsageError(
            f"nothing to resume in {config.workdir} (no state.json)",
            hint="run without --resume to start a build",
        )
    gpu_query = query_gpus()
    target = resolve_target(config.arch, gpu_query.gpus)
    lock = held or WorkdirLock(config.workdir)
    # A dry run of a workdir that does not exist yet has nothing to guard: it creates nothing.
    unguarded = held is not None or (config.dry_run and not config.workdir.exists())
    with contextlib.nullcontext() if unguarded else lock.held():
        if stopped := lock.stop_leftover():
            console.print(f"stopped {stopped} leftover process(es) of an earlier, killed build")
        recorded = checkpoint.load(config.state_file) if config.resume else None
        if unmade and not config.dry_run:
            from spark_build.upstream.example import make_example_upstream

            make_example_upstream(generated)
            console.print(f"example upstream created at {config.repo}")
            source = plan_source(config, existing_torch)
        steps = STEPS if stop_after is None else STEPS[: [s.name for s in STEPS].index(stop_after) + 1]
        if source is not None:
            config = with_source(config, source)
        return _run(config, console, clock, target, gpu_query, recorded, lock, steps, resume_command, source, prebuilt)


def _run(
    config: BuildConfig,
    console: Console,
    clock: Callable[[], float],
    target: Target,
    gpu_query: GpuQuery,
    recorded: BuildState | None,
    lock: WorkdirLock,
    steps: Sequence[Step],
    resume_command: str,
    source: SourcePlan | None = None,
    prebuilt: Mapping[str, Any] | None = None,
) -> int:
    run_id = new_run_id(time.time(), os.getpid())
    if config.dry_run:
        # A plan changes nothing: its checks log to a scratch folder, `logs/latest` stays put.
        log_dir = Path(tempfile.mkdtemp(prefix="spark-build-dry-run-"))
    else:
        log_dir = config.logs_dir / run_id
        log_dir.mkdir(parents=True, exist_ok=True)
        point_latest(config.logs_dir, log_dir)
    progress = Progress(console, clock=clock)
    state = recorded if recorded is not None else BuildState()
    state.run_id = run_id
    ctx = Context(
        config=config,
        target=target,
        gpu_query=gpu_query,
        runner=Runner(progress, on_group=lock.note_child),
        log_dir=log_dir,
        state=state,
        console=console,
        compiles=any(s.name == "compile" for s in steps),
        resume_command=resume_command,
        gcc_minimum=source.facts.gcc_minimum if source is not None else None,
    )
    by_name = {s.name: s for s in steps}
    try:
        plans = _plan(by_name, ctx, recorded)
    finally:
        if config.dry_run:
            shutil.rmtree(log_dir, ignore_errors=True)
    if config.dry_run:
        progress.plan(plans, {s.name: s.summary for s in steps})
        if source is None:
            console.print(f"target: {target} ({target.origin})  torch: {config.torch_choice}", highlight=False)
        else:
            console.print(f"target: {target} ({target.origin})", highlight=False)
            for line in source.lines(config):
                console.print(line, highlight=False, markup=False)
        return 0
    console.print(f"build {run_id}: {config.repo} @ {config.ref} for {target} in {config.workdir}", highlight=False)
    outcomes: list[StepOutcome] = []
    error: SparkBuildError | None = None
    try:
        with interrupt_signals():
            for p in plans:
                _carry_out(p, by_name[p.name], ctx, progress, clock, outcomes)
    except SparkBuildError as exc:
        error = exc
        raise
    finally:
        _close_run(ctx, console, progress, plans, outcomes, error, prebuilt)
    return 0


def _plan(by_name: Mapping[str, Step], ctx: Context, recorded: BuildState | None) -> list[StepPlan]:
    """What runs and what `--resume` skips; a recorded step is skipped only while its output
    still checks out on disk (`Step.check`)."""

    def still_valid(name: str) -> bool:
        record = ctx.state.record(name)
        return record is not None and by_name[name].check(ctx, record.result)

    return plan(specs_for(list(by_name.values()), ctx), recorded, resume=ctx.config.resume, still_valid=still_valid)


def _close_run(
    ctx: Context,
    console: Console,
    progress: Progress,
    plans: Sequence[StepPlan],
    outcomes: list[StepOutcome],
    error: SparkBuildError | None,
    prebuilt: Mapping[str, Any] | None = None,
) -> None:
    """However the run ended: the steps it never reached, the notes, the timing table, the
    summary.json and the trace — the record a failed build is read from."""
    done = {o.name for o in outcomes}
    outcomes += [StepOutcome(p.name, "not run", 0.0, p.reason) for p in plans if p.name not in done]
    for note in ctx.notes:
        progress.note(note)
    progress.table(outcomes)
    results = {name: rec.result for name, rec in ctx.state.steps.items() if rec.status == "done"}
    summary = summary_payload(
        run_id=ctx.state.run_id,
        exit_code=error.exit_code if error else 0,
        ref=ctx.config.ref,
        arch=ctx.target.arch_list,
        outcomes=outcomes,
        results=results,
        error=error.message if error else None,
        prebuilt=prebuilt,
    )
    path = write_summary(ctx.log_dir, summary)
    console.print(f"logs: {ctx.log_dir}  summary: {path.name}{_trace_note(ctx)}", highlight=False)


def _trace_note(ctx: Context) -> str:
    """Write the run's trace.json; a trace must never fail a build, so a failure is one note."""
    try:
        write_trace(
            ctx.log_dir,
            state_file=ctx.config.state_file,
            build_root=ctx.layout.build_tree,
            ninja=find_tool("ninja", ctx.bin_dirs) or ctx.venv / "bin" / "ninja",
        )
    except (OSError, ValueError, KeyError) as exc:
        return f"  (trace not written: {exc})"
    return "  trace: trace.json (Perfetto, chrome://tracing)"


def _carry_out(
    p: StepPlan,
    step: Step,
    ctx: Context,
    progress: Progress,
    clock: Callable[[], float],
    outcomes: list[StepOutcome],
) -> None:
    """Run one planned step, checkpointing before and after; its outcome joins `outcomes`
    whether it succeeds, fails or is interrupted."""
    if p.action == "skip":
        progress.skip(p.name, p.reason)
        outcomes.append(StepOutcome(p.name, "skipped", 0.0, p.reason))
        skipped = ctx.state.record(p.name)
        ctx.notes.extend(step.skipped_notes(skipped.result if skipped else {}))
        return
    record = StepRecord(
        fingerprint=p.fingerprint, status="running", started=time.time(), run_id=ctx.state.run_id, inputs=dict(p.inputs)
    )
    if not step.volatile:
        # Volatile steps (preflight) are never checkpointed: a bad --ref or a missing nvcc
        # found there must not overwrite the state of a finished build in this workdir.
        ctx.state.steps[p.name] = record
        _save(ctx)
    progress.begin(p.name, step.summary)
    started = clock()

    def close(status: str, code: int, detail: str = "") -> None:
        _finish(ctx, record, status)
        seconds = clock() - started
        progress.end(p.name, status, seconds)
        outcomes.append(StepOutcome(p.name, status, seconds, p.reason, exit_code=code, detail=detail))

    try:
        result: dict[str, Any] = step.run(ctx)
    except InterruptSignal as sig:
        close("interrupted", Interrupted.exit_code)
        raise Interrupted(
            f"stopped by {sig} during {p.name}",
            step=p.name,
            log=ctx.log(p.name),
            hint=f"continue where it stopped with: {ctx.resume_command}",
        ) from None
    except SparkBuildError as exc:
        close("failed", exc.exit_code)
        exc.step = exc.step or p.name
        exc.log = exc.log or ctx.log(p.name)
        explain(exc, ctx.resume_command)
        exc.hint = exc.hint or f"find the cause in the log above, then continue with: {ctx.resume_command}"
        raise
    except Exception as exc:
        close("failed", StepFailed.exit_code)
        raise StepFailed(
            f"{type(exc).__name__}: {exc}",
            step=p.name,
            log=ctx.log(p.name),
            hint="rerun with --debug for the traceback; --resume keeps what is done",
        ) from exc
    record.result = result
    close("done", 0, step.detail(result))


def _finish(ctx: Context, record: StepRecord, status: str) -> None:
    record.status = status
    record.ended = time.time()
    if any(r is record for r in ctx.state.steps.values()):
        _save(ctx)


def _save(ctx: Context) -> None:
    checkpoint.save(ctx.config.state_file, ctx.state)
