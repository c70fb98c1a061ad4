"""The scheduling Ninja: built from the package index's ninja 1.13.2 source distribution with
our patch, it starts the objects that took longest first — and CMake keeps the durations we
seed before its first configure. Real pip download, real C++ bootstrap, real CMake and Ninja."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from spark_build.compile import ninjabuild
from spark_build.compile.ninjalog import seed_ninja_log
from spark_build.errors import StepFailed
from spark_build.steps.compile import with_make_program


def run(argv: Sequence[str | os.PathLike[str]], cwd: Path) -> None:
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def ninja(scheduling_ninja: Path) -> Path:
    return scheduling_ninja


def test_it_is_built_once_into_the_machine_cache_under_both_names_cmake_looks_for(ninja: Path) -> None:
    assert ninja.name == "ninja" and ninja.parent.name == ninjabuild.build_key()
    assert ninjabuild.is_ours(ninja)
    assert (ninja.parent / "ninja-build").resolve() == ninja.resolve()
    assert [p.name for p in ninja.parent.iterdir() if p.name.startswith(".build-")] == []  # scratch gone


MANIFEST = """rule w
  command = echo $out >> order.txt && touch $out
build a.o: w
build b.o: w
build c.o: w
build d.o: w
build all: phony a.o b.o c.o d.o
default all
"""


def build_order(ninja: Path, folder: Path) -> list[str]:
    subprocess.run([ninja, "-j1"], cwd=folder, check=True, capture_output=True)
    return (folder / "order.txt").read_text().split()


def test_without_durations_it_keeps_manifest_order_with_them_the_longest_starts_first(
    ninja: Path, tmp_path: Path
) -> None:
    plain, seeded = tmp_path / "plain", tmp_path / "seeded"
    for folder in (plain, seeded):
        folder.mkdir()
        (folder / "build.ninja").write_text(MANIFEST)
    seed_ninja_log(seeded / ".ninja_log", ["a.o", "b.o", "c.o", "d.o"], {"b.o": 0.01, "c.o": 3.0, "d.o": 5.0})

    assert build_order(ninja, plain) == ["a.o", "b.o", "c.o", "d.o"]
    assert build_order(ninja, seeded) == ["d.o", "c.o", "b.o", "a.o"]


def test_cmake_keeps_durations_seeded_before_its_first_configure(ninja: Path, tmp_path: Path) -> None:
    source, build = tmp_path / "src", tmp_path / "build"
    source.mkdir()
    for name in ("quick", "slow"):
        (source / f"{name}.c").write_text(f"int {name}(void) {{ return 1; }}\n")
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(p C)\nadd_library(k STATIC quick.c slow.c)\n"
    )
    outputs = ["CMakeFiles/k.dir/quick.c.o", "CMakeFiles/k.dir/slow.c.o"]
    seed_ninja_log(build / ".ninja_log", outputs, {"k.dir/quick.c.o": 0.5, "k.dir/slow.c.o": 900.0})
    env = {**os.environ, "PATH": f"{ninja.parent}{os.pathsep}{os.environ['PATH']}"}

    subprocess.run(["cmake", "-G", "Ninja", "-S", source, "-B", build], env=env, check=True, capture_output=True)
    assert f"CMAKE_MAKE_PROGRAM:FILEPATH={ninja.parent}" in (build / "CMakeCache.txt").read_text()
    assert "0\t900000\t0\tCMakeFiles/k.dir/slow.c.o\t0" in (build / ".ninja_log").read_text()

    shown = subprocess.run(
        ["cmake", "--build", build, "-j1", "-v"], env=env, check=True, capture_output=True, text=True
    )
    compiled = [line for line in shown.stdout.splitlines() if " -c " in line]
    assert "slow.c" in compiled[0] and "quick.c" in compiled[1]


def test_a_tree_first_configured_by_another_ninja_is_switched_to_the_scheduling_one(
    ninja: Path, tmp_path: Path
) -> None:
    # What the compile hands vLLM's setup.py (CMAKE_ARGS), on a tree the stock Ninja configured.
    source, build = tmp_path / "src", tmp_path / "build"
    source.mkdir()
    (source / "a.c").write_text("int a(void) { return 1; }\n")
    (source / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.20)\nproject(p C)\nadd_library(k a.c)\n")
    stock = shutil.which("ninja")
    assert stock is not None and Path(stock).resolve() != ninja.resolve()
    subprocess.run(["cmake", "-G", "Ninja", "-S", source, "-B", build], check=True, capture_output=True)
    assert f"CMAKE_MAKE_PROGRAM:FILEPATH={stock}" in (build / "CMakeCache.txt").read_text()

    args = with_make_program("-DFOO=1", ninja)
    assert args.split()[0] == "-DFOO=1", "the user's own CMAKE_ARGS stay"
    subprocess.run(["cmake", "-S", source, "-B", build, *args.split()], check=True, capture_output=True)
    assert f"CMAKE_MAKE_PROGRAM:FILEPATH={ninja}" in (build / "CMakeCache.txt").read_text()
    assert "ninja_required_version" in (build / "build.ninja").read_text()  # regenerated, still Ninja
    assert with_make_program("-DFOO=1", None) == "-DFOO=1"
    assert with_make_program("-DFOO=1", Path("/home/my cache/ninja")) == "-DFOO=1", "split on whitespace"


def test_a_source_archive_without_ninja_s_source_is_refused_and_leaves_no_binary(tmp_path: Path) -> None:
    fake = tmp_path / f"ninja-{ninjabuild.NINJA_VERSION}.tar.gz"
    (tmp_path / "README").write_text("not ninja\n")
    with tarfile.open(fake, "w:gz") as archive:
        archive.add(tmp_path / "README", arcname=f"ninja-{ninjabuild.NINJA_VERSION}/README")
    dest = ninjabuild.cached_binary(tmp_path / "cache")

    with pytest.raises(StepFailed, match="has no ninja-upstream/configure.py"):
        ninjabuild.build_from_sdist(fake, dest, Path(sys.executable), run)
    assert not dest.exists()
