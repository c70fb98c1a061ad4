"""spark-build's commands. Thin: each task parses its options and calls one library function.

invoke build-vllm --arch 12.1a          # build, validate and publish vLLM for a DGX Spark
invoke build-vllm --resume              # continue after a crash, OOM or Ctrl-C
invoke build-vllm --example --dry-run   # show the plan for the built-in example
"""

from __future__ import annotations

from typing import Any

from invoke import Context, task
from invoke.exceptions import Exit


def _file_options(c: Context) -> Any:
    """The `spark_build:` section of invoke.yaml (or a file given with `invoke -f`), as read:
    a section of the wrong shape is refused by config.resolve, as bad input."""
    section = c.config.get("spark_build", None) or {}
    return dict(section) if hasattr(section, "keys") else section


def _exit(code: int) -> None:
    if code:
        raise Exit(code=code)


BUILD_HELP = {
    "ref": "vLLM tag, branch or commit to build; 'latest' for the newest release tag, 'main' for the development "
    "branch (default: the release pinned in spark_build/config.py, VLLM_DEFAULT_REF; v0.2.0 with --example)",
    "repo": "git URL or local path of the source (default: vLLM upstream; a generated example with --example)",
    "workdir": "where the venv, source, build tree, state and wheelhouse live (default ./work)",
    "arch": "TORCH_CUDA_ARCH_LIST target, e.g. 12.1a for a DGX Spark (default: read from the GPU)",
    "jobs": "compile jobs (MAX_JOBS); default 'auto' plans them from free memory and cores",
    "nvcc-threads": "threads per nvcc job (NVCC_THREADS); default 'auto'",
    "mem-budget": "cap on memory the compile may use, e.g. 64G (leave room for a running model)",
    "mem-reserve": "memory kept free for everything else while compiling (default 4G)",
    "python": "Python for the build venv (default: the one running spark-build)",
    "torch-index": "index URL or local wheel folder to install torch from (default: PyTorch's cu130 index)",
    "torch-packages": (
        "torch requirements to install, space separated (default: what the --ref release pins, "
        "for v0.13.0 torch==2.9.0 torchvision==0.24.0 torchaudio==2.9.0; else the newest)"
    ),
    "torch-cuda": "CUDA major the torch build must have, or 'cpu' (default 13)",
    "torch": "'install' (default: --torch-packages from --torch-index) or 'existing': build against the torch "
    "--python already has (NVIDIA's PyTorch container, an air-gapped lab)",
    "wheels": "a folder of wheels every install reads instead of a package index (offline builds)",
    "ninja": "'scheduling' (default: a Ninja built once per machine that starts vLLM's longest objects first) or "
    "'stock' (the build venv's Ninja, objects in manifest order)",
    "cache": "compiler cache: auto (default: ccache, local), local, none, or redis://[:PASSWORD@]HOST:PORT/DB to "
    "share compiled objects between Sparks",
    "cache-size": "size limit of the local compiler cache, with a unit (default 20G)",
    "cache-dir": "where the local compiler cache lives (default ~/.cache/spark-build/compiler-cache/ccache, shared "
    "by all your workdirs; with --dist WORKDIR/compiler-cache/sccache)",
    "dist": "sccache-dist scheduler URL: spread the compile over several machines (docs/sccache-dist.md)",
    "dist-token-file": "file holding the sccache-dist client token (needed with --dist)",
    "cuda-home": "CUDA toolkit root (default $CUDA_HOME or /usr/local/cuda)",
    "wheelhouse": "local PEP 503 folder to publish into (default WORKDIR/wheelhouse)",
    "logs-dir": "where per-run logs go (default WORKDIR/logs)",
    "uv-cache-dir": "uv's download cache (default: uv's own, shared between builds)",
    "serve-model": "model for the serve check: a local path or a cached Hugging Face name (default: a small "
    "instruct model from the HF cache, else a generated tiny Llama)",
    "no-serve": "skip the serve check in validate",
    "example": "build the built-in example upstream instead of vLLM (for machines without a GB10)",
    "no-patches": "build pristine source: skip the patch series in patches/",
    "resume": "continue the build in WORKDIR, skipping steps that are done and still check out",
    "dry-run": "print the plan (each step, what it does, whether --resume would skip it) and stop",
    "debug": "show tracebacks",
}
PREFER_ARGS = ("prefer_wheel", "wheel_index", "wheel_releases", "accept_missing", "native")
# What the nightly needs of the build's options: the release, and what its official wheel is judged by
NIGHTLY_BUILD_OPTIONS = ("ref", "arch", "python", "torch", "torch-index", "torch-packages", "torch-cuda", "cuda-home")
CHANGES_HELP = {
    "pr": "an upstream pull request to apply on top of --ref: its number or GitHub URL (repeatable); "
    "its change against its merge base with the ref, git apply --3way, skipped when already in the ref",
    "patch": "a local patch file to apply on top of --ref the same way (repeatable; offline, a PR's diff)",
}
PREFER_HELP = {
    "prefer-wheel": "take vLLM's official wheel for the --ref release when it validates for --arch and fits your "
    "torch; else build from source (and say why)",
    "accept-missing": "with --prefer-wheel where no compiler can complete the official wheel: take it without the "
    "extensions it lacks for --arch (the run says which will not run) instead of the source build",
    "native": "with --prefer-wheel: also rebuild, for --arch, the extensions whose kernels the official wheel runs "
    "there only by PTX JIT (minutes of driver JIT at the first model load), where the release's CMake and our "
    "patches compile them for 12.x; the others are named with their JIT bill",
    "wheel-index": "package index the official wheel is looked up in from vLLM 0.20 on (default PyPI's simple API)",
    "wheel-releases": "GitHub release API the official +cu130 wheel is looked up in up to vLLM 0.19 "
    "(default api.github.com/repos/vllm-project/vllm/releases)",
}


