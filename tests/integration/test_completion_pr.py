"""A change to compiled code on a prebuilt wheel, end to end on the example upstream: its release
(tagged as vLLM's `v0.22.0`) with a second extension target, `_extra_C`, beside `_C` — as vLLM
builds `_moe_C` beside `_C` — and that release's official-style wheel on a loopback package index
(GitHub and PyPI cannot be reached from here; the index is the stand-in `--prefer-wheel` reads).

`--patch` touching `_extra_C`'s `.cu` must rebuild `_extra_C` alone (the release's own configure
says which target compiles the file), on top of the official wheel; a patch touching
CMakeLists.txt must be decided as the source build, naming the file, before any wheel is fetched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from spark_build.upstream.example import SECOND_TAG
from spark_build.wheel.relabel import record_row, record_text
from spark_build.wheel.repatch import Change
from tests.conftest import CUDA_HOME, needs_nvcc
from tests.integration import test_completion_e2e, test_prebuilt
from tests.integration.test_prebuilt import MACHINE, Extensions, run_prefer_wheel
from tests.servers import OfficialHost

ROOT = Path(__file__).resolve().parents[2]
extensions = test_prebuilt.extensions  # nvcc-built extension modules (`_C` with sm_121a SASS)
cmake_tools = test_completion_e2e.cmake_tools  # cmake >= 3.26 and ninja
RELEASE = "v0.22.0"
OFFICIAL = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"

EXTRA_CU = """\
// _extra_C: a second extension target beside _C, as vLLM builds _moe_C beside _C.
#include <Python.h>

__global__ void extra_fill(float* out, float value) { out[threadIdx.x] = value; }

static const char kExtraVersion[] = "extra kernels, release";

static PyObject* version(PyObject*, PyObject*) { return PyUnicode_FromString(kExtraVersion); }

