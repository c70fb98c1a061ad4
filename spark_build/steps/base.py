"""The build's steps, in order. Each has a name, the inputs that define it, a run, and a check
that its result still exists — `--resume` trusts a step only when both hold.

Steps do their work through the one `Runner` (logs, process groups, signals) and return the
facts they found (commit, torch version, wheel sha256…), which the checkpoint records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git
from rich.console import Console
from uv import find_uv_bin

from spark_build.config import BuildConfig
from spark_build.durable import atomic_write_text, sha256_of
from spark_build.errors import StepFailed, UsageError
from spark_build.host.doctor import EXAMPLE_NEEDS, VLLM_NEEDS, BuildNeeds, evaluate, to_json
from spark_build.host.facts import HostFacts, gather_host
from spark_build.pipeline.state import BuildState
from spark_build.proc import Runner
from spark_build.upstream.patches import find_series, patches_digest
from spark_build.upstream.recipe import Recipe, recipe_for, torch_pins


@dataclass
class Context:
    """What a step may use: the config, the runner, the run's log folder, earlier results."""

    config: BuildConfig
    arch: str
    runner: Runner
    log_dir: Path
    state: BuildState
    notes: list[str] = field(default_factory=list)
    host: HostFacts | None = None  # read by preflight on every run
    console: Console | None = None
    compiles: bool = True  # False for `invoke arch-plan`: no compile job will need memory

    def show(self, renderable: Any) -> None:
        """Put a table in front of the user (the arch plan), not only in the logs."""
        if self.console is not None:
            self.console.print(renderable)

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    @property
    def venv(self) -> Path:
        return self.workdir / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def src(self) -> Path:
        return self.workdir / "src"

    @property
    def dist(self) -> Path:
        return self.workdir / "dist"

    def log(self, step: str) -> Path:
        return self.log_dir / f"{step}.log"

    def result(self, step: str) -> dict[str, Any]:
        record = self.state.record(step)
        if record is None or record.status != "done":
            raise StepFailed(f"needs the result of '{step}', which has not completed", step=step)
        return record.result

    def run(self, step: str, argv: list[str | os.PathLike[str]], **kwargs: Any) -> int:
        return self.runner.run(argv, log=self.log(step), step=step, **kwargs)

    def uv(self, step: str, *args: str | os.PathLike[str], **kwargs: Any) -> int:
        return self.run(step, [find_uv_bin(), *args], env=uv_env(self.config.uv_cache_dir), **kwargs)

    def recipe(self) -> Recipe:
        return recipe_for(self.src, str(self.result("clone").get("describe", "")))


