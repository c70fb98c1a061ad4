"""The boundary between invoke and the library: resolve options, run, turn errors into exit codes.

Every `SparkBuildError` becomes one clean message and its exit code (bad input 2, failure 1,
interrupted 130); a traceback only with `--debug`.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from spark_build import config as options
from spark_build.errors import SparkBuildError
from spark_build.layout import NIGHTLY_HISTORY

if TYPE_CHECKING:  # the commands import what they use when they run: `invoke --help` stays quick
    import os
    from pathlib import Path

    from packaging.version import Version

    from spark_build.layout import RunFolder
    from spark_build.nightly.completion import BuildTargets
    from spark_build.nightly.prebuilt import PreferWheel
    from spark_build.pipeline.progress import Progress
    from spark_build.proc import Runner
    from spark_build.wheel.proof import Proof
    from spark_build.wheel.repatch import Change


def console() -> Console:
    """The product's console. Logs and cron mail are read later on wider screens than rich's
    80-column default. Markup off: what it prints comes from outside (commands, logs, file text,
    exception messages), and rich would eat `[name]` in them; styles go through `Text`."""
    return Console(highlight=False, markup=False, soft_wrap=False, width=None if sys.stdout.isatty() else 150)


def guarded(action: Callable[[], int], *, debug: bool) -> int:
    """Run `action`, printing a failure as one short message; returns the exit code."""
    try:
        return action()
    except SparkBuildError as exc:
        if debug:
            traceback.print_exc()
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def resume_command(argv: Sequence[str], program: str = "invoke") -> str:
    """The user's own command line to continue a build: the same options (`-f`, `--example`,
    `--arch`, `--workdir` …), `--resume` instead of `--dry-run`, so run as printed it resumes."""
    args = [a for a in argv if a not in ("--resume", "--dry-run")]
    return shlex.join([program, *args, "--resume"])


def _program() -> str:
    """The command the user typed: the installed `spark-build`, else `invoke` (or `python -m invoke`)."""
    return "spark-build" if Path(sys.argv[0]).name == "spark-build" else "invoke"


def build_vllm(
    cli: Mapping[str, Any],
    file: Mapping[str, Any] | None,
    *,
    stop_after: str | None = None,
    prefer: Mapping[str, str | None] | None = None,
    prefer_only: Sequence[str] = (),
) -> int:
    """`invoke build-vllm`, and `invoke arch-plan` (the same steps, stopping after the plan).
    `prefer` (`--prefer-wheel`, with the index and release API to look in): the official wheel
    first. A flag of build-vllm rather than a command of its own, because the fallback is this
    build with these very options (ref, arch, torch, workdir), which a second command would repeat.
    `prefer_only`: flags that mean something only with `--prefer-wheel`, given without it."""
    from spark_build.build import build
    from spark_build.errors import UsageError

    debug = bool(cli.get("debug"))

    def action() -> int:
        if prefer_only:  # a source build would ignore them: say so before anything is written
            raise UsageError(
                f"{', '.join(prefer_only)} works only with --prefer-wheel (it changes what is done with the official "
                "wheel; a source build never downloads one)",
                hint=f"add --prefer-wheel, or drop {', '.join(prefer_only)}",
            )
        cfg = options.resolve(cli, file)
        if prefer is None:
            return build(cfg, console(), stop_after=stop_after, resume_command=resume_command(sys.argv[1:], _program()))
        return _prefer_wheel(cfg, prefer)

    return guarded(action, debug=debug)


def _prefer_wheel(cfg: options.BuildConfig, prefer: Mapping[str, str | None]) -> int:
    import dataclasses
    import os
    import time

    from spark_build.build import build
    from spark_build.errors import UsageError
    from spark_build.layout import RunFolder
    from spark_build.lock import WorkdirLock
    from spark_build.nightly.native import native_patches
    from spark_build.nightly.prebuilt import Decision, prefer_wheel, wanted_for
    from spark_build.pipeline.progress import Progress, new_run_id
    from spark_build.proc import Runner
    from spark_build.steps.changes import changes_for_wheel

    if cfg.example or cfg.dry_run or not cfg.torch_cuda.isdigit():
        raise UsageError(
            "--prefer-wheel takes vLLM's official CUDA wheel: not with --example, --dry-run or --torch-cuda cpu",
            hint="drop --prefer-wheel, or those options",
        )
    out = console()
    wanted = _prefer_options(cfg, prefer)
    release = wanted_for(wanted)  # bad input stops here, before the workdir is touched
    log = cfg.logs_dir / f"prefer-wheel-{time.strftime('%Y%m%d-%H%M%S')}.log"

    def say(line: str) -> None:  # the decision and its reasons, on the terminal and in the log
        out.print(line, highlight=False, markup=False, soft_wrap=True)  # never wrapped: the install line
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"# {line}\n")

    lock = WorkdirLock(cfg.workdir)
    lock.acquire()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        if stopped := lock.stop_leftover():
            say(f"stopped {stopped} leftover process(es) of an earlier, killed build")
        progress = Progress(out)
        runner = Runner(progress, on_group=lock.note_child)

        def git(argv: list[str | os.PathLike[str]]) -> int:
            return runner.run(argv, log=log, step="prebuilt", check=False)

        # --pr and --patch: carried onto the official wheel when they touch Python alone
        changes = changes_for_wheel(cfg.workdir / "changes", cfg.repo, cfg.ref, cfg.prs, cfg.patch_files, git)
        wanted = dataclasses.replace(wanted, changes=changes)

        def from_source(decision: Decision) -> int:
            again = resume_command(sys.argv[1:], _program())
            return build(cfg, out, held=lock, resume_command=again, prebuilt=decision.to_dict())

        patches = () if cfg.no_patches else native_patches(cfg.patches_dir / "vllm")
        run_id = new_run_id(time.time(), os.getpid())
        no_compiler, complete, target_sources = _completion(
            cfg, release.version, wanted.index, log, RunFolder(cfg.logs_dir / run_id), runner, progress, say, git,
            changes,
        )  # fmt: skip
        wanted = dataclasses.replace(
            wanted,
            run_id=run_id,
            arch_list=cfg.arch or "",
            no_compiler=no_compiler,
            accept_missing=bool(prefer.get("accept_missing")),
            native=bool(prefer.get("native")),
            patches=patches,
        )
        prove = _prover(cfg, log, say)
        return prefer_wheel(
            wanted,
            release,
            prove=prove,
            build=from_source,
            say=say,
            run=git,
            complete=complete,
            target_sources=target_sources,
        )
    finally:
        lock.release()


def _completion(
    cfg: options.BuildConfig,
    version: Version,
    index: str,
    log: Path,
    run_folder: RunFolder,
    runner: Runner,
    progress: Progress,
    say: Callable[[str], None],
    git: Callable[[list[str | os.PathLike[str]]], int],
    changes: Sequence[Change],
) -> tuple[str | None, BuildTargets | None, Callable[[], Mapping[str, Sequence[str]]] | None]:
    """Why no completion can be built here (None when one can); the builder of extension targets
    for `--arch` from the release's own source (its sdist, else `--repo`'s tag; our patches and
    the changes to compiled code applied) and CMake, against the torch the release pins; and
    what the release's configure says each target compiles (for `--pr`/`--patch`). The targets
    compile as the compile step compiles (`nightly.completion_build`)."""
    import functools
    import json
    import os

    from spark_build.arch.target_sources import target_sources
    from spark_build.compile.extension_targets import TargetBuild, configure_targets
    from spark_build.compile.jobplan import cpu_count
    from spark_build.nightly import completion_build, completion_source
    from spark_build.steps.changes import apply_change
    from spark_build.steps.validate import extra_index
    from spark_build.upstream.facts import builds_against_torch, exact_torch, read_torch_pin

    nvcc = cfg.cuda_home / "bin" / "nvcc"
    if not os.access(nvcc, os.X_OK):
        return f"no nvcc at {nvcc} (--cuda-home)", None, None
    if cfg.torch == "existing" and completion_build.find_ninja(Path(cfg.python).parent) is None:
        # Otherwise the completion's own build venv gets cmake and ninja with its torch.
        return f"no ninja beside {cfg.python} or on PATH", None, None
    folder = cfg.workdir / "completion"
    compiled = [(c.label, c.diff) for c in changes if not c.python_only]

    @functools.cache  # once per run: the tree, then the toolchain, are made or checked once
    def tree() -> Path:
        sdist = completion_source.find_sdist(
            version, index=index, wheels=cfg.wheels, cache=cfg.layout.cache / "releases", offline=cfg.offline, say=say
        )
        if isinstance(sdist, Path):
            made: Path | Callable[[Path], Path] = sdist
            origin = sdist.name
        else:
            say(f"prebuilt: {sdist}; taking the release's tag from {cfg.repo}")
            made = lambda dest: completion_source.clone_release(cfg.repo, cfg.ref, dest, git)  # noqa: E731
            origin = f"{cfg.repo} {cfg.ref}"
        source, notes = completion_source.prepare_tree(
            made, origin, version, folder, patches_dir=cfg.patches_dir, changes=compiled,
            apply_change=lambda src, diff, label: apply_change(src, diff, label, git), run=git,
        )  # fmt: skip
        for note in notes:
            say(f"prebuilt: {note}")
        return source

    @functools.cache
    def tools() -> completion_build.Toolchain:
        # The torch the release's wheel pins (its requirements/cuda.txt), where its CMake uses torch.
        cmake_text = (tree() / "CMakeLists.txt").read_text(encoding="utf-8")
        pin = read_torch_pin(tree()) if builds_against_torch(cmake_text) else None
        torch = exact_torch(pin.packages) if pin else None
        python, found = completion_build.build_python(
            str(torch) if torch else None,
            existing=Path(cfg.python) if cfg.torch == "existing" else None,
            base=cfg.python,
            venv=folder / "venv",
            installer=cfg.installer,
            index=extra_index(pin.index) if pin else None,
            run=lambda argv: runner.run(list(argv), log=log, step="complete", check=False),
            say=say,
        )
        made = completion_build.toolchain(
            python, found, cuda_home=cfg.cuda_home, stub_dir=folder / "stubs", runner=runner, log=log
        )
        for note in made.notes:
            say(f"prebuilt: {note}")
        return made

    def spec(targets: Sequence[str], build_dir: Path) -> TargetBuild:
        scoped = completion_source.scope(
            tree(), targets, version, sources_cache=cfg.layout.sources_cache, mirrors=cfg.source_mirrors,
            offline=cfg.offline,
        )  # fmt: skip
        for note in scoped.notes:
            say(f"prebuilt: {note}")
        made = tools()
        return TargetBuild(
            scoped.tree, build_dir, folder / "stage", cfg.arch or "", made.cmake, cfg.cuda_home, made.python,
            cpu_count(), build_type=cfg.build_type, cmake_args=made.cmake_args, env={**scoped.env, **made.env},
        )  # fmt: skip

    complete = completion_build.completion_builder(
        cfg, run_folder, runner, progress, say, lambda targets: (spec(targets, folder / "build"), tools().ninja)
    )

    def sources() -> Mapping[str, Sequence[str]]:
        # A configure of CMakeLists.txt's own targets, in a folder of its own: the build's is
        # configured for the targets it builds.
        commands = configure_targets(spec((), folder / "scope"), runner, log)
        return target_sources(json.loads(commands.read_text()), tree())

    return None, complete, sources


def _prefer_options(cfg: options.BuildConfig, prefer: Mapping[str, str | None]) -> PreferWheel:
    """`--prefer-wheel`'s options, resolved from the build's (the nightly judges a wheel by them too)."""
    from spark_build.nightly.official import GITHUB_RELEASES, PACKAGE_INDEX
    from spark_build.nightly.prebuilt import PreferWheel

    existing = cfg.torch == "existing"
    return PreferWheel(
        ref=cfg.ref,
        arch=cfg.arch or "?",
        cuda_major=int(cfg.torch_cuda),
        wheelhouse=cfg.wheelhouse,
        logs_dir=cfg.logs_dir,
        torch_index=cfg.torch_index,
        torch_asked=cfg.torch_packages if not existing else (),
        torch_existing=_existing_torch(cfg.python) if existing else None,
        python=cfg.python,
        install_venv=None if existing else cfg.layout.install_venv,
        index=prefer.get("index") or PACKAGE_INDEX,
        releases=prefer.get("releases") or GITHUB_RELEASES,
        wheels=cfg.wheels,
        offline=cfg.offline,
    )


def _prover(cfg: options.BuildConfig, log: Path, say: Callable[[str], None]) -> Callable[[Path], Proof]:
    """The validate step's proof of a downloaded wheel, for `--prefer-wheel` and the nightly. A
    command of it that fails keeps its cause: the log's decisive line goes into the error."""
    from spark_build.errors import StepFailed
    from spark_build.insight.diagnose import explain
    from spark_build.proc import Runner, interrupt_signals
    from spark_build.steps.validate import wheel_proof
    from spark_build.wheel.proof import prove_wheel

    def prove(wheel: Path) -> Proof:
        say(f"prebuilt: validating {wheel.name} in a fresh venv; log: {log}")
        try:
            with interrupt_signals():
                proof = prove_wheel(wheel_proof(cfg, wheel, requirements=(), serve=None), Runner(), log)
        except StepFailed as err:
            err.log = err.log or log
            explain(err)
            raise
        proof.render(console())
        return proof

    return prove


