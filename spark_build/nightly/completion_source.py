"""The source tree a completion configures: the release's own source, our patches for its
version, a CMakeLists.txt scoped to the extension targets being built, and the external
projects of those targets alone, fetched by the sources step's rules (mirrors, offline).

Where the source comes from: the release's sdist from where the official wheel was looked up —
the `--wheels` folder, else the package index (sha256 as the index publishes it; kept in the
download cache) — else the release tag of `--repo` (a git clone). GitHub is often out of reach
while the index is not, and the sdist is what the wheel was built from; an sdist from another
place than the wheel could be another project's release of the same name.

The tree is kept between runs and reused only when it was made from the same sdist, patches
and changes (other targets only re-scope its CMake): unpacking again would give every source a
new mtime and Ninja would recompile the objects an interrupted completion had finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from spark_build.durable import sha256_of
from spark_build.errors import StepFailed
from spark_build.nightly.fetch import mirror_file, wheel_in_wheelhouse
from spark_build.nightly.official import index_files
from spark_build.nightly.release_watch import sdist_releases
from spark_build.upstream.patches import apply_series, find_series, patches_digest
from spark_build.upstream.recipe import project_name
from spark_build.upstream.sources import fetch_sources
from spark_build.upstream.targeted_cmake import target_cmake
from spark_build.upstream.versions import external_projects

Say = Callable[[str], None]
Run = Callable[[list[str | os.PathLike[str]]], int]


@dataclass(frozen=True)
class CompletionSource:
    tree: Path
    env: Mapping[str, str]  # the *_SRC_DIR variables of the external projects kept
    notes: tuple[str, ...]  # the configure's scope, each project's origin


def find_sdist(
    version: Version, *, index: str, wheels: Path | None, cache: Path, offline: bool, say: Say
) -> Path | str:
    """The release's sdist from where the official wheel was looked up, or why none could be had:
    the `wheels` folder alone when one is given, else the download cache, else (online) `index`."""
    name = f"vllm-{version}.tar.gz"
    if wheels is not None:
        return wheels / name if (wheels / name).is_file() else f"no {name} beside the official wheel in {wheels}"
    if wheel_in_wheelhouse(cache, name):
        return cache / name
    if offline:
        return f"offline, and no {name} in {cache}"
    entry = sdist_releases(index_files(index, on_retry=say)).get(version)
    if entry is None:
        return f"the package index {index} lists no {name}"
    say(f"prebuilt: downloading {name} (the release's source) from {index}")
    return mirror_file(entry.url, cache, name, entry.sha256, on_retry=say)


def clone_release(repo: str, ref: str, dest: Path, run: Run) -> Path:
    """The release's tag of `repo` as a shallow clone in `dest` (where no sdist could be had); the
    error says which source could not be had."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if run(["git", "clone", "--quiet", "--depth", "1", "--branch", ref, repo, partial]) != 0:
        raise StepFailed(
            f"cannot get the source of {ref} from {repo} to complete the official wheel",
            step="prefer-wheel",
            hint="give --repo a clone or mirror that has the tag, or --accept-missing to take the wheel as it is",
        )
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """The sdist's tree under `dest` (a fresh folder); renamed into place only when whole."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers() if m.name.strip("/")}
        if len(tops) != 1:
            raise StepFailed(f"{sdist.name} is not a source distribution (one top folder)", step="complete")
        tar.extractall(partial, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    (partial / tops.pop()).rename(dest)
    shutil.rmtree(partial, ignore_errors=True)
    return dest


Change = tuple[str, Path]  # a --pr/--patch that touches compiled code: its label and its diff
ApplyChange = Callable[[Path, Path, str], object]  # (tree, diff, label): the changes step's apply


def prepare_tree(
    tree_source: Path | Callable[[Path], Path],
    origin: str,
    version: Version,
    folder: Path,
    *,
    patches_dir: Path,
    changes: Sequence[Change],
    apply_change: ApplyChange,
    run: Run,
) -> tuple[Path, tuple[str, ...]]:
    """The release tree under `folder/source` and what was done to it: made from `tree_source`
    (an sdist, or a function that checks the release out into a folder), given our patches for
    its version, then the `changes` in order — unless the tree there was made from the same
    sdist, patches and changes (a source named missing offline keeps it: the rerun reuses it)."""
    tree = folder / "source"
    record = folder / "source.json"
    made_from = {
        "origin": origin,
        "sdist": sha256_of(tree_source) if isinstance(tree_source, Path) else None,
        "patches": patches_digest(patches_dir),
        "changes": [[label, sha256_of(diff)] for label, diff in changes],
    }
    kept = json.loads(record.read_text()) if record.is_file() else {}
    if kept.get("made_from") == made_from and (tree / "CMakeLists.txt").is_file():
        return tree, tuple(kept.get("notes", []))
    record.unlink(missing_ok=True)
    shutil.rmtree(tree, ignore_errors=True)
    if isinstance(tree_source, Path):
        unpack_sdist(tree_source, tree)
        # A repository of its own with the release committed: patches and changes apply to it
        # (`git apply --3way` needs an index), and to nothing around it.
        for argv in (["init", "--quiet"], ["add", "-A", "-f"], ["-c", "user.name=spark-build",
                     "-c", "user.email=spark-build@localhost", "commit", "--quiet", "-m", origin]):  # fmt: skip
            if run(["git", "-C", tree, *argv]) != 0:
                raise StepFailed(f"cannot make {tree} a git repository (git {argv[-1]})", step="complete")
    else:
        tree_source(tree)
    notes: list[str] = []
    dist = project_name(tree)
    series = find_series(patches_dir, dist, version)
    if series is not None and series.to_try():

        def git_apply(patch: Path, *flags: str, check: bool = False) -> int:
            status = run(["git", "-C", tree, "apply", "--verbose", *flags, patch])
            if check and status != 0:
                raise StepFailed(f"{patch.name} did not apply to the release's source", step="complete")
            return status

        done = apply_series(series, f"{dist} {version}", git_apply)
        notes.extend(done.notes)
        notes.append(f"patches: {', '.join(done.applied) or 'none'} applied to {dist} {version}")
    for label, diff in changes:
        apply_change(tree, diff, label)
        notes.append(f"{label} applied to the release's source")
    record.write_text(json.dumps({"made_from": made_from, "notes": notes}))
    return tree, tuple(notes)


def scope(
    tree: Path,
    targets: Sequence[str],
    version: Version,
    *,
    sources_cache: Path,
    mirrors: Mapping[str, str],
    offline: bool,
) -> CompletionSource:
    """The tree's CMake scoped to `targets` (none: CMakeLists.txt's own targets alone) and the
    external projects that scope needs, fetched by the sources step's rules — their git
    submodules only from `mirrors` (`qutlass/third_party/cutlass`): qutlass's vendored CUTLASS
    is its fallback where vLLM gives its own, as every vLLM configure does, and a submodule a
    target compiles against (flash-attention's `csrc/cutlass`) is mapped as for an offline
    build. A submodule left empty is noted."""
    scoped = target_cmake(tree, targets)
    projects = scoped.projects(external_projects(tree, version))
    fetched = fetch_sources(projects, sources_cache, mirrors=mirrors, offline=offline, submodules=False)
    notes = (
        scoped.describe(),
        *(f"sources: {p.name} {p.revision} from {p.origin}" for p in fetched.projects),
        *(f"sources: {note}" for note in fetched.notes),
    )
    return CompletionSource(tree, fetched.env, notes)
