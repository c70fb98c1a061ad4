"""Preflight: each rule fires on the host that should trip it and stays quiet on a healthy Spark.

Rules are judged on canned `HostFacts` (no process runs); `gather_host` is fed canned command
output (tests/integration/test_doctor.py runs the real nvcc on this machine).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version
from rich.console import Console

from spark_build.errors import UsageError
from spark_build.host.archprobe import PROBE_CACHE_NAME, ArchProbe, probe_nvcc
from spark_build.host.doctor import render_table, run_doctor, to_json
from spark_build.host.facts import (
    CxxCompiler,
    Gpu,
    HostFacts,
    TorchInfo,
    gather_host,
    parse_cxx_version,
    parse_nvidia_smi,
)
from spark_build.host.needs import BUILD_DISK_NEED_BYTES, CACHE_DISK_NEED_BYTES, ONE_JOB_MIN_AVAILABLE_BYTES
from spark_build.host.rules import Problem, can_build, evaluate, existing_torch
from spark_build.sizes import GIB

CUDA13 = Path("/usr/local/cuda-13.0")

NVCC13_BUILD = "cuda_13.0.r13.0/compiler.36424714_0"

GB10 = Gpu("NVIDIA GB10", "12.1", "580.95.05")


# A DGX Spark ready to build: GB10, CUDA 13.0, R580 driver, cu130 torch, Triton pointed at
# CUDA 13's ptxas, plenty of memory and disk.
SPARK = HostFacts(
    cpu_arch="aarch64",
    cpu_count=20,
    mem_total_bytes=119 * GIB,
    mem_available_bytes=100 * GIB,
    workdir=Path("/home/me/spark/work"),
    workdir_free_bytes=800 * GIB,
    cache_dir=Path("/home/me/.cache/spark-build"),
    cache_free_bytes=800 * GIB,
    cache_on_workdir_fs=True,
    gpus=(GB10,),
    gpu_query_error=None,
    nvcc=CUDA13 / "bin" / "nvcc",
    nvcc_version=Version("13.0.88"),
    nvcc_build=NVCC13_BUILD,
    cuda_home=CUDA13,
    cuda_home_env=str(CUDA13),
    ptxas=CUDA13 / "bin" / "ptxas",
    probes=(ArchProbe("12.1a", "sm_121a", True),),
    python_version="3.12.3",
    uv_version="0.9.2",
    git_version="2.43.0",
    ld_library_path=(),
    cuda12_lib_dirs=(),
    cuda13_lib_dirs=(),
    torch=TorchInfo("2.9.0+cu130", "13.0", Path("/home/me/spark/work/venv/bin/python"), triton="3.5.0"),
    torch_query_error=None,
    triton_ptxas_path=str(CUDA13 / "bin" / "ptxas"),
    triton_ptxas_blackwell_path=str(CUDA13 / "bin" / "ptxas"),
    triton_ptxas_path_exists=True,
    cxx=CxxCompiler("c++", "GNU", "13.3.0"),  # DGX OS is Ubuntu 24.04
)


NO_GPU: dict[str, Any] = {"gpus": (), "gpu_query_error": "nvidia-smi: not found"}

CUDA128: dict[str, Any] = {
    "nvcc": Path("/usr/local/cuda-12.8/bin/nvcc"),
    "nvcc_version": Version("12.8.93"),
    "cuda_home": Path("/usr/local/cuda-12.8"),
    "cuda_home_env": "/usr/local/cuda-12.8",
}


def row(problems: Sequence[Problem], check: str) -> Problem:
    matches = [problem for problem in problems if problem.check == check]
    assert matches, f"no {check!r} row in {[problem.check for problem in problems]}"
    return matches[0]


def test_a_healthy_spark_passes_every_check() -> None:
    problems = evaluate(SPARK, None)
    assert [(p.check, p.severity) for p in problems if p.severity != "ok"] == []
    assert can_build(problems)
    assert row(problems, "target arch").value == "12.1a (from GPU 12.1)"


@dataclasses.dataclass(frozen=True)
class Rule:
    changes: dict[str, Any]
    arch: str | None
    check: str
    severity: str
    says: str = ""  # a phrase the value or fix must contain


FIRES = {
    "no GPU and no --arch stops the build": Rule(NO_GPU | {"probes": ()}, None, "gpu", "error", "--arch"),
    "no GPU with --arch builds but warns that serving needs the GPU": Rule(NO_GPU, "12.1a", "gpu", "warning", "serve"),
    "a GPU newer than the arch table asks for --arch": Rule(
        {"gpus": (Gpu("NVIDIA Future", "13.0", "600.1"),), "probes": ()},
        None,
        "target arch",
        "error",
        "--arch",
    ),
    "--arch 12.0a on a 12.1 GPU builds kernels this GPU cannot load": Rule(
        {"probes": (ArchProbe("12.0a", "sm_120a", True),)}, "12.0a", "target arch", "warning", "12.1a"
    ),
    "nvcc older than 12.9 cannot target sm_121": Rule(CUDA128, None, "nvcc", "error", "cannot target sm_121a"),
    "no nvcc at all": Rule({"nvcc": None, "nvcc_version": None, "probes": ()}, None, "nvcc", "error", "CUDA"),
    "CUDA 13 no longer builds Volta": Rule(
        {"probes": (ArchProbe("7.0", "sm_70", False, "Unsupported gpu architecture 'compute_70'"),)},
        "7.0;12.1a",
        "nvcc",
        "error",
        "7.0",
    ),
    "CUDA_HOME pointing at no toolkit": Rule(
        {
            "cuda_home_env": "/opt/nothing",
            "cuda_home": Path("/opt/nothing"),
            "nvcc": None,
            "nvcc_version": None,
        },
        None,
        "CUDA_HOME",
        "error",
        "CUDA_HOME",
    ),
    "nvcc rejecting the target in the probe": Rule(
        {"probes": (ArchProbe("12.1a", "sm_121a", False, "nvcc fatal : Unsupported gpu architecture"),)},
        None,
        "nvcc probe sm_121a",
        "error",
        "Unsupported gpu architecture",
    ),
    "a driver older than R580 for CUDA 13": Rule(
        {"gpus": (Gpu("NVIDIA GB10", "12.1", "575.57.08"),)}, None, "driver", "error", "580"
    ),
    "free disk below the build's need": Rule(
        {"workdir_free_bytes": BUILD_DISK_NEED_BYTES - GIB}, None, "disk", "error", "free"
    ),
    "a cache on another disk that is too small": Rule(
        {"cache_on_workdir_fs": False, "cache_free_bytes": CACHE_DISK_NEED_BYTES - GIB},
        None,
        "disk (cache)",
        "error",
        "/home/me/.cache/spark-build",
    ),
    "available memory below one compile job": Rule(
        {"mem_available_bytes": 8 * GIB}, None, "memory", "error", "heaviest compile job"
    ),
    "CUDA 12 libraries ahead of CUDA 13 on LD_LIBRARY_PATH": Rule(
        {
            "ld_library_path": ("/usr/local/cuda-12.8/lib64", "/usr/local/cuda-13.0/lib64"),
            "cuda12_lib_dirs": ("/usr/local/cuda-12.8/lib64",),
            "cuda13_lib_dirs": ("/usr/local/cuda-13.0/lib64",),
        },
        None,
        "LD_LIBRARY_PATH",
        "warning",
        "remove /usr/local/cuda-12.8/lib64",
    ),
    "CUDA 12 libraries on LD_LIBRARY_PATH with no CUDA 13 directory before them": Rule(
        {"ld_library_path": ("/opt/cu12/lib",), "cuda12_lib_dirs": ("/opt/cu12/lib",)},
        None,
        "LD_LIBRARY_PATH",
        "warning",
        "/opt/cu12/lib",
    ),
    "a torch built for CUDA 12": Rule(
        {"torch": TorchInfo("2.9.0+cu128", "12.8", Path("/usr/bin/python3"))}, None, "torch", "error", "cu130"
    ),
    "a CPU-only torch": Rule(
        {"torch": TorchInfo("2.9.0+cpu", None, Path("/usr/bin/python3"))}, None, "torch", "warning", "cu130"
    ),
    "Triton's bundled ptxas for sm_121a without TRITON_PTXAS_PATH": Rule(
        {"triton_ptxas_path": None, "triton_ptxas_path_exists": False},
        None,
        "triton ptxas",
        "warning",
        "TRITON_PTXAS_PATH=/usr/local/cuda-13.0/bin/ptxas",
    ),
    "TRITON_PTXAS_PATH naming a missing file": Rule(
        {"triton_ptxas_path": "/nowhere/ptxas", "triton_ptxas_path_exists": False},
        None,
        "triton ptxas",
        "warning",
        "/nowhere/ptxas",
    ),
    "no uv": Rule({"uv_version": None}, None, "uv", "error", "uv"),
    "no git": Rule({"git_version": None}, None, "git", "error", "git"),
}


@pytest.mark.parametrize("rule", FIRES.values(), ids=FIRES.keys())
def test_rule_fires_with_a_one_line_fix(rule: Rule) -> None:
    problems = evaluate(dataclasses.replace(SPARK, **rule.changes), rule.arch)
    found = row(problems, rule.check)
    assert found.severity == rule.severity
    assert found.fix and "\n" not in found.fix
    assert rule.says in f"{found.value} {found.fix}"
    assert can_build(problems) == (rule.severity != "error")


QUIET = {
    "nvcc 12.9 can target sm_121": Rule(CUDA128 | {"nvcc_version": Version("12.9.1")}, None, "nvcc", "ok"),
    "nvcc 12.8 is enough for an RTX 50xx": Rule(
        CUDA128
        | {
            "gpus": (Gpu("NVIDIA GeForce RTX 5090", "12.0", "575.57.08"),),
            "torch": TorchInfo("2.8.0+cu128", "12.8", Path("/usr/bin/python3")),
            "probes": (ArchProbe("12.0a", "sm_120a", True),),
        },
        None,
        "nvcc",
        "ok",
    ),
    "R575 is enough for CUDA 12.9": Rule(
        {
            "gpus": (Gpu("NVIDIA GB10", "12.1", "575.57.08"),),
            "nvcc_version": Version("12.9.1"),
            "torch": TorchInfo("2.8.0+cu129", "12.9", Path("/usr/bin/python3")),
        },
        None,
        "driver",
        "ok",
    ),
    "--arch 12.0f runs on a 12.1 GPU through its family": Rule(
        {"probes": (ArchProbe("12.0f", "sm_120f", True),)}, "12.0f", "target arch", "ok"
    ),
    "--arch listing 12.0a and 12.1a covers the 12.1 GPU": Rule({}, "12.0a;12.1a", "target arch", "ok"),
    "memory just above one compile job": Rule(
        {"mem_available_bytes": ONE_JOB_MIN_AVAILABLE_BYTES}, None, "memory", "ok"
    ),
    "disk exactly at the need": Rule({"workdir_free_bytes": BUILD_DISK_NEED_BYTES}, None, "disk", "ok"),
    "CUDA 12 libraries after CUDA 13 on LD_LIBRARY_PATH": Rule(
        {
            "ld_library_path": ("/usr/local/cuda-13.0/lib64", "/usr/local/cuda-12.8/lib64"),
            "cuda12_lib_dirs": ("/usr/local/cuda-12.8/lib64",),
            "cuda13_lib_dirs": ("/usr/local/cuda-13.0/lib64",),
        },
        None,
        "LD_LIBRARY_PATH",
        "ok",
    ),
    "no torch yet: the torch step installs it": Rule({"torch": None}, None, "torch", "ok"),
    "Triton's bundled ptxas already knows an RTX 50xx": Rule(
        {
            "gpus": (Gpu("NVIDIA GeForce RTX 5090", "12.0", "580.95.05"),),
            "probes": (ArchProbe("12.0a", "sm_120a", True),),
            "triton_ptxas_path": None,
            "triton_ptxas_path_exists": False,
        },
        None,
        "triton ptxas",
        "ok",
    ),
    "CUDA_HOME unset while nvcc is found": Rule({"cuda_home_env": None}, None, "CUDA_HOME", "ok"),
    "an x86_64 host may build for another GPU": Rule({"cpu_arch": "x86_64"}, None, "cpu", "ok"),
}


@pytest.mark.parametrize("rule", QUIET.values(), ids=QUIET.keys())
def test_rule_stays_quiet_when_the_host_is_fine(rule: Rule) -> None:
    problems = evaluate(dataclasses.replace(SPARK, **rule.changes), rule.arch)
    assert row(problems, rule.check).severity == "ok"


def test_no_gpu_and_no_arch_is_one_error_not_two() -> None:
    problems = evaluate(dataclasses.replace(SPARK, **NO_GPU, probes=()), None)
    assert [p.check for p in problems if p.severity == "error"] == ["gpu"]


def test_each_target_arch_gets_its_own_probe_row() -> None:
    facts = dataclasses.replace(
        SPARK, probes=(ArchProbe("12.0f", "sm_120f", True), ArchProbe("12.1a", "sm_121a", True))
    )
    checks = [p.check for p in evaluate(facts, "12.0f;12.1a")]
    assert checks.count("nvcc probe sm_120f") == 1 and checks.count("nvcc probe sm_121a") == 1


def test_a_malformed_arch_is_bad_input_not_a_table_row() -> None:
    with pytest.raises(UsageError, match="sm_121a"):
        evaluate(SPARK, "sm_121a")


# --- output ---------------------------------------------------------------------------------


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


def test_doctor_exits_0_when_a_build_can_start_and_prints_the_table() -> None:
    console, out = _console()
    code = run_doctor(Path("w"), Path("c"), None, False, console, gather=lambda *a, **k: SPARK)
    assert code == 0
    text = out.getvalue()
    assert "nvcc probe sm_121a" in text and "✓ ok" in text
    assert "a build can start" in text


def test_doctor_exits_1_and_shows_the_fix_when_a_check_fails() -> None:
    console, out = _console()
    broken = dataclasses.replace(SPARK, **CUDA128)
    code = run_doctor(Path("w"), Path("c"), None, False, console, gather=lambda *a, **k: broken)
    assert code == 1
    assert "✕ error" in out.getvalue()
    assert "nvcc 12.8 cannot target sm_121a" in out.getvalue()


def test_doctor_json_carries_the_verdict_every_check_and_the_host() -> None:
    console, out = _console()
    code = run_doctor(Path("w"), Path("c"), "12.1a", True, console, gather=lambda *a, **k: SPARK)
    document = json.loads(out.getvalue())
    assert code == 0 and document["can_build"] is True
    assert {"check": "nvcc probe sm_121a", "value": "compiles", "severity": "ok", "fix": ""} in document["checks"]
    assert document["host"]["gpus"][0]["compute_cap"] == "12.1"
    assert document["host"]["nvcc_version"] == "13.0.88"


def test_doctor_rejects_a_bad_arch_before_reading_the_host() -> None:
    console, _ = _console()

    def gather(*args: object, **kwargs: object) -> HostFacts:
        raise AssertionError("the host was read for a bad --arch")

    with pytest.raises(UsageError, match="twelve"):
        run_doctor(Path("w"), Path("c"), "twelve", False, console, gather=gather)


def test_table_cells_are_not_read_as_rich_markup() -> None:
    console, out = _console()
    render_table([Problem("nvcc probe sm_121a", "error [bold]x[/bold]", "error", "fix [it]")], console)
    assert "[bold]x[/bold]" in out.getvalue() and "fix [it]" in out.getvalue()


def test_without_nvcc_the_verdict_says_prefer_wheel_needs_none() -> None:
    no_nvcc = dataclasses.replace(SPARK, nvcc=None, nvcc_version=None, probes=())
    console, out = _console()
    render_table(evaluate(no_nvcc, "12.1a"), console)
    verdict = " ".join(out.getvalue().splitlines()[-3:])
    assert "a build from source cannot start" in verdict and "--prefer-wheel` needs no nvcc" in verdict
    console, out = _console()
    render_table([*evaluate(no_nvcc, "12.1a"), Problem("uv", "not found", "error", "pip install uv")], console)
    assert "a build cannot start" in out.getvalue() and "--prefer-wheel" not in out.getvalue()


def test_to_json_without_host_lists_only_checks() -> None:
    document = json.loads(to_json([Problem("git", "not found", "error", "install git")]))
    assert document == {
        "can_build": False,
        "checks": [{"check": "git", "value": "not found", "severity": "error", "fix": "install git"}],
    }


# --- gathering, with canned command output ----------------------------------------------------


class CannedRunner:
    """Answers argvs by their first words, records every call; unknown commands are 'not found'."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        name = Path(argv[0]).name
        for key, answer in self.answers.items():
            if key == name or (key.startswith(name + " ") and key.split(" ", 1)[1] in " ".join(argv[1:])):
                return answer
        return 127, f"{argv[0]}: not found"


