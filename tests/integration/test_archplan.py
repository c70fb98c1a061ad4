"""The arch plan from the real thing: vLLM 0.13.0's CMake configured before and after the
patch series, producing again what tests/data/ holds trimmed (tests/unit/test_archplan.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.version import Version

from spark_build.arch.cmake_configure import build_stubs, missing_link_libraries
from spark_build.arch.compat import Verdict, best_on
from spark_build.arch.plan import (
    COMMON_FAMILY,
    ArchPlan,
    CompileCosts,
    PlanRow,
    plan_source,
    raise_for_problems,
)
from spark_build.compile.extension_targets import TargetBuild, configure_targets
from spark_build.compile.governed import ninja_outputs, planned_objects
from spark_build.compile.jobplan import DEFAULT_PROFILE, load_estimates
from spark_build.compile.ninjalog import parse_ninja_log, seed_ninja_log
from spark_build.errors import StepFailed
from spark_build.proc import Runner
from spark_build.steps.compile import release_version
from spark_build.upstream.fetched import FetchedSources
from spark_build.upstream.patches import find_series
from spark_build.upstream.recipe import recipe_for
from spark_build.upstream.sources import prepare_sources
from spark_build.upstream.targeted_cmake import target_cmake
from spark_build.upstream.versions import external_projects
from spark_build.wheel.archaudit import find_cuobjdump, parse_listing
from tests.artifacts import git_bundle
from tests.conftest import ROOT
from tests.integration.conftest import triton_stand_in
from tests.unit.test_archplan import SPARK, builds_for_major

# --- the real thing: vLLM 0.13.0's CMake, before and after the patch series --------------------

CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


def _run(argv: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class RealPlans:
    before: ArchPlan
    after: ArchPlan
    after_build: Path
    applied: list[str]
    sources: FetchedSources


@pytest.fixture(scope="session")
def real_plans(tmp_path_factory: pytest.TempPathFactory, cu130_venv: Path, vllm_source: Path) -> Iterator[RealPlans]:
    """Two real configures of vLLM 0.13.0 for 12.1a: pristine, then with the patches/vllm/ patches for 0.13.0."""
    work = tmp_path_factory.mktemp("archplan")
    mirrors = {
        "vllm-flash-attn": str(git_bundle("flash-attention")),
        "flashmla": str(git_bundle("FlashMLA")),
        "qutlass": str(git_bundle("qutlass")),
        "triton_kernels": str(triton_stand_in(work / "triton")),
    }
    # No submodules: the bundles have none, and a configure does not read them. CUTLASS comes
    # from the nvidia-cutlass package (offline, nothing else has it).
    sources = prepare_sources(
        vllm_source, Version("0.13.0"), work / "sources", mirrors=mirrors, cutlass_venv=cu130_venv, submodules=False
    )
    runner = Runner()

    def plan(name: str) -> tuple[ArchPlan, Path]:
        plan = plan_source(
            vllm_source, work / name, "12.1a", venv=cu130_venv, cuda_home=CUDA_HOME,
            sources=sources, runner=runner, log=work / f"{name}.log", target=SPARK,
            costs=CompileCosts.from_profile(json.loads(DEFAULT_PROFILE.read_text())),
            remedies={"_vllm_fa3_C": "removed by patches/vllm/0002-build-fa3-only-for-9.x-archs.patch"},
        )  # fmt: skip
        return plan, work / name

    before, _ = plan("before")
    recipe = recipe_for(vllm_source, "v0.13.0")
    series = find_series(ROOT / "patches", recipe.dist, recipe.version)
    assert series is not None and series.patches, f"no patches for {recipe.dist} {recipe.version}"
    for patch in series.patches:
        _run(["git", "-C", vllm_source, "apply", "--check", patch.path])
        _run(["git", "-C", vllm_source, "apply", patch.path])
        _run(["git", "-C", vllm_source, "apply", "--reverse", "--check", patch.path])  # how the patch step sees it
    after, after_build = plan("after")
    yield RealPlans(before, after, after_build, [p.name for p in series.patches], sources)
    shutil.rmtree(work, ignore_errors=True)


def _row(plan: ArchPlan, name: str) -> PlanRow:
    (row,) = [r for r in plan.rows if r.name == name]
    return row


def test_real_vllm_0_13_configure_builds_12_0_family_code_and_sm_120a_qutlass_for_12_1a(real_plans: RealPlans) -> None:
    before = real_plans.before
    assert before.parsed.families[COMMON_FAMILY] == ("12.0",)
    assert (_row(before, "scaled_mm_c3x_sm120").note, _row(before, "scaled_mm_c3x_sm120").verdict) == (
        "12.0f",
        Verdict.NATIVE,
    )
    assert _row(before, "NVFP4").verdict is Verdict.NATIVE
    assert _row(before, "FA2").verdict is Verdict.JIT
    qutlass = _row(before, "_C qutlass:qutlass/csrc")
    assert (qutlass.sass, qutlass.objects, qutlass.verdict) == (("sm_120a",), 6, Verdict.CANNOT_RUN)
    # qutlass would be dispatched and cannot run: a stop. Pristine setup.py also builds FA3 for a
    # 12.1a target, 222 objects of nvcc's default arch: dead weight, priced from the shipped
    # profile of this very build and named with the patch that removes it; the build goes on.
    assert [r.name for r in before.problems()] == ["_C qutlass:qutlass/csrc"]
    with pytest.raises(StepFailed, match=r"1 kernel group\(s\) .* on 12\.1: _C qutlass:qutlass/csrc \(sm_120a\)"):
        raise_for_problems(before)
    dead = before.dead_weight()
    assert [r.name for r in dead] == [
        "_vllm_fa3_C vllm-flash-attn:hopper",
        "_vllm_fa3_C vllm-flash-attn:hopper/instantiations",
    ]
    assert sum(r.objects for r in dead) == 222
    assert 14_000 < sum(r.cpu_s or 0 for r in dead) < 14_406  # the profile's FA3 CPU-s, less 2 host objects
    assert all(r.remedy.startswith("removed by patches/vllm/0002") for r in dead)
    assert before.built is not None and "_vllm_fa3_C" in before.built  # asked of setup.py itself
    assert len(before.parsed.objects) > 300  # _C, _moe_C, cumem_allocator, FA2, FA3


def test_after_the_series_every_family_built_for_12_x_runs_natively_on_sm_121(real_plans: RealPlans) -> None:
    after = real_plans.after
    assert real_plans.applied == [
        "0001-qutlass-12.0f-family-code-with-cuda13.patch",
        "0002-build-fa3-only-for-9.x-archs.patch",
        "0007-native-12.x-code-for-ptx-only-families.patch",
    ]
    assert after.problems() == []
    raise_for_problems(after)
    twelve = [r for r in after.rows if builds_for_major(r, SPARK)]
    assert len(twelve) >= 10 and all(r.verdict is Verdict.NATIVE for r in twelve)
    assert _row(after, "_C qutlass:qutlass/csrc").sass == ("sm_120f",)
    # FA3 is still configured, but setup.py no longer builds it: its 222 objects cost nothing.
    assert after.built is not None and "_vllm_fa3_C" not in after.built and "_vllm_fa2_C" in after.built
    fa3 = _row(after, "_vllm_fa3_C vllm-flash-attn:hopper/instantiations")
    assert not fa3.dead and fa3.objects == 220 and "setup.py skips _vllm_fa3_C" in fa3.note
    # The series changes nothing else: every other row is as before.
    # 0007 turns FA2 and vLLM's Marlin, Marlin MoE and Hadamard objects into 12.0 SASS.
    native = ("FA2", "Marlin", "_vllm_fa2_C", "_moe_C csrc/moe/marlin_moe_wna16", "_C csrc/quantization/gptq_marlin")
    native += ("_C csrc/quantization/marlin", "_C csrc/quantization/hadamard")
    for name in native:
        assert all(r.sass == ("sm_120",) and not r.ptx for r in after.rows if r.name.startswith(name)), name
    changed = ("_C qutlass:qutlass/csrc", "_vllm_fa3_C", *native)
    untouched = [r for r in real_plans.before.rows if not r.name.startswith(changed)]
    assert [r for r in after.rows if not r.name.startswith(changed)] == untouched


def test_a_real_vllm_object_compiled_with_its_12_1a_flags_carries_code_that_runs_on_sm_121(
    real_plans: RealPlans, tmp_path: Path
) -> None:
    entries = json.loads((real_plans.after_build / "compile_commands.json").read_text())
    (entry,) = [e for e in entries if e["file"].endswith("csrc/cuda_utils_kernels.cu")]
    argv = shlex.split(entry["command"])
    obj = tmp_path / "cuda_utils_kernels.cu.o"
    argv[argv.index("-o") + 1] = str(obj)
    _run(argv, cwd=entry["directory"])
    cuobjdump = find_cuobjdump(CUDA_HOME, os.environ, venv=Path(sys.prefix))
    listing = _run([cuobjdump, "--list-elf", obj]).stdout.splitlines()
    codes = parse_listing(listing)
    assert [c.name for c in codes] == ["sm_120"]
    assert best_on(codes, SPARK) is Verdict.NATIVE


def test_seeded_from_the_arch_plan_the_scheduling_ninja_starts_vllm_s_longest_object_first(
    real_plans: RealPlans, scheduling_ninja: Path
) -> None:
    # The compile step's seeding, on vLLM 0.13.0's real manifest: objects named as Ninja names
    # them (flash-attention's below its own binary folder, qutlass's after its checkout path).
    build = real_plans.after_build
    assert real_plans.after.built is not None
    targets = sorted(real_plans.after.built)
    estimates = load_estimates([], DEFAULT_PROFILE, targets=frozenset(targets))
    outputs = ninja_outputs(json.loads((build / "compile_commands.json").read_text()), build)

    def started() -> list[str]:
        dry = _run([scheduling_ninja, "-n", "-j32", *targets], cwd=build).stdout.splitlines()
        return [line for line in dry if "Building" in line]

    unseeded = started()
    manifest_rank = next(i for i, line in enumerate(unseeded) if "scaled_mm_c2x.cu.o" in line)
    assert manifest_rank > 30  # without durations every object of _C weighs the same
    seeded = seed_ninja_log(build / ".ninja_log", outputs, estimates.seconds)
    assert len(seeded) == len(estimates.seconds) == 165  # every object setup.py builds, FA3's none
    # the progress line's total: the same 165, read from the arch plan's own list
    assert (
        len(
            planned_objects(
                json.loads((build / "compile_commands.json").read_text()), build, estimates, frozenset(targets)
            )
        )
        == 165
    )
    manifest = (build / "build.ninja").read_text()
    assert all(f"build {out}:" in manifest for out in seeded)

    _run([scheduling_ninja, "-t", "recompact"], cwd=build)  # what CMake runs after generating
    assert len(parse_ninja_log(build / ".ninja_log")) == 165

    order = started()
    assert "scaled_mm_c2x.cu.o" in order[0]  # 953 s measured: first
    assert len(order) == len(unseeded) == 165


def test_the_patched_0_13_0_tree_is_named_0_13_0_not_the_next_release_s_dev_build(
    vllm_source: Path, cu130_venv: Path, tmp_path: Path
) -> None:
    """setuptools_scm (what vLLM's setup.py names the wheel with) on the real tree, as the
    compile step leaves it: at the tag, made dirty by the patch series."""
    tree = tmp_path / "vllm"
    _run(["git", "clone", "-q", vllm_source, tree])
    for patch in find_series(ROOT / "patches", "vllm", Version("0.13.0")).patches:
        _run(["git", "-C", tree, "apply", patch.path])
    describe = _run(["git", "-C", tree, "describe", "--tags", "--always"]).stdout.strip()
    scm = [cu130_venv / "bin" / "python", "-c", "from setuptools_scm import get_version; print(get_version())"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETUPTOOLS_SCM_PRETEND_VERSION")}

    assert _run(scm, cwd=tree, env=env).stdout.strip().startswith("0.13.1.dev0+g"), "what it did before"
    pinned = release_version("vllm", describe, [])
    assert describe == "v0.13.0" and pinned == "0.13.0"
    assert _run(scm, cwd=tree, env={**env, "SETUPTOOLS_SCM_PRETEND_VERSION": pinned}).stdout.strip() == "0.13.0"
    with_pr = release_version("vllm", describe, ["pr12345"])
    assert _run(scm, cwd=tree, env={**env, "SETUPTOOLS_SCM_PRETEND_VERSION": with_pr}).stdout.strip() == with_pr


def _commands_of(compile_commands: Path, target: str, roots: Sequence[Path]) -> dict[str, str]:
    """Each object of `target` → its compile command, with the source and build folders named
    alike so that two configures of one release in two places compare."""
    found = {}
    for entry in json.loads(compile_commands.read_text()):
        if f"CMakeFiles/{target}.dir/" not in entry["output"]:
            continue
        output, command = entry["output"], entry["command"]
        for root, name in zip(roots, ("<source>", "<build>"), strict=True):
            output, command = output.replace(str(root), name), command.replace(str(root), name)
        found[output] = command
    return found


def test_a_configure_for_c_alone_gives_its_objects_the_compile_commands_of_the_full_configure(
    real_plans: RealPlans, vllm_source: Path, cu130_venv: Path, tmp_path: Path
) -> None:
    """The completion's targeted configure: vLLM 0.13.0 (patched), whose `_C` holds qutlass's
    objects, configured with only the external projects that name `_C`, gives every `_C`
    object the command the arch plan's full configure gave it."""
    tree = tmp_path / "vllm-0.13.0"
    shutil.copytree(vllm_source, tree, ignore=shutil.ignore_patterns(".git"))
    scoped = target_cmake(tree, ["_C"])
    assert scoped.kept == ("cmake/external_projects/qutlass.cmake",)
    assert sorted(scoped.dropped) == [
        "cmake/external_projects/flashmla.cmake",
        "cmake/external_projects/triton_kernels.cmake",
        "cmake/external_projects/vllm_flash_attn.cmake",
    ]
    needed = {p.name for p in scoped.projects(external_projects(tree, Version("0.13.0")))}
    assert needed == {"cutlass", "qutlass"}
    env = {k: v for k, v in real_plans.sources.env.items() if k in ("VLLM_CUTLASS_SRC_DIR", "QUTLASS_SRC_DIR")}
    runner, log, build = Runner(), tmp_path / "configure.log", tmp_path / "build"
    stubs = build_stubs(missing_link_libraries(CUDA_HOME), tmp_path / "stubs", runner, log, "complete")
    python = cu130_venv / "bin" / "python"
    spec = TargetBuild(
        tree, build, tmp_path / "stage", "12.1a", cu130_venv / "bin" / "cmake", CUDA_HOME, python, 1,
        build_type="RelWithDebInfo",
        cmake_args=(f"-DVLLM_PYTHON_EXECUTABLE={python}", *(f"-D{k}={v}" for k, v in stubs.items())),
        env=env,
    )  # fmt: skip
    targeted = _commands_of(configure_targets(spec, runner, log), "_C", (tree, build))
    full = _commands_of(real_plans.after_build / "compile_commands.json", "_C", (vllm_source, real_plans.after_build))
    qutlass = [o for o in full if "qutlass/csrc" in o]
    assert len(qutlass) == 7 and len(full) == 74  # qutlass: bindings.cpp and six .cu files
    assert targeted == full