@task(auto_shortflags=False, iterable=["pr", "patch"], help={**BUILD_HELP, **CHANGES_HELP, **PREFER_HELP})
def build_vllm(
    c: Context,
    ref: str | None = None,
    repo: str | None = None,
    workdir: str | None = None,
    arch: str | None = None,
    jobs: str | None = None,
    nvcc_threads: str | None = None,
    mem_budget: str | None = None,
    mem_reserve: str | None = None,
    python: str | None = None,
    torch_index: str | None = None,
    torch_packages: str | None = None,
    torch_cuda: str | None = None,
    torch: str | None = None,
    ninja: str | None = None,
    wheels: str | None = None,
    cuda_home: str | None = None,
    wheelhouse: str | None = None,
    logs_dir: str | None = None,
    uv_cache_dir: str | None = None,
    serve_model: str | None = None,
    no_serve: bool = False,
    cache: str | None = None,
    cache_size: str | None = None,
    cache_dir: str | None = None,
    dist: str | None = None,
    dist_token_file: str | None = None,
    example: bool = False,
    no_patches: bool = False,
    resume: bool = False,
    dry_run: bool = False,
    debug: bool = False,
    prefer_wheel: bool = False,
    wheel_index: str | None = None,
    wheel_releases: str | None = None,
    accept_missing: bool = False,
    native: bool = False,
    pr: list[str] | None = None,
    patch: list[str] | None = None,
) -> None:
    """Build, validate and publish a vLLM wheel for this GPU; resumable with --resume.
    With --prefer-wheel, the official wheel first (minutes, not a 40-minute compile)."""
    prefer = (
        {
            "index": wheel_index,
            "releases": wheel_releases,
            "accept_missing": "yes" if accept_missing else None,
            "native": "yes" if native else None,
        }
        if prefer_wheel
        else None
    )
    cli = {k: v for k, v in locals().items() if k not in ("c", "prefer", "pr", "patch", *PREFER_ARGS)}
    cli.update(prs=pr or None, patch_files=patch or None)
    from spark_build.cli import build_vllm as run

    given = (("--native", native), ("--accept-missing", accept_missing))
    prefer_only = [] if prefer_wheel else [flag for flag, on in given if on]
    _exit(run(cli, _file_options(c), prefer=prefer, prefer_only=prefer_only))


@task(
    auto_shortflags=False,
    help={
        k: BUILD_HELP[k]
        for k in (
            "ref",
            "repo",
            "workdir",
            "arch",
            "python",
            "torch-index",
            "torch-packages",
            "torch-cuda",
            "torch",
            "wheels",
            "cuda-home",
            "logs-dir",
            "uv-cache-dir",
            "no-patches",
            "resume",
            "debug",
        )
    },
)
def arch_plan(
    c: Context,
    ref: str | None = None,
    repo: str | None = None,
    workdir: str | None = None,
    arch: str | None = None,
    python: str | None = None,
    torch_index: str | None = None,
    torch_packages: str | None = None,
    torch_cuda: str | None = None,
    torch: str | None = None,
    wheels: str | None = None,
    cuda_home: str | None = None,
    logs_dir: str | None = None,
    uv_cache_dir: str | None = None,
    no_patches: bool = False,
    resume: bool = False,
    debug: bool = False,
) -> None:
    """Before compiling: which vLLM kernels will run on the target GPU natively, by PTX JIT, or not at all.

    Runs build-vllm's steps up to vLLM's own CMake configure (no compile) and prints the table."""
    cli = {k: v for k, v in locals().items() if k != "c"}
    from spark_build.cli import build_vllm as run

    _exit(run(cli, _file_options(c), stop_after="arch-plan"))


