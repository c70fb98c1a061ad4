"""`--prefer-wheel --native` end to end on the example upstream: its release's wheel as if
published with `_C` built for `8.0+PTX` (as vLLM's official wheels ship FA2), which a DGX Spark
(12.1) runs only by PTX JIT. The wheel proves itself (JIT runs), so plain `--prefer-wheel` takes it
and names `_C` as left on JIT with its bill; `--native` rebuilds `_C` for 12.1a with the release's
own CMake (whose TORCH_CUDA_ARCH_LIST switch is real) and checks, from the completed wheel's arch
table, that it turned native. No GPU is needed: the verdicts come from the wheels' own SASS/PTX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from spark_build.arch.compat import ComputeCapability
from spark_build.wheel.archaudit import arch_audit, find_cuobjdump
from tests.conftest import CUDA_HOME, needs_nvcc
from tests.integration.test_completion_e2e import (
    COMPLETED,
    OFFICIAL,
    RELEASE,
    ROOT,
    cmake_tools,
    official_wheel,
    release_repo,
)

__all__ = ["cmake_tools", "release_repo"]  # fixtures shared with the completion's own e2e test


@needs_nvcc
def test_native_rebuilds_the_extension_the_official_wheel_runs_only_by_ptx_jit_and_checks_it_turned_native(
    release_repo: Path, cmake_tools: Path, tmp_path: Path
) -> None:
    official = official_wheel(release_repo, cmake_tools, tmp_path / "official", arch="8.0+PTX")
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    env = {**os.environ, "PATH": os.pathsep.join([str(cmake_tools), os.environ["PATH"]])}

    def prefer_wheel(name: str, *more: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
        work, logs = tmp_path / name / "work", tmp_path / name / "logs"
        argv = [*invoke, "build-vllm", "--prefer-wheel", *more, "--ref", RELEASE, "--arch", "12.1a"]
        argv += ["--repo", str(release_repo), "--wheels", str(official.parent), "--no-serve"]
        argv += ["--workdir", str(work), "--logs-dir", str(logs)]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done, work, logs

    # Without --native: the official wheel is taken as it is, and the decision names the JIT left.
    plain, work, logs = prefer_wheel("plain")
    assert (work / "wheelhouse" / "vllm" / OFFICIAL).is_file()
    completion = json.loads((logs / "latest" / "summary.json").read_text())["prefer_wheel"]["completion"]
    assert (completion["choice"], completion["targets"], completion["native"]) == ("take", [], [])
    (left,) = completion["left_on_jit"]
    assert left.startswith("_C (_C): runs by PTX JIT: 8 modules, ") and left.endswith("--native builds it for 12.1a")
    assert "the official build asked for no 12.x arch" in left
    assert f"prebuilt: left on PTX JIT: {left}" in plain.stdout

    # With --native: _C is rebuilt for 12.1a, swapped in, and its arch table shows it native.
    native, work, logs = prefer_wheel("native", "--native")
    assert "prebuilt: complete: building only _C: _C runs by PTX JIT: 8 modules" in native.stdout
    assert "prebuilt: --native: _C native on 12.1a (the completed wheel's arch table)" in native.stdout
    published = work / "wheelhouse" / "vllm" / COMPLETED
    cuobjdump = find_cuobjdump(CUDA_HOME, os.environ, venv=Path(sys.executable))
    (before,) = arch_audit(official, ComputeCapability.parse("12.1"), cuobjdump).extensions
    (after,) = arch_audit(published, ComputeCapability.parse("12.1"), cuobjdump).extensions
    assert (before.sass, before.ptx, before.verdict.value if before.verdict else None) == (
        ("sm_80",),
        ("compute_80",),
        "jit",
    )
    assert (after.sass, after.ptx, after.verdict.value if after.verdict else None) == (("sm_121a",), (), "native")
    summary = json.loads((logs / "latest" / "summary.json").read_text())
    completion = summary["prefer_wheel"]["completion"]
    assert (completion["choice"], completion["targets"], completion["native"]) == ("complete", ["_C"], ["_C"])
    assert completion["left_on_jit"] == []
    assert summary["results"]["validate"]["jit_bill"]["12.1"]["lines"] == []
