"""The example upstream: a git repository with vLLM's build interface, and the wheel it builds.

The repository is made with real git; use_existing_torch.py runs as vLLM's does; the wheel is
built for real (uv, CMake, Ninja, nvcc) the way spark-build builds vLLM, installed into a fresh
venv and imported.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import git
import pytest
import uv
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from spark_build.steps.source import edited_since, worktree_edits
from spark_build.upstream.example import make_example_upstream
from tests.conftest import CUDA_HOME, needs_nvcc

ARCH_LIST = "12.1a"

UV = uv.find_uv_bin()

TORCH_PIN = re.compile(r"^\s*\"?(torch|torchvision|torchaudio)\s*=", re.IGNORECASE)


def run(
    cmd: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure show its output, not just its exit code."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{cmd} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def clone(upstream: Path, dest: Path) -> Path:
    git.Repo.clone_from(upstream, dest).close()
    return dest


def requirement_files(tree: Path) -> list[Path]:
    req = tree / "requirements"
    return [*sorted(req.rglob("*.txt")), *sorted(req.rglob("*.in")), tree / "pyproject.toml"]


def test_example_upstream_can_be_served_over_dumb_http(upstream: Path) -> None:
    info_refs = (upstream / ".git" / "info" / "refs").read_text()
    assert "refs/tags/v0.1.0" in info_refs
    assert "refs/tags/v0.2.0" in info_refs
    assert "refs/heads/main" in info_refs


def test_example_upstream_is_a_template_tree_not_a_package_of_spark_build(upstream: Path) -> None:
    template = Path(__file__).parents[2] / "spark_build" / "upstream" / "example_upstream"
    assert not (template / "__init__.py").exists()
    for name in ("setup.py", "CMakeLists.txt", "pyproject.toml", "use_existing_torch.py", "README.md"):
        assert (upstream / name).is_file(), name
    assert (upstream / "requirements" / "build.txt").is_file()
    assert (upstream / "spark_example" / "__init__.py").is_file()


def test_example_upstream_has_two_tagged_releases_and_main_at_the_second(upstream: Path) -> None:
    with git.Repo(upstream) as repo:
        tags = {tag.name: tag.commit for tag in repo.tags}
        assert set(tags) == {"v0.1.0", "v0.2.0"}
        assert repo.active_branch.name == "main"
        assert repo.head.commit == tags["v0.2.0"]
        assert tags["v0.2.0"].parents == (tags["v0.1.0"],)
        assert not repo.is_dirty(untracked_files=True)
        assert 'VERSION = "0.1.0"' in repo.git.show("v0.1.0:setup.py")
        assert 'VERSION = "0.2.0"' in repo.git.show("v0.2.0:setup.py")
        # The build's outputs stay out of `git status` after a build in the clone.
        assert "build/" in repo.git.show("v0.2.0:.gitignore").splitlines()


def test_make_example_upstream_needs_no_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a fresh CI machine or a new user's Spark: no ~/.gitconfig, no user.name.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)

    made = make_example_upstream(tmp_path / "spark-example")

    with git.Repo(made) as repo:
        assert [tag.name for tag in repo.tags] == ["v0.1.0", "v0.2.0"]
        assert repo.head.commit.author.name == "spark-build example"


def test_use_existing_torch_drops_every_torch_pin_and_keeps_the_rest(upstream: Path, tmp_path: Path) -> None:
    tree = clone(upstream, tmp_path / "clone")
    before = {p: p.read_text() for p in requirement_files(tree)}
    assert any(TORCH_PIN.match(line) for text in before.values() for line in text.splitlines())

    result = run([sys.executable, "use_existing_torch.py"], cwd=tree)

    for path in requirement_files(tree):
        pins = [line for line in path.read_text().splitlines() if TORCH_PIN.match(line)]
        assert pins == [], path
    assert ">>> removed from requirements/build.txt: torch==2.9.0" in result.stdout
    assert '>>> removed from pyproject.toml: "torch == 2.9.0",' in result.stdout
    build_reqs = (tree / "requirements" / "build.txt").read_text().splitlines()
    for kept in ("cmake>=3.26.1", "ninja", "packaging>=24.2", "setuptools>=77.0.3,<80.0.0", "wheel"):
        assert kept in build_reqs
    requires = re.search(r"^requires = \[(.*?)^\]", (tree / "pyproject.toml").read_text(), re.M | re.S)
    assert requires is not None
    assert re.findall(r'"([^"]+)"', requires[1]) == [
        "cmake>=3.26.1",
        "ninja",
        "packaging>=24.2",
        "setuptools>=77.0.3,<80.0.0",
        "setuptools-scm>=8.0",
        "wheel",
        "jinja2",
    ]
    assert "-r common.txt" in (tree / "requirements" / "cuda.txt").read_text()


def test_the_use_existing_torch_step_lists_only_the_files_the_script_changed(upstream: Path, tmp_path: Path) -> None:
    # The real 0.13.0 build listed setup.py and cmake/external_projects/qutlass.cmake, which the
    # patch step had changed (tests/data/gpu-run-2026-12-07/summary.json).
    tree = clone(upstream, tmp_path / "clone")
    (tree / "setup.py").write_text((tree / "setup.py").read_text() + "# patched\n")
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "# patched too\n")  # then edited by the script as well
    before = worktree_edits(tree)

    run([sys.executable, "use_existing_torch.py"], cwd=tree)

    changed = edited_since(before, worktree_edits(tree))
    assert "setup.py" not in changed
    assert "pyproject.toml" in changed and "requirements/build.txt" in changed
    assert all(path.startswith("requirements/") for path in changed if path != "pyproject.toml")


def test_use_existing_torch_with_prefix_drops_only_the_pins(upstream: Path, tmp_path: Path) -> None:
    tree = clone(upstream, tmp_path / "clone")

    run([sys.executable, "use_existing_torch.py", "--prefix"], cwd=tree)

    cuda = (tree / "requirements" / "cuda.txt").read_text().splitlines()
    assert not [line for line in cuda if TORCH_PIN.match(line)]
    assert "# These must be updated alongside torch" in cuda


# --- integration: a real wheel -------------------------------------------------------


@pytest.fixture(scope="module")
def build_venv(upstream: Path, uv_cache: Path, cpu_torch_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with CPU torch and the build requirements as use_existing_torch.py leaves them."""
    root = tmp_path_factory.mktemp("build-venv")
    venv = root / "venv"
    tree = clone(upstream, root / "requirements-source")
    run([sys.executable, "use_existing_torch.py"], cwd=tree)
    env = {**os.environ, "UV_CACHE_DIR": str(uv_cache)}
    # --seed: the build runs `pip wheel`, as spark_build.steps.compile does.
    run([UV, "venv", "--seed", "--python", sys.executable, venv], env=env)
    python = venv / "bin" / "python"
    run([UV, "pip", "install", "--python", python, cpu_torch_wheel], env=env)
    run([UV, "pip", "install", "--python", python, "-r", tree / "requirements" / "build.txt"], env=env)
    return venv