def _existing_torch(python: str) -> Version:
    """The torch `--python` has (`--torch existing`): the official wheel must fit it, not replace it."""
    from packaging.version import InvalidVersion, Version

    from spark_build.errors import UsageError
    from spark_build.host.query import run_command

    status, output = run_command([python, "-c", "import torch; print(torch.__version__)"])
    lines = output.strip().splitlines()
    if status == 0 and lines:
        with contextlib.suppress(InvalidVersion):
            return Version(lines[-1])
    raise UsageError(
        f"--torch existing: {python} has no importable torch", hint="give --python an interpreter with torch"
    )


def doctor(cli: Mapping[str, Any], file: Mapping[str, Any] | None, *, as_json: bool) -> int:
    from spark_build.host.doctor import run_doctor
    from spark_build.host.needs import EXAMPLE_NEEDS, VLLM_NEEDS
    from spark_build.upstream.facts import read_gcc_minimum

    def action() -> int:
        cfg = options.resolve(cli, file)
        layout = cfg.layout
        python = layout.python if layout.python.exists() else None
        needs = EXAMPLE_NEEDS if cfg.example else VLLM_NEEDS
        # The workdir's source, once cloned, says which GCC its configure accepts.
        gcc = read_gcc_minimum(layout.src)
        return run_doctor(
            cfg.workdir, layout.cache, cfg.arch, as_json, console(), python=python, needs=needs, gcc_minimum=gcc
        )

    return guarded(action, debug=False)


