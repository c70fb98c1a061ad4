"""Ask nvcc itself whether it builds for an arch: a one-kernel cubin, cached per compiler build.

Version tables say what nvcc *should* accept; preflight and `invoke doctor` ask the compiler
(and the ptxas behind it), since a CUDA 12.8 toolchain rejects `sm_121a` however it is named.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from spark_build.arch import archlist as archmap
from spark_build.durable import atomic_write_text
from spark_build.host.query import Query, run_command

PROBE_TIMEOUT_S = 180.0
PROBE_CACHE_NAME = "nvcc-arch-probes.json"


@dataclass(frozen=True)
class ArchProbe:
    """Whether this nvcc (and the ptxas behind it) compiled a one-kernel probe for `sm`."""

    arch: str
    sm: str
    accepted: bool
    detail: str = ""


def parse_nvcc_version(output: str) -> tuple[Version | None, str | None]:
    """`release 13.0, V13.0.88` -> (Version('13.0.88'), the `Build ...` line).

    The build line (`cuda_13.0.r13.0/compiler.36424714_0`) names the exact compiler and keys
    the probe cache: a reinstalled or patched toolkit is probed again.
    """
    version: Version | None = None
    match = re.search(r"release \d+\.\d+, V(\d+\.\d+(?:\.\d+)?)", output)
    if match is not None:
        version = Version(match[1])
    build = re.search(r"^Build (\S+)", output, flags=re.MULTILINE)
    return version, build[1] if build else None


def probe_nvcc(
    nvcc: Path,
    arch: str | archmap.ArchEntry,
    cache_dir: Path,
    *,
    run: Query | None = None,
    nvcc_build: str | None = None,
) -> ArchProbe:
    """Compile a one-kernel `.cu` to a cubin for `arch` with the real nvcc; cached per nvcc build.

    Version tables say what nvcc *should* accept; the probe asks it. `-gencode
    arch=compute_121a,code=sm_121a` runs the front end and ptxas, so both must know the target
    (a CUDA 12.8 ptxas rejects `sm_121a`). The answer depends only on the compiler build and
    the arch, so it is cached in `cache_dir/nvcc-arch-probes.json` keyed by both.
    """
    runner = run or (lambda argv: run_command(argv, timeout=PROBE_TIMEOUT_S))
    entry = arch if isinstance(arch, archmap.ArchEntry) else archmap.parse_arch_entry(arch)
    sm = archmap.sm_name(entry)
    if nvcc_build is None:
        status, output = runner([str(nvcc), "--version"])
        _, nvcc_build = parse_nvcc_version(output) if status == 0 else (None, None)
        if nvcc_build is None:
            return ArchProbe(str(entry), sm, False, f"{nvcc} --version failed: {output.strip()[:200]}")
    cache_file = cache_dir / PROBE_CACHE_NAME
    cache = _read_probe_cache(cache_file)
    key = f"{nvcc_build}|{sm}"
    if key in cache:
        hit = cache[key]
        return ArchProbe(str(entry), sm, bool(hit.get("accepted")), str(hit.get("detail", "")))
    with tempfile.TemporaryDirectory(prefix="spark-build-probe-") as scratch:
        source = Path(scratch) / "probe.cu"
        source.write_text("__global__ void spark_build_probe(int *out) { out[threadIdx.x] = 1; }\n")
        status, output = runner(
            [
                str(nvcc),
                "-cubin",
                f"-gencode=arch={archmap.compute_name(entry)},code={sm}",
                "-o",
                str(Path(scratch) / "probe.cubin"),
                str(source),
            ]
        )
    accepted = status == 0
    detail = "" if accepted else _first_error_line(output)
    cache[key] = {"accepted": accepted, "detail": detail}
    _write_probe_cache(cache_file, cache)
    return ArchProbe(str(entry), sm, accepted, detail)


def _first_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "fatal" in line or "error" in line:
            return line
    return lines[0] if lines else "nvcc failed without output"


def _read_probe_cache(cache_file: Path) -> dict[str, dict[str, Any]]:
    # Only a cache: unreadable means "probe again", never "trust what is there".
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_probe_cache(cache_file: Path, cache: Mapping[str, Any]) -> None:
    atomic_write_text(cache_file, json.dumps(cache, indent=1, sort_keys=True))