def uv_env(cache_dir: Path | None) -> dict[str, str]:
    """uv's environment: our cache when one is configured, and no progress bars in logs."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["UV_CACHE_DIR"] = str(cache_dir)
    env.setdefault("UV_NO_PROGRESS", "1")
    return env


def python_json(ctx: Context, step: str, python: Path, code: str) -> dict[str, Any]:
    """Run a probe in a venv's interpreter; the probe writes JSON to a file we read back, so
    its answer never mixes with the warnings it may print."""
    out = ctx.log_dir / f"{step}.probe.json"
    ctx.run(step, [python, "-c", code, str(out)])
    return dict(json.loads(out.read_text()))


class Step:
    name = ""
    summary = ""
    volatile = False

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {}

    def run(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return True

    def detail(self, result: Mapping[str, Any]) -> str:
        """A short fact for the timing table's last column (the compile's jobs and cache)."""
        return ""


def needs_for(example: bool, compiles: bool) -> BuildNeeds:
    """What the host must offer: the example's little, vLLM's disk, and vLLM's memory for one
    compile job only when something will be compiled (a configure-only arch plan needs none)."""
    if example:
        return EXAMPLE_NEEDS
    if not compiles:
        return dataclasses.replace(
            VLLM_NEEDS, one_job_bytes=EXAMPLE_NEEDS.one_job_bytes, heaviest_job_bytes=EXAMPLE_NEEDS.heaviest_job_bytes
        )
    return VLLM_NEEDS


class Preflight(Step):
    name = "preflight"
    summary = "read the host (GPU, nvcc, memory, disk, torch) and check the repo has the ref"
    volatile = True

    def run(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        nvcc = cfg.cuda_home / "bin" / "nvcc"
        if not nvcc.is_file():
            raise UsageError(
                f"no nvcc at {nvcc}",
                hint="install CUDA 13.0, or point --cuda-home (or CUDA_HOME) at it",
            )
        facts = gather_host(
            ctx.workdir,
            ctx.workdir / "cache",
            arch=ctx.arch,
            python=ctx.python if ctx.python.exists() else Path(cfg.python),
            # The compile step sets TRITON_PTXAS_PATH itself; judge the host as the build sees it.
            env={
                **os.environ,
                "CUDA_HOME": str(cfg.cuda_home),
                "TRITON_PTXAS_PATH": str(cfg.cuda_home / "bin" / "ptxas"),
            },
        )
        ctx.host = facts
        problems = evaluate(facts, ctx.arch, needs_for(cfg.example, ctx.compiles))
        atomic_write_text(ctx.log_dir / "host.json", to_json(problems, facts))
        for problem in problems:
            if problem.severity != "ok":
                ctx.notes.append(f"preflight {problem.severity}: {problem.check}: {problem.value} — {problem.fix}")
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            first = errors[0]
            more = f" (+{len(errors) - 1} more: invoke doctor)" if len(errors) > 1 else ""
            raise UsageError(f"{first.check}: {first.value}{more}", hint=first.fix)
        # A wrong --ref is found here, at second zero, not after torch is installed.
        kind = ref_kind(cfg.repo, cfg.ref)
        return {"arch": ctx.arch, "ref_kind": kind, "warnings": [p.check for p in problems if p.severity == "warning"]}


class Venv(Step):
    name = "venv"
    summary = "create the build venv with uv"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"python": ctx.config.python}

    def run(self, ctx: Context) -> dict[str, Any]:
        # --seed puts pip into the venv: the compile runs `pip wheel`, as vLLM's docs build.
        ctx.uv(self.name, "venv", "--clear", "--seed", "--python", ctx.config.python, ctx.venv)
        info = python_json(
            ctx,
            self.name,
            ctx.python,
            "import json,sys,platform; json.dump({'version': platform.python_version()}, open(sys.argv[1],'w'))",
        )
        return {"python_version": info["version"]}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return ctx.python.exists()


_TORCH_PROBE = """
import json, sys
import torch
json.dump({"version": torch.__version__, "cuda": torch.version.cuda,
           "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else []}, open(sys.argv[1], "w"))
"""


def index_args(index: str) -> list[str]:
    """A local folder of wheels is a find-links source; anything else an extra index, so
    torch's own dependencies still come from the default index."""
    if "://" not in index:
        return ["--find-links", index]
    return ["--extra-index-url", index]


class Torch(Step):
    name = "torch"
    summary = "install torch from the configured index and check its CUDA version"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        cfg = ctx.config
        return {"index": cfg.torch_index, "packages": cfg.torch_packages, "cuda": cfg.torch_cuda}

    def run(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        ctx.uv(self.name, "pip", "install", "--python", ctx.python, *index_args(cfg.torch_index), *cfg.torch_packages)
        found = python_json(ctx, self.name, ctx.python, _TORCH_PROBE)
        cuda = found.get("cuda")
        if not torch_matches(cuda, cfg.torch_cuda):
            wanted = "a CPU build" if cfg.torch_cuda == "cpu" else f"CUDA {cfg.torch_cuda}.x"
            raise StepFailed(
                f"torch {found['version']} is built for CUDA {cuda or 'none (CPU)'}, wanted {wanted}",
                hint=f"check --torch-index ({cfg.torch_index}) serves the right build, or set --torch-cuda",
            )
        return {"version": found["version"], "cuda": cuda, "arch_list": found.get("arch_list", [])}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        if not ctx.python.exists():
            return False
        dist_infos = list((ctx.venv / "lib").glob("python*/site-packages/torch-*.dist-info"))
        version = str(result.get("version", "")).split("+")[0]
        return any(d.name.startswith(f"torch-{version}") for d in dist_infos)


def torch_matches(cuda: str | None, wanted: str) -> bool:
    """Does a torch whose `torch.version.cuda` is `cuda` fit `--torch-cuda` (a major or 'cpu')?
    A cu128 torch on a CUDA 13 Spark imports, then dies looking for `libcudart.so.12`."""
    if wanted == "cpu":
        return cuda is None
    return bool(cuda) and str(cuda).split(".")[0] == wanted


def ref_kind(repo: str, ref: str) -> str:
    """'name' when the remote has a tag or branch called `ref`, 'commit' when it looks like a
    commit id (ls-remote cannot confirm those), else a bad-input error before anything runs."""
    try:
        listing = str(git.Git().ls_remote(repo))
    except git.GitCommandError as exc:
        raise UsageError(
            f"cannot read the repository {repo}: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}",
            hint="check --repo (a URL or a local path) and the network",
        ) from exc
    refs = {line.split("\t", 1)[1] for line in listing.splitlines() if "\t" in line}
    if any(r in refs for r in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref)):
        return "name"
    if 7 <= len(ref) <= 40 and all(c in "0123456789abcdef" for c in ref.lower()):
        return "commit"
    tags = sorted(r.removeprefix("refs/tags/") for r in refs if r.startswith("refs/tags/") and "^" not in r)
    shown = ", ".join(tags[-5:]) if tags else "none"
    raise UsageError(f"--ref '{ref}' is not a tag, branch or commit of {repo}", hint=f"recent tags: {shown}")


def clone_url(repo: str) -> str:
    """Local paths go through file:// so `--depth` works (git ignores it for plain paths)."""
    return repo if "://" in repo or repo.startswith("git@") else Path(repo).as_uri()


class Clone(Step):
    name = "clone"
    summary = "clone the source at the pinned ref (shallow for tags and branches)"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"repo": ctx.config.repo, "ref": ctx.config.ref}

    def run(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        # A half-written clone from a killed run is not worth saving; start it clean.
        shutil.rmtree(ctx.src, ignore_errors=True)
        # Runs `git` through the runner rather than gitpython's clone_from so the fetch gets
        # its own process group (Ctrl-C stops it) and its progress lands in the step's log.
        if ref_kind(cfg.repo, cfg.ref) == "name":
            ctx.run(
                self.name,
                ["git", "clone", "--progress", "--depth", "1", "--branch", cfg.ref, clone_url(cfg.repo), ctx.src],
            )
        else:
            ctx.run(self.name, ["git", "clone", "--progress", "--no-checkout", clone_url(cfg.repo), ctx.src])
            code = ctx.run(self.name, ["git", "-C", ctx.src, "checkout", "--detach", cfg.ref], check=False)
            if code != 0:
                raise UsageError(f"--ref '{cfg.ref}' is not a commit of {cfg.repo}", hint="check the commit id")
        repo = git.Repo(ctx.src)
        try:
            describe = repo.git.describe("--tags", "--always")
        except git.GitCommandError:
            describe = repo.head.commit.hexsha[:12]
        return {"commit": repo.head.commit.hexsha, "describe": describe}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        try:
            return git.Repo(ctx.src).head.commit.hexsha == result.get("commit")
        except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
            return False


class Patch(Step):
    name = "patch"
    summary = "apply the patch series in patches/ that matches this source's version"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"patches": patches_digest(ctx.config.patches_dir), "disabled": ctx.config.no_patches}

    def run(self, ctx: Context) -> dict[str, Any]:
        recipe = ctx.recipe()
        series = None if ctx.config.no_patches else find_series(ctx.config.patches_dir, recipe.series_name)
        if series is None:
            why = "--no-patches" if ctx.config.no_patches else f"no series for {recipe.series_name or 'this ref'}"
            ctx.notes.append(f"patch: none applied ({why})")
            return {"series": None, "applied": []}
        applied = []
        for patch in series.patches:
            if self._git_apply(ctx, patch, "--reverse", "--check") == 0:
                continue  # already in the tree
            if self._git_apply(ctx, patch, "--check") != 0:
                raise StepFailed(
                    f"{patch.name} no longer applies to {recipe.dist} {recipe.version} (the log names file and hunk)",
                    hint="refresh the patch for this version, or build pristine source with --no-patches",
                )
            self._git_apply(ctx, patch, check=True)
            applied.append(patch.name)
        return {"series": series.folder.name, "applied": [p.name for p in series.patches], "new": applied}

    def _git_apply(self, ctx: Context, patch: Path, *flags: str, check: bool = False) -> int:
        return ctx.run(self.name, ["git", "-C", ctx.src, "apply", "--verbose", *flags, patch], check=check)

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        series = result.get("series")
        return all(
            self._git_apply(ctx, ctx.config.patches_dir / str(series) / name, "--reverse", "--check") == 0
            for name in result.get("applied", [])
        )


class UseExistingTorch(Step):
    name = "use-existing-torch"
    summary = "run the source's use_existing_torch.py so the build keeps our torch"

    def run(self, ctx: Context) -> dict[str, Any]:
        script = ctx.src / "use_existing_torch.py"
        if not script.is_file():
            raise StepFailed(
                f"{script.name} is missing from the source",
                hint="this ref predates use_existing_torch.py; build a newer vLLM release",
            )
        ctx.run(self.name, [ctx.python, script.name], cwd=ctx.src)
        left = torch_pins(ctx.src)
        if left:
            raise StepFailed(
                f"torch is still pinned after {script.name}: {left[0]}"
                + (f" (+{len(left) - 1} more)" if len(left) > 1 else ""),
                hint="the script's rules changed; add a patch that drops these pins",
            )
        changed = git.Repo(ctx.src).git.diff("--name-only").splitlines()
        return {"changed": changed}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return ctx.src.is_dir() and not torch_pins(ctx.src)


class BuildDeps(Step):
    name = "build-deps"
    summary = "install the source's build requirements into the build venv (torch held fixed)"

    def run(self, ctx: Context) -> dict[str, Any]:
        recipe = ctx.recipe()
        torch_version = ctx.result("torch")["version"]
        # A constraint keeps any build requirement from swapping out the torch we checked.
        constraints = ctx.log_dir / "torch-constraint.txt"
        constraints.write_text(f"torch=={torch_version}\n")
        requirement_args: list[str] = []
        for rel in recipe.build_requirements:
            requirement_args += ["-r", rel]
        ctx.uv(
            self.name,
            "pip",
            "install",
            "--python",
            ctx.python,
            "--constraint",
            constraints,
            *index_args(ctx.config.torch_index),
            *requirement_args,
            cwd=ctx.src,
        )
        return {"files": self._hashes(ctx, recipe), "installed": installed_packages(ctx.venv)}

    def _hashes(self, ctx: Context, recipe: Recipe) -> dict[str, str]:
        return {rel: sha256_of(ctx.src / rel) for rel in recipe.build_requirements}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        """Requirement files unchanged and everything installed then still installed. Later
        additions (the compile step puts ccache into the venv) do not undo this step."""
        try:
            recipe = ctx.recipe()
            installed = set(installed_packages(ctx.venv))
            return self._hashes(ctx, recipe) == result.get("files") and set(result.get("installed", [])) <= installed
        except (StepFailed, OSError):
            return False


def installed_packages(venv: Path) -> list[str]:
    """What a venv holds, read from its dist-info folders (name-version), no process needed."""
    return sorted(p.name.removesuffix(".dist-info") for p in venv.glob("lib/python*/site-packages/*.dist-info"))