static PyMethodDef methods[] = {{"version", version, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_extra_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__extra_C() { return PyModule_Create(&module); }
"""
EXTRA_CMAKE = """
Python3_add_library(_extra_C MODULE USE_SABI 3.8 WITH_SOABI csrc/extra.cu)
install(TARGETS _extra_C LIBRARY DESTINATION spark_example COMPONENT _extra_C)
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def release_repo(upstream: Path, tmp_path: Path) -> Path:
    """The example's second release plus `_extra_C`, tagged `v0.22.0`."""
    repo = tmp_path / "release-repo"
    subprocess.run(["git", "clone", "-q", upstream, repo], check=True)
    _git(repo, "checkout", "-q", "-b", "release", SECOND_TAG)
    (repo / "csrc" / "extra.cu").write_text(EXTRA_CU)
    with (repo / "CMakeLists.txt").open("a") as cmake:
        cmake.write(EXTRA_CMAKE)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a second extension target")
    _git(repo, "tag", RELEASE)
    return repo


def _patch(repo: Path, out: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """A patch against the release as `git diff` writes it: in each file, `old` replaced by `new`."""
    for path, (old, new) in edits.items():
        (repo / path).write_text((repo / path).read_text().replace(old, new))
    out.write_text(_git(repo, "diff"))
    _git(repo, "checkout", "-q", "--", *edits)
    return out


def _official_wheel(repo: Path, c_extension: Path, folder: Path) -> Path:
    """The release's wheel as published, lacking nothing a Spark runs: `_extra_C` compiled by nvcc
    from the release's `csrc/extra.cu` for sm_121a, `_C` an nvcc-built sm_121a module, a RECORD."""
    assert CUDA_HOME is not None
    folder.mkdir(parents=True)
    include = sysconfig.get_paths()["include"]
    extra = folder / "_extra_C.abi3.so"
    nvcc = [CUDA_HOME / "bin" / "nvcc", "-shared", "-Xcompiler", "-fPIC", f"-I{include}", "-DPy_LIMITED_API=0x03080000"]
    nvcc += ["-gencode", "arch=compute_121a,code=sm_121a", "-o", extra, "-x", "cu", "-"]
    subprocess.run(nvcc, input=_git(repo, "show", f"{RELEASE}:csrc/extra.cu").encode(), check=True, cwd=folder)
    root = folder / "wheel-root"
    (root / "spark_example").mkdir(parents=True)
    (root / "spark_example" / "__init__.py").write_text(_git(repo, "show", f"{RELEASE}:spark_example/__init__.py"))
    (root / "spark_example" / "_C.abi3.so").write_bytes(c_extension.read_bytes())
    (root / "spark_example" / "_extra_C.abi3.so").write_bytes(extra.read_bytes())
    info = root / "vllm-0.22.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.22.0\n")
    (info / "WHEEL").write_text(
        f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp38-abi3-manylinux_2_28_{MACHINE}\n"
    )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    (info / "RECORD").write_text(record_text([*(record_row(root, p) for p in files), [f"{info.name}/RECORD", "", ""]]))
    wheel = folder / OFFICIAL
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in [*files, info / "RECORD"]:
            archive.write(path, path.relative_to(root).as_posix())
    return wheel


@needs_nvcc
def test_a_patch_to_one_extensions_cu_rebuilds_only_that_target_on_top_of_the_official_wheel(
    release_repo: Path, cmake_tools: Path, extensions: Extensions, official_host: OfficialHost, tmp_path: Path
) -> None:
    official = _official_wheel(release_repo, extensions.spark_c, tmp_path / "official")
    official_host.publish_on_index(official)
    edits = {"csrc/extra.cu": ("release", "patched"), "spark_example/__init__.py": ('"unknown"', '"patched"')}
    patch = _patch(release_repo, tmp_path / "faster-extra.patch", edits)
    work, logs = tmp_path / "work", tmp_path / "logs"
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    argv = [*invoke, "build-vllm", "--prefer-wheel", "--ref", RELEASE, "--arch", "12.1a", "--repo", str(release_repo)]
    argv += [
        "--patch",
        str(patch),
        "--wheel-index",
        official_host.simple,
        "--wheel-releases",
        official_host.release_api,
    ]
    argv += ["--no-serve", "--workdir", str(work), "--logs-dir", str(logs)]
    env = {**os.environ, "PATH": os.pathsep.join([str(cmake_tools), os.environ["PATH"]])}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "prebuilt: faster-extra.patch: csrc/extra.cu is compiled into _extra_C (the configure's compile" in said
    assert "prebuilt: faster-extra.patch (its Python files; its compiled code is built) carried onto it" in said
    assert "prebuilt: complete: building only _extra_C: changed by faster-extra.patch (csrc/extra.cu)" in said
    assert not (work / "state.json").exists(), "no source build was started"

    # Only _extra_C's object was compiled; the published wheel carries the change in it, _C as shipped.
    ninja_log = (work / "completion" / "build" / ".ninja_log").read_text()
    outputs = [line.split("\t")[3] for line in ninja_log.splitlines() if not line.startswith("#")]
    objects = [o for o in outputs if o.endswith(".o")]
    assert objects and all("CMakeFiles/_extra_C.dir/" in o for o in objects), objects
    (published,) = (work / "wheelhouse" / "vllm").glob("vllm-0.22.0+patch*.sm121a-*.whl")
    with zipfile.ZipFile(official) as before, zipfile.ZipFile(published) as after:
        assert before.read("spark_example/_C.abi3.so") == after.read("spark_example/_C.abi3.so")
        extra = after.read("spark_example/_extra_C.abi3.so")
        assert b"extra kernels, patched" in extra and b"extra kernels, release" not in extra
        assert '"patched"' in after.read("spark_example/__init__.py").decode(), "the Python part carried too"

    completion = json.loads((logs / "latest" / "summary.json").read_text())["prefer_wheel"]["completion"]
    assert (completion["choice"], completion["targets"]) == ("complete", ["_extra_C"])
    assert completion["changes"][0]["compiled_into"] == {"csrc/extra.cu": "_extra_C"}
    report = subprocess.run([*invoke, "report", "--logs-dir", str(logs)], capture_output=True, text=True, timeout=120)
    assert "prefer-wheel change: faster-extra.patch: csrc/extra.cu is compiled into _extra_C" in report.stdout
    history = subprocess.run([*invoke, "history", "--json", "--logs-dir", str(logs)], capture_output=True, text=True)
    assert [row["outcome"] for row in json.loads(history.stdout)] == [
        "ok (official wheel, completed: _extra_C for faster-extra.patch)"
    ]


def test_a_patch_to_cmakelists_is_decided_as_the_source_build_naming_the_file_before_any_wheel_is_fetched(
    release_repo: Path, official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    official_host.publish_on_index(
        test_prebuilt.vllm_wheel(tmp_path / "up", OFFICIAL, extensions.spark_c, extensions.fa3)
    )
    patch = _patch(release_repo, tmp_path / "cmake.patch", {"CMakeLists.txt": ("NVCC_THREADS 1", "NVCC_THREADS 2")})
    change = Change("cmake.patch", patch, False, "patch1")
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0", changes=(change,))
    assert (code, fallback.calls, proved) == (0, 1, [])
    why = "cmake.patch changes CMakeLists.txt, which every extension target depends on"
    assert said[:2] == [f"prebuilt: {why}", "prebuilt: building v0.22.0 from source instead"]
    (decision,) = fallback.decisions
    assert decision.why == why and decision.completion is not None
    assert decision.completion["changes"][0]["beyond"] == ["CMakeLists.txt"]
    assert not (tmp_path / "work" / "wheelhouse").exists(), "no wheel was downloaded"
