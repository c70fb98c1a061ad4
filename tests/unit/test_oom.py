"""OOM recognition: one row per way a build log says the kernel killed a compile job."""

from __future__ import annotations

import pytest

from spark_build.compile.oom import OomKill, find_oom_kills, next_jobs_after_oom, oom_give_up_error
from spark_build.errors import StepFailed

OBJ = "_C.dir/csrc/quantization/fp4/nvfp4_scaled_mm_sm120_kernels.cu.o"
CMD = f"/usr/local/cuda/bin/nvcc -gencode arch=compute_121a,code=sm_121a -c x.cu -o CMakeFiles/{OBJ}"

SIGNATURES = {
    "gcc-driver-cc1plus": (
        f"[12/93] Building CUDA object CMakeFiles/{OBJ}\nFAILED: CMakeFiles/{OBJ} \n{CMD}\n"
        "c++: fatal error: Killed signal terminated program cc1plus\ncompilation terminated.\n"
        "ninja: build stopped: subcommand failed.\n",
        1,
        [OomKill(OBJ, "c++: fatal error: Killed signal terminated program cc1plus")],
    ),
    "old-gcc-internal-compiler-error": (
        f"FAILED: CMakeFiles/{OBJ}\n{CMD}\ng++-7: internal compiler error: Killed (program cc1plus)\n"
        "Please submit a full bug report,\n",
        1,
        [OomKill(OBJ, "g++-7: internal compiler error: Killed (program cc1plus)")],
    ),
    "nvcc-cicc-died": (
        f"FAILED: CMakeFiles/{OBJ} \n{CMD}\nnvcc error   : 'cicc' died due to signal 9 (Kill signal)\n",
        1,
        [OomKill(OBJ, "nvcc error   : 'cicc' died due to signal 9 (Kill signal)")],
    ),
    "nvcc-cudafe-died": (
        f"FAILED: CMakeFiles/{OBJ}\n{CMD}\nnvcc error   : 'cudafe++' died due to signal 9 (Kill signal)\n",
        1,
        [OomKill(OBJ, "nvcc error   : 'cudafe++' died due to signal 9 (Kill signal)")],
    ),
    "linker-killed": (
        "FAILED: _C.abi3.so\n/usr/bin/c++ -shared -o _C.abi3.so @rsp\n"
        "collect2: fatal error: ld terminated with signal 9 [Killed]\n",
        1,
        [OomKill("_C.abi3.so", "collect2: fatal error: ld terminated with signal 9 [Killed]")],
    ),
    "clang-killed": (
        f"FAILED: CMakeFiles/{OBJ}\nclang++ -c x.cpp -o CMakeFiles/{OBJ}\n"
        "clang++: error: unable to execute command: Killed\n",
        1,
        [OomKill(OBJ, "clang++: error: unable to execute command: Killed")],
    ),
    "ninja-1.13-prints-the-exit-code": (
        f"FAILED: [code=137] CMakeFiles/{OBJ} \n{CMD}\n",
        137,
        [OomKill(OBJ, f"FAILED: [code=137] CMakeFiles/{OBJ}")],
    ),
    "older-ninja-and-sh-says-killed": (
        f"FAILED: CMakeFiles/{OBJ} \n{CMD}\nKilled\nninja: build stopped: subcommand failed.\n",
        1,
        [OomKill(OBJ, "Killed")],
    ),
    "make-error-137": (
        f"make[2]: *** [CMakeFiles/_C.dir/build.make:366: CMakeFiles/{OBJ}] Error 137\n",
        2,
        [OomKill(OBJ, f"make[2]: *** [CMakeFiles/_C.dir/build.make:366: CMakeFiles/{OBJ}] Error 137")],
    ),
    "make-names-the-object-after-nvcc-says-cudafe-died": (
        "nvcc error   : 'cudafe++' died due to signal 9 (Kill signal)\n"
        f"make[2]: *** [CMakeFiles/_C.dir/build.make:366: CMakeFiles/{OBJ}] Error 9\n",
        2,
        [OomKill(OBJ, "nvcc error   : 'cudafe++' died due to signal 9 (Kill signal)")],
    ),
    "whole-build-killed-without-a-line": (
        "[40/93] Building CUDA object CMakeFiles/_C.dir/csrc/cache_kernels.cu.o\n",
        -9,
        [OomKill(None, "the build exited with status -9 (killed by SIGKILL, most likely the OOM killer)")],
    ),
    "two-jobs-killed-in-one-build": (
        "FAILED: CMakeFiles/_C.dir/a.cu.o\nnvcc error   : 'cicc' died due to signal 9 (Kill signal)\n"
        "[5/9] Building CUDA object CMakeFiles/_C.dir/c.cu.o\n"
        "FAILED: CMakeFiles/_C.dir/b.cu.o\nc++: fatal error: Killed signal terminated program cc1plus\n",
        1,
        [
            OomKill("_C.dir/a.cu.o", "nvcc error   : 'cicc' died due to signal 9 (Kill signal)"),
            OomKill("_C.dir/b.cu.o", "c++: fatal error: Killed signal terminated program cc1plus"),
        ],
    ),
}