def nightly(
    cli: Mapping[str, Any],
    file: Mapping[str, Any] | None,
    *,
    url: str | None,
    force: bool,
    notify: list[str],
    lock_wait: float,
    index: str | None = None,
    releases: str | None = None,
) -> int:
    """`invoke nightly`: keep the wheel mirrored while it exists, rebuild when it is gone. The wheel
    is vLLM's official one of the configured `--ref` (CUDA major, this CPU), looked up as
    `--prefer-wheel` does, in `index` and `releases`, and judged as it does (the proof for `--arch`,
    the user's torch) before the wheelhouse's index lists it; `url` watches that one URL instead."""
    import dataclasses
    import platform
    import time
    from pathlib import Path

    from spark_build.build import build
    from spark_build.errors import BuildLocked, UsageError
    from spark_build.host.facts import query_gpus
    from spark_build.host.target import resolve_target
    from spark_build.lock import WorkdirLock
    from spark_build.nightly.official import GITHUB_RELEASES, PACKAGE_INDEX, check_lookup_urls
    from spark_build.nightly.prebuilt import DOWNLOADS, judge
    from spark_build.nightly.schedule import schedule_status
    from spark_build.nightly.watch import OfficialRelease, Outcome, PinnedUrl, Watched, skipped_locked
    from spark_build.nightly.watch import nightly as watch
    from spark_build.pipeline import state
    from spark_build.wheel.wheelhouse import write_indexes

    def action() -> int:
        cfg = options.resolve(cli, file)
        out = console()
        watched: Watched
        official = not url and cfg.torch_cuda.isdigit()  # vLLM publishes no CPU wheel to judge
        if url:
            watched = PinnedUrl(url)
        else:
            if cfg.offline:  # else every night fails on an unreachable host, saying nothing of why
                raise UsageError(
                    "nightly watches vLLM's published wheel, which an offline build (offline: true) cannot reach",
                    hint="schedule `invoke build-vllm --resume` instead, or give --url the wheel's address on a "
                    "mirror this machine reaches",
                )
            check_lookup_urls(index or PACKAGE_INDEX, releases or GITHUB_RELEASES)  # bad input: before any write
            if official:  # the proof is for --arch, else for this host's GPU
                resolve_target(cfg.arch, query_gpus().gpus)
            cuda = int(cfg.torch_cuda) if cfg.torch_cuda.isdigit() else None
            watched = OfficialRelease(
                cfg.ref, cuda, platform.machine(), index or PACKAGE_INDEX, releases or GITHUB_RELEASES
            )
        history = cfg.logs_dir / NIGHTLY_HISTORY
        log_path = cfg.logs_dir / f"nightly-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        def say(line: str) -> None:
            out.print(line, highlight=False, markup=False, soft_wrap=True)
            with log_path.open("a") as handle:
                handle.write(line + "\n")

        lock = WorkdirLock(cfg.workdir)
        try:
            lock.acquire(wait=lock_wait)
        except BuildLocked as exc:
            outcome = skipped_locked(watched.url, exc.message, history_path=history, log_path=log_path)
            say(outcome.line())
            return outcome.exit_code

        def rebuild() -> Path:
            # Resume an unfinished (or finished) build of the same inputs rather than start over.
            resumable = dataclasses.replace(cfg, resume=cfg.state_file.exists())
            build(resumable, out, held=lock)
            recorded = state.load(cfg.state_file)
            assert recorded is not None
            return Path(recorded.steps["publish"].result["path"])

        def refusal(wheel: Path) -> str | None:
            """Why the official wheel is not mirrored (None: proven), judged as --prefer-wheel judges it."""
            prefer = _prefer_options(cfg, {"index": index, "releases": releases})
            verdict = judge(wheel, prefer, _prover(cfg, log_path, say))
            return verdict if isinstance(verdict, str) else None

        try:
            outcome = watch(
                watched,
                cfg.wheelhouse / "vllm",
                build=rebuild,
                history_path=history,
                force=force,
                notify=notify or None,
                log_path=log_path,
                say=say,
                judge=refusal if official else None,
                staging=cfg.wheelhouse / DOWNLOADS,
            )
            write_indexes(cfg.wheelhouse)
        finally:
            lock.release()
        say(outcome.line())
        if outcome.outcome is Outcome.FAILED:
            say(f"nightly: {schedule_status(history_path=history).after_failure()}")
        return outcome.exit_code

    return guarded(action, debug=bool(cli.get("debug")))


