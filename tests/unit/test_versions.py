"""The rules that read a vLLM tree: where build requirements live, what CMake fetches.

The requirement layouts below were read from the released sdists on the package index
(`pip download --no-deps --no-binary :all: vllm==X`): 0.13.0 … 0.19.1 keep one
`requirements/build.txt`; 0.20.0 moved to `requirements/build/{cpu,cuda,rocm,tpu}.txt`;
0.22.0 added a Rust crate; 0.26.0 … 0.33.0 also carry `build/rust.txt` (and 0.33.0 `rock.txt`).
The trees here are synthetic copies of those layouts (file names only).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from packaging.version import Version

from spark_build.errors import UsageError
from spark_build.steps.compile import release_version
from spark_build.upstream.recipe import recipe_for
from spark_build.upstream.versions import (
    build_requirement_files,
    check_supported,
    external_projects,
    parse_external_projects,
)
from tests.artifacts import CUTLASS_ARCHIVES, GIT_BUNDLES, vllm_sdist

LAYOUT_0_13 = ["requirements/build.txt", "requirements/cuda.txt", "requirements/common.txt"]
LAYOUT_0_20 = [f"requirements/build/{d}.txt" for d in ("cpu", "cuda", "rocm", "tpu")]
LAYOUT_0_33 = [f"requirements/build/{d}.txt" for d in ("cpu", "cuda", "rock", "rocm", "rust", "tpu")]


def _tree(root: Path, files: list[str]) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("cmake>=3.26.1\n")
    return root


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        pytest.param(LAYOUT_0_13, ("requirements/build.txt",), id="0.13.0 to 0.19.x keep one build.txt"),
        pytest.param(LAYOUT_0_20, ("requirements/build/cuda.txt",), id="0.20.0 has one file per device"),
        pytest.param(LAYOUT_0_33, ("requirements/build/cuda.txt",), id="0.33.0 adds rust.txt and rock.txt"),
    ],
)
def test_a_cuda_build_installs_only_the_cuda_build_requirements_the_tree_keeps(
    tmp_path: Path, layout: list[str], expected: tuple[str, ...]
) -> None:
    # Installing every file of requirements/build/ would pull cpu.txt's `torch==…+cpu` pin.
    assert build_requirement_files(_tree(tmp_path, layout)) == expected


def test_a_tree_without_build_requirements_is_refused_naming_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"looked for requirements/build/cuda\.txt and requirements/build\.txt"):
        build_requirement_files(_tree(tmp_path, ["requirements/common.txt"]))


def test_a_release_older_than_spark_build_builds_is_refused_by_version() -> None:
    with pytest.raises(UsageError, match=r"0\.11\.0 is older"):
        check_supported(Version("0.11.0"))


# CMake text written for these tests, in the shapes vLLM's files use.
_PINNED_BY_VARIABLE = """
set(WIDGET_REVISION "v1.2.3")  # keep in sync with GIT_TAG below
if (DEFINED ENV{WIDGET_SRC_DIR})
  set(WIDGET_SRC_DIR $ENV{WIDGET_SRC_DIR})
endif()
if(WIDGET_SRC_DIR)
  FetchContent_Declare(widget SOURCE_DIR ${WIDGET_SRC_DIR})
else()
  FetchContent_Declare(
      widget
      GIT_REPOSITORY https://example.org/widget.git
      # GIT_TAG deadbeef  (a comment must not count)
      GIT_TAG ${WIDGET_REVISION}
      GIT_PROGRESS TRUE)
endif()
"""

_SUBDIR_AND_COMMIT = """
if (DEFINED ENV{KERNELS_SRC_DIR})
  FetchContent_Declare(kernels SOURCE_DIR $ENV{KERNELS_SRC_DIR})
else()
  FetchContent_Declare(
          kernels
          GIT_REPOSITORY https://example.org/big.git
          GIT_TAG 0123456789abcdef0123456789abcdef01234567
          SOURCE_SUBDIR python/kernels/kernels
  )