NVCC_VERSION_OUTPUT = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""

TORCH_ANSWER = json.dumps(
    {
        "version": "2.9.0+cu130",
        "version_py": "__version__ = '2.9.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n",
        "triton": "3.5.0",
    }
)


def _spark_answers() -> dict[str, tuple[int, str]]:
    return {
        "nvidia-smi": (0, "NVIDIA GB10, 12.1, 580.95.05\n"),
        "nvcc --version": (0, NVCC_VERSION_OUTPUT),
        "nvcc -cubin": (0, ""),
        "uv": (0, "uv 0.9.2\n"),
        "git": (0, "git version 2.43.0\n"),
        "c++": (0, "c++ (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0\n"),
        "python3": (0, TORCH_ANSWER + "\n"),
    }


@pytest.fixture
def toolkit(tmp_path: Path) -> Path:
    """A directory shaped like a CUDA toolkit root, with CUDA 12 and 13 library dirs beside it."""
    root = tmp_path / "cuda-13.0"
    for name in ("bin/nvcc", "bin/ptxas", "include/cuda_runtime.h", "lib64/libcudart.so.13.0.88"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    cu12 = tmp_path / "cuda-12.8" / "lib64"
    cu12.mkdir(parents=True)
    (cu12 / "libcublas.so.12").write_text("")
    return root


def _gather(tmp_path: Path, toolkit: Path, runner: CannedRunner, **overrides: Any) -> HostFacts:
    env = {
        "CUDA_HOME": str(toolkit),
        "PATH": "/usr/bin",
        "LD_LIBRARY_PATH": f"{tmp_path / 'cuda-12.8' / 'lib64'}:{toolkit / 'lib64'}:/does/not/exist",
        "TRITON_PTXAS_PATH": str(toolkit / "bin" / "ptxas"),
    }
    options: dict[str, Any] = {
        "run": runner,
        "env": env,
        "python": Path("/usr/bin/python3"),
        "memory": lambda: (119 * GIB, 100 * GIB),
        "cpu_count": lambda: 20,
        "disk_free": lambda path: 500 * GIB,
        "same_fs": lambda a, b: True,
    } | overrides
    return gather_host(tmp_path / "work", tmp_path / "cache", **options)


def test_gather_host_reads_a_spark_from_its_commands(tmp_path: Path, toolkit: Path) -> None:
    facts = _gather(tmp_path, toolkit, CannedRunner(_spark_answers()))
    assert facts.gpus == (GB10,)
    assert facts.nvcc == toolkit / "bin" / "nvcc" and facts.nvcc_version == Version("13.0.88")
    assert facts.nvcc_build == NVCC13_BUILD
    assert facts.cuda_home == toolkit and facts.ptxas == toolkit / "bin" / "ptxas"
    assert facts.probes == (ArchProbe("12.1a", "sm_121a", True, ""),)
    assert facts.torch == TorchInfo("2.9.0+cu130", "13.0", Path("/usr/bin/python3"), triton="3.5.0")
    assert facts.uv_version is None or facts.uv_version == "0.9.2"  # uv may sit beside sys.executable
    assert facts.git_version == "2.43.0"
    assert facts.cuda12_lib_dirs == (str(tmp_path / "cuda-12.8" / "lib64"),)
    assert facts.cuda13_lib_dirs == (str(toolkit / "lib64"),)
    assert facts.triton_ptxas_path_exists
    assert facts.cpu_count == 20 and facts.mem_available_bytes == 100 * GIB


def test_the_spark_read_from_its_commands_is_judged_ready_but_for_its_library_path(
    tmp_path: Path, toolkit: Path
) -> None:
    facts = _gather(tmp_path, toolkit, CannedRunner(_spark_answers()))
    problems = [p for p in evaluate(facts, None) if p.severity != "ok" and p.check not in ("uv",)]
    assert [(p.check, p.severity) for p in problems] == [("LD_LIBRARY_PATH", "warning")]


def test_gather_host_without_nvidia_smi_records_why_there_is_no_gpu(tmp_path: Path, toolkit: Path) -> None:
    answers = _spark_answers()
    del answers["nvidia-smi"]
    facts = _gather(tmp_path, toolkit, CannedRunner(answers))
    assert facts.gpus == ()
    assert facts.gpu_query_error == "nvidia-smi: not found"
    assert facts.probes == ()  # nothing to target without a GPU or --arch


def test_gather_host_probes_the_arch_given_with_arch(tmp_path: Path, toolkit: Path) -> None:
    answers = _spark_answers()
    del answers["nvidia-smi"]
    facts = _gather(tmp_path, toolkit, CannedRunner(answers), arch="12.0f;12.1a")
    assert [probe.sm for probe in facts.probes] == ["sm_120f", "sm_121a"]


def test_nvidia_smi_lines_parse_into_gpus_and_junk_is_ignored() -> None:
    output = "NVIDIA GB10, 12.1, 580.95.05\nNVIDIA H100 80GB HBM3, 9.0, 570.133.20\nNo devices were found\n"
    assert parse_nvidia_smi(output) == (GB10, Gpu("NVIDIA H100 80GB HBM3", "9.0", "570.133.20"))


def test_probe_results_are_cached_per_nvcc_build(tmp_path: Path) -> None:
    runner = CannedRunner({"nvcc -cubin": (0, "")})
    nvcc = tmp_path / "nvcc"
    assert probe_nvcc(nvcc, "12.1a", tmp_path, run=runner, nvcc_build=NVCC13_BUILD).accepted
    assert probe_nvcc(nvcc, "12.1a", tmp_path, run=runner, nvcc_build=NVCC13_BUILD).accepted
    assert len(runner.calls) == 1
    assert probe_nvcc(nvcc, "12.1a", tmp_path, run=runner, nvcc_build="cuda_13.1.r13.1/compiler.1_0").accepted
    assert len(runner.calls) == 2  # another compiler build is asked again


def test_a_corrupt_probe_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / PROBE_CACHE_NAME).write_text("{not json")
    runner = CannedRunner({"nvcc -cubin": (1, "nvcc fatal   : Unsupported gpu architecture 'compute_137a'\n")})
    probe = probe_nvcc(tmp_path / "nvcc", "13.7a", tmp_path, run=runner, nvcc_build=NVCC13_BUILD)
    assert not probe.accepted and "compute_137a" in probe.detail
    assert json.loads((tmp_path / PROBE_CACHE_NAME).read_text())[f"{NVCC13_BUILD}|sm_137a"]["accepted"] is False