@task(
    auto_shortflags=False,
    help={
        "workdir": "the build's workdir (free disk is checked there; default ./work)",
        "arch": "target to check nvcc and the GPU against, e.g. 12.1a (default: read from the GPU)",
        "json": "print the checks as JSON",
        "example": "judge disk and memory for the built-in example rather than vLLM",
    },
)
def doctor(
    c: Context, workdir: str | None = None, arch: str | None = None, json: bool = False, example: bool = False
) -> None:
    """Check this machine can build: GPU, nvcc, driver, memory, disk, torch, PATH. Exit 1 when not."""
    cli = {"workdir": workdir, "arch": arch, "example": example}
    from spark_build.cli import doctor as run

    _exit(run(cli, _file_options(c), as_json=json))


@task(
    auto_shortflags=False,
    iterable=["notify"],
    help={
        "url": "watch this one wheel URL instead of vLLM's official wheel of the configured --ref release",
        "wheel-index": PREFER_HELP["wheel-index"],
        "wheel-releases": PREFER_HELP["wheel-releases"],
        "force": "rebuild even when the pinned wheel exists",
        "notify": "command to run after a rebuild or failure, one argument per --notify (no shell)",
        "lock-wait": "seconds to wait for a running build in the workdir before skipping (default 600)",
        "workdir": "the build's workdir (default ./work)",
        "logs-dir": "where logs and the nightly history go (default WORKDIR/logs)",
        **{k: BUILD_HELP[k] for k in NIGHTLY_BUILD_OPTIONS},
    },
)
def nightly(
    c: Context,
    url: str | None = None,
    force: bool = False,
    notify: list[str] | None = None,
    lock_wait: str = "600",
    workdir: str | None = None,
    logs_dir: str | None = None,
    wheel_index: str | None = None,
    wheel_releases: str | None = None,
    ref: str | None = None,
    arch: str | None = None,
    python: str | None = None,
    torch: str | None = None,
    torch_index: str | None = None,
    torch_packages: str | None = None,
    torch_cuda: str | None = None,
    cuda_home: str | None = None,
) -> None:
    """Mirror vLLM's official wheel of --ref while it proves itself for --arch; rebuild when gone or refused.

    The wheel is looked up and judged as --prefer-wheel does; --url watches one fixed wheel URL instead.
    The build's options (--ref, --arch, --torch …) here, or from invoke.yaml's spark_build section or
    SPARK_BUILD_* variables. Exit 0 present, 10 mirrored, 11 rebuilt (gone or refused), 1 failed,
    75 skipped (another build ran)."""
    from spark_build.cli import nightly as run

    if not lock_wait.isdigit():
        raise Exit(f"error: --lock-wait must be whole seconds, got '{lock_wait}'\n  fix: --lock-wait 600", code=2)
    cli = {"workdir": workdir, "logs_dir": logs_dir, "ref": ref, "arch": arch, "python": python, "torch": torch}
    cli.update(torch_index=torch_index, torch_packages=torch_packages, torch_cuda=torch_cuda, cuda_home=cuda_home)
    _exit(
        run(
            cli,
            _file_options(c),
            url=url,
            force=force,
            notify=list(notify or []),
            lock_wait=float(lock_wait),
            index=wheel_index,
            releases=wheel_releases,
        )
    )


@task(
    auto_shortflags=False,
    help={
        "at": "local time of the nightly run, HH:MM (default 03:30)",
        "cron": "use a crontab entry instead of a systemd user timer",
        "remove": "remove the timer or crontab entry",
        "status": "show what is installed, the next run and the last outcome",
        "workdir": "the build's workdir (default ./work)",
        "logs-dir": "where the nightly logs go (default WORKDIR/logs)",
    },
)
def schedule(
    c: Context,
    at: str = "03:30",
    cron: bool = False,
    remove: bool = False,
    status: bool = False,
    workdir: str | None = None,
    logs_dir: str | None = None,
) -> None:
    """Install the nightly wheel watch as a systemd user timer (default) or a crontab entry."""
    import sys
    from pathlib import Path

    from spark_build.cli import schedule as run

    root = str(Path(__file__).resolve().parent)
    invoke_argv = [sys.executable, "-m", "invoke", "--search-root", root]
    cli = {"workdir": workdir, "logs_dir": logs_dir}
    _exit(run(cli, _file_options(c), at=at, use_cron=cron, remove=remove, status=status, invoke_argv=invoke_argv))