def schedule(
    cli: Mapping[str, Any],
    file: Mapping[str, Any] | None,
    *,
    at: str,
    use_cron: bool,
    remove: bool,
    status: bool,
    invoke_argv: list[str],
) -> int:
    """`invoke schedule`: install, remove or show the nightly timer (systemd) or crontab entry."""
    import os

    from spark_build.nightly import schedule as timer

    def action() -> int:
        cfg = options.resolve(cli, file)
        out = console()
        history = cfg.logs_dir / NIGHTLY_HISTORY
        if status:
            for line in timer.schedule_status(history_path=history).lines():
                out.print(line, highlight=False)
            return 0
        if remove:
            result = timer.remove_cron() if use_cron else timer.remove_systemd()
        else:
            command = [*invoke_argv, "nightly", "--workdir", str(cfg.workdir), "--logs-dir", str(cfg.logs_dir)]
            # cron and systemd start with a bare PATH: nvcc, git and uv must still be found at 03:30.
            environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            if use_cron:
                result = timer.install_cron(at, command, cfg.workdir, cfg.logs_dir, environment=environment)
            else:
                result = timer.install_systemd(at, command, cfg.workdir, cfg.logs_dir, environment=environment)
        for line in result.lines:
            out.print(line, highlight=False)
        return 0

    return guarded(action, debug=False)


