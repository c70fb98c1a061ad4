"""Prebuilt first (`invoke build-vllm --prefer-wheel`), against a real HTTP server on 127.0.0.1
that stands in for PyPI (a PEP 691/503 simple index) and GitHub (the release API with asset
digests, and the asset downloads): this machine cannot reach GitHub, and the tests must not
depend on what the real hosts hold tonight.

The wheels are small but real: `vllm` packages whose extensions are CPython modules compiled by
nvcc with GPU code for a chosen arch, so the validation installs them with uv into a fresh venv,
imports them, and reads their GPU code with cuobjdump, as it does for vLLM's own wheel.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from spark_build import config
from spark_build.arch.compat import ComputeCapability
from spark_build.errors import HostProblem
from spark_build.nightly.official import Wanted
from spark_build.nightly.prebuilt import DOWNLOADS, Decision, PreferWheel, prefer_wheel
from spark_build.nightly.transport import RetryPolicy
from spark_build.proc import Runner
from spark_build.steps.validate import wheel_proof
from spark_build.wheel.archaudit import arch_audit
from spark_build.wheel.proof import Proof, prove_wheel
from spark_build.wheel.repatch import Change
from tests.integration.test_audit import NVCC, _run_all
from tests.servers import OfficialHost, sha256

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "x86_64"  # the wheels must install on this test machine; the naming rules are the Spark's
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
GIT_ENV["GIT_COMMITTER_EMAIL"] = "t@t"
QUICK = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01, jitter=0.0)  # an unreachable host, in a second

MODULE = """
#include <Python.h>
__global__ void scale(float* x, float a) {{ x[threadIdx.x] *= a; }}
static struct PyModuleDef definition = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, NULL}};
PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&definition); }}
"""


@dataclass(frozen=True)
class Extensions:
    """Importable CUDA extension modules: `_C` for the Spark (sm_121a) or for an RTX 50xx only
    (sm_120a, which a 12.1 cannot run), and FA3 for Hopper (sm_90a, never used on a 12.1)."""

    spark_c: Path
    rtx_c: Path
    fa3: Path


@pytest.fixture(scope="session")
def extensions(tmp_path_factory: pytest.TempPathFactory) -> Extensions:
    if not os.access(NVCC, os.X_OK):
        pytest.skip(f"needs nvcc at {NVCC}")
    work = tmp_path_factory.mktemp("extensions")
    include = sysconfig.get_paths()["include"]
    for name in ("_C", "_vllm_fa3_C"):
        (work / f"{name}.cu").write_text(MODULE.format(name=name))

    def nvcc(gencode: str, source: str, out: str) -> list[str | Path]:
        return [NVCC, "-shared", "-Xcompiler", "-fPIC", f"-I{include}", "-gencode", gencode, "-o", out, source]

    _run_all(
        [
            nvcc("arch=compute_121a,code=sm_121a", "_C.cu", "spark_C.so"),
            nvcc("arch=compute_120a,code=sm_120a", "_C.cu", "rtx_C.so"),
            nvcc("arch=compute_90a,code=sm_90a", "_vllm_fa3_C.cu", "fa3.so"),
        ],
        cwd=work,
    )
    return Extensions(work / "spark_C.so", work / "rtx_C.so", work / "fa3.so")


def vllm_wheel(
    folder: Path, filename: str, c_extension: Path, fa3: Path, requires: tuple[str, ...] = (), init: bytes = b""
) -> Path:
    """A wheel laid out like vLLM's: `vllm/_C`, `vllm/vllm_flash_attn/_vllm_fa3_C`, a RECORD;
    `init` is its `vllm/__init__.py`."""
    version = filename.split("-")[1]
    dist_info = f"vllm-{version}.dist-info"
    files = {
        "vllm/__init__.py": init,
        "vllm/_C.abi3.so": c_extension.read_bytes(),
        "vllm/vllm_flash_attn/__init__.py": b"",
        "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so": fa3.read_bytes(),
        f"{dist_info}/METADATA": "\n".join(
            ["Metadata-Version: 2.1", "Name: vllm", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        ).encode()
        + b"\n",
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: spark-build-tests\nRoot-Is-Purelib: false\n"
        + f"Tag: cp38-abi3-{filename.rsplit('-', 1)[1].removesuffix('.whl')}\n".encode(),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / filename
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def git_runner(argv: Sequence[str | os.PathLike[str]]) -> int:
    return subprocess.run([str(a) for a in argv], capture_output=True).returncode


@dataclass
class Fallback:
    """Stands for the source build: counts the calls and keeps the decision each was given for
    its summary.json (the build itself is tested elsewhere)."""

    build: Callable[[Decision], int] | None = None
    calls: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def __call__(self, decision: Decision) -> int:
        self.calls += 1
        self.decisions.append(decision)
        return self.build(decision) if self.build else 0


def run_prefer_wheel(
    host: OfficialHost,
    tmp_path: Path,
    version: str,
    *,
    torch_asked: tuple[str, ...] = (),
    changes: tuple[Change, ...] = (),
    wheels: Path | None = None,
    offline: bool = False,
    index: str | None = None,
    prove: Callable[[Path], Proof] | None = None,
    build: Callable[[Decision], int] | None = None,
    no_compiler: str | None = None,
    accept_missing: bool = False,
) -> tuple[int, list[str], Fallback, list[Path]]:
    """`prefer_wheel` as the command runs it, for 12.1a, with the real proof (or `prove`); returns
    the exit code, what it said, the fallback (or `build` inside it), and the wheels it asked the
    proof about."""
    cfg = config.resolve(
        {"workdir": str(tmp_path / "work"), "logs_dir": str(tmp_path / "logs"), "arch": "12.1a", "no_serve": True}
    )
    proved: list[Path] = []

    def real_proof(wheel: Path) -> Proof:
        (tmp_path / "logs").mkdir(exist_ok=True)
        return prove_wheel(wheel_proof(cfg, wheel, requirements=(), serve=False), Runner(), tmp_path / "logs" / "v.log")

    def asked(wheel: Path) -> Proof:
        proved.append(wheel)
        return (prove or real_proof)(wheel)

    options = PreferWheel(
        ref=f"v{version}",
        arch="12.1a",
        cuda_major=13,
        wheelhouse=cfg.wheelhouse,
        logs_dir=cfg.logs_dir,
        torch_index=cfg.torch_index,
        torch_asked=torch_asked,
        torch_existing=None,
        install_venv=cfg.layout.install_venv,
        index=index or host.simple,
        releases=host.release_api,
        machine=MACHINE,
        changes=changes,
        wheels=wheels,
        offline=offline,
        retry=QUICK,
        arch_list="12.1a" if no_compiler else "",
        no_compiler=no_compiler,
        accept_missing=accept_missing,
    )
    said: list[str] = []
    fallback = Fallback(build)
    wanted = Wanted(Version(version), 13, MACHINE)
    code = prefer_wheel(options, wanted, prove=asked, build=fallback, say=said.append, run=git_runner)
    return code, said, fallback, proved


# --------------------------------------------------------------------------------------------


def test_a_release_asset_that_runs_on_the_spark_is_validated_published_and_installable_with_its_line(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """Up to 0.19 the CUDA 13 wheel is a `+cu130` GitHub release asset; the command takes it."""
    name = f"vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "upstream", name, extensions.spark_c, extensions.fa3)
    official_host.releases["v0.15.0"] = [(name, official_host.add(wheel))]
    work = tmp_path / "work"
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-vllm", "--prefer-wheel"]
    argv += ["--ref", "v0.15.0", "--arch", "12.1a", "--no-serve", "--workdir", str(work)]
    argv += ["--logs-dir", str(tmp_path / "logs"), "--wheel-releases", official_host.release_api]
    argv += ["--wheel-index", official_host.simple, "--torch-index", official_host.simple]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    published = work / "wheelhouse" / "vllm" / name
    assert sha256(published) == sha256(wheel)
    assert f"{name}#sha256={sha256(wheel)}" in (work / "wheelhouse" / "vllm" / "index.html").read_text()
    assert "not used on 12.1 (vLLM never dispatches there): vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so" in done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("install with: ")).removeprefix("install with: ")
    venv = work / "vllm-venv"
    assert line.startswith(f"{shlex.quote(sys.executable)} -m venv {venv} && {venv}/bin/python -m pip install ")
    assert not (work / "state.json").exists(), "no source build was started"
    decision = json.loads((tmp_path / "logs" / "latest" / "summary.json").read_text())["prefer_wheel"]
    assert (decision["taken"], decision["found"], decision["found_in"]) == (True, name, "GitHub release assets")
    shown = subprocess.run(
        [*argv[:5], "report", "--logs-dir", str(tmp_path / "logs")], capture_output=True, text=True, timeout=120
    )
    assert f"prefer-wheel: took {name} (GitHub release assets): validated here" in shown.stdout, shown.stderr

    # The install line, typed as printed into a new shell: no venv active, no uv on PATH; pip's
    # index is the stand-in for PyPI, so nothing comes from the real one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}
    env |= {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": official_host.simple}
    typed = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=300)
    assert typed.returncode == 0, typed.stdout + typed.stderr
    imported = subprocess.run(
        [venv / "bin" / "python", "-c", "import vllm._C, vllm; print(vllm.__file__)"], capture_output=True, text=True
    )
    assert imported.stdout.startswith(str(venv)), imported.stderr


def test_an_index_wheel_whose_gpu_code_cannot_run_on_the_spark_is_refused_and_the_source_build_runs(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """From 0.20 the plain wheel on the index is the CUDA 13 one (manylinux_2_28 from 0.22)."""
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "upstream", name, extensions.rtx_c, extensions.fa3)
    official_host.publish_on_index(wheel)
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0")
    assert (code, fallback.calls) == (0, 1)
    assert [p.name for p in proved] == [name]
    why = next(line for line in said if "failed validation" in line)
    assert "vllm/_C.abi3.so: kernel family _C cannot run on 12.1, it has only sm_120a" in why
    assert said[-1] == "prebuilt: building v0.22.0 from source instead"
    assert not (tmp_path / "work" / "wheelhouse" / "vllm").exists(), "nothing unproven is published"


def test_a_plain_pep503_mirror_is_read_too(official_host: OfficialHost, extensions: Extensions, tmp_path: Path) -> None:
    official_host.json_api = False
    name = f"vllm-0.21.0-cp38-abi3-manylinux_2_24_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "upstream", name, extensions.spark_c, extensions.fa3)
    official_host.publish_on_index(wheel)
    code, said, fallback, _ = run_prefer_wheel(official_host, tmp_path, "0.21.0")
    assert (code, fallback.calls) == (0, 0), said
    assert (tmp_path / "work" / "wheelhouse" / "vllm" / name).is_file()


def test_a_wheel_that_does_not_match_its_published_sha256_is_never_validated_nor_kept(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "upstream", name, extensions.spark_c, extensions.fa3)
    official_host.publish_on_index(wheel, published_sha256="0" * 64)
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0")
    assert (code, fallback.calls, proved) == (0, 1, [])
    assert any(f"{name} not taken: sha256 mismatch" in line for line in said)
    decision = fallback.decisions[0]
    assert (decision.taken, decision.found, decision.found_in) == (False, name, "package index")
    assert decision.why.startswith(f"{name} not taken: sha256 mismatch"), "the source build's summary says why"
    assert not (tmp_path / "work" / "wheelhouse" / DOWNLOADS / name).exists()


def test_a_release_without_the_cuda13_asset_builds_from_source_and_says_what_was_missing(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    cuda12 = vllm_wheel(
        tmp_path / "upstream", "vllm-0.16.0-cp38-abi3-manylinux_2_31_x86_64.whl", extensions.spark_c, extensions.fa3
    )
    official_host.releases["v0.16.0"] = [(cuda12.name, official_host.add(cuda12))]
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.16.0")
    assert (code, fallback.calls, proved) == (0, 1, [])
    assert said[0].startswith(
        f"prebuilt: no official wheel for v0.16.0: no vllm-0.16.0+cu130-cp38-abi3-manylinux_2_35_{MACHINE}.whl "
        "with a sha256 in the v0.16.0 release"
    )


def test_a_wheel_built_for_another_torch_than_the_one_asked_for_is_refused_before_any_install(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "upstream", name, extensions.spark_c, extensions.fa3, ("torch==2.14.0",))
    official_host.publish_on_index(wheel)
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0", torch_asked=("torch==2.9.0",))
    assert (code, fallback.calls, proved) == (0, 1, [])
    assert f"prebuilt: {name} not taken: it needs torch==2.14.0; --torch-packages asks for torch==2.9.0" in said


# --------------------------------------------------------------------------------------------
# Offline: the official wheel from --wheels DIR, with the sha256 its release published beside it


def test_offline_the_official_wheel_in_the_wheel_folder_is_validated_and_published_without_asking_any_host(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_{MACHINE}.whl"
    wheels = tmp_path / "wheels"
    wheel = vllm_wheel(wheels, name, extensions.spark_c, extensions.fa3)
    (wheels / f"{name}.sha256").write_text(f"{sha256(wheel)}  {name}\n")
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.15.0", wheels=wheels, offline=True)
    assert (code, fallback.calls) == (0, 0), said
    assert f"prebuilt: found {name} in the wheel folder ({wheel})" in said
    assert [p.name for p in proved] == [name]
    assert sha256(tmp_path / "work" / "wheelhouse" / "vllm" / name) == sha256(wheel)
    assert sorted(p.name for p in wheels.iterdir()) == [name, f"{name}.sha256"], "the user's folder is untouched"


def test_offline_a_wheel_folder_copy_that_does_not_match_its_sha256_is_not_taken(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    wheels = tmp_path / "wheels"
    vllm_wheel(wheels, name, extensions.spark_c, extensions.fa3)
    (wheels / f"{name}.sha256").write_text(f"{'0' * 64}  {name}\n")
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0", wheels=wheels)
    assert (code, fallback.calls, proved) == (0, 1, [])
    assert any(line.startswith(f"prebuilt: {name} not taken: sha256 mismatch for {wheels / name}") for line in said)


def test_offline_without_a_wheel_folder_one_note_and_the_source_build(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3))
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0", offline=True)
    assert (code, fallback.calls, proved) == (0, 1, [])
    assert said == [
        "prebuilt: offline without --wheels, the official wheel is not looked up "
        "(--wheels DIR: it and its NAME.sha256)",
        "prebuilt: building v0.22.0 from source instead",
    ]


# --------------------------------------------------------------------------------------------
# Changes on top: Python-only ones are carried onto the official wheel, native ones are compiled

FIX = """\
diff --git a/vllm/__init__.py b/vllm/__init__.py
--- a/vllm/__init__.py
+++ b/vllm/__init__.py
@@ -0,0 +1 @@
+FIXED = "by the change"
diff --git a/tests/test_fixed.py b/tests/test_fixed.py
new file mode 100644
--- /dev/null
+++ b/tests/test_fixed.py
@@ -0,0 +1 @@
+import vllm
"""


def test_a_python_only_patch_is_carried_onto_the_official_wheel_which_is_then_validated_and_published(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3))
    patch = tmp_path / "fix.patch"
    patch.write_text(FIX)
    change = Change("fix.patch", patch, True, "patch1")
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0", changes=(change,))
    assert (code, fallback.calls) == (0, 0), said
    patched = f"vllm-0.22.0+patch1-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    assert [p.name for p in proved] == [patched], "the patched wheel is the one validated"
    assert (tmp_path / "work" / "wheelhouse" / "vllm" / patched).is_file()
    with zipfile.ZipFile(tmp_path / "work" / "wheelhouse" / "vllm" / patched) as archive:
        assert 'FIXED = "by the change"' in archive.read("vllm/__init__.py").decode()
        assert not any(n.startswith("tests/") for n in archive.namelist()), "a PR's tests are not shipped"


def test_a_change_to_compiled_code_without_a_compiler_means_a_source_build_without_downloading_the_official_wheel(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3))
    diff = tmp_path / "pr-8.diff"
    diff.write_text("--- a/csrc/kernel.cu\n+++ b/csrc/kernel.cu\n@@ -1 +1 @@\n-// kernel\n+// kernel, faster\n")
    change = Change("PR #8", diff, False, "pr8")
    code, said, fallback, proved = run_prefer_wheel(official_host, tmp_path, "0.22.0", changes=(change,))
    assert (code, fallback.calls, proved) == (0, 1, [])
    assert said[0] == "prebuilt: PR #8 changes compiled code and no compiler was set up to complete it"
    assert not (tmp_path / "work" / "wheelhouse" / DOWNLOADS).exists()


def test_a_python_only_pr_on_the_official_wheel_from_the_command_line(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """`--pr 7` with `--prefer-wheel`: the PR is fetched from the repository (a local one with
    refs/pull/7/head stands in for GitHub) against the release tag, carried onto the official
    wheel as 0.15.0+cu130.pr7, validated and published."""
    upstream = tmp_path / "vllm-upstream"
    upstream.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=upstream, env=env, check=True, capture_output=True, text=True).stdout

    git("init", "-q", "-b", "main")
    (upstream / "vllm").mkdir()
    (upstream / "vllm" / "__init__.py").write_text("")
    (upstream / "csrc").mkdir()
    (upstream / "csrc" / "kernel.cu").write_text("// kernel\n")
    git("add", "-A")
    git("commit", "-q", "-m", "v0.15.0")
    git("tag", "v0.15.0")
    git("checkout", "-q", "-b", "pr7")
    (upstream / "vllm" / "__init__.py").write_text('FIXED = "by PR 7"\n')
    git("commit", "-q", "-am", "PR 7")
    git("update-ref", "refs/pull/7/head", "HEAD")
    name = f"vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3)
    official_host.releases["v0.15.0"] = [(name, official_host.add(wheel))]
    work = tmp_path / "work"
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-vllm", "--prefer-wheel"]
    argv += ["--ref", "v0.15.0", "--repo", str(upstream), "--pr", "7", "--arch", "12.1a", "--no-serve"]
    argv += [
        "--workdir",
        str(work),
        "--logs-dir",
        str(tmp_path / "logs"),
        "--wheel-releases",
        official_host.release_api,
    ]
    argv += ["--wheel-index", official_host.simple, "--torch-index", official_host.simple]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    patched = work / "wheelhouse" / "vllm" / f"vllm-0.15.0+cu130.pr7-cp38-abi3-manylinux_2_35_{MACHINE}.whl"
    with zipfile.ZipFile(patched) as archive:
        assert archive.read("vllm/__init__.py").decode() == 'FIXED = "by PR 7"\n'
    assert "prebuilt: PR #7 (Python only) carried onto it" in done.stdout
    assert " vllm==0.15.0+cu130.pr7" in done.stdout, "the install line names the patched version"


# --------------------------------------------------------------------------------------------
# A host problem is no verdict on the wheel: it stops the run (exit 1), never the source build


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused, as an unreachable host's is."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def latest_summary(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "logs" / "latest" / "summary.json").read_text()))


def test_an_unreachable_index_stops_with_exit_1_naming_it_and_never_builds_from_source(
    official_host: OfficialHost, tmp_path: Path
) -> None:
    port = closed_port()
    with pytest.raises(HostProblem) as stopped:
        run_prefer_wheel(official_host, tmp_path, "0.22.0", index=f"http://127.0.0.1:{port}/simple", build=refuse)
    error = stopped.value
    assert error.exit_code == 1
    assert error.message.startswith(f"cannot look up the official wheel: reading http://127.0.0.1:{port}/simple/vllm/")
    assert "Connection refused" in error.message
    assert error.hint is not None and "not a verdict on the official wheel" in error.hint
    summary = latest_summary(tmp_path)
    assert (summary["exit_code"], summary["error"]) == (1, error.message)
    assert summary["prefer_wheel"]["taken"] is False and summary["prefer_wheel"]["stopped_by"] == error.message


def refuse(decision: Decision) -> int:
    raise AssertionError(f"the source build ran after a host problem: {decision.why}")


def test_a_cuobjdump_that_cannot_start_stops_with_exit_1_naming_it_not_as_a_failed_validation(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """The prover runs the real arch audit with a cuobjdump whose loader is missing (as a binary
    needing a newer glibc fails to start); how `prove_wheel` finds its cuobjdump is its own affair."""
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3))
    cuobjdump = tmp_path / "cuda" / "bin" / "cuobjdump"
    cuobjdump.parent.mkdir(parents=True)
    cuobjdump.write_text("#!/lib/ld-linux-that-is-not-there.so.1\n")
    cuobjdump.chmod(0o755)

    def audit_with_it(wheel: Path) -> Proof:
        report = arch_audit(wheel, ComputeCapability.parse("12.1"), cuobjdump)
        return Proof({}, [report], list(report.problems))

    with pytest.raises(HostProblem) as stopped:
        run_prefer_wheel(official_host, tmp_path, "0.22.0", prove=audit_with_it, build=refuse)
    assert stopped.value.exit_code == 1
    assert stopped.value.message.startswith(f"cannot run cuobjdump at {cuobjdump}: ")
    assert "failed validation" not in stopped.value.message
    assert latest_summary(tmp_path)["prefer_wheel"]["found"] == name
    assert not (tmp_path / "work" / "wheelhouse" / "vllm").exists(), "an unjudged wheel is not published"


def test_a_wheel_whose_import_kills_the_interpreter_is_refused_naming_the_signal_while_torch_alone_imports(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """The real proof, on a wheel whose `import vllm` kills the interpreter with SIGSEGV. The probe
    imported torch alone first, in a process of its own, and that lived: the crash is the wheel's,
    a finding that refuses it (the source build is told why), not a host problem."""
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    crash = b"import ctypes\nctypes.string_at(0)\n"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3, init=crash))
    code, said, fallback, _ = run_prefer_wheel(official_host, tmp_path, "0.22.0")
    assert (code, fallback.calls) == (0, 1)
    why = fallback.decisions[0].why
    assert not fallback.decisions[0].taken
    assert "failed validation" in why and "SIGSEGV" in why
    assert "exited with" not in why, "the cause, not the command"
    assert not (tmp_path / "work" / "wheelhouse" / "vllm").exists(), "a refused wheel is not published"


def prefer_wheel_command(host: OfficialHost, tmp_path: Path, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-vllm", "--prefer-wheel"]
    argv += ["--arch", "12.1a", "--no-serve", "--workdir", str(tmp_path / "work"), "--logs-dir", str(tmp_path / "logs")]
    return [*argv, "--wheel-releases", host.release_api, "--wheel-index", host.simple, *options]


def invoke_logs(tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), command, "--logs-dir", str(tmp_path / "logs")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def history_outcomes(tmp_path: Path) -> list[str]:
    shown = invoke_logs(tmp_path, "history")
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "history", "--json"]
    listed = subprocess.run([*argv, "--logs-dir", str(tmp_path / "logs")], capture_output=True, text=True, timeout=120)
    assert shown.returncode == listed.returncode == 0 and "no builds" not in shown.stderr, shown.stderr
    return [row["outcome"] for row in json.loads(listed.stdout)]


def test_an_unreachable_torch_index_during_validation_stops_the_command_with_the_cause_and_a_run_to_report(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """What the user met: the validation's install could not reach the torch index. The message
    names the installer's own error line, not the command, and no source build starts."""
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3, requires=("torch",))
    official_host.publish_on_index(wheel)
    port = closed_port()
    argv = prefer_wheel_command(official_host, tmp_path, "--ref", "v0.22.0")
    done = subprocess.run(
        [*argv, "--torch-index", f"http://127.0.0.1:{port}/simple"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "from source" not in done.stdout + done.stderr
    first = done.stderr.splitlines()[0]
    reach = f"error: [validate] cannot reach http://127.0.0.1:{port}/simple to install {name}"
    assert first.startswith(reach), done.stderr
    assert "exited with" not in first
    assert "fix: a failure of this host, its tools or its network" in done.stderr
    assert history_outcomes(tmp_path) == ["failed at prefer-wheel (official wheel not judged: host problem)"]
    report = invoke_logs(tmp_path, "report")
    assert report.returncode == 0, report.stderr
    shown = " ".join(report.stdout.split())  # rich wraps long lines at 150 columns
    assert f"prefer-wheel: stopped by a host problem, no verdict on {name} (package index): cannot reach" in shown


def test_a_refused_wheel_whose_source_build_stops_early_names_both_causes_and_leaves_a_run(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    """The wheel is refused for its GPU code; the source build then stops before its first step
    (a repository without the release's tag). The last message says why the wheel was refused and why the
    build stopped, and `history` and `report` show the run."""
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.rtx_c, extensions.fa3))
    repo = tmp_path / "repo-without-the-tag"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=GIT_ENV)
    argv = prefer_wheel_command(official_host, tmp_path, "--ref", "v0.22.0", "--repo", str(repo))
    done = subprocess.run([*argv, "--torch-index", official_host.simple], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "prebuilt: building v0.22.0 from source instead" in done.stdout
    refused = f"--prefer-wheel did not take the official wheel: {name} failed validation: "
    assert refused in done.stderr and "kernel family _C cannot run on 12.1" in done.stderr, done.stderr
    assert done.stderr.startswith("error: "), "the source build's own error comes first"
    summary = latest_summary(tmp_path)
    assert summary["exit_code"] == done.returncode and summary["error"]
    assert summary["prefer_wheel"]["taken"] is False and summary["prefer_wheel"]["found"] == name
    [outcome] = history_outcomes(tmp_path)
    assert outcome.endswith("(official wheel not taken)"), outcome
    report = invoke_logs(tmp_path, "report")
    assert report.returncode == 0, report.stderr
    shown = " ".join(report.stdout.split())  # rich wraps long lines at 150 columns
    assert f"prefer-wheel: {name} (package index) not taken, built from source: {name} failed validation" in shown