# --- --torch existing: the interpreter's own torch must fit the build --------------------------

CONTAINER_PYTHON = Path("/opt/torch/.venv/bin/python")


@pytest.mark.parametrize(
    ("torch", "wanted", "severity", "says"),
    [
        (TorchInfo("2.11.0+cu130", "13.0", CONTAINER_PYTHON), "13", "ok", "torch 2.11.0+cu130 (CUDA 13.0)"),
        (None, "13", "error", "has no torch"),
        (TorchInfo("2.13.0+cpu", None, CONTAINER_PYTHON), "13", "error", "not CUDA 13"),
        (TorchInfo("2.9.0+cu128", "12.8", CONTAINER_PYTHON), "13", "error", "not CUDA 13"),
        (TorchInfo("2.13.0+cpu", None, CONTAINER_PYTHON), "cpu", "ok", "CUDA none"),
    ],
    ids=["cu130-torch", "no-torch", "cpu-torch", "cuda12-torch", "cpu-torch-for-a-cpu-build"],
)
def test_an_existing_torch_must_be_built_for_the_cuda_major_of_the_build(
    torch: TorchInfo | None, wanted: str, severity: str, says: str
) -> None:
    facts = dataclasses.replace(SPARK, torch=torch, torch_query_error=None)
    if torch is None:
        facts = dataclasses.replace(facts, torch_query_error=f"{CONTAINER_PYTHON} has no torch")
    problem = existing_torch(facts, wanted)
    assert (problem.severity, problem.check) == (severity, "existing torch")
    assert says in problem.value
    if severity == "error":
        assert "--python" in problem.fix


