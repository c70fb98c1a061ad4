"""Fetching what vLLM's CMake would download, at its pins, without touching GitHub.

The integration tests fetch real repositories from the shared mirror's git bundles
(flash-attention, FlashMLA, qutlass at vLLM 0.13.0's pins) and from a small Triton stand-in
repository the test builds, tagged like the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest
from packaging.version import Version

from spark_build.errors import StepFailed, UsageError
from spark_build.upstream.sources import (
    CutlassPackage,
    FetchedSources,
    checkout_intact,
    cutlass_from_package,
    fetch_project,
    fetch_sources,
    find_cutlass_package,
    is_network,
    origin_for,
    prepare_sources,
    sources_intact,
)
from spark_build.upstream.versions import ExternalProject

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"

FLASH_ATTN = ExternalProject(
    name="vllm-flash-attn",
    repository="https://github.com/vllm-project/flash-attention.git",
    revision="86f8f157cf82aa2342743752b97788922dd7de43",
    src_dir_env="VLLM_FLASH_ATTN_SRC_DIR",
    defined_in="cmake/external_projects/vllm_flash_attn.cmake",
)
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
TRITON = ExternalProject(
    name="triton_kernels",
    repository="https://github.com/triton-lang/triton.git",
    revision="v3.5.0",
    src_dir_env="TRITON_KERNELS_SRC_DIR",
    defined_in="cmake/external_projects/triton_kernels.cmake",
    source_subdir="python/triton_kernels/triton_kernels",
)
CUTLASS = ExternalProject(
    name="cutlass",
    repository="https://github.com/nvidia/cutlass.git",
    revision="v4.2.1",
    src_dir_env="VLLM_CUTLASS_SRC_DIR",
    defined_in="CMakeLists.txt",
)


def bundle(name: str) -> str:
    path = MIRROR / f"{name}.bundle"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the shared mirror of vLLM 0.13.0's sources is needed")
    return str(path)


def make_triton_stand_in(root: Path, tag: str = "v3.5.0") -> tuple[Path, str]:
    """A repository shaped like Triton where vLLM looks (python/triton_kernels/triton_kernels),
    with a commit after the tag so a fetch of the wrong ref would show."""
    repo = git.Repo.init(root, initial_branch="main")
    package = root / "python" / "triton_kernels" / "triton_kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("# stand-in for Triton's triton_kernels\n")
    repo.index.add([str(package / "__init__.py")])
    tagged = repo.index.commit("triton_kernels stand-in").hexsha
    repo.create_tag(tag)
    (package / "later.py").write_text("# after the tag\n")
    repo.index.add([str(package / "later.py")])
    repo.index.commit("after the tag")
    return root, tagged


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


def test_a_project_whose_pin_depends_on_the_device_is_refused_before_fetching(tmp_path: Path) -> None:
    ambiguous = ExternalProject(
        "triton_kernels", None, None, "TRITON_KERNELS_SRC_DIR", "triton_kernels.cmake", candidates=("abc", "v3.5.1")
    )
    with pytest.raises(UsageError, match=r"picks triton_kernels's revision at configure time \(abc, v3.5.1\)"):
        fetch_sources([ambiguous], tmp_path)


def test_cutlass_headers_come_from_the_nvidia_cutlass_package_found_in_the_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    source = fake_cutlass_package(venv / "lib" / "python3.12" / "site-packages")
    package = find_cutlass_package(venv)
    assert package == CutlassPackage(source, "4.2.0.0")
    fetched = cutlass_from_package(CUTLASS, package, tmp_path / "cache")
    cmake = (fetched.env_value / "CMakeLists.txt").read_text()
    assert f'set(CUTLASS_INCLUDE_DIR "{source.as_posix()}/include" CACHE PATH' in cmake
    assert f'set(CUTLASS_TOOLS_UTIL_INCLUDE_DIR "{source.as_posix()}/tools/util/include" CACHE PATH' in cmake
    assert "CUTLASS 4.2.0 (nvidia-cutlass 4.2.0.0) stands in for the v4.2.1 that vLLM pins" in cmake
    assert fetched.env == "VLLM_CUTLASS_SRC_DIR"
    assert sources_intact({"projects": [fetched.to_dict()]})


def test_a_venv_without_the_cutlass_package_has_none(tmp_path: Path) -> None:
    assert find_cutlass_package(tmp_path) is None


# --- real git ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_each_project_is_fetched_from_its_bundle_at_exactly_the_pinned_commit(tmp_path: Path) -> None:
    mirrors = {
        p.name: bundle(n) for p, n in ((FLASH_ATTN, "flash-attention"), (FLASHMLA, "FlashMLA"), (QUTLASS, "qutlass"))
    }
    fetched = fetch_sources([FLASH_ATTN, FLASHMLA, QUTLASS], tmp_path / "cache", mirrors=mirrors, submodules=False)
    for project, result in zip((FLASH_ATTN, FLASHMLA, QUTLASS), fetched.projects, strict=True):
        assert result.commit == project.revision
        assert git.Repo(result.checkout).head.commit.hexsha == project.revision
        assert not git.Repo(result.checkout).is_dirty(untracked_files=True)
    assert fetched.env == {
        "VLLM_FLASH_ATTN_SRC_DIR": str(tmp_path / "cache" / "vllm-flash-attn" / str(FLASH_ATTN.revision)),
        "FLASH_MLA_SRC_DIR": str(tmp_path / "cache" / "flashmla" / str(FLASHMLA.revision)),
        "QUTLASS_SRC_DIR": str(tmp_path / "cache" / "qutlass" / str(QUTLASS.revision)),
    }
    # flash-attention builds against its own csrc/cutlass submodule, which the mirror lacks.
    assert fetched.projects[0].missing_submodules == ("csrc/cutlass", "csrc/composable_kernel")
    assert any("vllm-flash-attn: submodules not fetched" in note for note in fetched.notes)
    assert sources_intact(fetched.to_dict())
    # What the checkpoint holds gives a later step the same variables.
    assert FetchedSources.from_dict(json.loads(json.dumps(fetched.to_dict()))) == fetched


@pytest.mark.integration
def test_a_cached_checkout_is_reused_offline_without_reaching_its_origin(tmp_path: Path) -> None:
    first = fetch_project(QUTLASS, tmp_path, bundle("qutlass"), submodules=False)
    again = fetch_sources([QUTLASS], tmp_path, offline=True)  # no mirror: its origin is GitHub
    assert not first.reused and again.projects[0].reused
    assert again.projects[0].commit == QUTLASS.revision


@pytest.mark.integration
def test_a_hand_edited_cached_checkout_is_fetched_again(tmp_path: Path) -> None:
    first = fetch_project(QUTLASS, tmp_path, bundle("qutlass"), submodules=False)
    edited = next(first.checkout.glob("qutlass/csrc/*.cu"))
    edited.write_text("edited\n")
    assert not checkout_intact(first.checkout, str(QUTLASS.revision))
    assert not sources_intact({"projects": [first.to_dict()]})
    second = fetch_project(QUTLASS, tmp_path, bundle("qutlass"), submodules=False)
    assert not second.reused and edited.read_text() != "edited\n"


@pytest.mark.integration
def test_a_mirror_without_the_pinned_commit_fails_naming_project_and_revision(tmp_path: Path) -> None:
    wrong = ExternalProject("qutlass", QUTLASS.repository, "0" * 40, "QUTLASS_SRC_DIR", "qutlass.cmake")
    with pytest.raises(StepFailed, match=f"cannot fetch qutlass {'0' * 40} from .*qutlass.bundle"):
        fetch_project(wrong, tmp_path, bundle("qutlass"), submodules=False)
    assert not any(tmp_path.rglob("*.partial")), "a failed fetch leaves no partial checkout"


@pytest.mark.integration
def test_a_tag_pin_is_checked_out_at_the_tags_commit_and_points_into_its_subfolder(tmp_path: Path) -> None:
    origin, tagged = make_triton_stand_in(tmp_path / "triton")
    fetched = fetch_sources([TRITON], tmp_path / "cache", mirrors={"triton_kernels": str(origin)})
    (triton,) = fetched.projects
    assert triton.commit == tagged
    assert fetched.env["TRITON_KERNELS_SRC_DIR"] == str(triton.checkout / "python/triton_kernels/triton_kernels")
    assert (Path(fetched.env["TRITON_KERNELS_SRC_DIR"]) / "__init__.py").is_file()
    assert not (Path(fetched.env["TRITON_KERNELS_SRC_DIR"]) / "later.py").exists()


def test_asking_for_cutlass_from_a_venv_without_the_package_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(UsageError, match="no nvidia-cutlass package") as caught:
        prepare_sources(tmp_path / "src", Version("0.13.0"), tmp_path / "cache", cutlass_venv=tmp_path / "venv")
    assert caught.value.hint is not None and "nvidia-cutlass" in caught.value.hint