def validate(
    wheel: str, cli: Mapping[str, Any], file: Mapping[str, Any] | None, *, serve: bool = False, extra: list[str]
) -> int:
    """`invoke validate WHEEL`: the validate step's proof for any wheel, also a downloaded one."""
    import time
    import zipfile
    from pathlib import Path

    from spark_build.errors import UsageError
    from spark_build.proc import Runner, interrupt_signals
    from spark_build.steps.validate import wheel_proof
    from spark_build.wheel.proof import prove_wheel

    def action() -> int:
        cfg = options.resolve(cli, file)
        path = Path(wheel).expanduser().resolve()
        if not path.is_file() or path.suffix != ".whl":
            raise UsageError(f"no wheel at {path}", hint="give the path of a .whl file")
        if not zipfile.is_zipfile(path):
            raise UsageError(f"{path} is not a wheel (not a zip archive)", hint="download or build the wheel again")
        log = cfg.logs_dir / f"validate-{time.strftime('%Y%m%d-%H%M%S')}.log"
        unmet_list = log.with_name(f"{log.stem}-missing-requirements.txt")
        proof = wheel_proof(cfg, path, requirements=extra, serve=serve, unmet_list=unmet_list)
        out = console()

        def say(line: str) -> None:  # module names, notes and errors come from outside: never markup
            out.print(line, highlight=False, markup=False)

        say(f"validating {path.name} in a fresh venv ({proof.venv}); log: {log}")
        with interrupt_signals():
            outcome = prove_wheel(proof, Runner(), log)
        outcome.render(out)
        unproven = outcome.results["imports_unproven"]
        for module, imported in outcome.results["imports"].items():
            mark = "✓" if imported else "?" if module in unproven else "✕"
            say(f"{mark} import {module}{' (not proven on this host)' if mark == '?' else ''}")
        for note in outcome.results["import_notes"]:
            say(f"  {note}")
        served = outcome.results.get("serve")
        if served:
            mark = "✓" if served["passed"] else "✕"
            say(f"{mark} served {served['model']}: {served['failure'] or 'completion and chat answered'}")
        outcome.raise_if_failed(step="validate", log=log)
        if unproven:
            say(f"✓ {path.name}: linkage and GPU code check out; {len(unproven)} imports not proven on this host")
        else:
            say(f"✓ {path.name}: imports, linkage, GPU code{' and serving' if served else ''} check out")
        return 0

    return guarded(action, debug=bool(cli.get("debug")))


