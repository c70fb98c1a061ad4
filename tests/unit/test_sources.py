"""Fetching what vLLM's CMake would download, at its pins, without touching GitHub: the pure
decisions (tests/integration/test_sources.py fetches for real)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from spark_build.errors import UsageError
from spark_build.upstream.cutlass import CutlassPackage, cutlass_from_package, find_cutlass_package
from spark_build.upstream.sources import fetch_sources, is_network, origin_for, prepare_sources, sources_intact
from spark_build.upstream.versions import ExternalProject

FLASHMLA = ExternalProject(
    name="flashmla",
    repository="https://github.com/vllm-project/FlashMLA",
    revision="46d64a8ebef03fa50b4ae74937276a5c940e3f95",
    src_dir_env="FLASH_MLA_SRC_DIR",
    defined_in="cmake/external_projects/flashmla.cmake",
)

QUTLASS = ExternalProject(
    name="qutlass",
    repository="https://github.com/IST-DASLab/qutlass.git",
    revision="830d2c4537c7396e14a02a46fbddd18b5d107c65",
    src_dir_env="QUTLASS_SRC_DIR",
    defined_in="cmake/external_projects/qutlass.cmake",
)

CUTLASS = ExternalProject(
    name="cutlass",
    repository="https://github.com/nvidia/cutlass.git",
    revision="v4.2.1",
    src_dir_env="VLLM_CUTLASS_SRC_DIR",
    defined_in="CMakeLists.txt",
)


def fake_cutlass_package(site: Path, version: str = "4.2.0.0") -> Path:
    source = site / "cutlass_library" / "source"
    (source / "include" / "cutlass").mkdir(parents=True)
    (source / "include" / "cutlass" / "cutlass.h").write_text("")
    (source / "include" / "cutlass" / "version.h").write_text(
        "#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR 2\n#define CUTLASS_PATCH 0\n"
    )
    (source / "tools" / "util" / "include").mkdir(parents=True)
    meta = site / f"nvidia_cutlass-{version}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.4\nName: nvidia-cutlass\nVersion: {version}\n")
    return source


# --- pure decisions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "network"),
    [
        ("https://github.com/vllm-project/FlashMLA", True),
        ("git@github.com:vllm-project/FlashMLA.git", True),
        ("/mirror/FlashMLA.bundle", False),
        ("file:///mirror/FlashMLA", False),
    ],
    ids=["https", "ssh", "a bundle path", "file URL"],
)
def test_only_remote_origins_count_as_needing_the_network(origin: str, network: bool) -> None:
    assert is_network(origin) is network


def test_a_mirror_is_found_by_project_name_or_by_repository_url() -> None:
    assert origin_for(QUTLASS, {"qutlass": "/m/q.bundle"}) == "/m/q.bundle"
    assert origin_for(QUTLASS, {QUTLASS.repository or "": "/m/q2"}) == "/m/q2"
    assert origin_for(QUTLASS, {}) == QUTLASS.repository


def test_offline_every_project_missing_from_the_cache_is_named_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        fetch_sources([FLASHMLA, QUTLASS], tmp_path / "cache", offline=True)
    message = caught.value.message
    assert "flashmla 46d64a8ebef03fa50b4ae74937276a5c940e3f95" in message
    assert "qutlass 830d2c4537c7396e14a02a46fbddd18b5d107c65" in message
    assert not (tmp_path / "cache").exists()  # refused before anything was attempted
    assert "map each of flashmla, qutlass to a local mirror" in (caught.value.hint or "")


def test_a_project_whose_pin_depends_on_the_device_is_refused_before_fetching(tmp_path: Path) -> None:
    ambiguous = ExternalProject(
        "triton_kernels", None, None, "TRITON_KERNELS_SRC_DIR", "triton_kernels.cmake", candidates=("abc", "v3.5.1")
    )
    undecided_too = ExternalProject(
        "deepgemm", None, None, "DEEPGEMM_SRC_DIR", "deepgemm.cmake", candidates=("c0ffee", "d00d")
    )
    with pytest.raises(UsageError) as caught:
        fetch_sources([ambiguous, QUTLASS, undecided_too], tmp_path, offline=True)
    # One message for every project that cannot be fetched, not the first of them.
    assert "triton_kernels (triton_kernels.cmake picks it at configure time: abc, v3.5.1)" in caught.value.message
    assert "deepgemm (deepgemm.cmake picks it at configure time: c0ffee, d00d)" in caught.value.message


def test_cutlass_headers_come_from_the_nvidia_cutlass_package_found_in_the_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    source = fake_cutlass_package(venv / "lib" / "python3.12" / "site-packages")
    package = find_cutlass_package(venv)
    assert package == CutlassPackage(source, "4.2.0.0")
    fetched = cutlass_from_package(CUTLASS, package, tmp_path / "cache")
    cmake = (fetched.env_value / "CMakeLists.txt").read_text()
    assert f'set(CUTLASS_INCLUDE_DIR "{source.as_posix()}/include" CACHE PATH' in cmake
    assert f'set(CUTLASS_TOOLS_UTIL_INCLUDE_DIR "{source.as_posix()}/tools/util/include" CACHE PATH' in cmake
    assert "CUTLASS 4.2.0 headers from nvidia-cutlass 4.2.0.0, for the v4.2.1 vLLM pins" in cmake
    assert fetched.env == "VLLM_CUTLASS_SRC_DIR"
    assert sources_intact({"projects": [fetched.to_dict()]})


def test_a_venv_without_the_cutlass_package_has_none(tmp_path: Path) -> None:
    assert find_cutlass_package(tmp_path) is None


def test_asking_for_cutlass_from_a_venv_without_the_package_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(UsageError, match="no nvidia-cutlass package") as caught:
        prepare_sources(tmp_path / "src", Version("0.13.0"), tmp_path / "cache", cutlass_venv=tmp_path / "venv")
    assert caught.value.hint is not None and "nvidia-cutlass" in caught.value.hint