NOT_OOM = {
    "compile-error": (
        f'FAILED: CMakeFiles/{OBJ}\n{CMD}\nx.cu(12): error: identifier "foo" is undefined\n'
        '1 error detected in the compilation of "x.cu".\n',
        1,
    ),
    "ninja-1.13-ordinary-failure": (f"FAILED: [code=1] CMakeFiles/{OBJ}\n{CMD}\n", 1),
    "make-error-1": (f"make[2]: *** [CMakeFiles/_C.dir/build.make:366: CMakeFiles/{OBJ}] Error 1\n", 2),
    "killed-outside-a-failed-block": ("[3/9] Building CXX object x.o\nKilled\n", 1),
    "success": ("[93/93] Linking CXX shared module _C.abi3.so\n", 0),
    "interrupted-by-ctrl-c": ("ninja: build stopped: interrupted by user.\n", 130),
}


@pytest.mark.parametrize(("log", "returncode", "expected"), SIGNATURES.values(), ids=SIGNATURES.keys())
def test_oom_kill_is_recognised_and_names_the_object(log: str, returncode: int, expected: list[OomKill]) -> None:
    assert find_oom_kills(log, returncode) == expected


@pytest.mark.parametrize(("log", "returncode"), NOT_OOM.values(), ids=NOT_OOM.keys())
def test_other_failures_are_not_taken_for_oom(log: str, returncode: int) -> None:
    assert find_oom_kills(log, returncode) == []


@pytest.mark.parametrize(
    ("jobs", "tries", "max_tries", "expected"),
    [
        (20, 1, 3, 10),
        (10, 2, 3, 5),
        (3, 1, 3, 1),
        (5, 3, 3, None),  # out of tries
        (1, 1, 3, None),  # one job killed alone: fewer jobs cannot help
    ],
    ids=["halves", "halves-again", "never-below-one", "gives-up-after-max-tries", "gives-up-at-one-job"],
)
def test_rerun_after_oom_halves_jobs_until_out_of_tries(
    jobs: int, tries: int, max_tries: int, expected: int | None
) -> None:
    assert next_jobs_after_oom(jobs, tries, max_tries) == expected


def test_giving_up_names_the_object_and_its_memory() -> None:
    kills = [OomKill(OBJ, "nvcc error   : 'cicc' died due to signal 9 (Kill signal)")]
    err = oom_give_up_error(kills, {OBJ: 9138 * 2**20}, jobs=1, tries=3)
    assert isinstance(err, StepFailed) and err.exit_code == 1 and err.step == "compile"
    assert OBJ in err.message and "peak 8.9 GiB" in err.message and "MAX_JOBS=1" in err.message
    assert err.hint and "free memory" in err.hint