def build_command(venv: Path) -> list[str | Path]:
    """The command spark_build.steps.compile runs: pip wheel in the source tree, no isolation."""
    return [venv / "bin" / "python", "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w", "dist", "."]


def build_env(venv: Path) -> dict[str, str]:
    """The environment spark_build.steps.compile gives the build (cmake >= 3.26 and ninja from the venv)."""
    assert CUDA_HOME is not None
    return {
        **os.environ,
        "TORCH_CUDA_ARCH_LIST": ARCH_LIST,
        "MAX_JOBS": "2",
        "NVCC_THREADS": "1",
        "CUDA_HOME": str(CUDA_HOME),
        "CMAKE_BUILD_TYPE": "Release",
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), str(CUDA_HOME / "bin"), os.environ.get("PATH", "")]),
    }


def prepared_clone(upstream: Path, workdir: Path) -> Path:
    tree = clone(upstream, workdir / "spark-example")
    run([sys.executable, "use_existing_torch.py"], cwd=tree)
    return tree


def build_wheel(upstream: Path, workdir: Path, venv: Path) -> Path:
    """Clone, drop the torch pins, build; the wheel's path."""
    tree = prepared_clone(upstream, workdir)
    run(build_command(venv), cwd=tree, env=build_env(venv))
    (wheel,) = (tree / "dist").glob("*.whl")
    return wheel


