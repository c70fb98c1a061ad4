"""The arch list a user types, the arch a GPU needs, and the nvcc each arch needs."""

from __future__ import annotations

import pytest
from packaging.version import Version

from spark_build.arch.archlist import (
    ArchEntry,
    arch_for_compute_capability,
    compute_name,
    format_arch_list,
    last_cuda_major_for,
    min_cuda_for,
    parse_arch_list,
    recipe_arch,
    sm_name,
)
from spark_build.errors import UsageError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("12.1a", (ArchEntry(12, 1, "a"),), id="the Spark's arch-specific target"),
        pytest.param("9.0", (ArchEntry(9, 0),), id="a plain target"),
        pytest.param("8.0+PTX", (ArchEntry(8, 0, ptx=True),), id="a target with PTX for later GPUs"),
        pytest.param("12.0f", (ArchEntry(12, 0, "f"),), id="a family target"),
        pytest.param("12.0a;12.1a", (ArchEntry(12, 0, "a"), ArchEntry(12, 1, "a")), id="semicolon separated"),
        pytest.param(" 8.0  9.0a+PTX ", (ArchEntry(8, 0), ArchEntry(9, 0, "a", ptx=True)), id="space separated"),
        pytest.param("12.1a;12.1a", (ArchEntry(12, 1, "a"),), id="a duplicate is dropped"),
    ],
)
def test_valid_arch_lists_parse_into_typed_entries(value: str, expected: tuple[ArchEntry, ...]) -> None:
    assert parse_arch_list(value) == expected


def test_an_arch_list_round_trips_to_the_value_cmake_reads() -> None:
    assert format_arch_list(parse_arch_list("8.0+PTX 12.0f 12.1a")) == "8.0+PTX;12.0f;12.1a"


@pytest.mark.parametrize(
    ("value", "named", "suggested"),
    [
        pytest.param("sm_121a", "'sm_121a'", "12.1a", id="nvcc's sm name"),
        pytest.param("8.0+ptx", "'8.0+ptx'", "'8.0+PTX'", id="lower-case +ptx"),
        pytest.param("121a", "'121a'", "12.1a", id="missing dot"),
        pytest.param("Ampere", "'Ampere'", "12.1a", id="a generation name"),
        pytest.param("12.1a;banana", "'banana'", "12.1a", id="garbage after a good item"),
        pytest.param("12.1x", "'12.1x'", "12.1a", id="unknown suffix"),
    ],
)
def test_garbage_is_rejected_naming_the_bad_item_and_a_valid_form(value: str, named: str, suggested: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_arch_list(value)
    assert caught.value.exit_code == 2
    assert named in caught.value.message
    assert "\n" not in caught.value.message
    assert "12.1a" in caught.value.message  # the valid forms are listed
    assert caught.value.hint is not None and suggested in caught.value.hint


@pytest.mark.parametrize(
    ("value", "suffix_kind"),
    [
        pytest.param("8.6a", "arch-specific", id="8.6 has no arch-specific variant"),
        pytest.param("9.0f", "family", id="9.0 has no family variant"),
    ],
)
def test_suffixes_that_nvcc_has_no_target_for_are_rejected(value: str, suffix_kind: str) -> None:
    with pytest.raises(UsageError, match=suffix_kind):
        parse_arch_list(value)


def test_an_empty_arch_list_is_rejected() -> None:
    with pytest.raises(UsageError, match="empty"):
        parse_arch_list(" ; ")


@pytest.mark.parametrize(
    ("compute_cap", "arch"),
    [
        pytest.param("12.1", "12.1a", id="GB10 DGX Spark"),
        pytest.param("12.0", "12.0a", id="RTX 50xx"),
        pytest.param("11.0", "11.0a", id="Jetson Thor"),
        pytest.param("10.0", "10.0a", id="B200"),
        pytest.param("9.0", "9.0a", id="H100"),
        pytest.param("8.9", "8.9", id="older GPUs get the plain number"),
        pytest.param("8.0", "8.0", id="A100"),
    ],
)
def test_a_gpus_compute_capability_maps_to_its_native_arch(compute_cap: str, arch: str) -> None:
    assert arch_for_compute_capability(compute_cap) == arch


def test_a_gpu_newer_than_the_table_asks_for_arch_instead_of_guessing() -> None:
    with pytest.raises(UsageError) as caught:
        arch_for_compute_capability("13.0")
    assert "13.0" in caught.value.message
    assert caught.value.hint is not None and "--arch" in caught.value.hint


@pytest.mark.parametrize(
    ("arch", "cuda"),
    [
        pytest.param("12.1a", "12.9", id="12.1 needs CUDA 12.9"),
        pytest.param("12.0a", "12.8", id="12.0 needs CUDA 12.8"),
        pytest.param("11.0a", "13.0", id="Thor is 11.0 only from CUDA 13"),
        pytest.param("10.0a", "12.8", id="10.0 needs CUDA 12.8"),
        pytest.param("9.0a", "12.0", id="9.0a needs CUDA 12.0"),
        pytest.param("9.0", "11.8", id="plain 9.0 came with CUDA 11.8"),
        pytest.param("8.0", "11.0", id="8.0 needs CUDA 11.0"),
        pytest.param("10.0f", "12.9", id="family targets need CUDA 12.9"),
    ],
)
def test_each_arch_knows_the_oldest_cuda_that_builds_it(arch: str, cuda: str) -> None:
    assert min_cuda_for(arch) == Version(cuda)


def test_nvcc_older_than_12_9_cannot_target_sm_121() -> None:
    assert Version("12.8.93") < min_cuda_for("12.1a") <= Version("13.0.88")


def test_an_arch_with_no_known_minimum_says_so() -> None:
    with pytest.raises(UsageError, match="13.7a"):
        min_cuda_for("13.7a")


def test_cuda_13_dropped_volta_and_the_old_thor_name() -> None:
    assert last_cuda_major_for("7.0") == 12
    assert last_cuda_major_for("10.1a") == 12
    assert last_cuda_major_for("12.1a") is None


def test_entries_name_their_nvcc_targets() -> None:
    assert sm_name(ArchEntry(12, 1, "a")) == "sm_121a"
    assert compute_name(ArchEntry(12, 1, "a")) == "compute_121a"
    assert sm_name(ArchEntry(8, 6)) == "sm_86"
    assert sm_name(ArchEntry(11, 0, "f")) == "sm_110f"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("12.1a", "12.1a", id="one-arch"),
        pytest.param("8.0;12.1a", "12.1a", id="an-older-arch-kept-for-ptx"),
        pytest.param("12.1a 8.0+PTX", "12.1a", id="any-order"),
        pytest.param("9.0a+PTX", "9.0a", id="ptx-is-not-part-of-the-target"),
    ],
)
def test_a_recipe_is_read_for_the_newest_arch_of_the_list(value: str, expected: str) -> None:
    assert recipe_arch(value) == expected
