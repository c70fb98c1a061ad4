"""The wheel audits, run on real libraries built here with nvcc and gcc, read by the real cuobjdump.

The session fixture compiles one tiny CUDA library per case (a native `sm_121a` build, an
`sm_120a`-only build that cannot run on the Spark, a PTX-only build, a family `sm_120f` build
linked against the shared `libcudart.so.13`, two kernel families in one library) and a few
host-only ELF files whose NEEDED entries name a CUDA-12 runtime or libraries that exist nowhere.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from spark_build.arch.compat import ComputeCapability, Verdict
from spark_build.errors import StepFailed
from spark_build.wheel.archaudit import arch_audit, find_cuobjdump
from spark_build.wheel.dispatch import VLLM_DISPATCH
from spark_build.wheel.linkage import LibrarySearch, linkage_audit, read_ld_cache
from tests.unit.test_audit import CUDA_HOME, SPARK

NVCC = CUDA_HOME / "bin" / "nvcc"


KERNEL = """
__global__ void {name}(float* x, float a) {{ x[threadIdx.x] *= a; }}
extern "C" void launch_{name}(float* x, float a) {{ {name}<<<1, 32>>>(x, a); }}
"""


# --------------------------------------------------------------------------------------------
# Real libraries


@dataclass(frozen=True)
class Built:
    root: Path
    venv: Path
    wheel: Path

    def search(self) -> LibrarySearch:
        """What the venv's interpreter would answer `SEARCH_PROBE`: its site-packages."""
        return LibrarySearch.for_interpreter([str(self.venv / "lib/python3.12/site-packages")], {})

    def lib(self, name: str) -> Path:
        """The directory holding only library `name` (as `pkg/<name>.so`), to audit alone."""
        return self.root / name


def _run_all(commands: Sequence[Sequence[str | Path]], cwd: Path) -> None:
    """Run the commands side by side (nvcc is mostly waiting on its own children)."""
    procs = [
        (cmd, subprocess.Popen([str(c) for c in cmd], cwd=cwd, stderr=subprocess.PIPE, text=True)) for cmd in commands
    ]
    for cmd, proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{err}"


def _nvcc(gencode: str, out: Path | str, source: str, *extra: str) -> list[str | Path]:
    """One nvcc command for one `-gencode`; `-c` in `extra` gives an object instead of a library."""
    kind = [] if "-c" in extra else ["-shared"]
    return [NVCC, *kind, "-Xcompiler", "-fPIC", *extra, "-gencode", gencode, "-o", out, source]


def _stub(directory: Path, soname: str) -> list[str | Path]:
    """A gcc command for an empty shared object whose DT_SONAME is `soname`."""
    directory.mkdir(parents=True, exist_ok=True)
    return ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", directory / soname, "stub.c"]


