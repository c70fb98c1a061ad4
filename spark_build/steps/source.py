"""The source: clone the ref, apply our patch series, keep our torch, install the build
requirements, and fetch what vLLM's CMake would download (so configure and compile stay offline).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import git

from spark_build.durable import sha256_of
from spark_build.errors import StepFailed, UsageError
from spark_build.pipeline.step import Context, Step
from spark_build.upstream.fetched import FetchedSources
from spark_build.upstream.patches import apply_series, find_series, patches_digest
from spark_build.upstream.recipe import USE_EXISTING_TORCH_PLACES, Recipe, torch_pins
from spark_build.upstream.refs import clone_url, resolve_ref
from spark_build.upstream.sources import prepare_sources, sources_intact
from spark_build.venv import installed_packages, missing_offline, read_requirements


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
        resolved = resolve_ref(cfg.repo, cfg.ref)
        if resolved.kind != "commit":
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
        # A branch (main) has no release tag to describe: its version is the next after the
        # newest release, which scopes its patches and its build rules.
        version = str(resolved.version) if resolved.version else None
        return {"commit": repo.head.commit.hexsha, "describe": describe, "version": version}

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
        series = None if ctx.config.no_patches else find_series(ctx.config.patches_dir, recipe.dist, recipe.version)
        if series is None or not series.to_try():
            why = (
                "--no-patches" if ctx.config.no_patches else f"none for {recipe.dist} {recipe.version or 'at this ref'}"
            )
            ctx.notes.append(f"patch: none applied ({why})")
            return {"series": None, "applied": []}
        git_apply = partial(self._git_apply, ctx)
        done = apply_series(series, f"{recipe.dist} {recipe.version}", git_apply)
        ctx.notes.extend(done.notes)
        return {
            "series": series.folder.name,
            "applied": list(done.applied),
            "new": list(done.new),
            "beyond": list(done.beyond),
        }

    def skipped_notes(self, result: Mapping[str, Any]) -> list[str]:
        """A resumed build still says which patches it carries beyond their tested range."""
        return [f"patch: {b['patch']} {b['outcome']}" for b in result.get("beyond", [])]

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
        rel = ctx.recipe().use_existing_torch
        if rel is None:
            raise StepFailed(
                f"the source has no use_existing_torch.py (looked in: {', '.join(USE_EXISTING_TORCH_PLACES)})",
                hint="this ref predates use_existing_torch.py; build a newer vLLM release",
            )
        script = ctx.src / rel
        before = worktree_edits(ctx.src)
        ctx.run(self.name, [ctx.python, rel], cwd=ctx.src)
        left = torch_pins(ctx.src)
        if left:
            raise StepFailed(
                f"torch is still pinned after {script.name}: {left[0]}"
                + (f" (+{len(left) - 1} more)" if len(left) > 1 else ""),
                hint="the script's rules changed; add a patch that drops these pins",
            )
        return {"changed": edited_since(before, worktree_edits(ctx.src))}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return ctx.src.is_dir() and not torch_pins(ctx.src)


def worktree_edits(src: Path) -> dict[str, str]:
    """Every tracked file that differs from the commit, with its content's blob id ("" when
    deleted): what the tree holds before and after a step edits it."""
    repo = git.Repo(src)
    paths = repo.git.diff("--name-only", "--no-renames").splitlines()
    present = [path for path in paths if (src / path).is_file()]
    blobs = repo.git.hash_object("--", *present).splitlines() if present else []
    return {path: dict(zip(present, blobs, strict=True)).get(path, "") for path in paths}


def edited_since(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """The files one step changed: edited now and not as they were before it ran. `git diff`
    alone names the patch step's files too (setup.py, qutlass.cmake in the real 0.13.0 build)."""
    return sorted(path for path, blob in after.items() if before.get(path) != blob)


class BuildDeps(Step):
    name = "build-deps"
    summary = "install the source's build requirements into the build venv (torch held fixed)"

    def run(self, ctx: Context) -> dict[str, Any]:
        recipe = ctx.recipe()
        torch_version = ctx.result("torch")["version"]
        # A constraint keeps any build requirement from swapping out the torch we checked.
        constraints = ctx.run_folder.torch_constraint
        constraints.write_text(f"torch=={torch_version}\n")
        requirement_args: list[str] = []
        for rel in recipe.build_requirements:
            requirement_args += ["-r", rel]
        wheels = ctx.config.wheels
        if wheels is not None:
            wanted = [line for rel in recipe.build_requirements for line in read_requirements(ctx.src / rel)]
            probe = partial(ctx.probe_json, self.name)
            missing = missing_offline(ctx.config.installer, wanted, ctx.python, probe)
            if missing:
                raise UsageError(
                    f"{len(missing)} build requirement(s) in neither the venv nor {wheels}: {', '.join(missing)}",
                    hint=f"add wheels for them to {wheels} (pip download -d {wheels} …), then --resume",
                )
        ctx.install(
            self.name, "--constraint", constraints, *requirement_args, index=ctx.config.torch_index, cwd=ctx.src
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


class Sources(Step):
    name = "sources"
    summary = "fetch the external projects vLLM's CMake pins (offline-capable) and export *_SRC_DIR"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        cfg = ctx.config
        return {"mirrors": dict(cfg.source_mirrors), "offline": cfg.offline, "cutlass": cfg.cutlass_from_package}

    def run(self, ctx: Context) -> dict[str, Any]:
        if not ctx.recipe().is_vllm_release:
            ctx.notes.append("sources: no external projects to fetch (not a vLLM release tree)")
            return FetchedSources(()).to_dict()
        cfg = ctx.config
        recipe = ctx.recipe()
        assert recipe.version is not None
        cutlass_venv = None
        if cfg.cutlass_from_package:
            # Offline, nothing mirrors CUTLASS's git repo; the nvidia-cutlass wheel carries its
            # headers (4.2.0, where vLLM 0.13.0 pins v4.2.1).
            ctx.install(self.name, "nvidia-cutlass")
            cutlass_venv = ctx.venv
        fetched = prepare_sources(
            ctx.src,
            recipe.version,
            ctx.layout.sources_cache,
            mirrors=cfg.source_mirrors,
            offline=cfg.offline,
            cutlass_venv=cutlass_venv,
        )
        for project in fetched.projects:
            ctx.notes.append(f"sources: {project.name} {project.revision} from {project.origin}")
        ctx.notes.extend(f"sources: {note}" for note in fetched.notes)
        return fetched.to_dict()

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return sources_intact(result)