def test_a_cuda_13_torch_with_a_cuda_12_nvcc_is_refused_naming_both() -> None:
    facts = dataclasses.replace(
        SPARK, torch=TorchInfo("2.11.0+cu130", "13.0", CONTAINER_PYTHON), nvcc_version=Version("12.8")
    )
    problem = existing_torch(facts, "13")
    assert problem.severity == "error" and "nvcc is 12.8" in problem.value


def test_a_cpu_torch_is_no_warning_when_the_build_asks_for_one() -> None:
    cpu = dataclasses.replace(SPARK, torch=TorchInfo("2.13.0+cpu", None, Path("/w/venv/bin/python")))
    asked = next(p for p in evaluate(cpu, "12.1a", torch_cuda="cpu") if p.check == "torch")
    assert asked.severity == "ok" and "--torch-cuda cpu" in asked.value
    unasked = next(p for p in evaluate(cpu, "12.1a") if p.check == "torch")
    assert unasked.severity == "warning" and "CPU-only torch" in unasked.fix


def test_without_a_target_the_bundled_ptxas_is_not_said_to_know_it() -> None:
    no_gpu = dataclasses.replace(SPARK, gpus=(), triton_ptxas_path=None, triton_ptxas_path_exists=False)
    ptxas = next(p for p in evaluate(no_gpu, None) if p.check == "triton ptxas")
    assert "knows the target" not in ptxas.value and "no target" in ptxas.value


