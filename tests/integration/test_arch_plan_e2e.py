"""`invoke arch-plan` on the real vLLM 0.13.0 source, offline: sdist → local git repo tagged
v0.13.0 → CUDA 13 torch → build-deps → sources from git bundles (tests/artifacts.py) → vLLM's own CMake
configure → the table. Before the patch series qutlass is built as sm_120a, which a GB10
cannot run, and FA2, Marlin, Marlin MoE and Hadamard only by PTX JIT; after it every 12.x family
runs natively and only scaled_mm_c2x stays on PTX JIT, with its reason in the JIT bill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.artifacts import git_bundle
from tests.conftest import ROOT
from tests.integration.conftest import triton_stand_in


@pytest.fixture(scope="module")
def offline_setup(vllm_source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist as the repo to clone, and an invoke.yaml naming every local stand-in."""
    root = tmp_path_factory.mktemp("vllm-offline")
    return vllm_source, _settings(root / "offline.yaml", {"triton_kernels": triton_stand_in(root / "triton")})


@pytest.fixture(scope="module")
def offline_with_bundles(offline_setup: tuple[Path, Path]) -> tuple[Path, Path]:
    """The same, with the git bundles of flash-attention, FlashMLA and qutlass (GitHub's, or
    the test mirror's) that the sources step fetches for a configure."""
    source, settings = offline_setup
    mirrors = {
        "vllm-flash-attn": git_bundle("flash-attention"),
        "flashmla": git_bundle("FlashMLA"),
        "qutlass": git_bundle("qutlass"),
        "triton_kernels": settings.parent / "triton",
    }
    return source, _settings(settings.parent / "offline-bundles.yaml", mirrors)


def _settings(path: Path, mirrors: dict[str, Path]) -> Path:
    path.write_text(
        "spark_build:\n"
        "  offline: true\n"
        "  cutlass_from_package: true\n"
        "  source_mirrors:\n"
        + "".join(f"    {name}: {where}\n" for name, where in mirrors.items())
        # The CUDA 13.0 torch this machine kind keeps on disk (see /work/.library/env).
        + "  torch_index: file:///opt/pypi-more/simple\n"
        "  torch_packages: torch==2.14.1\n"
        "  torch_cuda: '13'\n"
    )
    return path


def arch_plan(settings: Path, source: Path, workdir: Path, uv_cache: Path, *extra: str):
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "-f", str(settings), "arch-plan",
            "--repo", str(source), "--arch", "12.1a", "--workdir", str(workdir), "--logs-dir", str(workdir / "logs"),
            "--uv-cache-dir", str(uv_cache), *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=1500)


def build_vllm(settings: Path, source: Path, workdir: Path, uv_cache: Path, *extra: str):
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "-f", str(settings), "build-vllm",
            "--repo", str(source), "--arch", "12.1a", "--workdir", str(workdir), "--logs-dir", str(workdir / "logs"),
            "--uv-cache-dir", str(uv_cache), "--no-serve", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=1500)


def rows(workdir: Path) -> dict[str, list[dict]]:
    plan = json.loads((workdir / "logs" / "latest" / "arch-plan.json").read_text())
    out: dict[str, list[dict]] = {}
    for row in plan["rows"]:
        out.setdefault(row["name"], []).append(row)
    return out


