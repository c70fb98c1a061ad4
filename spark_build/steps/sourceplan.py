"""What the source at `--ref` asks of the build, decided before the first step runs.

The torch a release compiles against is pinned in its own `requirements/cuda.txt`, and the
torch is installed before the clone; so the ref is resolved first (`latest` → the newest
release tag, `main` → the branch head) and the tree's recipe files are read from a scratch
fetch of that ref. The same facts give `--dry-run` what it prints: the ref and its commit, the
torch and why, the patches whose release range covers it, the projects the sources step fetches.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_build.arch.archlist import recipe_arch
from spark_build.compile.cxxstd import conflict_line, source_standard, torch_floor
from spark_build.config import BuildConfig
from spark_build.errors import UsageError
from spark_build.host.facts import TorchInfo
from spark_build.upstream.facts import CUDA_REQUIREMENTS, SourceFacts, exact_torch, read_facts, torch_index_for
from spark_build.upstream.patches import PatchSeries, ScopedPatch, applies_cleanly, find_series, touched_files
from spark_build.upstream.recipe import project_name
from spark_build.upstream.refs import ResolvedRef, read_recipe_files, resolve_ref
from spark_build.upstream.versions import check_supported


@dataclass(frozen=True)
class SourcePlan:
    dist: str  # the project the tree holds: vllm, or the built-in example
    ref: ResolvedRef
    facts: SourceFacts
    patches: PatchSeries | None
    torch_packages: tuple[str, ...]
    torch_index: str
    torch_why: str
    # Per patch beyond its tested range: whether it applies cleanly to the ref's files (None: the
    # plan's recipe files do not hold every file it edits; the patch step decides).
    beyond: tuple[tuple[str, bool | None], ...] = ()

    def lines(self, config: BuildConfig) -> list[str]:
        """The plan of the source, as `--dry-run` prints it."""
        lines = [f"ref: {self.ref.describe()}"]
        if config.torch == "existing":
            lines.append(f"torch: {config.torch_choice}")
        else:
            where = f"the wheel folder {config.wheels}" if config.wheels else self.torch_index
            lines.append(f"torch: {' '.join(self.torch_packages)} from {where} — {self.torch_why}")
        if self.facts.gcc_minimum:
            gate = f"{self.ref.name}'s CMakeLists.txt stops the configure below it"
            lines.append(f"host compiler: GCC >= {self.facts.gcc_minimum} ({gate})")
        if config.no_patches:
            lines.append("patches: none (--no-patches)")
        elif self.patches is None or not self.patches.to_try():
            lines.append(f"patches: none cover {self.dist} {self.ref.version or 'at this ref'}")
        else:
            lines.append(f"patches ({self.patches.folder.name}/series, for {self.dist} {self.ref.version}):")
            lines += [f"  {p.label()}: {p.why}" for p in self.patches.patches]
            checked = dict(self.beyond)
            for patch in self.patches.beyond:
                check = _beyond_check(checked.get(patch.name), patch, self.ref.name)
                lines.append(f"  {patch.label()}: {patch.beyond_note()}{check}")
        if self.dist != "vllm":
            return [*lines, f"external projects: none ({self.dist} is not a vLLM tree)"]
        lines.append(
            f"external projects the sources step fetches ({len(self.facts.projects)}; "
            f"what {self.facts.arch} gets from each, before patches):"
        )
        for p in self.facts.projects:
            origin = config.source_mirrors.get(p.name) or p.repository or "?"
            lines.append(f"  {p.name} {p.revision or '?'} from {origin} ({self.facts.arch}: {p.target_use})")
        return lines


def _beyond_check(applies: bool | None, patch: ScopedPatch, ref: str) -> str:
    if applies is None:
        return " — if it applies cleanly (the patch step checks)"
    if applies:
        return f" — applies cleanly to {', '.join(touched_files(patch))} of {ref}"
    consequence = "; required: the patch step stops" if patch.required else f"; without it: {patch.without or '?'}"
    return f" — does not apply to {ref}: skipped{consequence}"


def plan_source(config: BuildConfig, existing_torch: TorchInfo | None = None) -> SourcePlan:
    """Resolve the ref and read its recipe files from a scratch fetch (nothing in the workdir);
    `existing_torch` is the torch `--torch existing` builds against, judged against the source."""
    ref = resolve_ref(config.repo, config.ref)
    with tempfile.TemporaryDirectory(prefix="spark-build-source-plan-") as scratch:
        tree = Path(scratch) / "tree"
        read_recipe_files(config.repo, ref.name, tree)
        facts = read_facts(tree, ref.version, arch=recipe_arch(config.arch or "12.1a"))
        dist = project_name(tree)
        patches = find_series(config.patches_dir, dist, ref.version)
        beyond = tuple((p.name, applies_cleanly(tree, p)) for p in (patches.beyond if patches else ()))
        if existing_torch is not None:
            cmakelists = tree / "CMakeLists.txt"
            standard = source_standard(cmakelists.read_text(errors="replace")) if cmakelists.is_file() else None
            label = f"{dist} {ref.version}" if ref.version else dist
            check_existing_torch(existing_torch, standard, facts.torch.packages if facts.torch else (), label)
    if dist == "vllm" and ref.version is not None:
        check_supported(ref.version)  # before torch is installed, not at the sources step
    packages, index, why = config.torch_packages, config.torch_index, "as given (--torch-packages)"
    pin = facts.torch
    if "torch_packages" in config.from_source:
        if pin is not None:
            packages, why = pin.packages, f"pinned by {pin.read_from} of {ref.name}"
        else:
            why = f"{ref.name} pins no torch in {CUDA_REQUIREMENTS}: the newest"
    if "torch_index" in config.from_source:
        exact = exact_torch(packages)
        if exact is not None:
            index, index_why = torch_index_for(exact)
            why = f"{why}; {index_why}"
    return SourcePlan(dist, ref, facts, patches, tuple(packages), index, why, beyond)


def check_existing_torch(torch: TorchInfo, standard: int | None, pins: Sequence[str], label: str) -> None:
    """`--torch existing` with a torch whose headers need a newer C++ than the source compiles
    as is bad input: refused here, before anything is written, not by an `#error` minutes into
    the compile."""
    floor = torch_floor(torch.location) if torch.location is not None else None
    if standard is None or floor is None or floor <= standard:
        return
    pinned = f" ({' '.join(pins)})" if pins else ""
    raise UsageError(
        f"--torch existing: {conflict_line(torch.version, floor, standard, label)}",
        hint=f"drop --torch existing to build against the torch {label} pins{pinned}, "
        f"or give --python an interpreter whose torch accepts C++{standard}",
    )


def with_source(config: BuildConfig, plan: SourcePlan) -> BuildConfig:
    """The config the steps run with: the resolved ref (`latest` becomes its tag) and the torch
    the source pins where the user named none."""
    return dataclasses.replace(
        config, ref=plan.ref.name, torch_packages=plan.torch_packages, torch_index=plan.torch_index
    )