@task(
    auto_shortflags=False,
    iterable=["with_package"],
    help={
        "wheel": "the .whl to prove (built here or downloaded)",
        "arch": "target GPU arch, e.g. 12.1a (default: read from the GPU)",
        "workdir": "where the fresh venv is made (default ./work)",
        "logs-dir": "where the log goes (default WORKDIR/logs)",
        "torch-index": "index URL or wheel folder for torch (default: PyTorch's cu130 index)",
        "with-package": "a requirement to install beside the wheel, e.g. the torch it was built against "
        "(repeatable; default none: the wheel's own dependencies only)",
        "torch-cuda": "CUDA major to audit linkage against, or 'cpu' to take nvcc's (default 13)",
        "python": "Python for the fresh venv (with --torch existing: the one whose torch it inherits)",
        "torch": BUILD_HELP["torch"],
        "wheels": BUILD_HELP["wheels"],
        "uv-cache-dir": "uv's download cache",
        "serve": "also serve a model from the wheel and ask it for a completion and a chat completion",
        "serve-model": "model to serve: local path or cached Hugging Face name (default: HF cache, else a tiny Llama)",
        "debug": "show tracebacks",
    },
)
def validate(
    c: Context,
    wheel: str,
    arch: str | None = None,
    workdir: str | None = None,
    logs_dir: str | None = None,
    torch_index: str | None = None,
    with_package: list[str] | None = None,
    torch_cuda: str | None = None,
    python: str | None = None,
    torch: str | None = None,
    wheels: str | None = None,
    uv_cache_dir: str | None = None,
    serve: bool = False,
    serve_model: str | None = None,
    debug: bool = False,
) -> None:
    """Prove any wheel: fresh venv install, imports, linkage audit, GPU-code audit; tables printed."""
    cli = {k: v for k, v in locals().items() if k not in ("c", "wheel", "serve", "with_package")}
    from spark_build.cli import validate as run

    _exit(run(wheel, cli, _file_options(c), serve=serve, extra=list(with_package or [])))


@task(
    auto_shortflags=False,
    help={
        "run": "run id, a unique prefix of one, or a run folder (default: logs/latest)",
        "json": "print the report as JSON",
        "html": "also write the timeline as a self-contained HTML page (no network needed) to this file",
        "logs-dir": "where per-run logs are (default WORKDIR/logs)",
        "workdir": "the build's workdir, whose logs are read (default ./work)",
    },
)
def report(
    c: Context,
    run: str | None = None,
    json: bool = False,
    html: str | None = None,
    logs_dir: str | None = None,
    workdir: str | None = None,
) -> None:
    """Explain one build: timing, slowest and hungriest objects, CPU use, critical path, cache, validation."""
    from spark_build.cli import report as run_report

    _exit(run_report({"logs_dir": logs_dir, "workdir": workdir}, _file_options(c), run=run, as_json=json, html=html))


@task(
    auto_shortflags=False,
    help={
        "json": "print the rows as JSON",
        "logs-dir": "where per-run logs are (default WORKDIR/logs)",
        "workdir": "the build's workdir, whose logs are read (default ./work)",
    },
)
def history(c: Context, json: bool = False, logs_dir: str | None = None, workdir: str | None = None) -> None:
    """One line per build (date, ref, arch, wall, jobs, peak memory, cache hits, outcome) and what changed."""
    from spark_build.cli import history as run_history

    _exit(run_history({"logs_dir": logs_dir, "workdir": workdir}, _file_options(c), as_json=json))


@task(
    auto_shortflags=False,
    iterable=["source"],
    help={
        "ref": "vLLM tag, branch, commit, 'latest' (newest release tag) or 'main' (default: the build's default ref)",
        "repo": BUILD_HELP["repo"],
        "source": "a vLLM source folder or sdist (vllm-X.tar.gz) to read instead of --ref (repeatable)",
        "arch": "target arch whose use of each external project is judged (default 12.1a)",
        "json": "print the facts as JSON",
        "markdown": "print one Markdown table of all sources (docs/recipes.md is this over the real sdists)",
        "check-new": "the release watch: every release on the package index newer than the patch series was "
        "tested on — its recipe, which patches apply, the official wheel's GPU-code audit for --arch",
        "wheel-index": "package index --check-new reads (default PyPI's simple API)",
        "no-wheel-audit": "with --check-new, skip downloading and auditing the official wheels",
        "debug": "show tracebacks",
    },
)
def recipe(
    c: Context,
    ref: str | None = None,
    repo: str | None = None,
    source: list[str] | None = None,
    arch: str | None = None,
    json: bool = False,
    markdown: bool = False,
    check_new: bool = False,
    wheel_index: str | None = None,
    no_wheel_audit: bool = False,
    debug: bool = False,
) -> None:
    """What building a vLLM release needs, read from its source.

    Torch pins and index, C++ standard, Python, requirement files, use_existing_torch.py, CUTLASS
    and every external project CMake fetches."""
    cli = {"ref": ref, "repo": repo, "arch": arch, "debug": debug}
    from spark_build.cli import recipe as run

    _exit(
        run(
            cli,
            _file_options(c),
            sources=list(source or []),
            as_json=json,
            markdown=markdown,
            check_new=check_new,
            wheel_index=wheel_index,
            wheel_audit=not no_wheel_audit,
        )
    )