def record_without_itself(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        lines = zf.read(name).decode().splitlines()
    return [line for line in lines if not line.startswith(f"{name},")]


def nvcc_label() -> str:
    assert CUDA_HOME is not None
    out = run([CUDA_HOME / "bin" / "nvcc", "--version"]).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    assert match, out
    return f"cu{match[1]}{match[2]}"


@pytest.fixture(scope="module")
def first_wheel(upstream: Path, build_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(upstream, tmp_path_factory.mktemp("first"), build_venv)


@pytest.fixture(scope="module")
def fresh_venv(first_wheel: Path, uv_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with nothing but the wheel, as spark-build's validate step makes."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    env = {**os.environ, "UV_CACHE_DIR": str(uv_cache)}
    run([UV, "venv", "--python", sys.executable, venv], env=env)
    run([UV, "pip", "install", "--python", venv / "bin" / "python", first_wheel], env=env)
    return venv


def probe(venv: Path, code: str) -> dict[str, object]:
    """Run `code` in the venv's Python, outside any source tree; it prints one JSON object."""
    result = run([venv / "bin" / "python", "-c", code], cwd=venv)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@needs_nvcc
def test_wheel_is_named_for_the_release_the_cuda_it_was_built_with_and_abi3(first_wheel: Path) -> None:
    assert first_wheel.name == f"spark_example-0.2.0+{nvcc_label()}-cp38-abi3-linux_x86_64.whl"


@needs_nvcc
def test_wheel_imports_in_a_fresh_venv_without_torch(fresh_venv: Path) -> None:
    facts = probe(
        fresh_venv,
        "import importlib.util, json, spark_example\n"
        "from spark_example import _C\n"
        "print(json.dumps({'archs': _C.compiled_archs(), 'version': spark_example.__version__,"
        " 'cudart': _C.cuda_runtime_version(), 'torch': importlib.util.find_spec('torch') is not None}))",
    )
    assert facts["archs"] == ARCH_LIST
    assert facts["version"] == f"0.2.0+{nvcc_label()}"
    assert facts["cudart"] // 1000 == int(nvcc_label()[2:-1])  # type: ignore[operator]
    assert facts["torch"] is False


@needs_nvcc
@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="checks the behaviour on a host without a GPU")
def test_extension_reports_no_gpu_instead_of_crashing(fresh_venv: Path) -> None:
    facts = probe(
        fresh_venv,
        "import json\n"
        "from spark_example import _C\n"
        "try:\n"
        "    _C.saxpy(2.0, [1.0], [1.0]); error = None\n"
        "except RuntimeError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'devices': _C.device_count(), 'saxpy_error': error}))",
    )
    assert facts["devices"] == 0
    assert str(facts["saxpy_error"]).startswith("CUDA error: ")


@needs_nvcc
def test_arch_list_entry_builds_sass_only_as_torch_reads_it(first_wheel: Path) -> None:
    # torch's meaning: "12.1a" is SASS for sm_121a and no PTX; only "+PTX" would add PTX.
    tree = first_wheel.parents[1]
    (commands_file,) = tree.glob("build/temp.*/compile_commands.json")
    cuda_objects = [c for c in json.loads(commands_file.read_text()) if c["file"].endswith(".cu")]
    assert len(cuda_objects) >= 8
    for command in cuda_objects:
        gencodes = re.findall(r"--generate-code=arch=(\w+),code=\[([\w,]+)\]", command["command"])
        assert gencodes == [("compute_121a", "sm_121a")], command["file"]


@needs_nvcc
def test_extension_links_the_cuda_runtime_statically(first_wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(first_wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".so")]
        so = Path(zf.extract(name, tmp_path))
    with so.open("rb") as f:
        dynamic = ELFFile(f).get_section_by_name(".dynamic")
        assert isinstance(dynamic, DynamicSection)
        needed = [tag.needed for tag in dynamic.iter_tags("DT_NEEDED")]  # type: ignore[attr-defined]
    assert name == "spark_example/_C.abi3.so"
    assert not [lib for lib in needed if "cuda" in lib], needed


@needs_nvcc
def test_a_build_interrupted_in_another_deeper_directory_resumes_with_the_finished_objects_and_the_same_wheel(
    upstream: Path, first_wheel: Path, build_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two specifications, one build (each used to cost a build of its own): a resumed build reuses
    the objects it finished, and the wheel does not depend on the build directory. A different,
    deeper path: nvcc hashes the source's absolute path into symbol names unless CMakeLists.txt
    overrides it (see "Reproducible objects" there)."""
    tree = prepared_clone(upstream, tmp_path_factory.mktemp("interrupted") / "a" / "longer" / "path")
    full_plan = None
    with subprocess.Popen(
        [str(c) for c in build_command(build_venv)],
        cwd=tree,
        env=build_env(build_venv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as build:
        assert build.stdout is not None
        for line in build.stdout:
            # Ninja prints [finished/total] as each object finishes (its output is not a terminal).
            finished = re.match(r"\s*\[(\d+)/(\d+)\] Building", line)
            if finished and int(finished[1]) == 6:
                full_plan = int(finished[2])
                os.killpg(build.pid, signal.SIGTERM)
                break
        build.stdout.read()
    assert full_plan is not None, "the build finished before it could be interrupted"
    assert not list((tree / "dist").glob("*.whl"))

    resumed = run(build_command(build_venv), cwd=tree, env=build_env(build_venv))

    output = resumed.stdout + resumed.stderr
    plans = re.findall(r"^\s*\[1/(\d+)\]", output, re.MULTILINE)
    assert plans, output[-3000:]
    assert int(plans[0]) <= full_plan - 6, plans  # the six finished objects were reused
    (wheel,) = (tree / "dist").glob("*.whl")
    assert wheel.name == first_wheel.name
    assert record_without_itself(wheel) == record_without_itself(first_wheel)