endif()
"""

_DEPENDS_ON_DEVICE = """
if (DEFINED ENV{TOOL_SRC_DIR})
  FetchContent_Declare(tool SOURCE_DIR $ENV{TOOL_SRC_DIR})
else()
  if (VLLM_TARGET_DEVICE STREQUAL "rocm")
    set(TOOL_GIT "https://example.org/rocm-tool.git")
    set(TOOL_TAG "aaaa")
  else()
    set(TOOL_GIT "https://example.org/tool.git")
    set(TOOL_TAG "v2.0")
  endif()
  FetchContent_Declare(tool GIT_REPOSITORY ${TOOL_GIT} GIT_TAG ${TOOL_TAG})
endif()
"""


def test_a_pin_held_in_a_variable_is_resolved_and_the_local_copy_variable_found() -> None:
    (widget,) = parse_external_projects({"CMakeLists.txt": _PINNED_BY_VARIABLE})
    assert (widget.name, widget.repository, widget.revision) == ("widget", "https://example.org/widget.git", "v1.2.3")
    assert widget.src_dir_env == "WIDGET_SRC_DIR"
    assert widget.defined_in == "CMakeLists.txt"
    assert not widget.is_commit


def test_a_project_used_from_a_subfolder_says_where_its_variable_must_point() -> None:
    (kernels,) = parse_external_projects({"cmake/external_projects/kernels.cmake": _SUBDIR_AND_COMMIT})
    assert kernels.source_subdir == "python/kernels/kernels"
    assert kernels.is_commit
    assert kernels.src_dir_env == "KERNELS_SRC_DIR"


def test_a_pin_that_depends_on_the_device_takes_the_cuda_branch() -> None:
    (tool,) = parse_external_projects({"cmake/external_projects/tool.cmake": _DEPENDS_ON_DEVICE})
    assert (tool.repository, tool.revision) == ("https://example.org/tool.git", "v2.0")
    assert tool.pinned


def test_a_pin_that_depends_on_anything_else_is_reported_as_ambiguous_not_guessed() -> None:
    text = _DEPENDS_ON_DEVICE.replace('VLLM_TARGET_DEVICE STREQUAL "rocm"', "CUDA_VERSION VERSION_GREATER_EQUAL 13.0")
    (tool,) = parse_external_projects({"cmake/external_projects/tool.cmake": text})
    assert tool.revision is None and tool.repository is None
    assert not tool.pinned
    assert set(tool.candidates) == {"aaaa", "v2.0"}
    assert set(tool.repository_candidates) == {"https://example.org/rocm-tool.git", "https://example.org/tool.git"}


def test_a_project_without_a_local_copy_variable_is_refused_by_name(tmp_path: Path) -> None:
    # Without its *_SRC_DIR, CMake could not be pointed at the cache: it would go online.
    (tmp_path / "cmake" / "external_projects").mkdir(parents=True)
    (tmp_path / "cmake" / "external_projects" / "qutlass.cmake").write_text(
        "FetchContent_Declare(qutlass GIT_REPOSITORY https://example.org/q.git GIT_TAG v1)\n"
    )
    with pytest.raises(UsageError, match=r"fetches qutlass \(cmake/external_projects/qutlass\.cmake\) without"):
        external_projects(tmp_path, Version("0.13.0"))


def sdist_cmake(tmp_path_factory: pytest.TempPathFactory, version: str) -> Path:
    """The CMake files of a real vLLM sdist (read, not run; fetched before the unit guard is on:
    tests/unit/conftest.py)."""
    sdist = vllm_sdist(version)
    root = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile()
            and (m.name.endswith("/CMakeLists.txt") and m.name.count("/") == 1 or "/cmake/external_projects/" in m.name)
        ]
        tar.extractall(root, members=members, filter="data")
    return root / f"vllm-{version}"


@pytest.fixture(scope="module")
def vllm_0_13_cmake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sdist_cmake(tmp_path_factory, "0.13.0")


@pytest.mark.vllm_sdists("0.33.0")
def test_vllm_0_33_fetches_ten_projects_the_cuda_branch_pins(tmp_path_factory: pytest.TempPathFactory) -> None:
    projects = {p.name: p for p in external_projects(sdist_cmake(tmp_path_factory, "0.33.0"), Version("0.33.0"))}
    assert sorted(projects) == [
        "cutlass",
        "deepgemm",
        "deepselect",
        "flashkda",
        "flashmla",
        "fmha_sm100",
        "qutlass",
        "tml_fa4",
        "triton_kernels",
        "vllm-flash-attn",
    ]
    assert all(p.pinned for p in projects.values()), "every pin resolves to one repository and one revision"
    assert projects["cutlass"].revision == "v4.7.1"  # set inside `if(VLLM_GPU_LANG STREQUAL "CUDA")`
    # The CUDA branch's Triton tag, not the ROCm fork's commit pinned under `STREQUAL "rocm"`.
    assert (projects["triton_kernels"].repository, projects["triton_kernels"].revision) == (
        "https://github.com/triton-lang/triton.git",
        "v3.5.1",
    )
    assert projects["qutlass"].revision == "e74319e3405ce6d71965732880f5dc1f52371f64"


def test_a_rocm_only_branch_is_ignored_but_a_branch_for_cuda_or_hip_is_kept() -> None:
    files = {
        "x.cmake": """
