"""Preflight on the real machine: the real nvcc's answers for sm_121a and a bogus arch, and
`gather_host` against this host's own commands."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from spark_build.host.archprobe import PROBE_TIMEOUT_S, ArchProbe, probe_nvcc
from spark_build.host.facts import find_nvcc, gather_host
from spark_build.host.query import run_command

REAL_NVCC, _ = find_nvcc(os.environ)
needs_nvcc = pytest.mark.skipif(REAL_NVCC is None, reason="no CUDA toolkit on this machine")


@needs_nvcc
def test_real_nvcc_accepts_sm_121a_rejects_a_bogus_arch_and_caches_both(tmp_path: Path) -> None:
    assert REAL_NVCC is not None
    calls: list[list[str]] = []

    def counting(argv: Sequence[str]) -> tuple[int, str]:
        calls.append(list(argv))
        return run_command(argv, timeout=PROBE_TIMEOUT_S)

    assert probe_nvcc(REAL_NVCC, "12.1a", tmp_path, run=counting).accepted is True
    rejected = probe_nvcc(REAL_NVCC, "13.7a", tmp_path, run=counting)
    assert rejected.accepted is False and "compute_137a" in rejected.detail
    assert sum("-cubin" in argv for argv in calls) == 2

    calls.clear()
    assert probe_nvcc(REAL_NVCC, "12.1a", tmp_path, run=counting).accepted is True
    assert probe_nvcc(REAL_NVCC, "13.7a", tmp_path, run=counting).accepted is False
    assert not any("-cubin" in argv for argv in calls)  # answered from the cache: no compile ran


@needs_nvcc
def test_gather_host_on_this_machine_returns_sane_facts(tmp_path: Path) -> None:
    facts = gather_host(tmp_path / "work", tmp_path / "cache", arch="12.1a")
    assert facts.cpu_count >= 1
    assert 0 < facts.mem_available_bytes <= facts.mem_total_bytes
    assert facts.workdir_free_bytes > 0 and facts.cache_on_workdir_fs
    assert facts.nvcc_version is not None and facts.nvcc_version.major == 13
    assert facts.probes == (ArchProbe("12.1a", "sm_121a", True, ""),)
    if shutil.which("nvidia-smi") is None:
        assert facts.gpus == () and facts.gpu_query_error