def test_pristine_0_13_0_stops_on_qutlass_the_patched_plan_passes_and_a_cxx20_torch_stops_the_compile(
    offline_with_bundles, tmp_path, uv_cache
):
    source, settings = offline_with_bundles
    work = tmp_path / "work"

    pristine = arch_plan(settings, source, work, uv_cache, "--no-patches")
    assert pristine.returncode == 1, pristine.stdout + pristine.stderr
    assert "would be built without code that runs on 12.1" in pristine.stderr
    before = rows(work)
    qutlass = [r for name, rs in before.items() if "qutlass" in name for r in rs]
    assert qutlass and all(r["sass"] == ["sm_120a"] and r["verdict"] == "cannot run" for r in qutlass)
    assert before["scaled_mm_c3x_sm120"][0]["sass"] == ["sm_120f"], "CUDA 13 builds the 12.0 family code"
    assert "CUDA supported target architectures: 12.0" in (work / "logs" / "latest" / "arch-plan.log").read_text()
    fa3 = [r for name, rs in before.items() if name.startswith("_vllm_fa3_C") for r in rs]
    assert fa3 and all(r["dead"] for r in fa3), "pristine setup.py compiles FA3 for no GPU: a problem"
    pristine_bill = json.loads((work / "logs" / "latest" / "arch-plan.json").read_text())["jit_bill"]

    patched = arch_plan(settings, source, work, uv_cache, "--resume")
    assert patched.returncode == 0, patched.stdout + patched.stderr
    steps = {
        s["name"]: s["status"] for s in json.loads((work / "logs" / "latest" / "summary.json").read_text())["steps"]
    }
    assert steps["torch"] == steps["clone"] == "skipped", "the patch change reruns only what follows it"
    assert steps["patch"] == steps["arch-plan"] == "done"
    after = rows(work)
    qutlass = [r for name, rs in after.items() if "qutlass" in name for r in rs]
    assert qutlass and all(r["sass"] == ["sm_120f"] and r["verdict"] == "native" for r in qutlass)
    twelve_x = [r for rs in after.values() for r in rs if any(c.startswith("sm_12") for c in r["sass"])]
    assert twelve_x and all(r["verdict"] == "native" for r in twelve_x)
    fa3 = [r for name, rs in after.items() if name.startswith("_vllm_fa3_C") for r in rs]
    assert fa3 and all(not r["dead"] and "setup.py skips _vllm_fa3_C" in r["note"] for r in fa3)
    # Patch 0007: FA2 and vLLM's Marlin, Marlin MoE and Hadamard kernels run natively; of the
    # 96 objects that ran by PTX JIT, only scaled_mm_c2x's one is left, and the bill says why.
    fa2 = after["_vllm_fa2_C vllm-flash-attn:csrc/flash_attn/src"]
    assert [(r["objects"], r["sass"], r["ptx"], r["verdict"]) for r in fa2] == [(60, ["sm_120"], [], "native")]
    assert after["FA2"][0]["sass"] == ["sm_120"], "the FA2_ARCHS the patch prints wins over flash-attention's"
    for group in (
        "_moe_C csrc/moe/marlin_moe_wna16",
        "_C csrc/quantization/gptq_marlin",
        "_C csrc/quantization/hadamard",
    ):
        assert [r["verdict"] for r in after[group]] == ["native"], group
    jit = [r for rs in after.values() for r in rs if r["kind"] == "objects" and r["verdict"] == "jit"]
    assert [(r["name"], r["objects"], r["sass"]) for r in jit] == [("_C csrc/quantization/w8a8", 1, ["sm_89"])]
    plan = json.loads((work / "logs" / "latest" / "arch-plan.json").read_text())
    (line,) = plan["jit_bill"]["lines"]
    assert line["family"] == "scaled_mm_c2x" and "stays PTX JIT" in line["note"] and line["jit_s"] > 0
    before_bill = {entry["family"]: entry["objects"] for entry in pristine_bill["lines"]}
    assert before_bill["FA2"] == 60 and {"Marlin MoE", "GPTQ Marlin", "Hadamard"} <= set(before_bill)

    # The only CUDA 13 torch here is 2.14.1, whose headers need C++20; vLLM 0.13.0 compiles as
    # C++17. build-vllm goes on from the plan and stops at the compile's first moment, naming
    # the torch vLLM pins, instead of an #error at the first object that includes torch.
    build = build_vllm(settings, source, work, uv_cache, "--resume")
    assert build.returncode == 1, build.stdout + build.stderr
    assert "[compile] torch 2.14.1+cu130's headers need C++20, but vllm 0.13.0 compiles as C++17" in build.stderr
    assert "--torch-packages 'torch==2.9.0 torchvision==0.24.0 torchaudio==2.9.0'" in build.stderr
    summary = json.loads((work / "logs" / "latest" / "summary.json").read_text())
    steps = {s["name"]: s["status"] for s in summary["steps"]}
    assert steps["arch-plan"] == "skipped" and steps["compile"] == "failed"
    assert not list((work / "src").glob("build/**/.ninja_log")), "nothing was compiled"

    # --ninja stock: the escape hatch from the scheduling Ninja reruns the ninja step alone.
    stock = build_vllm(settings, source, work, uv_cache, "--resume", "--ninja", "stock")
    assert stock.returncode == 1, stock.stdout + stock.stderr
    assert "ninja: the stock Ninja (--ninja stock), objects in manifest order" in stock.stdout + stock.stderr
    summary = json.loads((work / "logs" / "latest" / "summary.json").read_text())
    steps = {s["name"]: s["status"] for s in summary["steps"]}
    assert steps["arch-plan"] == "skipped" and steps["ninja"] == "done" and steps["compile"] == "failed"


def test_an_existing_torch_whose_headers_need_cxx20_is_refused_before_anything_is_written(
    offline_setup, cu130_venv, tmp_path, uv_cache
):
    """`--torch existing` with torch 2.14 (C++20 headers) for vLLM 0.13.0 (C++17): refused in
    seconds, by the plan and by the build, instead of an #error minutes into the compile."""
    source, settings = offline_setup
    work = tmp_path / "work"
    existing = ("--torch", "existing", "--python", str(cu130_venv / "bin" / "python"))
    for extra in (("--dry-run",), ()):
        result = build_vllm(settings, source, work, uv_cache, *existing, *extra)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        (line,) = [text for text in result.stderr.splitlines() if text.startswith("error:")]
        assert "--torch existing: torch 2.14.1's headers need C++20, but vllm 0.13.0 compiles as C++17" in line
        assert (
            "drop --torch existing to build against the torch vllm 0.13.0 pins "
            "(torch==2.9.0 torchvision==0.24.0 torchaudio==2.9.0)" in result.stderr
        )
        assert not work.exists(), "nothing is written: not even the workdir"