if(VLLM_GPU_LANG STREQUAL "CUDA" OR VLLM_GPU_LANG STREQUAL "HIP")
  if (VLLM_TARGET_DEVICE STREQUAL "rocm")
    set(TAG "rocm-commit")
  else()
    set(TAG "v1.0")
  endif()
  FetchContent_Declare(x GIT_REPOSITORY https://example.invalid/x.git GIT_TAG ${TAG})
endif()
"""
    }
    (project,) = parse_external_projects(files)
    assert project.revision == "v1.0" and project.candidates == ()


@pytest.mark.vllm_sdists("0.13.0")
def test_vllm_0_13_fetches_five_projects_at_their_pins(vllm_0_13_cmake: Path) -> None:
    projects = {p.name: p for p in external_projects(vllm_0_13_cmake, Version("0.13.0"))}
    assert {name: (p.revision, p.src_dir_env) for name, p in projects.items()} == {
        "cutlass": ("v4.2.1", "VLLM_CUTLASS_SRC_DIR"),
        "vllm-flash-attn": ("86f8f157cf82aa2342743752b97788922dd7de43", "VLLM_FLASH_ATTN_SRC_DIR"),
        "flashmla": ("46d64a8ebef03fa50b4ae74937276a5c940e3f95", "FLASH_MLA_SRC_DIR"),
        "qutlass": ("830d2c4537c7396e14a02a46fbddd18b5d107c65", "QUTLASS_SRC_DIR"),
        "triton_kernels": ("v3.5.0", "TRITON_KERNELS_SRC_DIR"),
    }
    assert projects["triton_kernels"].source_subdir == "python/triton_kernels/triton_kernels"
    assert projects["qutlass"].repository == "https://github.com/IST-DASLab/qutlass.git"


@pytest.mark.vllm_sdists("0.13.0", "0.33.0")
def test_the_pins_tests_artifacts_carries_are_the_ones_the_vllm_sdists_name(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A bundle or archive at another commit than the release pins would test the fetch
    against the wrong repository state: the catalogue is checked against the sdists it serves."""
    named = {}
    for version in ("0.13.0", "0.33.0"):
        projects = external_projects(sdist_cmake(tmp_path_factory, version), Version(version))
        named[version] = {p.name: p for p in projects}
        carried = {b.project: b.pins[f"vllm-{version}"] for b in GIT_BUNDLES.values() if f"vllm-{version}" in b.pins}
        assert carried == {project: named[version][project].revision for project in carried}
    assert len(carried) == 1 and named["0.33.0"]["qutlass"].repository == GIT_BUNDLES["qutlass"].upstream
    assert named["0.13.0"]["cutlass"].revision in CUTLASS_ARCHIVES


@pytest.mark.parametrize(
    ("place", "found"),
    [
        ("use_existing_torch.py", "use_existing_torch.py"),
        ("tools/use_existing_torch.py", "tools/use_existing_torch.py"),
    ],
    ids=["0.13-at-the-root", "0.33-in-tools"],
)
def test_use_existing_torch_is_found_where_the_tree_keeps_it_and_missed_where_it_is_not(
    tmp_path: Path, place: str, found: str
) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "some-upstream"\n')
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "build.txt").write_text("cmake\n")
    assert recipe_for(tmp_path, "v1.0.0").use_existing_torch is None
    (tmp_path / place).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / place).write_text("")
    assert recipe_for(tmp_path, "v1.0.0").use_existing_torch == place