def report(
    cli: Mapping[str, Any], file: Mapping[str, Any] | None, *, run: str | None, as_json: bool, html: str | None
) -> int:
    from pathlib import Path

    from spark_build.insight.report import report_main

    def action() -> int:
        logs_dir = options.resolve(cli, file).logs_dir
        return report_main(logs_dir, run, as_json, console(), html=Path(html) if html else None)

    return guarded(action, debug=False)


def release_watch(
    cli: Mapping[str, Any], file: Mapping[str, Any] | None, *, as_json: bool, index: str | None, audit: bool
) -> int:
    """`invoke recipe --check-new`: every release newer than the patch series was tested on."""
    import json
    import os
    import platform
    import sys
    from pathlib import Path

    from spark_build.arch.archlist import recipe_arch
    from spark_build.arch.target import Target
    from spark_build.errors import UsageError
    from spark_build.layout import user_cache
    from spark_build.nightly.official import PACKAGE_INDEX, check_lookup_urls
    from spark_build.nightly.release_watch import check_new
    from spark_build.upstream.facts_report import facts_lines
    from spark_build.wheel.archaudit import find_cuobjdump

    cfg = options.resolve(cli, file)
    arch = recipe_arch(cfg.arch or "12.1a")
    index = index or PACKAGE_INDEX
    check_lookup_urls(index, "https://")
    series = cfg.patches_dir / "vllm"
    if not (series / "series").is_file():
        raise UsageError(
            f"no patch series in {series}", hint="point --patches-dir at the folder that holds vllm/series"
        )
    cuobjdump = find_cuobjdump(cfg.cuda_home, os.environ, venv=Path(sys.prefix)) if audit else None
    out = console()

    def say(line: str) -> None:
        out.print(line, highlight=False, markup=False)

    watch = check_new(
        index,
        series,
        user_cache() / "releases",
        arch=arch,
        target=Target.from_option(arch).newest,
        machine=platform.machine(),
        cuobjdump=cuobjdump,
        say=say if not as_json else lambda _line: None,
    )
    if as_json:
        rows = [
            {
                "version": str(r.version),
                "recipe": r.facts.to_dict(),
                "patches": [{"patch": p.name, "outcome": p.outcome} for p in r.patches],
                "wheel": {
                    "filename": r.wheel.filename,
                    "summary": r.wheel.summary,
                    "audit": r.wheel.report.to_dict() if r.wheel.report else None,
                },
            }
            for r in watch.releases
        ]
        print(json.dumps({"tested_below": str(watch.tested_below), "releases": rows}, indent=2))
        return 0
    say(watch.headline())
    for release in watch.releases:
        for line in release.lines():
            say(line)
        outlook = tuple(f"{p.name} ({p.outcome})" for p in release.patches)
        for line in facts_lines(f"  recipe of {release.version}", release.facts, outlook)[1:]:
            say(f"  {line}")
    return 0


