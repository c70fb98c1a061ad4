"""vLLM 0.34.0, the release after the newest the patch series was tested on, read from its real
sdist (package index, cached per user by `tests.artifacts`): the recipe reads what it added."""

from __future__ import annotations

import pytest

from spark_build.upstream.facts import SourceFacts, read_facts
from spark_build.upstream.sdist import unpack_recipe_files
from tests.artifacts import vllm_sdist


@pytest.fixture(scope="module")
def facts_0_34(tmp_path_factory: pytest.TempPathFactory) -> SourceFacts:
    tree = unpack_recipe_files(vllm_sdist("0.34.0"), tmp_path_factory.mktemp("vllm-0.34.0"))
    return read_facts(tree)


def test_0_34_fetches_triton_kernels_from_its_tag_archive_and_no_rocm_pin(facts_0_34: SourceFacts) -> None:
    projects = {p.name: p for p in facts_0_34.projects}
    assert len(projects) == 9 and "qutlass" not in projects
    kernels = projects["triton_kernels"]
    assert (kernels.repository, kernels.revision, kernels.src_dir_env) == (
        "https://github.com/triton-lang/triton.git",
        "v3.5.1",
        "TRITON_KERNELS_SRC_DIR",
    )
    assert all(p.revision and "669b31ac" not in p.revision for p in facts_0_34.projects)


def test_0_34_asks_for_gcc_13_or_newer(facts_0_34: SourceFacts) -> None:
    assert facts_0_34.gcc_minimum == "13"
    assert (facts_0_34.version, facts_0_34.cxx_standard, facts_0_34.cutlass_revision) == ("0.34.0", "20", "v4.7.1")