@pytest.mark.parametrize(
    ("banner", "expected"),
    [
        pytest.param("g++ (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0\nCopyright", ("GNU", "11.4.0"), id="ubuntu-22.04"),
        pytest.param("g++ (Debian 12.2.0-14+deb12u1) 12.2.0\n", ("GNU", "12.2.0"), id="debian-12"),
        pytest.param("c++ (GCC) 13.3.1 20240611\n", ("GNU", "13.3.1"), id="plain-gcc"),
        pytest.param("Ubuntu clang version 18.1.3 (1ubuntu1)\nTarget: aarch64", ("Clang", "18.1.3"), id="clang"),
    ],
)
def test_the_host_compiler_is_read_from_its_version_banner(banner: str, expected: tuple[str, str]) -> None:
    cxx = parse_cxx_version("c++", banner)
    assert (cxx.family, cxx.version) == expected


@pytest.mark.parametrize(
    ("cxx", "minimum", "severity"),
    [
        pytest.param(CxxCompiler("c++", "GNU", "11.4.0"), "13", "error", id="ubuntu-22.04-gcc-11-for-vllm-0.34"),
        pytest.param(CxxCompiler("g++-13", "GNU", "13.1.0"), "13", "ok", id="gcc-13"),
        pytest.param(CxxCompiler("c++", "GNU", "11.4.0"), None, "ok", id="no-source-to-ask"),
        pytest.param(CxxCompiler("clang++", "Clang", "18.1.3"), "13", "ok", id="the-gate-is-for-gcc-only"),
        pytest.param(None, "13", "error", id="no-compiler"),
    ],
)
def test_a_gcc_older_than_the_source_requires_stops_the_build_with_the_fix(
    cxx: CxxCompiler | None, minimum: str | None, severity: str
) -> None:
    problem = row(evaluate(dataclasses.replace(SPARK, cxx=cxx), "12.1a", gcc_minimum=minimum), "host compiler")
    assert problem.severity == severity
    if severity == "error" and cxx is not None:
        assert problem.value == "GNU 11.4.0 (c++); the source needs GCC >= 13 (the source's CMakeLists.txt)"
        assert problem.fix.startswith("install g++-13 and build with CC=gcc-13 CXX=g++-13")