def history(cli: Mapping[str, Any], file: Mapping[str, Any] | None, *, as_json: bool) -> int:
    from spark_build.insight.report import history_main

    return guarded(lambda: history_main(options.resolve(cli, file).logs_dir, as_json, console()), debug=False)


def recipe(
    cli: Mapping[str, Any],
    file: Mapping[str, Any] | None,
    *,
    sources: list[str],
    as_json: bool,
    markdown: bool,
    check_new: bool = False,
    wheel_index: str | None = None,
    wheel_audit: bool = True,
) -> int:
    """`invoke recipe`: the recipe facts of `--ref` (or of source folders and sdists), read by rules;
    with `check_new`, the release watch over the package index instead."""
    if check_new:
        return guarded(
            lambda: release_watch(cli, file, as_json=as_json, index=wheel_index, audit=wheel_audit),
            debug=bool(cli.get("debug")),
        )
    import json
    import tempfile
    from pathlib import Path

    from packaging.version import Version

    from spark_build.arch.archlist import recipe_arch
    from spark_build.errors import UsageError
    from spark_build.upstream.facts import SourceFacts, read_facts
    from spark_build.upstream.facts_report import facts_lines, markdown_table
    from spark_build.upstream.patches import find_series
    from spark_build.upstream.refs import read_recipe_files, resolve_ref
    from spark_build.upstream.sdist import unpack_recipe_files

    def action() -> int:
        cfg = options.resolve(cli, file)
        arch = recipe_arch(cfg.arch or "12.1a")

        def covering(facts: SourceFacts) -> tuple[str, ...]:
            """Our patches whose release range covers this source (patches/vllm/), then those the
            patch step tries beyond their tested range."""
            series = find_series(cfg.patches_dir, "vllm", Version(facts.version)) if facts.version else None
            if series is None:
                return ()
            return (*(p.name for p in series.patches), *(f"{p.name} ({p.beyond_note()})" for p in series.beyond))

        paths = [Path(s).expanduser().resolve() for s in sources]
        missing = [str(p) for p in paths if not p.is_dir() and not p.name.endswith((".tar.gz", ".tgz"))]
        missing += [str(p) for p in paths if p.name.endswith((".tar.gz", ".tgz")) and not p.is_file()]
        if missing:
            raise UsageError(
                f"--source {', '.join(missing)}: not a source folder or sdist",
                hint="give a vLLM checkout or vllm-X.tar.gz",
            )
        read: list[tuple[str, SourceFacts]] = []
        with tempfile.TemporaryDirectory(prefix="spark-build-recipe-") as scratch:
            if not paths:
                resolved = resolve_ref(cfg.repo, cfg.ref)
                tree = Path(scratch) / "ref"
                read_recipe_files(cfg.repo, resolved.name, tree)
                read.append((f"{cfg.repo} @ {resolved.describe()}", read_facts(tree, resolved.version, arch=arch)))
            for number, path in enumerate(paths):
                tree = path if path.is_dir() else unpack_recipe_files(path, Path(scratch) / str(number))
                read.append((str(path), read_facts(tree, arch=arch)))
        out = console()
        if as_json:
            rows = [{"source": label, **facts.to_dict(), "patches": covering(facts)} for label, facts in read]
            print(json.dumps(rows, indent=2))
        elif markdown:
            print(markdown_table([(facts, covering(facts)) for _, facts in read]), end="")
        else:
            for label, facts in read:
                for line in facts_lines(label, facts, covering(facts)):
                    out.print(line, highlight=False, markup=False)
        return 0

    return guarded(action, debug=bool(cli.get("debug")))
