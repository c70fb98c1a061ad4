"""Fetch what vLLM's CMake would download, at the pinned revisions, into a cache we control.

Without this, the configure step clones CUTLASS, flash-attention, FlashMLA, qutlass and Triton
from GitHub in the middle of the build: a network blip 10 minutes in fails the build, and an
offline Spark cannot build at all. Here each project is fetched once (from a mirror when one is
configured: a URL, a local repository, a git bundle or a checked archive), checked out detached
at its pin, and verified — the commit must equal the pin, or for a tag pin the commit the tag
named when fetched (recorded beside the checkout). The result is the set of `*_SRC_DIR`
variables vLLM's CMake reads instead of fetching (`versions.ExternalProject.src_dir_env`).

CUTLASS may come from the `nvidia-cutlass` package instead (`cutlass`).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import git
from packaging.version import Version

from spark_build.errors import StepFailed, UsageError
from spark_build.upstream.archive import ArchiveMirror
from spark_build.upstream.cutlass import (
    CutlassPackage,
    cutlass_from_package,
    cutlass_headers_version,
    cutlass_matches_pin,
    find_cutlass_package,
    write_cutlass_cmake,
)
from spark_build.upstream.fetched import FetchedProject, FetchedSources, revision_slug
from spark_build.upstream.versions import ExternalProject, external_projects

_PIN_RECORD = ".spark-build-pin.json"
# Mirror keys for a project's git submodule: "<project>/<submodule path>", e.g.
# "vllm-flash-attn/csrc/cutlass" (flash-attention compiles against its own CUTLASS).
SUBMODULE_KEY = "{project}/{path}"


def is_network(origin: str) -> bool:
    """Whether fetching from `origin` needs the network (anything but a local path or file://)."""
    return origin.startswith("git@") or ("://" in origin and not origin.startswith("file://"))


def origin_for(project: ExternalProject, mirrors: Mapping[str, str]) -> str:
    """The mirror named for the project (by FetchContent name or by repository URL), else the
    repository the source pins."""
    for key in (project.name, project.repository):
        if key and key in mirrors:
            return mirrors[key]
    if project.repository is None:
        raise UsageError(
            f"{project.defined_in} picks {project.name}'s repository at configure time "
            f"({', '.join(project.repository_candidates)})",
            hint=f"name a mirror for {project.name} in the sources mapping",
        )
    return project.repository


def _mirrored(project: ExternalProject, mirrors: Mapping[str, str]) -> bool:
    return any(key and key in mirrors for key in (project.name, project.repository))


def _read_pin(checkout: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((checkout / _PIN_RECORD).read_text()))
    except (OSError, ValueError):
        return {}


def _write_pin(checkout: Path, record: Mapping[str, Any]) -> None:
    tmp = checkout / (_PIN_RECORD + ".tmp")
    tmp.write_text(json.dumps(dict(record)))
    tmp.replace(checkout / _PIN_RECORD)


def checkout_intact(checkout: Path, revision: str, commit: str | None = None) -> bool:
    """A cached checkout is trusted only if its HEAD is the pin it was fetched for and it is
    unmodified: a half-fetched or hand-edited copy is fetched again, never built."""
    record = _read_pin(checkout)
    if record.get("revision") != revision or (commit is not None and record.get("commit") != commit):
        return False
    if str(record.get("commit", "")).startswith("sha256:"):
        return True  # unpacked from a checked archive: no git history to compare against
    try:
        repo = git.Repo(checkout)
        return repo.head.commit.hexsha == record.get("commit") and not repo.is_dirty(untracked_files=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return False


def _git_error(exc: git.GitCommandError) -> str:
    lines = [line.strip() for line in str(exc.stderr or "").splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


def fetch_project(
    project: ExternalProject,
    cache_dir: Path,
    origin: str,
    *,
    submodules: bool = True,
    mirrors: Mapping[str, str] | None = None,
) -> FetchedProject:
    """Fetch one project at its pin into `cache_dir/<name>/<revision>` (reused when intact).

    The checkout is built in a `.partial` folder and renamed into place, so an interrupted
    fetch leaves no half-tree that looks finished.
    """
    assert project.revision is not None, "ambiguous pins are refused by fetch_sources"
    revision = project.revision
    mirrors = mirrors or {}
    dest = cache_dir / project.name / revision_slug(revision)
    if checkout_intact(dest, revision):
        return _reuse_cached(project, dest, origin, mirrors, submodules=submodules)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if ArchiveMirror.is_archive(origin):
        return _from_archive(project, ArchiveMirror.parse(origin), partial, dest, origin)
    repo = git.Repo.init(partial)
    try:
        commit = _check_out_pin(repo, project, origin)
        missing = _populate_submodules(repo, project.name, mirrors, network=submodules)
    except StepFailed:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # The record sits inside the checkout; keep it out of `git status` so the tree reads clean.
    (partial / ".git" / "info").mkdir(parents=True, exist_ok=True)
    with (partial / ".git" / "info" / "exclude").open("a") as handle:
        handle.write(f"/{_PIN_RECORD}\n")
    return _into_place(project, partial, dest, commit, origin, missing)


def _reuse_cached(
    project: ExternalProject, dest: Path, origin: str, mirrors: Mapping[str, str], *, submodules: bool
) -> FetchedProject:
    """An intact cached checkout, with the submodules an offline or configure-only fetch left
    out filled in now when they can be (a compile needs them)."""
    record = _read_pin(dest)
    missing = tuple(record.get("missing", []))
    if missing and (submodules or any(SUBMODULE_KEY.format(project=project.name, path=m) in mirrors for m in missing)):
        missing = _populate_submodules(git.Repo(dest), project.name, mirrors, network=submodules)
        _write_pin(dest, {**record, "missing": list(missing)})
    return _fetched(project, dest, record["commit"], origin, reused=True, missing=missing)


def _check_out_pin(repo: git.Repo, project: ExternalProject, origin: str) -> str:
    """Fetch the pin into `repo`, check it out detached, and return its commit.

    Fetches only the pinned revision first (GitHub serves a commit or tag by name), and falls
    back to all branches and tags for servers and bundles that will not. A commit pin must
    come back as that commit: anything else means the mirror is not the pinned repository.
    """
    revision = str(project.revision)
    try:
        try:
            repo.git.fetch("--depth=1", origin, revision)
            target = "FETCH_HEAD"
        except git.GitCommandError:
            repo.git.fetch(origin, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
            target = revision
        commit = str(repo.git.rev_parse("--verify", f"{target}^{{commit}}"))
        repo.git.checkout("--detach", commit)
    except git.GitCommandError as exc:
        raise StepFailed(
            f"cannot fetch {project.name} {revision} from {origin}: {_git_error(exc)}",
            hint="check the network or the mirror for this project (a URL, a local repository or a git bundle)",
        ) from exc
    if project.is_commit and commit != revision:
        raise StepFailed(
            f"{origin} gave commit {commit} for {project.name}, not the pinned {revision}",
            hint="the mirror is not a copy of the pinned repository; fix or remove it",
        )
    return commit


def _submodule_paths(checkout: Path) -> tuple[str, ...]:
    modules = checkout / ".gitmodules"
    if not modules.is_file():
        return ()
    return tuple(re.findall(r"^\s*path\s*=\s*(\S+)", modules.read_text(), flags=re.MULTILINE))


def _populate_submodules(repo: git.Repo, name: str, mirrors: Mapping[str, str], *, network: bool) -> tuple[str, ...]:
    """Populate submodules as CMake's FetchContent would (flash-attention builds against its
    own `csrc/cutlass`): from a mirror archive where one is named, else with git when the
    network may be used. Returns the paths left empty (offline, unmirrored)."""
    root = Path(str(repo.working_tree_dir))
    left = []
    for path in _submodule_paths(root):
        spec = mirrors.get(SUBMODULE_KEY.format(project=name, path=path))
        if spec is not None:
            target = root / path
            shutil.rmtree(target, ignore_errors=True)
            ArchiveMirror.parse(spec).extract(target)
        else:
            left.append(path)
    if not left or not network:
        return tuple(left)
    try:
        repo.git.submodule("update", "--init", "--recursive", "--depth", "1", "--", *left)
    except git.GitCommandError as exc:
        raise StepFailed(
            f"cannot fetch the submodules of {name} ({', '.join(left)}): {_git_error(exc)}",
            hint="check the network, or map them to archives in source_mirrors "
            f"('{SUBMODULE_KEY.format(project=name, path=left[0])}')",
        ) from exc
    return ()


def _from_archive(
    project: ExternalProject, archive: ArchiveMirror, partial: Path, dest: Path, origin: str
) -> FetchedProject:
    """A project unpacked from a checked archive; CUTLASS headers get the small CMakeLists
    vLLM's FetchContent needs (the archive holds headers only, no build files)."""
    try:
        archive.extract(partial)
    except (StepFailed, UsageError, OSError, tarfile.TarError):
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if project.name == "cutlass" and not (partial / "CMakeLists.txt").is_file():
        version = cutlass_headers_version(partial) or "unknown"
        write_cutlass_cmake(partial, dest, f"archive {archive.path.name}", version, str(project.revision))
    return _into_place(project, partial, dest, f"sha256:{archive.sha256}", origin, ())


def _into_place(
    project: ExternalProject, partial: Path, dest: Path, commit: str, origin: str, missing: tuple[str, ...]
) -> FetchedProject:
    """Record the pin in the finished `.partial` tree and rename it into place: only a whole
    checkout ever sits where a later run would trust it."""
    _write_pin(partial, {"revision": project.revision, "commit": commit, "origin": origin, "missing": list(missing)})
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return _fetched(project, dest, commit, origin, reused=False, missing=missing)


def _fetched(
    project: ExternalProject, checkout: Path, commit: str, origin: str, *, reused: bool, missing: tuple[str, ...]
) -> FetchedProject:
    # triton_kernels' variable points inside the checkout (its SOURCE_SUBDIR), the others at the root.
    env_value = checkout / project.source_subdir if project.source_subdir else checkout
    return FetchedProject(
        name=project.name,
        revision=str(project.revision),
        commit=commit,
        checkout=checkout,
        env=project.src_dir_env,
        env_value=env_value,
        origin=origin,
        reused=reused,
        missing_submodules=missing,
    )


def fetch_sources(
    projects: Iterable[ExternalProject],
    cache_dir: Path,
    *,
    mirrors: Mapping[str, str] | None = None,
    offline: bool = False,
    cutlass: CutlassPackage | None = None,
    submodules: bool = True,
) -> FetchedSources:
    """Every project at its pin, from cache, mirror or network; `.env` is what CMake needs.

    Offline, a project that is neither cached nor mirrored locally is not attempted, and a
    mirror that lacks its pin fails only that project: the rest are fetched (and cached), then
    one error names every project left out with its exact revision, so one round of mirroring
    fixes them all. A pin the tree leaves to configure time is refused before anything runs.
    """
    mirrors = dict(mirrors or {})
    plan: list[tuple[ExternalProject, str | None]] = []
    undecided: list[str] = []
    unreachable: dict[str, str] = {}  # name → "name revision (origin)"
    for project in projects:
        if project.name == "cutlass" and cutlass is not None:
            plan.append((project, None))
            continue
        if project.revision is None or (project.repository is None and not _mirrored(project, mirrors)):
            undecided.append(
                f"{project.name} ({project.defined_in} picks it at configure time: "
                f"{', '.join(project.candidates or project.repository_candidates)})"
            )
            continue
        origin = origin_for(project, mirrors)
        cached = cache_dir / project.name / revision_slug(str(project.revision))
        if offline and is_network(origin) and not checkout_intact(cached, str(project.revision)):
            unreachable[project.name] = f"{project.name} {project.revision} ({origin})"
        plan.append((project, origin))
    if undecided:
        raise UsageError(
            f"cannot tell which revision to fetch for {'; '.join(undecided)}",
            hint="this release is not supported by spark-build's sources step yet; report the version",
        )
    fetched: list[FetchedProject] = []
    notes: list[str] = []
    failed: dict[str, str] = {}
    for project, maybe_origin in plan:
        if maybe_origin is None:
            assert cutlass is not None
            fetched.append(cutlass_from_package(project, cutlass, cache_dir))
            notes.append(
                f"cutlass: CUTLASS {cutlass.headers_version} headers (nvidia-cutlass) stand in for {project.revision}"
                + ("" if cutlass_matches_pin(cutlass.headers_version, str(project.revision)) else " (not the pin)")
            )
            continue
        if project.name in unreachable:
            continue
        try:
            result = fetch_project(
                project, cache_dir, maybe_origin, submodules=submodules and not offline, mirrors=mirrors
            )
        except StepFailed as exc:
            failed[project.name] = exc.message
            continue
        if result.missing_submodules:
            notes.append(f"{project.name}: submodules not fetched ({', '.join(result.missing_submodules)})")
        fetched.append(result)
    if unreachable or failed:
        _raise_missing(cache_dir, unreachable, failed, total=len(plan))
    return FetchedSources(tuple(fetched), tuple(notes))


def _raise_missing(cache_dir: Path, unreachable: Mapping[str, str], failed: Mapping[str, str], *, total: int) -> None:
    """One error for every project the step could not fetch: bad input (exit 2) when offline
    without a mirror is all that is wrong, a failed step when a mirror or the network failed."""
    parts = []
    if unreachable:
        parts.append(f"offline, and not in the source cache {cache_dir}: {'; '.join(unreachable.values())}")
    if failed:
        parts.append(f"could not be fetched: {'; '.join(failed.values())}")
    message = f"{len(unreachable) + len(failed)} of {total} external projects missing — " + "; ".join(parts)
    fixes = []
    if unreachable:
        fixes.append(
            f"fetch once with the network, or map each of {', '.join(unreachable)} to a local mirror "
            "(repository, git bundle or archive) in source_mirrors"
        )
    if failed:
        fixes.append(f"make the mirrors of {', '.join(failed)} hold their pinned revisions")
    hint = "; ".join(fixes) + "; the rest are cached"
    if failed:
        raise StepFailed(message, hint=hint + ", --resume continues")
    raise UsageError(message, hint=hint)


def sources_intact(recorded: Mapping[str, Any]) -> bool:
    """Whether what `FetchedSources.to_dict()` recorded is still in the cache, unchanged."""
    for item in recorded.get("projects", []):
        checkout = Path(str(item.get("checkout", "")))
        if str(item.get("commit", "")).startswith("nvidia-cutlass=="):
            if not (checkout / "CMakeLists.txt").is_file() or not Path(str(item.get("origin"))).is_dir():
                return False
        elif not checkout_intact(checkout, str(item.get("revision")), str(item.get("commit"))):
            return False
    return True


def prepare_sources(
    source: Path,
    version: Version,
    cache_dir: Path,
    *,
    mirrors: Mapping[str, str] | None = None,
    offline: bool = False,
    cutlass_venv: Path | None = None,
    submodules: bool = True,
) -> FetchedSources:
    """The sources step in one call: read the tree's pins, fetch them, return the variables.

    `cutlass_venv` takes CUTLASS from the nvidia-cutlass package installed in that venv instead
    of git (needed offline: no mirror of CUTLASS exists); the package must be there.
    """
    cutlass = None
    if cutlass_venv is not None:
        cutlass = find_cutlass_package(cutlass_venv)
        if cutlass is None:
            raise UsageError(
                f"no nvidia-cutlass package in {cutlass_venv} to take CUTLASS's headers from",
                hint=f"uv pip install --python {cutlass_venv / 'bin' / 'python'} nvidia-cutlass",
            )
    return fetch_sources(
        external_projects(source, version),
        cache_dir,
        mirrors=mirrors,
        offline=offline,
        cutlass=cutlass,
        submodules=submodules,
    )