@pytest.mark.parametrize(
    ("dist", "describe", "labels", "version"),
    [
        ("vllm", "v0.13.0", [], "0.13.0"),  # the tag itself, however dirty the patches leave it
        ("vllm", "v0.13.0", ["pr12345"], "0.13.0+pr12345"),
        ("vllm", "v0.33.0", ["pr7", "patch1a2b3c4d"], "0.33.0+pr7.patch1a2b3c4d"),
        ("vllm", "v0.14.0rc1", [], "0.14.0rc1"),
        ("vllm", "v0.13.0-12-gabc1234", [], None),  # past the tag: setuptools_scm's dev version is true
        ("vllm", "0edad7b71e46", [], None),  # a bare commit
        ("spark-example", "v0.1.0", [], None),  # not vLLM: its setup.py names its own version
    ],
)
def test_a_wheel_built_at_a_release_tag_is_named_with_that_release(
    dist: str, describe: str, labels: list[str], version: str | None
) -> None:
    assert release_version(dist, describe, labels) == version


# vLLM 0.34.0's cmake/external_projects/triton_kernels.cmake, in short: the pin is a GitHub source
# archive whose URL is derived from the git URL with string(REPLACE), with a ROCm fork in one arm.
_ARCHIVE_PIN = r"""
if (DEFINED ENV{KERNELS_SRC_DIR})
  FetchContent_Declare(kernels SOURCE_DIR $ENV{KERNELS_SRC_DIR})
else()
  if (VLLM_TARGET_DEVICE STREQUAL "rocm")
    set(KERNELS_GIT "https://github.com/ROCm/fork.git")
    set(KERNELS_TAG "669b31acc1dd1b3fd93286afd5db67f65d9f7557")
  else()
    set(KERNELS_GIT "https://github.com/acme/kernels.git")
    set(KERNELS_TAG "v3.5.1")
  endif()
  string(REGEX REPLACE "\\.git$" "" KERNELS_REPO_URL "${KERNELS_GIT}")
  string(REPLACE "https://github.com/" "https://codeload.github.com/" KERNELS_REPO_URL "${KERNELS_REPO_URL}")
  set(KERNELS_URL "${KERNELS_REPO_URL}/tar.gz/${KERNELS_TAG}")
  FetchContent_Declare(kernels URL ${KERNELS_URL} DOWNLOAD_EXTRACT_TIMESTAMP TRUE SOURCE_SUBDIR python/kernels)
endif()
"""


def test_a_project_fetched_as_a_github_source_archive_is_read_as_its_repository_at_that_revision() -> None:
    (project,) = parse_external_projects({"cmake/external_projects/kernels.cmake": _ARCHIVE_PIN})
    assert (project.name, project.repository, project.revision) == (
        "kernels",
        "https://github.com/acme/kernels.git",
        "v3.5.1",
    )
    assert project.src_dir_env == "KERNELS_SRC_DIR" and project.source_subdir == "python/kernels"
    assert project.candidates == () and project.repository_candidates == ()


def test_an_archive_url_that_is_not_a_github_archive_is_no_pin() -> None:
    text = "FetchContent_Declare(blob URL https://example.invalid/blob.zip)\n"
    assert parse_external_projects({"CMakeLists.txt": text}) == []
