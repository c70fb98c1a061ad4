"""Fetching what vLLM's CMake would download, at its pins, without touching GitHub.

Real repositories come as git bundles (flash-attention, FlashMLA, qutlass at vLLM 0.13.0's pins:
tests/artifacts.py makes them from GitHub or takes them from the test mirror) and from a small
Triton stand-in repository the test builds, tagged like the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest

from spark_build.durable import sha256_of
from spark_build.errors import StepFailed, UsageError
from spark_build.upstream.cutlass import cutlass_headers_version, cutlass_pin_warning
from spark_build.upstream.fetched import FetchedSources
from spark_build.upstream.sources import checkout_intact, fetch_project, fetch_sources, sources_intact
from spark_build.upstream.versions import ExternalProject
from tests.artifacts import cutlass_headers, git_bundle, vllm_sdist
from tests.unit.test_sources import CUTLASS, FLASHMLA, QUTLASS

FLASH_ATTN = ExternalProject(
    name="vllm-flash-attn",
    repository="https://github.com/vllm-project/flash-attention.git",
    revision="86f8f157cf82aa2342743752b97788922dd7de43",
    src_dir_env="VLLM_FLASH_ATTN_SRC_DIR",
    defined_in="cmake/external_projects/vllm_flash_attn.cmake",
)

TRITON = ExternalProject(
    name="triton_kernels",
    repository="https://github.com/triton-lang/triton.git",
    revision="v3.5.0",
    src_dir_env="TRITON_KERNELS_SRC_DIR",
    defined_in="cmake/external_projects/triton_kernels.cmake",
    source_subdir="python/triton_kernels/triton_kernels",
)


def bundle(name: str) -> str:
    return str(git_bundle(name))


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


# --- real git ---------------------------------------------------------------------------------


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


def test_a_cached_checkout_is_reused_offline_without_reaching_its_origin(tmp_path: Path) -> None:
    first = fetch_project(QUTLASS, tmp_path, bundle("qutlass"), submodules=False)
    again = fetch_sources([QUTLASS], tmp_path, offline=True)  # no mirror: its origin is GitHub
    assert not first.reused and again.projects[0].reused
    assert again.projects[0].commit == QUTLASS.revision


def test_a_hand_edited_cached_checkout_is_fetched_again(tmp_path: Path) -> None:
    first = fetch_project(QUTLASS, tmp_path, bundle("qutlass"), submodules=False)
    edited = next(first.checkout.glob("qutlass/csrc/*.cu"))
    edited.write_text("edited\n")
    assert not checkout_intact(first.checkout, str(QUTLASS.revision))
    assert not sources_intact({"projects": [first.to_dict()]})
    second = fetch_project(QUTLASS, tmp_path, bundle("qutlass"), submodules=False)
    assert not second.reused and edited.read_text() != "edited\n"


def test_a_mirror_without_the_pinned_commit_fails_naming_project_and_revision(tmp_path: Path) -> None:
    wrong = ExternalProject("qutlass", QUTLASS.repository, "0" * 40, "QUTLASS_SRC_DIR", "qutlass.cmake")
    with pytest.raises(StepFailed, match=f"cannot fetch qutlass {'0' * 40} from .*qutlass.bundle"):
        fetch_project(wrong, tmp_path, bundle("qutlass"), submodules=False)
    assert not any(tmp_path.rglob("*.partial")), "a failed fetch leaves no partial checkout"


def test_every_mirror_without_its_pin_is_named_in_one_error_and_the_good_ones_stay_cached(tmp_path: Path) -> None:
    # vLLM 0.33.0 pins FlashMLA e2afa5fd and flash-attention b273a026, which the bundles
    # (made for 0.13.0) lack: the user learns both at once, not one per run.
    wrong_qutlass = ExternalProject("qutlass", QUTLASS.repository, "0" * 40, "QUTLASS_SRC_DIR", "qutlass.cmake")
    wrong_flashmla = ExternalProject("flashmla", None, "1" * 40, "FLASH_MLA_SRC_DIR", "flashmla.cmake")
    mirrors = {"qutlass": bundle("qutlass"), "flashmla": bundle("FlashMLA")}
    with pytest.raises(StepFailed) as caught:
        fetch_sources([wrong_qutlass, QUTLASS, wrong_flashmla], tmp_path, mirrors=mirrors, offline=True)
    message = caught.value.message
    assert message.startswith("2 of 3 external projects missing — could not be fetched: ")
    assert f"cannot fetch qutlass {'0' * 40}" in message and f"cannot fetch flashmla {'1' * 40}" in message
    assert checkout_intact(tmp_path / "qutlass" / str(QUTLASS.revision), str(QUTLASS.revision))


def test_a_tag_pin_is_checked_out_at_the_tags_commit_and_points_into_its_subfolder(tmp_path: Path) -> None:
    origin, tagged = make_triton_stand_in(tmp_path / "triton")
    fetched = fetch_sources([TRITON], tmp_path / "cache", mirrors={"triton_kernels": str(origin)})
    (triton,) = fetched.projects
    assert triton.commit == tagged
    assert fetched.env["TRITON_KERNELS_SRC_DIR"] == str(triton.checkout / "python/triton_kernels/triton_kernels")
    assert (Path(fetched.env["TRITON_KERNELS_SRC_DIR"]) / "__init__.py").is_file()
    assert not (Path(fetched.env["TRITON_KERNELS_SRC_DIR"]) / "later.py").exists()


# --- source archives: where no git repository can be mirrored ----------------------------------

FA_CUTLASS = "62750a2b75c802660e4894434dc55e839f322277"  # flash-attention's csrc/cutlass submodule


def archive_spec(path: Path, digest: str | None = None) -> str:
    return f"{path}#sha256={digest or sha256_of(path)}"


def test_cutlass_from_a_checked_archive_is_the_pinned_release_with_the_cmake_vllm_needs(tmp_path: Path) -> None:
    archive = cutlass_headers("v4.2.1")
    fetched = fetch_sources([CUTLASS], tmp_path / "cache", mirrors={"cutlass": archive_spec(archive)}, offline=True)
    (project,) = fetched.projects
    root = Path(fetched.env["VLLM_CUTLASS_SRC_DIR"])
    assert (root / "include" / "cutlass" / "cutlass.h").is_file()
    assert (root / "examples" / "77_blackwell_fmha").is_dir()  # vLLM 0.13.0's MLA kernel includes from here
    cmake = (root / "CMakeLists.txt").read_text()
    assert f'set(CUTLASS_INCLUDE_DIR "{root.as_posix()}/include" CACHE PATH' in cmake
    assert cutlass_headers_version(root) == "4.2.1" and cutlass_pin_warning(fetched) is None
    assert project.commit == f"sha256:{sha256_of(archive)}"
    assert sources_intact(fetched.to_dict())
    again = fetch_sources([CUTLASS], tmp_path / "cache", mirrors={"cutlass": archive_spec(archive)}, offline=True)
    assert again.projects[0].reused


def test_an_archive_with_another_sha256_is_refused_and_nothing_is_left_in_the_cache(tmp_path: Path) -> None:
    wrong = "0" * 64
    archive = cutlass_headers("v4.2.1")
    with pytest.raises(StepFailed) as caught:
        fetch_sources([CUTLASS], tmp_path / "cache", mirrors={"cutlass": archive_spec(archive, wrong)})
    assert sha256_of(archive) in caught.value.message and wrong in caught.value.message
    assert not list((tmp_path / "cache").rglob("cutlass.h"))


def test_a_missing_archive_is_bad_input_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "cutlass-v4.2.1-headers.tar.gz"
    with pytest.raises(UsageError, match="does not exist"):
        fetch_sources([CUTLASS], tmp_path / "cache", mirrors={"cutlass": f"{missing}#sha256={'1' * 64}"})


def test_flash_attention_s_cutlass_submodule_comes_from_its_archive_offline(tmp_path: Path) -> None:
    mirrors = {
        "vllm-flash-attn": bundle("flash-attention"),
        "vllm-flash-attn/csrc/cutlass": archive_spec(cutlass_headers(FA_CUTLASS)),
    }
    fetched = fetch_sources([FLASH_ATTN], tmp_path / "cache", mirrors=mirrors, offline=True)
    (project,) = fetched.projects
    assert (project.checkout / "csrc" / "cutlass" / "include" / "cutlass" / "cutlass.h").is_file()
    assert project.missing_submodules == ("csrc/composable_kernel",)  # ROCm only: not needed for CUDA
    assert checkout_intact(project.checkout, project.revision, project.commit)


def test_offline_0_33_0_with_the_0_13_0_bundles_names_all_nine_missing_projects_in_one_error(tmp_path: Path) -> None:
    """The issue's case: only qutlass's bundle holds 0.33.0's pin; every other project is named
    at once with its exact revision, and qutlass is fetched and cached meanwhile."""
    from packaging.version import Version

    from spark_build.upstream.sdist import unpack_recipe_files
    from spark_build.upstream.sources import prepare_sources

    tree = unpack_recipe_files(vllm_sdist("0.33.0"), tmp_path / "sdist")
    mirrors = {
        "qutlass": bundle("qutlass"),
        "flashmla": bundle("FlashMLA"),
        "vllm-flash-attn": bundle("flash-attention"),
    }
    with pytest.raises(StepFailed) as caught:
        prepare_sources(tree, Version("0.33.0"), tmp_path / "cache", mirrors=mirrors, offline=True)
    message = caught.value.message
    assert message.startswith("9 of 10 external projects missing — offline, and not in the source cache")
    for pin in (
        "cutlass v4.7.1",
        "deepgemm 0820030756945b2daec208e8e8255268360f337d",
        "deepselect d96d33afe1fab0d6066da49cdc91e64c2bee65ea",
        "flashkda 17a037d98da546deb4591e967cf961a43c034d8b",
        "fmha_sm100 968061ab16cb14991a5c7d4c0e8eabf531be0dcf",
        "tml_fa4 75765e76a9c2c012c1f6ecd64577eb646eb4d303",
        "triton_kernels v3.5.1",
        "flashmla e2afa5fd8c220fbd05fe03fc24c9d5e64c24641b",
        "vllm-flash-attn b273a02621d3c94bc747df67204f591b67f38fae",
    ):
        assert pin in message
    qutlass = "e74319e3405ce6d71965732880f5dc1f52371f64"
    assert checkout_intact(tmp_path / "cache" / "qutlass" / qutlass, qutlass)
