"""The source a completion configures, from a real release's sdist: patched for its version,
CMake scoped to the targets built, and only their external projects fetched — offline, the one
source it lacks is named (vLLM 0.33.0's `_qutlass_C` needs CUTLASS v4.7.1, which no mirror
here has). GitHub is out of reach: qutlass comes from the git bundle of ../shared/mirror."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from packaging.version import Version

from spark_build.arch.cmake_configure import StubLibrary, build_stubs, driver_link_stub
from spark_build.durable import sha256_of
from spark_build.errors import UsageError
from spark_build.nightly.completion_source import prepare_tree, scope
from spark_build.proc import Runner
from spark_build.steps.changes import apply_change
from tests.artifacts import cutlass_headers, git_bundle, vllm_sdist
from tests.conftest import CUDA_HOME, ROOT


def test_offline_the_0_33_0_completion_names_the_one_source_it_lacks_after_scoping_cmake_to_qutlass(
    tmp_path: Path,
) -> None:
    runner, log = Runner(), tmp_path / "complete.log"
    tree, notes = prepare_tree(
        vllm_sdist("0.33.0"),
        "vllm-0.33.0.tar.gz",
        Version("0.33.0"),
        tmp_path / "completion",
        patches_dir=ROOT / "patches",
        changes=(),
        apply_change=_no_change,
        run=lambda argv: runner.run(argv, log=log, step="complete", check=False),
    )
    # The series' FA3 patch (0006, releases up to 0.33.x) is in the tree, as a source build has it.
    assert notes == ("patches: 0006-build-fa3-only-for-9.x-archs-0.17.patch applied to vllm 0.33.0",)
    with pytest.raises(UsageError) as stopped:
        scope(
            tree,
            ["_qutlass_C"],
            Version("0.33.0"),
            sources_cache=tmp_path / "sources",
            mirrors={"qutlass": str(git_bundle("qutlass"))},
            offline=True,
        )
    message = stopped.value.message
    assert message.startswith("1 of 2 external projects missing — offline")
    assert "cutlass v4.7.1 (https://github.com/nvidia/cutlass.git)" in message
    assert "qutlass" not in message  # fetched from the bundle: its pin e74319e3 is there
    text = (tree / "CMakeLists.txt").read_text()
    assert "    include(cmake/external_projects/qutlass.cmake)\n" in text
    for dropped in ("deepgemm", "flashmla", "tml_fa4", "vllm_flash_attn", "fmha_sm100"):
        assert f"left out of a configure for _qutlass_C: include(cmake/external_projects/{dropped}.cmake)" in text


def test_a_prepared_tree_is_reused_while_its_sdist_patches_and_changes_are_the_same(tmp_path: Path) -> None:
    """Unpacking again would give every source a new mtime and Ninja would recompile the objects
    an interrupted completion had finished; a change of targets only re-scopes the CMake."""
    runner, log = Runner(), tmp_path / "complete.log"

    def run(argv: list[str | os.PathLike[str]]) -> int:
        return runner.run(argv, log=log, step="complete", check=False)

    cutlass = cutlass_headers("v4.2.1")
    mirrors = {"qutlass": str(git_bundle("qutlass")), "cutlass": f"{cutlass}#sha256={sha256_of(cutlass)}"}

    def tree(changes: tuple[tuple[str, Path], ...] = ()) -> tuple[Path, tuple[str, ...]]:
        return prepare_tree(
            vllm_sdist("0.13.0"),
            "vllm-0.13.0.tar.gz",
            Version("0.13.0"),
            tmp_path / "completion",
            patches_dir=ROOT / "patches",
            changes=changes,
            apply_change=lambda src, diff, label: apply_change(src, diff, label, run),
            run=run,
        )

    source, notes = tree()
    assert notes == (
        "patches: 0001-qutlass-12.0f-family-code-with-cuda13.patch, 0002-build-fa3-only-for-9.x-archs.patch, "
        "0007-native-12.x-code-for-ptx-only-families.patch applied to vllm 0.13.0",
    )
    first = scope(source, ["_C"], Version("0.13.0"), sources_cache=tmp_path / "sources", mirrors=mirrors, offline=True)
    assert sorted(first.env) == ["QUTLASS_SRC_DIR", "VLLM_CUTLASS_SRC_DIR"]
    header = source / "csrc" / "ops.h"
    stamp = header.stat().st_mtime_ns
    assert tree() == (source, notes) and header.stat().st_mtime_ns == stamp
    with pytest.raises(UsageError, match=r"vllm-flash-attn 86f8f157"):  # FA2's project, not mapped offline
        scope(source, ["_vllm_fa2_C"], Version("0.13.0"), sources_cache=tmp_path / "sources", mirrors=mirrors,
              offline=True)  # fmt: skip
    assert header.stat().st_mtime_ns == stamp
    assert "    include(cmake/external_projects/vllm_flash_attn.cmake)\n" in (source / "CMakeLists.txt").read_text()
    # A change to compiled code makes a new tree with the change in it.
    diff = tmp_path / "ops.patch"
    first_two = (source / "csrc" / "ops.h").read_text().splitlines(keepends=True)[:2]
    hunk = f" {first_two[0]}+// changed\n {first_two[1]}"
    diff.write_text(
        f"diff --git a/csrc/ops.h b/csrc/ops.h\n--- a/csrc/ops.h\n+++ b/csrc/ops.h\n@@ -1,2 +1,3 @@\n{hunk}"
    )
    changed, notes = tree((("ops.patch", diff),))
    assert notes[-1] == "ops.patch applied to the release's source"
    assert (changed / "csrc" / "ops.h").read_text().splitlines()[1] == "// changed"


def _no_change(tree: Path, diff: Path, label: str) -> None:
    raise AssertionError(f"no change was asked for, {label} was applied")


def test_an_extension_linked_against_the_driver_stand_in_keeps_libcuda_in_its_needed_list(tmp_path: Path) -> None:
    """torch's CMake links with -Wl,--as-needed: an empty libcuda.so stand-in would be dropped
    from an extension that calls the driver (qutlass calls cuTensorMapEncodeTiled)."""
    runner, log = Runner(), tmp_path / "link.log"
    stub = driver_link_stub(CUDA_HOME, tmp_path / "stubs", runner, log, "complete")
    driver = StubLibrary("CUDA_cuda_driver_LIBRARY", "libcuda.so.1")
    (empty,) = build_stubs([driver], tmp_path / "empty", runner, log, "complete").values()
    caller = tmp_path / "caller.c"
    caller.write_text("int cuTensorMapEncodeTiled(void);\nint call(void) { return cuTensorMapEncodeTiled(); }\n")

    def needed(driver: Path) -> list[str]:
        out = tmp_path / f"ext-{driver.parent.name}.so"
        link = ["gcc", "-shared", "-fPIC", "-o", out, caller, "-Wl,--as-needed", driver]
        runner.run(link, log=log, step="complete")
        dynamic = subprocess.run(["readelf", "-d", out], capture_output=True, text=True, check=True).stdout
        return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)

    assert "libcuda.so.1" in needed(stub)
    assert "libcuda.so.1" not in needed(empty)  # what the completion linked before: the driver call unbound