@pytest.fixture(scope="session")
def cuobjdump() -> Path:
    return find_cuobjdump(CUDA_HOME, os.environ, Path(sys.prefix))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not os.access(NVCC, os.X_OK) or shutil.which("gcc") is None:
        pytest.skip(f"needs nvcc at {NVCC} and gcc")
    work = tmp_path_factory.mktemp("audit")
    src, site = work / "src", work / "venv/lib/python3.12/site-packages"
    src.mkdir()
    (work / "runpath" / "pkg").mkdir(parents=True)
    for name in ("scale", "moe_align_kernel", "fp4_gemm_kernel"):
        (src / f"{name}.cu").write_text(KERNEL.format(name=name))
    (src / "stub.c").write_text("int spark_stub(void) { return 0; }\n")
    (src / "consumer.c").write_text("int consumer(void) { return 1; }\n")

    def out(name: str) -> Path:
        (work / name / "pkg").mkdir(parents=True, exist_ok=True)
        return work / name / "pkg" / f"{name}.so"

    _run_all(
        [
            _nvcc("arch=compute_121a,code=sm_121a", out("sm121a"), "scale.cu"),
            _nvcc("arch=compute_120a,code=sm_120a", out("sm120a"), "scale.cu"),
            _nvcc("arch=compute_80,code=compute_80", out("ptx80"), "scale.cu"),
            _nvcc("arch=compute_120f,code=sm_120f", out("cudart13"), "scale.cu", "-cudart", "shared"),
            _nvcc("arch=compute_121a,code=sm_121a", "moe.o", "moe_align_kernel.cu", "-c"),
            _nvcc("arch=compute_120a,code=sm_120a", "fp4.o", "fp4_gemm_kernel.cu", "-c"),
            ["gcc", "-shared", "-fPIC", "-o", out("hostonly"), "consumer.c"],
            _stub(work / "gone", "libcudart.so.12"),
            _stub(work / "gone", "libgone.so.3"),
            _stub(site / "nvidia/cu13/lib", "libcublas.so.13"),
            _stub(site / "torch/lib", "libtorch_stub.so"),
            _stub(work / "runpath/pkg.libs", "libhelper.so.1"),
        ],
        cwd=src,
    )
    search = [work / "gone", site / "nvidia/cu13/lib", site / "torch/lib", work / "runpath/pkg.libs"]
    # --no-as-needed: the consumer calls nothing, and the NEEDED entries are the point
    consumer: list[str | Path] = [
        "gcc",
        "-shared",
        "-fPIC",
        "-Wl,--no-as-needed",
        *(f"-L{d}" for d in search),
    ]
    consumer.append("consumer.c")
    _run_all(
        [
            [
                "g++",
                "-shared",
                "-o",
                out("kernels"),
                "moe.o",
                "fp4.o",
                f"-L{CUDA_HOME / 'lib64'}",
                "-lcudart",
            ],
            [*consumer, "-o", out("needs_cuda12"), "-l:libcudart.so.12", "-l:libgone.so.3"],
            [*consumer, "-o", out("needs_venv"), "-l:libcublas.so.13"],
            [*consumer, "-o", out("needs_torch"), "-Wl,-rpath,$ORIGIN/../torch/lib", "-l:libtorch_stub.so"],
            [*consumer, "-o", work / "runpath/pkg/uses_helper.so", "-Wl,-rpath,$ORIGIN/../pkg.libs"]
            + ["-l:libhelper.so.1"],
        ],
        cwd=src,
    )
    shutil.rmtree(work / "gone")  # the CUDA-12 runtime and libgone now exist nowhere

    wheel = work / "pkg-0.1-cp312-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("sm121a", "needs_cuda12", "needs_torch"):
            zf.write(out(name), f"pkg/{name}.so")
        zf.writestr("pkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: pkg\nVersion: 0.1\n")
        zf.writestr("pkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        zf.writestr("pkg-0.1.dist-info/RECORD", "")
    return Built(work, work / "venv", wheel)


# ---- arch coverage


def test_sm121a_build_runs_natively_on_the_spark(built: Built, cuobjdump: Path) -> None:
    report = arch_audit(built.lib("sm121a"), SPARK, cuobjdump)
    (ext,) = report.extensions
    assert (ext.path, ext.sass, ext.ptx, ext.verdict) == ("pkg/sm121a.so", ("sm_121a",), (), Verdict.NATIVE)
    assert report.ok and report.verdict is Verdict.NATIVE


def test_sm120a_only_build_cannot_run_on_the_spark_and_fails_naming_the_extension(
    built: Built, cuobjdump: Path
) -> None:
    report = arch_audit(built.lib("sm120a"), SPARK, cuobjdump)
    assert report.extensions[0].verdict is Verdict.CANNOT_RUN
    assert not report.ok
    assert report.problems == ("pkg/sm120a.so: kernel family sm120a cannot run on 12.1, it has only sm_120a",)
    with pytest.raises(StepFailed, match="sm120a cannot run on 12.1"):
        report.raise_if_failed()


def test_sm120a_only_build_runs_natively_on_an_rtx_50xx(built: Built, cuobjdump: Path) -> None:
    assert arch_audit(built.lib("sm120a"), ComputeCapability(12, 0), cuobjdump).ok


def test_ptx_only_build_is_jit_compiled_on_the_spark(built: Built, cuobjdump: Path) -> None:
    (ext,) = arch_audit(built.lib("ptx80"), SPARK, cuobjdump).extensions
    assert (ext.sass, ext.ptx, ext.verdict) == ((), ("compute_80",), Verdict.JIT)


def test_family_cubin_is_reported_as_sm_120f_and_runs_natively_on_the_spark(built: Built, cuobjdump: Path) -> None:
    report = arch_audit(built.lib("cudart13"), SPARK, cuobjdump, promised={"cudart13": ["sm_120f"]})
    assert report.extensions[0].sass == ("sm_120f",)
    assert report.ok and report.verdict is Verdict.NATIVE


def test_kernel_families_in_one_extension_are_judged_apart(built: Built, cuobjdump: Path) -> None:
    families = {"*moe_align*": "moe", "*fp4_gemm*": "fp4"}
    report = arch_audit(built.lib("kernels"), SPARK, cuobjdump, families=families)
    by_family = {f.family: f for f in report.families}
    assert report.extensions[0].verdict is Verdict.NATIVE  # something in it runs…
    assert by_family["moe"].verdict is Verdict.NATIVE
    assert by_family["fp4"].verdict is Verdict.CANNOT_RUN  # …but not the FP4 GEMM
    assert by_family["fp4"].unrunnable_kernels == ("_Z15fp4_gemm_kernelPff",)
    assert report.problems == ("pkg/kernels.so: kernel family fp4 cannot run on 12.1, it has only sm_120a",)
    assert report.verdict is Verdict.CANNOT_RUN


def test_ptx_kernels_are_sorted_into_families_too(built: Built, cuobjdump: Path) -> None:
    report = arch_audit(built.lib("ptx80"), SPARK, cuobjdump, families={"*scale*": "scale"})
    (scale,) = report.families
    assert (scale.family, scale.codes, scale.verdict) == ("scale", ("compute_80",), Verdict.JIT)


def test_missing_code_the_arch_plan_promised_fails_the_audit(built: Built, cuobjdump: Path) -> None:
    report = arch_audit(
        built.lib("kernels"),
        SPARK,
        cuobjdump,
        families={"*moe_align*": "moe", "*fp4_gemm*": "fp4"},
        promised={"moe": ["sm_121a"], "fp4": ["sm_120f"], "_flashmla_C": ["sm_121a"]},
    )
    assert "fp4: the arch plan promised sm_120f (native on 12.1); the wheel carries sm_120a" in report.problems
    assert "the arch plan promised _flashmla_C, but no extension or kernel family has that name" in report.problems
    assert not any(p.startswith("moe:") for p in report.problems)


def test_host_only_libraries_are_listed_but_not_judged(built: Built, cuobjdump: Path) -> None:
    (ext,) = arch_audit(built.lib("hostonly"), SPARK, cuobjdump).extensions
    assert (ext.sass, ext.ptx, ext.verdict) == ((), (), None)
    report = arch_audit(built.lib("hostonly"), SPARK, cuobjdump)
    assert report.problems == ("no extension in hostonly carries GPU code",)


# ---- linkage


def test_cuda13_runtime_resolves_and_is_accepted_in_a_cuda13_build(built: Built) -> None:
    search = LibrarySearch(ld_library_path=(CUDA_HOME / "lib64",))
    report = linkage_audit(built.lib("cudart13"), search, cuda_major=13)
    cudart = next(lib for lib in report.libraries if lib.library == "libcudart.so.13")
    assert cudart.via == "LD_LIBRARY_PATH"
    assert Path(cudart.resolved or "").resolve() == (CUDA_HOME / "lib64" / "libcudart.so.13").resolve()
    libc = next(lib for lib in report.libraries if lib.library == "libc.so.6")
    assert libc.via in ("ld.so.cache", "default dirs") and libc.resolved
    assert report.ok, report.problems


def test_cuda12_runtime_is_rejected_in_a_cuda13_build_and_unresolved_libraries_are_reported(
    built: Built,
) -> None:
    report = linkage_audit(built.lib("needs_cuda12"), LibrarySearch(), cuda_major=13)
    assert "pkg/needs_cuda12.so: libcudart.so.12 is a CUDA 12 library; this build is CUDA 13" in report.problems
    assert "pkg/needs_cuda12.so: libgone.so.3 not found" in report.problems
    with pytest.raises(StepFailed) as err:
        report.raise_if_failed(step="validate")
    assert "libcudart.so.12" in err.value.message and err.value.step == "validate"
    # The fix a Spark owner who ran `pip install vllm` needs: another wheel, not a rebuild of theirs.
    assert err.value.hint is not None and err.value.hint.startswith("this wheel is built for CUDA 12")
    assert "invoke build-vllm" in err.value.hint and "--prefer-wheel" in err.value.hint


def test_a_library_missing_but_no_other_cuda_asks_to_install_it(built: Built) -> None:
    report = linkage_audit(built.lib("needs_cuda12"), LibrarySearch(), cuda_major=12)
    assert "pkg/needs_cuda12.so: libgone.so.3 not found" in report.problems
    assert all(p.endswith("not found") for p in report.problems)
    # The fix fits the cause: something to install, not a rebuild for another CUDA.
    assert report.fix().startswith("install into the venv the wheel runs in what ships the missing libraries")
    assert "the package that ships it for libgone.so.3" in report.fix() and "rebuild" not in report.fix()


def test_libraries_resolve_through_runpath_relative_to_origin(built: Built) -> None:
    report = linkage_audit(built.lib("runpath"), LibrarySearch(), cuda_major=13)
    helper = next(lib for lib in report.libraries if lib.library == "libhelper.so.1")
    assert (helper.resolved, helper.via) == ("pkg.libs/libhelper.so.1", "runpath")
    assert report.ok, report.problems


def test_libraries_resolve_from_the_venvs_nvidia_and_torch_directories(built: Built) -> None:
    report = linkage_audit(built.lib("needs_venv"), built.search(), cuda_major=13)
    cublas = next(lib for lib in report.libraries if lib.library == "libcublas.so.13")
    assert cublas.via == "venv"
    assert cublas.resolved == str(built.venv / "lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13")
    assert report.ok, report.problems


def test_ld_cache_reader_agrees_with_ldconfig() -> None:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    if not Path("/etc/ld.so.cache").is_file() or not os.access(ldconfig, os.X_OK):
        pytest.skip("no ld.so.cache or ldconfig here")
    printed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    expected = {
        (line.split(" (", 1)[0].strip(), line.rsplit("=> ", 1)[1].strip())
        for line in printed.splitlines()[1:]
        if "=> " in line
    }
    cache = read_ld_cache()
    assert {(name, str(path)) for name, paths in cache.items() for path in paths} == expected


# ---- wheels and reports


def test_a_wheel_is_audited_like_its_installed_tree(built: Built, cuobjdump: Path) -> None:
    arch = arch_audit(built.wheel, SPARK, cuobjdump)
    assert {e.path: e.verdict for e in arch.extensions} == {
        "pkg/needs_cuda12.so": None,
        "pkg/needs_torch.so": None,
        "pkg/sm121a.so": Verdict.NATIVE,
    }
    assert arch.ok and arch.source == built.wheel.name

    linkage = linkage_audit(built.wheel, built.search(), cuda_major=13)
    torch = next(lib for lib in linkage.libraries if lib.library == "libtorch_stub.so")
    # $ORIGIN/../torch/lib is looked up as if the wheel were installed into the venv
    assert torch.via == "runpath"
    assert torch.resolved == str(built.venv / "lib/python3.12/site-packages/torch/lib/libtorch_stub.so")
    assert [p for p in linkage.problems if "libcudart.so.12" in p] == [
        "pkg/needs_cuda12.so: libcudart.so.12 is a CUDA 12 library; this build is CUDA 13"
    ]


def test_reports_serialise_to_json_and_render_a_table(built: Built, cuobjdump: Path) -> None:
    arch = arch_audit(built.lib("kernels"), SPARK, cuobjdump, families={"*fp4_gemm*": "fp4"})
    linkage = linkage_audit(built.lib("needs_cuda12"), LibrarySearch(), cuda_major=13)
    summary = json.loads(json.dumps({"arch": arch.to_dict(), "linkage": linkage.to_dict()}))
    assert summary["arch"]["target"] == "12.1"
    assert {f["family"]: f["verdict"] for f in summary["arch"]["families"]} == {
        "fp4": "cannot run",
        "kernels": "native",
    }
    assert summary["linkage"]["ok"] is False

    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    arch.render(console)
    linkage.render(console)
    text = out.getvalue()
    assert "pkg/kernels.so" in text and "sm_121a" in text and "cannot run" in text
    assert "libcudart.so.12 is a CUDA 12 library" in text


# ---- vLLM's dispatch: what a 12.1 never runs is listed apart


@pytest.fixture(scope="session")
def vllm_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree laid out like vLLM 0.33.0's official wheel: the core `_C` for the Spark, FA3 for
    Hopper only, qutlass for 10.x only (as the official wheel ships it)."""
    if not os.access(NVCC, os.X_OK):
        pytest.skip(f"needs nvcc at {NVCC}")
    work = tmp_path_factory.mktemp("vllm-like")
    (work / "scale.cu").write_text(KERNEL.format(name="scale"))
    (work / "vllm" / "vllm_flash_attn").mkdir(parents=True)
    _run_all(
        [
            _nvcc("arch=compute_121a,code=sm_121a", "vllm/_C.abi3.so", "scale.cu"),
            _nvcc("arch=compute_90a,code=sm_90a", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "scale.cu"),
            _nvcc("arch=compute_100f,code=sm_100f", "vllm/_qutlass_C.abi3.so", "scale.cu"),
        ],
        cwd=work,
    )
    (work / "scale.cu").unlink()
    return work


def test_fa3_is_listed_apart_on_the_spark_while_qutlass_which_fp_quant_uses_there_fails(
    vllm_like: Path, cuobjdump: Path
) -> None:
    report = arch_audit(vllm_like, SPARK, cuobjdump, dispatch=VLLM_DISPATCH)
    assert [f.extension for f in report.unused] == ["vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"]
    (qutlass,) = report.problems
    assert qutlass.startswith("vllm/_qutlass_C.abi3.so: kernel family _qutlass_C cannot run on 12.1")
    assert "fp_quant.py" in qutlass, "the problem says why the Spark needs it"
    assert report.verdict is Verdict.CANNOT_RUN


def test_on_a_hopper_fa3_is_judged_and_runs(vllm_like: Path, cuobjdump: Path) -> None:
    report = arch_audit(vllm_like, ComputeCapability(9, 0), cuobjdump, dispatch=VLLM_DISPATCH)
    fa3 = next(f for f in report.used if f.family == "_vllm_fa3_C")
    assert fa3.verdict is Verdict.NATIVE
    assert [f.family for f in report.unused] == ["_qutlass_C"], "FP-Quant needs 10.0 or later"