@pytest.mark.parametrize(
    ("torch", "severity", "value"),
    [
        (
            TorchInfo("2.9.0+cu130", "13.0", CONTAINER_PYTHON, triton="3.5.0"),
            "warning",
            "Triton 3.5.0's bundled ptxas (CUDA 12.8) lacks sm_121a",
        ),
        (
            TorchInfo("2.10.0+cu130", "13.0", CONTAINER_PYTHON, triton="3.6.0"),
            "ok",
            "Triton 3.6.0's bundled ptxas knows the target",
        ),
        (
            TorchInfo("2.12.0+cu130", "13.0", CONTAINER_PYTHON, triton="3.8.0"),
            "ok",
            "Triton 3.8.0's bundled ptxas knows the target",
        ),
        (TorchInfo("2.13.0+cpu", None, CONTAINER_PYTHON), "ok", "no Triton installed"),
        (None, "ok", "no Triton installed"),
    ],
    ids=["triton-3.5", "triton-3.6", "triton-3.8", "torch-without-triton", "no-torch"],
)
def test_the_bundled_ptxas_warning_follows_the_triton_installed(
    torch: TorchInfo | None, severity: str, value: str
) -> None:
    # Measured on the PyPI wheels: 3.5.0's only ptxas (CUDA 12.8) refuses sm_121a; 3.6.0's and
    # 3.8.0's ptxas-blackwell (12.9, 13.3), which Triton runs for compute capability 10 and later, compile it.
    host = dataclasses.replace(SPARK, torch=torch, triton_ptxas_path=None, triton_ptxas_path_exists=False)
    ptxas = next(p for p in evaluate(host, "12.1a") if p.check == "triton ptxas")
    assert (ptxas.severity, value in ptxas.value) == (severity, True)
